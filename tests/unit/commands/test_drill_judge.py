"""Judging a drill (:func:`backups.commands.drill.judge`) and its reports, without services: RTO and RPO per tier,
every failed step and check a finding, both targets judged, the teardown's leftovers handed to the verdict the
same way by both doors, the reports written with a link to the runbook of this checkout. (Real drills:
tests/integration/test_drill.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import unquote, urlparse

import pytest

from backups.commands import drill as dc
from backups.config import load_config
from tests.helpers import ROOT, write_config

START = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKUP_STATUS_DIR", str(tmp_path / "status"))
    path = write_config(tmp_path / "b.yaml", tmp_path / "home", tmp_path / "repo")
    path.write_text(path.read_text() + "drill:\n  rto_minutes: 1\n  rpo_hours: 2\n")
    return load_config(path)


def _plan(*tiers: dc.TierPlan) -> dc.DrillPlan:
    return dc.DrillPlan(drill_id=dc.drill_id_for(START), started_at=START.isoformat(), door="cli", run_id="",
                        storage=None, tiers=[t.to_dict() for t in tiers], seconds=1.0)


def _tier(name: str, hours_old: float, **kw) -> dc.TierPlan:
    """A tier whose data was read ``hours_old`` before the drill started; its logical date is 10 days older still
    (a stale slot, a --logical-date in the past): the RPO does not count from it."""
    return dc.TierPlan(**{"tier": name, "storage": "local", "snapshot_id": f"{name}-x",
                          "logical_date": (START - timedelta(hours=hours_old, days=10)).isoformat(),
                          "data_time": (START - timedelta(hours=hours_old)).isoformat(), **kw})


def _restored(name: str, seconds: float = 10.0) -> dc.TierRestore:
    return dc.TierRestore(tier=name, ok=True, snapshot_id=f"{name}-x", storage="local", files=3, bytes=4_000_000,
                          restore_seconds=seconds)


def _verified(name: str, *failed: str, seconds: float = 5.0) -> dc.TierVerify:
    checks = [dc.Check(name="restore", kind="restore", ok=True, detail="ok").to_dict()]
    checks += [dc.Check(name=n, kind="gx", ok=False, detail="2/3 expectations met").to_dict() for n in failed]
    return dc.TierVerify(tier=name, ok=not failed, checks=checks, data_docs={}, verify_seconds=seconds)


def _scratch() -> dc.Scratch:
    return dc.Scratch(drill_id=dc.drill_id_for(START), root="/x", targets={}, databases={}, seconds=2.0)


def test_a_drill_within_both_targets_passes_with_its_measures(cfg):
    v = dc.judge(cfg, _plan(_tier("daily", 1.5), _tier("weekly", 30)), _scratch(),
                 [_restored("daily"), _restored("weekly", 20.0)], [_verified("daily"), _verified("weekly")],
                 finished_at=START + timedelta(minutes=1))
    assert v.passed and v.findings == []
    daily, weekly = v.tiers
    assert daily["rto_seconds"] == 18.0 and daily["rpo_seconds"] == 5400.0 and daily["throughput_mb_s"] == 0.4
    assert daily["steps"] == {"plan": 1.0, "isolate": 2.0, "thaw": 0.0, "restore": 10.0, "verify": 5.0}
    # the drill's RTO is the slowest tier's, its RPO the newest restorable data's
    assert v.rto_seconds == weekly["rto_seconds"] == 28.0 and v.rpo_seconds == 5400.0


def test_every_failure_is_a_finding_and_fails_the_drill(cfg):
    plan = _plan(_tier("daily", 3, passed_over=["daily-y: 1 object(s) of its chain missing"]),
                 _tier("weekly", 30), _tier("monthly", 0, snapshot_id=None, logical_date=None, data_time=None,
                                            error="no restorable snapshot of tier monthly on storage local"))
    failed_restore = dc.TierRestore(tier="weekly", ok=False, error="restore of snapshot weekly-x failed: damaged")
    v = dc.judge(cfg, plan, _scratch(), [_restored("daily", 70.0), failed_restore],
                 [_verified("daily", "app_db: Great Expectations")],
                 extra_findings=dc.teardown_findings({"problems": ["database drill_x: still in use"]}))
    assert not v.passed
    assert v.findings == [
        "teardown: database drill_x: still in use",
        "daily: check app_db: Great Expectations failed: 2/3 expectations met",
        "daily: RTO target missed: restore and verification took 1m 18s (target 1m 00s)",
        "daily: newer snapshot passed over (chain incomplete on local): daily-y: 1 object(s) of its chain missing",
        "weekly: restore of snapshot weekly-x failed: damaged",
        "monthly: no restorable snapshot of tier monthly on storage local",
        "RPO target missed: the newest restorable data was read 3h 00m before the drill started (target 2h 00m)",
    ]
    assert [t["passed"] for t in v.tiers] == [False, False, False]
    assert v.tiers[1]["rto_seconds"] is None and v.tiers[1]["error"].endswith("damaged")


def test_a_step_that_did_not_report_is_a_finding(cfg):
    v = dc.judge(cfg, _plan(_tier("daily", 1), _tier("weekly", 1)), None, [_restored("daily")], [None])
    assert v.findings == ["daily: the verification step did not run or did not report (see the task log)",
                          "weekly: the restore step did not run or did not report (see the task log)"]
    assert not v.passed and v.rto_seconds is None and v.rpo_seconds == 3600.0


def test_nothing_restored_is_an_rpo_finding(cfg):
    v = dc.judge(cfg, _plan(_tier("daily", 1)), _scratch(), [dc.TierRestore(tier="daily", ok=False, error="gone")], [])
    assert v.findings == ["daily: gone", "RPO: no tier could be restored: nothing is recoverable from this storage"]
    assert not v.passed and v.rpo_seconds is None


def test_both_doors_hand_the_teardown_to_the_report_the_same_way():
    down = dc.Teardown(drill_id="drill-x", directory="/x", directory_removed=False, databases_dropped=[],
                       problems=["/x/daily: Permission denied"])
    assert dc.teardown_findings(down) == dc.teardown_findings(down.to_dict()) == ["teardown: /x/daily: Permission denied"]
    assert dc.teardown_findings(None) == ["teardown did not finish: scratch data may be left behind (see its task log)"]


def test_the_reports_link_the_runbook_of_this_checkout(cfg):
    link = dc.runbook_link()
    assert urlparse(link).scheme == "file" and unquote(urlparse(link).path) == str(ROOT / dc.RUNBOOK)
    v = dc.write_reports(cfg, dc.judge(cfg, _plan(_tier("daily", 1)), _scratch(), [_restored("daily")],
                                       [_verified("daily")], finished_at=START))
    assert v.passed
    md = (dc.drill_dir(cfg) / "latest.md").read_text()
    assert f"[{dc.RUNBOOK}]({link})" in md and "# Disaster-recovery drill drill-20261207T050000Z: PASSED" in md
    assert f'href="{link}"' in (dc.drill_dir(cfg) / f"{v.drill_id}.html").read_text()
    assert [h["id"] for h in dc.read_history(cfg)] == [v.drill_id]
