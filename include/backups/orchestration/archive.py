"""Waiting for archived objects (S3 GLACIER / DEEP_ARCHIVE) without holding a worker slot.

A restore from an archive storage can only read an object once S3 has made a temporary copy of it, which takes
minutes to hours (GLACIER) or up to 48 h (DEEP_ARCHIVE). :class:`WaitForArchiveSensor` asks S3 for those copies
and then *defers* to :class:`WaitForArchiveTrigger`, which runs in the triggerer and re-asks every
``poke_interval`` until nothing is pending; the task then resumes on a worker and the restore can read.

* Storage that is not an archive (local, SFTP, S3 STANDARD…): the sensor succeeds at once, without deferring.
* The check is :class:`backups.engine.thaw.ThawPoll` ``.poll()`` — "request a restore of every key that is not
  readable yet; all readable?" — the same poll the CLI's :func:`~backups.engine.thaw.wait_readable` loops over;
  run with :func:`asyncio.to_thread` in the trigger because boto3 is synchronous.
* The trigger rebuilds the storage from the config by name (``$BACKUP_CONFIG`` must be set on the triggerer
  as on the workers, and the project importable there: ``PYTHONPATH=<project>`` / ``<project>/include``).
  Connections are resolved through the triggerer's own comms, like in a task.
* ``deferrable=False`` keeps the classic sensor loop (``mode="poke"`` or ``mode="reschedule"``) for a deployment
  without a triggerer. ``dag.test()`` runs triggers in-process (``_run_inline_trigger``), so both modes work
  under ``dag.test()`` as well.

Events: ``{"status": "success", "storage", "keys", "polls", "waited_seconds"}`` or
``{"status": "error", "storage", "message"}`` (a permanent storage error: the task fails with the message).
Transient storage errors (throttling, 5xx, timeouts) are logged and retried at the next poll.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, cast

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException
from airflow.triggers.base import BaseTrigger, TriggerEvent

#: how long S3 keeps the temporary restored copy (days): long enough to restore after a slow thaw
RESTORE_DAYS = 2
DEFAULT_POKE_SECONDS = 300.0
DEFAULT_TIMEOUT = timedelta(hours=50)  # DEEP_ARCHIVE standard retrieval: up to 48 h


def open_storage_by_name(name: str) -> Any:
    """The storage ``name`` of the config as this process sees it, read-only (restore requests still go out)."""
    from ..config import load_config
    from ..storage import open_storage
    from .connections import task_resolver

    cfg = load_config()
    return open_storage(cfg, name, task_resolver(cfg), read_only=True)


def snapshot_keys(storage: Any, snapshot_id: str) -> list[str]:
    """Every object key a restore of ``snapshot_id`` reads (its whole chain)."""
    from ..catalog import Catalog
    from ..config import load_config
    from ..engine.thaw import needed_keys

    cat = Catalog(storage, load_config().application)
    return needed_keys(cat, cat.get(snapshot_id))


def thaw_poll(storage: Any, keys: list[str], days: int) -> Any:
    """The one archive poll (:class:`backups.engine.thaw.ThawPoll`) the trigger and the sensor call."""
    from ..engine.thaw import ThawPoll

    return ThawPoll(storage, list(keys), days)


class WaitForArchiveTrigger(BaseTrigger):
    """Fires once every key (given, or resolved from ``snapshot_id``) of ``storage`` is readable."""

    def __init__(self, *, storage: str, keys: list[str] | None = None, snapshot_id: str | None = None,
                 poke_interval: float = DEFAULT_POKE_SECONDS, days: int = RESTORE_DAYS) -> None:
        super().__init__()
        if keys is None and not snapshot_id:
            raise ValueError("WaitForArchiveTrigger needs keys or a snapshot_id")
        self.storage, self.keys, self.snapshot_id = storage, keys, snapshot_id
        self.poke_interval, self.days = float(poke_interval), int(days)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"storage": self.storage, "keys": self.keys, "snapshot_id": self.snapshot_id,
                 "poke_interval": self.poke_interval, "days": self.days})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from ..errors import BackupError, TransientStorageError

        started = time.monotonic()
        try:
            storage = await asyncio.to_thread(open_storage_by_name, self.storage)
            if not storage.archive:
                yield TriggerEvent({"status": "success", "storage": self.storage, "archive": False, "keys": 0,
                                    "polls": 0, "waited_seconds": 0.0})
                return
            keys = list(self.keys) if self.keys is not None else await asyncio.to_thread(
                snapshot_keys, storage, cast(str, self.snapshot_id))  # __init__: no keys -> a snapshot_id
        except BackupError as exc:
            yield TriggerEvent({"status": "error", "storage": self.storage, "message": str(exc)})
            return
        p = thaw_poll(storage, keys, self.days)
        while True:
            try:
                done = await asyncio.to_thread(p.poll)
            except TransientStorageError as exc:  # throttling, 5xx: the next poll asks again
                self.log.warning("%s: poll %d failed (%s); asking again in %.0fs", self.storage, p.polls, exc.message,
                                 self.poke_interval)
            except BackupError as exc:
                yield TriggerEvent({"status": "error", "storage": self.storage, "message": str(exc)})
                return
            else:
                if done:
                    waited = round(time.monotonic() - started, 3)
                    self.log.info("%s: all %d archived object(s) readable after %d poll(s), %.0fs", self.storage,
                                  len(keys), p.polls, waited)
                    yield TriggerEvent({"status": "success", "storage": self.storage, "archive": True,
                                        "keys": len(keys), "polls": p.polls, "waited_seconds": waited})
                    return
                self.log.info("%s", p.progress())
            await asyncio.sleep(self.poke_interval)


class WaitForArchiveSensor(BaseSensorOperator):
    """Succeeds when every object a restore of ``snapshot_id`` (or every key in ``keys``) needs from ``storage``
    is readable; requests the S3 restores itself. Deferrable by default; at once for non-archive storage."""

    template_fields = ("storage", "snapshot_id")
    ui_color = "#d6eaf8"

    def __init__(self, *, storage: str, snapshot_id: str | None = None, keys: list[str] | None = None,
                 deferrable: bool = True, days: int = RESTORE_DAYS, poke_interval: float = DEFAULT_POKE_SECONDS,
                 timeout: timedelta | float = DEFAULT_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
        if keys is None and not snapshot_id:
            raise ValueError(f"{self.task_id}: give snapshot_id or keys")
        self.storage, self.snapshot_id, self.keys = storage, snapshot_id, keys
        self.deferrable, self.days = deferrable, days
        self._poll: Any = None  #: the one archive poll (ThawPoll), kept across pokes

    def _result(self, archive: bool, keys: int, deferred: bool = False, **extra: Any) -> dict[str, Any]:
        return {"storage": self.storage, "archive": archive, "keys": keys, "deferred": deferred, **extra}

    def _keys(self, storage: Any) -> list[str]:
        return list(self.keys) if self.keys is not None else snapshot_keys(storage, str(self.snapshot_id))

    def _open(self) -> Any:
        from ..errors import BackupError

        try:
            return open_storage_by_name(self.storage)
        except BackupError as exc:
            raise AirflowFailException(str(exc)) from None

    def execute(self, context: Any) -> Any:
        from ..errors import BackupError

        storage = self._open()
        if not storage.archive:
            self.log.info("storage %s is not an archive: nothing to wait for", self.storage)
            return self._result(False, 0, polls=0, waited_seconds=0.0)
        if not self.deferrable:
            return super().execute(context)
        try:
            keys = self._keys(storage)
            p = thaw_poll(storage, keys, self.days)
            done = p.poll()
        except BackupError as exc:
            raise AirflowFailException(str(exc)) from None
        if done:
            self.log.info("%s: all %d archived object(s) are readable already", self.storage, len(keys))
            return self._result(True, len(keys), polls=1, waited_seconds=0.0)
        self.log.info("%s: restores requested; %d of %d archived object(s) pending; deferring (poll every %.0fs)",
                      self.storage, len(p.left or []), len(keys), self.poke_interval)
        self.defer(trigger=WaitForArchiveTrigger(storage=self.storage, keys=p.left, poke_interval=self.poke_interval,
                                                 days=self.days),
                   method_name="execute_complete", timeout=timedelta(seconds=self.timeout))

    def poke(self, context: Any) -> bool | PokeReturnValue:
        from ..errors import BackupError, TransientStorageError

        storage = self._open()
        try:
            if self._poll is None:
                self._poll = thaw_poll(storage, self._keys(storage), self.days)
            self._poll.storage = storage
            done = self._poll.poll()
        except TransientStorageError as exc:
            self.log.warning("%s: poll failed (%s); asking again", self.storage, exc.message)
            return False
        except BackupError as exc:
            raise AirflowFailException(str(exc)) from None
        if not done:
            self.log.info("%s", self._poll.progress())
            return False
        return PokeReturnValue(True, self._result(True, len(self._poll.keys)))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("status") != "success":
            raise AirflowFailException(f"waiting for archived objects on {self.storage} failed: {event.get('message')}")
        return self._result(bool(event.get("archive", True)), int(event.get("keys", 0)), deferred=True,
                            polls=event.get("polls"), waited_seconds=event.get("waited_seconds"))
