"""Which file a plugin request may read (backups.monitoring.links): ids validated, no path out of the drill folder,
and the URLs notes link to."""

from __future__ import annotations

import pytest

from backups.monitoring.links import backup_report_url, drill_file, drill_report_url, page_url

DID = "drill-20261207T040000Z"


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "drill"
    docs = d / f"{DID}.datadocs" / "weekly" / "app_db"
    (docs / "expectations" / "app").mkdir(parents=True)
    for ext in ("html", "json", "md"):
        (d / f"{DID}.{ext}").write_text(ext)
        (d / f"latest.{ext}").write_text("latest " + ext)
    (docs / "index.html").write_text("<h1>docs</h1>")
    (docs / "expectations" / "app" / "db:missions.html").write_text("missions")
    (d / "history.jsonl").write_text("{}\n")
    (tmp_path / "secret.html").write_text("secret")
    return d


def test_reports_by_id_latest_and_data_docs(folder):
    assert drill_file(folder, DID).read_text() == "html"
    assert drill_file(folder, f"{DID}.json").read_text() == "json"
    assert drill_file(folder, "latest").read_text() == "latest html"
    assert drill_file(folder, "latest.md").read_text() == "latest md"
    assert drill_file(folder, f"{DID}.datadocs/weekly/app_db/index.html").read_text() == "<h1>docs</h1>"
    assert drill_file(folder, f"{DID}.datadocs/weekly/app_db/expectations/app/db:missions.html") is not None


@pytest.mark.parametrize("path", [
    "../secret.html", "..", "", "/etc/passwd", "history.jsonl", "drill-x/../../secret.html",
    f"{DID}.datadocs/../../secret.html", f"{DID}.datadocs/weekly/../../../secret.html", f"{DID}.datadocs//x",
    "drill-20991231T000000Z", "secret", f"{DID}.py", f"{DID}.datadocs/weekly/app_db/.hidden.html",
    "latest.datadocs/x/index.html",
])
def test_anything_else_is_refused(folder, path):
    assert drill_file(folder, path) is None


def test_a_symlink_out_of_the_folder_is_refused(folder, tmp_path):
    (folder / "drill-evil.html").symlink_to(tmp_path / "secret.html")
    assert drill_file(folder, "drill-evil") is None


def test_urls_for_notes():
    assert drill_report_url() == "/backups/drills/latest"
    assert page_url() == "/plugin/backups" and page_url(base="https://af.example/x/") == "https://af.example/x/plugin/backups"
    assert drill_report_url(DID, base="http://af:8080/") == f"http://af:8080/backups/drills/{DID}"
    assert backup_report_url("daily-20261207T020000Z") == "/backups/snapshots/daily-20261207T020000Z/report"
    for bad in ("../x", "drill-a/b", "drill-"):
        with pytest.raises(ValueError):
            drill_report_url(bad)
    with pytest.raises(ValueError):
        backup_report_url("daily-x/../y")
