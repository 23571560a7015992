"""The "Backups" page in the Airflow UI, and Prometheus metrics (issue 12).

An Airflow 3 plugin: a FastAPI app the API server mounts at ``/backups`` and an external view "Backups" in the
navigation (Browse menu) that shows it inside the UI.

* ``GET /backups/``            the dashboard (HTML; rendering in ``backups.monitoring.dashboard``)
* ``GET /backups/status.json`` the status document as read
* ``GET /backups/metrics``     Prometheus text format (``backups.monitoring.metrics``)
* ``GET /backups/reports/html|json`` and ``/backups/reports/<file>``: the monitoring report and its images
* ``GET /backups/drills/latest``, ``/backups/drills/<drill id>`` (HTML with its chart; ``.json``/``.md`` too) and
  ``/backups/drills/<drill id>.datadocs/…``: the drill reports and their Great Expectations Data Docs
* ``GET /backups/snapshots/<snapshot id>/report`` (``report.json``, ``report.md``): a backup run's result document
  (``reports/<tier>/<id>.*`` on the first storage holding it)

Which file a request may read is decided by ``backups.monitoring.links`` (ids validated, no path traversal).

Security: plugin FastAPI apps are **not** protected by Airflow automatically. Every route here depends on
Airflow's own authentication (``get_user``: the UI's session cookie or an ``Authorization: Bearer`` JWT from
``POST /auth/token``) and on the auth manager's permission to read the runs of the ``backup_monitoring`` DAG.
An anonymous browser is redirected to the login page; any other anonymous client gets 401. ``/metrics`` also
answers without a token to client addresses in ``[backups] metrics_allow_from`` (comma-separated IPs or CIDRs;
env ``AIRFLOW__BACKUPS__METRICS_ALLOW_FROM``; empty = nobody), for a Prometheus that cannot log in.

Data: the status document from the Airflow Variable ``backup_monitoring_status`` (written by the monitoring
DAG), else the file ``backups.monitoring.status_path(cfg)`` (cfg from ``$BACKUP_CONFIG``). A page load reads
that one document; it never lists a repository.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from backups.monitoring import STATUS_VARIABLE, status_dir, status_path
from backups.monitoring.dashboard import SCRIPT_CSP_HASH, render_backup_report, render_dashboard, render_empty
from backups.monitoring.links import MEDIA, SNAPSHOT_ID, backup_report, drill_file
from backups.monitoring.metrics import CONTENT_TYPE, render_prometheus

log = logging.getLogger(__name__)

URL_PREFIX = "/backups"
MONITORING_DAG = os.environ.get("BACKUP_MONITORING_DAG_ID", "backup_monitoring")
_REPORT_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.(png|svg|html|json|css)$")


# ---- access ---------------------------------------------------------------------------------------------------

def _authorize(user: Any) -> None:
    """403 unless the auth manager lets ``user`` read the runs of the monitoring DAG."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    allowed = get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=MONITORING_DAG), user=user
    )
    if not allowed:
        raise HTTPException(status_code=403, detail=f"Forbidden: needs read access to the runs of {MONITORING_DAG}")


async def _authenticated_user(request: Request) -> Any:
    """Airflow's own authentication: the session cookie of the UI, or a Bearer JWT (raises 401/403)."""
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.security import HTTPBearer

    bearer = await HTTPBearer(auto_error=False)(request)
    return await get_user(request, None, bearer)


async def require_user(request: Request) -> Any:
    user = await _authenticated_user(request)
    _authorize(user)
    return user


def metrics_allow_list() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``[backups] metrics_allow_from`` parsed; a malformed entry is logged and ignored (fails closed)."""
    from airflow.configuration import conf

    raw = conf.get("backups", "metrics_allow_from", fallback="") or ""
    nets = []
    for item in (x.strip() for x in raw.split(",")):
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            log.error("[backups] metrics_allow_from: %r is not an IP address or CIDR network; ignored", item)
    return nets


def _client_allowed(request: Request) -> bool:
    host = request.client.host if request.client else None
    if not host:
        return False
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return any(addr in net for net in metrics_allow_list())


async def require_metrics_access(request: Request) -> None:
    if _client_allowed(request):
        return
    await require_user(request)


UserDep = Annotated[Any, Depends(require_user)]
MetricsAccessDep = Annotated[None, Depends(require_metrics_access)]


# ---- data -----------------------------------------------------------------------------------------------------

_CFG_CACHE: dict[str, Any] = {}


def _config() -> Any:
    """The backup config named by $BACKUP_CONFIG (cached by path and mtime), or None when it does not load."""
    from backups.config import config_path, load_config

    try:
        path = config_path()
        key = f"{path}:{path.stat().st_mtime_ns}"
    except OSError:
        return None
    if key not in _CFG_CACHE:
        try:
            _CFG_CACHE.clear()
            _CFG_CACHE[key] = load_config(path)
        except Exception as exc:  # a broken config must not break the page: fall back to the default folder
            log.warning("backups dashboard: cannot load %s: %s", path, exc)
            _CFG_CACHE[key] = None
    return _CFG_CACHE[key]


def load_status() -> tuple[dict | None, str, str | None]:
    """(status or None, where it came from, why it is missing)."""
    problem = None
    try:
        from airflow.models import Variable

        # the server-side model: the API server has the metadata DB (airflow.sdk.Variable is for tasks)
        raw = Variable.get(STATUS_VARIABLE, default_var=None)  # noqa: AIR311
    except Exception as exc:
        raw, problem = None, f"cannot read the Variable {STATUS_VARIABLE}: {type(exc).__name__}"
    if raw:
        try:
            doc = json.loads(raw) if isinstance(raw, str) else raw
            if isinstance(doc, dict):
                return doc, f"Variable {STATUS_VARIABLE}", None
            problem = f"the Variable {STATUS_VARIABLE} is not a JSON object"
        except ValueError:
            problem = f"the Variable {STATUS_VARIABLE} is not valid JSON"
    path = status_path(_config())
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, str(path), problem or f"no Variable {STATUS_VARIABLE} and no file {path}"
    except (OSError, ValueError) as exc:
        return None, str(path), f"cannot read {path}: {exc}"
    if not isinstance(doc, dict):
        return None, str(path), f"{path} is not a JSON object"
    return doc, str(path), None


def _report_dir_allowed(path: Path) -> bool:
    """Reports are served only from the monitoring folder (status_dir), never from an arbitrary path."""
    try:
        root = status_dir(_config()).resolve()
        return path.resolve().is_relative_to(root)
    except OSError:
        return False


def _report_path(status: dict | None, kind: str) -> Path | None:
    reports = (status or {}).get("reports") or {}
    value = reports.get(kind) if isinstance(reports, dict) else None
    if not value or not isinstance(value, str):
        return None
    p = Path(value)
    suffix = ".html" if kind == "html" else ".json"
    if p.suffix != suffix or not p.is_file() or not _report_dir_allowed(p):
        return None
    return p


# ---- the app --------------------------------------------------------------------------------------------------

app = FastAPI(title="Backups dashboard", docs_url=None, redoc_url=None, openapi_url=None)


@app.exception_handler(StarletteHTTPException)
async def _unauthenticated_browser_to_login(request: Request, exc: StarletteHTTPException) -> Response:
    """A browser without a session is sent to Airflow's login page (then back); API clients get the status code."""
    accepts_html = "text/html" in request.headers.get("accept", "")
    if exc.status_code == 401 and accepts_html and request.method == "GET":
        try:
            from airflow.api_fastapi.app import get_auth_manager

            return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)
        except Exception:  # fall through to the plain 401
            pass
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    # framed only by the Airflow UI itself (same origin); the page's one script (UI links) allowed by its hash
    "Content-Security-Policy": f"default-src 'none'; script-src {SCRIPT_CSP_HASH}; style-src 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'self'",
}


@app.get("/", response_class=HTMLResponse)
def dashboard(request: Request, _user: UserDep) -> HTMLResponse:
    status, source, problem = load_status()
    if status is None:
        html = render_empty(reason=problem, ui_base="../", monitoring_dag=MONITORING_DAG)
    else:
        hrefs = {k: f"reports/{k}" for k in ("html", "json") if _report_path(status, k)}
        html = render_dashboard(
            status, source=source, ui_base="../", reports_href=hrefs, metrics_href="metrics",
            monitoring_dag=MONITORING_DAG,
        )
    return HTMLResponse(html, headers=_SECURITY_HEADERS)


@app.get("/status.json")
def status_json(_user: UserDep) -> JSONResponse:
    status, source, problem = load_status()
    if status is None:
        return JSONResponse({"detail": problem, "source": source}, status_code=404)
    return JSONResponse(status, headers={"Cache-Control": "no-store"})


@app.get("/metrics")
def metrics(_access: MetricsAccessDep) -> Response:
    status, _source, problem = load_status()
    if status is None:
        # no status yet: say so in a scrapeable way (an empty body would look like "all fine")
        body = (
            "# HELP backup_status_available 1 when the backup monitoring status document exists.\n"
            "# TYPE backup_status_available gauge\nbackup_status_available 0\n"
        )
        return Response(body, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})
    body = render_prometheus(status)
    body += (
        "# HELP backup_status_available 1 when the backup monitoring status document exists.\n"
        "# TYPE backup_status_available gauge\nbackup_status_available 1\n"
    )
    return Response(body, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})


#: a report is generated from user data: no scripts, no forms, no navigation of the Airflow UI around it
_REPORT_CSP = "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; frame-ancestors 'self'"
#: Great Expectations Data Docs need their scripts and styles (from public CDNs): they run sandboxed without
#: same-origin rights, so they cannot read the Airflow session or call its API
_DATADOCS_CSP = ("sandbox allow-scripts allow-popups; default-src 'self'; script-src 'self' 'unsafe-inline' "
                 "'unsafe-eval' https:; style-src 'self' 'unsafe-inline' https:; img-src 'self' data: https:; "
                 "font-src 'self' data: https:; connect-src 'none'; form-action 'none'; frame-ancestors 'self'")


def _file(path: Path, *, csp: str = _REPORT_CSP) -> FileResponse:
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    if path.suffix in (".html", ".svg"):
        headers["Content-Security-Policy"] = csp
    return FileResponse(path, headers=headers, media_type=MEDIA.get(path.suffix.lower()))


@app.get("/reports/{name}")
def report(name: str, _user: UserDep) -> Response:
    status, _source, _problem = load_status()
    if name in ("html", "json"):
        path = _report_path(status, name)
        if path is None:
            raise HTTPException(status_code=404, detail=f"no {name} report yet (run {MONITORING_DAG})")
        return _file(path)
    # a file next to the HTML report (its plots)
    html = _report_path(status, "html")
    if html is None or not _REPORT_FILE.match(name):
        raise HTTPException(status_code=404, detail="not found")
    path = html.parent / name
    if not path.is_file() or not _report_dir_allowed(path):
        raise HTTPException(status_code=404, detail="not found")
    return _file(path)


@app.get("/drills/{path:path}")
def drill_report(path: str, _user: UserDep) -> Response:
    """A drill's report (``latest``, ``<drill id>``, ``<drill id>.json``…) or a file of its Data Docs."""
    from backups.commands.drill.common import drill_dir

    found = drill_file(drill_dir(_config()), path)
    if found is None:
        raise HTTPException(status_code=404, detail=f"no drill report {path!r} (run the dr_drill DAG or "
                                                    "`backupctl drill`)")
    return _file(found, csp=_DATADOCS_CSP if "/" in path else _REPORT_CSP)


@app.get("/snapshots/{snapshot_id}/{name}")
def backup_result(snapshot_id: str, name: str, _user: UserDep) -> Response:
    """A backup run's result document: ``report`` (HTML), ``report.json`` or ``report.md``."""
    ext = {"report": "md", "report.md": "md", "report.json": "json"}.get(name)
    if ext is None or not SNAPSHOT_ID.match(snapshot_id):
        raise HTTPException(status_code=404, detail="not found")
    cfg = _config()
    found = backup_report(cfg, snapshot_id, ext, _resolver(cfg)) if cfg is not None else None
    if found is None:
        raise HTTPException(status_code=404, detail=f"no result document of {snapshot_id} on any storage")
    data, storage = found
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    if name == "report":
        page = render_backup_report(snapshot_id, data.decode("utf-8", "replace"), storage=storage)
        return HTMLResponse(page, headers=_SECURITY_HEADERS)
    return Response(data, media_type=MEDIA[f".{ext}"], headers={**headers, "Content-Security-Policy": _REPORT_CSP})


def _resolver(cfg: Any) -> Any:
    """The Airflow connection resolver for remote storages (None when the config needs none, or it cannot load)."""
    try:
        from backups.orchestration.connections import task_resolver

        return task_resolver(cfg)
    except Exception as exc:  # noqa: BLE001 - local storages are still read
        log.warning("backups dashboard: no connection resolver: %s", exc)
        return None


class SlashRedirect:
    """Root ASGI middleware: ``/backups`` (no trailing slash) is redirected to ``/backups/``. The dashboard is
    mounted at the prefix, so without this the bare prefix falls through to the Airflow UI's "not found" page.
    The redirect is relative (``backups/``), so it also works behind a proxy that serves Airflow under a sub-path."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") in (URL_PREFIX, scope.get("root_path", "") + URL_PREFIX):
            query = scope.get("query_string", b"")
            location = URL_PREFIX.rsplit("/", 1)[-1] + "/" + ("?" + query.decode("latin-1") if query else "")
            await send({"type": "http.response.start", "status": 307,
                        "headers": [(b"location", location.encode("latin-1")), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


class BackupsDashboardPlugin(AirflowPlugin):
    name = "backups_dashboard"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Backups dashboard"}]
    fastapi_root_middlewares = [
        {"middleware": SlashRedirect, "args": [], "kwargs": {}, "name": "Backups dashboard: /backups -> /backups/"}
    ]
    external_views = [
        {
            "name": "Backups",
            # relative to the UI's base URL (works behind a proxy sub-path); shown in an iframe at /plugin/backups
            "href": "backups/",
            "destination": "nav",
            "category": "browse",
            "url_route": "backups",
        }
    ]
