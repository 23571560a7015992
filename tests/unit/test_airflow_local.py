"""The local Airflow launcher (make airflow, browser tests): stop ends the whole group and every straggler of
its AIRFLOW_HOME, and nothing else; the metadata DB choice."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

import pytest

from tools import airflow_local as local

# stands in for an Airflow component: its argv names airflow, it starts a child that leaves the process group
# (start_new_session) but keeps the environment, then both sleep
COMPONENT = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "airflow-child"], start_new_session=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_stop_ends_the_group_and_stragglers_but_not_other_homes(tmp_path):
    home, other = tmp_path / "home", tmp_path / "other"
    home.mkdir()
    other.mkdir()
    env = {**os.environ, "AIRFLOW_HOME": str(home)}
    first = subprocess.Popen([sys.executable, "-c", COMPONENT, "airflow-scheduler"], env=env, process_group=0)
    second = subprocess.Popen([sys.executable, "-c", COMPONENT, "airflow-triggerer"], env=env, process_group=first.pid)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "airflow-other"],
                                 env={**os.environ, "AIRFLOW_HOME": str(other)})
    try:
        (home / local.PIDFILE).write_text(json.dumps({"pgid": first.pid, "pids": {}}))
        deadline = time.monotonic() + 30
        while len(local.status(home)) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        running = local.status(home)
        assert len(running) == 4 and first.pid in running and bystander.pid not in running
        left = local.stop(home, grace=10)
        for p in (first, second):
            p.wait(timeout=10)
        assert left == [] and not any(_alive(pid) for pid in running)
        assert not (home / local.PIDFILE).exists()
        assert _alive(bystander.pid)
    finally:
        bystander.kill()
        bystander.wait()
        for p in (first, second):
            if p.poll() is None:
                p.kill()


def test_stale_pidfile_group_is_not_signalled(tmp_path):
    """A pidfile left from a crash may name a group id that now belongs to someone else: it is ignored."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], process_group=0)
    try:
        (tmp_path / local.PIDFILE).write_text(json.dumps({"pgid": stranger.pid, "pids": {}}))
        assert local.stop(tmp_path, grace=1) == []
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_metadata_db_postgres_when_reachable(tmp_path):
    if not local.pg_reachable():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    name = f"airflow_d_test_{os.getpid()}"
    try:
        url = local.metadata_db(tmp_path, name)
        assert url == f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        assert local.metadata_db(tmp_path, name) == url  # exists now: reused
    finally:
        local.drop_pg_database(name)


def test_ensure_password_is_kept_and_private(tmp_path):
    pw = local.ensure_password(tmp_path)
    assert len(pw) == 16 and local.ensure_password(tmp_path) == pw == local.password(tmp_path)
    assert (tmp_path / local.PASSWORDS_FILE).stat().st_mode & 0o077 == 0


def test_status_prints_the_environment_doctor_needs(tmp_path, monkeypatch, capsys):
    """`make airflow-status`: the variables of the servers' environment, the REST API connection included (doctor
    checks it; without it in the shell doctor warned it was missing)."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "sqlite:///x.db")
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://127.0.0.1:8090")
    assert local.main(["status"]) == 0
    assert "AIRFLOW_CONN_BACKUP_AIRFLOW_API" not in capsys.readouterr().out  # no password yet: no connection
    pw = local.ensure_password(tmp_path)
    assert local.main(["status"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and f"export AIRFLOW_HOME={tmp_path} AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sqlite:///x.db" in out
    line = next(x for x in out.splitlines() if "AIRFLOW_CONN_BACKUP_AIRFLOW_API=" in x)
    conn = json.loads(shlex.split(line.split("=", 1)[1])[0])
    assert conn == {"conn_type": "http", "host": "http://127.0.0.1:8090", "login": "admin", "password": pw}
    assert "AIRFLOW__CORE__FERNET_KEY" not in out  # no key generated yet (status never creates one)

    # issue 20: every variable doctor needs — the Fernet key, BACKUP_CONFIG and the config's own variables
    key = local.ensure_fernet_key(tmp_path)
    config = tmp_path / "backups.yaml"
    config.write_text("sources:\n  a: {type: files, root: '${DOC_HOME}'}\nstorages:\n  l: {type: local, path: "
                      "'${DOC_ROOT:-/x}', encryption: {key_env: DOC_KEY}}\n")
    for name, value in {"BACKUP_CONFIG": str(config), "DOC_HOME": "/srv/app", "DOC_KEY": "k3y", "UNRELATED": "x"}.items():
        monkeypatch.setenv(name, value)
    assert local.main(["status"]) == 0
    exported = dict(line.strip().removeprefix("export ").split("=", 1) for line in capsys.readouterr().out.splitlines()
                    if line.strip().startswith("export ") and "AIRFLOW_HOME" not in line and "_API=" not in line)
    assert exported == {"AIRFLOW__CORE__FERNET_KEY": key, "BACKUP_CONFIG": str(config), "DOC_HOME": "/srv/app",
                        "DOC_KEY": "k3y"}


def test_fernet_key_is_kept_private_and_valid(tmp_path):
    import base64

    key = local.ensure_fernet_key(tmp_path)
    assert local.ensure_fernet_key(tmp_path) == key and len(base64.urlsafe_b64decode(key)) == 32
    assert (tmp_path / local.FERNET_KEY_FILE).stat().st_mode & 0o077 == 0


def test_demo_environment_has_a_fernet_key_and_no_library_warning(tmp_path, monkeypatch):
    """`make demo` printed "empty cryptography key" and a starlette/httpx deprecation warning a user cannot act
    on: the demo's AIRFLOW_HOME gets the Fernet key `make airflow` shares, and that one warning is filtered."""
    import os
    import warnings

    from tools import demo_airflow

    for name in ("AIRFLOW_HOME", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__LOAD_EXAMPLES",
                 "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__LOGGING__LOGGING_LEVEL", "FMR_HOME", "BACKUP_ROOT",
                 "BACKUP_CONFIG"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    monkeypatch.delenv("AIRFLOW__CORE__FERNET_KEY")
    demo_airflow._environment(tmp_path, tmp_path / "backups.yaml")
    assert os.environ["AIRFLOW__CORE__FERNET_KEY"] == local.ensure_fernet_key(tmp_path / "airflow")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        demo_airflow._quiet_library_warnings()
        warnings.warn("Using `httpx` with `starlette.testclient` is deprecated; install `httpx2` instead.",
                      DeprecationWarning, stacklevel=1)
        warnings.warn("another deprecation", DeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["another deprecation"]
