"""Prometheus text format from the status document: parsed back with prometheus_client's own parser."""

from __future__ import annotations

import math
import os
import stat

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backups.errors import StorageError
from backups.monitoring.metrics import render_prometheus, write_textfile


def _status(**over):
    doc = {
        "schema_version": 1,
        "generated_at": "2026-12-01T04:00:00+00:00",
        "application": "fmr-v2",
        "state": "critical",
        "tiers": [
            {"tier": "daily", "dag_id": "backup_daily", "newest_id": "daily-20261201T020000Z",
             "newest_committed_at": "2026-12-01T02:10:00+00:00", "age_seconds": 6600.0, "rpo_seconds": 93600.0,
             "overdue": False, "state": "ok", "size_bytes": 123456789, "duration_seconds": 42.5},
            {"tier": "monthly", "dag_id": "backup_monthly", "newest_id": None, "newest_committed_at": None,
             "age_seconds": None, "rpo_seconds": 3024000.0, "overdue": True, "state": "critical",
             "size_bytes": None, "duration_seconds": None},
        ],
        "storages": [
            {"storage": "local", "type": "local", "reachable": True, "writable": True, "used_bytes": 1000,
             "free_bytes": 5000, "snapshots": 3, "error": None},
            {"storage": "cloud", "type": "s3", "reachable": False, "writable": None, "used_bytes": None,
             "free_bytes": None, "snapshots": 0, "error": "timeout"},
        ],
        "problems": [{"key": "stale:monthly", "severity": "critical", "summary": "never", "since": "x", "runs": 1}],
    }
    doc.update(over)
    return doc


def _samples(text):
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "application")))] = s.value
    return out


def test_every_contract_metric_is_present_and_parses():
    text = render_prometheus(_status())
    s = _samples(text)
    d = (("tier", "daily"),)
    assert s[("backup_last_success_timestamp_seconds", d)] == 1796091000.0
    assert s[("backup_age_seconds", d)] == 6600.0
    assert s[("backup_rpo_seconds", d)] == 93600.0
    assert s[("backup_size_bytes", d)] == 123456789
    assert s[("backup_duration_seconds", d)] == 42.5
    assert s[("backup_overdue", d)] == 0
    assert s[("backup_storage_used_bytes", (("storage", "local"),))] == 1000
    assert s[("backup_storage_reachable", (("storage", "cloud"),))] == 0
    assert s[("backup_open_problems", ())] == 1
    assert s[("backup_status_state", ())] == 2
    assert s[("backup_status_generated_timestamp_seconds", ())] == 1796097600.0
    for name in ("backup_age_seconds", "backup_open_problems", "backup_storage_used_bytes"):
        assert f"# HELP {name} " in text and f"# TYPE {name} gauge" in text
    assert text.endswith("\n")


def test_a_tier_that_never_ran_is_infinitely_old_and_unknowns_are_left_out():
    s = _samples(render_prometheus(_status()))
    m = (("tier", "monthly"),)
    assert s[("backup_last_success_timestamp_seconds", m)] == 0
    assert math.isinf(s[("backup_age_seconds", m)])
    assert s[("backup_overdue", m)] == 1
    assert ("backup_size_bytes", m) not in s
    assert ("backup_storage_used_bytes", (("storage", "cloud"),)) not in s


def test_label_values_are_escaped():
    evil = 'we"ird\\tier\nname'
    doc = _status(application='a"pp')
    doc["tiers"][0]["tier"] = evil
    text = render_prometheus(doc)
    assert '\\"' in text and "\\n" in text and "\\\\" in text
    fams = list(text_string_to_metric_families(text))
    labels = [smp.labels for f in fams for smp in f.samples if f.name == "backup_age_seconds"]
    assert {"application": 'a"pp', "tier": evil} in labels
    # no raw newline inside a sample line: every line is a comment or "name{...} value"
    for line in text.splitlines():
        assert line.startswith("# ") or line.startswith("backup_")


def test_an_empty_status_still_renders_valid_text():
    text = render_prometheus({"tiers": [], "storages": [], "problems": []})
    assert _samples(text)[("backup_open_problems", ())] == 0


def test_write_textfile_is_atomic_and_readable_by_the_collector(tmp_path):
    target = tmp_path / "backups.prom"
    write_textfile(target, "old 1\n")
    write_textfile(target, render_prometheus(_status()))
    assert "backup_age_seconds" in target.read_text()
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["backups.prom"]  # no temporary file left behind


def test_write_textfile_names_the_missing_folder(tmp_path):
    with pytest.raises(StorageError) as exc:
        write_textfile(tmp_path / "nope" / "backups.prom", "x 1\n")
    assert "nope" in str(exc.value) and exc.value.hint


def test_write_textfile_failure_leaves_no_temporary_file(tmp_path):
    (tmp_path / "backups.prom").mkdir()  # the target is a folder: the rename fails (also as root)
    with pytest.raises(StorageError) as exc:
        write_textfile(tmp_path / "backups.prom", "x 1\n")
    assert "backups.prom" in str(exc.value)
    assert [p.name for p in tmp_path.iterdir()] == ["backups.prom"]


def test_the_metrics_file_never_replaces_what_is_not_a_regular_file(tmp_path):
    """Before: the atomic rename put a regular file in place of whatever the path named — a FIFO, a device
    (``--prometheus /dev/full`` run as root replaced the device node), a symlink — and a directory was a bare
    ``IsADirectoryError`` message. Now: anything but a regular file is refused (exit 5), left as it was; a
    symlink is written through (the file it points to is replaced, the link stays)."""
    import os
    import stat

    import pytest

    from backups.errors import StorageError
    from backups.monitoring.metrics import write_textfile

    fifo = tmp_path / "metrics.prom"
    os.mkfifo(fifo)
    with pytest.raises(StorageError) as e:
        write_textfile(fifo, "x 1\n")
    assert e.value.exit_code == 5 and "not a regular file" in e.value.message and str(fifo) in e.value.message
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.prom"]
    folder = tmp_path / "dir.prom"
    folder.mkdir()
    with pytest.raises(StorageError, match="not a regular file"):
        write_textfile(folder, "x 1\n")
    real = tmp_path / "real" / "backups.prom"
    real.parent.mkdir()
    real.write_text("old 1\n")
    link = tmp_path / "link.prom"
    link.symlink_to(real)
    write_textfile(link, "new 1\n")
    assert link.is_symlink() and real.read_text() == "new 1\n"
