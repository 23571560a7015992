"""Distributed safety: backup_weekly then backup_daily under CeleryExecutor with two workers.

Every process runs on loopback and is started and stopped here: the metadata DB is a fresh PostgreSQL database
on 127.0.0.1:5432, the broker is Redis on 127.0.0.1:6379 (a private DB number, flushed after), then the API server
(Airflow 3 workers talk to it), a scheduler, a dag-processor and two Celery workers, each worker with its own
working directory, AIRFLOW_HOME, TMPDIR and staging directory — a task that read a local file written by another
task would break here. The restored data must equal the source.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port

VENV_BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.airflow, pytest.mark.slow]


def _http(method: str, url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"{}")


def _wait(what: str, fn, timeout: float, procs: dict) -> object:
    end = time.time() + timeout
    last = None
    while time.time() < end:
        for name, (p, log) in procs.items():
            if p.poll() is not None:
                raise AssertionError(f"{name} exited with {p.returncode} while waiting for {what}:\n{log.read_text()[-3000:]}")
        try:
            result = fn()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - polling until ready
            last = exc
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


@pytest.fixture
def celery_cluster(tmp_path):
    psycopg = pytest.importorskip("psycopg")
    redis = pytest.importorskip("redis")
    if shutil.which("airflow", path=str(VENV_BIN)) is None:
        pytest.fail("airflow CLI not found in the virtualenv")
    db = f"af_celery_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True)
    admin.execute(f'CREATE DATABASE "{db}"')
    redis_db = 11
    r = redis.Redis(host="127.0.0.1", port=6379, db=redis_db)
    r.flushdb()
    from backups.demo import fmr

    home, backups = tmp_path / "fmr", tmp_path / "backups"
    fmr.generate(home, scale=0.5, seed=21)
    cfg = tmp_path / "backups.yaml"
    text = (ROOT / "include" / "backups.local.yaml").read_text()
    # no automatic runs in the test: the runs are triggered explicitly with fixed logical dates
    text = text.replace('schedule: "0 2 * * 1-6"', "schedule: null").replace('schedule: "0 1 * * 0",  ', "schedule: null,")
    text = text.replace('schedule: "0 3 1 * *"', "schedule: null")
    cfg.write_text(text)
    port = free_port()
    conn = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(tmp_path / "af-home"),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__FERNET_KEY": "",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": conn,
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:6379/{redis_db}",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{conn}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex,
        "AIRFLOW__API__SECRET_KEY": uuid.uuid4().hex,
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'include'}",
        "BACKUP_CONFIG": str(cfg),
        "FMR_HOME": str(home),
        "BACKUP_ROOT": str(backups),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    airflow = str(VENV_BIN / "airflow")
    mig = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert mig.returncode == 0, mig.stdout[-3000:] + mig.stderr[-3000:]
    pool = subprocess.run([airflow, "pools", "set", "backup_io", "2", "backup I/O"], env=env, capture_output=True, text=True)
    assert pool.returncode == 0, pool.stderr[-2000:]
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}

    def start(name: str, args: list[str], extra: dict | None = None, cwd: Path | None = None) -> None:
        log = tmp_path / f"{name}.log"
        e = {**env, **(extra or {})}
        procs[name] = (subprocess.Popen([airflow, *args], env=e, cwd=cwd or tmp_path, stdout=open(log, "wb"),  # noqa: SIM115
                                        stderr=subprocess.STDOUT, start_new_session=True), log)

    try:
        start("api-server", ["api-server", "-H", "127.0.0.1", "-p", str(port), "-w", "1"])
        start("scheduler", ["scheduler"])
        start("dag-processor", ["dag-processor"])
        for w in ("worker1", "worker2"):
            wd = tmp_path / w
            (wd / "tmp").mkdir(parents=True)
            (wd / "staging").mkdir()
            start(w, ["celery", "worker", "--celery-hostname", f"{w}@%h", "--concurrency", "2", "--skip-serve-logs"],
                  {"AIRFLOW_HOME": str(wd / "home"), "TMPDIR": str(wd / "tmp"), "BACKUP_STAGING": str(wd / "staging")}, cwd=wd)
        base = f"http://127.0.0.1:{port}"
        _wait("api-server health", lambda: _http("GET", f"{base}/api/v2/monitor/health"), 180, procs)
        yield {"base": base, "procs": procs, "home": home, "backups": backups, "cfg": cfg, "env": env, "tmp": tmp_path}
    finally:
        for p, _ in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p, _ in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()
        r.flushdb()


def _run_dag(c: dict, dag_id: str, logical_date: str) -> dict:
    base = c["base"]
    _wait(f"{dag_id} parsed", lambda: _http("GET", f"{base}/api/v2/dags/{dag_id}").get("dag_id"), 180, c["procs"])
    _http("PATCH", f"{base}/api/v2/dags/{dag_id}", {"is_paused": False})
    run = _http("POST", f"{base}/api/v2/dags/{dag_id}/dagRuns", {"logical_date": logical_date, "conf": {}})
    run_id = run["dag_run_id"]

    def done():
        st = _http("GET", f"{base}/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]
        return st if st in ("success", "failed") else None

    state = _wait(f"{dag_id} run", done, 600, c["procs"])
    tis = _http("GET", f"{base}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    summary = {f"{t['task_id']}[{t['map_index']}]": t["state"] for t in tis}
    assert state == "success", (summary, c["procs"]["scheduler"][1].read_text()[-2000:])
    return summary


def test_weekly_then_daily_on_two_celery_workers_restore_equals_source(celery_cluster):
    from backups.catalog import Catalog
    from backups.config import load_config
    from backups.demo import fmr
    from backups.engine.restorer import restore
    from backups.storage import open_storage
    from tests.helpers import app_tree, db_rows

    c = celery_cluster
    _run_dag(c, "backup_weekly", "2026-06-07T01:00:00Z")
    fmr.mutate(c["home"], seed=5)
    _run_dag(c, "backup_daily", "2026-06-08T02:00:00Z")
    logs = {w: c["procs"][w][1].read_text() for w in ("worker1", "worker2")}
    assert all("execute_workload" in text or "received" in text for text in logs.values()), "both workers must run tasks"
    os.environ.update({"FMR_HOME": str(c["home"]), "BACKUP_ROOT": str(c["backups"])})
    cfg = load_config(c["cfg"])
    storage = open_storage(cfg, "local")
    cat = Catalog(storage, cfg.application)
    snap = cat.get("latest")
    assert snap.id == "daily-20260608T020000Z" and snap.type == "incremental" and snap.parent == "weekly-20260607T010000Z"
    out = c["tmp"] / "restored"
    restore(storage, cat, snap, out)
    assert app_tree(out / "app_files") == app_tree(c["home"])
    assert db_rows(out / "app_db" / "app.db") == db_rows(c["home"] / "app.db")
