"""Airflow connections → storage clients and secrets (the :class:`backups.storage.Resolver` for DAGs and the CLI).

* ``s3_client(conn_id, timeout=None, max_attempts=None)`` — ``S3Hook(aws_conn_id=conn_id).get_conn()``: an AWS
  connection (login/password or ``aws_access_key_id``/``aws_secret_access_key`` extras, ``endpoint_url`` and
  ``region_name`` extras for S3-compatible services). A missing AWS connection falls back to boto3's default
  chain (instance role, env). ``timeout``/``max_attempts`` (the storage's ``timeout_seconds``/``max_attempts``)
  become botocore's ``connect_timeout``, ``read_timeout`` and standard-mode ``retries``.
* ``sftp_client_factory(conn_id, timeout=None)`` — a callable returning ``SFTPHook(ssh_conn_id=conn_id).get_conn()``
  with ``timeout`` (the storage's ``timeout_seconds``) as the connect, banner and auth timeouts; the
  storage calls it again after a dropped connection. Host keys are verified: the connection's ``host_key``
  extra (pinned) or the system ``known_hosts``; an unknown or changed key is refused with a message naming the
  connection and the fix. One connection attempt per call: retries belong to ``RetryingStorage``.
* ``secret(conn_id)`` — the connection's password (used for client-side encryption keys).

Every task of the Airflow layer gets its resolver from :func:`task_resolver` — this class, passed explicitly,
never looked up through the ``backups.resolvers`` entry point: in the Astro layout (``include/`` copied next to
the DAGs, the project not pip-installed) no entry point exists. Only ``backupctl`` (a pip-installed package)
looks the resolver up (:mod:`backups.connections`).

Airflow is imported inside the methods, so importing this module stays cheap at DAG parse time.
Nothing returned here is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, StorageError

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)


def _missing(conn_id: str) -> ConfigError:
    return ConfigError(
        f"Airflow connection {conn_id!r} is not defined",
        hint=f"add it in the Airflow UI (Admin → Connections), in airflow_settings.yaml, or as the environment "
        f"variable AIRFLOW_CONN_{conn_id.upper()} (JSON)",
    )


class AirflowResolver:
    """Implements ``backups.storage.Resolver`` with Airflow hooks and connections (registered for the core in
    pyproject.toml's ``backups.resolvers`` entry points; see :mod:`backups.connections`)."""

    #: imported lazily by the methods; checked by :func:`backups.connections.registered_resolver` when loaded
    requires = ("airflow.sdk",)

    def s3_client(self, conn_id: str, timeout: float | None = None, max_attempts: int | None = None) -> Any:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        if timeout is None and max_attempts is None:
            return S3Hook(aws_conn_id=conn_id).get_conn()
        from botocore.config import Config

        limits: dict[str, Any] = {}
        if timeout is not None:
            limits.update(connect_timeout=timeout, read_timeout=timeout)
        if max_attempts is not None:
            limits["retries"] = {"total_max_attempts": max_attempts, "mode": "standard"}  # first try included
        return S3Hook(aws_conn_id=conn_id, config=Config(**limits)).get_conn()

    def sftp_client_factory(self, conn_id: str, timeout: float | None = None) -> Callable[[], Any]:
        def connect() -> Any:
            import paramiko
            from airflow.providers.sftp.hooks.sftp import SFTPHook
            from airflow.sdk.exceptions import AirflowNotFoundException

            limits: dict[str, Any] = {}
            if timeout is not None:  # TCP connect, SSH banner, authentication (the storage sets the channel's)
                limits = {"conn_timeout": max(1, round(timeout)), "banner_timeout": timeout,
                          "auth_timeout": max(1, round(timeout))}
            try:
                hook = SFTPHook(ssh_conn_id=conn_id, conn_retry_attempts=1, **limits)
            except AirflowNotFoundException:
                raise _missing(conn_id) from None
            extra = (hook.get_connection(conn_id).extra_dejson or {}) if hasattr(hook, "get_connection") else {}
            if "compress" not in extra:
                # backup objects are zstd-compressed (or encrypted): SSH zlib only burns CPU (~4x slower uploads)
                hook.compress = False
            if hook.no_host_key_check:
                log.warning("connection %s disables SSH host key checking (no_host_key_check); pin the server's "
                            "key in the host_key extra instead", conn_id)
            try:
                sftp = hook.get_conn()
            except paramiko.BadHostKeyException:
                raise StorageError(
                    f"SFTP connection {conn_id!r}: the server's SSH host key has CHANGED and was refused "
                    "(a re-installed server, or someone in between)",
                    hint=f"verify the new key out of band, then set it in the host_key extra of connection {conn_id!r} "
                    "(ssh-keyscan -t ed25519 -p PORT HOST)",
                ) from None
            except paramiko.SSHException as exc:
                if "known_hosts" not in str(exc):
                    raise
                raise StorageError(
                    f"SFTP connection {conn_id!r}: the server's SSH host key is unknown and was refused",
                    hint=f"set the host_key extra of connection {conn_id!r} to the server's public key "
                    "(\"ssh-ed25519 AAAA...\", from ssh-keyscan -t ed25519 -p PORT HOST, verified out of band) "
                    "or add it to the worker's ~/.ssh/known_hosts",
                ) from None
            sftp.backups_hook = hook  # keep the hook (and its SSHClient) alive as long as the SFTP session
            return sftp

        return connect

    def secret(self, conn_id: str) -> str:
        from airflow.sdk import Connection
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = Connection.get(conn_id)
        except AirflowNotFoundException:
            raise _missing(conn_id) from None
        return conn.password or ""

    def postgres_dsn(self, conn_id: str) -> str:
        """A libpq URI built from a postgres connection (the password stays inside; never log the result)."""
        from urllib.parse import quote

        from airflow.sdk import Connection
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = Connection.get(conn_id)
        except AirflowNotFoundException:
            raise _missing(conn_id) from None
        auth = quote(conn.login or "", safe="")
        if conn.password:
            auth += ":" + quote(conn.password, safe="")
        host = conn.host or "127.0.0.1"
        port = f":{conn.port}" if conn.port else ""
        return f"postgresql://{auth + '@' if auth else ''}{host}{port}/{quote(conn.schema or 'postgres', safe='')}"


def task_resolver(cfg: Config, *, always: bool = False) -> AirflowResolver | None:
    """The resolver a task of the Airflow layer injects into the core: :class:`AirflowResolver` when ``cfg`` names
    a ``conn_id`` (or ``always``: the drill's scratch PostgreSQL may be a connection), else None.

    Never an entry-point lookup, so the DAGs work whether or not the package is pip-installed."""
    return AirflowResolver() if always or cfg.needs_airflow() else None
