"""The one unreachable-storage rule, for every operation and both doors (issue 17).

Each storage is opened and checked on its own (:func:`open_each`); one that does not answer is a **named
problem** (its name and message, logged as a warning), never an abort of the others — unless the operation needs
that very storage: one the user named (``--storage``), or a backup's primary. A key problem
(:class:`~backups.errors.EncryptionError`) is raised at once: it is the thing to fix, whatever else fails.

* :func:`each_storage` — the reachable ones among ``names`` (default: every storage, config order); verify,
  prune, unlock;
* :func:`first_serving` — the first reachable one (config order) that can serve a request (``list``, ``show``,
  ``restore``'s snapshot with its whole chain); all the reasons when none can;
* :func:`open_each` — the raw walk (name, storage or the error), for a caller with its own verdict (the
  backup's system check: primary down = no backup, a copy down = back-filled later).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar

from ..errors import BackupError, EncryptionError, StorageError
from . import Storage, open_storage

if TYPE_CHECKING:
    from ..config import Config
    from . import Resolver

log = logging.getLogger("backups.storage")
T = TypeVar("T")

__all__ = ["each_storage", "first_serving", "open_checked", "open_each"]


def open_checked(cfg: Config, name: str, resolver: Resolver | None = None, *, read_only: bool = True) -> Storage:
    """The storage ``name``, checked reachable (raises its StorageError/EncryptionError otherwise)."""
    storage = open_storage(cfg, name, resolver, read_only=read_only)
    storage.check()
    return storage


def open_each(cfg: Config, names: Iterable[str] | None, resolver: Resolver | None = None, *,
              read_only: bool = True) -> Iterator[tuple[str, Storage | None, BackupError | None]]:
    """``(name, storage, None)`` for each reachable storage among ``names`` (default: every configured one, config
    order), ``(name, None, error)`` for one that is not (logged as a warning, naming it)."""
    for name in list(cfg.storages) if names is None else names:
        try:
            yield name, open_checked(cfg, name, resolver, read_only=read_only), None
        except BackupError as exc:
            log.warning("storage %s unreachable: %s", name, exc.message)
            yield name, None, exc


def each_storage(cfg: Config, names: list[str] | None, resolver: Resolver | None, unreachable: dict[str, str], *,
                 read_only: bool = True, required: Iterable[str] | None = None) -> Iterator[Storage]:
    """The reachable storages among ``names`` (default: every configured one). An unreachable one is added to
    ``unreachable`` (name → message) and skipped — unless it is ``required`` (default: ``names`` when given,
    i.e. storages the user named) or its error is a key problem: then it is raised."""
    needed = set(names or ()) if required is None else set(required)
    for name, storage, exc in open_each(cfg, names, resolver, read_only=read_only):
        if exc is not None:
            if name in needed or isinstance(exc, EncryptionError):
                raise exc
            unreachable[name] = exc.message
            continue
        assert storage is not None
        yield storage


def first_serving(cfg: Config, names: list[str] | None, resolver: Resolver | None, serve: Callable[[Storage], T], *,
                  read_only: bool = True, what: str = "be read",
                  hint: str = "check the storages section and the network") -> tuple[Storage, T, dict[str, str]]:
    """``(storage, serve(storage), {skipped storage: why})`` for the first storage among ``names`` (default: every
    one, config order) that is reachable and whose ``serve`` raises no BackupError. A single named storage that
    cannot serve raises its own error; when none can, one error names every storage and its reason (an
    EncryptionError when a key problem is among them, else the common kind, else StorageError)."""
    skipped: dict[str, str] = {}
    errors: list[BackupError] = []
    for name, storage, exc in open_each(cfg, names, resolver, read_only=read_only):
        if storage is not None:
            try:
                return storage, serve(storage), skipped
            except BackupError as served:
                exc = served
                log.warning("storage %s cannot %s: %s", name, what, served.message)
        assert exc is not None
        if names is not None and len(names) == 1:
            raise exc
        skipped[name] = exc.message
        errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    kinds = {type(e) for e in errors}
    kind: type[BackupError] = (EncryptionError if EncryptionError in kinds else kinds.pop() if len(kinds) == 1
                               else StorageError)
    if kind is EncryptionError:
        hint = "set the encryption key the repository was written with (see the message above)"
    raise kind(f"no storage can {what}:\n  " + "\n  ".join(f"{n}: {m}" for n, m in skipped.items()), hint=hint)
