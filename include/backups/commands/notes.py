"""Short Markdown summaries of a run — a backup, a restore, a retention pass, a failure, a monitoring check — for
the Airflow DAG run's note (:mod:`backups.orchestration.run_notes` sets it; Airflow allows 1000 characters) and the
asset event's extra.

The one note format of every DAG: the **first line** is the verdict and its cause in words (the UI shows it
collapsed, on the run); then Markdown bullets — one fact each, a ``fix:`` on a bullet of its own, never a code
block for prose (:func:`compose`). Built from the steps' result documents only (plain library, no Airflow): the
full story stays in the result documents and reports these point to.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
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


def backup_note(summary: dict[str, Any], report_url: str | None = None) -> str:
    """The backup run's note from :class:`~backups.commands.backup.CompletionSummary` ``.to_dict()``;
    ``report_url``: where the Backups plugin serves its result document (a link after the report's key)."""
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
        lines.append(f"* report: `{s['report'][0]}`" + (f" (+{len(s['report']) - 1})" if len(s["report"]) > 1 else "")
                     + (f" — [open]({report_url})" if report_url else ""))
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


# ------------------------------------------------------------------------------------------------ the shared format
#: a bullet: its text, or (text, sub-bullets)
Bullet = str | tuple[str, list[str]]
#: how long the first line may get (the UI shows it collapsed, on one line)
HEAD_MAX = 300


def one_line(text: Any, limit: int = HEAD_MAX) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters with "…"."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def compose(head: str, bullets: Iterable[Bullet] = (), *, tail: str = "") -> str:
    """The note: ``head`` (one line: the verdict and its cause), a blank line, the bullets (a tuple nests its
    sub-bullets under its text), then ``tail`` as a last paragraph."""
    lines = [one_line(head, HEAD_MAX + 40)]
    items = []
    for b in bullets:
        text, subs = (b, []) if isinstance(b, str) else b
        items.append(f"* {one_line(text, 600)}")
        items += [f"  * {one_line(sub, 600)}" for sub in subs]
    if items:
        lines += ["", *items]
    if tail:
        lines += ["", one_line(tail, 600)]
    return "\n".join(lines)


_EXC_PREFIX = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Failure|Interrupt)(?:\[\w+\])?: ")
_COUNT = re.compile(r"\s*\(\d+ problem\(s\)\)\s*$")


def parse_reason(reason: str) -> tuple[str, list[tuple[str, list[str]]], list[str]]:
    """An error's text as the library writes it (see :class:`backups.errors.BackupError`: a message, ``- item``
    lines for several problems, each with an indented ``fix:``, and a last ``fix:``) as (headline, problems with
    their fixes, the other lines and general fixes). The exception's class name in front is dropped."""
    text = _EXC_PREFIX.sub("", str(reason or "").strip(), count=1)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "no reason recorded", [], []
    head, rest = lines[0].strip(), []
    problems: list[list[Any]] = []  # [text, [fixes]]
    item_indent = -1
    for ln in lines[1:]:
        indent, body = len(ln) - len(ln.lstrip()), ln.strip()
        inside = problems and item_indent >= 0 and indent > item_indent
        if body.startswith(("- ", "* ")):
            problems.append([body[2:].strip(), []])
            item_indent = indent
        elif inside and body.startswith("fix:"):
            problems[-1][1].append(body)
        elif inside:  # a continuation line of the item (or of its fix)
            if problems[-1][1]:
                problems[-1][1][-1] += " " + body
            else:
                problems[-1][0] += " " + body
        else:
            item_indent = -1
            rest.append(body)
    return head, [(t, f) for t, f in problems], rest


def failure_note(s: dict[str, Any]) -> str:
    """The run's note when a task failed for good (``s``: the failure notifier's summary — ``task_id``,
    ``map_index``, ``try_number``, ``snapshot_id``, ``reason``). First line: **Failed** and the cause in words;
    then the problems with their fixes as bullets, the general fix, the task that failed."""
    head, problems, rest = parse_reason(str(s.get("reason") or ""))
    head = _COUNT.sub("", head.rstrip(" :")).rstrip(" :")
    cause = head
    if problems:
        cause += ": " + problems[0][0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
    task = f"`{s['task_id']}`" + (f"[{s['map_index']}]" if s.get("map_index") is not None else "") \
        if s.get("task_id") else "a task"
    tries = f" after {s['try_number']} tries" if s.get("try_number") and s["try_number"] > 1 else ""
    snap = f" · snapshot `{s['snapshot_id']}`" if s.get("snapshot_id") else ""
    # one problem: it is in the first line, its fixes follow as bullets; several: each with its fixes under it
    bullets: list[Bullet] = list(problems[0][1]) if len(problems) == 1 else [(p, f) for p, f in problems]
    bullets += rest
    bullets.append(f"failed task: {task}{tries}{snap}")
    fixed = any(b.startswith("fix:") for b in rest) or any(f for _, f in problems)
    tail = ("The task's log has the details." if fixed else
            "The task's log has the details; clear the task to retry once the cause is fixed.")
    return compose(f"**Failed**: {cause}", bullets, tail=tail)


def monitoring_note(status: dict[str, Any], page_url: str | None = None) -> str:
    """A ``backup_monitoring`` run's note from the published status document: the state and the count of open
    problems on the first line, then each open problem (the critical ones first) as a bullet."""
    problems = [p for p in status.get("problems") or [] if isinstance(p, dict)]
    problems.sort(key=lambda p: (p.get("severity") != "critical", str(p.get("key"))))
    state = str(status.get("state") or "unknown").upper()
    n = len(problems)
    head = f"**{state}** — " + (f"{n} open problem{'s' if n != 1 else ''}" if n else "no open problem")
    if not n:
        tiers = [t for t in status.get("tiers") or [] if isinstance(t, dict)]
        head += f": {len(tiers)} tier(s) fresh and verified, every storage reachable"
    bullets: list[Bullet] = []
    for p in problems:
        runs = p.get("runs")
        seen = f" (open for {runs} checks)" if isinstance(runs, int) and runs > 1 else ""
        bullets.append(f"{p.get('severity', 'warning')}: `{p.get('key')}` — {p.get('summary')}{seen}")
    tail = f"Details: [the Backups page]({page_url})." if page_url else ""
    return compose(head, bullets, tail=tail)
