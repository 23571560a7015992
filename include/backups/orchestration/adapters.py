"""What every DAG task adapter shares: the one mapping of library errors to Airflow's retry/fail semantics, the
runtime config of a task, the pool of heavy I/O tasks.

An adapter reads its inputs from the context/XCom, calls one step of :mod:`backups.commands` and returns its
JSON-able result; it is decorated with :func:`task_errors` (under ``@task``) so that every task maps errors alike:

* errors a retry cannot fix (:data:`FAIL_FAST`, or a :class:`~backups.errors.SystemStateError` that is not
  ``retryable``) fail the task at once (``AirflowFailException``: no retries, the failure notifier fires);
* every other :class:`~backups.errors.BackupError` (a storage or source down, a lock held) propagates: the task
  is retried by its ``retries``/``retry_delay``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from ..config import Config
from ..errors import ConfigError, EncryptionError, IntegrityError, NotFoundError, RefusedError, SystemStateError

#: errors that a retry cannot fix: the task fails at once with the message (and the failure notifier fires)
FAIL_FAST = (ConfigError, NotFoundError, IntegrityError, RefusedError, EncryptionError)
#: pool for the heavy I/O tasks (extraction, uploads, restores), defined in airflow_settings.yaml and created by
#: `make airflow-settings` (Astro loads it on `astro dev start`). The scheduler does not run a task whose pool
#: does not exist: create it in every deployment (`airflow pools set backup_io 2 "backup I/O"`).
POOL: str | None = "backup_io"


@contextlib.contextmanager
def task_errors(fail_fast: tuple[type[BaseException], ...] = FAIL_FAST) -> Iterator[None]:
    """Map library errors to Airflow's retry/fail semantics (a decorator under ``@task``, or a ``with`` block).

    ``fail_fast``: the error kinds that fail the task at once. A task whose retry could not succeed (a restore
    task: sources already restored make a re-run refuse the target) passes ``(BackupError,)``."""
    try:
        yield
    except SystemStateError as exc:
        if exc.retryable and not issubclass(SystemStateError, fail_fast):
            raise
        raise AirflowFailException(str(exc)) from None
    except fail_fast as exc:
        raise AirflowFailException(str(exc)) from None


def io_pool_args() -> dict[str, Any]:
    """``pool=`` for a heavy I/O task (nothing when the pool is disabled)."""
    return {"pool": POOL} if POOL else {}


def runtime(tier: str) -> tuple[Config, Any]:
    """The config as the task sees it on its worker, and the Airflow connection resolver (injected into the core)."""
    from ..commands.backup import runtime_config
    from .connections import task_resolver

    cfg = runtime_config(tier)
    return cfg, task_resolver(cfg)


def run_started(dag_run: Any) -> Any:
    """When the DAG run really started: its ``start_date`` — except under ``dag.test()``, which sets that to the
    logical date (a run for last Sunday would "take" days); there ``run_after`` (the moment ``dag.test()`` was
    called) is the real start. In a deployment ``run_after`` (the scheduled time or the trigger) is never after
    ``start_date``, so the later of the two is right in both cases. None when neither is known."""
    known = [d for d in (getattr(dag_run, "start_date", None), getattr(dag_run, "run_after", None)) if d is not None]
    return max(known) if known else None


def run_seconds(dag_run: Any) -> float | None:
    """Seconds since :func:`run_started` (None when unknown)."""
    from datetime import UTC, datetime

    begun = run_started(dag_run)
    return round((datetime.now(UTC) - begun).total_seconds(), 1) if begun else None
