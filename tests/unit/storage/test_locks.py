"""Repository locks (restic-style lock objects): conflicts, waiting, heartbeat, stale and dead holders, unlock."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from backups.errors import LockedError
from backups.repository import Repository, repo_scope, snapshot_scope
from backups.repository.locks import LOCKS, Locks
from backups.storage import LocalStorage, MemoryStorage, ReadOnlyStorage


def _locks(storage, **kw) -> Locks:
    kw.setdefault("wait_seconds", 0.0)
    kw.setdefault("poll_seconds", 0.05)
    return Locks(storage, **kw)


def _foreign(storage, *, scope="repo", exclusive=True, host="other-host", pid=4242, age=0.0, run=None):
    from datetime import UTC, datetime, timedelta

    when = (datetime.now(UTC) - timedelta(seconds=age)).isoformat()
    doc = {"lock_format": 1, "scope": scope, "exclusive": exclusive, "operation": "prune", "host": host, "pid": pid,
           "run": run, "created": when, "heartbeat": when}
    key = f"{LOCKS}{abs(hash((scope, host, pid, age))):x}.json"
    storage.put_bytes(key, json.dumps(doc).encode())
    return key


def test_shared_locks_coexist_exclusive_conflicts_and_names_the_holder():
    st = MemoryStorage()
    locks = _locks(st)
    a = locks.acquire(repo_scope(), exclusive=False, operation="verify")
    b = locks.acquire(repo_scope(), exclusive=False, operation="restore")
    with pytest.raises(LockedError) as exc:
        locks.acquire(repo_scope(), exclusive=True, operation="prune")
    assert exc.value.exit_code == 9
    assert "shared repo lock of" in exc.value.message and "pid" in exc.value.message and "host" in exc.value.message
    a.release()
    b.release()
    with locks.acquire(repo_scope(), exclusive=True, operation="prune"):
        assert len(locks.list()) == 1
    assert locks.list() == []


def test_snapshot_scopes_nest_and_sources_do_not_block_each_other():
    locks = _locks(MemoryStorage())
    with locks.acquire(snapshot_scope("daily-1", "app_db"), exclusive=True, operation="extract"):
        with locks.acquire(snapshot_scope("daily-1", "app_files"), exclusive=True, operation="extract"):
            with pytest.raises(LockedError):  # the id lock (commit, CLI backup) covers every source of the id
                locks.acquire(snapshot_scope("daily-1"), exclusive=True, operation="commit")
            with locks.acquire(snapshot_scope("daily-2"), exclusive=True, operation="backup"):
                pass
        with pytest.raises(LockedError):
            locks.acquire(snapshot_scope("daily-1", "app_db"), exclusive=True, operation="extract")


def test_waits_for_the_holder_then_gets_the_lock():
    locks = _locks(MemoryStorage(), wait_seconds=5.0)
    held = locks.acquire(repo_scope(), exclusive=True, operation="prune")
    threading.Timer(0.3, held.release).start()
    t0 = time.monotonic()
    with locks.acquire(repo_scope(), exclusive=False, operation="verify"):
        assert 0.2 < time.monotonic() - t0 < 4


def test_dead_process_of_this_host_is_removed_automatically(tmp_path, caplog):
    st = LocalStorage(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid that no longer runs
    from backups.repository.locks import HOST

    _foreign(st, host=HOST, pid=proc.pid)
    with _locks(st).acquire(repo_scope(), exclusive=True, operation="prune"):
        pass
    assert "its process is gone" in caplog.text
    assert list(st.list(LOCKS)) == []


def test_stale_lock_of_another_host_blocks_is_reported_and_unlock_removes_it(tmp_path):
    st = LocalStorage(tmp_path)
    _foreign(st, age=3600)  # heartbeat an hour old, another host: never broken silently
    locks = _locks(st, stale_after=1800)
    with pytest.raises(LockedError, match="STALE") as exc:
        locks.acquire(repo_scope(), exclusive=False, operation="backup")
    assert "backupctl unlock --stale" in exc.value.hint
    assert [r["state"] for r in locks.report()] == ["stale"]
    _foreign(st, host="third-host", pid=7, age=5)  # live: unlock --stale keeps it
    removed = locks.unlock()
    assert [lk.host for lk in removed] == ["other-host"]
    assert [lk.host for lk in locks.list()] == ["third-host"]
    assert [lk.host for lk in locks.unlock(everything=True)] == ["third-host"]


def test_heartbeat_refreshes_and_a_removed_lock_aborts_the_holder():
    st = MemoryStorage()
    locks = _locks(st, refresh_seconds=0.1, stale_after=5)
    held = locks.acquire(repo_scope(), exclusive=True, operation="prune")
    first = held.key
    time.sleep(0.35)
    assert held.key != first and [lk.key for lk in locks.list()] == [held.key]  # new object, old removed
    held.check()
    locks.unlock(everything=True)  # an operator removed it (or a stale-lock cleanup did)
    with pytest.raises(LockedError, match="lost"):
        held.check()
    held.release()


def test_lost_heartbeat_aborts_before_commit():
    class Flaky(MemoryStorage):
        down = False

        def open_write(self, key):
            if self.down:
                from backups.errors import TransientStorageError

                raise TransientStorageError("connection cut")
            return super().open_write(key)

        def stat(self, key):
            if self.down:
                from backups.errors import TransientStorageError

                raise TransientStorageError("connection cut")
            return super().stat(key)

    st = Flaky()
    held = _locks(st, refresh_seconds=0.05, stale_after=0.2).acquire(repo_scope(), exclusive=True, operation="prune")
    st.down = True
    time.sleep(0.5)
    st.down = False  # the connection is back, but the lock went unrefreshed past stale_after: another run may
    with pytest.raises(LockedError, match="no heartbeat"):  # have removed it as stale; never commit on it
        held.check()
    held.release()


def test_read_only_storage_may_take_locks_but_never_write_data(tmp_path):
    st = ReadOnlyStorage(LocalStorage(tmp_path))
    with Repository(st).lock(repo_scope(), exclusive=False, operation="verify"):
        assert len(list(st.list(LOCKS))) == 1
    assert list(st.list(LOCKS)) == []


def test_a_hostile_lock_cannot_drive_the_terminal():
    """A lock object written by someone else names its host, operation and run; they are printed by `status`,
    `unlock` and every "locked" message. Before: an escape sequence there went to the terminal as it was."""
    from backups.repository.locks import LockInfo

    raw = json.dumps({"lock_format": 1, "scope": "repo", "exclusive": True, "operation": "backup\x1b[2J",
                      "host": "evil\x1b]0;pwned\x07\u202ehost" + "h" * 1000, "pid": 1, "pid_start": None,
                      "run": "dag/\x1b[1;1HBACKUP OK", "created": "2020-01-01T00:00:00+00:00",
                      "heartbeat": "2020-01-01T00:00:00+00:00"}).encode()
    lk = LockInfo.parse("locks/x.json", raw)
    for text in (lk.host, lk.operation, lk.run, lk.describe()):
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text, text
    assert len(lk.host) <= 255


def test_the_lock_report_of_a_hostile_lock_is_printable(tmp_path):
    """``backupctl status`` prints each lock's scope and creation time from the report."""
    from backups.repository.locks import Locks
    from backups.storage import LocalStorage

    storage = LocalStorage(tmp_path / "repo")
    storage.put_bytes(f"{LOCKS}hostile.json", json.dumps({
        "lock_format": 1, "scope": "repo\x1b[5m", "exclusive": False, "operation": "backup", "host": "h", "pid": 1,
        "pid_start": None, "run": None, "created": "2020-01-01T00:00:00+00:00\x1b[2J",
        "heartbeat": "2020-01-01T00:00:00+00:00"}).encode())
    [entry] = Locks(storage).report()
    assert not any("\x1b" in v for v in entry.values() if isinstance(v, str)), entry
