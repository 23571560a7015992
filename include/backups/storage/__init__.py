"""Storage backends behind one small interface, and the factory that builds them from the config.

Backends that need credentials (s3, sftp) get them from a :class:`Resolver`; the library's default resolver
cannot resolve Airflow connections (it would need Airflow) — the DAGs and, when a config names a ``conn_id``,
the CLI get one from :func:`backups.connections.resolver_for` (injected, registered by the Airflow layer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConfigError
from .base import ObjectInfo, Storage
from .local import LocalStorage
from .memory import MemoryStorage
from .wrappers import ReadOnlyStorage, RetryingStorage

if TYPE_CHECKING:
    from ..config import Config

__all__ = [
    "ObjectInfo", "Storage", "LocalStorage", "MemoryStorage", "ReadOnlyStorage",
    "RetryingStorage", "Resolver", "open_storage",
]


class Resolver(Protocol):
    """Turns connection ids into clients and secrets. Never logs what it returns."""

    def s3_client(self, conn_id: str, timeout: float | None = None, max_attempts: int | None = None) -> Any:
        """An S3 client; ``timeout`` (connect and read, seconds) and ``max_attempts`` (botocore retries) when given."""
        ...

    def sftp_client_factory(self, conn_id: str, timeout: float | None = None) -> Any:
        """A callable returning an ``SFTPClient``; ``timeout`` bounds its TCP connect, SSH banner and auth."""
        ...

    def secret(self, conn_id: str) -> str: ...

    def postgres_dsn(self, conn_id: str) -> str: ...


class NoAirflowResolver:
    def _fail(self, conn_id: str) -> ConfigError:
        return ConfigError(
            f"connection {conn_id!r} needs Airflow to resolve",
            hint="install the Airflow stack (make venv) or define the connection as AIRFLOW_CONN_" + conn_id.upper(),
        )

    def s3_client(self, conn_id: str, timeout: float | None = None, max_attempts: int | None = None) -> Any:
        raise self._fail(conn_id)

    def sftp_client_factory(self, conn_id: str, timeout: float | None = None) -> Any:
        raise self._fail(conn_id)

    def secret(self, conn_id: str) -> str:
        raise self._fail(conn_id)

    def postgres_dsn(self, conn_id: str) -> str:
        raise self._fail(conn_id)


def open_storage(cfg: Config, name: str, resolver: Resolver | None = None, *, read_only: bool = False) -> Storage:
    """Build the storage called ``name`` from the config (wrapped read-only when asked)."""
    if name not in cfg.storages:
        from ..errors import NotFoundError, did_you_mean

        raise NotFoundError(f"no storage named {name!r}",
                            hint=f"{did_you_mean(name, cfg.storages)}use one of: {', '.join(sorted(cfg.storages))}")
    sc = cfg.storages[name]
    resolver = resolver or NoAirflowResolver()
    storage: Storage
    if sc.type == "local":
        storage = LocalStorage(sc.path, name=name)
    elif sc.type == "s3":
        from .s3 import S3Storage

        storage = RetryingStorage(S3Storage.from_config(sc, name, resolver))
    elif sc.type == "sftp":
        from .sftp import SftpStorage

        storage = RetryingStorage(SftpStorage.from_config(sc, name, resolver))
    else:  # pragma: no cover - the config model forbids it
        raise ConfigError(f"storage {name}: unknown type {sc.type!r}")
    import os

    if os.environ.get("BACKUPS_FAULT"):  # the fault-injection suite (tests/faults) only
        from .wrappers import FaultInjectingStorage

        storage = FaultInjectingStorage(storage, os.environ["BACKUPS_FAULT"])
    if sc.encryption is not None:  # every storage type has the field
        from .crypto import EncryptedStorage, load_key

        storage = EncryptedStorage(storage, load_key(sc.encryption, resolver, name))
    return ReadOnlyStorage(storage) if read_only else storage
