"""A local Airflow for ``make airflow`` and the browser tests: the four components as one process group.

Plain Python, no Airflow import (it runs the ``airflow`` CLI of this environment; REST calls through
:class:`backups.airflow_api.AirflowApi`, the client the DAGs use):

* :func:`metadata_db` — the metadata database: PostgreSQL ``<name>`` on 127.0.0.1:5432 when that server answers
  (the database is created if missing), otherwise SQLite in ``AIRFLOW_HOME``. SQLite serialises every write: with
  four components writing, a UI request can meet "database is locked" (a 500 on trigger / unpause, a run left
  queued); PostgreSQL has no such limit.
* :func:`start` — ``airflow db migrate``, then ``api-server``, ``scheduler``, ``dag-processor`` and ``triggerer``
  in one new process group (their workers and log servers inherit it), logs in ``AIRFLOW_HOME/logs/<component>.log``
  and the group's id in ``AIRFLOW_HOME/airflow-local.pid``.
* :func:`wait_healthy` — until ``/api/v2/monitor/health`` reports every component healthy (a component that
  exits meanwhile is reported with the tail of its log).
* :func:`stop` — SIGTERM to the group, SIGKILL after a grace period, then every remaining process whose
  environment has this ``AIRFLOW_HOME`` (a child that left the group); returns what could not be stopped.

Command line (the Makefile): ``python -m tools.airflow_local {db-url,start,stop,status}`` (from the repository root); the
environment (``AIRFLOW_HOME``, ``AIRFLOW__API__PORT``, ...) is the caller's.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from backups.airflow_api import AirflowApi, AirflowApiError

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
PIDFILE = "airflow-local.pid"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
FERNET_KEY_FILE = "fernet.key"  #: the local Airflow's ``[core] fernet_key`` (connection passwords encrypted in its DB)
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"


class LocalAirflowError(RuntimeError):
    """The local Airflow could not be started (the message says which component and shows its log's tail)."""


# ------------------------------------------------------------------------------------------- metadata DB
def pg_reachable(host: str = PG_HOST, port: int = PG_PORT, timeout: float = 2.0) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pg_admin(host: str, port: int, user: str):
    import psycopg

    return psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True, connect_timeout=5)


def ensure_pg_database(name: str, host: str = PG_HOST, port: int = PG_PORT, user: str = PG_USER) -> str:
    """Create PostgreSQL database ``name`` when missing; its SQLAlchemy URL (psycopg 3 driver)."""
    from psycopg import sql

    with _pg_admin(host, port, user) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"postgresql+psycopg://{user}@{host}:{port}/{name}"


def drop_pg_database(name: str, host: str = PG_HOST, port: int = PG_PORT, user: str = PG_USER) -> None:
    """Drop database ``name`` (ending its sessions first); nothing when it does not exist."""
    from psycopg import sql

    with _pg_admin(host, port, user) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                     (name,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def metadata_db(home: Path, name: str = "airflow_demo") -> str:
    """PostgreSQL ``name`` on 127.0.0.1:5432 when it answers (created if missing), else SQLite in ``home``."""
    if pg_reachable():
        try:
            return ensure_pg_database(name)
        except Exception as exc:  # noqa: BLE001 - a server we may not use (auth, permissions): fall back, say why
            print(f"PostgreSQL on {PG_HOST}:{PG_PORT} is not usable ({exc}); using SQLite", file=sys.stderr)
    return f"sqlite:///{home / 'airflow.db'}"


# ------------------------------------------------------------------------------------------- environment
#: settings every local Airflow of this project gets (the caller's environment wins)
LOCAL_DEFAULTS = {
    "AIRFLOW__CORE__PARALLELISM": "4",  # 32 LocalExecutor workers by default: too many for a laptop
    # a loaded laptop (or CI box) answers a task's first execution-API call slowly (the API server warms up):
    # with the default 5 s the first task of a run failed before it started
    "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
}


def airflow_env(home: Path, *, port: int, db_url: str, project: Path, dags: Path | None = None,
                plugins: Path | None = None, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment of a loopback Airflow on ``port`` for this project (the caller adds BACKUP_CONFIG & co.)."""
    env = dict(os.environ if base is None else base)
    venv_bin = str(Path(sys.executable).parent)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags or project / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins or project / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        **LOCAL_DEFAULTS,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "PYTHONPATH": os.pathsep.join([str(project), str(project / "include")]),
        "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
    })
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------- processes
@dataclass
class LocalAirflow:
    home: Path
    pgid: int
    url: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def log(self, component: str) -> Path:
        return self.home / "logs" / f"{component}.log"

    def stop(self, grace: float = 30.0) -> list[int]:
        """:func:`stop`, then reap the components (this process is their parent)."""
        left = stop(self.home, grace)
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        return left


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def migrate(env: Mapping[str, str]) -> None:
    home = Path(env["AIRFLOW_HOME"])
    (home / "logs").mkdir(parents=True, exist_ok=True)
    log = home / "logs" / "db-migrate.log"
    with log.open("wb") as out:
        rc = subprocess.run(["airflow", "db", "migrate"], env=dict(env), stdout=out, stderr=subprocess.STDOUT).returncode
    if rc:
        raise LocalAirflowError(f"`airflow db migrate` failed (exit {rc}); {log}:\n{_tail(log)}")


def start(env: Mapping[str, str], components: tuple[str, ...] = COMPONENTS, *, migrate_db: bool = True) -> LocalAirflow:
    """Migrate the metadata DB and start ``components`` in one new process group; the pidfile holds its id."""
    home = Path(env["AIRFLOW_HOME"])
    pidfile = home / PIDFILE
    if pidfile.exists() and status(home):
        raise LocalAirflowError(f"an Airflow of {home} is already running (pidfile {pidfile}); stop it first "
                                "(`make airflow-stop`)")
    (home / "logs").mkdir(parents=True, exist_ok=True)
    if migrate_db:
        migrate(env)
    procs: dict[str, subprocess.Popen] = {}
    pgid = 0
    url = env["AIRFLOW__API__BASE_URL"]
    # the scheduler last, once the API server answers: a task it starts earlier fails at once (its first call to
    # the execution API is refused) and waits for a retry
    order = sorted(components, key=lambda n: n == "scheduler")
    for name in order:
        if name == "scheduler" and "api-server" in procs:
            _wait_api(url, procs["api-server"], home)
        with (home / "logs" / f"{name}.log").open("ab") as out:
            # the first component leads a new group, the others join it (same session: setpgid allows it)
            p = subprocess.Popen(["airflow", name], env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, process_group=pgid)
        pgid = pgid or p.pid
        procs[name] = p
        pidfile.write_text(json.dumps({"pgid": pgid, "pids": {n: p.pid for n, p in procs.items()}}) + "\n")
    return LocalAirflow(home, pgid, url, procs)


def _wait_api(url: str, proc: subprocess.Popen, home: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = home / "logs" / "api-server.log"
            raise LocalAirflowError(f"airflow api-server exited with {proc.returncode}; {log}:\n{_tail(log)}")
        try:
            AirflowApi(url, timeout=5).health()
            return
        except AirflowApiError as exc:
            if exc.status is not None:
                return  # it answers
            time.sleep(1.0)
    raise LocalAirflowError(f"the API server at {url} did not answer within {timeout:.0f} s")


def wait_healthy(af: LocalAirflow, timeout: float = 300.0) -> dict:
    """Wait until the health endpoint reports every component healthy; the last health document."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        for name, p in af.procs.items():
            if p.poll() is not None:
                raise LocalAirflowError(f"airflow {name} exited with {p.returncode}; {af.log(name)}:\n{_tail(af.log(name))}")
        try:
            last = AirflowApi(af.url, timeout=5).health()
            if all((last.get(k) or {}).get("status") == "healthy"
                   for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")):
                return last
        except AirflowApiError:
            pass
        time.sleep(1.0)
    raise LocalAirflowError(f"Airflow at {af.url} not healthy after {timeout:.0f} s (last health: {last}); "
                            f"logs in {af.home / 'logs'}")


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgid) of every live process."""
    table = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":  # a zombie is gone already (its parent has not reaped it yet)
                table[int(d.name)] = (int(fields[1]), int(fields[2]))
    return table


def processes_of(home: Path, pgid: int | None = None) -> list[int]:
    """The processes of this home's Airflow: ``airflow`` processes whose environment has AIRFLOW_HOME=home or that
    belong to process group ``pgid`` (renamed ones such as ``airflow worker -- ...`` may no longer show their
    environment), and every descendant of those (a task's ``pg_dump``). Never this process or its ancestors (a
    shell that exported the same AIRFLOW_HOME)."""
    needle = f"AIRFLOW_HOME={home}".encode()
    table = _proc_table()
    mine, pid = set(), os.getpid()
    while pid > 1 and pid not in mine:
        mine.add(pid)
        pid = table.get(pid, (1, 0))[0]
    found = set()
    for pid, (_, group) in table.items():
        proc = Path("/proc") / str(pid)
        try:
            if b"airflow" not in proc.joinpath("cmdline").read_bytes():
                continue
            if (pgid and group == pgid) or needle in proc.joinpath("environ").read_bytes().split(b"\0"):
                found.add(pid)
        except OSError:
            continue
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return sorted(found - mine)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _pidfile_group(home: Path) -> int | None:
    try:
        return int(json.loads((home / PIDFILE).read_text())["pgid"])
    except (ValueError, KeyError, TypeError, OSError):
        return None


def status(home: Path) -> list[int]:
    """The running processes of this home's Airflow (empty: not running)."""
    return processes_of(home, _pidfile_group(home))


def stop(home: Path, grace: float = 30.0) -> list[int]:
    """Stop everything the pidfile's group and this AIRFLOW_HOME run; the pids that survived even SIGKILL."""
    pidfile = home / PIDFILE
    pgid = _pidfile_group(home)
    table = _proc_table()
    if pgid and not any(table.get(pid, (0, 0))[1] == pgid for pid in processes_of(home, pgid)):
        pgid = None  # a stale pidfile: that group id may belong to someone else by now
    if pgid and _group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.5)
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
    # stragglers that left the group (or a run started without the pidfile)
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 3.0)):
        left = processes_of(home, pgid)
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and processes_of(home, pgid):
            time.sleep(0.3)
    pidfile.unlink(missing_ok=True)
    return processes_of(home, pgid)


def password(home: Path, user: str = "admin") -> str | None:
    """The simple auth manager's password of ``user`` (see :func:`ensure_password`)."""
    try:
        return json.loads((home / PASSWORDS_FILE).read_text()).get(user)
    except (OSError, ValueError):
        return None


def ensure_password(home: Path, user: str = "admin") -> str:
    """The password of ``user``, generated into the simple auth manager's file when missing (the API server keeps
    the passwords it finds there), so the launcher knows it before the API server starts."""
    import secrets

    path = home / PASSWORDS_FILE
    try:
        known = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        known = {}
    if not known.get(user):
        known[user] = "".join(secrets.choice("abcdefghkmnpqrstuvwxyzABCDEFGHKMNPQRSTUVWXYZ23456789") for _ in range(16))
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known) + "\n")
        path.chmod(0o600)
    return known[user]


def ensure_fernet_key(home: Path) -> str:
    """The local Airflow's Fernet key, generated into ``home/fernet.key`` when missing: without one Airflow stores
    connection passwords unencrypted and warns "empty cryptography key" on every start. The servers of ``make
    airflow``, ``make demo`` and doctor (through ``make airflow-status``) share it."""
    import base64
    import secrets

    path = home / FERNET_KEY_FILE
    try:
        key = path.read_text().strip()
    except OSError:
        key = ""
    if not key:
        key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()  # what Fernet.generate_key() returns
        home.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(key + "\n")
    return key


def api_connection_json(url: str, user: str, pw: str) -> str:
    """``AIRFLOW_CONN_BACKUP_AIRFLOW_API``: the one connection to the REST API (run notes, schedule verification;
    :mod:`backups.orchestration.api_connection`)."""
    return json.dumps({"conn_type": "http", "host": url, "login": user, "password": pw})


def doctor_environment(home: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """What ``backupctl doctor`` needs of the servers' environment besides AIRFLOW_HOME and the metadata DB: the
    Fernet key (to read the connections stored in the DB), the REST API connection (``make airflow`` gives it to
    the servers only, as an environment variable), ``BACKUP_CONFIG`` and every variable the config uses that is
    set here (``FMR_HOME``, ``BACKUP_ROOT`` … — ``make airflow-status`` runs with the servers' environment)."""
    import re

    env = os.environ if env is None else env
    out: dict[str, str] = {}
    key = (home / FERNET_KEY_FILE).read_text().strip() if (home / FERNET_KEY_FILE).is_file() else ""
    if env.get("AIRFLOW__CORE__FERNET_KEY") or key:
        out["AIRFLOW__CORE__FERNET_KEY"] = env.get("AIRFLOW__CORE__FERNET_KEY") or key
    pw = password(home)
    if pw:  # the REST API connection the servers got from `make airflow` (doctor checks it)
        api_url = env.get("AIRFLOW__API__BASE_URL", "http://127.0.0.1:8080")
        out["AIRFLOW_CONN_BACKUP_AIRFLOW_API"] = api_connection_json(api_url, "admin", pw)
    config = env.get("BACKUP_CONFIG")
    if config:
        out["BACKUP_CONFIG"] = config
        try:
            text = Path(config).read_text(encoding="utf-8")
        except OSError:
            text = ""
        names = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text) + re.findall(r"key_env:\s*([A-Za-z_][A-Za-z0-9_]*)", text)
        for name in sorted(set(names)):
            if env.get(name):
                out[name] = env[name]
    return out


# ------------------------------------------------------------------------------------------- settings
def apply_settings(api: AirflowApi, data: dict) -> list[str]:
    """Connections, pools and variables (:func:`tools.airflow_settings.load`) through the REST API, replacing
    existing ones; what was applied."""
    from urllib.parse import quote

    done = []

    def put(collection: str, key: str, body: dict) -> None:
        try:
            try:
                api.post(f"/{collection}", body)
            except AirflowApiError as exc:
                if exc.status != 409:
                    raise
                api.patch(f"/{collection}/{quote(key, safe='')}", body)
        except AirflowApiError as exc:
            print(f"warning: could not load {collection[:-1]} {key!r}: {exc}", file=sys.stderr)
            done.append(f"{collection[:-1]} {key} FAILED")
            return
        done.append(f"{collection[:-1]} {key}")

    for cid, c in data.get("connections", {}).items():
        if "uri" in c:
            continue  # the REST API takes fields, not URIs: use `make airflow-settings` for those
        body = {"connection_id": cid, "conn_type": c.get("conn_type", "generic"),
                **{k: c[k] for k in ("host", "login", "password", "schema", "port", "extra") if k in c}}
        put("connections", cid, body)
    for name, p in data.get("pools", {}).items():
        put("pools", name, {"name": name, "slots": p["slots"], "description": p.get("description", ""),
                            "include_deferred": False})
    for key, value in data.get("variables", {}).items():
        put("variables", key, {"key": key, "value": value})
    return done


# ------------------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run this project's local Airflow (see `make airflow`)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    db = sub.add_parser("db-url", help="print the metadata DB URL (PostgreSQL airflow_demo when reachable, "
                                       "created if missing; else SQLite in AIRFLOW_HOME)")
    db.add_argument("--name", default="airflow_demo")
    st = sub.add_parser("start", help="migrate, start the components in the background, wait until healthy")
    st.add_argument("--timeout", type=float, default=300.0)
    st.add_argument("--no-migrate", action="store_true", help="the metadata DB is migrated already")
    st.add_argument("--settings", help="an airflow_settings.yaml whose connections, pools and variables to load "
                                       "(through the REST API, once healthy)")
    sp = sub.add_parser("stop", help="stop every process of this AIRFLOW_HOME")
    sp.add_argument("--quiet", action="store_true", help="say nothing when nothing runs")
    sub.add_parser("fernet-key", help="print the local Airflow's Fernet key (generated into AIRFLOW_HOME when missing)")
    sub.add_parser("status", help="list the running processes of this AIRFLOW_HOME")  # exit 0 either way
    args = ap.parse_args(argv)
    home = Path(os.environ.get("AIRFLOW_HOME") or ".").resolve()
    if args.cmd == "fernet-key":
        print(ensure_fernet_key(home))
        return 0
    if args.cmd == "db-url":
        home.mkdir(parents=True, exist_ok=True)
        print(metadata_db(home, args.name))
        return 0
    if args.cmd == "stop":
        running = status(home)
        if not running and not args.quiet:
            print(f"no Airflow of {home} is running")
        left = stop(home)
        if left:
            print(f"could not stop: {left}", file=sys.stderr)
            return 1
        if running:
            print(f"stopped {len(running)} process(es) of {home}")
        return 0
    if args.cmd == "status":
        pids = status(home)
        print(f"{len(pids)} process(es) of {home}: {' '.join(map(str, pids))}" if pids else f"no Airflow of {home} is running",
              flush=True)
        url = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") or metadata_db(home)
        print(f"its environment (for airflow CLI commands or backupctl doctor):\n"
              f"  export AIRFLOW_HOME={home} AIRFLOW__DATABASE__SQL_ALCHEMY_CONN={url}")
        for name, value in doctor_environment(home).items():
            print(f"  export {name}={shlex.quote(value)}")
        return 0
    env = {**LOCAL_DEFAULTS, **os.environ}
    url = env.get("AIRFLOW__API__BASE_URL", "http://127.0.0.1:8080")
    pw = ensure_password(home)
    env.setdefault("AIRFLOW__CORE__FERNET_KEY", ensure_fernet_key(home))
    # the one REST API connection: run notes and backup_monitoring's schedule check
    env.setdefault("AIRFLOW_CONN_BACKUP_AIRFLOW_API", api_connection_json(url, "admin", pw))
    af = None
    try:
        af = start(env, migrate_db=not args.no_migrate)
        print(f"starting {', '.join(COMPONENTS)} (process group {af.pgid}, logs in {home / 'logs'}) ...", flush=True)
        wait_healthy(af, args.timeout)
        if args.settings:
            from tools.airflow_settings import load

            done = apply_settings(AirflowApi(af.url, login="admin", password=pw), load(Path(args.settings)))
            print(f"loaded {args.settings}: {', '.join(done) or 'nothing'}")
    except (LocalAirflowError, OSError) as exc:
        print(f"AIRFLOW FAILED: {exc}", file=sys.stderr)
        left = af.stop() if af is not None else stop(home)
        if left:
            print(f"could not stop: {left}", file=sys.stderr)
        return 1
    db_url = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    print(f"Airflow UI:  {af.url}   (metadata DB: {db_url.split('://')[0].split('+')[0]}"
          f"{'' if db_url.startswith('postgresql') else ' - SQLite: one writer at a time, see README'})")
    print(f"Log in:      user 'admin', password '{pw}'  (kept in {home / PASSWORDS_FILE})")
    print("Stop it:     make airflow-stop   (status: make airflow-status)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
