"""Green means restorable (issue 16): the verification record in the repository, presence checks of each tier's
newest chain, the tier verdict, the drill history read line by line, and ``status --prometheus`` into a folder
that cannot be written. Real files, real CLI subprocesses; the record reader is property-tested."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backups.commands import backup as steps
from backups.commands.backup import run_backup
from backups.commands.status import status
from backups.commands.verify import verify
from backups.config import load_config
from backups.demo import fmr
from backups.monitoring import status_path
from backups.monitoring.dashboard import render_dashboard
from backups.monitoring.metrics import render_prometheus
from tests.helpers import subprocess_env, write_config


@pytest.fixture
def env(tmp_path):
    home = tmp_path / "home"
    fmr.generate(home, scale=0.1, seed=5)
    path = write_config(tmp_path / "c.yaml", home, tmp_path / "repo")
    return {"home": home, "repo": tmp_path / "repo" / "local", "path": path, "cfg": load_config(path), "tmp": tmp_path}


def _ago(hours: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours)).replace(microsecond=0).isoformat()


def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backups.cli", "--config", str(cfg), *args], capture_output=True,
                          text=True, env=subprocess_env(), timeout=120)


def _all_tiers(cfg) -> dict[str, str]:
    """A weekly full, then a monthly differential and a daily incremental on it (every tier fresh)."""
    return {t: run_backup(cfg, t, logical_date=_ago(h))["id"] for t, h in (("weekly", 3), ("monthly", 2.5), ("daily", 2))}


def _dag_run(cfg, tier: str, hours_ago: float, tmp: Path) -> str:
    """One run of the tier's DAG, step by step as its tasks call them (no Airflow needed): the snapshot id."""
    sel = steps.selection(cfg, tier)
    prep = steps.plan_run(cfg, sel, datetime.now(UTC) - timedelta(hours=hours_ago),
                          steps.check_system_state(cfg, sel))
    scratch = tmp / f"scratch-{tier}"
    scratch.mkdir(exist_ok=True)
    for source in prep.plan.sources:
        steps.extract_source(cfg, prep.plan, source, scratch)
    steps.commit_snapshot(cfg, prep.plan)
    for name in prep.storages:
        steps.replicate_to(cfg, prep.plan, name)
        assert steps.check_integrity(cfg, prep.plan, name).ok
    return prep.plan.snapshot_id


def _biggest(repo: Path, snap_id: str) -> Path:
    return max((repo / "data" / snap_id).iterdir(), key=lambda p: p.stat().st_size)


def _flip(path: Path) -> None:
    """One byte changed in the middle, size kept (only a re-hash sees it)."""
    path.chmod(0o644)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _keys(result) -> dict[str, dict]:
    return {p["key"]: p for p in result.status["problems"]}


def _tier(result, name: str) -> dict:
    return next(t for t in result.status["tiers"] if t["tier"] == name)


# ------------------------------------------------------------------------------------------ open failures
def test_a_failed_read_data_verification_stays_open_after_the_next_daily_backup(env):
    cfg, repo = env["cfg"], env["repo"]
    weekly = _all_tiers(cfg)["weekly"]
    assert status(cfg).check_code == 0
    damaged = _biggest(repo, weekly)
    _flip(damaged)
    assert not verify(cfg, every=True, read_data=True).ok  # `backupctl verify --all --read-data`: exit 4
    # the next backup_daily run (the DAG's steps; an incremental on that chain): its own integrity check re-hashes
    # only its new objects and passes
    daily = _dag_run(cfg, "daily", 1, env["tmp"])
    result = status(cfg)
    assert result.check_code == 2, result.check_line()
    failed = _keys(result)["verify-failed:local"]
    key = f"data/{weekly}/{damaged.name}"
    assert failed["severity"] == "critical" and weekly in failed["summary"] and key in failed["summary"]
    assert daily in failed["summary"] and "fix: `backupctl verify --all --read-data --storage local`" in failed["summary"]
    assert _tier(result, "daily")["state"] == "critical" and _tier(result, "daily")["verification"]["state"] == "failed"
    assert _tier(result, "weekly")["state"] == "critical"
    # a structure-only verification of everything passes (sizes are right) and does not close a re-hash failure
    assert verify(cfg, every=True).ok
    assert "verify-failed:local" in _keys(status(cfg))
    # repaired: a passing re-hash of a snapshot whose chain holds it closes it
    _flip(damaged)
    assert verify(cfg, snapshot=daily, read_data=True).ok
    result = status(cfg)
    assert result.check_code == 0 and not result.status["problems"], result.check_line()


def test_a_failure_in_the_old_per_host_file_is_carried_over_until_verify_all_passes(env):
    from tests.helpers import commit_unverified

    cfg = env["cfg"]
    for tier, hours in (("weekly", 3), ("monthly", 2.5), ("daily", 2)):
        commit_unverified(cfg, tier, logical_date=_ago(hours))  # taken by an earlier version: no record in the repository
    legacy = status_path(cfg).parent / "verify_state.json"
    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_text(json.dumps({"local": {"last": {"at": _ago(5), "ok": False, "read_data": True,
                                                     "snapshots": [], "problems": 3}}}))
    assert "verify-failed:local" in _keys(status(cfg))
    _dag_run(cfg, "daily", 1, env["tmp"])  # the first record in the repository: the old failure stays open
    failed = _keys(status(cfg))["verify-failed:local"]
    assert "3 problem(s)" in failed["summary"] and str(legacy) in failed["summary"]
    assert verify(cfg, every=True, read_data=True).ok
    assert "verify-failed:local" not in _keys(status(cfg))


def test_a_pruned_snapshot_takes_its_open_failure_with_it_a_deleted_manifest_does_not(env):
    import shutil

    cfg, repo = env["cfg"], env["repo"]
    ids = _all_tiers(cfg)
    extra = run_backup(steps.with_manual_tier(cfg), "manual", logical_date=_ago(1.5))["id"]  # nothing depends on it
    _flip(_biggest(repo, extra))
    assert not verify(cfg, every=True, read_data=True).ok
    assert extra in _keys(status(cfg))["verify-failed:local"]["summary"]
    (repo / "snapshots" / f"{extra}.json").unlink()  # the manifest alone deleted: the data is still there
    assert extra in _keys(status(cfg))["verify-failed:local"]["summary"]
    shutil.rmtree(repo / "data" / extra)  # now gone altogether, as prune removes it
    assert "verify-failed:local" not in _keys(status(cfg)), ids


# ------------------------------------------------------------------------------------------ presence
@pytest.mark.parametrize("damage", ["deleted", "shrunk"])
def test_presence_of_the_newest_chain_is_checked_every_run(env, damage):
    cfg, repo = env["cfg"], env["repo"]
    ids = _all_tiers(cfg)
    weekly, daily = ids["weekly"], ids["daily"]
    assert status(cfg).check_code == 0
    assert 'backup_restorable{application="fmr-test",tier="daily"} 1' in render_prometheus(status(cfg).status)
    obj = _biggest(repo, weekly)
    if damage == "deleted":
        obj.unlink()
    else:
        obj.chmod(0o644)
        obj.write_bytes(obj.read_bytes()[:-10])
    result = status(cfg)  # no verify ran: the listing the status makes anyway finds it
    assert result.check_code == 2
    keys = _keys(result)
    p = keys["presence:daily:local"]
    assert p["severity"] == "critical"
    assert f"newest snapshot {daily}" in p["summary"] and f"data/{weekly}/{obj.name}" in p["summary"]
    needed = [weekly, ids["monthly"], daily]  # the monthly differential's chain holds that full too
    assert ("is missing" in p["summary"]) == (damage == "deleted") and f"needed by {', '.join(needed)}" in p["summary"]
    assert "fix:" in p["summary"] and "`backupctl backup --tier daily --type full`" in p["summary"]
    assert "presence:weekly:local" in keys and _tier(result, "daily")["state"] == "critical"
    assert _tier(result, "daily")["presence"]["problems"][0]["needed_by"] == needed
    # the published document carries no listing
    assert all("_sizes" not in s and "_record" not in s for s in result.status["storages"])
    html = render_dashboard(result.status)
    assert 'data-tier="daily" data-state="critical"' in html
    prom = render_prometheus(result.status)
    assert 'backup_restorable{application="fmr-test",tier="daily"} 0' in prom
    assert 'backup_restorable{application="fmr-test",tier="manual"}' not in prom  # no snapshot: no sample


def test_a_newest_chain_whose_full_lost_its_manifest_is_critical(env):
    cfg, repo = env["cfg"], env["repo"]
    ids = _all_tiers(cfg)
    (repo / "snapshots" / f"{ids['weekly']}.json").unlink()  # the daily's full: its commit marker is gone
    result = status(cfg)
    assert result.check_code == 2
    p = _keys(result)["presence:daily:local"]
    assert f"needs {ids['weekly']}, which is missing from storage local" in p["summary"] and "fix:" in p["summary"]
    assert _tier(result, "daily")["state"] == "critical"


def test_a_tier_without_a_snapshot_has_no_verification_verdict(env):
    cfg = env["cfg"]
    run_backup(cfg, "weekly", logical_date=_ago(1))
    assert verify(cfg, every=True, read_data=True).ok  # a passing verification of the storage...
    result = status(cfg)
    daily = _tier(result, "daily")  # ...is no verdict on a tier that has nothing stored
    assert daily["newest_id"] is None and daily["last_verification"] is None
    assert daily["verification"]["state"] == "none"
    weekly = _tier(result, "weekly")
    assert weekly["verification"]["state"] == "ok" and weekly["last_verification"]["ok"] is True
    html = render_dashboard(result.status)
    row = html.split('data-tier="daily"', 1)[1].split("</tr>", 1)[0]
    assert "OK</span>" not in row.split('<td class="num">', 1)[1] and "no snapshot: nothing to verify" in row


def test_a_tier_whose_chain_was_never_verified_is_not_ok(env):
    from tests.helpers import commit_unverified

    cfg = env["cfg"]
    for tier, hours in (("weekly", 3), ("monthly", 2.5), ("daily", 2)):
        commit_unverified(cfg, tier, logical_date=_ago(hours))  # killed after the commit: never verified
    result = status(cfg)
    assert result.check_code == 1 and _tier(result, "weekly")["state"] == "warning"
    assert "never verified" in _keys(result)["unverified:weekly"]["summary"]
    later = datetime.now(UTC) + timedelta(days=40)
    verify(cfg, every=True, read_data=True)
    assert "unverified:weekly" not in _keys(status(cfg))
    assert "unverified:weekly" in _keys(status(cfg, now=later))  # past monitoring.verify_max_age_days (35)


# ------------------------------------------------------------------------------------------ drill history
def test_one_bad_byte_in_the_drill_history_is_a_named_problem_not_unknown(env):
    cfg = env["cfg"]
    _all_tiers(cfg)
    hist = status_path(cfg).parent.parent / "drill" / "history.jsonl"
    hist.parent.mkdir(parents=True, exist_ok=True)
    good = {"id": "d1", "at": _ago(30), "passed": True, "rto_seconds": 5.0, "rpo_seconds": 60, "report": "r1"}
    newer = {"id": "d3", "at": _ago(20), "passed": True, "rto_seconds": 6.0, "rpo_seconds": 60, "report": "r3"}
    hist.write_bytes(json.dumps(good).encode() + b"\n" + b'{"id": "d2", "at": "\xff\xfe"}\n' + b'{"id": "d4", "at'
                     + b"\n" + json.dumps(newer).encode() + b"\n")
    p = _cli(env["path"], "status", "--check")
    assert p.returncode == 1, p.stdout + p.stderr  # a warning, never UNKNOWN (3)
    assert "drill-history" in p.stdout and "Traceback" not in p.stderr
    result = status(cfg)
    assert result.status["last_drill"]["id"] == "d3"  # the other lines still count
    summary = _keys(result)["drill-history"]["summary"]
    assert "2 damaged line(s)" in summary and "line 2: not UTF-8" in summary and "line 3: not JSON" in summary


# ------------------------------------------------------------------------------------------ --prometheus
def test_status_prometheus_into_a_read_only_folder_is_exit_5(env):
    cfg = env["cfg"]
    run_backup(cfg, "weekly", logical_date=_ago(1))
    folder = env["tmp"] / "textfile"
    folder.mkdir()
    mounted = False
    if os.geteuid() == 0:  # root writes through mode bits: a read-only file system instead
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)]).returncode == 0
    if not mounted:
        folder.chmod(0o555)
        if os.access(folder, os.W_OK):
            pytest.skip("cannot make a folder read-only here")
    try:
        p = _cli(env["path"], "status", "--prometheus", str(folder / "backups.prom"))
        assert p.returncode == 5, p.stdout + p.stderr
        assert "Traceback" not in p.stderr and f"cannot write the metrics file {folder / 'backups.prom'}" in p.stderr
        assert "writable" in p.stderr and not list(folder.iterdir())
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)
        folder.chmod(0o755)


def test_a_line_appended_after_a_torn_one_is_kept(tmp_path):
    from backups.monitoring.store import append_jsonl, read_jsonl_checked

    path = tmp_path / "history.jsonl"
    path.write_bytes(b'{"id": "d1", "at": "2026-12-01T00:00:00+00:00"}\n{"id": "d2", "at": "2026-1')  # killed writer
    append_jsonl(path, {"id": "d3", "at": "2026-12-03T00:00:00+00:00"})
    recs, problems = read_jsonl_checked(path)
    assert [r["id"] for r in recs] == ["d1", "d3"] and len(problems) == 1 and problems[0].startswith("line 2: not JSON")
    append_jsonl(path, {"id": "d4"})
    assert [r["id"] for r in read_jsonl_checked(path)[0]] == ["d1", "d3", "d4"]


def test_a_whole_lost_full_is_one_problem_per_storage_and_the_document_stays_small(env, monkeypatch):
    import shutil

    from backups.monitoring import status as status_module

    cfg, repo = env["cfg"], env["repo"]
    ids = _all_tiers(cfg)
    lost = [p for p in (repo / "data" / ids["weekly"]).iterdir() if not p.name.endswith(".part.json")]  # objects
    shutil.rmtree(repo / "data" / ids["weekly"])
    monkeypatch.setattr(status_module, "MAX_PRESENCE_PROBLEMS", 3)
    result = status(cfg)
    daily = _tier(result, "daily")
    assert len(daily["presence"]["problems"]) == 3 and daily["presence"]["omitted"] == {"local": len(lost) - 3}
    assert [k for k in _keys(result) if k.startswith("presence:daily")] == ["presence:daily:local"]
    assert f"(and {len(lost) - 1} more object(s))" in _keys(result)["presence:daily:local"]["summary"]
