"""The end of a run (the DAG's ``post_backup`` group): the completion summary, the result document (stored next to
the snapshot; the backup_manual one says who asked and who approved) and the cleanup of the run's scratch."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...catalog.manifest import Catalog, manifest_key
from ...config import Config
from ...errors import BackupError
from ...storage import Resolver, open_storage
from ..base import approval_phrase, mb
from .pre_backup import is_archive
from .results import (
    CleanupResult,
    CommitResult,
    CompletionSummary,
    ExtractResult,
    IntegrityResult,
    RestoreTestResult,
    UploadResult,
    ValidationResult,
    as_plan,
)
from .scratch import run_scratch

if TYPE_CHECKING:
    from ...engine.backup_pipeline import Plan

log = logging.getLogger("backups.commands.backup")

@dataclass
class StepResults:
    """What the steps before the completion returned (the CLI's results, the DAG's XComs): the one parameter object
    of :func:`completion_summary` and :func:`complete_run`. ``extracts`` / ``uploads`` hold ``None`` for a skipped
    item of their fan-out."""

    committed: CommitResult
    integrity: list[IntegrityResult]
    validation: ValidationResult
    restore_test: RestoreTestResult
    extracts: list[ExtractResult | None] = field(default_factory=list)
    uploads: list[UploadResult | None] = field(default_factory=list)


def completion_summary(cfg: Config, plan: Plan, steps: StepResults, run_seconds: float | None,
                       resolver: Resolver | None = None) -> CompletionSummary:
    """id, type, sizes, durations and checks of the run (read from the committed manifest + the tasks' XComs)."""
    p = as_plan(plan)
    integrity, validation, restore_test = steps.integrity, steps.validation, steps.restore_test
    extracts, uploads = steps.extracts, steps.uploads
    st = open_storage(cfg, p.storages[0], resolver, read_only=True)
    snap = Catalog(st, cfg.application).get(p.snapshot_id)
    d = snap.doc
    seconds = {e.source: e.seconds for e in extracts if e}
    sources = {n: {"kind": r["kind"], "files": r["files"], "bytes": r["bytes"], "stored_files": r["stored_files"],
                   "stored_bytes": r["stored_bytes"], "deleted": r["deleted"], "warnings": len(r["warnings"]),
                   "extract_seconds": seconds.get(n)} for n, r in sorted(d["sources"].items())}
    return CompletionSummary(
        snapshot_id=snap.id, application=cfg.application, tier=d["tier"], type=d["type"],
        requested_type=d["requested_type"], promoted_reason=d.get("promoted_reason"), parent=d.get("parent"),
        chain=d["chain"], logical_date=d["logical_date"], comment=d.get("comment", ""),
        storages=list(p.storages), sources=sources, totals=d["totals"],
        durations={"snapshot_seconds": d.get("duration_seconds"), "run_seconds": run_seconds,
                   "upload_seconds": {u.storage: u.seconds for u in uploads if u}},
        checks={
            "integrity": {i.storage: {"ok": i.ok, "objects_hashed": i.objects_hashed,
                                      "bytes_hashed": i.bytes_hashed} for i in integrity if i},
            "validation": validation.databases,
            "restore_test": {"storage": restore_test.storage, "files": sum(
                s["files"] for s in restore_test.sources.values()), "validation": restore_test.validation,
                "sources": {n: {"kind": s["kind"], "files": s["files"]} for n, s in restore_test.sources.items()}},
        },
        status="success",
        warnings=list(d.get("warnings") or []) or None,
    )


def summary_text(s: dict[str, Any]) -> str:
    """The completion summary for humans (task log, CLI)."""
    lines = [f"backup {s['snapshot_id']} completed: {s['type']}"
             + (f" (requested {s['requested_type']}: {s['promoted_reason']})" if s.get("promoted_reason") else "")
             + f", parent {s['parent'] or '-'}, chain of {len(s['chain'])}",
             f"  totals: {s['totals']['files']} files, {mb(s['totals']['bytes'])}, stored {mb(s['totals']['stored_bytes'])}"
             f" in {s['totals']['objects']} object(s); snapshot took {s['durations']['snapshot_seconds']}s"]
    for n, r in s["sources"].items():
        lines.append(f"  source {n} ({r['kind']}): {r['files']} files, {mb(r['bytes'])}, stored {r['stored_files']} "
                     f"({mb(r['stored_bytes'])}), {r['deleted']} deleted, {r['warnings']} warning(s), "
                     f"{r['extract_seconds']}s")
    for name, i in s["checks"]["integrity"].items():
        lines.append(f"  integrity on {name}: {'OK' if i['ok'] else 'FAILED'} ({i['objects_hashed']} objects re-hashed)")
    for name, v in s["checks"]["validation"].items():
        stats = v.get("statistics") or {}
        lines.append(f"  validation of {name}: " + ("skipped" if v.get("success") is None else
                     f"{stats.get('successful_expectations')}/{stats.get('evaluated_expectations')} expectations met"))
    rt = s["checks"]["restore_test"]
    lines.append(f"  test restore from {rt['storage']}: {rt['files']} files restored and verified")
    return "\n".join(lines)


def manual_report(summary: dict[str, Any], *, dag_id: str, run_id: str, requested_by: str | None,
                  approval: dict[str, Any] | None, params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The result document of a backup_manual run: who asked, who approved, what was taken, checks and results."""
    if approval:
        who = approval.get("responded_by_user") or {}
        approved = {"by": who.get("name") or who.get("id") or "unknown", "at": str(approval.get("responded_at")),
                    "choice": (approval.get("chosen_options") or ["?"])[0], "note": (approval.get("params_input") or {}).get("note") or ""}
    else:
        approved = {"by": None, "choice": "not required", "note": "require_approval was false"}
    doc = {"kind": "manual-backup-result", "dag_id": dag_id, "run_id": run_id,
           "requested_by": requested_by or "unknown", "approval": approved, "params": params, **summary}
    s = summary
    md = [f"# Manual backup {s['snapshot_id']}", "",
          f"* requested by: **{doc['requested_by']}** (run `{run_id}`)",
          f"* comment: {s.get('comment') or '-'}",
          f"* approval: {approval_phrase(approved)}",
          f"* type: {s['type']}" + (f" (requested {s['requested_type']}: {s['promoted_reason']})" if s.get("promoted_reason") else "")
          + f", parent {s['parent'] or '-'}, chain {' -> '.join(s['chain'])}",
          f"* storages: {', '.join(s['storages'])}", "",
          "## What was taken", "", "| source | kind | files | size | stored | stored size |", "|---|---|---|---|---|---|"]
    for n, r in s["sources"].items():
        md.append(f"| {n} | {r['kind']} | {r['files']} | {mb(r['bytes'])} | {r['stored_files']} | {mb(r['stored_bytes'])} |")
    md += ["", "## Checks and results", ""]
    for name, i in s["checks"]["integrity"].items():
        md.append(f"* integrity on {name}: {'OK' if i['ok'] else 'FAILED'} ({i['objects_hashed']} objects, "
                  f"{mb(i['bytes_hashed'])} re-hashed)")
    for name, v in s["checks"]["validation"].items():
        stats = v.get("statistics") or {}
        md.append(f"* data validation of {name} (Great Expectations): " + ("skipped" if v.get("success") is None else
                  f"{stats.get('successful_expectations')}/{stats.get('evaluated_expectations')} expectations met"))
    rt = s["checks"]["restore_test"]
    md.append(f"* test restore from {rt['storage']}: {rt['files']} files restored, all SHA-256 verified")
    md += ["", f"Snapshot took {s['durations']['snapshot_seconds']} s; run took {s['durations']['run_seconds']} s.", ""]
    return doc, "\n".join(md)


def complete_run(cfg: Config, plan: Plan, steps: StepResults, *, run_seconds: float | None, dag_id: str,
                 run_id: str, manual: dict[str, Any] | None = None, resolver: Resolver | None = None) -> CompletionSummary:
    """The end of a run: :func:`completion_summary`, logged, and its result document stored next to the snapshot
    on every storage of the run. ``manual`` (requested_by, approval, params) makes it the backup_manual document."""
    p = as_plan(plan)
    summary = completion_summary(cfg, p, steps, run_seconds, resolver)
    text = summary_text(summary.to_dict())
    log.info("%s", text)
    if manual is not None:
        doc, md = manual_report(summary.to_dict(), dag_id=dag_id, run_id=run_id,
                                requested_by=manual.get("requested_by"), approval=manual.get("approval"),
                                params=manual.get("params") or {})
        summary.report = write_report(cfg, p.storages, p.snapshot_id, doc, md, resolver)
        summary.requested_by, summary.approval = doc["requested_by"], doc["approval"]
    else:
        md = f"# Backup {summary.snapshot_id}\n\n```\n{text}\n```\n"
        summary.report = write_report(cfg, p.storages, p.snapshot_id,
                                      {"kind": "backup-result", **summary.to_dict()}, md, resolver)
    return summary


def report_key(snapshot_id: str, ext: str) -> str:
    """reports/<tier>/<snapshot id>.<ext> (the tier is the id's prefix: reports/manual/… for backup_manual)."""
    from ...repository import report_key as key

    return key(snapshot_id, ext)


def write_report(cfg: Config, storages: list[str], snapshot_id: str, doc: dict[str, Any], markdown: str,
                 resolver: Resolver | None = None) -> list[str]:
    """Store the result document (JSON + Markdown) next to the snapshot on every storage of the run that is readable
    without a thaw (on an archive class it could not be read when it is wanted)."""
    keys = []
    for name in storages:
        if is_archive(cfg, name):
            continue
        st = open_storage(cfg, name, resolver)
        for key, data in ((report_key(snapshot_id, "json"), (json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n").encode()),
                          (report_key(snapshot_id, "md"), markdown.encode())):
            st.delete(key)  # a report is replaced by a re-run's (objects are never overwritten: delete, then create)
            st.put_bytes(key, data)
        keys.append(f"{name}:{report_key(snapshot_id, 'json')}")
    log.info("result document stored: %s", ", ".join(keys))
    return keys


def cleanup(cfg: Config | None, plan: Plan | None, dag_id: str, run_id: str, resolver: Resolver | None = None,
            *, stale_after_seconds: float = 2 * 86400) -> CleanupResult:
    """Remove this run's scratch on this worker (each task already removed its own) and stale scratch of earlier
    runs of the DAG; report (never delete) uncommitted objects, which a retry of the run reuses."""
    removed: list[str] = []
    here = run_scratch(dag_id, run_id)
    if here.exists():
        shutil.rmtree(here, ignore_errors=True)
        removed.append(str(here))
    parent = here.parent
    if parent.is_dir():
        now = time.time()
        for old in parent.iterdir():
            try:
                if old.is_dir() and now - old.stat().st_mtime > stale_after_seconds:
                    shutil.rmtree(old, ignore_errors=True)
                    removed.append(str(old))
            except OSError:
                continue
    out = CleanupResult(removed=removed)
    if cfg is not None and plan is not None:
        p = as_plan(plan)
        try:
            st = open_storage(cfg, p.storages[0], resolver, read_only=True)
            committed = st.exists(manifest_key(p.snapshot_id))
            out.committed = committed
            if not committed:
                from ...repository import data_prefix

                left = list(st.list(data_prefix(p.snapshot_id)))
                out.uncommitted_objects = len(left)
                if left:
                    log.warning("%s was not committed: %d object(s), %s, stay on %s for a retry of this run (a snapshot "
                                "without a manifest does not exist for restores; retention removes such leftovers)",
                                p.snapshot_id, len(left), mb(sum(o.size for o in left)), st.name)
        except BackupError as exc:
            log.warning("cleanup could not inspect the primary storage: %s", exc.message)
    log.info("cleanup: removed %d scratch dir(s)", len(removed))
    return out
