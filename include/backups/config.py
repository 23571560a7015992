"""Strict models of the backup configuration file (``include/backups.yaml``).

Loading goes: YAML text → ``${VAR}`` / ``${VAR:-default}`` expansion (each string, with its key path so a missing
variable is reported precisely) → pydantic models with ``extra="forbid"`` → cross-checks (tiers name existing
sources and storages, cron strings parse). Any problem raises one :class:`~backups.errors.ConfigError` whose
message names the file, the key path and the fix. Nothing is written while loading.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "backups.yaml"
ENV_CONFIG = "BACKUP_CONFIG"
#: the fix when the default config is missing (the package was pip-installed: only the checkout has include/)
NO_SHIPPED_CONFIG_HINT = ("copy the project's include/backups.yaml (production) or include/backups.local.yaml "
                          "(embedded) to the host, then set BACKUP_CONFIG to it (or pass --config PATH)")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = r"^[a-z][a-z0-9_]{0,62}$"
#: the one safe-name rule for source, storage and tier names: checked when the configuration is loaded and again
#: when a manifest is read (a source name becomes a directory of the restore target)
SAFE_NAME = re.compile(_NAME)


def is_safe_name(name: object) -> bool:
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None


class _Strict(BaseModel):
    #: no ``.inf`` / ``.nan`` in any number: they passed every bound and crashed later (``timedelta``)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --------------------------------------------------------------------------------------------------- sources
class SqliteSource(_Strict):
    type: Literal["sqlite"]
    path: str
    description: str = ""


class FilesSource(_Strict):
    type: Literal["files"]
    root: str
    include: list[str] = Field(default_factory=lambda: ["**"])
    exclude: list[str] = Field(default_factory=list)
    on_unreadable: Literal["fail", "warn"] = "fail"
    checksum: bool = False
    description: str = ""


class CommandSource(_Strict):
    type: Literal["command"]
    command: list[str] = Field(min_length=1)
    timeout_seconds: int = Field(default=300, gt=0, le=31_536_000)  # a year; more overflowed the clock
    description: str = ""


class PostgresSource(_Strict):
    type: Literal["postgres"]
    dsn: str | None = None
    conn_id: str | None = None
    jobs: int = Field(default=2, ge=1, le=16)
    schemas: list[str] = Field(default_factory=list)
    exclude_tables: list[str] = Field(default_factory=list)
    #: foreign keys of dumped tables that reference an excluded table (or one outside ``schemas``): refused at backup
    #: time unless true — then they are recorded in the manifest and left out of every restore
    drop_dangling_foreign_keys: bool = False
    description: str = ""

    @model_validator(mode="after")
    def _one_of(self) -> PostgresSource:
        if bool(self.dsn) == bool(self.conn_id):
            raise ValueError("give exactly one of 'dsn' (a libpq connection string) or 'conn_id' (an Airflow connection)")
        return self


Source = Annotated[SqliteSource | FilesSource | CommandSource | PostgresSource, Field(discriminator="type")]


# --------------------------------------------------------------------------------------------------- storages
class EncryptionConfig(_Strict):
    key_conn_id: str | None = None
    key_env: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> EncryptionConfig:
        if bool(self.key_conn_id) == bool(self.key_env):
            raise ValueError("give exactly one of 'key_conn_id' (an Airflow connection) or 'key_env' (an environment variable)")
        return self


class LocalStorage(_Strict):
    type: Literal["local"]
    path: str
    encryption: EncryptionConfig | None = None
    description: str = ""


class S3Storage(_Strict):
    type: Literal["s3"]
    conn_id: str = "backup_s3"
    bucket: str
    prefix: str = ""
    storage_class: Literal["STANDARD", "STANDARD_IA", "GLACIER", "DEEP_ARCHIVE"] = "STANDARD"
    sse: Literal["AES256", "aws:kms"] | None = None
    kms_key_id: str | None = None
    encryption: EncryptionConfig | None = None
    description: str = ""
    #: seconds: botocore's connect and read timeouts (every request; docs/storage.md#timeouts)
    timeout_seconds: float = Field(default=60, gt=0, le=3600)
    #: botocore's own attempts per request ("standard" retry mode), under RetryingStorage's retries
    max_attempts: int = Field(default=3, ge=1, le=20)


class SftpStorage(_Strict):
    type: Literal["sftp"]
    conn_id: str = "backup_sftp"
    path: str
    encryption: EncryptionConfig | None = None
    description: str = ""
    #: seconds: TCP connect, SSH banner, authentication, and every SFTP request (read, write, close) on the
    #: channel (docs/storage.md#timeouts)
    timeout_seconds: float = Field(default=60, gt=0, le=3600)


Storage = Annotated[LocalStorage | S3Storage | SftpStorage, Field(discriminator="type")]


# --------------------------------------------------------------------------------------------------- tiers
class Retention(_Strict):
    keep_last: int | None = Field(default=None, ge=1)
    #: every snapshot dated within this many days before now (the clock; never a snapshot's date)
    keep_within_days: int | None = Field(default=None, ge=1)
    keep_daily: int | None = Field(default=None, ge=1)
    keep_weekly: int | None = Field(default=None, ge=1)
    keep_monthly: int | None = Field(default=None, ge=1)
    keep_yearly: int | None = Field(default=None, ge=1)

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.model_dump().items() if v is not None]
        return ", ".join(parts) or "keep everything"


class Tier(_Strict):
    type: Literal["full", "differential", "incremental"]
    schedule: str | None
    sources: list[str] = Field(min_length=1)
    storages: list[str] = Field(min_length=1)
    retention: Retention = Field(default_factory=Retention)
    description: str = ""

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return _check_cron(value)


class Locks(_Strict):
    """Repository locks (see docs/format.md, "Lock objects") and leftover cleanup."""

    #: how long a run waits for a conflicting lock before failing with exit 9 (LockedError)
    wait_seconds: float = Field(default=600.0, ge=0)
    #: a lock whose heartbeat is older than this is stale (other host: reported, removed by `backupctl unlock`)
    stale_after_seconds: float = Field(default=1800.0, gt=0)
    #: how often a holder refreshes its lock's heartbeat (must be well below stale_after_seconds)
    refresh_seconds: float = Field(default=300.0, gt=0)
    #: uncommitted objects, temp objects and staging folders younger than this are never removed
    orphan_grace_hours: float = Field(default=48.0, ge=0, le=876_000)  # 100 years: more is no date

    @model_validator(mode="after")
    def _refresh_below_stale(self) -> Locks:
        if self.refresh_seconds * 2 > self.stale_after_seconds:
            raise ValueError(f"refresh_seconds ({self.refresh_seconds}) must be at most half of stale_after_seconds "
                             f"({self.stale_after_seconds}), or live locks would look stale")
        return self


# --------------------------------------------------------------------------------------------------- monitoring, drill
#: the fixed date cron schedules are evaluated from where "now" must not matter (the status' RPO: the largest gap
#: between two runs over the year after it)
CRON_REFERENCE = datetime(2026, 1, 1)
#: a cron must fire at least twice within this many years (a leap-day cron, ``0 0 29 2 *``, fires every 4 to 8)
CRON_HORIZON_YEARS = 10


def _check_cron(value: str | None) -> str | None:
    """A 5-field cron that parses and fires: twice within :data:`CRON_HORIZON_YEARS` of both a fixed reference date
    (the one the status' RPO computation starts from) and today, else a ValueError naming the expression."""
    if value is None:
        return None
    from croniter import CroniterError, croniter

    if len(value.split()) != 5 or not croniter.is_valid(value):
        raise ValueError(f"{value!r} is not a 5-field cron expression (minute hour day-of-month month day-of-week)")
    for start in (CRON_REFERENCE, datetime.now(UTC).replace(tzinfo=None)):
        try:
            it = croniter(value, start, max_years_between_matches=CRON_HORIZON_YEARS)
            it.get_next(datetime)
            it.get_next(datetime)
        except CroniterError:
            raise ValueError(f"{value!r} never fires (no run time within {CRON_HORIZON_YEARS} years of "
                             f"{start:%Y-%m-%d}: e.g. a day the month does not have, like 30 February); "
                             "fix the day-of-month / month fields") from None
    return value


class WebhookAlert(_Strict):
    """A JSON POST through an Airflow HTTP connection (Slack-compatible ``{"text": ...}`` for hooks.slack.com)."""

    conn_id: str = Field(min_length=1)


class Alerts(_Strict):
    """Where the ``backup_monitoring`` DAG sends alerts (see README, "Monitoring")."""

    email: list[str] = Field(default_factory=list)
    webhook: WebhookAlert | None = None
    #: a problem still open after this many consecutive monitoring runs goes to the escalation recipients
    escalate_after: int = Field(default=3, ge=1)
    escalation_email: list[str] = Field(default_factory=list)


class Monitoring(_Strict):
    """The ``monitoring:`` block: freshness (RPO), anomaly thresholds, recency of checks, alerts."""

    schedule: str | None = "*/30 * * * *"
    #: tier -> hours; a tier not listed gets 2 intervals of its cron (the largest gap between two runs)
    rpo_hours: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    max_shrink_percent: float = Field(default=20.0, gt=0, le=100)
    size_anomaly_factor: float = Field(default=3.0, gt=1)
    verify_within_days: float = Field(default=7.0, gt=0)
    #: a tier is OK only when every snapshot of its newest chain passed a verification within this many days
    verify_max_age_days: float = Field(default=35.0, gt=0)
    drill_within_days: float = Field(default=35.0, gt=0)
    #: a local storage (or its disk) with less free space than this percentage is a warning
    min_free_percent: float = Field(default=10.0, ge=0, lt=100)
    #: where status.json, the reports, their history and the alert state live (default: see monitoring.status_dir)
    status_dir: str | None = None
    #: deprecated: schedule verification uses the Airflow connection backup_airflow_api, like the run notes; a value
    #: here names another connection to try first (with a deprecation warning)
    airflow_api_conn_id: str | None = None
    alerts: Alerts = Field(default_factory=Alerts)

    _cron = field_validator("schedule")(classmethod(lambda cls, v: _check_cron(v)))

class SmokeCheck(_Strict):
    """One application check of a disaster-recovery drill: a SQL query against a restored database source (its
    first column of the first row compared with ``expect``, or bounded by ``min`` / ``max``), or a command run in
    the restored tree (exit 0 = pass) with a timeout."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    source: str | None = None
    sql: str | None = None
    expect: str | int | float | bool | None = None
    min: float | None = None
    max: float | None = None
    command: list[str] | None = Field(default=None, min_length=1)
    timeout_seconds: int = Field(default=60, gt=0, le=3600)
    description: str = ""

    @model_validator(mode="after")
    def _kind(self) -> SmokeCheck:
        if bool(self.sql) == bool(self.command):
            raise ValueError("give exactly one of 'sql' (a query on a restored database) or 'command' (run in the "
                             "restored tree)")
        if self.sql:
            if not self.source:
                raise ValueError("a 'sql' check needs 'source': the database source it queries")
            if self.expect is None and self.min is None and self.max is None:
                raise ValueError("a 'sql' check needs 'expect' (an exact value) or 'min' / 'max' (bounds)")
            if self.expect is not None and (self.min is not None or self.max is not None):
                raise ValueError("give either 'expect' or 'min' / 'max', not both")
        elif self.expect is not None or self.min is not None or self.max is not None:
            raise ValueError("'expect', 'min' and 'max' apply to 'sql' checks; a command passes when it exits 0")
        return self


class DrillPostgres(_Strict):
    """The PostgreSQL server where a drill creates its scratch databases (``drill_<run>_<tier>``): an admin
    connection (an Airflow connection id, or a libpq DSN) — never the live database of a source."""

    conn_id: str | None = None
    dsn: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> DrillPostgres:
        if bool(self.dsn) == bool(self.conn_id):
            raise ValueError("give exactly one of 'dsn' (a libpq connection string) or 'conn_id' (an Airflow connection)")
        return self


class Drill(_Strict):
    """Disaster-recovery drills (``backupctl drill``, the ``dr_drill`` DAG; README "Disaster-recovery drills")."""

    #: cron (UTC) of the dr_drill DAG; null: manual only
    schedule: str | None = None
    #: the storage to drill from (the copy you would use in a disaster); null: the last storage of each tier
    storage: str | None = None
    #: the tiers to drill; null: every tier
    tiers: list[str] | None = Field(default=None, min_length=1)
    #: restore + verification of a tier must finish within this
    rto_minutes: float = Field(default=60.0, gt=0)
    #: the newest restorable data must be at most this old at drill start
    rpo_hours: float = Field(default=26.0, gt=0)
    smoke: list[SmokeCheck] = Field(default_factory=list)
    #: scratch server for postgres sources (without it their dumps are restored as files and not loaded)
    postgres: DrillPostgres | None = None
    #: archive (GLACIER) storages: thaw without a person's approval (retrievals are billed)
    approve_archive: bool = False
    #: where scratch restores go (a fresh drill-<id> folder below it); null: the system temp directory
    scratch_dir: str | None = None

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return _check_cron(value)


class Config(_Strict):
    application: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    sources: dict[Annotated[str, Field(pattern=_NAME)], Source] = Field(min_length=1)
    storages: dict[Annotated[str, Field(pattern=_NAME)], Storage] = Field(min_length=1)
    tiers: dict[Annotated[str, Field(pattern=_NAME)], Tier] = Field(min_length=1)
    notify_email: list[str] = Field(default_factory=list)
    owner: str = "data-engineering"
    locks: Locks = Field(default_factory=Locks)
    #: retention of the backup_manual DAG's snapshots (tier "manual"): by default the 10 newest and every one dated
    #: within the last 90 days; an explicit ``{}`` keeps them all
    manual_retention: Retention = Field(default_factory=lambda: Retention(keep_last=10, keep_within_days=90))
    monitoring: Monitoring = Field(default_factory=Monitoring)
    drill: Drill | None = None

    @model_validator(mode="after")
    def _references(self) -> Config:
        for tier_name in self.monitoring.rpo_hours:
            if tier_name not in self.tiers and tier_name != "manual":
                raise _RefError(f"monitoring.rpo_hours.{tier_name}",
                                f"unknown tier {tier_name!r}; defined tiers: {', '.join(sorted([*self.tiers, 'manual']))}")
        for tier_name, tier in self.tiers.items():
            for i, src in enumerate(tier.sources):
                if src not in self.sources:
                    raise _RefError(
                        f"tiers.{tier_name}.sources.{i}",
                        f"unknown source {src!r}; {_dym(src, self.sources)}defined sources: {', '.join(sorted(self.sources))}",
                    )
            for i, sto in enumerate(tier.storages):
                if sto not in self.storages:
                    raise _RefError(
                        f"tiers.{tier_name}.storages.{i}",
                        f"unknown storage {sto!r}; {_dym(sto, self.storages)}defined storages: {', '.join(sorted(self.storages))}",
                    )
            self._check_first_storage(tier_name, tier.storages)
        if self.drill is not None:
            self._check_drill(self.drill)
        return self

    def _check_first_storage(self, tier_name: str, storages: list[str]) -> None:
        """A tier's first storage is the one its backup reads back (its own ``part.json``, the integrity check):
        an archive class (objects unreadable until thawed) there would fail every backup, leaving objects behind."""
        first = self.storages[storages[0]]
        klass = getattr(first, "storage_class", None)
        if klass in ARCHIVE_CLASSES:
            instant = [s for s in storages[1:] if getattr(self.storages[s], "storage_class", None) not in ARCHIVE_CLASSES]
            order = [*instant[:1], *(s for s in storages if s not in instant[:1])] if instant else None
            raise _RefError(f"tiers.{tier_name}.storages.0",
                            f"storage {storages[0]!r} has the archive storage class {klass}: a backup reads what it "
                            "wrote back from the tier's first storage, and archived objects cannot be read without a "
                            "thaw, so every backup would fail; fix: put an instant storage first (local, sftp, or s3 "
                            "with storage_class STANDARD / STANDARD_IA) and the archive storage after it"
                            + (f", e.g. storages: [{', '.join(order)}]" if order else ""))

    def _check_drill(self, drill: Drill) -> None:
        if drill.storage is not None and drill.storage not in self.storages:
            raise _RefError("drill.storage", f"unknown storage {drill.storage!r}; defined storages: "
                                             f"{', '.join(sorted(self.storages))}")
        for i, t in enumerate(drill.tiers or []):
            if t not in self.tiers:
                raise _RefError(f"drill.tiers.{i}", f"unknown tier {t!r}; defined tiers: {', '.join(sorted(self.tiers))}")
        if drill.storage is not None:
            for t in drill.tiers or list(self.tiers):
                if drill.storage not in self.tiers[t].storages:
                    raise _RefError("drill.storage", f"tier {t!r} does not write to storage {drill.storage!r} (its "
                                                     f"storages: {', '.join(self.tiers[t].storages)}); choose a storage "
                                                     "every drilled tier writes to, or list only those tiers")
        for i, chk in enumerate(drill.smoke):
            if chk.source is not None:
                if chk.source not in self.sources:
                    raise _RefError(f"drill.smoke.{i}.source", f"unknown source {chk.source!r}; defined sources: "
                                                              f"{', '.join(sorted(self.sources))}")
                if chk.sql and self.sources[chk.source].type not in ("sqlite", "postgres"):
                    raise _RefError(f"drill.smoke.{i}.source", f"source {chk.source!r} is a "
                                                              f"{self.sources[chk.source].type} source; a 'sql' check "
                                                              "needs a sqlite or postgres source")
        names = [c.name for c in drill.smoke]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise _RefError("drill.smoke", f"smoke check names must be unique; repeated: {', '.join(dup)}")
        pg = drill.postgres
        if pg is not None and pg.dsn:
            for name, src in self.sources.items():
                if src.type == "postgres" and src.dsn and same_database(pg.dsn, src.dsn):
                    raise _RefError("drill.postgres.dsn", f"the scratch server DSN points at the live database of "
                                                          f"source {name!r}; give an admin DSN (e.g. dbname=postgres) "
                                                          "of a server where the drill may create databases")

    # convenience ---------------------------------------------------------------------------------
    def tier(self, name: str) -> Tier:
        if name not in self.tiers:
            from .errors import NotFoundError

            raise NotFoundError(f"no tier named {name!r}", hint=f"{_dym(name, self.tiers)}use one of: {', '.join(sorted(self.tiers))}")
        return self.tiers[name]

    def needs_airflow(self) -> bool:
        """True when a source or storage names an Airflow connection (the CLI then imports Airflow)."""
        objs: list[Any] = [*self.sources.values(), *self.storages.values()]
        if self.drill is not None and self.drill.postgres is not None:
            objs.append(self.drill.postgres)
        for obj in objs:
            if getattr(obj, "conn_id", None):
                return True
            enc = getattr(obj, "encryption", None)
            if enc is not None and enc.key_conn_id:
                return True
        return False


def same_database(a: str, b: str) -> bool:
    """True when two libpq DSNs name the same database (host, port and dbname; defaults as libpq applies them)."""
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return a == b
    try:
        da, db = conninfo_to_dict(a), conninfo_to_dict(b)
    except Exception:
        return a == b

    def key(d: dict[str, Any]) -> tuple[str, str, str]:
        host = str(d.get("host") or "localhost")
        host = "localhost" if host in ("127.0.0.1", "::1", "/var/run/postgresql", "/tmp") else host
        user = str(d.get("user") or "")
        return host, str(d.get("port") or "5432"), str(d.get("dbname") or user or "postgres")

    return key(da) == key(db)


#: S3 storage classes whose objects must be thawed (restore request) before they can be read
ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")


class _RefError(ValueError):
    def __init__(self, path: str, msg: str) -> None:
        self.path = path
        self.msg = msg
        super().__init__(msg)


# --------------------------------------------------------------------------------------------------- loading
def expand_env(node: Any, path: str, file: str, env: Mapping[str, str] | None = None) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree."""
    values: Mapping[str, str] = os.environ if env is None else env
    if isinstance(node, dict):
        return {k: expand_env(v, f"{path}.{k}" if path else str(k), file, values) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env(v, f"{path}.{i}", file, values) for i, v in enumerate(node)]
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in values and values[name] != "":
                return values[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{file}: {path}: environment variable {name} is not set",
                hint=f"export {name}=... or write ${{{name}:-default}} in the file",
            )

        return _VAR.sub(sub, node)
    return node


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG])
    return DEFAULT_CONFIG


def load_config(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Config:
    """Read, expand and validate a config file. Raises :class:`ConfigError` naming file, key path and fix."""

    p = config_path(path)
    try:
        with p.open("rb") as fh:  # bounded: ``--config /dev/zero`` or a runaway generated file must not hang
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: larger than {MAX_CONFIG_BYTES:,} bytes; refused (a configuration is a few KB)",
                              hint="check that --config names the configuration file; shorten it")
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a UTF-8 text file (byte {exc.start})",
                          hint="pass --config PATH of the YAML configuration file") from None
    except FileNotFoundError:
        if p == DEFAULT_CONFIG:  # neither --config nor $BACKUP_CONFIG: a pip-installed package ships no config
            raise ConfigError(
                f"no configuration: BACKUP_CONFIG is not set and there is no shipped config at {p} (a pip-installed "
                f"package ships none)", hint=NO_SHIPPED_CONFIG_HINT) from None
        raise ConfigError(
            f"{p}: configuration file not found", hint="pass --config PATH or set BACKUP_CONFIG to an existing file"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read configuration file: {exc.strerror}") from None
    return parse_config(text, str(p), env)


#: the largest config file read (a real one: a few KB); a larger one is refused before it is parsed, which would
#: take minutes and gigabytes (PyYAML builds its whole node graph first)
MAX_CONFIG_BYTES = 1 << 20
#: the most nodes a config may expand to once its aliases are resolved (a real one has a few hundred); more is an
#: alias bomb ("billion laughs") and refused before anything is built
MAX_YAML_NODES = 100_000
#: the deepest nesting a config may have (a real one: 6); PyYAML's scanner is quadratic in it
MAX_YAML_DEPTH = 64


def _bounded_loader(text: str, file: str) -> Any:
    """A ``yaml.SafeLoader`` over ``text`` that refuses nesting deeper than :data:`MAX_YAML_DEPTH` as it composes."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.depth += 1
            try:
                if self.depth > MAX_YAML_DEPTH:
                    mark = self.peek_event().start_mark
                    raise ConfigError(f"{file}: line {mark.line + 1}, column {mark.column + 1}: the YAML nests deeper "
                                      f"than {MAX_YAML_DEPTH} levels; refused", hint="flatten the file's structure")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return BoundedLoader(text)


def safe_load_yaml(text: str, file: str = "<config>", *, max_nodes: int = MAX_YAML_NODES) -> Any:
    """``yaml.safe_load`` that refuses, in milliseconds, a document whose aliases expand past ``max_nodes`` nodes,
    refer to themselves (a recursive alias) or nest deeper than :data:`MAX_YAML_DEPTH`: a :class:`ConfigError` (exit 2) instead of minutes
    of CPU and gigabytes of memory. The alias graph is measured before any Python object is built (each node
    once). Other YAML errors are raised as ``yaml.YAMLError``."""

    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{file}: larger than {MAX_CONFIG_BYTES:,} bytes; refused (a configuration is a few KB)",
                          hint="check that --config names the configuration file; shorten it")
    loader = _bounded_loader(text, file)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set(), max_nodes, file)
        if size > max_nodes:
            raise ConfigError(f"{file}: with its aliases expanded, the YAML has more than {max_nodes:,} nodes (an alias "
                              "bomb?); refused", hint="write the values out, or use fewer nested aliases (*name) in "
                                                      "the file")
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{file}: the YAML nests too deeply", hint="flatten the file's structure") from None
    finally:
        loader.dispose()


def _expanded_size(node: Any, sizes: dict[int, int], active: set[int], limit: int, file: str) -> int:
    """Nodes in ``node``'s tree once every alias is expanded (memoised per node; stops counting past ``limit``)."""
    import yaml

    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in active:
        mark = node.start_mark
        raise ConfigError(f"{file}: line {mark.line + 1}, column {mark.column + 1}: a YAML alias refers to the node "
                          "that contains it (a recursive structure); refused", hint="remove the recursive alias (*name)")
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [x for pair in node.value for x in pair]
    else:
        children = []
    active.add(key)
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, active, limit, file)
        if total > limit:
            break
    active.discard(key)
    sizes[key] = total
    return total


def parse_config(text: str, file: str = "<config>", env: dict[str, str] | None = None) -> Config:
    import yaml

    try:
        raw = safe_load_yaml(text, file)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{file}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: the top level must be a mapping with application, sources, storages and tiers")
    raw = expand_env(raw, "", file, env)
    try:
        return Config.model_validate(raw)
    except _RefError as exc:  # pragma: no cover - pydantic wraps it, handled below
        raise ConfigError(f"{file}: {exc.path}: {exc.msg}") from None
    except ValidationError as exc:
        raise ConfigError(_describe(exc, file)) from None


def _describe(exc: ValidationError, file: str) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        # drop the discriminator tag pydantic inserts for unions ("sources.app_db.sqlite.path")
        loc = [p for i, p in enumerate(loc) if not (p in {"sqlite", "files", "command", "postgres", "local", "s3", "sftp"}
                                                    and i >= 2 and loc[i - 2] in ("sources", "storages"))]
        key = ".".join(loc) or "(top level)"
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _RefError):
            lines.append(f"{file}: {ctx_err.path}: {ctx_err.msg}")
            continue
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling (see README, 'Configuration')"
        elif kind == "missing":
            msg = "required key is missing; add it"
        elif kind == "union_tag_invalid":
            msg = f"unknown type {err['input'].get('type')!r}; expected one of {err['ctx']['expected_tags']}"
        elif kind == "union_tag_not_found":
            msg = "missing 'type' key; add type: with one of the documented kinds"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{file}: {key}: {msg}")
    return "invalid configuration\n  " + "\n  ".join(lines)


def _dym(word: str, choices: Any) -> str:
    from .errors import did_you_mean

    return did_you_mean(word, choices)
