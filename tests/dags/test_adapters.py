"""The one mapping of library errors to Airflow's retry/fail semantics (orchestration/adapters.task_errors)."""

from __future__ import annotations

import inspect

import pytest

from backups.errors import (
    ConfigError,
    EncryptionError,
    IntegrityError,
    LockedError,
    NotFoundError,
    RefusedError,
    SourceError,
    StorageError,
    SystemStateError,
    TransientStorageError,
    ValidationFailedError,
)

pytestmark = pytest.mark.airflow

FAIL_AT_ONCE = [ConfigError("bad key"), NotFoundError("no snapshot"), IntegrityError("sha mismatch"),
                ValidationFailedError("2 checks failed", result={"app_db": {"success": False}}),
                RefusedError("target not empty"), EncryptionError("wrong key"),
                SystemStateError("no room", retryable=False)]
RETRIED = [StorageError("cloud unreachable"), TransientStorageError("throttled"), SourceError("pg down"),
           LockedError("held by a prune"), SystemStateError("server restarting", retryable=True)]


def _raising(exc):
    from backups.orchestration.adapters import task_errors

    @task_errors()
    def step(plan: dict, storage: str) -> dict:
        raise exc

    return step


@pytest.mark.parametrize("exc", FAIL_AT_ONCE, ids=lambda e: type(e).__name__)
def test_errors_a_retry_cannot_fix_fail_the_task_at_once_with_the_message(exc):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match=exc.message):
        _raising(exc)({}, "local")


@pytest.mark.parametrize("exc", RETRIED, ids=lambda e: type(e).__name__)
def test_other_library_errors_propagate_for_the_task_retry(exc):
    with pytest.raises(type(exc)):
        _raising(exc)({}, "local")


def test_the_decorator_keeps_the_signature_task_maps_over():
    step = _raising(StorageError("x"))
    assert list(inspect.signature(step).parameters) == ["plan", "storage"] and step.__name__ == "step"


def test_system_state_exit_codes():
    assert SystemStateError("full", storage_only=True).exit_code == 5
    assert SystemStateError("source gone").exit_code == 6


def test_every_task_adapter_of_the_backup_and_retention_dags_maps_errors():
    from tests.dags.common import load_dags

    bag = load_dags()
    checked = 0
    for dag_id in ("backup_daily", "backup_manual", "backup_retention"):
        for t in bag.dags[dag_id].tasks:
            fn = getattr(t, "python_callable", None)
            if fn is None or t.task_id == "approve_backup":
                continue
            assert fn.__code__.co_filename.endswith("contextlib.py") and fn.__wrapped__, (dag_id, t.task_id)
            checked += 1
    assert checked >= 25
