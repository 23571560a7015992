"""The ``restore_snapshot`` DAG and the deferrable archive sensor.

* the DAG parses, follows the conventions, has the expected graph and form;
* a whole snapshot restored under ``dag.test()`` (gate off) equals the source tree and database; verified, reported;
* a partial restore (one glob of a files source, one table of the database); the form checked by the adapter;
* a non-empty target without ``force`` fails ``restore`` at once with the library's message and writes nothing;
  with ``force`` the same run succeeds;
* S3 GLACIER through moto's server: the trigger (``asyncio.run`` on ``run()``) requests the restores and fires once
  nothing is pending; the sensor in poke mode and in deferrable mode; the whole DAG restoring from the archive
  storage, the sensor deferring and ``dag.test()`` running the trigger in-process.

Snapshots are made with the engine (``run_backup``), not with the backup DAGs, to keep the tests fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections import Counter

import pytest

from backups.commands import restore as rc
from backups.config import load_config
from tests.dags.common import load_dags, run_note, task_states
from tests.helpers import app_tree, db_rows, run_backup, use_shipped_local_config
from tests.unit.storage.test_s3 import BUCKET, SECRET, s3_endpoint  # noqa: F401  (session fixture: moto's S3 server)

pytestmark = pytest.mark.airflow

DAG_ID = "restore_snapshot"
WEEKLY = "weekly-20260104T010000Z"
TASKS = ["locate", "approve_restore", "wait_for_archive", "restore", "verify_restored", "report"]
EDGES = {("locate", "approve_restore"), ("approve_restore", "wait_for_archive"), ("wait_for_archive", "restore"),
         ("locate", "wait_for_archive"),
         ("locate", "restore"), ("restore", "verify_restored"), ("locate", "verify_restored"),
         ("verify_restored", "report"), ("restore", "report"), ("locate", "report")}


def _dag():
    return load_dags().dags[DAG_ID]


def _xcom(dr, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        row = s.scalar(XComModel.get_many(run_id=dr.run_id, dag_ids=DAG_ID, task_ids=task_id, key="return_value"))
        return None if row is None else XComModel.deserialize_value(row)


@pytest.fixture
def app(tmp_path, monkeypatch):
    """A generated application with one weekly full snapshot on the local storage (shipped local config)."""
    home, root = use_shipped_local_config(tmp_path, monkeypatch)
    run_backup(load_config(), "weekly", logical_date="2026-01-04T01:00:00Z")
    return {"home": home, "root": root, "tmp": tmp_path}


# ------------------------------------------------------------------------------------------------ parse
def test_restore_dag_parses_with_conventions_graph_and_form():
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from backups.orchestration.archive import WaitForArchiveSensor

    dag = _dag()
    assert dag.schedule is None and dag.catchup is False
    assert dag.max_active_runs > 1  # concurrent runs: a restore left waiting for approval blocks no other one
    assert "restore" in dag.tags
    assert dag.doc_md and "approve_restore" in dag.doc_md and "RESTORE_REPORT" in dag.doc_md
    assert dag.on_success_callback and dag.on_failure_callback
    assert sorted(dag.task_dict) == sorted(TASKS)
    assert {(up, t.task_id) for t in dag.tasks for up in t.upstream_task_ids} == EDGES
    for t in dag.tasks:
        assert t.owner == "data-engineering" and t.retries >= 2 and t.on_failure_callback, t.task_id
    assert isinstance(dag.task_dict["approve_restore"], ApprovalOperator)
    sensor = dag.task_dict["wait_for_archive"]
    assert isinstance(sensor, WaitForArchiveSensor) and sensor.deferrable and sensor.trigger_rule == "none_failed"
    p = dag.params
    assert set(p) == {"snapshot", "tier", "storage", "target", "sources", "include", "tables", "pg_target_conn_id",
                      "force", "require_approval", "include_dependencies", "no_owner", "reread"}
    assert p["no_owner"] is False and p.get_param("no_owner").schema["type"] == ["null", "boolean"]
    assert p["reread"] is False and p.get_param("reread").schema["type"] == ["null", "boolean"]
    assert p.get_param("reread").schema["section"] == "Advanced"
    assert (p["snapshot"], p["storage"], p["force"], p["require_approval"], p["sources"]) == ("latest", None, False, True, None)
    assert p.get_param("storage").schema["enum"] == [None, "local"]
    assert "manual" in p.get_param("tier").schema["enum"]
    assert p.get_param("sources").schema["items"]["enum"] == ["app_db", "app_files", "system_state"]
    assert p.get_param("target").schema["pattern"] == "^/"
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="target"):  # required: a run without a target is refused
        p.validate()


# ------------------------------------------------------------------------------------------------ runs
def test_restore_latest_equals_source_verified_and_reported(airflow_db, app, monkeypatch):
    from backups.orchestration import notifiers

    calls: list[dict] = []
    monkeypatch.setattr(notifiers, "LISTENERS", [calls.append])
    target = app["tmp"] / "restored"
    dr = _dag().test(run_conf={"target": str(target), "require_approval": False})
    states = task_states(dr)
    assert dr.state == "success", states
    assert states["approve_restore"] == "skipped"
    assert {states[t] for t in TASKS if t != "approve_restore"} == {"success"}

    assert app_tree(target / "app_files") == app_tree(app["home"])
    assert db_rows(target / "app_db" / "app.db") == db_rows(app["home"] / "app.db")
    assert (target / "system_state" / "stdout").read_bytes()
    assert sorted(p.name for p in target.iterdir()) == ["RESTORE_REPORT.json", "RESTORE_REPORT.md", "app_db",
                                                        "app_files", "system_state"]

    loc = _xcom(dr, "locate")
    assert (loc["snapshot_id"], loc["storage"], loc["archive"], loc["chain"]) == (WEEKLY, "local", False, [WEEKLY])
    assert loc["objects"] > 0 and loc["target_state"].startswith("missing")
    assert _xcom(dr, "wait_for_archive")["archive"] is False
    verified = _xcom(dr, "verify_restored")
    assert verified["ok"] and verified["files"]["app_files"]["files_checked"] == verified["files"]["app_files"]["files_expected"] > 10
    assert verified["validation"]["app_db"]["success"] is True
    # the default: SHA-256 checked while written, the tree then checked with a stat walk (nothing re-read)
    assert verified["reread"] is False and verified["files"]["app_files"]["files_rehashed"] == 0
    assert verified["files"]["app_files"]["check"] == "stat"

    doc = json.loads((target / "RESTORE_REPORT.json").read_text())
    assert doc["snapshot"]["snapshot_id"] == WEEKLY and doc["status"] == "success"
    assert doc["approval"]["choice"] == "not required" and doc["requested_by"] == "dag_test"
    assert doc["sources"]["app_files"]["files"] == verified["files"]["app_files"]["files_checked"]
    md = (target / "RESTORE_REPORT.md").read_text()
    assert md.startswith(f"# Restore of {WEEKLY}") and "expectations met" in md
    assert [c["event"] for c in calls] == ["restore_complete", "dag_success"]


def test_partial_restore_one_glob_and_one_table(airflow_db, app):
    target = app["tmp"] / "partial"
    conf = {"target": str(target), "snapshot": WEEKLY, "storage": "local", "sources": ["app_files", "app_db"],
            "include": ["config/**"], "tables": ["robots"], "require_approval": False, "reread": True}
    dr = _dag().test(run_conf=conf)
    assert dr.state == "success", task_states(dr)
    want = {k: v for k, v in app_tree(app["home"]).items() if k.split(os.sep)[0] == "config"}
    assert want and app_tree(target / "app_files") == want
    rows = db_rows(app["home"] / "app.db")
    assert db_rows(target / "app_db" / "app.db") == {"robots": rows["robots"]}
    assert not (target / "system_state").exists()
    verified = _xcom(dr, "verify_restored")
    assert verified["files"]["app_files"]["files_checked"] == len([v for v in want.values() if v[0] == "f"])
    assert verified["validation"]["app_db"]["success"] is True
    # the form's reread reached the verification task: every restored file read back and re-hashed, and said so
    assert verified["reread"] is True and verified["files"]["app_files"]["check"] == "reread"
    assert verified["files"]["app_files"]["files_rehashed"] == verified["files"]["app_files"]["files_checked"] > 0
    doc = json.loads((target / "RESTORE_REPORT.json").read_text())
    assert doc["params"]["reread"] is True and doc["verification"]["content"] == rc.REREAD
    assert "re-read and re-hashed" in (target / "RESTORE_REPORT.md").read_text()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("choice", ["Approve", "Reject"])
def test_approval_gate_answered(airflow_db, app, approver, choice):
    target = app["tmp"] / f"approved-{choice}"
    responder = approver(DAG_ID, "approve_restore", [choice], {"note": "incident 42"})
    dr = _dag().test(run_conf={"target": str(target), "sources": ["app_files"]})
    responder.join(5)  # answered through the API, as olga.ops, with that choice
    states = task_states(dr)
    hitl = responder.detail
    assert hitl["task_instance"]["dag_run_id"] == dr.run_id and hitl["options"] == ["Approve", "Reject"]
    assert not hitl["defaults"]  # no default: Reject is not the highlighted button, a timeout is no answer
    assert hitl["subject"] == f"Restore {WEEKLY} from local into {target}?"
    assert "* sources: app_files" in hitl["body"] and "currently missing (will be created)" in hitl["body"]
    assert "readable now (no thaw)" in hitl["body"] and "MB free at the target" in hitl["body"]
    assert "Checked before this request: target missing (will be created), writable" in hitl["body"]
    if choice == "Reject":  # not a green run: failed, nothing thawed, nothing written, and the note says why
        assert dr.state == "failed", states
        assert states["approve_restore"] == "failed"
        assert {states[t] for t in TASKS[2:]} == {"upstream_failed"}
        assert not target.exists()
        note = run_note(dr)
        assert note.splitlines()[0].startswith("**Rejected** by olga.ops at 20")
        assert note.splitlines()[0].endswith(" UTC — nothing was restored") and "incident 42" in note
        return
    assert dr.state == "success", states
    assert states["approve_restore"] == "success"
    assert {states[t] for t in TASKS[2:]} == {"success"}
    doc = json.loads((target / "RESTORE_REPORT.json").read_text())
    assert doc["approval"]["by"] == "olga.ops" and doc["approval"]["choice"] == "Approve"
    assert doc["approval"]["note"] == "incident 42"


@pytest.mark.parametrize("event", [
    {"error": "The Human-in-the-loop response timeout has passed without a response.", "error_type": "timeout"},
    # a default recorded by Airflow (no user): never taken as an approval
    {"chosen_options": ["Approve"], "params_input": {}, "responded_at": None, "responded_by_user": None},
])
def test_an_unanswered_approval_fails_the_gate_with_a_no_answer_note(event):
    from backups.orchestration.approval import GateClosed

    gate = _dag().task_dict["approve_restore"]
    with pytest.raises(GateClosed) as ei:
        gate.execute_complete({"params": {}}, dict(event))
    assert ei.value.note.splitlines()[0] == "**No answer within 24 h** — nothing was restored"
    assert str(ei.value) == "No answer within 24 h — nothing was restored"


def test_non_empty_target_without_force_fails_restore_and_writes_nothing(airflow_db, app, monkeypatch):
    from backups.orchestration import notifiers

    target = app["tmp"] / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    calls: list[dict] = []
    monkeypatch.setattr(notifiers, "LISTENERS", [calls.append])
    dr = _dag().test(run_conf={"target": str(target), "require_approval": False})
    states = task_states(dr)
    assert dr.state == "failed"
    # refused before the approval (a person is never asked to approve a restore that cannot run)
    assert (states["locate"], states["restore"], states["verify_restored"], states["report"]) == (
        "failed", "upstream_failed", "upstream_failed", "upstream_failed")
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]  # no source, no .partial dir, no report
    failures = [c for c in calls if c["event"] == "task_failure"]
    assert [(c["task_id"], c["try_number"]) for c in failures] == [("locate", 1)]  # at once, no retry
    note = run_note(dr)
    assert note.startswith(f"**Refused before approval** — restore target {target} is not empty")
    assert "Trigger the DAG again with the changed parameters" in note and "clear the task" not in note
    assert f"restore target {target} is not empty" in failures[0]["reason"]
    assert "fix: choose an empty or new directory, or pass --force" in failures[0]["reason"]

    dr = _dag().test(run_conf={"target": str(target), "require_approval": False, "force": True,
                               "sources": ["app_db"]})
    assert dr.state == "success", task_states(dr)
    assert sorted(p.name for p in target.iterdir()) == ["RESTORE_REPORT.json", "RESTORE_REPORT.md", "app_db", "keep.txt"]
    assert db_rows(target / "app_db" / "app.db") == db_rows(app["home"] / "app.db")


def test_a_target_claimed_by_another_run_is_refused_at_once_naming_it(airflow_db, app, monkeypatch):
    """Two runs into one directory: the second is refused at once (no retry, before its approval is asked),
    naming the run that holds the target; nothing is written. A run that ends (here: succeeds) releases its own
    claim. (``restore`` checks again after the approval, and claims the target itself.)"""
    from backups.commands import target_lock as tl
    from backups.orchestration import notifiers

    calls: list[dict] = []
    monkeypatch.setattr(notifiers, "LISTENERS", [calls.append])
    target = app["tmp"] / "shared"
    tl.claim(target, tl.TargetOwner(door=DAG_ID, run_id="manual__other", user="olga.ops"))
    dr = _dag().test(run_conf={"target": str(target), "require_approval": False})
    assert dr.state == "failed" and task_states(dr)["locate"] == "failed"
    assert not target.exists()
    (failure,) = [c for c in calls if c["event"] == "task_failure"]
    assert failure["try_number"] == 1
    assert f"target {target} is already being restored by {DAG_ID} run manual__other of olga.ops" in failure["reason"]
    assert tl.holder(target).run_id == "manual__other"  # the failed run did not take the other run's claim away
    tl.release(target, "manual__other")
    dr = _dag().test(run_conf={"target": str(target), "require_approval": False, "sources": ["app_db"]})
    assert dr.state == "success", task_states(dr)
    assert not tl.lock_path(target).exists()


def test_table_dependencies_refused_then_included(airflow_db, app, monkeypatch):
    """``missions`` references ``robots``: without ``include_dependencies`` the restore task fails at once naming
    it and nothing is written; with it (or null from the form: off) robots comes along and the report says so."""
    from backups.orchestration import notifiers

    calls: list[dict] = []
    monkeypatch.setattr(notifiers, "LISTENERS", [calls.append])
    target = app["tmp"] / "fk"
    conf = {"target": str(target), "sources": ["app_db"], "tables": ["missions"], "require_approval": False,
            "include_dependencies": None}
    dr = _dag().test(run_conf=conf)
    assert dr.state == "failed" and task_states(dr)["locate"] == "failed"  # before the approval
    assert not target.exists()
    (failure,) = [c for c in calls if c["event"] == "task_failure"]
    assert "robots (referenced by missions)" in failure["reason"] and "include_dependencies" in failure["reason"]
    note = run_note(dr)
    assert note.startswith("**Refused before approval** — the chosen tables reference tables")
    assert "* fix: trigger again with include_dependencies: true" in note and "* app_db: robots" in note
    dr = _dag().test(run_conf={**conf, "tables": ["missions", "no_such_table"]})
    assert dr.state == "failed"
    note = run_note(dr)
    assert "no_such_table not in snapshot" in note and "robots" in note and "missions" in note  # its tables listed
    assert "trigger again with tables from that list" in note
    dr = _dag().test(run_conf={**conf, "include_dependencies": True})
    assert dr.state == "success", task_states(dr)
    rows = db_rows(app["home"] / "app.db")
    assert db_rows(target / "app_db" / "app.db") == {t: rows[t] for t in ("missions", "robots")}
    assert _xcom(dr, "restore")["tables"]["sources"]["app_db"]["added"] == ["robots"]
    assert "dependencies restored with them: robots" in (target / "RESTORE_REPORT.md").read_text()


def test_request_from_the_form_is_checked(app):
    """The form's adapter: the command's checks, with the DAG's param names mapped."""
    from backups.errors import ConfigError, RefusedError
    from backups.orchestration import restore_dag as rd

    cfg = load_config()
    with pytest.raises(RefusedError, match="inside the repository of storage local"):
        rd.request_from_params(cfg, {"target": str(app["root"] / "local" / "r")})
    with pytest.raises(ConfigError, match="no target directory given"):
        rd.request_from_params(cfg, {"target": ""})
    req = rd.request_from_params(cfg, {"target": str(app["tmp"] / "r") + "/", "sources": ["app_files", " "],
                                       "include": [], "pg_target_conn_id": "", "tier": ""})
    assert (req.target, req.sources, req.includes, req.pg_target_name, req.tier, req.snapshot) == (
        str(app["tmp"] / "r"), ["app_files"], None, None, None, "latest")
    assert req.no_owner is False
    assert rd.request_from_params(cfg, {"target": str(app["tmp"] / "r"), "no_owner": True}).no_owner is True
    assert rd.request_from_params(cfg, {"target": str(app["tmp"] / "r"), "no_owner": None}).no_owner is False
    assert req.reread is False
    assert rd.request_from_params(cfg, {"target": str(app["tmp"] / "r"), "reread": True}).reread is True
    assert rd.request_from_params(cfg, {"target": str(app["tmp"] / "r"), "reread": None}).reread is False


# ------------------------------------------------------------------------------------------------ archive
GLACIER_CONFIG = """\
application: fmr-v2
sources:
  app_db:    {{type: sqlite, path: "{home}/app.db"}}
  app_files: {{type: files, root: "{home}", include: ["config/**", "user_data/**", "logs/**", "uploads/**"], exclude: ["**/*.tmp"]}}
storages:
  local:   {{type: local, path: "{root}/local"}}
  glacier: {{type: s3, conn_id: restore_test_s3, bucket: {bucket}, prefix: "{prefix}", storage_class: GLACIER}}
tiers:
  weekly: {{type: full, schedule: "0 1 * * 0", sources: [app_db, app_files], storages: [local, glacier]}}
"""


@pytest.fixture
def glacier(app, s3_endpoint, monkeypatch):  # noqa: F811 - the imported fixture
    """The app's weekly snapshot replicated to an S3 GLACIER storage on moto; S3 restores take one extra poll."""
    from backups.orchestration.connections import AirflowResolver
    from backups.storage import open_storage
    from backups.storage.s3 import S3Storage

    path = app["tmp"] / "glacier.yaml"
    path.write_text(GLACIER_CONFIG.format(home=app["home"], root=app["tmp"] / "g", bucket=BUCKET,
                                          prefix=f"restore-{uuid.uuid4().hex[:8]}"))
    monkeypatch.setenv("BACKUP_CONFIG", str(path))
    monkeypatch.setenv("AIRFLOW_CONN_RESTORE_TEST_S3", json.dumps({
        "conn_type": "aws", "login": "testing", "password": SECRET,
        "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}}))
    cfg = load_config()
    run_backup(cfg, "weekly", logical_date="2026-01-04T01:00:00Z", resolver=AirflowResolver())
    storage = open_storage(cfg, "glacier", AirflowResolver(), read_only=True)
    # moto completes a restore at once; real S3 takes hours: report each key "not yet" on its first check
    checks: Counter[str] = Counter()
    real = S3Storage.restore_request

    def slow_restore(self, key: str, days: int = 1) -> bool:
        ready = real(self, key, days)
        checks[key] += 1
        return ready and checks[key] > 1

    monkeypatch.setattr(S3Storage, "restore_request", slow_restore)
    data_key = next(o.key for o in storage.list(f"data/{WEEKLY}/") if o.storage_class == "GLACIER")
    return {"storage": storage, "checks": checks, "data_key": data_key, **app}


def test_archive_trigger_requests_restores_and_fires_when_nothing_is_pending(glacier):
    from backups.errors import StorageError
    from backups.orchestration.archive import WaitForArchiveTrigger

    storage = glacier["storage"]
    assert storage.archive
    with pytest.raises(StorageError, match="request a restore"):
        storage.get_bytes(glacier["data_key"])

    trigger = WaitForArchiveTrigger(storage="glacier", snapshot_id=WEEKLY, poke_interval=0.01)
    classpath, kwargs = trigger.serialize()
    assert classpath == "backups.orchestration.archive.WaitForArchiveTrigger"
    assert WaitForArchiveTrigger(**kwargs).serialize() == (classpath, kwargs)

    async def first_event(t):
        return await anext(t.run())

    event = asyncio.run(first_event(trigger)).payload
    assert event["status"] == "success" and event["archive"] is True
    assert event["polls"] == 2  # pending on the first poll, readable on the second
    assert event["keys"] == len(glacier["checks"]) > 0
    assert storage.get_bytes(glacier["data_key"])  # thawed: readable now

    local = asyncio.run(first_event(WaitForArchiveTrigger(storage="local", snapshot_id=WEEKLY))).payload
    assert (local["status"], local["archive"], local["polls"]) == ("success", False, 0)
    missing = asyncio.run(first_event(WaitForArchiveTrigger(storage="glacier", snapshot_id="weekly-20990101T000000Z")))
    assert missing.payload["status"] == "error" and "no snapshot 'weekly-20990101T000000Z'" in missing.payload["message"]


def test_archive_sensor_poke_mode_and_deferral(glacier):
    from airflow.sdk.exceptions import TaskDeferred

    from backups.orchestration.archive import WaitForArchiveSensor, WaitForArchiveTrigger

    poke = WaitForArchiveSensor(task_id="poke", storage="glacier", snapshot_id=WEEKLY, deferrable=False,
                                poke_interval=0.01, timeout=30)
    assert poke.execute({}) == {"storage": "glacier", "archive": True, "keys": len(glacier["checks"]),
                                  "deferred": False}
    assert set(glacier["checks"].values()) == {2}

    glacier["checks"].clear()
    deferring = WaitForArchiveSensor(task_id="defer", storage="glacier", snapshot_id=WEEKLY, poke_interval=0.01)
    with pytest.raises(TaskDeferred) as ei:
        deferring.execute({})
    trigger = ei.value.trigger
    assert isinstance(trigger, WaitForArchiveTrigger) and sorted(trigger.keys) == sorted(glacier["checks"])
    assert ei.value.method_name == "execute_complete"
    event = asyncio.run(anext(trigger.run())).payload
    out = deferring.execute_complete({}, event)
    assert out["archive"] is True and out["deferred"] is True and out["keys"] == len(glacier["checks"])

    assert WaitForArchiveSensor(task_id="local", storage="local", snapshot_id=WEEKLY).execute({})["archive"] is False


def test_restore_from_glacier_defers_and_dag_test_runs_the_trigger(airflow_db, glacier, monkeypatch):
    # as in the Astro layout (include/ copied, the project not pip-installed): no ``backups.resolvers`` entry point;
    # every task (locate, the trigger's archive wait, restore) must get Airflow's resolver without one
    monkeypatch.setattr("backups.connections.entry_points", lambda group: [])
    target = glacier["tmp"] / "from-glacier"
    dr = _dag().test(run_conf={"target": str(target), "storage": "glacier", "sources": ["app_files"],
                               "require_approval": False})
    states = task_states(dr)
    assert dr.state == "success", states
    loc = _xcom(dr, "locate")
    assert (loc["storage"], loc["archive"]) == ("glacier", True)
    wait = _xcom(dr, "wait_for_archive")
    assert wait["archive"] is True and wait["deferred"] is True and wait["keys"] == loc["objects"]
    assert app_tree(target / "app_files") == app_tree(glacier["home"])


def test_cli_restore_from_glacier_waits_for_the_thaw_and_reports_it(glacier, capsys):
    """The CLI door runs the command's own thaw step (request the restores, poll) before restoring."""
    from backups.cli import main

    target = glacier["tmp"] / "cli-from-glacier"
    rc = main(["restore", WEEKLY, "--storage", "glacier", "--source", "app_files", "--target", str(target),
               "--poll-seconds", "0.01"])
    assert rc == 0, capsys.readouterr().err
    assert set(glacier["checks"].values()) == {2}  # every key: not readable on the first poll, readable on the second
    assert app_tree(target / "app_files") == app_tree(glacier["home"])
    doc = json.loads((target / "RESTORE_REPORT.json").read_text())
    assert doc["snapshot"]["storage"] == "glacier" and doc["snapshot"]["archive"] is True
    assert doc["archive_wait"]["archive"] is True and doc["archive_wait"]["keys"] == doc["snapshot"]["objects"]
    assert "made readable after" in (target / "RESTORE_REPORT.md").read_text()
