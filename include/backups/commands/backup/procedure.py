"""The backup, declared once (:data:`BACKUP`): the tier DAGs and backup_manual build one task per step
(:mod:`backups.orchestration.backup_dags`), ``backupctl backup`` runs the same steps in one process (:func:`run_backup`)."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import Config
from ...errors import ConfigError
from ...storage import Resolver, open_storage
from ..procedure import CLEANUP, Procedure, RunContext, Skip, Step
from ..procedure import run as run_procedure
from ..validate import DB_KINDS
from .pre_backup import Selection, check_system_state, plan_run, start_message
from .report import StepResults, cleanup, complete_run
from .results import (
    CleanupResult,
    CommitResult,
    CompletionSummary,
    ExtractResult,
    IntegrityResult,
    PreparedRun,
    RestoreTestResult,
    SystemState,
    UploadResult,
    ValidationResult,
)
from .scratch import task_scratch
from .transfer import commit_snapshot, extract_source, replicate_to
from .verify import check_integrity, test_restore, validate_data

if TYPE_CHECKING:
    from ...engine.backup_pipeline import Plan

log = logging.getLogger("backups.commands.backup")

# The backup, declared once: the tier DAGs and backup_manual build their tasks from this list
# (orchestration/backup_dags.py), `backupctl backup` runs it in one process (run_backup below). Each function below is
# the step's body for both doors: (run context, results of the earlier steps, fan-out item) -> typed result.
def _plan_of(r: dict[str, Any]) -> Plan:
    return r["prepare_environment"].plan


def _in_run(item: str, chosen: list[str], what: str) -> None:
    if item not in chosen:
        raise Skip(f"{what} {item} is not part of this run")


def _run_check_system_state(ctx: RunContext, r: dict[str, Any], _: Any) -> SystemState:
    return check_system_state(ctx.cfg, ctx.params["selection"], ctx.resolver)


def _run_plan(ctx: RunContext, r: dict[str, Any], _: Any) -> PreparedRun:
    if "run_lock" in ctx.state:  # the CLI: held until the commit (see run_backup)
        ctx.state["held"].enter_context(ctx.state["run_lock"]())
    prep = plan_run(ctx.cfg, ctx.params["selection"], ctx.params["logical_date"],
                    r["check_system_state"], ctx.resolver, now=ctx.params.get("now"))
    if "make_progress" in ctx.state:  # the CLI: one bar for every extraction
        ctx.state["progress"] = ctx.state["make_progress"](prep.plan.estimated_bytes)
    return prep


def _run_notify_start(ctx: RunContext, r: dict[str, Any], _: Any) -> str:
    msg = start_message(_plan_of(r))
    log.info("%s", msg)
    return msg


def _run_extract(ctx: RunContext, r: dict[str, Any], source: str) -> ExtractResult:
    prep = r["prepare_environment"]
    _in_run(source, prep.plan.sources, "source")
    scratch = ctx.state.get("scratch")  # the DAG: the task's private dir; the CLI: None (one process, one env)
    return extract_source(ctx.cfg, prep.plan, source, scratch, ctx.resolver, prep.estimates.get(source),
                          checksum=bool(ctx.params.get("checksum")), progress=ctx.state.get("progress"))


def _run_commit(ctx: RunContext, r: dict[str, Any], _: Any) -> CommitResult:
    out = commit_snapshot(ctx.cfg, _plan_of(r), ctx.resolver)
    if "held" in ctx.state:
        ctx.state["held"].close()  # the CLI's run lock: the rest only reads what is committed
    return out


def _run_replicate(ctx: RunContext, r: dict[str, Any], storage: str) -> UploadResult:
    _in_run(storage, _plan_of(r).storages, "storage")
    return replicate_to(ctx.cfg, _plan_of(r), storage, ctx.resolver)


def _run_check_integrity(ctx: RunContext, r: dict[str, Any], storage: str) -> IntegrityResult:
    _in_run(storage, _plan_of(r).storages, "storage")
    return check_integrity(ctx.cfg, _plan_of(r), storage, ctx.resolver)


def _run_test_restore(ctx: RunContext, r: dict[str, Any], _: Any) -> RestoreTestResult:
    base = ctx.state.get("scratch_base")  # the CLI: its own temporary directory, gone when the run ends
    with (tempfile.TemporaryDirectory(prefix="restore-", dir=base) if base else task_scratch(ctx.dag_id, ctx.run_id, "restore")) as scratch:
        return test_restore(ctx.cfg, _plan_of(r), Path(scratch), ctx.resolver, validate=ctx.params.get("validate", True))


def _run_validate_data(ctx: RunContext, r: dict[str, Any], _: Any) -> ValidationResult:
    return validate_data(ctx.cfg, _plan_of(r), r["test_restore"])


def _results(r: dict[str, Any], name: str) -> list[Any]:
    """A fan-out step's results in item order (``None`` for skipped items), as the DAG's XCom pull gives them."""
    return list((r.get(name) or {}).values())


def _run_notify_completion(ctx: RunContext, r: dict[str, Any], _: Any) -> CompletionSummary:
    steps = StepResults(committed=r["commit"], integrity=[i for i in _results(r, "check_integrity") if i],
                        validation=r["validate_data"], restore_test=r["test_restore"],
                        extracts=_results(r, "extract_data") + _results(r, "extract_config"),
                        uploads=_results(r, "upload"))
    return complete_run(ctx.cfg, _plan_of(r), steps,
                        run_seconds=ctx.state.get("run_seconds") or _since(ctx.state.get("started")),
                        dag_id=ctx.dag_id, run_id=ctx.run_id, manual=ctx.params.get("manual"), resolver=ctx.resolver)


def _since(started: datetime | None) -> float | None:
    from datetime import UTC

    return round((datetime.now(UTC) - started).total_seconds(), 3) if started else None


def _run_cleanup(ctx: RunContext, r: dict[str, Any], _: Any) -> CleanupResult:
    prep = r.get("prepare_environment")
    return cleanup(ctx.cfg, prep.plan if prep else None, ctx.dag_id, ctx.run_id, ctx.resolver)


def _data_sources(ctx: RunContext, r: dict[str, Any]) -> list[str]:
    return list(r["prepare_environment"].data_sources)


def _file_sources(ctx: RunContext, r: dict[str, Any]) -> list[str]:
    return list(r["prepare_environment"].file_sources)


def _storages(ctx: RunContext, r: dict[str, Any]) -> list[str]:
    return list(_plan_of(r).storages)


#: the backup procedure: pre-backup checks → extraction → upload → verification (integrity on every storage, test
#: restore with Great Expectations) → completion (summary, result document) → cleanup. ``group.name`` is the DAG
#: task id; the DAG maps the fan-out steps over the candidates of the tier (every source/storage for backup_manual)
BACKUP = Procedure("backup", (
    Step("check_system_state", "pre_backup", _run_check_system_state, result=SystemState,
         doc="every source readable, every storage reachable with room for the estimate"),
    Step("prepare_environment", "pre_backup", _run_plan, needs=("check_system_state",),
         result=PreparedRun, doc="the plan: id, type, parent, chain"),
    Step("notify_start", "pre_backup", _run_notify_start, needs=("prepare_environment",), doc="the start message"),
    Step("extract_data", "backup", _run_extract, fan_out="source", items=_data_sources, parallel=2,
         needs=("prepare_environment",), after=("notify_start",), result=ExtractResult,
         doc="each database and command source dumped into the primary storage"),
    Step("extract_config", "backup", _run_extract, fan_out="source", items=_file_sources, parallel=2,
         needs=("prepare_environment",), after=("notify_start",), result=ExtractResult,
         doc="each files source archived into the primary storage"),
    Step("commit", "backup", _run_commit, needs=("prepare_environment",), after=("extract_data", "extract_config"),
         result=CommitResult, doc="the manifest, written last, on the primary"),
    Step("upload", "backup", _run_replicate, fan_out="storage", items=_storages, parallel=8,
         needs=("prepare_environment",), result=UploadResult,
         doc="the primary checked, every other storage gets a SHA-256 checked copy"),
    Step("check_integrity", "verify", _run_check_integrity, fan_out="storage", items=_storages, parallel=8,
         needs=("prepare_environment",), after=("upload",), result=IntegrityResult,
         doc="every new object re-hashed on every storage, the chain present"),
    Step("test_restore", "verify", _run_test_restore, needs=("prepare_environment",), after=("upload",),
         result=RestoreTestResult, doc="the chain restored from the last storage, dumps loaded, Great Expectations"),
    Step("validate_data", "verify", _run_validate_data, needs=("prepare_environment", "test_restore"),
         result=ValidationResult, doc="the Great Expectations results, failed on any failure"),
    Step("notify_completion", "post_backup", _run_notify_completion,
         needs=("prepare_environment", "commit", "extract_data", "extract_config", "upload", "check_integrity",
                "test_restore", "validate_data"),
         after=("check_integrity", "validate_data"), result=CompletionSummary, doc="summary and result document"),
    Step("cleanup", "post_backup", _run_cleanup, kind=CLEANUP, needs=("prepare_environment",),
         after=("extract_data", "extract_config", "test_restore", "validate_data", "notify_completion"),
         result=CleanupResult, doc="scratch removed, leftovers reported"),
))


def run_backup(cfg: Config, tier: str, *, logical_date: str | datetime | None = None, type_override: str | None = None,
               sources: list[str] | None = None, storages: list[str] | None = None, checksum: bool = False,
               comment: str = "", resolver: Resolver | None = None, validate: bool = True,
               progress: bool | None = None, now: datetime | None = None) -> dict[str, Any]:
    """``backupctl backup``: the tier DAG's steps (:data:`BACKUP`) in this process — the same checks, locks, test
    restore, result document and cleanup. Returns the completion summary (the document the DAG's
    ``notify_completion`` returns) plus ``id``, ``already_committed``, ``system_state`` and ``steps`` (each step's
    state). Raises the run's failure(s) after the cleanup; SystemStateError before anything is written when the
    system is not ready. ``progress``: a progress bar on a terminal (default: when stderr is one); ``now`` (default:
    the clock) bounds the logical date."""
    from datetime import UTC

    from ...engine.backup_pipeline import (
        RUN_STAGING,
        check_logical_date,
        owned_staging,
        parse_logical_date,
        snapshot_id,
    )
    from ...engine.progress import Progress
    from ...errors import NotFoundError, did_you_mean
    from ...repository import Repository, run_scope

    t = cfg.tier(tier)
    for kind, names, known in (("source", sources, cfg.sources), ("storage", storages, cfg.storages)):
        for name in names or []:
            if name not in known:
                raise NotFoundError(f"no {kind} named {name!r}", hint=f"{did_you_mean(name, known)}use one of: {', '.join(known)}")
    ld = parse_logical_date(logical_date)
    check_logical_date(ld, now)  # before any lock or scratch
    import importlib.util

    if validate and any(cfg.sources[n].type in DB_KINDS for n in (sources or t.sources)) \
            and importlib.util.find_spec("great_expectations") is None:
        raise ConfigError("backup: the test restore validates the databases, but Great Expectations is not installed",
                          hint="install the validation extra (pip install 'fmr-backups[validation]'), or pass "
                               "--no-validate (the test restore still checks every SHA-256 and loads every dump)")
    sel = Selection(tier, type_override, list(sources or t.sources), list(storages or t.storages), comment)
    started = datetime.now(UTC)
    ctx = RunContext(cfg, resolver, dag_id="backupctl", run_id=f"{snapshot_id(tier, ld)}-{started:%Y%m%dT%H%M%S}-{os.getpid()}",
                     params={"selection": sel, "logical_date": ld, "checksum": checksum, "validate": validate,
                             "now": now})
    # one progress for the extractions, with a percentage of the system-state estimate (made by prepare_environment)
    ctx.state["make_progress"] = lambda total: Progress(f"backup {snapshot_id(tier, ld)}", total or None, tty=progress)
    ctx.state["started"] = started
    # from the plan to the commit, the run of one id is exclusive on the primary: a second `backupctl backup` of the
    # same tier and logical date waits, then finds it committed and only verifies it (the DAG: max_active_runs=1)
    # (with the shared repository lock: no prune removes the plan's parent before the commit)

    @contextlib.contextmanager
    def run_lock() -> Iterator[None]:
        repo = Repository(open_storage(cfg, sel.storages[0], resolver), cfg)
        with repo.lock("repo", exclusive=False, operation="backup"), \
                repo.lock(run_scope(snapshot_id(tier, ld)), exclusive=True, operation="backup"):
            yield

    ctx.state["run_lock"] = run_lock
    # the run's scratch (the test restore): in $BACKUP_STAGING or the temp dir, owner-tagged, so a run killed with -9
    # leaves nothing the next backup does not remove (engine.backup_pipeline.clean_staging)
    with owned_staging(RUN_STAGING) as base, contextlib.ExitStack() as held:
        ctx.state["held"], ctx.state["scratch_base"] = held, base
        try:
            outcome = run_procedure(BACKUP, ctx)
        finally:
            if ctx.state.get("progress") is not None:
                ctx.state["progress"].close()
    r = outcome.results
    summary = r["notify_completion"].to_dict()
    return {"id": summary["snapshot_id"], **summary, "already_committed": _plan_of(r).already_committed,
            "system_state": r["check_system_state"].to_dict(), "plan": _plan_of(r).to_dict(), "steps": dict(outcome.states),
            "seconds": dict(outcome.seconds)}
