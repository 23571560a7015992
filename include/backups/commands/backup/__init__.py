"""The backup command, step by step (no Airflow import): ``backupctl backup`` runs the steps in a row, the ``@task`` adapters in
:mod:`backups.orchestration.backup_dags` pass context values in (logical date, params, run id) and map errors.

Each step resolves what it needs from the config, calls the engine (:mod:`backups.engine.backup_pipeline`), and
returns a small typed result (a :class:`~backups.commands.base.Result` dataclass, :mod:`.results`); its
``to_dict()`` is the only thing that travels between tasks (XCom), and ``X.from_dict()`` turns a pulled XCom back
into the typed input of a later step. Nothing a step writes on local disk is read by another step: data moves
through the backup storages only, so the DAGs run unchanged on Celery or Kubernetes workers.

Order of a run (step names, as the DAG's task ids): check_system_state → prepare_environment (:func:`plan_run`,
the plan) → extract (one call per source, into the primary storage) → commit (manifest last, on the primary) →
upload (:func:`replicate_to`, per storage: check the primary, replicate to the others) → check_integrity (per
storage) / test_restore (the one Great Expectations run) → validate_data (reports that run) → completion summary
→ cleanup.

Modules: :mod:`.pre_backup` (selection, system state, plan), :mod:`.transfer` (extract, commit, replicate),
:mod:`.verify` (integrity, test restore, validation), :mod:`.report` (summary, result document, cleanup),
:mod:`.procedure` (:data:`BACKUP` and :func:`run_backup`), :mod:`.results` (the typed results), :mod:`.scratch`.
"""

from ...errors import SystemStateError
from .pre_backup import (
    DATA_KINDS,
    MANUAL_TIER,
    Selection,
    check_system_state,
    instant_first,
    is_archive,
    plan_run,
    runtime_config,
    selection,
    start_message,
    with_manual_tier,
)
from .procedure import BACKUP, run_backup
from .report import (
    StepResults,
    cleanup,
    complete_run,
    completion_summary,
    manual_report,
    report_key,
    summary_text,
    write_report,
)
from .results import (
    CleanupResult,
    CommitResult,
    CompletionSummary,
    ExtractResult,
    IntegrityResult,
    PreparedRun,
    RestoreTestResult,
    StepResult,
    SystemState,
    UploadResult,
    ValidationResult,
    as_plan,
)
from .scratch import run_scratch, scratch_root, task_scratch
from .transfer import commit_snapshot, extract_source, replicate_to
from .verify import check_integrity, test_restore, validate_data

__all__ = [
    "BACKUP", "DATA_KINDS", "MANUAL_TIER", "CleanupResult", "CommitResult", "CompletionSummary", "ExtractResult",
    "IntegrityResult", "PreparedRun", "RestoreTestResult", "Selection", "StepResult", "StepResults", "SystemState",
    "SystemStateError", "UploadResult", "ValidationResult", "as_plan", "check_integrity", "check_system_state",
    "cleanup", "commit_snapshot", "complete_run", "completion_summary", "extract_source", "instant_first",
    "is_archive", "manual_report", "plan_run", "replicate_to", "report_key", "run_backup", "run_scratch",
    "runtime_config", "scratch_root", "selection", "start_message", "summary_text", "task_scratch", "test_restore",
    "validate_data", "with_manual_tier", "write_report",
]
