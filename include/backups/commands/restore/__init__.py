"""The restore command: one implementation for ``backupctl restore`` and the ``restore_snapshot`` DAG.

A package by concern (this module re-exports the public names, so ``from backups.commands.restore import …``
keeps working): :mod:`.request` (the request, the target guard, :func:`locate`), :mod:`.plan` (the table plan,
the prerequisites, :func:`check_before_approval`, the archive thaw), :mod:`.run` (the restore and its
verification), :mod:`.report` (the report and :class:`RunInfo`). The target's claim (one restore per directory)
is :mod:`backups.commands.target_lock`.

Steps, each taking typed inputs and returning a typed, JSON-able result (``to_dict()``); errors are only those of
:mod:`backups.errors`:

1. :func:`check_request` — the request (snapshot, target, sources, …) against the configuration.
2. :func:`locate` — the storage to read from: the named one, or the first (config order) that is reachable and
   holds the snapshot with its whole chain; what a thaw of an archive storage needs (objects, bytes).
3. :func:`check_before_approval` — everything knowable before a person approves: :func:`check_prerequisites`
   (the target: not ``/``, not in or around a local repository, not claimed by another run, a directory, empty
   unless ``force``, writable by this user, enough free space; the PostgreSQL target database reachable), the
   chosen tables against the snapshot's list and, on a storage readable now, the table plan (5).
4. :func:`wait_for_archive` — archive storages: request the S3 restores and wait (the DAG uses its deferrable
   sensor instead).
5. :func:`plan_tables` — a table-level restore: the foreign keys read from the snapshot, the referenced tables
   added (``include_dependencies``) or the restore refused before anything is written; a PostgreSQL target's
   chosen tables that hold rows refused unless ``force``.
   :func:`run_restore` — :func:`backups.engine.restorer.restore` (every write goes through it: SHA-256 checked,
   a source appears only when complete) under the repository's shared lock.
6. :func:`verify_restore` — under the same shared lock (the CLI holds one lock over 5 and 6; the DAG's separate
   task takes its own and names a snapshot pruned since the restore), the restored tree checked against the
   snapshot's index: every selected file present, a regular file of the right size, no stray file in a ``files``
   source (a stat walk: each file's SHA-256 was already checked on the bytes written); with ``reread``
   (``--reread``) every file also read back and re-hashed. Then the Great Expectations suite on restored
   databases (GX is imported only here, and only when ``validate`` is true and a database was restored).
7. :func:`build_report` / :func:`write_report` — ``RESTORE_REPORT.json`` and ``.md`` in the target directory; the
   same content from both doors except who asked, the approval and timings (:class:`RunInfo`).

:func:`restore_snapshot` runs 1-7 in order (the CLI door). The DAG runs them as separate tasks, passing the
``to_dict()`` results through XCom and rebuilding them with ``from_dict``.
"""

from __future__ import annotations

import logging
import shutil  # noqa: F401  (tests patch shutil.disk_usage through this package)
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...config import Config
from .plan import (
    ArchiveWait,
    Prerequisites,
    TablePlan,
    check_before_approval,
    check_prerequisites,
    check_writable,
    plan_tables,
    wait_for_archive,
)
from .report import RUN_SPECIFIC, RestoreReport, RunInfo, approval_from_hitl, build_report, cli_run_info, write_report
from .request import (
    REPORT_NAME,
    Location,
    RestoreRequest,
    check_request,
    guard_target,
    locate,
    sharing_storages,
    target_state,
)
from .run import (
    CHECKED_WHILE_WRITTEN,
    REREAD,
    RestoredSource,
    RestoreResult,
    Verification,
    hash_check,
    include_selector,
    regular_files,
    run_restore,
    sha256_file,
    shared_lock,
    snapshot_still_there,
    verify_restore,
    walk_tree,
)

if TYPE_CHECKING:
    from ...storage import Resolver

log = logging.getLogger("backups.commands.restore")

# ------------------------------------------------------------------------------------------------ all steps
@dataclass
class RestoreOutcome:
    """Everything one restore produced (the CLI prints it; ``--json`` prints ``to_dict()``)."""

    location: Location
    restored: RestoreResult
    verified: Verification
    report: RestoreReport
    report_paths: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"location": self.location.to_dict(), "restored": self.restored.to_dict(),
                "verified": self.verified.to_dict(), "report": self.report_paths}


def restore_snapshot(cfg: Config, req: RestoreRequest, resolver: Resolver | None = None, *, pg_dsn: str | None = None,
                     validate: bool = True, poll_seconds: float = 60.0, tty: bool | None = None,
                     thaw_timeout: float | None = None) -> RestoreOutcome:
    """``backupctl restore``: the procedure :data:`~.steps.RESTORE` (the DAG's steps) in this process — locate and
    every check before the approval, no gate (the CLI asks nothing), the thaw polled, the target claimed, the table
    plan, the restore and its verification under one shared repository lock (a prune waits until the restore is
    verified), the report. Raises the first step's BackupError; the report is written only after a verified
    restore; the target's claim is released whatever happened."""
    from ..procedure import RunContext, run
    from ..target_lock import release
    from .steps import RESTORE

    info = cli_run_info()
    req = check_request(cfg, req)
    ctx = RunContext(cfg, resolver, dag_id="backupctl", run_id=info.run_id,
                     params={"request": req, "pg_dsn": pg_dsn, "validate": validate, "poll_seconds": poll_seconds,
                             "thaw_timeout": thaw_timeout, "tty": tty},
                     state={"run": info, "t0": time.monotonic()})
    try:  # one opened storage per name for the whole run; the shared lock held from the restore to the report
        with ExitStack() as locks, sharing_storages(ctx.state.setdefault("storages", {})):
            ctx.state["locks"] = locks
            out = run(RESTORE, ctx)
    finally:
        release(req.target, info.run_id)
    r = out.results
    return RestoreOutcome(location=r["locate"], restored=r["restore"], verified=r["verify_restored"],
                          report=r["report"], report_paths=ctx.state["report_paths"])


__all__ = ["ArchiveWait", "Location", "Prerequisites", "REPORT_NAME", "RUN_SPECIFIC", "RestoreOutcome",
           "RestoreReport", "RestoreRequest", "RestoreResult", "RestoredSource", "RunInfo", "Verification",
           "CHECKED_WHILE_WRITTEN", "REREAD", "approval_from_hitl", "build_report", "check_before_approval",
           "check_prerequisites", "check_writable", "check_request", "cli_run_info",
           "guard_target", "hash_check", "include_selector", "locate", "plan_tables", "TablePlan",
           "regular_files", "restore_snapshot", "run_restore", "sha256_file", "shared_lock", "snapshot_still_there", "target_state",
           "verify_restore", "wait_for_archive", "walk_tree", "write_report"]
