"""Strict models of the backup configuration file (``include/backups.yaml``).

Loading goes: YAML text → ``${VAR}`` / ``${VAR:-default}`` expansion (each string, with its key path so a missing
variable is reported precisely) → pydantic models with ``extra="forbid"`` → cross-checks (tiers name existing
sources and storages, cron strings parse). Any problem raises one :class:`~backups.errors.ConfigError` whose
message names the file, the key path and the fix. Nothing is written while loading.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "backups.yaml"
ENV_CONFIG = "BACKUP_CONFIG"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = r"^[a-z][a-z0-9_]{0,62}$"
#: the one safe-name rule for source, storage and tier names: checked when the configuration is loaded and again
#: when a manifest is read (a source name becomes a directory of the restore target)
SAFE_NAME = re.compile(_NAME)


def is_safe_name(name: object) -> bool:
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    timeout_seconds: int = Field(default=300, gt=0)
    description: str = ""


class PostgresSource(_Strict):
    type: Literal["postgres"]
    dsn: str | None = None
    conn_id: str | None = None
    jobs: int = Field(default=2, ge=1, le=16)
    schemas: list[str] = Field(default_factory=list)
    exclude_tables: list[str] = Field(default_factory=list)
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


class SftpStorage(_Strict):
    type: Literal["sftp"]
    conn_id: str = "backup_sftp"
    path: str
    encryption: EncryptionConfig | None = None
    description: str = ""


Storage = Annotated[LocalStorage | S3Storage | SftpStorage, Field(discriminator="type")]


# --------------------------------------------------------------------------------------------------- tiers
class Retention(_Strict):
    keep_last: int | None = Field(default=None, ge=1)
    #: every snapshot within this many days of the tier's newest one (restic's --keep-within)
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
        if value is None:
            return None
        from croniter import croniter

        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a 5-field cron expression (minute hour day-of-month month day-of-week)")
        return value


class Locks(_Strict):
    """Repository locks (see docs/format.md, "Lock objects") and leftover cleanup."""

    #: how long a run waits for a conflicting lock before failing with exit 9 (LockedError)
    wait_seconds: float = Field(default=600.0, ge=0)
    #: a lock whose heartbeat is older than this is stale (other host: reported, removed by `backupctl unlock`)
    stale_after_seconds: float = Field(default=1800.0, gt=0)
    #: how often a holder refreshes its lock's heartbeat (must be well below stale_after_seconds)
    refresh_seconds: float = Field(default=300.0, gt=0)
    #: uncommitted objects, temp objects and staging folders younger than this are never removed
    orphan_grace_hours: float = Field(default=48.0, ge=0)

    @model_validator(mode="after")
    def _refresh_below_stale(self) -> Locks:
        if self.refresh_seconds * 2 > self.stale_after_seconds:
            raise ValueError(f"refresh_seconds ({self.refresh_seconds}) must be at most half of stale_after_seconds "
                             f"({self.stale_after_seconds}), or live locks would look stale")
        return self


class Config(_Strict):
    application: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    sources: dict[Annotated[str, Field(pattern=_NAME)], Source] = Field(min_length=1)
    storages: dict[Annotated[str, Field(pattern=_NAME)], Storage] = Field(min_length=1)
    tiers: dict[Annotated[str, Field(pattern=_NAME)], Tier] = Field(min_length=1)
    notify_email: list[str] = Field(default_factory=list)
    owner: str = "data-engineering"
    locks: Locks = Field(default_factory=Locks)
    #: retention of the backup_manual DAG's snapshots (tier "manual"): by default the 10 newest and every one within
    #: 90 days of the newest; an explicit ``{}`` keeps them all
    manual_retention: Retention = Field(default_factory=lambda: Retention(keep_last=10, keep_within_days=90))

    @model_validator(mode="after")
    def _references(self) -> Config:
        for tier_name, tier in self.tiers.items():
            for i, src in enumerate(tier.sources):
                if src not in self.sources:
                    raise _RefError(
                        f"tiers.{tier_name}.sources.{i}",
                        f"unknown source {src!r}; defined sources: {', '.join(sorted(self.sources))}",
                    )
            for i, sto in enumerate(tier.storages):
                if sto not in self.storages:
                    raise _RefError(
                        f"tiers.{tier_name}.storages.{i}",
                        f"unknown storage {sto!r}; defined storages: {', '.join(sorted(self.storages))}",
                    )
        return self

    # convenience ---------------------------------------------------------------------------------
    def tier(self, name: str) -> Tier:
        if name not in self.tiers:
            from .errors import NotFoundError

            raise NotFoundError(f"no tier named {name!r}", hint=f"use one of: {', '.join(sorted(self.tiers))}")
        return self.tiers[name]

    def needs_airflow(self) -> bool:
        """True when a source or storage names an Airflow connection (the CLI then imports Airflow)."""
        objs: list[Any] = [*self.sources.values(), *self.storages.values()]
        for obj in objs:
            if getattr(obj, "conn_id", None):
                return True
            enc = getattr(obj, "encryption", None)
            if enc is not None and enc.key_conn_id:
                return True
        return False


class _RefError(ValueError):
    def __init__(self, path: str, msg: str) -> None:
        self.path = path
        self.msg = msg
        super().__init__(msg)


# --------------------------------------------------------------------------------------------------- loading
def expand_env(node: Any, path: str, file: str, env: dict[str, str] | None = None) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree."""
    env = os.environ if env is None else env
    if isinstance(node, dict):
        return {k: expand_env(v, f"{path}.{k}" if path else str(k), file, env) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env(v, f"{path}.{i}", file, env) for i, v in enumerate(node)]
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env and env[name] != "":
                return env[name]
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
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{p}: configuration file not found", hint="pass --config PATH or set BACKUP_CONFIG to an existing file"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read configuration file: {exc.strerror}") from None
    return parse_config(text, str(p), env)


def parse_config(text: str, file: str = "<config>", env: dict[str, str] | None = None) -> Config:
    import yaml

    try:
        raw = yaml.safe_load(text)
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
        loc = [p for p in loc if p not in {"sqlite", "files", "command", "postgres", "local", "s3", "sftp"}]
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
