"""Opening the storages a command works on, with one policy for an unreachable one (both doors alike).

A storage named by the user (``--storage``) that does not answer is an error. When a command runs over every
storage, an unreachable one is recorded (it fails the result: exit code / red task) and the others go on —
except for a key problem (:class:`~backups.errors.EncryptionError`), which is raised at once: it is the thing
to fix, whatever else fails.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from ..errors import BackupError, EncryptionError
from ..storage import Storage, open_storage

log = logging.getLogger("backups.commands")


def open_checked(cfg: Any, name: str, resolver: Any = None, *, read_only: bool = True) -> Storage:
    """The storage ``name``, checked reachable (raises its StorageError/EncryptionError otherwise)."""
    storage = open_storage(cfg, name, resolver, read_only=read_only)
    storage.check()
    return storage


def each_storage(cfg: Any, names: list[str] | None, resolver: Any, unreachable: dict[str, str], *,
                 read_only: bool = True) -> Iterator[Storage]:
    """The reachable storages among ``names`` (default: every configured one, config order). With ``names``
    given, an unreachable one raises; otherwise it is added to ``unreachable`` (name → message) and skipped."""
    explicit = names is not None
    for name in names if explicit else list(cfg.storages):
        try:
            storage = open_checked(cfg, name, resolver, read_only=read_only)
        except BackupError as exc:
            if explicit or isinstance(exc, EncryptionError):
                raise
            log.warning("storage %s unreachable: %s", name, exc.message)
            unreachable[name] = exc.message
            continue
        yield storage
