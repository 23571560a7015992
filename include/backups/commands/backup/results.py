"""The typed results of the backup steps (:class:`~backups.commands.base.Result` dataclasses): ``to_dict()`` is what
travels between the DAG's tasks (XCom), ``X.from_dict()`` turns a pulled XCom back into a later step's typed input."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..base import Result

if TYPE_CHECKING:
    from ...engine.backup_pipeline import Plan


@dataclass
class StepResult(Result):
    """A step's result whose optional fields (``OPTIONAL``) are left out of :meth:`to_dict` when unset, so the
    XCom payload holds exactly the keys the step produced."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        return {k: v for k, v in out.items() if not (k in self.OPTIONAL and v is None)}


@dataclass
class SystemState(StepResult):
    """``check_system_state``: estimated bytes per source, free bytes per storage, copy targets that are down."""

    estimates: dict[str, int]
    estimated_bytes: int
    free_bytes: dict[str, int | None]
    unavailable: dict[str, str] = field(default_factory=dict)


@dataclass
class PreparedRun(StepResult):
    """``prepare_environment`` (:func:`~.pre_backup.plan_run`): the plan and what the extract tasks are mapped over
    (XCom: one key per field)."""

    plan: Plan
    data_sources: list[str]
    file_sources: list[str]
    storages: list[str]
    estimates: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "data_sources": list(self.data_sources),
                "file_sources": list(self.file_sources), "storages": list(self.storages),
                "estimates": dict(self.estimates)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreparedRun:
        return cls(plan=as_plan(d["plan"]), data_sources=list(d["data_sources"]), file_sources=list(d["file_sources"]),
                   storages=list(d["storages"]), estimates=dict(d["estimates"]))


@dataclass
class ExtractResult(StepResult):
    """``extract_source``: what one source stored (:func:`backups.engine.backup_pipeline.extract`), or why it was skipped."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("files", "bytes", "stored_bytes", "seconds", "warnings", "skipped")
    source: str
    files: int | None = None
    bytes: int | None = None
    stored_bytes: int | None = None
    seconds: float | None = None
    warnings: int | None = None
    skipped: str | None = None


@dataclass
class CommitResult(StepResult):
    """``commit_snapshot``: the committed snapshot's identity and totals."""

    snapshot_id: str
    type: str
    parent: str | None
    chain: list[str]
    storage: str
    files: int
    bytes: int
    stored_bytes: int
    objects: int
    duration_seconds: float | None
    already_committed: bool


@dataclass
class UploadResult(StepResult):
    """``upload`` (:func:`~.transfer.replicate_to`): the primary's presence check (objects, bytes) or a replica's copy
    (copied_bytes, backfilled)."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("objects", "bytes", "copied_bytes", "backfilled")
    storage: str
    role: str
    seconds: float
    objects: int | None = None
    bytes: int | None = None
    copied_bytes: int | None = None
    backfilled: list[str] | None = None


@dataclass
class IntegrityResult(StepResult):
    """``check_integrity``: what was re-hashed on one storage and the problems found (the step raises on any)."""

    storage: str
    ok: bool
    snapshot_id: str
    objects_hashed: int
    bytes_hashed: int
    chain_objects: int
    problems: list[str]
    seconds: float


@dataclass
class ValidationResult(StepResult):
    """``validate_data``: Great Expectations results per database (compact form), or why nothing was validated."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("skipped", "seconds")
    snapshot_id: str
    storage: str
    databases: dict[str, Any]
    skipped: str | None = None
    seconds: float | None = None


@dataclass
class RestoreTestResult(StepResult):
    """``test_restore``: the chain restored from the run's last storage, per-source counts and validation."""

    snapshot_id: str
    storage: str
    chain: list[str]
    sources: dict[str, dict[str, Any]]
    validation: dict[str, Any]
    seconds: float


@dataclass
class CompletionSummary(StepResult):
    """``completion_summary`` / ``complete_run``: the run's summary; ``report`` (result document keys) and, for
    backup_manual, ``requested_by`` and ``approval`` are set by :func:`complete_run`."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("report", "requested_by", "approval", "warnings")
    snapshot_id: str
    application: str
    tier: str
    type: str
    requested_type: str
    promoted_reason: str | None
    parent: str | None
    chain: list[str]
    logical_date: str
    comment: str
    storages: list[str]
    sources: dict[str, dict[str, Any]]
    totals: dict[str, Any]
    durations: dict[str, Any]
    checks: dict[str, Any]
    status: str = "success"
    report: list[str] | None = None
    requested_by: str | None = None
    approval: dict[str, Any] | None = None
    #: the plan's own warnings, as in the manifest (clock skew); the sources' are counted per source
    warnings: list[str] | None = None


@dataclass
class CleanupResult(StepResult):
    """``cleanup``: scratch dirs removed; whether the snapshot was committed and, if not, the objects left for a retry."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("committed", "uncommitted_objects")
    removed: list[str] = field(default_factory=list)
    committed: bool | None = None
    uncommitted_objects: int | None = None


def as_plan(plan: Plan | dict[str, Any]) -> Plan:
    """A :class:`~backups.engine.backup_pipeline.Plan` (as is) or its ``to_dict()`` form (an XCom) turned back into one."""
    from ...engine.backup_pipeline import Plan

    return plan if isinstance(plan, Plan) else Plan.from_dict(dict(plan))
