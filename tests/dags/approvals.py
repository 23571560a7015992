"""Answer a human-in-the-loop task through Airflow's public REST API, the way an operator's script or the UI does.

``dag.test()`` runs the DAG in this process and waits forever for a human answer, so a background thread plays
the human: it logs in as a configured user (``POST /auth/token``, the simple auth manager), waits until the task
is awaiting input (``GET /api/v2/dags/{dag}/dagRuns/~/hitlDetails``) and answers it
(``PATCH /api/v2/dags/{dag}/dagRuns/{run}/taskInstances/{task}/{map_index}/hitlDetails``). The API app runs in
process (``airflow.api_fastapi.app.create_app`` behind an HTTP test client): no server, no port, no internals.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field

import pytest

USER, PASSWORD = "olga.ops", "approve-in-tests-only"


@dataclass
class Responder:
    """The background answer: ``join()`` it after ``dag.test()``. ``detail`` is the request as the API listed it
    (subject, body, options, params, task instance), ``answer`` the API's reply to the response."""

    thread: threading.Thread
    chosen: list[str]
    detail: dict = field(default_factory=dict)
    answer: dict = field(default_factory=dict)
    error: list[str] = field(default_factory=list)

    def join(self, timeout: float = 5.0) -> dict:
        self.thread.join(timeout)
        assert not self.error, self.error[0]
        assert self.answer, "the approval was never answered through the API"
        assert (self.answer["responded_by"]["name"], self.answer["chosen_options"]) == (USER, self.chosen)
        return self.answer


@pytest.fixture
def approver(tmp_path, monkeypatch):
    """``approver(dag_id, task_id, ["Approve"], {"note": ...})`` starts a thread answering as user olga.ops."""
    passwords = tmp_path / "simple_auth_manager_passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", f"{USER}:admin")
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
    return _start


def _client():
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    client = TestClient(create_app(apps="core"))
    reply = client.post("/auth/token", json={"username": USER, "password": PASSWORD})
    assert reply.status_code == 201, reply.text
    client.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"
    return client


def _start(dag_id: str, task_id: str, chosen: list[str], params_input: dict, timeout: float = 180.0) -> Responder:
    client = _client()  # in the test's thread: a login failure fails the test at once
    responder = Responder(threading.Thread(daemon=True, target=lambda: _answer(responder, client, dag_id, task_id,
                                                                               chosen, params_input, timeout)),
                          chosen)
    responder.thread.start()
    return responder


def _answer(responder: Responder, client, dag_id: str, task_id: str, chosen: list[str], params_input: dict,
            timeout: float) -> None:
    end = time.time() + timeout
    try:
        while time.time() < end:
            listing = client.get(f"/api/v2/dags/{dag_id}/dagRuns/~/hitlDetails",
                                 params={"task_id": task_id, "response_received": False})
            assert listing.status_code == 200, listing.text
            # answer only once the task is parked: a response recorded while it is still running (the request
            # exists from the start of execute) is stored but never resumes it, and dag.test() would wait forever
            waiting = [d for d in listing.json()["hitl_details"] if _parked(d)]
            if waiting:
                responder.detail.update(waiting[0])
                ti = waiting[0]["task_instance"]
                url = (f"/api/v2/dags/{dag_id}/dagRuns/{ti['dag_run_id']}/taskInstances/{task_id}/"
                       f"{ti['map_index']}/hitlDetails")
                reply = client.patch(url, json={"chosen_options": chosen, "params_input": params_input})
                assert reply.status_code == 200, reply.text
                responder.answer.update(reply.json())
                return
            time.sleep(0.3)
        responder.error.append(f"{dag_id}.{task_id} never awaited input within {timeout:.0f} s")
    except Exception as exc:  # reported by join() in the test's thread
        responder.error.append(f"{type(exc).__name__}: {exc}")
    _release_waiting(client, dag_id)


def _parked(detail: dict) -> bool:
    return (detail.get("task_instance") or {}).get("state") in ("awaiting_input", "deferred")


def _release_waiting(client, dag_id: str, timeout: float = 600.0) -> None:
    """No proper answer was given: reject whatever of ``dag_id`` awaits input (now or within ``timeout``), so that
    ``dag.test()`` (which waits for a human forever) returns and ``join()`` reports the responder's error instead
    of the test hanging."""
    end = time.time() + timeout
    with contextlib.suppress(Exception):
        while time.time() < end:
            listing = client.get(f"/api/v2/dags/{dag_id}/dagRuns/~/hitlDetails", params={"response_received": False})
            for d in listing.json()["hitl_details"]:
                if not _parked(d):
                    continue
                ti = d["task_instance"]
                choice = "Reject" if "Reject" in d["options"] else d["options"][0]
                client.patch(f"/api/v2/dags/{dag_id}/dagRuns/{ti['dag_run_id']}/taskInstances/{ti['task_id']}/"
                             f"{ti['map_index']}/hitlDetails", json={"chosen_options": [choice], "params_input": {}})
                return
            time.sleep(0.5)


@contextlib.contextmanager
def serve_core_api():
    """Airflow's core REST API (with the simple auth manager's ``/auth/token``) served by uvicorn on a loopback
    port in this process, for code that calls the API over HTTP; yields ``(url, port)``. Users come from the
    environment (the ``approver`` fixture sets olga.ops up)."""
    import uvicorn
    from airflow.api_fastapi.app import create_app

    from tests.helpers import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(apps="core"), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.time() + 30
    while not server.started and time.time() < end:
        time.sleep(0.05)
    assert server.started, "the API server did not start"
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(10)

