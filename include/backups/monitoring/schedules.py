"""Schedule verification: every tier's DAG exists, is not paused, has no import error, and its last scheduled run
happened when its cron says it should have — read from Airflow's own metadata through its public REST API.

Why the REST API: in Airflow 3 a task cannot use the ORM, and the Task SDK's run queries
(``get_dr_count``/``get_dagrun_state``) know nothing of paused DAGs or import errors. :func:`collect` reads it
through :class:`backups.airflow_api.AirflowApi`, the one REST client (no Airflow import), built by the Airflow
layer from the one API connection ``backup_airflow_api`` (the run notes use it too).

:func:`check_schedules` is pure: it turns what the API returned into problems and per-DAG run facts.
"""

from __future__ import annotations

import urllib.parse
from datetime import datetime, timedelta
from typing import Any

from ..airflow_api import AirflowApi
from .store import iso, now_utc, parse_iso

#: a scheduled run may start this late after its cron time before it counts as missed
GRACE = timedelta(minutes=30)


def collect(api: AirflowApi, dag_ids: list[str]) -> dict[str, Any]:
    """What :func:`check_schedules` needs, read through ``api``: each DAG (or None), its recent runs, and the
    import errors. Raises :class:`~backups.airflow_api.AirflowApiError`."""
    dags = {}
    for d in dag_ids:
        info = api.dag(d)
        dags[d] = {"dag": info, "runs": api.runs(d) if info else []}
    return {"dags": dags, "import_errors": api.import_errors(), "base_url": api.base}


def _run_info(r: dict[str, Any], base: str | None) -> dict[str, Any]:
    url = f"{base}/dags/{r.get('dag_id')}/runs/{urllib.parse.quote(str(r.get('dag_run_id') or r.get('run_id')))}" if base else None
    return {"run_id": r.get("dag_run_id") or r.get("run_id"), "state": r.get("state"), "run_type": r.get("run_type"),
            "logical_date": r.get("logical_date"), "start": r.get("start_date"), "end": r.get("end_date"), "url": url}


def check_schedules(tiers: dict[str, str | None], api_data: dict[str, Any], *, now: datetime | None = None,
                    ui_url: str | None = None) -> dict[str, Any]:
    """``tiers``: dag_id -> cron (None: unscheduled). Returns ``{"problems": [...], "runs": {dag_id: {"last_run",
    "last_failure", "is_paused", "missed"}}}``."""
    from croniter import croniter

    now = now or now_utc()
    base = ui_url or api_data.get("base_url")
    problems: list[dict[str, Any]] = []
    runs_out: dict[str, Any] = {}
    errors = api_data.get("import_errors") or []
    for dag_id, cron in sorted(tiers.items()):
        rec = (api_data.get("dags") or {}).get(dag_id) or {}
        info, runs = rec.get("dag"), rec.get("runs") or []
        if info is None:
            err = next((e for e in errors if dag_id.removeprefix("backup_") in str(e.get("filename", ""))
                        or "backup_tiers" in str(e.get("filename", ""))), None)
            why = f": import error in {err.get('filename')}" if err else " (not parsed by Airflow)"
            problems.append({"key": f"dag-missing:{dag_id}", "severity": "critical",
                             "summary": f"DAG {dag_id} does not exist in Airflow{why}"})
            continue
        if info.get("has_import_errors"):
            problems.append({"key": f"dag-import-error:{dag_id}", "severity": "critical",
                             "summary": f"DAG {dag_id}: its file has an import error (Airflow runs the last good version)"})
        if cron and info.get("is_paused"):
            problems.append({"key": f"dag-paused:{dag_id}", "severity": "critical",
                             "summary": f"DAG {dag_id} is paused: its backups ({cron}) do not run"})
        last = runs[0] if runs else None
        failed = next((r for r in runs if r.get("state") == "failed"), None)
        scheduled = [r for r in runs if r.get("run_type") == "scheduled"]
        entry: dict[str, Any] = {"last_run": _run_info(last, base) if last else None,
                 "last_failure": ({**_run_info(failed, base), "at": failed.get("end_date") or failed.get("start_date")}
                                  if failed else None),
                 "is_paused": bool(info.get("is_paused")), "missed": None}
        if last is not None and last.get("state") == "failed":
            problems.append({"key": f"run-failed:{dag_id}", "severity": "warning",
                             "summary": f"DAG {dag_id}: the last run {last.get('dag_run_id')} failed"})
        if cron and not info.get("is_paused"):
            # the newest cron time that should have produced a run (its run starts after the interval it covers)
            it = croniter(cron, now - GRACE)
            expected = it.get_prev(datetime)
            stamps = [parse_iso(r.get("run_after") or r.get("logical_date")) for r in scheduled]
            have = [h for h in stamps if h is not None]
            newest = max(have) if have else None
            # a DAG added after that time is not late: Airflow's own next run is then later than it
            next_after = parse_iso(info.get("next_dagrun_run_after"))
            if (newest is None or newest < expected - timedelta(seconds=1)) and (
                    next_after is None or next_after <= expected):
                entry["missed"] = iso(expected)
                problems.append({"key": f"run-missed:{dag_id}", "severity": "warning",
                                 "summary": f"DAG {dag_id}: no scheduled run for {iso(expected)} ({cron}); newest "
                                            f"scheduled run: {iso(newest) if newest else 'none'} (scheduler down?)"})
        runs_out[dag_id] = entry
    return {"problems": problems, "runs": runs_out}
