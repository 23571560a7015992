"""The restore's report (``RESTORE_REPORT.json`` / ``.md``) and who ran it (:class:`RunInfo`)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ...engine.progress import mb
from ..base import approval_phrase
from .plan import TablePlan
from .request import REPORT_NAME, Location, RestoreRequest
from .run import RestoreResult, Verification

log = logging.getLogger("backups.commands.restore")

# ------------------------------------------------------------------------------------------------ report
@dataclass
class RunInfo:
    """Who ran the restore and how: the run-specific part of the report (differs between the two doors)."""

    door: str  # "cli" or the DAG id
    run_id: str
    requested_by: str
    approval: dict[str, Any]
    run_seconds: float | None = None
    archive_wait: dict[str, Any] | None = None


#: report fields that differ from run to run and between the doors (the both-doors test ignores them)
RUN_SPECIFIC = ("dag_id", "run_id", "requested_by", "approval", "archive_wait", "durations", "finished_at")


def approval_from_hitl(detail: dict[str, Any] | None) -> dict[str, Any]:
    """The report's approval block from an Airflow HITL answer (None: the gate was off)."""
    if not detail:
        return {"by": None, "choice": "not required", "note": "require_approval was false"}
    who = detail.get("responded_by_user") or {}
    return {"by": who.get("name") or who.get("id") or "unknown", "at": str(detail.get("responded_at")),
            "choice": (detail.get("chosen_options") or ["?"])[0], "note": (detail.get("params_input") or {}).get("note") or ""}


def cli_run_info(run_seconds: float | None = None, archive_wait: dict[str, Any] | None = None) -> RunInfo:
    """The CLI door: requested by the OS user; there is no approval gate."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return RunInfo(door="cli", run_id=f"cli-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}",
                   requested_by=user, approval={"by": None, "choice": "not required (CLI)", "note": ""},
                   run_seconds=run_seconds, archive_wait=archive_wait)


@dataclass
class RestoreReport:
    doc: dict[str, Any]
    markdown: str

    def to_dict(self) -> dict[str, Any]:
        return {"doc": self.doc, "markdown": self.markdown}


def build_report(req: RestoreRequest, loc: Location, restored: RestoreResult, verified: Verification,
                 run: RunInfo) -> RestoreReport:
    """``RESTORE_REPORT`` as a JSON document and Markdown: the snapshot, where from and to, what was restored,
    checked (how: :attr:`Verification.content`) and validated; who asked and the approval."""
    params = {**req.to_dict(), "sources": loc.sources}
    approved = run.approval
    doc = {"kind": "restore-result", "dag_id": run.door, "run_id": run.run_id, "requested_by": run.requested_by or "unknown",
           "approval": approved, "params": params,
           "snapshot": {k: getattr(loc, k) for k in (
               "snapshot_id", "tier", "type", "logical_date", "chain", "storage", "storage_type", "archive", "objects")},
           "target": restored.target, "archive_wait": run.archive_wait,
           "sources": {n: r.to_dict() for n, r in restored.sources.items()},
           "verification": verified.to_dict(),
           "durations": {"restore_seconds": restored.seconds, "verify_seconds": verified.seconds,
                         "run_seconds": run.run_seconds},
           "finished_at": datetime.now(UTC).isoformat(timespec="seconds"), "status": "success"}
    md = [f"# Restore of {loc.snapshot_id}", "",
          f"* into: `{restored.target}`",
          f"* from storage: `{loc.storage}` ({loc.storage_type}" + (", archive" if loc.archive else "") + ")",
          f"* snapshot: {loc.type}, tier {loc.tier}, logical date {loc.logical_date}, chain " + " -> ".join(loc.chain),
          f"* requested by: **{doc['requested_by']}** (run `{run.run_id}`)",
          f"* approval: {approval_phrase(approved)}",
          f"* files: {verified.content}" + ("" if verified.reread else
                                            "; after the restore every file checked present with its size (no re-read)"),
          f"* options: include {', '.join(req.includes or []) or 'all'}, tables {', '.join(req.tables or []) or 'all'}, "
          f"force {req.force}, "
          f"reread {bool(req.reread)}"
          + (f", with dependencies {req.include_dependencies}" if req.tables else "")
          + (f", PostgreSQL target {req.pg_target_name}" if req.pg_target_name else ""), ""]
    plan = TablePlan.from_dict(restored.tables)
    if plan:
        doc["tables"] = plan.to_dict()
        md += ["## Tables and their dependencies (foreign keys)", ""]
        for n, s in plan.sources.items():
            md.append(f"* {n}: restored {', '.join(s['tables'])}; dependencies restored with them: "
                      + (", ".join(s["added"]) or "none needed")
                      + (f"; already in the target database: {', '.join(s['in_target'])}" if s["in_target"] else "")
                      + ("; foreign key check: " + str(verified.files[n]["foreign_key_check"])
                         if "foreign_key_check" in verified.files.get(n, {}) else "")
                      + ("; loaded in one transaction, constraints validated" if s["kind"] == "postgres"
                         and req.pg_target_name else ""))
        md.append("")
    if run.archive_wait and run.archive_wait.get("archive"):
        md += [f"Archived objects: {run.archive_wait.get('keys')} made readable after "
               f"{run.archive_wait.get('waited_seconds')} s.", ""]
    after = "re-read and re-hashed after" if verified.reread else "present, right size after"
    md += [f"| source | kind | files | size | SHA-256 checked while written | {after} | path |",
           "|---|---|---|---|---|---|---|"]
    for n, r in restored.sources.items():
        v = verified.files.get(n, {})
        md.append(f"| {n} | {r.kind} | {r.files} | {mb(r.bytes)} | {r.verified} | "
                  f"{v.get('files_checked', '-')} | `{r.path}` |")
    warned = [(n, w) for n, r in restored.sources.items() for w in r.warnings or []]
    if warned:
        md += ["", "## Warnings (recorded by the snapshot's chain, or met by this restore)", ""]
        md += [f"* {n}: {w}" for n, w in warned]
    md += ["", "## Data validation (Great Expectations)", ""]
    for n, v in verified.validation.items():
        stats = v.get("statistics") or {}
        md.append(f"* {n}: " + (f"skipped ({v.get('skipped')})" if v.get("success") is None else
                                f"{stats.get('successful_expectations')}/{stats.get('evaluated_expectations')} expectations met"))
    if not verified.validation:
        md.append("* no database source restored")
    md += ["", f"Restore took {restored.seconds} s, verification {verified.seconds} s; the run {run.run_seconds} s.", ""]
    return RestoreReport(doc=doc, markdown="\n".join(md))


def write_report(target: str, report: RestoreReport) -> list[str]:
    """``RESTORE_REPORT.json`` / ``.md`` in the target directory, each written to a temp name then renamed."""
    paths = []
    for ext, text in (("json", json.dumps(report.doc, indent=1, sort_keys=True, default=str) + "\n"),
                      ("md", report.markdown)):
        final = Path(target) / f"{REPORT_NAME}.{ext}"
        tmp = final.with_name(f".{final.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, final)
        paths.append(str(final))
    return paths
