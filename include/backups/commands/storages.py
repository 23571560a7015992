"""Opening the storages a command works on: the one unreachable-storage rule lives in
:mod:`backups.storage.reach` (both doors, every operation); this module keeps the commands' import path."""

from __future__ import annotations

from ..storage.reach import each_storage, first_serving, open_checked, open_each

__all__ = ["each_storage", "first_serving", "open_checked", "open_each"]
