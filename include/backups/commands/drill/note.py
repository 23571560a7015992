"""The ``dr_drill`` run's note: a short Markdown summary of a drill's verdict for the Airflow DAG run
(:mod:`backups.orchestration.run_notes` sets it; Airflow allows 1000 characters), in the style of
:mod:`backups.commands.notes`: the first line is the verdict and its cause in words; then bullets — RTO and RPO per
tier against the targets, the findings, where the report is. Built from the verdict alone (plain library, no
Airflow); the full story stays in the report it points to."""

from __future__ import annotations

from typing import Any

from ...units import fmt_duration

#: findings listed in the note (the rest: "+N more, see the report")
NOTE_FINDINGS = 5
_CAUSE_CHARS = 200
#: Airflow's limit on a run note (``run_notes.MAX_NOTE``)
NOTE_LIMIT = 1000


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mark(ok: bool | None) -> str:
    return "✓" if ok else "✗"


def drill_cause(v: dict[str, Any]) -> str:
    """The verdict's cause in words: why it passed, or its first finding (and how many more)."""
    if v["passed"]:
        return f"{len(v['tiers'])} tier(s) restored into isolation, every check passed, RTO and RPO within target"
    findings = v.get("findings") or ["no tier passed"]
    more = f" (+{len(findings) - 1} more finding(s))" if len(findings) > 1 else ""
    return _short(findings[0], _CAUSE_CHARS) + more


def _tier_line(x: dict[str, Any], rto_target: float, rpo_target: float) -> str:
    head = f"* `{x['tier']}`"
    if x.get("snapshot_id"):
        head += f" (`{x['snapshot_id']}` from `{x['storage']}`)"
    if not x.get("restored"):
        return head + ": **not restored** (see the findings)"
    rto, rpo = x.get("rto_seconds"), x.get("rpo_seconds")
    rpo_ok = rpo is not None and rpo <= rpo_target
    return (head + f": RTO {fmt_duration(rto)} {_mark(x.get('rto_ok'))} · RPO {fmt_duration(rpo)} {_mark(rpo_ok)}"
            + f" · checks {'passed' if x.get('checks_passed') else '**failed**'}")


def drill_note(v: dict[str, Any], link: str | None = None, limit: int = NOTE_LIMIT) -> str:
    """The note of a drill from its verdict (:class:`~backups.commands.drill.DrillVerdict` ``.to_dict()``);
    ``link``: where the report opens (a URL), else its path. Fewer findings are listed when the note would be
    longer than ``limit`` (the report line stays last)."""
    t = v["targets"]
    rto_target, rpo_target = t["rto_minutes"] * 60, t["rpo_hours"] * 3600
    head = [f"**Drill `{v['drill_id']}` {'passed' if v['passed'] else 'FAILED'}** — {drill_cause(v)}", "",
            f"* targets: RTO {fmt_duration(rto_target)} per tier, RPO {fmt_duration(rpo_target)}; measured: RTO "
            f"{fmt_duration(v.get('rto_seconds'))} (slowest tier), RPO {fmt_duration(v.get('rpo_seconds'))} (newest "
            "restorable data; RPO counts from when it was read)"]
    head += [_tier_line(x, rto_target, rpo_target) for x in v["tiers"]]
    reports = v.get("reports") or {}
    where = link or reports.get("html") or reports.get("md")
    tail = ([f"* report: [{v['drill_id']}]({where})" if link else f"* report: `{where}`"] if where else [])
    findings = v.get("findings") or []
    for shown in range(min(len(findings), NOTE_FINDINGS), -1, -1):
        lines = [f"* findings ({len(findings)}):"] if findings else []
        lines += [f"  * {_short(f, 160)}" for f in findings[:shown]]
        if len(findings) > shown:
            lines.append(f"  * +{len(findings) - shown} more: see the report")
        note = "\n".join(head + lines + tail)
        if len(note) <= limit:
            break
    return note
