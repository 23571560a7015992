"""Scratch space on a worker: one directory per run, a private one per task try, and the engine's dump staging
pointed into it."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", part)[:120] or "_"


def scratch_root() -> Path:
    """Where tasks keep temporary files on a worker: ``$BACKUP_STAGING`` or the system temp dir."""
    return Path(os.environ.get("BACKUP_STAGING") or tempfile.gettempdir()) / "fmr-backups"


def run_scratch(dag_id: str, run_id: str) -> Path:
    """The scratch directory of one run on this worker (its tasks' private dirs live under it)."""
    return scratch_root() / _safe(dag_id) / _safe(run_id)


@contextlib.contextmanager
def task_scratch(dag_id: str, run_id: str, label: str) -> Iterator[Path]:
    """A private temporary directory for one task try, removed when the task ends (even on failure)."""
    base = run_scratch(dag_id, run_id)
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{_safe(label)}-", dir=base) as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def staging_env(path: Path) -> Iterator[None]:
    """Point the engine's dump staging (``BACKUP_STAGING``) into the task's scratch directory."""
    old = os.environ.get("BACKUP_STAGING")
    os.environ["BACKUP_STAGING"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("BACKUP_STAGING", None)
        else:
            os.environ["BACKUP_STAGING"] = old
