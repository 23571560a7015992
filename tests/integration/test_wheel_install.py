"""Packaging: the built wheel, installed alone into an empty venv, gives a working ``backupctl``.

``pyproject.toml`` must declare every runtime dependency of the core (a missing one — croniter, cryptography,
tqdm… — breaks the installed CLI while the dev venv, which has the whole stack, hides it). The venv gets only the
wheel and what it declares (versions constrained to ``requirements.txt``, so uv's cache serves them), then runs
``backupctl --help`` and a local, encrypted backup → incremental → verify → restore with a tiny config.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

KEY = "c3" * 32


def _uv() -> list[str]:
    uv = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv:
        return [uv]
    pytest.fail("uv is required (make venv / .ci/run install it: python3 -m pip install uv)")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """An empty Python 3.11 venv holding only the project's wheel and its declared dependencies."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    _run([*_uv(), "build", "--wheel", "-q", "-o", str(tmp / "dist"), str(ROOT)], env=env)
    wheels = list((tmp / "dist").glob("fmr_backups-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp / "venv"
    _run([*_uv(), "venv", "-q", "--python", "3.11", str(venv)], env=env)
    _run([*_uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(wheels[0]),
          "-c", str(ROOT / "requirements.txt")], env=env)
    return venv


def _cli(venv: Path, tmp: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp), "LANG": "C.UTF-8", "WHEEL_KEY": KEY}
    proc = subprocess.run([str(venv / "bin" / "backupctl"), *args], capture_output=True, text=True, env=env,
                          cwd=tmp, timeout=120)
    if check:
        assert proc.returncode == 0, f"backupctl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_installed_wheel_pulls_no_airflow_and_no_test_tools(wheel_venv):
    """No Airflow, no test tools, and not the repository's development tooling (``tools/``: the local Airflow
    launcher, the Airflow demo) — probed from outside the repository, where ``python -c`` cannot see ``tools/``."""
    py = str(wheel_venv / "bin" / "python")
    probe = ("import importlib.util as u; "
             "print(' '.join(m for m in ('airflow', 'great_expectations', 'pytest', 'moto', 'ruff', 'boto3', "
             "'tools') "
             "if u.find_spec(m)))")
    assert _run([py, "-c", probe], cwd=wheel_venv).stdout.strip() == ""
    # the core's own dependencies are all there (a missing one is what broke `pip install .`)
    _run([py, "-c", "import croniter, cryptography, pydantic, tqdm, yaml, zstandard"])


def test_installed_backupctl_backs_up_and_restores_a_local_config(wheel_venv, tmp_path):
    home = tmp_path / "home"
    (home / "config").mkdir(parents=True)
    (home / "config" / "fleet.yaml").write_text("robots: 12\n")
    db = sqlite3.connect(home / "app.db")
    db.executescript("CREATE TABLE robots(id INTEGER PRIMARY KEY, name TEXT); INSERT INTO robots(name) VALUES ('r1');")
    db.commit()
    cfg = tmp_path / "backups.yaml"
    cfg.write_text(f"""\
application: wheel-test
sources:
  app_db:    {{type: sqlite, path: "{home}/app.db"}}
  app_files: {{type: files, root: "{home}", include: ["config/**"]}}
  state:     {{type: command, command: ["echo", "fmr-state"]}}
storages:
  local: {{type: local, path: "{tmp_path}/repo", encryption: {{key_env: WHEEL_KEY}}}}
tiers:
  daily:  {{type: incremental, schedule: "0 2 * * 1-6", sources: [app_db, app_files, state], storages: [local]}}
  weekly: {{type: full, schedule: "0 1 * * 0", sources: [app_db, app_files, state], storages: [local]}}
""")
    help_text = _cli(wheel_venv, tmp_path, "--help").stdout
    assert "backup" in help_text and "restore" in help_text
    c = ["--config", str(cfg)]
    # Great Expectations is an extra: without it a backup whose test restore would validate a database is refused up
    # front (nothing written), naming the fix; --no-validate still restores every file and loads every dump
    nogx = _cli(wheel_venv, tmp_path, *c, "backup", "--tier", "weekly", "--logical-date", "2026-03-01T01:00:00Z", check=False)
    assert nogx.returncode == 2 and "Great Expectations is not installed" in nogx.stderr, nogx.stderr
    assert "--no-validate" in nogx.stderr and "Traceback" not in nogx.stderr and not (tmp_path / "repo").exists()
    _cli(wheel_venv, tmp_path, *c, "backup", "--no-validate", "--tier", "weekly", "--logical-date", "2026-03-01T01:00:00Z")
    (home / "config" / "fleet.yaml").write_text("robots: 13\n")
    db.execute("INSERT INTO robots(name) VALUES ('r2')")
    db.commit()
    db.close()
    out = _cli(wheel_venv, tmp_path, *c, "backup", "--no-validate", "--tier", "daily", "--logical-date",
               "2026-03-02T02:00:00Z").stdout
    assert "type=incremental" in out and "parent=weekly-20260301T010000Z" in out
    _cli(wheel_venv, tmp_path, *c, "verify", "--all", "--read-data")
    # Great Expectations is an extra: without it a restore that would validate a database is refused up front
    nogx = _cli(wheel_venv, tmp_path, *c, "restore", "latest", "--target", str(tmp_path / "restored"), check=False)
    assert nogx.returncode == 2 and "Great Expectations is not installed" in nogx.stderr, nogx.stderr
    assert "--no-validate" in nogx.stderr and "Traceback" not in nogx.stderr
    assert not (tmp_path / "restored").exists()
    _cli(wheel_venv, tmp_path, *c, "restore", "latest", "--target", str(tmp_path / "restored"), "--no-validate")
    assert "validation turned off" in (tmp_path / "restored" / "RESTORE_REPORT.md").read_text()
    assert (tmp_path / "restored" / "app_files" / "config" / "fleet.yaml").read_text() == "robots: 13\n"
    rows = sqlite3.connect(tmp_path / "restored" / "app_db" / "app.db").execute("SELECT name FROM robots ORDER BY id")
    assert [r[0] for r in rows] == ["r1", "r2"]
    assert (tmp_path / "restored" / "state" / "stdout").read_text() == "fmr-state\n"
    # bad input from the installed CLI: one message, the documented exit code, no traceback
    bad = _cli(wheel_venv, tmp_path, "--config", str(tmp_path / "missing.yaml"), "list", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "missing.yaml" in bad.stderr


def test_installed_doctor_says_no_config_ships(wheel_venv, tmp_path):
    """Issue 20 item 8: the pip route ships no config; doctor said it "used the shipped …/site-packages/backups.yaml",
    which does not exist. Now it fails BACKUP_CONFIG, says no config ships, and names the copy to make."""
    cfg = tmp_path / "backups.yaml"
    cfg.write_text(f"application: doc\nsources:\n  f: {{type: files, root: \"{tmp_path}\"}}\nstorages:\n  local: {{type: local, path: "
                   f"\"{tmp_path}/repo\"}}\ntiers:\n  daily: {{type: full, schedule: \"0 2 * * *\", sources: [f], "
                   "storages: [local]}\n")
    out = _cli(wheel_venv, tmp_path, "--config", str(cfg), "doctor", check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("FAIL  env BACKUP_CONFIG"))
    assert "no shipped config" in line and "ships none" in line and "the shipped" not in out.stdout
    assert "copy the project's include/backups.yaml" in out.stdout
    assert any(x.startswith("SKIP  airflow") for x in out.stdout.splitlines()), out.stdout  # no Airflow there
