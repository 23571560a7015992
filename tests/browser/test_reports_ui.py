"""Reports and notes of the drill and the monitoring, through the Airflow UI in a real browser (issue 20, item 7).

* a ``backup_monitoring`` run triggered from its page leaves a note: the state and the count of open problems on
  the first line, each open problem a bullet;
* the Backups page (Browse → Backups) links the last drill's report, which opens inside the page — served by the
  plugin behind the same login, never a filesystem path.

Setup through the CLI (a weekly snapshot, a drill of the weekly tier on the repository the DAGs use); every
assertion is made on what the UI shows. See conftest.py for the server and fixtures.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.browser.test_ui import open_trigger_form, submit_trigger, wait_for_run_state

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def drill_id(airflow_server, weekly_snapshot) -> str:
    """A passed drill of the weekly tier (``backupctl drill``): its reports and history line in the drill folder."""
    out = subprocess.run([sys.executable, "-m", "backups.cli", "-q", "drill", "--tier", "weekly", "--json"],
                         env={**airflow_server.env, "PYTHONPATH": os.pathsep.join(sys.path)},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    doc = json.loads(out.stdout)
    return (doc.get("verdict") or doc)["drill_id"]


def note_dialog(page, first_words: str, shot):
    """The run's note as the UI renders it (the "Dag Run Note" dialog): (its text, the number of bullets)."""
    page.get_by_text(first_words).first.wait_for()
    edit = page.get_by_role("button", name="Edit note")
    if not edit.count():
        edit = page.get_by_label("Edit note")
    edit.first.click()
    dialog = page.locator("[role=dialog][data-state=open]")
    dialog.get_by_text("Dag Run Note").wait_for()
    dialog.get_by_text(first_words).first.wait_for()
    shot("run-note")
    text, bullets = " ".join(dialog.inner_text().split()), dialog.locator("li").count()
    page.keyboard.press("Escape")
    return text, bullets


def test_a_monitoring_run_note_lists_its_problems_and_the_drill_report_opens_from_the_backups_page(
        airflow_server, drill_id, page, shot):
    url, dag_id = airflow_server.url, "backup_monitoring"
    dialog = open_trigger_form(page, url, dag_id)
    run_id = submit_trigger(page, dialog, dag_id)
    shot("triggered")
    assert wait_for_run_state(page, url, dag_id, run_id, shot) == "success"

    # only a weekly snapshot exists: the daily tier has none, so the run has open problems, stale:daily among them
    text, bullets = note_dialog(page, "open problem", shot)
    m = re.search(r"(OK|WARNING|CRITICAL) — (\d+) open problems?", text)
    assert m and m.group(1) == "CRITICAL", text
    assert int(m.group(2)) == bullets >= 1, (bullets, text)
    assert "critical: stale:daily — " in text, text

    # the Backups page, from the navigation, links the drill's report: it opens in the page, served by the plugin
    page.goto(url + "/")
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Backups").click()
    page.wait_for_url(re.compile(r".*/plugin/backups.*"))
    frame = page.frame_locator("iframe[title='Backups']")
    link = frame.locator("#drill-report")
    link.wait_for()
    assert link.get_attribute("href").endswith(f"/backups/drills/{drill_id}")
    assert "/drill/" not in frame.locator("#drill").inner_text()  # no filesystem path on the page
    shot("backups-page")
    link.click()
    frame.get_by_text(f"Disaster-recovery drill {drill_id}").wait_for()
    assert "PASSED" in frame.locator("h1").inner_text()
    shot("drill-report")

    # the same report is the plugin's, behind the login: an anonymous client gets 401, the session 200
    anonymous = page.context.browser.new_context()
    try:
        assert anonymous.request.get(f"{url}/backups/drills/{drill_id}").status == 401
    finally:
        anonymous.close()
    assert page.request.get(f"{url}/backups/drills/latest").ok
