"""Transitional aliases for ``restore_dag`` until it moves to ``backups.commands.restore`` (issue 9, helper A):
the backup steps live in :mod:`backups.commands.backup`, the restored-data checks in :mod:`backups.commands.validate`.
Delete this module once nothing imports it."""

from ..commands.backup import MANUAL_TIER, resolver_for
from ..commands.base import mb as _mb
from ..commands.validate import DB_KINDS
from ..commands.validate import compact_results as _compact
from ..commands.validate import validate_restored as _validate_restored

__all__ = ["DB_KINDS", "MANUAL_TIER", "_compact", "_mb", "_validate_restored", "resolver_for"]
