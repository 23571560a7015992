"""Browser tests: a real Airflow on loopback, driven through its UI in headless Chromium (Playwright).

One Airflow for the whole session (``airflow_server``, ~45-60 s to start): api-server, scheduler, dag-processor
and triggerer as one process group (:mod:`tools.airflow_local`, the same launcher as ``make airflow``),
on a free loopback port, with a fresh PostgreSQL metadata database ``airflow_browser_<pid>`` (dropped at the end),
``AIRFLOW_HOME`` in a temporary directory, the repository's ``dags/`` and ``plugins/``, the simple auth manager
with user ``admin`` / :data:`PASSWORD`, the ``backup_io`` pool, and the DAGs running the embedded default config
(``include/backups.local.yaml``) over a generated sample application (``FMR_HOME``, ``BACKUP_ROOT`` in tmp).
The whole group is stopped at the end, also after a failure.

Fixtures for tests:

* ``airflow_server`` — :class:`AirflowServer` (``url``, ``env``, ``home``, ``fmr_home``, ``backup_root``,
  ``api`` = a REST client with a token, for *setup* only: assertions go through the UI).
* ``page`` — a Playwright page already logged in (login once per session, ``storage_state`` reused); every
  test gets its own browser context. ``shot(name)`` saves a screenshot; a failing test gets a last screenshot.
  Screenshots go to ``browser-artifacts/<test>/`` at the repository root (``BROWSER_ARTIFACTS`` overrides it).

Skipped, with the reason, when Playwright or Chromium (``/usr/bin/chromium``; ``BROWSER_CHROMIUM`` overrides)
is missing or PostgreSQL does not answer on 127.0.0.1:5432. Run them: ``pytest -m browser tests/browser``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from backups.airflow_api import AirflowApi
from tests.helpers import ROOT, free_port

CHROMIUM = os.environ.get("BROWSER_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS") or ROOT / "browser-artifacts")
USER, PASSWORD = "admin", "browser-test-admin"  # noqa: S105 - a throw-away login of a loopback test server
CONFIG = ROOT / "include" / "backups.local.yaml"


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (requirements-dev.txt has it: make venv)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or set BROWSER_CHROMIUM)"
    from tools.airflow_local import pg_reachable

    if not pg_reachable():
        return "no PostgreSQL on 127.0.0.1:5432 for the Airflow metadata database"
    return None


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    reason = None
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)
            reason = reason or _missing() or ""
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


# ------------------------------------------------------------------------------------------- REST (setup)
class Api(AirflowApi):
    """The REST client of the test server (the library's one client, logged in as :data:`USER`) — for setup, not
    assertions. Paths may be given with their ``/api/v2`` prefix."""

    def __init__(self, url: str) -> None:
        super().__init__(url, login=USER, password=PASSWORD, timeout=30)
        self.token()

    def wait_run(self, dag_id: str, run_id: str, states=("success", "failed"), timeout: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in states or time.monotonic() > deadline:
                return run
            time.sleep(2)


@dataclass
class AirflowServer:
    url: str
    home: Path
    env: dict
    fmr_home: Path
    backup_root: Path
    api: Api


def _wait_dags_parsed(api: Api, dag_ids: set[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        have = {d["dag_id"] for d in api.get("/api/v2/dags?limit=100")["dags"]}
        if dag_ids <= have:
            return
        time.sleep(1)
    errors = api.get("/api/v2/importErrors")
    raise AssertionError(f"DAGs {sorted(dag_ids - have)} not parsed after {timeout:.0f} s; import errors: {errors}")


@pytest.fixture(scope="package")
def airflow_server(tmp_path_factory) -> AirflowServer:
    from backups.demo import fmr
    from tools import airflow_local as local

    base = tmp_path_factory.mktemp("browser-airflow")
    fmr_home, backup_root, home = base / "fmr", base / "backups", base / "airflow"
    fmr.generate(fmr_home, scale=0.2, seed=11)
    home.mkdir()
    # the simple auth manager keeps passwords it finds in this file and generates only the missing ones
    (home / local.PASSWORDS_FILE).write_text(json.dumps({USER: PASSWORD}) + "\n")
    db_name = f"airflow_browser_{os.getpid()}"
    local.drop_pg_database(db_name)
    db_url = local.ensure_pg_database(db_name)
    port = free_port()
    env = local.airflow_env(
        home, port=port, db_url=db_url, project=ROOT,
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{USER}:admin",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="False",
        AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
        BACKUP_CONFIG=str(CONFIG), FMR_HOME=str(fmr_home), BACKUP_ROOT=str(backup_root),
        # the one REST API connection: run notes (backups.orchestration.run_notes) and the schedule check
        AIRFLOW_CONN_BACKUP_AIRFLOW_API=local.api_connection_json(f"http://127.0.0.1:{port}", USER, PASSWORD),
    )
    af = None
    try:
        t0 = time.monotonic()
        af = local.start(env)
        local.wait_healthy(af, timeout=240)
        api = Api(af.url)
        api.post("/api/v2/pools", {"name": "backup_io", "slots": 2, "description": "browser tests"})
        _wait_dags_parsed(api, {"backup_manual", "restore_snapshot"})
        print(f"\nbrowser tests: Airflow at {af.url} healthy after {time.monotonic() - t0:.0f} s "
              f"(home {home}, metadata DB {db_name})")
        yield AirflowServer(af.url, home, env, fmr_home, backup_root, api)
    finally:
        left = af.stop() if af is not None else local.stop(home)
        local.drop_pg_database(db_name)
        assert not left, f"Airflow processes of {home} survived the stop: {left}"


@pytest.fixture(scope="package")
def weekly_snapshot(airflow_server) -> str:
    """A committed snapshot to restore (setup through ``backupctl``, the same repository the DAGs use)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "backups.cli", "-q", "backup", "--tier", "weekly", "--json"],
                         env={**airflow_server.env, "PYTHONPATH": os.pathsep.join(sys.path)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["id"]


# ------------------------------------------------------------------------------------------- browser
@pytest.fixture(scope="package")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="package")
def login_state(browser, airflow_server, tmp_path_factory) -> Path:
    """Log in through the login page once; the saved cookies/local storage for every test's context."""
    state = tmp_path_factory.mktemp("browser-state") / "state.json"
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        page.goto(airflow_server.url + "/")
        page.get_by_label("Username").fill(USER)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(re.compile(re.escape(airflow_server.url) + r"/(\?.*)?$"), timeout=30_000)
        ctx.storage_state(path=str(state))
    finally:
        ctx.close()
    return state


class Shots:
    """Numbered screenshots of one test under ``browser-artifacts/<test>/``."""

    def __init__(self, page, folder: Path) -> None:
        self.page, self.folder, self.n = page, folder, 0

    def __call__(self, name: str) -> Path:
        self.n += 1
        path = self.folder / f"{self.n:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def page(browser, login_state, request):
    ctx = browser.new_context(storage_state=str(login_state), viewport={"width": 1400, "height": 1000})
    ctx.set_default_timeout(30_000)
    pg = ctx.new_page()
    try:
        yield pg
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            try:
                shots = Shots(pg, _artifacts(request))
                shots.n = 98
                shots("failure")
            except Exception:  # noqa: BLE001 - the page may be gone; the test's own error matters
                pass
        ctx.close()


def _artifacts(request) -> Path:
    folder = ARTIFACTS / re.sub(r"[^\w.-]+", "_", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def shot(page, request) -> Shots:
    """``shot("name")``: a full-page screenshot, numbered, in ``browser-artifacts/<test>/``."""
    folder = ARTIFACTS / re.sub(r"[^\w.-]+", "_", request.node.name)
    shutil.rmtree(folder, ignore_errors=True)
    return Shots(page, _artifacts(request))
