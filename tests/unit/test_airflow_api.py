"""The one Airflow REST client (``backups.airflow_api``): where a connection's fields point (ports, schemes,
trailing slashes, the ``/api/v2`` prefix), which requests reach the server and with which token, how failures
read — against a loopback HTTP server that records what it receives (the real API server is exercised by
tests/dags/test_monitoring_dag.py and tests/dags/test_run_results.py). And the layering around it: the library
never imports ``tools/`` nor (outside the CLI) ``cli.py``."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from backups.airflow_api import AirflowApi, AirflowApiError, server_url
from backups.monitoring.schedules import collect
from tests.helpers import ROOT


# ------------------------------------------------------------------------------------------------ URL building
@pytest.mark.parametrize(("host", "port", "scheme", "want"), [
    ("airflow-api", None, None, "http://airflow-api"),
    ("airflow-api", 8080, None, "http://airflow-api:8080"),
    ("airflow-api", "8080", "https", "https://airflow-api:8080"),
    ("airflow-api:8080", None, None, "http://airflow-api:8080"),
    ("airflow-api:8080", 8080, None, "http://airflow-api:8080"),  # the same port twice: fine, not doubled
    ("http://127.0.0.1:8080", None, None, "http://127.0.0.1:8080"),
    ("http://127.0.0.1:8080", 8080, None, "http://127.0.0.1:8080"),
    ("http://127.0.0.1", 8080, None, "http://127.0.0.1:8080"),
    ("https://airflow.example.com", None, "http", "https://airflow.example.com"),  # the URL's scheme wins
    ("airflow-api", None, "airflow_db", "http://airflow-api"),  # a schema that is no scheme is ignored
    (" http://127.0.0.1:8080/ ", None, None, "http://127.0.0.1:8080"),
    ("http://127.0.0.1:8080///", None, None, "http://127.0.0.1:8080"),
    ("http://127.0.0.1:8080/api/v2", None, None, "http://127.0.0.1:8080"),
    ("http://127.0.0.1:8080/api/v2/", None, None, "http://127.0.0.1:8080"),
    ("https://example.com/airflow/", 443, None, "https://example.com:443/airflow"),  # a proxy's path prefix kept
    ("https://example.com/airflow/api/v2", None, None, "https://example.com/airflow"),
    ("HTTP://[::1]:8080", None, None, "http://[::1]:8080"),
    ("[::1]", 8080, None, "http://[::1]:8080"),
])
def test_server_url(host, port, scheme, want):
    assert server_url(host, port, scheme) == want


@pytest.mark.parametrize(("host", "port", "message"), [
    ("", None, "no host"),
    (None, 8080, "no host"),
    ("http://airflow-api:8080", 9090, "names port 8080 but the port field says 9090"),
    ("airflow-api:8080", 9090, "names port 8080 but the port field says 9090"),
    ("ftp://airflow-api", None, "not an http(s) URL"),
    ("airflow-api", "eighty", "bad port"),
])
def test_server_url_refuses_what_cannot_be_one_server(host, port, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        server_url(host, port)


def test_paths_are_under_api_v2_unless_rooted_elsewhere():
    api = AirflowApi("http://h:8080/api/v2/")
    assert api.url("/dags/backup_daily") == "http://h:8080/api/v2/dags/backup_daily"
    assert api.url("dags") == "http://h:8080/api/v2/dags"
    assert api.url("/api/v2/dags") == "http://h:8080/api/v2/dags"
    assert api.url("/auth/token") == "http://h:8080/auth/token"


def test_from_connection_reads_every_field():
    conn = SimpleNamespace(host="airflow-api", port=8443, schema="https", login="ops", password="pw",
                           extra_dejson={"token": "jwt", "verify": False})
    api = AirflowApi.from_connection(conn)
    assert (api.base, api.login, api.password, api.token()) == ("https://airflow-api:8443", "ops", "pw", "jwt")
    with pytest.raises(ValueError, match="no host"):
        AirflowApi.from_connection(SimpleNamespace(host="", port=None, schema=None, login=None, password=None,
                                                   extra_dejson={}))


# ------------------------------------------------------------------------------------------------ a loopback server
class Recorder(ThreadingHTTPServer):
    """Answers like the API server for the few paths the tests use, records (method, path, token, body)."""

    def __init__(self, *, all_admins: bool = False, expire_first: bool = False, prefix: str = "") -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[tuple[str, str, str | None, object]] = []
        self.all_admins, self.expire_first, self.prefix, self.issued = all_admins, expire_first, prefix, 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}{self.prefix}"


class Handler(BaseHTTPRequestHandler):
    server: Recorder

    def _answer(self, code: int, doc: object = None) -> None:
        raw = b"" if doc is None else json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _handle(self) -> None:
        srv = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        doc = json.loads(body) if body else None
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ") or None
        srv.seen.append((self.command, self.path, token, doc))
        path = self.path.removeprefix(srv.prefix)
        if path == "/auth/token":
            if self.command == "GET" and not srv.all_admins:
                return self._answer(403, {"detail": "all-admins mode is off"})
            if self.command == "POST" and doc != {"username": "ops", "password": "pw"}:
                return self._answer(401, {"detail": "Invalid credentials"})
            srv.issued += 1
            return self._answer(201, {"access_token": f"t{srv.issued}"})
        if path == "/api/v2/monitor/health":
            return self._answer(200, {"metadatabase": {"status": "healthy"}})
        if token is None or not token.startswith("t"):
            return self._answer(401, {"detail": "Not authenticated"})
        if srv.expire_first and token == "t1":
            return self._answer(401, {"detail": "Token expired"})
        if path.startswith("/api/v2/dags/backup_daily/dagRuns") and self.command == "GET":
            return self._answer(200, {"dag_runs": [{"dag_run_id": "r1", "state": "success"}]})
        if path == "/api/v2/dags/backup_daily":
            return self._answer(200, {"dag_id": "backup_daily", "is_paused": False})
        if path.startswith("/api/v2/dags/backup_daily/dagRuns/") and self.command == "PATCH":
            return self._answer(200, {"note": doc["note"]})
        if path.startswith("/api/v2/importErrors"):
            return self._answer(200, {"import_errors": []})
        if path == "/api/v2/broken":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>proxy error</html>")
            return None
        return self._answer(404, {"detail": f"no {path}"})

    do_GET = do_POST = do_PATCH = do_DELETE = _handle  # noqa: N815 - http.server hook names

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    servers = []

    def start(**kw) -> Recorder:
        srv = Recorder(**kw)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_login_token_once_then_bearer_on_every_call(serve):
    srv = serve()
    api = AirflowApi(srv.url + "/api/v2/", login="ops", password="pw")  # pasted with the API prefix: still works
    assert api.dag("backup_daily")["dag_id"] == "backup_daily"
    api.set_run_note("backup_daily", "scheduled__2026-01-01T00:00:00+00:00", "**ok**")
    assert api.health()["metadatabase"]["status"] == "healthy"
    assert srv.seen == [
        ("POST", "/auth/token", None, {"username": "ops", "password": "pw"}),
        ("GET", "/api/v2/dags/backup_daily", "t1", None),
        ("PATCH", "/api/v2/dags/backup_daily/dagRuns/scheduled__2026-01-01T00%3A00%3A00%2B00%3A00?update_mask=note",
         "t1", {"note": "**ok**"}),
        ("GET", "/api/v2/monitor/health", None, None),
    ]


def test_a_proxy_path_prefix_is_kept(serve):
    srv = serve(prefix="/airflow")
    api = AirflowApi(srv.url + "/", login="ops", password="pw")
    assert api.dag("backup_daily") is not None
    assert [p for _, p, _, _ in srv.seen] == ["/airflow/auth/token", "/airflow/api/v2/dags/backup_daily"]


def test_without_login_the_all_admins_token(serve):
    srv = serve(all_admins=True)
    assert AirflowApi(srv.url).runs("backup_daily") == [{"dag_run_id": "r1", "state": "success"}]
    assert srv.seen[0][:2] == ("GET", "/auth/token")
    assert srv.seen[1][1] == "/api/v2/dags/backup_daily/dagRuns?order_by=-run_after&limit=25"

    closed = serve(all_admins=False)
    with pytest.raises(AirflowApiError, match=r"^no login in the connection, .*: GET http://127\.0\.0\.1:\d+/auth/token: HTTP 403") as info:
        AirflowApi(closed.url).dag("backup_daily")
    assert info.value.status == 403


def test_an_expired_token_is_fetched_again_once(serve):
    srv = serve(expire_first=True)
    api = AirflowApi(srv.url, login="ops", password="pw")
    assert api.dag("backup_daily") is not None
    assert [(m, p, t) for m, p, t, _ in srv.seen] == [
        ("POST", "/auth/token", None), ("GET", "/api/v2/dags/backup_daily", "t1"),
        ("POST", "/auth/token", None), ("GET", "/api/v2/dags/backup_daily", "t2")]
    # a token given in the connection is never replaced: its 401 is the answer
    given = AirflowApi(srv.url, token="t1")
    with pytest.raises(AirflowApiError, match="HTTP 401") as info:
        given.dag("backup_daily")
    assert info.value.status == 401


def test_failures_name_the_request_and_the_status(serve):
    srv = serve()
    api = AirflowApi(srv.url, login="ops", password="wrong")
    with pytest.raises(AirflowApiError, match=r"POST http://127\.0\.0\.1:\d+/auth/token: HTTP 401 .*Invalid credentials"):
        api.dag("backup_daily")
    api = AirflowApi(srv.url, login="ops", password="pw")
    assert api.dag("no_such_dag") is None  # 404: Airflow does not know it
    with pytest.raises(AirflowApiError, match="not JSON"):
        api.get("/broken")
    srv.shutdown()
    srv.server_close()
    with pytest.raises(AirflowApiError, match=r"GET http://127\.0\.0\.1:\d+/api/v2/monitor/health: .*refused") as info:
        AirflowApi(srv.url).health()
    assert info.value.status is None  # no answer at all


def test_schedule_collect_reads_dags_runs_and_import_errors(serve):
    srv = serve()
    data = collect(AirflowApi(srv.url, login="ops", password="pw"), ["backup_daily", "backup_gone"])
    assert data == {"dags": {"backup_daily": {"dag": {"dag_id": "backup_daily", "is_paused": False},
                                              "runs": [{"dag_run_id": "r1", "state": "success"}]},
                             "backup_gone": {"dag": None, "runs": []}},
                    "import_errors": [], "base_url": srv.url}


# ------------------------------------------------------------------------------------------------ layering
def _imports(root, pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [f"{py.relative_to(ROOT)}: {line.strip()}" for py in sorted(root.rglob("*.py"))
            for line in py.read_text().splitlines() if rx.match(line.strip())]


def test_the_library_imports_neither_tools_nor_the_cli():
    lib = ROOT / "include" / "backups"
    assert _imports(lib, r"(from|import)\s+tools\b") == []
    cli_users = [x for x in _imports(lib, r"(from\s+(backups|\.+)\s+import\s+cli\b|from\s+(backups\.|\.+)cli\b|"
                                         r"import\s+backups\.cli\b)")
                 if not x.startswith("include/backups/cli.py") and "/__main__.py" not in x]
    assert cli_users == []


def test_only_one_rest_client():
    """Nothing else in the library, the tools or the browser tests talks to the REST API by hand."""
    hand_made = _imports(ROOT / "include" / "backups", r"(import\s+httpx|from\s+httpx|.*urllib\.request)")
    hand_made += _imports(ROOT / "tools", r"(import\s+httpx|.*urllib\.request)")
    hand_made += _imports(ROOT / "tests" / "browser", r"(import\s+httpx|.*urllib\.request)")
    allowed = {"include/backups/airflow_api.py"}
    assert [x for x in hand_made if x.split(":")[0] not in allowed] == []
