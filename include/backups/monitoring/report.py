"""The monitoring reports: ``status.html`` (tables and matplotlib plots embedded as base64 PNG), ``status.json``
(the contract), ``status.md`` (a short text summary) and ``history.jsonl`` (one compact line per run, for trends).

The newest reports are at stable paths in :func:`backups.monitoring.status_dir`; the history file keeps every run
(one line each, a few hundred bytes). Plots: snapshot size and duration over time per tier, age against the RPO
per tier, storage usage per storage, and — from the history — each tier's age over the recent runs.
"""

from __future__ import annotations

import base64
import io
import json
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..units import fmt_bytes, fmt_duration
from . import status_dir, status_path
from .store import HISTORY, append_jsonl, parse_iso, read_jsonl, write_atomic

if TYPE_CHECKING:
    from ..config import Config

_COLORS = {"ok": "#2e7d32", "warning": "#f9a825", "critical": "#c62828"}


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(status: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """title -> base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    tiers = status["tiers"]
    for what, key, unit, scale in (("Snapshot size", "size_bytes", "MB", 1e6),
                                   ("Backup duration", "duration_seconds", "s", 1.0)):
        fig, ax = plt.subplots(figsize=(7.5, 3.2))
        drawn = False
        for t in tiers:
            raw = [(parse_iso(h["logical_date"]), h[key]) for h in t.get("history") or [] if h.get(key) is not None]
            pts = [(x, y / scale) for x, y in raw if x is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=t["tier"])  # type: ignore[arg-type]  # matplotlib converts datetimes (its date units)
                drawn = True
        ax.set_title(f"{what} over time per tier")
        ax.set_ylabel(unit)
        if drawn:
            ax.legend(loc="best", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no snapshots yet", ha="center", va="center", transform=ax.transAxes)
        fig.autofmt_xdate()
        out[f"{what} over time per tier"] = _png(fig)
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    names = [t["tier"] for t in tiers]
    pcts, labels = [], []
    for t in tiers:
        rpo, age = t["rpo_seconds"], t["age_seconds"]
        if not rpo:
            pcts.append(0.0)
            labels.append(f"{_h(age)} (no RPO)" if age is not None else "never (no RPO)")
        elif age is None:
            pcts.append(250.0)
            labels.append("never")
        else:
            pcts.append(min(250.0, 100.0 * age / rpo))
            labels.append(f"{_h(age)} of {_h(rpo)}")
    bars = ax.bar(names, pcts, color=[_COLORS.get(t["state"], "#777") for t in tiers])
    for bar, label in zip(bars, labels, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 4, label, ha="center", va="bottom", fontsize=8)
    ax.axhline(100, color=_COLORS["warning"], linestyle="--", linewidth=1, label="RPO (overdue)")
    ax.axhline(200, color=_COLORS["critical"], linestyle="--", linewidth=1, label="2 x RPO (critical)")
    ax.set_ylim(0, 280)
    ax.set_ylabel("age, % of the RPO")
    ax.set_title("Age of the newest snapshot vs RPO")
    ax.legend(loc="upper left", fontsize=8)
    out["Age vs RPO"] = _png(fig)
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    st = status["storages"]
    used = [(s["used_bytes"] or 0) / 1e6 for s in st]
    bars = ax.bar([s["storage"] for s in st], used, color="#1565c0")
    for bar, s in zip(bars, st, strict=True):
        note = ("unreachable" if not s["reachable"] else
                f"{_mb(s['used_bytes'])}" + (f", {_mb(s['free_bytes'])} free" if s["free_bytes"] is not None else ""))
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), note, ha="center", va="bottom", fontsize=8,
                color=_COLORS["critical"] if not s["reachable"] else "black")
    ax.set_ylabel("MB used by backups")
    ax.set_ylim(0, max(used + [1.0]) * 1.25)
    ax.set_title("Storage usage per storage")
    out["Storage usage per storage"] = _png(fig)
    if history and len(history) >= 2:
        fig, ax = plt.subplots(figsize=(7.5, 3.2))
        for t in tiers:
            raw = [(parse_iso(h.get("at")), (h.get("ages") or {}).get(t["tier"])) for h in history]
            pts = [(x, y / 3600) for x, y in raw if x is not None and y is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=t["tier"])  # type: ignore[arg-type]  # matplotlib converts datetimes (its date units)
        ax.set_title("Age of the newest snapshot over the recent monitoring runs")
        ax.set_ylabel("hours")
        ax.legend(loc="best", fontsize=8)
        fig.autofmt_xdate()
        out["Age over time"] = _png(fig)
    return out


_h, _mb = fmt_duration, fmt_bytes  # the one unit system (backups.units)


def render_html(status: dict[str, Any], history: list[dict[str, Any]] | None = None) -> str:
    rows = "".join(
        f"<tr class='{t['state']}'><td>{escape(t['tier'])}</td><td>{escape(t['schedule'] or 'manual')}</td>"
        f"<td>{escape(t['newest_id'] or 'never')}</td><td>{escape(t['newest_type'] or '-')}</td>"
        f"<td>{_h(t['age_seconds'])}</td><td>{_h(t['rpo_seconds'])}</td><td>{'yes' if t['overdue'] else 'no'}</td>"
        f"<td>{_mb(t['size_bytes'])}</td><td>{_h(t['duration_seconds'])}</td>"
        f"<td>{escape(', '.join(t['storages']) or '-')}</td><td>{t['state'].upper()}</td></tr>" for t in status["tiers"])
    srows = "".join(
        f"<tr class='{'ok' if s['reachable'] and s['writable'] is not False else 'critical'}'><td>{escape(s['storage'])}</td>"
        f"<td>{escape(s['type'])}</td><td>{'yes' if s['reachable'] else 'NO'}</td>"
        f"<td>{'-' if s['writable'] is None else 'yes' if s['writable'] else 'NO'}</td><td>{_mb(s['used_bytes'])}</td>"
        f"<td>{_mb(s['free_bytes'])}</td><td>{s['snapshots']}</td><td>{escape(s['error'] or '')}</td></tr>"
        for s in status["storages"])
    prows = "".join(f"<tr class='{p['severity']}'><td>{p['severity'].upper()}</td><td><code>{escape(p['key'])}</code></td>"
                    f"<td>{escape(p['summary'])}</td><td>{escape(str(p.get('since') or ''))}</td><td>{p.get('runs', '')}</td></tr>"
                    for p in status["problems"]) or "<tr><td colspan=5>none</td></tr>"
    d = status.get("last_drill")
    drill = ("none recorded" if not d else
             f"{escape(d['id'])} at {escape(d['at'])}: {'passed' if d['passed'] else 'FAILED'}, RTO {_h(d.get('rto_seconds'))}, "
             f"RPO {_h(d.get('rpo_seconds'))}")
    imgs = "".join(f"<figure><img alt='{escape(title)}' src='data:image/png;base64,{b64}'><figcaption>{escape(title)}"
                   "</figcaption></figure>" for title, b64 in plots(status, history).items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Backup status {escape(status['application'])}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;margin-bottom:1.2em}}
td,th{{border:1px solid #ccc;padding:3px 7px;font-size:13px}}tr.ok td:last-child{{color:#2e7d32}}
tr.warning{{background:#fff8e1}}tr.critical{{background:#ffebee}}figure{{display:inline-block;margin:.5em}}</style>
</head><body><h1>Backups of {escape(status['application'])}: {status['state'].upper()}</h1>
<p>Generated {escape(status['generated_at'])}. Same data as <code>backupctl status</code>.</p>
<h2>Tiers</h2><table><tr><th>tier</th><th>schedule</th><th>newest</th><th>type</th><th>age</th><th>RPO</th><th>overdue</th>
<th>size</th><th>duration</th><th>storages</th><th>state</th></tr>{rows}</table>
<h2>Storages</h2><table><tr><th>storage</th><th>type</th><th>reachable</th><th>writable</th><th>used</th><th>free</th>
<th>snapshots</th><th>error</th></tr>{srows}</table>
<h2>Open problems</h2><table><tr><th>severity</th><th>key</th><th>summary</th><th>since</th><th>runs</th></tr>{prows}</table>
<h2>Last DR drill</h2><p>{drill}</p>
<h2>Trends</h2>{imgs}
</body></html>
"""


def history_record(status: dict[str, Any]) -> dict[str, Any]:
    return {"at": status["generated_at"], "state": status["state"],
            "ages": {t["tier"]: t["age_seconds"] for t in status["tiers"]},
            "sizes": {t["tier"]: t["size_bytes"] for t in status["tiers"]},
            "used": {s["storage"]: s["used_bytes"] for s in status["storages"]},
            "problems": [p["key"] for p in status["problems"]]}


def write_html(cfg: Config, status: dict[str, Any]) -> Path:
    d = status_dir(cfg)
    history = read_jsonl(d / HISTORY, limit=500)
    return write_atomic(d / "status.html", render_html(status, history))


def render_markdown(status: dict[str, Any]) -> str:
    lines = [f"# Backups of {status['application']}: {status['state'].upper()}", "", f"Generated {status['generated_at']}.", "",
             "| tier | newest | age | RPO | overdue | size | state |", "|---|---|---|---|---|---|---|"]
    for t in status["tiers"]:
        lines.append(f"| {t['tier']} | {t['newest_id'] or 'never'} | {_h(t['age_seconds'])} | {_h(t['rpo_seconds'])} | "
                     f"{'yes' if t['overdue'] else 'no'} | {_mb(t['size_bytes'])} | {t['state']} |")
    lines += ["", "| storage | reachable | writable | used | free | snapshots |", "|---|---|---|---|---|---|"]
    for s in status["storages"]:
        lines.append(f"| {s['storage']} | {s['reachable']} | {s['writable']} | {_mb(s['used_bytes'])} | "
                     f"{_mb(s['free_bytes'])} | {s['snapshots']} |")
    lines += ["", "## Open problems", ""] + ([f"- **{p['severity']}** `{p['key']}`: {p['summary']}" for p in status["problems"]]
                                             or ["none"])
    return "\n".join(lines) + "\n"


def document(cfg: Config, status: dict[str, Any]) -> dict[str, str]:
    """``status.md`` and one history line; returns the paths."""
    d = status_dir(cfg)
    md = write_atomic(d / "status.md", render_markdown(status))
    append_jsonl(d / HISTORY, history_record(status))
    return {"markdown": str(md), "history": str(d / HISTORY)}


def write_status(cfg: Config, status: dict[str, Any]) -> Path:
    """The contract document at its stable path (atomically)."""
    return write_atomic(status_path(cfg), json.dumps(status, indent=1, sort_keys=True, default=str))
