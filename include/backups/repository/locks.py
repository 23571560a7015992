"""Repository locks on any storage, modelled on restic's (``internal/restic/lock.go``).

A lock is an immutable JSON object ``locks/<uuid>.json``::

    {"lock_format": 1, "scope": "repo" | "snapshot/<id>" | "snapshot/<id>/<source>", "exclusive": true|false,
     "operation": "backup", "host": "...", "pid": 1234, "pid_start": "...", "run": "dag/run/task try 1" | null,
     "created": ISO-8601, "heartbeat": ISO-8601}

Algorithm (optimistic, like restic): list the locks; if none conflicts, write our own; list again; if a
conflicting lock appeared meanwhile, remove ours and retry after a random pause. Two locks *conflict* when
their scopes overlap (equal, or one is a prefix path of the other: ``snapshot/X`` covers ``snapshot/X/src``)
and at least one is exclusive. ``repo`` does not overlap ``snapshot/...``: a backup holds a shared ``repo``
lock *and* an exclusive ``snapshot/<id>[/<source>]`` lock; prune holds the exclusive ``repo`` lock.

Heartbeat: objects are never overwritten, so a holder refreshes by writing a new lock object (new uuid, new
heartbeat) and then removing the old one, every ``refresh_seconds``. If refreshing fails for longer than
``stale_after`` the lock is *lost*. Before it commits (writes a manifest, deletes anything) a holder calls
:meth:`HeldLock.check`, which raises :class:`LockedError` when its lock is lost or was removed (``unlock``),
so a paused zombie can never commit after its lock was broken.

Stale locks: a lock of this host whose process is gone is removed automatically (logged). A lock of another
host whose heartbeat is older than ``stale_after`` is *stale*: it still blocks, is reported (log, ``status``)
and is removed by ``backupctl unlock`` — never silently. An earlier try of the same Airflow task (same
dag/run/task, lower try number) whose heartbeat is stale is removed too: Airflow has already failed that try.
"""

from __future__ import annotations

import builtins  # the class Locks has a method named list: annotations after it name the type as builtins.list
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import (
    BackupError,
    LockedError,
    ObjectNotFound,
    RefusedError,
    StorageError,
    TransientStorageError,
    printable,
)
from ..storage.base import Storage

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)

LOCKS = "locks/"
HOST = socket.gethostname()
#: keys of the locks this process holds right now (a lock of this pid that is not here was abandoned, e.g. its
#: release failed while the storage was down: it is removed like a dead process's)
_HELD: set[str] = set()


def _now() -> datetime:
    return datetime.now(UTC)


def pid_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), to tell a reused pid from the lock's holder."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """True when process ``pid`` runs on this host (and, when ``start`` is known, is the same process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):  # killed, not yet reaped: gone for our purpose
            return False
    except (OSError, IndexError):
        pass
    return start is None or pid_start(pid) in (None, start)


def run_identity() -> str | None:
    """The Airflow task running us (from the AIRFLOW_CTX_* variables Airflow sets), or None."""
    dag, run, task = (os.environ.get(f"AIRFLOW_CTX_{k}") for k in ("DAG_ID", "DAG_RUN_ID", "TASK_ID"))
    if not (dag and run):
        return None
    try_ = os.environ.get("AIRFLOW_CTX_TRY_NUMBER")
    return f"{dag}/{run}/{task or '-'}" + (f" try {try_}" if try_ else "")


def overlap(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


@dataclass(frozen=True)
class LockInfo:
    key: str
    scope: str
    exclusive: bool
    operation: str
    host: str
    pid: int
    run: str | None
    created: str
    heartbeat: str
    pid_start: str | None = None

    @classmethod
    def parse(cls, key: str, raw: bytes) -> LockInfo:
        """A lock object as read. Its texts are printed (``status``, ``unlock``, every "locked" message) and anyone
        who can write to the storage can write a lock: host, operation and run lose control and bidirectional
        formatting characters and are cut to 255 characters (the scope, which decides conflicts, only when shown)."""
        d = json.loads(raw)
        run = d.get("run")
        return cls(key, str(d["scope"]), bool(d["exclusive"]), printable(d.get("operation", "?")),
                   printable(d["host"]), int(d["pid"]), None if run is None else printable(run), str(d["created"]),
                   str(d["heartbeat"]), d.get("pid_start"))

    def to_json(self) -> bytes:
        return json.dumps({"lock_format": 1, "scope": self.scope, "exclusive": self.exclusive,
                           "operation": self.operation, "host": self.host, "pid": self.pid, "pid_start": self.pid_start,
                           "run": self.run, "created": self.created, "heartbeat": self.heartbeat},
                          sort_keys=True, indent=1).encode() + b"\n"

    def age(self, now: datetime | None = None) -> float:
        """Seconds since the last heartbeat."""
        return ((now or _now()) - datetime.fromisoformat(self.heartbeat)).total_seconds()

    def conflicts(self, scope: str, exclusive: bool) -> bool:
        return overlap(self.scope, scope) and (exclusive or self.exclusive)

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        run = f", run {self.run}" if self.run else ""
        return (f"{kind} {printable(self.scope)} lock of {self.operation} on host {self.host}, pid {self.pid}{run}, "
                f"created {printable(self.created)[:19]}Z, heartbeat {self.age():.0f}s ago ({printable(self.key)})")


def _airflow_try(run: str | None) -> tuple[str, int] | None:
    if not run or " try " not in run:
        return None
    base, _, n = run.rpartition(" try ")
    return (base, int(n)) if n.isdigit() else None


class Locks:
    """Lock operations on one storage (the storage the repository lives on)."""

    def __init__(self, storage: Storage, *, wait_seconds: float = 600.0, stale_after: float = 1800.0,
                 refresh_seconds: float = 300.0, poll_seconds: float = 2.0) -> None:
        self.storage = storage
        self.wait_seconds, self.stale_after, self.refresh_seconds = wait_seconds, stale_after, refresh_seconds
        self.poll_seconds = poll_seconds

    @classmethod
    def from_config(cls, storage: Storage, cfg: Config | None) -> Locks:
        lc = getattr(cfg, "locks", None)
        if lc is None:
            return cls(storage)
        return cls(storage, wait_seconds=lc.wait_seconds, stale_after=lc.stale_after_seconds,
                   refresh_seconds=lc.refresh_seconds)

    # ---- reading ------------------------------------------------------------------------------------
    def list(self) -> list[LockInfo]:
        """Every lock on the storage. An unreadable lock object (not JSON) counts as an exclusive repo lock of an
        unknown holder: it blocks, and `backupctl unlock --all` removes it. So does a lock object that fails
        authentication on an encrypted storage (damaged), as long as the key opens the storage's other objects."""
        from ..errors import IntegrityError

        out = []
        for info in self.storage.list(LOCKS):
            if not info.key.endswith(".json"):
                continue
            try:
                raw = self.storage.get_bytes(info.key)
            except ObjectNotFound:
                continue  # removed meanwhile (released or refreshed)
            except IntegrityError:  # a damaged object on an encrypted storage: unreadable, as on a plain one
                raw = b""
            try:
                out.append(LockInfo.parse(info.key, raw))
            except (ValueError, KeyError, TypeError):
                when = datetime.fromtimestamp(info.mtime or 0, UTC).isoformat()
                out.append(LockInfo(info.key, "repo", True, "unreadable lock object", "?", 0, None, when, when))
        return out

    def state(self, lk: LockInfo, now: datetime | None = None) -> str:
        """``live``, ``dead`` (this host, process gone: removable automatically) or ``stale`` (old heartbeat)."""
        if lk.host == HOST and lk.pid and not pid_alive(lk.pid, lk.pid_start):
            return "dead"
        if lk.host == HOST and lk.pid == os.getpid() and lk.key not in _HELD:
            return "dead"
        if lk.age(now) > self.stale_after:
            return "stale"
        return "live"

    def _sweep(self, locks: builtins.list[LockInfo], me: str | None = None) -> builtins.list[LockInfo]:
        """Remove locks whose holder is provably gone (logged); return the others."""
        mine = _airflow_try(run_identity())
        kept = []
        for lk in locks:
            st = self.state(lk)
            other_try = _airflow_try(lk.run)
            earlier_try = (st == "stale" and mine is not None and other_try is not None
                           and other_try[0] == mine[0] and other_try[1] < mine[1])
            if lk.key != me and (st == "dead" or earlier_try):
                why = ("it belongs to an earlier try of this Airflow task" if st != "dead" else
                       "it was abandoned by this process" if lk.pid == os.getpid() else "its process is gone")
                log.warning("%s: removing lock %s: %s", self.storage.name, lk.describe(), why)
                self._remove(lk.key)
                continue
            kept.append(lk)
        return kept

    def _remove(self, key: str) -> None:
        try:
            self.storage.delete(key)
        except ObjectNotFound:
            pass

    def report(self) -> builtins.list[dict[str, Any]]:
        """Every lock with its state, for ``status`` and monitoring (stale ones logged as warnings)."""
        out = []
        for lk in self.list():
            st = self.state(lk)
            if st != "live":
                log.warning("%s: %s lock: %s (remove with `backupctl unlock --stale`)", self.storage.name, st, lk.describe())
            out.append({"key": printable(lk.key), "scope": printable(lk.scope), "exclusive": lk.exclusive,
                        "operation": lk.operation, "host": lk.host, "pid": lk.pid, "run": lk.run,
                        "created": printable(lk.created, 40),
                        "heartbeat_age_seconds": round(lk.age(), 1), "state": st})
        return out

    def unlock(self, *, everything: bool = False) -> builtins.list[LockInfo]:
        """Remove dead and stale locks (``everything``: every lock). Returns what was removed."""
        removed = []
        for lk in self.list():
            if everything or self.state(lk) != "live":
                log.warning("%s: removing lock %s", self.storage.name, lk.describe())
                self._remove(lk.key)
                removed.append(lk)
        return removed

    # ---- taking -------------------------------------------------------------------------------------
    def acquire(self, scope: str, *, exclusive: bool, operation: str, wait_seconds: float | None = None) -> HeldLock:
        wait = self.wait_seconds if wait_seconds is None else wait_seconds
        deadline = time.monotonic() + wait
        waited_for: LockInfo | None = None
        while True:
            blocking = [lk for lk in self._sweep(self.list()) if lk.conflicts(scope, exclusive)]
            if not blocking:
                held = HeldLock(self, scope, exclusive, operation)
                held.write()
                try:
                    blocking = [lk for lk in self._sweep(self.list(), held.key)
                                if lk.key != held.key and lk.conflicts(scope, exclusive)]
                except BaseException:
                    held.remove()  # never leave a lock behind that nobody holds
                    raise
                if not blocking:
                    held.start()
                    if waited_for is not None:
                        log.info("%s: got the %s lock after waiting for %s", self.storage.name, scope, waited_for.describe())
                    return held
                held.remove()
            if waited_for is None:
                waited_for = blocking[0]
                log.info("%s: waiting up to %.0fs for %s", self.storage.name, wait, waited_for.describe())
            left = deadline - time.monotonic()
            if left <= 0:
                lk = blocking[0]
                stale = self.state(lk) == "stale"
                raise LockedError(
                    f"{self.storage.name}: cannot take the {'exclusive' if exclusive else 'shared'} {scope} lock for "
                    f"{operation}: held by {lk.describe()}" + (" — STALE (no heartbeat)" if stale else ""),
                    hint=("if that run is really gone, remove its lock with `backupctl unlock --stale`" if stale else
                          f"wait for it to finish (waited {wait:.0f}s; locks.wait_seconds) and retry; `backupctl status` "
                          "lists the locks"))
            time.sleep(min(left, self.poll_seconds * (0.5 + random.random())))


class HeldLock:
    """A lock this process holds; a thread refreshes its heartbeat. Use as a context manager."""

    def __init__(self, locks: Locks, scope: str, exclusive: bool, operation: str) -> None:
        self.locks, self.scope, self.exclusive, self.operation = locks, scope, exclusive, operation
        self.created = _now().isoformat(timespec="milliseconds")
        self.key = ""
        self.lost: str | None = None
        self.unlocked = False  # True: the storage refused the lock write (read-only credentials)
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_ok = time.monotonic()
        self._storage = locks.storage  # the refresh thread's own instance (an SFTP session is not shareable)

    def _info(self, key: str) -> LockInfo:
        pid = os.getpid()
        return LockInfo(key, self.scope, self.exclusive, self.operation, HOST, pid, run_identity(), self.created,
                        _now().isoformat(timespec="milliseconds"), pid_start(pid))

    def write(self) -> None:
        key = f"{LOCKS}{uuid.uuid4().hex}.json"
        _HELD.add(key)
        try:
            self.locks.storage.put_bytes(key, self._info(key).to_json())
        except BaseException as exc:
            _HELD.discard(key)
            if not isinstance(exc, StorageError) or isinstance(exc, RefusedError | TransientStorageError) or self.exclusive:
                raise
            # read-only credentials: a reader proceeds without a lock (restic --no-lock); prune cannot see it
            log.warning("%s: cannot write a shared lock (%s); continuing without one", self.locks.storage.name, exc.message)
            self.unlocked = True
            return
        self.key = key

    def start(self) -> None:
        if self.unlocked:
            return
        self._last_ok = time.monotonic()
        self._storage = self.locks.storage.for_thread()
        self._thread = threading.Thread(target=self._refresh_loop, name=f"lock-refresh {self.scope}", daemon=True)
        self._thread.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.locks.refresh_seconds):
            try:
                self.refresh()
            except BackupError as exc:
                silent = time.monotonic() - self._last_ok
                log.warning("%s: refreshing lock %s failed (%s); %.0fs without a heartbeat", self.locks.storage.name,
                            self.key, exc.message, silent)
                if silent > self.locks.stale_after and self.lost is None:
                    self.lost = f"no heartbeat for {silent:.0f}s (storage unreachable)"

    def refresh(self) -> None:
        """Write a new lock object with a fresh heartbeat, then remove the old one (objects are immutable).
        Network I/O happens outside the mutex, so a hung connection never blocks :meth:`check` or release."""
        cur = self.key
        if self.lost or not cur or self._stop.is_set():
            return
        st = self._storage
        if not st.exists(cur):
            if self.key == cur:
                self.lost = f"lock {cur} was removed by someone else (backupctl unlock?)"
                log.error("%s: %s", st.name, self.lost)
            return
        new = f"{LOCKS}{uuid.uuid4().hex}.json"
        _HELD.add(new)
        try:
            st.put_bytes(new, self._info(new).to_json())
        except BaseException:
            _HELD.discard(new)
            raise
        with self._mutex:
            released = self.key != cur
            if not released:
                self.key = new
        old = new if released else cur  # released meanwhile: the new object is not wanted either
        _HELD.discard(old)
        try:
            st.delete(old)
        except BackupError as exc:  # swept later as abandoned by this process
            log.warning("%s: could not remove the lock object %s: %s", st.name, old, exc.message)
        if not released:
            self._last_ok = time.monotonic()

    def check(self) -> None:
        """Raise :class:`LockedError` unless this lock still exists (call right before committing/deleting)."""
        if self.unlocked:
            return
        for _ in range(3):
            key = self.key
            if self.lost or not key:
                break
            try:
                present = self.locks.storage.exists(key)
            except BackupError as exc:
                raise LockedError(f"{self.locks.storage.name}: cannot confirm the {self.scope} lock before "
                                  f"committing ({exc.message}); aborting", hint="re-run when the storage is back") from None
            if present:
                if self.lost is None:
                    return
                break
            if self.key == key:  # not replaced by a refresh meanwhile: really gone
                self.lost = f"lock {key} was removed by someone else (backupctl unlock?)"
                break
        raise LockedError(f"{self.locks.storage.name}: the {self.scope} lock of this {self.operation} is lost: "
                          f"{self.lost or 'released'}; aborting before committing anything",
                          hint="re-run: a new run takes a new lock and cleans up what this one left")

    def remove(self) -> None:
        if self.key:
            _HELD.discard(self.key)
            try:
                self.locks._remove(self.key)
            except BackupError as exc:  # a stale lock of a finished run: swept or `unlock --stale` removes it later
                log.warning("%s: could not remove lock %s: %s", self.locks.storage.name, self.key, exc.message)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(30)
        with self._mutex:
            self.remove()
            self.key = ""
        if self._storage is not self.locks.storage:
            close = getattr(self._storage.unwrap() if hasattr(self._storage, "unwrap") else self._storage, "close", None)
            if close is not None and (self._thread is None or not self._thread.is_alive()):
                close()

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
