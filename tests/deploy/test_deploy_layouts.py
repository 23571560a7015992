"""Deployment: the DAGs run in the two layouts README "Deploy to your Airflow" documents, on the production config.

* **Astro layout** — a venv holding only ``requirements.txt`` (the project itself *not* installed: no
  ``backups.resolvers`` entry point), an ``AIRFLOW_HOME`` laid out as an Astro project: ``dags/`` (the DAGs
  folder), ``include/`` next to it (the DAG files put it on ``sys.path`` themselves) and ``plugins/`` (the plugins
  folder). No ``BACKUP_CONFIG``: the DAGs read the shipped ``include/backups.yaml``.
* **pip route** — an empty venv plus ``pip install '.[airflow]' -c requirements.txt`` (uv, warm cache: about
  half a minute), only the files of ``dags/`` in the DAGs folder, and the production config copied out and named
  by ``BACKUP_CONFIG``, as the README says (a pip-installed package ships no config).

Each route against loopback servers (``backups.demo.servers``: moto S3, a real sshd): every DAG file parses (no
import error, every DAG id there), then through ``airflow dags test`` a ``backup_weekly`` run (local + S3 +
SFTP), ``restore_snapshot`` from the S3 storage (a ``conn_id``, approval off) and ``dr_drill`` on the offsite
(SFTP) copy. To keep the cost down (Airflow takes seconds to import), each route runs its ``airflow`` commands
— ``db migrate``, ``dags list-import-errors``, ``dags list``, three ``dags test`` — in ONE process of its venv:
the CLI's own parser and command functions, called in turn (:data:`DRIVER`); a failed run raises ``SystemExit``
("DagRun failed") and stops the sequence with a non-zero exit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers import ROOT, tree

pytestmark = [pytest.mark.slow]

DAG_IDS = {"backup_daily", "backup_weekly", "backup_monthly", "backup_manual", "backup_monitoring",
           "backup_retention", "restore_snapshot", "dr_drill"}
#: runs ``airflow <argv>`` for each argv of the JSON list in argv[1], in this process, each output after a marker
DRIVER = """
import json, sys
from airflow.cli import cli_parser
parser = cli_parser.get_parser()
for argv in json.loads(sys.argv[1]):
    print("=== airflow " + " ".join(argv), flush=True)
    args = parser.parse_args(argv)
    args.func(args)
    sys.stdout.flush()
"""
COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")  # a checkout has no egg-info


def _uv() -> str:
    uv = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if not uv:
        pytest.fail("uv is required (make venv / .ci/run install it: python3 -m pip install uv)")
    return uv


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("VIRTUAL_ENV", "PYTHONPATH") and not k.startswith(("AIRFLOW", "BACKUP_", "FMR_"))}


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 300, **kw) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or _clean_env(), **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n" \
                                 f"{proc.stderr[-8000:]}"
    return proc.stdout


def _json(out: str):
    """The JSON document an ``airflow … -o json`` command printed (its last line; log lines come before it)."""
    return json.loads(next(line for line in reversed(out.splitlines()) if line.startswith(("[", "{"))))


def _requirements_venv(path: Path) -> Path:
    """A Python 3.11 venv with ``requirements.txt`` only (uv's warm cache: seconds)."""
    _run([_uv(), "venv", "-q", "--python", "3.11", str(path)])
    _run([_uv(), "pip", "install", "-q", "--python", str(path / "bin" / "python"), "-r", str(ROOT / "requirements.txt")])
    return path


@pytest.fixture(scope="session")
def deploy_base(tmp_path_factory) -> dict[str, Path]:
    """The Astro venv (``requirements.txt`` only) and the pip venv (``'.[airflow]' -c requirements.txt``)."""
    tmp = tmp_path_factory.mktemp("deploy")
    astro = _requirements_venv(tmp / "venv-astro")
    pip = tmp / "venv-pip"
    _run([_uv(), "venv", "-q", "--python", "3.11", str(pip)])
    # README's command; --refresh-package: uv would otherwise reuse a wheel it built from an older checkout
    _run([_uv(), "pip", "install", "-q", "--python", str(pip / "bin" / "python"), f"{ROOT}[airflow]",
          "-c", str(ROOT / "requirements.txt"), "--refresh-package", "fmr-backups"])
    return {"astro": astro, "pip": pip}


def _layout(route: str, home: Path) -> dict[str, str]:
    """The AIRFLOW_HOME of ``route`` and the environment its Airflow commands run in (servers not included)."""
    (home / "dags").mkdir(parents=True)
    for f in (ROOT / "dags").glob("*.py"):
        shutil.copy2(f, home / "dags" / f.name)
    shutil.copytree(ROOT / "plugins", home / "plugins", ignore=COPY_IGNORE)
    env = {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}"}
    if route == "astro":
        shutil.copytree(ROOT / "include", home / "include", ignore=COPY_IGNORE)
    else:  # the package is installed; the config is copied out of the checkout (README "Deploy to your Airflow")
        shutil.copy2(ROOT / "include" / "backups.yaml", home / "backups.yaml")
        env["BACKUP_CONFIG"] = str(home / "backups.yaml")
    return env


@pytest.mark.parametrize("route", ["astro", "pip"])
def test_dags_parse_back_up_restore_and_drill(deploy_base, tmp_path, route):
    from backups.demo import fmr
    from backups.demo.servers import remote_servers

    venv = deploy_base[route]
    home, backups = tmp_path / "fmr", tmp_path / "backups"
    fmr.generate(home, scale=0.2, seed=23)
    env = {**_clean_env(), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "FMR_HOME": str(home), "BACKUP_ROOT": str(backups), "BACKUP_STAGING": str(tmp_path / "staging"),
           **_layout(route, tmp_path / "airflow")}
    (tmp_path / "staging").mkdir()
    python = str(venv / "bin" / "python")
    probe = "import importlib.metadata as m; print(sorted(e.name for e in m.entry_points(group='backups.resolvers')))"
    assert _run([python, "-c", probe], env=env).strip() == ("[]" if route == "astro" else "['airflow']")
    # the newest weekly slot (Sundays 01:00 UTC) that has passed: the drill's RPO (192 h) holds for it
    now = datetime.now(UTC)
    sunday = (now - timedelta(days=(now.weekday() + 1) % 7)).replace(hour=1, minute=0, second=0, microsecond=0)
    weekly_at = sunday if sunday <= now - timedelta(minutes=10) else sunday - timedelta(days=7)
    weekly = f"weekly-{weekly_at:%Y%m%dT%H%M%SZ}"
    target = tmp_path / "restored"
    commands = [
        ["db", "migrate"],
        ["dags", "list-import-errors", "--local", "-o", "json"],
        ["dags", "list", "--local", "-o", "json"],
        ["dags", "test", "backup_weekly", weekly_at.isoformat()],
        ["dags", "test", "restore_snapshot", "-c",
         json.dumps({"target": str(target), "storage": "cloud", "require_approval": False})],
        ["dags", "test", "dr_drill", "-c", json.dumps({"tiers": ["weekly"]})],
    ]

    # a bucket per route: moto keeps its buckets per process, across servers
    with remote_servers(tmp_path / "offsite", bucket=f"fmr-backups-{route}") as remote:
        out = _run([python, "-c", DRIVER, json.dumps(commands)], env={**env, **remote}, timeout=900)

    sections = dict(part.split("\n", 1) for part in out.split("=== airflow ")[1:])
    assert _json(sections["dags list-import-errors --local -o json"]) == []  # every DAG file parses
    assert {d["dag_id"] for d in _json(sections["dags list --local -o json"])} >= DAG_IDS
    # each `dags test` succeeded (a failed one stops the driver: non-zero exit); what they left behind:
    assert (backups / "local" / "snapshots" / f"{weekly}.json").exists()
    assert (tmp_path / "offsite" / "snapshots" / f"{weekly}.json").exists()  # the SFTP copy (encrypted)
    restored = {k: v for k, v in tree(target / "app_files").items() if k.split(os.sep)[0] in ("config", "uploads")}
    original = {k: v for k, v in tree(home).items() if k.split(os.sep)[0] in ("config", "uploads")}
    assert restored and restored == original  # restored from S3 (conn_id backup_s3)
    assert weekly in (target / "RESTORE_REPORT.md").read_text()
    drills = list((backups / "local" / "reports" / "drill").glob("drill-*.md"))
    assert len(drills) == 1 and ": PASSED" in drills[0].read_text().splitlines()[0], drills
