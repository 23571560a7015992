"""One exception hierarchy for the whole library; each class carries the CLI exit code it maps to.

Every message says what failed, on which object, and what the user can do about it. Messages never contain
secrets: callers pass names (connection ids, storage names), never credentials.
"""

from __future__ import annotations

import re


class BackupError(Exception):
    """Base class. ``exit_code`` is the documented, stable CLI exit status."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n  fix: {hint}")


class ConfigError(BackupError):
    """The configuration file or a command-line argument is invalid (exit 2)."""

    exit_code = 2


class NotFoundError(BackupError):
    """A snapshot, source, tier or storage named by the user does not exist (exit 3)."""

    exit_code = 3


class IntegrityError(BackupError):
    """Stored data does not match what the manifest recorded, or a manifest is corrupt (exit 4)."""

    exit_code = 4


class StorageError(BackupError):
    """A storage could not be reached or an operation on it failed (exit 5)."""

    exit_code = 5


class ObjectNotFound(StorageError):
    """One object key is absent from a storage."""

    exit_code = 3


class TransientStorageError(StorageError):
    """A storage failure worth retrying (timeouts, throttling, 5xx)."""


class SourceError(BackupError):
    """A source could not be read completely (unreadable files, a failing command or dump) (exit 6)."""

    exit_code = 6


class RefusedError(BackupError):
    """The operation was refused to protect data: a non-empty target, an unsafe archive member (exit 7)."""

    exit_code = 7


class ObjectExistsError(RefusedError):
    """Creating an object whose key already exists with other bytes (objects are never overwritten) (exit 7)."""


class EncryptionError(BackupError):
    """A key is missing or wrong, or authenticated decryption failed (exit 8)."""

    exit_code = 8


class LockedError(BackupError):
    """The repository (or the snapshot id) is locked by another run; waited and gave up (exit 9).

    Retryable: in Airflow the task fails and its retry tries again. The message names the holder (host, pid,
    run, age); a lock whose holder is gone is removed automatically (same host) or by ``backupctl unlock``."""

    exit_code = 9


class SystemStateError(BackupError):
    """The system is not ready for a backup (a source unreadable, a storage unreachable or full) (exit 6).

    ``retryable`` tells whether waiting could fix it (a restarting server) or not (a missing file, a full disk):
    the DAG retries the former and fails the latter at once. Exit 6 when a source is the problem, 5 when only
    storages are (unreachable, or without room)."""

    exit_code = 6

    def __init__(self, message: str, *, hint: str | None = None, retryable: bool = False,
                 storage_only: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.retryable = retryable
        self.exit_code = StorageError.exit_code if storage_only else SourceError.exit_code


class ValidationFailedError(IntegrityError):
    """Restored data failed its checks (Great Expectations); ``result`` holds the outcome as a dict (exit 4)."""

    def __init__(self, message: str, *, hint: str | None = None, result: dict | None = None) -> None:
        super().__init__(message, hint=hint)
        self.result = dict(result or {})


class DrillFailedError(BackupError):
    """A disaster-recovery drill ran and failed: a check failed or an RTO/RPO target was missed (exit 10).
    The message lists the findings; the drill's report (Markdown/HTML/JSON) holds the details."""

    exit_code = 10


#: the exit code when stdout's reader left mid-output (128 + SIGPIPE, as the shell reports a process killed by it)
BROKEN_PIPE = 141

EXIT_CODES = {
    0: "success",
    1: "unexpected internal error (a bug: please report it with the log)",
    2: "invalid configuration or arguments (also an ambiguous snapshot-id prefix)",
    3: "snapshot, tier, source, storage or object not found",
    4: "integrity failure: stored data or a manifest does not match its checksums",
    5: "storage unreachable or failing",
    6: "a source could not be read (unreadable files, failing command or dump)",
    7: "refused to protect data (non-empty restore target, / or a repository as target, tables without their "
       "foreign-key dependencies, unsafe archive member, an object that exists)",
    8: "encryption key missing or wrong",
    9: "locked: another run holds a conflicting lock on the repository or snapshot (retry later, or `backupctl unlock`)",
    10: "disaster-recovery drill failed: a check failed or an RTO/RPO target was missed (see the drill report)",
    130: "interrupted",
    141: "the reader of the output left before it was complete (`| head`): the command stopped there, its result unknown",
}

#: ``backupctl status --check`` only: Nagios plugin codes (they replace the table above for that command, so
#: cron jobs and monitors — Nagios, Icinga, Zabbix, Sensu — read them without a wrapper)
CHECK_EXIT_CODES = {
    0: "OK: every scheduled tier within its RPO, every storage reachable and writable, no open problem",
    1: "WARNING: a tier past its RPO, or another warning (verification or drill overdue, anomaly, stale lock, low space)",
    2: "CRITICAL: a tier past twice its RPO or without any snapshot, a storage unreachable or read-only, or another critical problem",
    3: "UNKNOWN: the status could not be built (invalid configuration, internal error)",
}

def did_you_mean(word: str | None, choices: object) -> str:
    """``did you mean 'daily'? `` when ``word`` is close to one of ``choices`` (difflib), else ``""`` — the start of
    a hint for a misspelt tier, source, storage or snapshot id."""
    import difflib

    close = difflib.get_close_matches(str(word or ""), [str(c) for c in choices], n=3, cutoff=0.6)  # type: ignore[attr-defined]
    return f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""


def check_name(kind: str, name: str | None, choices: object, option: str) -> None:
    """NotFoundError (exit 3) when ``name`` (given with ``option``) is not one of ``choices``, with a suggestion."""
    known = sorted(str(c) for c in choices)  # type: ignore[attr-defined]
    if name is not None and name not in known:
        raise NotFoundError(f"{option}: no {kind} named {name!r}",
                            hint=f"{did_you_mean(name, known)}{kind}s: {', '.join(known) or 'none configured'}")


#: control characters, and the invisible / bidirectional formatting ones that reorder what a terminal shows
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


#: the same, but tabs and line feeds kept (free text such as a snapshot's comment)
_UNPRINTABLE_IN_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def printable(value: object, limit: int = 255, *, lines: bool = False) -> str:
    """``value`` as text safe to print on a terminal (it came from a repository anyone with write access to the
    storage can write): no control or bidirectional formatting characters (``lines``: tabs and line feeds are
    kept), at most ``limit`` characters."""
    return (_UNPRINTABLE_IN_TEXT if lines else _UNPRINTABLE).sub("?", str(value))[:limit]
