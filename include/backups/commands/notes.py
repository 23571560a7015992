"""Short Markdown summaries of a run — a backup, a restore, a retention pass — for the Airflow DAG run's note
(:mod:`backups.orchestration.run_notes` sets it; Airflow allows 1000 characters) and the asset event's extra.

Built from the steps' result documents only (plain library, no Airflow): the full story stays in the result
documents and reports these point to.
"""

from __future__ import annotations

from typing import Any

from ..engine.progress import mb
from .base import approval_phrase


def _secs(value: Any) -> str:
    return "?" if value is None else f"{float(value):.1f} s"


def _validation_line(validation: dict[str, Any]) -> str:
    if not validation:
        return "no database source"
    parts = []
    for name, v in validation.items():
        stats = v.get("statistics") or {}
        if v.get("success") is None:
            parts.append(f"{name} skipped ({v.get('skipped') or 'not validated'})")
        else:
            parts.append(f"{name} {stats.get('successful_expectations')}/{stats.get('evaluated_expectations')} "
                         + ("✓" if v.get("success") else "✗"))
    return ", ".join(parts)


def backup_verdict(summary: dict[str, Any]) -> str:
    """``verified`` when every check of the run passed (integrity on each storage, data validation, test restore),
    else what did not: the one-word answer for the asset event."""
    checks = summary.get("checks") or {}
    bad = [f"integrity on {n}" for n, i in (checks.get("integrity") or {}).items() if not i.get("ok")]
    bad += [f"validation of {n}" for n, v in (checks.get("validation") or {}).items() if v.get("success") is False]
    skipped = [n for n, v in (checks.get("validation") or {}).items() if v.get("success") is None]
    if bad:
        return "failed: " + ", ".join(bad)
    return "verified" + (f" (validation skipped: {', '.join(skipped)})" if skipped else "")


def backup_note(summary: dict[str, Any]) -> str:
    """The backup run's note from :class:`~backups.commands.backup.CompletionSummary` ``.to_dict()``."""
    s = summary
    t, d, checks = s["totals"], s.get("durations") or {}, s.get("checks") or {}
    kind = s["type"] + (f" (requested {s['requested_type']}: {s['promoted_reason']})" if s.get("promoted_reason") else "")
    lines = [f"**Backup `{s['snapshot_id']}`** — {backup_verdict(s)}", "",
             f"{kind}, parent `{s.get('parent') or '-'}` · {len(s['sources'])} source(s), {t['files']} files, "
             f"{mb(t['bytes'])} → {mb(t['stored_bytes'])} stored · run {_secs(d.get('run_seconds'))}", ""]
    if s.get("requested_by") or s.get("approval"):
        a = s.get("approval") or {}
        lines.append(f"* requested by **{s.get('requested_by') or 'unknown'}**; approval: "
                     f"{approval_phrase(a, when=False)}")
    if s.get("comment"):
        lines.append(f"* comment: {s['comment']}")
    integrity = checks.get("integrity") or {}
    lines.append("* stored on: " + ", ".join(f"{n} {'✓' if i.get('ok') else '✗'}" for n, i in integrity.items())
                 + " (every new object re-hashed)")
    lines.append(f"* data (Great Expectations): {_validation_line(checks.get('validation') or {})}")
    rt = checks.get("restore_test") or {}
    if rt:
        lines.append(f"* test restore from {rt.get('storage')}: {rt.get('files')} files, SHA-256 verified")
    if s.get("report"):
        lines.append(f"* report: `{s['report'][0]}`" + (f" (+{len(s['report']) - 1})" if len(s["report"]) > 1 else ""))
    return "\n".join(lines)


def restore_note(doc: dict[str, Any], paths: list[str]) -> str:
    """The restore run's note from the ``RESTORE_REPORT`` document (:func:`backups.commands.restore.build_report`)."""
    snap, ver, d = doc["snapshot"], doc.get("verification") or {}, doc.get("durations") or {}
    sources = doc.get("sources") or {}
    files = sum(int(r.get("files") or 0) for r in sources.values())
    size = sum(int(r.get("bytes") or 0) for r in sources.values())
    a = doc.get("approval") or {}
    lines = [f"**Restore of `{snap['snapshot_id']}`** into `{doc['target']}` — verified", "",
             f"from `{snap['storage']}` ({snap.get('storage_type')}), {snap.get('type')} of tier {snap.get('tier')} · "
             f"{len(sources)} source(s) ({', '.join(sources)}), {files} files, {mb(size)} · run "
             f"{_secs(d.get('run_seconds'))}", "",
             f"* requested by **{doc.get('requested_by') or 'unknown'}**; approval: {approval_phrase(a, when=False)}",
             "* every file's SHA-256 checked while written" + (", then re-read and re-hashed" if ver.get("reread") else
                                                               "; present with its size after (not re-read)"),
             f"* data (Great Expectations): {_validation_line(ver.get('validation') or {})}"]
    if paths:
        lines.append(f"* report: `{paths[-1]}`")
    return "\n".join(lines)


def retention_note(results: list[dict[str, Any]], *, dry_run: bool, failed: list[str] | None = None) -> str:
    """The retention run's note from the ``prune_one`` results (one per storage)."""
    verb = "would forget" if dry_run else "forgot"
    head = "**Retention" + (" (dry run)" if dry_run else "") + "**"
    lines = [head + f" — {verb} {sum(len(r['forget']) for r in results)} snapshot(s) on {len(results)} storage(s)"
             + (f"; **not reached: {', '.join(failed)}**" if failed else ""), ""]
    for r in results:
        lines.append(f"* `{r['storage']}`: keep {len(r['keep'])}, {verb} {len(r['forget'])}"
                     + (f" ({', '.join(r['forget'][:6])}{', …' if len(r['forget']) > 6 else ''})" if r["forget"] else "")
                     + (f"; {r['deleted_objects']} object(s), {mb(r['deleted_bytes'])} removed" if not dry_run else "")
                     + (f"; orphans {len(r['orphans'])}" if r.get("orphans") else ""))
    lines.append("")
    lines.append("Every snapshot with the rule that kept it (or none): the `prune` task logs.")
    return "\n".join(lines)
