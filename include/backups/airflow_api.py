"""The one client of Airflow's public REST API: plain ``urllib``, no Airflow import, so every user shares it —
the run notes (``orchestration/run_notes.py``), the schedule check (``monitoring/schedules.py``), the local
launcher (``tools/airflow_local.py``) and the browser tests.

**Where the server is** — :func:`server_url` turns an HTTP connection's fields into the server's root URL:

* ``host`` may be a name (``airflow-api``), ``name:port`` or a URL (``https://airflow.example.com/airflow``, a
  path prefix of a server behind a proxy is kept); without a scheme, the connection's ``schema`` (``http`` or
  ``https``) or ``http``;
* ``port``: added when the host names none; a host naming another port is an error (which one is meant?);
* trailing ``/`` and a trailing ``/api/v2`` (the API's own prefix, often pasted with the URL) are dropped.

Request paths are under ``/api/v2`` (``"/dags/backup_daily"``) unless they begin with ``/api/`` or ``/auth/``.

**Who it is** — a bearer token: ``token`` (the connection's extra ``{"token": "<JWT>"}``) as given; else one from
``POST /auth/token`` with the login and password; without a login, ``GET /auth/token`` (the simple auth
manager's all-admins mode, a local ``airflow standalone``). A fetched token that expires (HTTP 401) is fetched
again once.

**Which connection** — one Airflow connection for everything, :data:`CONN_ID` ``backup_airflow_api`` (type
``http``); :data:`LEGACY_CONN_ID` ``airflow_api`` (the schedule check's old id) is still accepted, with a
deprecation warning. The Airflow layer looks them up (``orchestration/airflow_api.py``); this module only reads the
fields of whatever connection object it is given.
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

#: the Airflow connection (type http) to the API server: run notes, schedule verification, doctor
CONN_ID = "backup_airflow_api"
#: the schedule check's former connection id: still read (a deprecation warning) when CONN_ID is not defined
LEGACY_CONN_ID = "airflow_api"
API_PREFIX = "/api/v2"
_API_SUFFIX = re.compile(r"/api/v\d+$")


class AirflowApiError(Exception):
    """A request failed: ``status`` is the HTTP status (None when the server did not answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def server_url(host: str | None, port: int | str | None = None, scheme: str | None = None) -> str:
    """The API server's root URL (no trailing ``/``) from a connection's host, port and schema (see the module doc)."""
    text = (host or "").strip()
    if not text:
        raise ValueError("no host: set the connection's host to the API server's URL (e.g. http://airflow-api:8080)")
    if "://" not in text:
        text = f"{scheme if (scheme or '').lower() in ('http', 'https') else 'http'}://{text}"
    parts = urllib.parse.urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{host!r} is not an http(s) URL of the API server (e.g. http://airflow-api:8080)")
    try:
        own = parts.port
        extra = int(port) if port not in (None, "") else None
    except ValueError as exc:
        raise ValueError(f"bad port in {host!r} / {port!r}: {exc}") from None
    netloc = parts.netloc
    if extra is not None:
        if own is None:
            netloc = f"{netloc}:{extra}"
        elif own != extra:
            raise ValueError(f"the host {host!r} names port {own} but the port field says {extra}: keep one")
    path = _API_SUFFIX.sub("", parts.path.rstrip("/")).rstrip("/")
    return f"{parts.scheme.lower()}://{netloc}{path}"


class AirflowApi:
    """A small client of one API server (see the module doc); methods return the decoded JSON answer."""

    def __init__(self, url: str, *, login: str | None = None, password: str | None = None, token: str | None = None,
                 verify: bool | str = True, timeout: float = 20.0) -> None:
        self.base = server_url(url)
        self.login, self.password, self.timeout = login or None, password, timeout
        self._given_token, self._token = token, token
        self._ssl: ssl.SSLContext | None = None
        if self.base.startswith("https:") and verify is not True:
            self._ssl = (ssl.create_default_context(cafile=verify) if isinstance(verify, str)
                         else ssl._create_unverified_context())  # noqa: S323 - the connection's extra asked for it

    @classmethod
    def from_connection(cls, conn: Any, *, timeout: float = 20.0) -> AirflowApi:
        """From an Airflow connection (anything with ``host``, ``port``, ``schema``, ``login``, ``password``,
        ``extra_dejson``): extra ``token`` (a JWT instead of login/password) and ``verify`` (False, or a CA file)."""
        extra = getattr(conn, "extra_dejson", None) or {}
        return cls(server_url(conn.host, conn.port, conn.schema), login=conn.login, password=conn.password,
                   token=extra.get("token"), verify=extra.get("verify", True), timeout=timeout)

    def __repr__(self) -> str:
        return f"AirflowApi({self.base!r}, login={self.login!r})"

    # ---------------------------------------------------------------------------------------- plumbing
    def url(self, path: str) -> str:
        """The full URL of ``path`` (under ``/api/v2`` unless it begins with ``/api/`` or ``/auth/``)."""
        path = path if path.startswith("/") else "/" + path
        if not (path.startswith("/api/") or path.startswith("/auth/") or path == "/auth"):
            path = API_PREFIX + path
        return self.base + path

    def request(self, method: str, path: str, body: Any = None, *, params: dict[str, Any] | None = None,
                auth: bool = True) -> Any:
        url = self.url(path)
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None}, doseq=True)
        if query:
            url += ("&" if "?" in url else "?") + query
        for attempt in (1, 2):
            headers = {"Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            if auth:
                headers["Authorization"] = f"Bearer {self.token()}"
            req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                         headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:  # noqa: S310
                    raw = resp.read()
                break
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and auth and attempt == 1 and self._given_token is None and self._token:
                    self._token = None  # expired: fetch a new one once
                    continue
                detail = exc.read()[:300].decode("utf-8", "replace").strip()
                raise AirflowApiError(f"{method} {url}: HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else ""),
                                      exc.code) from None
            except (urllib.error.URLError, OSError) as exc:
                raise AirflowApiError(f"{method} {url}: {getattr(exc, 'reason', None) or exc}") from None
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError:
            raise AirflowApiError(f"{method} {url}: the answer is not JSON: {raw[:200]!r}") from None

    def token(self) -> str:
        """The bearer token (see the module doc), fetched once."""
        if self._token is None:
            if self.login:
                out = self.request("POST", "/auth/token", {"username": self.login, "password": self.password or ""},
                                   auth=False)
            else:
                try:
                    out = self.request("GET", "/auth/token", auth=False)
                except AirflowApiError as exc:
                    raise AirflowApiError("no login in the connection, and the server gives no token without one "
                                          f"(only the simple auth manager's all-admins mode does): {exc}",
                                          exc.status) from None
            if not isinstance(out, dict) or not out.get("access_token"):
                raise AirflowApiError(f"{self.base}/auth/token: no access_token in the answer")
            self._token = out["access_token"]
        return self._token

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Any, **params: Any) -> Any:
        return self.request("PATCH", path, body, params=params)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    # ---------------------------------------------------------------------------------------- calls
    def health(self) -> dict[str, Any]:
        """``/api/v2/monitor/health`` (no login needed)."""
        return self.request("GET", "/monitor/health", auth=False) or {}

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        """The DAG, or None when Airflow does not know it."""
        try:
            return self.get(f"/dags/{_q(dag_id)}")
        except AirflowApiError as exc:
            if exc.status == 404:
                return None
            raise

    def runs(self, dag_id: str, limit: int = 25) -> list[dict[str, Any]]:
        """The DAG's newest runs first."""
        out = self.get(f"/dags/{_q(dag_id)}/dagRuns", order_by="-run_after", limit=limit)
        return list((out or {}).get("dag_runs") or [])

    def import_errors(self, limit: int = 100) -> list[dict[str, Any]]:
        out = self.get("/importErrors", limit=limit)
        return list((out or {}).get("import_errors") or [])

    def set_run_note(self, dag_id: str, run_id: str, note: str) -> None:
        self.patch(f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}", {"note": note}, update_mask="note")


def _q(part: str) -> str:
    return urllib.parse.quote(str(part), safe="")
