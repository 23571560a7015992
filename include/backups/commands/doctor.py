"""``backupctl doctor``: is this host ready to run the backups? One check per line, each failing one with its fix.

Run it where the DAGs run — on every worker and on the triggerer — with the environment they have:

* ``config`` — the configuration file (``--config``, ``$BACKUP_CONFIG`` or the shipped ``include/backups.yaml``)
  loads and validates;
* ``env`` — ``BACKUP_CONFIG`` is set (the DAGs otherwise read the shipped file), every ``${VAR}`` the config uses
  is set or has a default, every ``key_env`` encryption key is set;
* ``connections`` — every ``conn_id`` of the config resolves through the registered connection resolver (Airflow's);
* ``storage <name>`` — each storage answers and is writable: a probe object is written, read back and deleted
  (``doctor/probe-<host>-<pid>``, never a snapshot key);
* the Airflow checks, when Airflow is importable (registered under the entry point group ``backups.doctor``,
  ``backups.orchestration.doctor``; this module never imports Airflow): each connection is defined in Airflow,
  the ``backup_io`` pool exists in the metadata database, and the SMTP connection is known when the config
  has ``notify_email``;
* ``smtp`` — the SMTP server answers (EHLO) when ``notify_email`` is set.

The result is ``ok`` only when no check failed; a warning (something to look at) does not fail it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import smtplib
import socket
import ssl
import time
from importlib.metadata import entry_points
from typing import Any

from ..config import ENV_CONFIG, NO_SHIPPED_CONFIG_HINT, config_path, load_config, safe_load_yaml
from ..errors import BackupError, ConfigError
from ..units import fmt_bytes
from .base import Result

GROUP = "backups.doctor"  #: entry point group of the Airflow-side checks (``backups.orchestration.doctor``)
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


def conn_ids(cfg: Any) -> dict[str, str]:
    """Every connection id the config names → what uses it (``storage cloud``, ``encryption key of offsite``...)."""
    out: dict[str, str] = {}
    for name, src in cfg.sources.items():
        if getattr(src, "conn_id", None):
            out.setdefault(src.conn_id, f"source {name}")
    for name, sto in cfg.storages.items():
        if getattr(sto, "conn_id", None):
            out.setdefault(sto.conn_id, f"storage {name}")
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


def _env(path: str | None, cfg: Any, env: dict[str, str]) -> list[Check]:
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


def _resolver(cfg: Any, resolver: Any) -> tuple[Any, Check]:
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
        return None, Check("connections", FAIL, f"{listed}: {exc.message}", exc.hint)
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


def _storage(cfg: Any, name: str, resolver: Any) -> Check:
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
        kwargs = {"context": ssl.create_default_context()} if endpoint.ssl else {}
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


def _airflow_doctor(enabled: bool | None) -> tuple[Any, Check | None]:
    """The registered Airflow-side checks (None and why not when Airflow is absent or turned off)."""
    if enabled is False:
        return None, Check("airflow", SKIP, "Airflow checks turned off (--no-airflow)")
    import importlib.util

    try:
        importable = importlib.util.find_spec("airflow") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["airflow"] is None (blocked on purpose)
        importable = False
    if not importable:  # do not even load the Airflow layer
        return None, Check("airflow", SKIP if enabled is None else FAIL,
                           "Airflow is not installed here: pool and Airflow connections not checked",
                           "" if enabled is None else "run doctor where Airflow is installed")
    found = [ep for ep in entry_points(group=GROUP) if ep.name == "airflow"]
    if not found:
        return None, Check("airflow", SKIP if enabled is None else FAIL,
                           "no Airflow checks registered (the package is not installed: pip install -e .)",
                           "" if enabled is None else "install the package (pip install '.[airflow]')")
    try:
        return found[0].load()(), None
    except ImportError as exc:
        return None, Check("airflow", SKIP if enabled is None else FAIL,
                           f"Airflow is not importable here ({exc.name or exc}): pool and Airflow connections not checked",
                           "" if enabled is None else "run doctor where Airflow is installed")


def run_doctor(path: str | None = None, *, resolver: Any = None, airflow: bool | None = None,
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
        resolver, c = _resolver(cfg, resolver)
        checks.append(c)
        for name in cfg.storages:
            if resolver is None and conn_ids(cfg) and getattr(cfg.storages[name], "type", "") != "local":
                checks.append(Check(f"storage {name}", SKIP, "its connection cannot be resolved (see connections)"))
                continue
            checks.append(_storage(cfg, name, resolver))
        doctor, c = _airflow_doctor(airflow)
        if c is not None:
            checks.append(c)
        if doctor is not None:
            checks += doctor.checks(cfg)
            if smtp is None and cfg.notify_email:
                smtp = doctor.smtp_endpoint()
        if cfg.notify_email:
            if smtp is not None:
                checks.append(smtp_check(smtp, smtp_timeout))
            elif doctor is None:
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
