"""The drill report's texts: Markdown, HTML, and the PNG chart of RTO and RPO over the drill history."""

from __future__ import annotations

import base64
import io
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from ...units import fmt_bytes, fmt_duration
from .common import RUNBOOK
from .judge import DrillVerdict


def runbook_link() -> str:
    """The runbook as a link for the reports: the file of this checkout when it is there (a ``file://`` URL),
    else the path inside the project."""
    here = Path(__file__).resolve().parents[4] / RUNBOOK  # <checkout>/include/backups/commands/drill/render.py
    return here.as_uri() if here.is_file() else RUNBOOK


def render_markdown(v: DrillVerdict) -> str:
    t = v.targets
    md = [f"# Disaster-recovery drill {v.drill_id}: {'PASSED' if v.passed else 'FAILED'}", "",
          f"* application: {v.application}; started {v.at}, finished {v.finished_at}; run `{v.run_id or v.door}`",
          f"* targets: RTO {fmt_duration(t['rto_minutes'] * 60)}, RPO {fmt_duration(t['rpo_hours'] * 3600)} — measured: "
          f"RTO {fmt_duration(v.rto_seconds)} (slowest tier), RPO {fmt_duration(v.rpo_seconds)} (newest restorable "
          "data; RPO counts from when the data was read: the backup run's start in its manifest)",
          f"* next scheduled drill: {v.next_drill or 'none (manual: `backupctl drill` or trigger dr_drill)'}"
          + (f" (`{v.schedule}`)" if v.schedule else ""),
          f"* runbook: [{RUNBOOK}]({runbook_link()})", ""]
    md += ["## Findings", ""] + ([f"* {f}" for f in v.findings] or ["* none: every check passed and both targets were met"])
    md += ["", "## Tiers", "",
           "| tier | storage | snapshot | logical date | data read | RTO | RPO | files | size | MB/s | result |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in v.tiers:
        md.append(f"| {x['tier']} | {x['storage']} | {x['snapshot_id'] or '-'} | {x['logical_date'] or '-'} | "
                  f"{x.get('data_time') or '-'} | {fmt_duration(x['rto_seconds'])} | {fmt_duration(x['rpo_seconds'])} | {x['files']} | {fmt_bytes(x['bytes'])} | "
                  f"{x['throughput_mb_s'] if x['throughput_mb_s'] is not None else '-'} | "
                  f"{'pass' if x['passed'] else 'FAIL'} |")
    md += ["", "## Step timings (seconds)", "", "| tier | plan | isolate | thaw | restore | verify |", "|---|---|---|---|---|---|"]
    for x in v.tiers:
        s = x["steps"]
        md.append(f"| {x['tier']} | " + " | ".join("-" if s.get(k) is None else f"{s[k]:.2f}"
                                                  for k in ("plan", "isolate", "thaw", "restore", "verify")) + " |")
    md += ["", "## Checks", ""]
    for x in v.tiers:
        md += [f"### {x['tier']}", "", "| check | result | detail | s |", "|---|---|---|---|"]
        for c in x["checks"]:
            md.append(f"| {c['name']} | {'pass' if c['ok'] else 'FAIL'} | {str(c['detail']).replace('|', '/')} | {c['seconds']} |")
        for src, path in sorted(x["data_docs"].items()):
            md.append(f"\nGreat Expectations Data Docs for {src}: [{_rel(path, v)}]({_rel(path, v)})")
        md.append("")
    return "\n".join(md) + "\n"


def _rel(path: str, v: DrillVerdict) -> str:
    base = v.reports.get("dir")
    try:
        return os.path.relpath(path, base) if base else path
    except ValueError:
        return path


def history_chart(history: list[dict[str, Any]]) -> str | None:
    """A small PNG (base64) of RTO (minutes) and RPO (hours) over the drill history; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    pts = [h for h in history if h.get("at")][-30:]
    if not pts:
        return None
    xs = [datetime.fromisoformat(h["at"]) for h in pts]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6, 3.2), sharex=True)
    def val(h: dict[str, Any], key: str, unit: float) -> float:  # a drill that restored nothing: a gap, not 0
        return float("nan") if h.get(key) is None else h[key] / unit

    a1.plot(xs, [val(h, "rto_seconds", 60) for h in pts], marker="o", color="#1f77b4")
    a1.set_ylabel("RTO (min)")
    a2.plot(xs, [val(h, "rpo_seconds", 3600) for h in pts], marker="o", color="#ff7f0e")
    a2.set_ylabel("RPO (h)")
    for a, key in ((a1, "rto_minutes"), (a2, "rpo_hours")):
        target = pts[-1].get(key)
        if target:
            a.axhline(target, color="#d62728", linestyle="--", linewidth=1)
        for x, h in zip(xs, pts, strict=True):
            if not h.get("passed"):
                a.axvline(x, color="#d62728", alpha=0.15)
    from datetime import timedelta

    import matplotlib.dates as mdates

    if len(xs) == 1 or xs[0] == xs[-1]:  # one drill: a readable day around it, not years of empty axis
        a2.set_xlim(xs[0] - timedelta(days=1), xs[-1] + timedelta(days=1))
    locator = mdates.AutoDateLocator()
    a2.xaxis.set_major_locator(locator)
    a2.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    a1.set_title("drills: RTO (slowest tier) and RPO (newest restorable data); dashed: targets", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_html(v: DrillVerdict, history: list[dict[str, Any]]) -> str:
    from html import escape as e

    chart = history_chart(history)
    color = "#1a7f37" if v.passed else "#cf222e"
    rows = "".join(
        f"<tr><td>{e(x['tier'])}</td><td>{e(x['storage'])}</td><td>{e(x['snapshot_id'] or '-')}</td>"
        f"<td>{e(x['logical_date'] or '-')}</td><td>{e(x.get('data_time') or '-')}</td><td>{fmt_duration(x['rto_seconds'])}</td><td>{fmt_duration(x['rpo_seconds'])}</td>"
        f"<td>{x['files']}</td><td>{fmt_bytes(x['bytes'])}</td><td>{x['throughput_mb_s'] if x['throughput_mb_s'] is not None else '-'}</td>"
        f"<td style='color:{'#1a7f37' if x['passed'] else '#cf222e'}'>{'pass' if x['passed'] else 'FAIL'}</td></tr>"
        for x in v.tiers)
    checks = ""
    for x in v.tiers:
        checks += f"<h3>{e(x['tier'])}</h3><table><tr><th>check</th><th>result</th><th>detail</th><th>s</th></tr>"
        checks += "".join(f"<tr><td>{e(c['name'])}</td><td style='color:{'#1a7f37' if c['ok'] else '#cf222e'}'>"
                          f"{'pass' if c['ok'] else 'FAIL'}</td><td>{e(str(c['detail']))}</td><td>{c['seconds']}</td></tr>"
                          for c in x["checks"])
        checks += "</table>"
        checks += "".join(f"<p>Great Expectations Data Docs for {e(src)}: <a href='{e(_rel(p, v))}'>{e(_rel(p, v))}</a></p>"
                          for src, p in sorted(x["data_docs"].items()))
        s = x["steps"]
        checks += ("<p>steps (s): " + ", ".join(f"{k} {'-' if s.get(k) is None else f'{s[k]:.2f}'}"
                                                for k in ("plan", "isolate", "thaw", "restore", "verify")) + "</p>")
    findings = "".join(f"<li>{e(f)}</li>" for f in v.findings) or "<li>none: every check passed and both targets were met</li>"
    img = (f"<h2>RTO and RPO over the drill history</h2><img alt='RTO and RPO of the last drills' "
           f"src='data:image/png;base64,{chart}'>") if chart else ""
    t = v.targets
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>DR drill {e(v.drill_id)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}}</style></head><body>
<h1>Disaster-recovery drill {e(v.drill_id)}: <span style="color:{color}">{'PASSED' if v.passed else 'FAILED'}</span></h1>
<ul><li>application {e(v.application)}; started {e(v.at)}, finished {e(v.finished_at)}; run {e(v.run_id or v.door)}</li>
<li>targets: RTO {fmt_duration(t['rto_minutes'] * 60)}, RPO {fmt_duration(t['rpo_hours'] * 3600)} — measured:
RTO {fmt_duration(v.rto_seconds)} (slowest tier), RPO {fmt_duration(v.rpo_seconds)} (newest restorable data; RPO counts
from when the data was read: the backup run's start in its manifest)</li>
<li>next scheduled drill: {e(v.next_drill or 'none (manual)')}</li>
<li>runbook: <a href="{e(runbook_link())}">{RUNBOOK}</a></li></ul>
<h2>Findings</h2><ul>{findings}</ul>
<h2>Tiers</h2><table><tr><th>tier</th><th>storage</th><th>snapshot</th><th>logical date</th><th>data read</th><th>RTO</th><th>RPO</th>
<th>files</th><th>size</th><th>MB/s</th><th>result</th></tr>{rows}</table>
{img}
<h2>Checks</h2>{checks}
</body></html>
"""
