"""The CLI: help everywhere, documented exit codes, fast start without Airflow or Great Expectations."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import subprocess_env, write_config

CLI = [sys.executable, "-c", "import sys; from backups.cli import main; sys.exit(main(sys.argv[1:]))"]


def run(*args, env=None):
    e = subprocess_env(**(env or {}))
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=e)


@pytest.mark.parametrize("cmd", [[], ["backup"], ["list"], ["show"], ["restore"], ["verify"], ["status"], ["unlock"]])
def test_help_everywhere(cmd):
    p = run(*cmd, "--help")
    assert p.returncode == 0 and "usage: backupctl" in p.stdout


def test_bad_config_exit_2_and_nothing_written(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("application: x\nsources: {}\n")
    p = run("--config", str(cfg), "backup", "--tier", "daily")
    assert p.returncode == 2 and "bad.yaml" in p.stderr
    assert list(tmp_path.iterdir()) == [cfg]


def test_unknown_tier_and_snapshot_exit_3(tmp_path):
    from backups.demo import fmr

    fmr.generate(tmp_path / "home", scale=0.2)
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "home", tmp_path / "repo")
    p = run("--config", str(cfg), "backup", "--tier", "hourly")
    assert p.returncode == 3 and "hourly" in p.stderr and "daily" in p.stderr
    p = run("--config", str(cfg), "show", "weekly-20200101T000000Z")
    assert p.returncode == 3


def test_backup_list_show_restore_verify_status_json(tmp_path):
    from backups.demo import fmr

    fmr.generate(tmp_path / "home", scale=0.2)
    cfg = str(write_config(tmp_path / "c.yaml", tmp_path / "home", tmp_path / "repo"))
    p = run("--config", cfg, "backup", "--tier", "weekly", "--logical-date", "2026-04-05T01:00:00Z", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["id"] == "weekly-20260405T010000Z"
    p = run("--config", cfg, "backup", "--tier", "daily", "--type", "differential", "--logical-date", "2026-04-06T02:00:00Z")
    assert p.returncode == 0 and "differential" in p.stdout
    listing = json.loads(run("--config", cfg, "list", "--json").stdout)
    assert [s["type"] for s in listing["snapshots"]] == ["full", "differential"]
    files = run("--config", cfg, "show", "latest", "--files").stdout
    assert "app_files:" in files and "config/app.yaml" in files and "weekly-20260405T010000Z  config/app.yaml" in files
    shown = json.loads(run("--config", cfg, "show", "latest", "--json").stdout)
    assert [c["id"] for c in shown["chain_needed"]] == ["weekly-20260405T010000Z", "daily-20260406T020000Z"]
    p = run("--config", cfg, "restore", "latest", "--target", str(tmp_path / "out"))
    assert p.returncode == 0 and (tmp_path / "out" / "app_db" / "app.db").exists()
    p = run("--config", cfg, "restore", "latest", "--target", str(tmp_path / "out"))
    assert p.returncode == 7 and "--force" in p.stderr
    p = run("--config", cfg, "verify", "--all", "--read-data", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["ok"] is True
    status = json.loads(run("--config", cfg, "status", "--json").stdout)
    assert {t["tier"]: t["snapshots"] for t in status["tiers"]} == {"daily": 1, "weekly": 1, "monthly": 0, "manual": 0}


def test_cli_does_not_import_airflow_or_gx(tmp_path):
    from backups.demo import fmr

    fmr.generate(tmp_path / "home", scale=0.2)
    cfg = str(write_config(tmp_path / "c.yaml", tmp_path / "home", tmp_path / "repo"))
    code = (
        "import sys; from backups.cli import main; rc = main(sys.argv[1:]); "
        "bad = [m for m in ('airflow', 'great_expectations', 'pandas', 'boto3') if m in sys.modules]; "
        "print('HEAVY', bad, file=sys.stderr); sys.exit(rc or (9 if bad else 0))"
    )
    e = subprocess_env()
    for args in (["backup", "--tier", "weekly", "--no-validate"], ["restore", "latest", "--target", str(tmp_path / "o"), "--no-validate"], ["list"]):
        p = subprocess.run([sys.executable, "-c", code, "--config", cfg, *args], capture_output=True, text=True, env=e)
        assert p.returncode == 0, p.stderr
        assert "HEAVY []" in p.stderr


def test_exit_codes_documented():
    p = run("exit-codes")
    assert p.returncode == 0
    for code in ("0", "2", "3", "4", "5", "6", "7", "8", "9"):
        assert any(line.strip().startswith(code) for line in p.stdout.splitlines())


def test_prune_dry_run_then_prune(tmp_path):
    from backups.demo import fmr

    fmr.generate(tmp_path / "home", scale=0.2)
    cfg_path = write_config(tmp_path / "c.yaml", tmp_path / "home", tmp_path / "repo")
    cfg_path.write_text(cfg_path.read_text().replace(
        'sources: [app_db, app_files, system_state], storages: [local]}\n  monthly',
        'sources: [app_db, app_files, system_state], storages: [local], retention: {keep_last: 1}}\n  monthly'))
    cfg = str(cfg_path)
    for day in ("2026-04-05", "2026-04-12"):
        assert run("--config", cfg, "backup", "--tier", "weekly", "--logical-date", f"{day}T01:00:00Z").returncode == 0
    p = run("--config", cfg, "prune", "--dry-run", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["storages"][0]["forget"] == ["weekly-20260405T010000Z"]
    assert len(json.loads(run("--config", cfg, "list", "--json").stdout)["snapshots"]) == 2
    p = run("--config", cfg, "prune")
    assert p.returncode == 0 and "forgot 1" in p.stdout
    assert [s["id"] for s in json.loads(run("--config", cfg, "list", "--json").stdout)["snapshots"]] == ["weekly-20260412T010000Z"]


def test_unusable_staging_directory_is_a_clear_error(tmp_path):
    from backups.demo import fmr

    fmr.generate(tmp_path / "home", scale=0.2)
    cfg = str(write_config(tmp_path / "c.yaml", tmp_path / "home", tmp_path / "repo"))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    p = run("--config", cfg, "backup", "--tier", "weekly", env={"BACKUP_STAGING": str(blocker / "staging")})
    assert p.returncode == 2 and "BACKUP_STAGING" in p.stderr and "fix:" in p.stderr
    assert json.loads(run("--config", cfg, "list", "--json").stdout)["snapshots"] == []


def test_status_reports_stale_locks_and_unlock_removes_them(tmp_path):
    """A lock of another host with an old heartbeat blocks, is reported by status, and goes with unlock."""
    from datetime import UTC, datetime, timedelta

    from backups.demo import fmr

    fmr.generate(tmp_path / "home", scale=0.2)
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "home", tmp_path / "repo")
    cfg.write_text(cfg.read_text() + "locks: {wait_seconds: 0}\n")
    locks = tmp_path / "repo" / "local" / "locks"
    locks.mkdir(parents=True)
    old = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    (locks / "0123abcd.json").write_text(json.dumps({
        "lock_format": 1, "scope": "repo", "exclusive": True, "operation": "prune", "host": "worker-7", "pid": 99,
        "run": "backup_retention/scheduled__2026-11-29/prune try 1", "created": old, "heartbeat": old}))
    p = run("--config", str(cfg), "backup", "--tier", "weekly")
    assert p.returncode == 9 and "worker-7" in p.stderr and "STALE" in p.stderr and "backupctl unlock --stale" in p.stderr
    assert "Traceback" not in p.stderr
    p = run("--config", str(cfg), "status")
    assert p.returncode == 0 and "STALE" in p.stdout and "worker-7" in p.stdout and "unlock --stale" in p.stderr
    p = run("--config", str(cfg), "status", "--json")
    assert [lk["state"] for lk in json.loads(p.stdout)["locks"]] == ["stale"]
    p = run("--config", str(cfg), "unlock", "--stale")
    assert p.returncode == 0 and "removed 1 lock(s)" in p.stdout and "worker-7" in p.stdout
    assert not locks.exists()  # the last lock object went (and with it the empty folder)
    p = run("--config", str(cfg), "backup", "--tier", "weekly")
    assert p.returncode == 0, p.stderr
    assert not locks.exists()
