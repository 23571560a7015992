"""``backupctl doctor``: is this host ready to run the backups? One check per line, each failing one with its fix.

Run it where the DAGs run — on every worker and on the triggerer — with the environment they have:

* ``config`` — the configuration file (``--config``, ``$BACKUP_CONFIG`` or the shipped ``include/backups.yaml``)
  loads and validates;
* ``env`` — ``BACKUP_CONFIG`` is set (the DAGs otherwise read the shipped file), every ``${VAR}`` the config uses
  is set or has a default, every ``key_env`` encryption key is set;
* ``connections`` — every ``conn_id`` of the config resolves through the registered connection resolver (Airflow's);
* ``storage <name>`` — each storage answers and is writable: a probe object is written, read back and deleted
  (``doctor/probe-<host>-<pid>``, never a snapshot key);
* the Airflow checks, when Airflow is installed (``python -m backups.orchestration.doctor`` in a child process;
  this module never imports Airflow; installed but not importable is a failure): each connection is defined in
  Airflow — looked up as a task does: ``AIRFLOW_CONN_<ID>``, the secrets backend, then the metadata database —,
  the ``backup_io`` pool exists in the metadata database, and the SMTP connection is known when the config has
  ``notify_email``. Doctor writes nothing to Airflow: no log folder, no database (a missing SQLite metadata
  database is reported, not created), whatever ``AIRFLOW_HOME`` is.
* ``smtp`` — the SMTP server answers (EHLO) when ``notify_email`` is set.

The result is ``ok`` only when no check failed; a warning (something to look at) does not fail it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ENV_CONFIG, NO_SHIPPED_CONFIG_HINT, config_path, load_config, safe_load_yaml
from ..errors import BackupError, ConfigError
from ..units import fmt_bytes
from .base import Result

if TYPE_CHECKING:
    from ..config import Config
    from ..storage import Resolver

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


@dataclasses.dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""
    #: the exit code a failure stands for (README "Exit codes"): 2 setup (config, env, connections, pool, SMTP),
    #: 5 storage, 8 encryption key
    code: int = 0

    def __post_init__(self) -> None:
        if self.status == FAIL and not self.code:
            self.code = 5 if self.name.startswith("storage ") else 2


@dataclasses.dataclass
class SmtpEndpoint:
    """Where notification mail goes (from Airflow's SMTP connection); never a password."""

    conn_id: str
    host: str
    port: int
    ssl: bool = False


@dataclasses.dataclass
class DoctorResult(Result):
    config: str
    checks: list[dict]
    ok: bool

    @property
    def exit_code(self) -> int:
        """0 when ready, else the code of the first failed check."""
        return next((c["code"] for c in self.checks if c["status"] == FAIL), 0)


def conn_ids(cfg: Config) -> dict[str, str]:
    """Every connection id the config names → what uses it (``storage cloud``, ``encryption key of offsite``...)."""
    out: dict[str, str] = {}
    for name, src in cfg.sources.items():
        src_conn = getattr(src, "conn_id", None)
        if src_conn:
            out.setdefault(src_conn, f"source {name}")
    for name, sto in cfg.storages.items():
        sto_conn = getattr(sto, "conn_id", None)
        if sto_conn:
            out.setdefault(sto_conn, f"storage {name}")
        enc = getattr(sto, "encryption", None)
        if enc is not None and enc.key_conn_id:
            out.setdefault(enc.key_conn_id, f"encryption key of storage {name}")
    return out


# ------------------------------------------------------------------------------------------------ checks
def _config(path: str | None) -> tuple[Any, Check]:
    p = config_path(path)
    try:
        cfg = load_config(p)
    except BackupError as exc:
        return None, Check("config", FAIL, exc.message, exc.hint or "fix the key named above (README, 'Configuration')")
    return cfg, Check("config", OK, f"{p}: {len(cfg.sources)} source(s), {len(cfg.storages)} storage(s), "
                                    f"tiers {', '.join(cfg.tiers)}")


def _env(path: str | None, cfg: Config, env: dict[str, str]) -> list[Check]:
    checks = []
    if env.get(ENV_CONFIG):
        checks.append(Check("env BACKUP_CONFIG", OK, env[ENV_CONFIG]))
    else:
        default = config_path(None)
        if not default.exists():  # a pip-installed package: no include/backups.yaml next to it
            checks.append(Check("env BACKUP_CONFIG", FAIL, f"not set, and there is no shipped config at {default} "
                                f"(a pip-installed package ships none): the DAGs would fail to import",
                                NO_SHIPPED_CONFIG_HINT + " on the scheduler, dag-processor, every worker and the "
                                "triggerer"))
        else:
            used = f"--config {path}" if path else f"the shipped {default}"
            checks.append(Check("env BACKUP_CONFIG", WARN, f"not set; this check used {used}, the DAGs would read "
                                f"{default}",
                                "export BACKUP_CONFIG=/path/to/backups.yaml on the scheduler, dag-processor, every "
                                "worker and the triggerer"))
    names: dict[str, bool] = {}  # ${VAR} in the config's values (not its comments) -> has a default
    try:
        import yaml

        todo = [safe_load_yaml(config_path(path).read_text(encoding="utf-8"))]
    except (OSError, yaml.YAMLError, ConfigError):
        return checks
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            todo += node.values()
        elif isinstance(node, list):
            todo += node
        elif isinstance(node, str):
            for m in _VAR.finditer(node):
                names[m.group(1)] = names.get(m.group(1), True) and m.group(2) is not None
    unset = sorted(n for n, has_default in names.items() if not env.get(n) and not has_default)
    defaulted = sorted(n for n, has_default in names.items() if not env.get(n) and has_default)
    if unset:
        checks.append(Check("env variables", FAIL, f"used by the config but not set: {', '.join(unset)}",
                            "export " + " ".join(f"{n}=..." for n in unset) + " wherever the DAGs run (workers and "
                            "triggerer too)"))
    elif names:
        checks.append(Check("env variables", OK, ", ".join(f"{n}={env[n]}" for n in sorted(names) if env.get(n))
                            + (f"; default used for {', '.join(defaulted)}" if defaulted else "")))
    for name, sto in (cfg.storages.items() if cfg else ()):
        enc = getattr(sto, "encryption", None)
        if enc is not None and enc.key_env:
            if env.get(enc.key_env):
                checks.append(Check(f"env {enc.key_env}", OK, f"encryption key of storage {name} is set (not shown)"))
            else:
                checks.append(Check(f"env {enc.key_env}", FAIL, f"encryption key of storage {name} is not set",
                                    f"export {enc.key_env}=<the key the repository was written with>", code=8))
    return checks


def _resolver(cfg: Config, resolver: Resolver | None) -> tuple[Any, Check]:
    ids = conn_ids(cfg)
    if not ids:
        return resolver, Check("connections", OK, "the config names no connection id")
    listed = ", ".join(f"{c} ({what})" for c, what in ids.items())
    if resolver is not None:
        return resolver, Check("connections", OK, f"resolver {type(resolver).__name__}: {listed}")
    from ..connections import registered_resolver

    try:
        resolver = registered_resolver()
    except BackupError as exc:
        return None, Check("connections", FAIL, f"{listed}: {exc.message}", exc.hint)  # type: ignore[arg-type]  # a None hint stays "fix": null in --json
    return resolver, Check("connections", OK, f"resolver {type(resolver).__name__}: {listed}")


def probe_key() -> str:
    return f"doctor/probe-{re.sub(r'[^A-Za-z0-9.-]', '-', socket.gethostname())}-{os.getpid()}-{time.time_ns()}"


def _no_retries(storage: Any) -> None:
    """A check answers the question once: no backoff loop of the retrying wrapper (seconds per unreachable storage)."""
    from ..storage.wrappers import RetryingStorage

    while storage is not None:
        if isinstance(storage, RetryingStorage):
            storage.attempts = 1
        storage = getattr(storage, "inner", None)


def _storage(cfg: Config, name: str, resolver: Resolver | None) -> Check:
    from ..storage import open_storage

    label = f"storage {name}"
    try:
        storage = open_storage(cfg, name, resolver)
        _no_retries(storage)
        where = storage.describe()
        storage.check()
    except BackupError as exc:
        return Check(label, FAIL, f"unreachable: {exc.message}", exc.hint or "check the storages section and the network",
                     code=exc.exit_code)
    key, data = probe_key(), os.urandom(64)
    try:
        storage.put_bytes(key, data)
    except BackupError as exc:
        return Check(label, FAIL, f"{where}: reachable but not writable: {exc.message}",
                     exc.hint or "grant the backup user write access (bucket policy, directory permissions)",
                     code=exc.exit_code)
    problem = None
    try:
        if storage.get_bytes(key) != data:
            problem = Check(label, FAIL, f"{where}: the probe object read back differs from what was written",
                            "check the storage for a proxy or a caching layer that rewrites objects")
    except BackupError as exc:
        problem = Check(label, FAIL, f"{where}: the probe object cannot be read back: {exc.message}",
                        exc.hint or "grant read access too")
    try:
        storage.delete(key)
    except BackupError as exc:
        return problem or Check(label, FAIL, f"{where}: the probe object {key} cannot be deleted: {exc.message}",
                                "grant delete access (retention and prune need it), then remove the probe object")
    if problem:
        return problem
    free = ""
    try:
        nbytes = storage.free_bytes()
        if nbytes is not None:
            free = f", {fmt_bytes(nbytes)} free"
    except (BackupError, OSError):
        pass
    return Check(label, OK, f"{where}: writable (probe written, read back, deleted){free}")


def smtp_check(endpoint: SmtpEndpoint, timeout: float = 5.0) -> Check:
    """Connect and say EHLO (no login, no mail)."""
    label = f"smtp {endpoint.conn_id}"
    where = f"{endpoint.host}:{endpoint.port}"
    try:
        cls = smtplib.SMTP_SSL if endpoint.ssl else smtplib.SMTP
        kwargs: dict[str, Any] = {"context": ssl.create_default_context()} if endpoint.ssl else {}
        with cls(endpoint.host, endpoint.port, timeout=timeout, **kwargs) as smtp:
            code, _ = smtp.ehlo()
            if code != 250:
                return Check(label, FAIL, f"{where} answered EHLO with {code}",
                             f"check the host and port of Airflow connection {endpoint.conn_id!r}")
    except (OSError, smtplib.SMTPException) as exc:
        return Check(label, FAIL, f"{where} unreachable: {exc}",
                     f"fix the host/port of Airflow connection {endpoint.conn_id!r} (Admin -> Connections or "
                     f"AIRFLOW_CONN_{endpoint.conn_id.upper()}), or check the network/firewall to the mail server")
    return Check(label, OK, f"{where} answers (EHLO)")


#: the Airflow-side checks, run as ``python -m`` in a child process (this module never imports Airflow)
AIRFLOW_CHECKS = "backups.orchestration.doctor"


def _airflow_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("airflow") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["airflow"] is None (blocked on purpose)
        return False


def _metadata_db_problem(env: dict[str, str], home: Path) -> str:
    """Why the metadata database cannot be read without creating it ("" when it can be tried): a SQLite file
    that does not exist (opening it would create an empty database — ``~/airflow/airflow.db`` when doctor ran
    without ``AIRFLOW_HOME``)."""
    url = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    if not url:
        cfg_file = Path(env.get("AIRFLOW_CONFIG") or home / "airflow.cfg")
        if cfg_file.is_file():
            import configparser

            parser = configparser.ConfigParser(interpolation=None)
            try:
                parser.read(cfg_file, encoding="utf-8")
                url = parser.get("database", "sql_alchemy_conn", fallback="")
            except (configparser.Error, OSError, UnicodeDecodeError):
                url = ""
        url = url or f"sqlite:///{home / 'airflow.db'}"
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1].split("?", 1)[0]
        if path and path != ":memory:" and not Path(path).is_file():
            return f"no metadata database at {path}"
    return ""


def airflow_read_env(env: dict[str, str], scratch: Path) -> tuple[dict[str, str], list[Check]]:
    """The environment in which doctor looks at Airflow without writing to it: Airflow's log folder in
    ``scratch`` (importing Airflow creates it), a scratch ``AIRFLOW_HOME`` when the home does not exist, and —
    when the metadata database exists — the lookup order of a task's connections (``_AIRFLOW_PROCESS_CONTEXT=
    server``: ``AIRFLOW_CONN_*`` variables, the secrets backend, then the metadata database; without it Airflow
    outside a task reads the environment only). Plus the checks that say what was not looked at."""
    out = dict(env)
    notes: list[Check] = []
    home = Path(env.get("AIRFLOW_HOME") or Path.home() / "airflow")
    if not home.is_dir():
        out["AIRFLOW_HOME"] = str(scratch / "airflow-home")
        notes.append(Check("airflow home", WARN, f"{home} does not exist (AIRFLOW_HOME "
                           f"{'is ' + env['AIRFLOW_HOME'] if env.get('AIRFLOW_HOME') else 'is not set'}): this is not "
                           "the environment of an Airflow component; nothing was created there",
                           "run doctor with the environment of the workers and the triggerer (AIRFLOW_HOME, "
                           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, AIRFLOW__CORE__FERNET_KEY; for `make airflow`: the "
                           "export lines of `make airflow-status`)"))
    out["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = str(scratch / "logs")
    problem = _metadata_db_problem(env, home)
    if problem:
        out["BACKUPS_DOCTOR_NO_DB"] = problem
    else:
        out["_AIRFLOW_PROCESS_CONTEXT"] = "server"
    return out, notes


def _airflow_checks(path: str | None, enabled: bool | None, env: dict[str, str],
                    timeout: float = 300.0) -> tuple[list[Check], SmtpEndpoint | None]:
    """The Airflow-side checks (:mod:`backups.orchestration.doctor`) in a child process with
    :func:`airflow_read_env`: this process never imports Airflow, and a broken Airflow is a failed check."""
    if enabled is False:
        return [Check("airflow", SKIP, "Airflow checks turned off (--no-airflow)")], None
    if not _airflow_installed():  # do not even start the Airflow layer
        return [Check("airflow", SKIP if enabled is None else FAIL,
                      "Airflow is not installed here: pool and Airflow connections not checked",
                      "" if enabled is None else "run doctor where Airflow is installed")], None
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="backups-doctor-") as tmp:
        child_env, notes = airflow_read_env(env, Path(tmp))
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", AIRFLOW_CHECKS, "--out", str(result)] + (["--config", str(path)] if path else [])
        try:
            proc = subprocess.run(cmd, env=child_env, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
            err = proc.stderr
        except subprocess.TimeoutExpired:
            err = f"no answer in {timeout:.0f}s"
        if not result.is_file():
            lines = [x for x in err.strip().splitlines() if x.strip()]
            return notes + [Check("airflow", FAIL, "Airflow is installed but cannot be used here: "
                                  + (lines[-1][:300] if lines else "the check process failed"),
                                  "repair the Airflow installation of this environment (`pip check`; "
                                  f"`{sys.executable} -c 'import airflow.sdk'` shows the whole error)")], None
        data = json.loads(result.read_text(encoding="utf-8"))
    smtp = SmtpEndpoint(**data["smtp"]) if data.get("smtp") else None
    return notes + [Check(**c) for c in data["checks"]], smtp


@contextlib.contextmanager
def _reading_airflow(env: dict[str, str], *, needed: bool) -> Iterator[None]:
    """Resolving the config's ``conn_id`` imports Airflow in this process: with :func:`airflow_read_env`'s
    variables for that time (no log folder or database created; connections looked up as a task does). Nothing
    to do when Airflow is imported already (its settings are read at import)."""
    import sys
    import tempfile

    if not needed or "airflow" in sys.modules:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="backups-doctor-") as tmp:
        wanted, _ = airflow_read_env(env, Path(tmp))
        saved = {k: os.environ.get(k) for k in wanted if os.environ.get(k) != wanted[k]}
        os.environ.update({k: wanted[k] for k in saved})
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def run_doctor(path: str | None = None, *, resolver: Resolver | None = None, airflow: bool | None = None,
               env: dict[str, str] | None = None, smtp: SmtpEndpoint | None = None,
               smtp_timeout: float = 5.0) -> DoctorResult:
    """Every check (see the module docstring). ``airflow``: None = when importable, False = skip, True = require.
    ``smtp`` overrides the endpoint the Airflow checks would find (tests, or a deployment without Airflow)."""
    env = dict(os.environ if env is None else env)
    checks: list[Check] = []
    cfg, c = _config(path)
    checks.append(c)
    checks += _env(path, cfg, env)
    if cfg is not None:
        with _reading_airflow(env, needed=resolver is None and bool(conn_ids(cfg))):
            resolver, c = _resolver(cfg, resolver)
            checks.append(c)
            for name in cfg.storages:
                if resolver is None and conn_ids(cfg) and getattr(cfg.storages[name], "type", "") != "local":
                    checks.append(Check(f"storage {name}", SKIP, "its connection cannot be resolved (see connections)"))
                    continue
                checks.append(_storage(cfg, name, resolver))
        found, endpoint = _airflow_checks(path, airflow, env)
        checks += found
        airflow_ran = not any(c.name == "airflow" for c in found)  # "airflow": skipped or broken
        smtp = smtp or endpoint
        if cfg.notify_email:
            if smtp is not None:
                checks.append(smtp_check(smtp, smtp_timeout))
            elif not airflow_ran:
                checks.append(Check("smtp", SKIP, f"notify_email is set ({', '.join(cfg.notify_email)}) but the SMTP "
                                                  "connection is Airflow's: run doctor where Airflow is installed"))
        else:
            checks.append(Check("smtp", SKIP, "notify_email is empty: no mail is sent"))
    return DoctorResult(config=str(config_path(path)), checks=[dataclasses.asdict(x) for x in checks],
                        ok=not any(x.status == FAIL for x in checks))


def format_report(result: DoctorResult) -> str:
    width = max((len(c["name"]) for c in result.checks), default=10)
    lines = []
    for c in result.checks:
        lines.append(f"{c['status'].upper():<4}  {c['name']:<{width}}  {c['detail']}")
        if c["fix"] and c["status"] in (FAIL, WARN):
            lines.append(f"{'':<4}  {'':<{width}}  fix: {c['fix']}")
    failed = sum(c["status"] == FAIL for c in result.checks)
    lines.append("READY" if result.ok else f"NOT READY: {failed} check(s) failed")
    return "\n".join(lines)
