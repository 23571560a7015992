"""Faults of the verification record (issue 16): an open ``verify-failed`` must never turn into ``BACKUP OK``
because the record that holds it was truncated, emptied (``{}``, ``[]``), overwritten with garbage, replaced by
another repository's record, given the wrong types, or deleted.

Each case: every tier backed up, one byte of the weekly full flipped (size kept, so only a re-hash sees it),
``verify --all --read-data`` finds it (the failure is open), then every verification record there is gets damaged
— the newest generation in the repository and, for the versions that kept one, the per-host
``verify_state.json``. ``backupctl status --check`` (a real CLI process) must stay non-OK and name the record; a
verification of one snapshot must not replace a damaged record; ``verify --all --read-data`` rebuilds it (the
failure is open again), and once the byte is repaired, the next one closes it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backups.commands.backup import run_backup
from backups.commands.status import status
from backups.commands.verify import verify
from backups.errors import IntegrityError
from backups.monitoring import status_dir
from tests.helpers import make_app, subprocess_env

FOREIGN = {"format": "backups-verification-record", "format_version": 1, "application": "another-app",
           "written_at": "2026-12-01T00:00:00+00:00", "last": None, "last_read_data_ok": None, "verified": {},
           "open": {}}
WRONG_TYPES = {**FOREIGN, "application": "fmr-test", "open": [], "verified": {"x": "yes"}}

DAMAGE = {
    "truncated": lambda raw: raw[: len(raw) // 2],
    "empty-object": lambda raw: b"{}",
    "empty-list": lambda raw: b"[]",
    "garbage": lambda raw: bytes(range(256)) * 3,
    "foreign": lambda raw: json.dumps(FOREIGN).encode(),
    "wrong-types": lambda raw: json.dumps(WRONG_TYPES).encode(),
    "zero-bytes": lambda raw: b"",
}


def _ago(hours: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours)).replace(microsecond=0).isoformat()


def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backups.cli", "--config", str(cfg), *args], capture_output=True,
                          text=True, env=subprocess_env(), timeout=120)


def _keys(cfg) -> dict[str, dict]:
    return {p["key"]: p for p in status(cfg).status["problems"]}


def _flip(path: Path) -> None:
    path.chmod(0o644)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.fixture
def failed(tmp_path):
    """Every tier backed up, one byte of the weekly full flipped, and the failure found (open)."""
    app = make_app(tmp_path, scale=0.1, seed=7)
    cfg = app["cfg"]
    ids = {t: run_backup(cfg, t, logical_date=_ago(h))["id"] for t, h in (("weekly", 3), ("monthly", 2.5), ("daily", 2))}
    repo = app["root"] / "local"
    obj = max((repo / "data" / ids["weekly"]).iterdir(), key=lambda p: p.stat().st_size)
    _flip(obj)
    assert not verify(cfg, every=True, read_data=True).ok
    assert "verify-failed:local" in _keys(cfg)
    return {**app, "repo": repo, "ids": ids, "object": obj}


def _damage_every_record(app: dict, how) -> list[Path]:
    """The newest generation in the repository and the per-host file of earlier versions, as far as they exist."""
    gens = sorted((app["repo"] / "verification" / "fmr-test").glob("*.json"))
    legacy = status_dir(app["cfg"]) / "verify_state.json"
    targets = [p for p in (gens[-1:] if gens else []) + [legacy] if p.exists()]
    assert targets, "no verification record found at all"
    for path in targets:
        path.chmod(0o644)
        path.write_bytes(how(path.read_bytes()))
    return targets


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_verification_record_is_critical_never_ok(failed, case):
    cfg, path = failed["cfg"], failed["config_path"]
    _damage_every_record(failed, DAMAGE[case])
    p = _cli(path, "status", "--check")
    assert p.returncode == 2 and p.stdout.startswith("BACKUP CRITICAL"), p.stdout + p.stderr
    assert "verify-record:local" in p.stdout and "Traceback" not in p.stderr
    problem = _keys(cfg)["verify-record:local"]
    assert problem["severity"] == "critical" and "the verification record of storage local" in problem["summary"]
    assert "fix: run `backupctl verify --all --read-data`" in problem["summary"]
    if case == "foreign":
        assert "belongs to another repository" in problem["summary"] and "another-app" in problem["summary"]
    doc = status(cfg).status
    assert all(t["state"] == "critical" for t in doc["tiers"] if t["newest_id"])  # no tier is green
    assert all(t["verification"]["state"] == "unknown" for t in doc["tiers"] if t["newest_id"])

    # a verification of one snapshot does not replace what it cannot re-establish
    assert not verify(cfg, snapshot=failed["ids"]["weekly"], read_data=True).ok
    assert "verify-record:local" in _keys(cfg)
    assert verify(cfg, snapshot=failed["ids"]["daily"]).ok  # structure passes; the record stays damaged
    assert "verify-record:local" in _keys(cfg)

    # a verification of everything with --read-data rebuilds it: the failure is open again, named
    assert not verify(cfg, every=True, read_data=True).ok
    keys = _keys(cfg)
    assert "verify-record:local" not in keys and failed["ids"]["weekly"] in keys["verify-failed:local"]["summary"]
    _flip(failed["object"])  # repaired
    assert verify(cfg, every=True, read_data=True).ok
    p = _cli(path, "status", "--check")
    assert p.returncode == 0 and p.stdout.startswith("BACKUP OK"), p.stdout + p.stderr


def test_a_deleted_verification_record_is_not_ok_either(failed):
    cfg = failed["cfg"]
    for gen in (failed["repo"] / "verification" / "fmr-test").glob("*.json"):
        gen.unlink()
    (status_dir(cfg) / "verify_state.json").unlink(missing_ok=True)
    p = _cli(failed["config_path"], "status", "--check")
    # without a record no snapshot has a passed verification: every tier unverified (a warning), never OK
    assert p.returncode == 1 and "unverified:daily" in p.stdout and "unverified:weekly" in p.stdout, p.stdout


def _remember(cfg) -> None:
    """What backup_monitoring's last run leaves: the status document, the monitoring's memory."""
    from backups.monitoring import status_path

    path = status_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(status(cfg).status))


def test_a_rolled_back_verification_record_is_critical(failed):
    """Before: deleting the newest generation made the older one (from before the failure) the record: BACKUP OK
    over a damaged weekly full. The previous status remembers the newest key it saw."""
    cfg = failed["cfg"]
    _remember(cfg)
    gens = sorted((failed["repo"] / "verification" / "fmr-test").glob("*.json"))
    assert len(gens) >= 2
    gens[-1].unlink()
    p = _cli(failed["config_path"], "status", "--check")
    assert p.returncode == 2 and "verify-record:local" in p.stdout, p.stdout + p.stderr
    problem = _keys(cfg)["verify-record:local"]
    assert "went back to" in problem["summary"] and gens[-1].stem in problem["summary"]
    assert verify(cfg, every=True, read_data=True).ok is False  # a new record: the failure is open again, named
    keys = _keys(cfg)
    assert "verify-record:local" not in keys and failed["ids"]["weekly"] in keys["verify-failed:local"]["summary"]


def test_a_record_deleted_and_restarted_by_the_next_backup_keeps_the_open_failure(failed):
    """Before: with every generation deleted, the next daily backup's integrity check wrote a fresh record holding
    only its own snapshot, and the damaged weekly full the daily chain needs was forgotten."""
    cfg = failed["cfg"]
    _remember(cfg)
    for gen in (failed["repo"] / "verification" / "fmr-test").glob("*.json"):
        gen.unlink()
    with pytest.raises(IntegrityError) as info:  # its chain holds the damaged weekly: its test restore fails
        run_backup(cfg, "daily", logical_date=_ago(1))
    assert "test restore of daily-" in info.value.message and "--type full" in info.value.hint
    keys = _keys(cfg)
    assert "verify-failed:local" in keys and failed["ids"]["weekly"] in keys["verify-failed:local"]["summary"], keys
    doc = status(cfg).status
    assert all(t["state"] == "critical" for t in doc["tiers"] if t["tier"] in ("daily", "weekly"))
    _remember(cfg)  # the memory carries it from run to run until a verification passes
    assert "verify-failed:local" in _keys(cfg)
    _flip(failed["object"])  # repaired
    assert verify(cfg, every=True, read_data=True).ok
    assert "verify-failed:local" not in _keys(cfg)
