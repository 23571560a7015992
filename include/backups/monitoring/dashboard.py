"""The "Backups" dashboard page: a pure function from the status document to one self-contained HTML page.

The Airflow plugin (``plugins/backups_dashboard.py``) serves it; this module imports nothing from Airflow so it is
unit-tested on its own. Everything that comes from the status document (tier, storage and snapshot names, error
messages, problem summaries) is user data and is escaped; URLs are built here from ids, never taken from the
document.

Freshness is recomputed at render time from ``newest_committed_at`` and ``rpo_seconds`` — a monitoring DAG that
stopped writing must not leave the page green — and combined with the document's own tier state (the worse wins):
green when the age is within the RPO, amber when it is past the RPO, red past twice the RPO or with no snapshot.
The page is laid out for the Airflow UI's iframe (relative links; the UI's views are under ``ui_base``).
"""

from __future__ import annotations

import base64
import hashlib
import math
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any
from urllib.parse import quote

from ..units import fmt_bytes, fmt_duration
from . import links as urls
from .store import parse_iso

STATES = ("ok", "warning", "critical")
_RANK = {s: i for i, s in enumerate(STATES)}
_LABEL = {"ok": "OK", "warning": "WARNING", "critical": "CRITICAL", "unknown": "n/a"}

#: the status document is itself flagged when it is older than this (the monitoring DAG runs every 30 min)
STALE_STATUS_AFTER = timedelta(hours=2)


# ---- small formatters -----------------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _q(value: Any) -> str:
    return quote(str(value), safe="")


def _when(value: Any) -> str:
    dt = parse_iso(value)
    if dt is None:
        return "—"
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _worse(a: str, b: str) -> str:
    if a not in _RANK:
        return b if b in _RANK else a
    if b not in _RANK:
        return a
    return a if _RANK[a] >= _RANK[b] else b


def freshness(tier: dict, now: datetime) -> tuple[str, float | None]:
    """(state, age_seconds at ``now``) of a tier: ok / warning / critical, or "unknown" without an RPO."""
    committed = parse_iso(tier.get("newest_committed_at"))
    age: float | None
    if committed is not None:
        age = max(0.0, (now - committed).total_seconds())
    else:
        age = tier.get("age_seconds") if isinstance(tier.get("age_seconds"), (int, float)) else None
    rpo = tier.get("rpo_seconds")
    has_snapshot = bool(tier.get("newest_id")) or committed is not None
    if not isinstance(rpo, (int, float)) or isinstance(rpo, bool) or rpo <= 0 or math.isinf(rpo):
        computed = "unknown"  # no RPO (a manual tier): no freshness verdict
    elif not has_snapshot or age is None:
        computed = "critical"
    elif age > 2 * rpo:
        computed = "critical"
    elif age > rpo:
        computed = "warning"
    else:
        computed = "ok"
    doc_state = tier.get("state")
    return _worse(computed, doc_state if doc_state in _RANK else "unknown"), age


# ---- the page -----------------------------------------------------------------------------------------------

_CSS = """
:root { --ok:#2e7d32; --ok-bg:#e8f5e9; --warning:#b26a00; --warning-bg:#fff4e0; --critical:#c62828;
        --critical-bg:#fdecea; --unknown:#555; --unknown-bg:#f1f1f1; --line:#d9d9d9; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 16px; color: #1b1b1b;
       background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 22px 0 8px; }
.meta { color: #555; margin-bottom: 8px; } .meta a { margin-right: 12px; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: 6px 8px;
        border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; background: #fafafa; } td.num { text-align: right; white-space: nowrap; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600; font-size: 12px;
         color: #fff; }
.badge.ok { background: var(--ok); } .badge.warning { background: var(--warning); }
.badge.critical { background: var(--critical); } .badge.unknown { background: var(--unknown); }
tr.state-ok td.age { background: var(--ok-bg); color: var(--ok); }
tr.state-warning td.age { background: var(--warning-bg); color: var(--warning); font-weight: 600; }
tr.state-critical td.age { background: var(--critical-bg); color: var(--critical); font-weight: 600; }
tr.state-critical td.tier-name { border-left: 4px solid var(--critical); }
tr.state-warning td.tier-name { border-left: 4px solid var(--warning); }
tr.state-ok td.tier-name { border-left: 4px solid var(--ok); }
.bar { height: 4px; background: #e0e0e0; border-radius: 2px; margin-top: 3px; min-width: 80px; }
.bar > span { display: block; height: 4px; border-radius: 2px; background: currentColor; }
.small { font-size: 12px; color: #555; } code { font-size: 12px; }
.banner { padding: 8px 12px; border-radius: 4px; margin: 8px 0; }
.banner.warning { background: var(--warning-bg); color: var(--warning); }
.banner.critical { background: var(--critical-bg); color: var(--critical); }
.empty { padding: 24px; border: 1px dashed var(--line); border-radius: 6px; max-width: 760px; }
.run-bad { color: var(--critical); font-weight: 600; }
li.problem-critical { color: var(--critical); } li.problem-warning { color: var(--warning); }
"""


#: Links into the Airflow UI open in the UI itself, not inside the iframe the UI shows this page in: the iframe is
#: sandboxed without top navigation but same-origin, so the script changes the parent's history and lets its
#: router follow (a plain link when the page is opened on its own). The page's only script; CSP allows it by hash.
_SCRIPT = (
    "document.addEventListener('click',function(ev){var a=ev.target.closest&&ev.target.closest('a[data-ui]');"
    "if(!a||ev.button!==0||ev.ctrlKey||ev.metaKey||ev.shiftKey||window.top===window)return;"
    "try{var u=new URL(a.href,location.href);if(u.origin!==window.top.location.origin)return;"
    "window.top.history.pushState(null,'',u.pathname+u.search+u.hash);"
    "window.top.dispatchEvent(new PopStateEvent('popstate',{state:null}));ev.preventDefault();}catch(e){}});"
)
SCRIPT_CSP_HASH = "'sha256-" + base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode() + "'"


def _badge(state: str) -> str:
    s = state if state in _LABEL else "unknown"
    return f'<span class="badge {s}">{_LABEL[s]}</span>'


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n"
        f"<script>{_SCRIPT}</script>\n</body></html>\n"
    )


def render_empty(*, reason: str | None = None, ui_base: str = "../", monitoring_dag: str = "backup_monitoring") -> str:
    """The page shown when no status document exists yet."""
    dag = f"{ui_base}dags/{_q(monitoring_dag)}"
    body = (
        "<h1>Backups</h1>"
        '<div class="empty" id="empty-state"><h2>No monitoring status yet</h2>'
        f"<p>The dashboard reads the status that the <a data-ui href=\"{_e(dag)}\"><code>{_e(monitoring_dag)}</code></a> "
        "DAG writes. Unpause and trigger it (it runs every 30 minutes), then reload this page.</p>"
        "<p>Without Airflow's scheduler, <code>backupctl status</code> (<code>--json</code> for the document) "
        "runs the same checks on this machine and prints the result.</p>"
        + (f'<p class="small">Details: {_e(reason)}</p>' if reason else "")
        + "</div>"
    )
    return _page("Backups — no status", body)


def render_dashboard(
    status: dict | None,
    *,
    now: datetime | None = None,
    ui_base: str = "../",
    source: str | None = None,
    reports_href: dict[str, str] | None = None,
    metrics_href: str | None = "metrics",
    monitoring_dag: str = "backup_monitoring",
    links_base: str = "..",
) -> str:
    """The dashboard HTML for a status document (``None`` -> the empty state).

    ``ui_base`` is the relative URL of the Airflow UI root seen from the page (DAG run links are
    ``{ui_base}dags/<dag_id>/runs/<run_id>``); ``reports_href`` maps ``"html"``/``"json"`` to where the page can
    link the reports (the plugin serves them); ``source`` says where the status was read from; ``links_base`` is
    the URL of the server root seen from the page (the drill and backup reports are at ``<links_base>/backups/…``:
    :mod:`backups.monitoring.links`).
    """
    if not status or not isinstance(status, dict):
        return render_empty(ui_base=ui_base, monitoring_dag=monitoring_dag)
    now = now or datetime.now(UTC)
    parts: list[str] = []
    tiers = [t for t in status.get("tiers") or [] if isinstance(t, dict)]
    storages = [s for s in status.get("storages") or [] if isinstance(s, dict)]
    problems = [p for p in status.get("problems") or [] if isinstance(p, dict)]

    tier_states = _tier_states(tiers, problems, now)
    overall: str = status["state"] if status.get("state") in _RANK else "ok"
    for st, _age in tier_states.values():
        overall = _worse(overall, st)
    parts += _header(status, overall, now, source=source, ui_base=ui_base, reports_href=reports_href,
                     metrics_href=metrics_href, monitoring_dag=monitoring_dag)
    parts.append("<h2>Tiers</h2>")
    if not tiers:
        parts.append("<p>No tiers in the status.</p>")
    else:
        parts.append(
            '<table id="tiers"><thead><tr><th>Tier</th><th>State</th><th>Newest snapshot</th>'
            "<th>Age / RPO</th><th>Size</th><th>Duration</th><th>Storages</th><th>Last run</th>"
            "<th>Last failure</th><th>Last verification</th></tr></thead><tbody>"
        )
        for t in tiers:
            parts.append(_tier_row(t, *tier_states[id(t)], ui_base=ui_base, links_base=links_base))
        parts.append("</tbody></table>")
    parts += _storages_section(storages)
    parts += _drill_section(status.get("last_drill"), links_base)
    parts += _problems_section(problems)
    return _page(f"Backups — {_LABEL.get(overall, overall)}", "\n".join(parts))


def _tier_states(tiers: list[dict], problems: list[dict], now: datetime) -> dict[int, tuple[str, float | None]]:
    """(state, age) per tier (by ``id``): freshness and the document's verdict, and never OK while one of the tier's
    own problems is open."""
    from .health import problem_tier

    states = {id(t): freshness(t, now) for t in tiers}
    for p in problems:
        sev: str = p["severity"] if p.get("severity") in _RANK else "warning"
        for t in tiers:
            if problem_tier(p.get("key")) == t.get("tier"):
                st, age = states[id(t)]
                states[id(t)] = (_worse(st, sev), age)
    return states


def _header(status: dict, overall: str, now: datetime, *, source: str | None, ui_base: str,
            reports_href: dict[str, str] | None, metrics_href: str | None, monitoring_dag: str) -> list[str]:
    """The title with the overall state, when and where the status comes from, the links, the stale banner."""
    app = status.get("application") or ""
    parts = [f"<h1>Backups{(' — ' + _e(app)) if app else ''} {_badge(overall)}</h1>"]
    gen = parse_iso(status.get("generated_at"))
    meta = [f"status generated {_e(_when(status.get('generated_at')))}"]
    if gen is not None:
        meta[0] += f" ({_e(fmt_duration((now - gen).total_seconds()))} ago)"
    if source:
        meta.append(f"from {_e(source)}")
    parts.append(f'<div class="meta">{" · ".join(meta)}</div>')
    links = [f'<a data-ui href="{_e(ui_base)}dags/{_q(monitoring_dag)}/runs">monitoring runs</a>']
    for kind, label in (("html", "status report"), ("json", "report JSON")):
        if reports_href and reports_href.get(kind):
            links.append(f'<a href="{_e(reports_href[kind])}">{label}</a>')
    if metrics_href:
        links.append(f'<a href="{_e(metrics_href)}">Prometheus metrics</a>')
    parts.append(f'<div class="meta">{"".join(links)}</div>')
    if gen is None or now - gen > STALE_STATUS_AFTER:
        age_txt = "unknown age" if gen is None else fmt_duration((now - gen).total_seconds()) + " old"
        parts.append(
            f'<div class="banner warning" id="stale-status">This status is {_e(age_txt)}: is the '
            f"<code>{_e(monitoring_dag)}</code> DAG paused or failing? Ages below are recomputed for now.</div>"
        )
    return parts


def _storages_section(storages: list[dict]) -> list[str]:
    parts = ["<h2>Storages</h2>"]
    if not storages:
        return parts + ["<p>No storages in the status.</p>"]
    parts.append(
        '<table id="storages"><thead><tr><th>Storage</th><th>Type</th><th>Reachable</th><th>Writable</th>'
        '<th class="num">Used</th><th class="num">Free</th><th class="num">Snapshots</th><th>Verification</th>'
        "<th>Error</th></tr></thead><tbody>"
    )
    for s in storages:
        reach = s.get("reachable")
        st = "ok" if reach else ("critical" if reach is False else "unknown")
        writable = s.get("writable")
        parts.append(
            f'<tr class="state-{st}" data-storage="{_e(s.get("storage"))}">'
            f'<td class="tier-name">{_e(s.get("storage"))}</td><td>{_e(s.get("type"))}</td>'
            f"<td>{_badge(st) if reach is not None else '—'}</td>"
            f"<td>{'yes' if writable else ('no' if writable is False else '—')}</td>"
            f'<td class="num">{_e(fmt_bytes(s.get("used_bytes")))}</td>'
            f'<td class="num">{_e(fmt_bytes(s.get("free_bytes")))}</td>'
            f'<td class="num">{_e(s.get("snapshots", "—"))}</td>'
            f"<td>{_storage_verification_cell(s)}</td>"
            f'<td class="small">{_e(s.get("error") or "")}</td></tr>'
        )
    return parts + ["</tbody></table>"]


def _drill_section(drill: Any, links_base: str) -> list[str]:
    parts = ["<h2>Last DR drill</h2>"]
    if not isinstance(drill, dict):
        return parts + ['<p id="drill">No drill recorded.</p>']
    st = "ok" if drill.get("passed") else "critical"
    did = str(drill.get("id") or "")
    # the plugin serves the reports (never a filesystem path on the page): this drill's, and the newest one
    link = (f' · <a id="drill-report" href="{_e(urls.drill_report_url(did, base=links_base))}">report</a>'
            if urls.DRILL_ID.match(did) else "")
    link += f' · <a href="{_e(urls.drill_report_url("latest", base=links_base))}">latest drill report</a>'
    return parts + [
        f'<p id="drill">{_badge(st)} <code>{_e(did)}</code> at {_e(_when(drill.get("at")))} — '
        f"RTO {_e(fmt_duration(drill.get('rto_seconds')))}, RPO {_e(fmt_duration(drill.get('rpo_seconds')))}"
        + link + "</p>"]


def _problems_section(problems: list[dict]) -> list[str]:
    parts = [f"<h2>Open problems ({len(problems)})</h2>"]
    if not problems:
        return parts + ['<p id="problems">None.</p>']
    items = []
    for p in problems:
        sev: str = p["severity"] if p.get("severity") in _RANK else "warning"
        items.append(
            f'<li class="problem-{sev}" data-key="{_e(p.get("key"))}">{_badge(sev)} {_e(p.get("summary"))} '
            f'<span class="small">(<code>{_e(p.get("key"))}</code>, since {_e(_when(p.get("since")))}, '
            f"{_e(p.get('runs', 1))} check(s))</span></li>"
        )
    return parts + [f'<ul id="problems">{"".join(items)}</ul>']


def _storage_verification_cell(s: dict) -> str:
    """The storage's verification record: unreadable / damaged / foreign (red), open failures (red), else the last
    verification."""
    rec = s.get("verification_record")
    if not s.get("reachable") or not isinstance(rec, dict):
        return "—"
    if rec.get("problem"):
        return f'{_badge("critical")} <div class="small">record {_e(rec.get("state"))}</div>'
    opened = s.get("open_failures") if isinstance(s.get("open_failures"), dict) else {}
    if opened:
        ids = ", ".join(sorted(str(k) for k in opened)[:3])
        return f'{_badge("critical")} <div class="small">{len(opened)} open failure(s): {_e(ids)}</div>'
    last = s.get("last_verification") if isinstance(s.get("last_verification"), dict) else None
    if last:
        kind = "read-data" if last.get("read_data") else "structure"
        return f'{_badge("ok")} <div class="small">{kind}, {_e(_when(last.get("at")))}</div>'
    return '<span class="small">no verify run yet</span>'


def _verification_cell(t: dict) -> str:
    """The tier's verification verdict: "—" without a snapshot (no verdict), else OK / never / overdue / FAILED /
    record unreadable, with when and where."""
    if not t.get("newest_id"):
        return '<span class="small" title="no snapshot: nothing to verify">—</span>'
    v = t.get("verification")
    ver = t.get("last_verification") if isinstance(t.get("last_verification"), dict) else {}
    if not isinstance(v, dict):  # a status written before the verdict existed
        if ver:
            vst = "ok" if ver.get("ok") else "critical"
            return f'{_badge(vst)} <div class="small">{_e(_when(ver.get("at")))} on {_e(ver.get("storage"))}</div>'
        return "never"
    state = v.get("state")
    where = f" on {_e(v.get('storage'))}" if v.get("storage") else ""
    if state == "ok":
        return f'{_badge("ok")} <div class="small">{_e(_when(v.get("at")))}{where}</div>'
    if state == "never":
        return f'{_badge("warning")} <div class="small">never verified</div>'
    if state == "overdue":
        return (f'{_badge("warning")} <div class="small">overdue: last passed {_e(_when(v.get("at")))}{where} '
                f'(window {_e(v.get("max_age_days"))} d)</div>')
    if state == "failed":
        f = (v.get("failures") or [{}])[0]
        sev: str = v["severity"] if v.get("severity") in _RANK else "critical"
        return (f'{_badge(sev)} <div class="small">FAILED since {_e(_when(f.get("since")))}: snapshot '
                f'<code>{_e(f.get("snapshot"))}</code>{where}</div>')
    if state == "unknown":
        return f'{_badge("critical")} <div class="small">verification record unreadable{where}</div>'
    return "—"


def _tier_row(t: dict, state: str, age: float | None, *, ui_base: str, links_base: str = "..") -> str:
    name = t.get("tier")
    dag_id = t.get("dag_id")
    rpo = t.get("rpo_seconds")
    newest = t.get("newest_id")
    if newest:
        snap = f"<code>{_e(newest)}</code>"
        if urls.SNAPSHOT_ID.match(str(newest)):  # its result document, served by the plugin
            href = urls.backup_report_url(str(newest), base=links_base)
            snap = f'<a class="backup-report" href="{_e(href)}" title="result document">{snap}</a>'
        logical = _when(t.get("newest_logical_date")) if t.get("newest_logical_date") else ""
        detail = " · ".join(_e(x) for x in (t.get("newest_type") or "", logical) if x)
        snap += f'<div class="small">{detail}</div>' if detail else ""
    else:
        snap = "<em>no snapshot</em>"
    if isinstance(rpo, (int, float)) and not isinstance(rpo, bool) and rpo > 0 and not math.isinf(rpo):
        pct = 100.0 if age is None else min(100.0, 100.0 * age / (2 * rpo))
        age_cell = (
            f"{_e(fmt_duration(age) if age is not None else 'never')} / {_e(fmt_duration(rpo))}"
            f'<div class="bar"><span style="width:{pct:.0f}%"></span></div>'
        )
    else:
        age_cell = f"{_e(fmt_duration(age) if age is not None else 'never')} / no RPO"
    runs_href = f"{ui_base}dags/{_q(dag_id)}/runs" if dag_id else None

    def run_link(run: Any, at_key: str) -> str:
        if not isinstance(run, dict) or not run.get("run_id"):
            return "—"
        state = str(run.get("state") or "") if at_key == "start" else "failed"
        css = "run-bad" if state in ("failed", "upstream_failed") else "run"
        label = f'<span class="{css}">{_e(state or "run")}</span>'
        when = _e(_when(run.get(at_key) or run.get("end")))
        if dag_id:
            href = f"{ui_base}dags/{_q(dag_id)}/runs/{_q(run['run_id'])}"
            return f'<a data-ui href="{_e(href)}" title="{_e(run["run_id"])}">{label}</a><div class="small">{when}</div>'
        return f'{label}<div class="small">{when}</div>'

    ver_cell = _verification_cell(t)
    name_cell = _e(name)
    if runs_href:
        name_cell += f'<div class="small"><a data-ui href="{_e(runs_href)}">{_e(dag_id)}</a></div>'
    return (
        f'<tr class="state-{_e(state)}" data-tier="{_e(name)}" data-state="{_e(state)}">'
        f'<td class="tier-name">{name_cell}</td><td>{_badge(state)}</td><td>{snap}</td>'
        f'<td class="age">{age_cell}</td>'
        f'<td class="num">{_e(fmt_bytes(t.get("size_bytes")))}</td>'
        f'<td class="num">{_e(fmt_duration(t.get("duration_seconds")))}</td>'
        f'<td>{_e(", ".join(str(s) for s in t.get("storages") or []) or "—")}</td>'
        f"<td>{run_link(t.get('last_run'), 'start')}</td><td>{run_link(t.get('last_failure'), 'at')}</td>"
        f"<td>{ver_cell}</td></tr>"
    )


def render_backup_report(snapshot_id: str, markdown: str, *, storage: str, ui_base: str = "../../../") -> str:
    """A backup run's result document (its Markdown, from the repository) as a page of the plugin: rendered with
    raw HTML disabled (the document holds user data: comments, names), with a link to its JSON form."""
    try:
        from markdown_it import MarkdownIt

        body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    except ImportError:  # pragma: no cover - markdown-it-py comes with Airflow (rich)
        body = f"<pre>{_e(markdown)}</pre>"
    head = (f'<div class="meta">result document of <code>{_e(snapshot_id)}</code>, read from storage '
            f'<code>{_e(storage)}</code> · <a href="report.json">JSON</a> · <a href="{_e(ui_base)}backups/">'
            "Backups page</a></div>")
    return _page(f"Backup {snapshot_id}", head + "\n" + body)
