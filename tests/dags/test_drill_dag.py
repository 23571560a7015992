"""The ``dr_drill`` DAG: parses with the config's schedule, nullable params and a teardown task; under ``dag.test()``
a drill of the sample app passes (RTO/RPO per tier in its report), and a drill over a corrupted object fails the
run naming the object and snapshot while the teardown task still removes the scratch data.

Snapshots are made with the engine (``run_backup``), not with the backup DAGs, to keep the test fast.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from backups.config import load_config
from tests.dags.common import load_dags, run_note, task_states
from tests.helpers import ROOT, run_backup, use_shipped_local_config

pytestmark = pytest.mark.airflow

DAG_ID = "dr_drill"


def _dag():
    return load_dags().dags[DAG_ID]


def test_drill_dag_parses_with_schedule_params_and_teardown():
    from airflow.sdk import TriggerRule

    dag = _dag()
    cfg = load_config(ROOT / "include" / "backups.local.yaml")
    assert dag.schedule == cfg.drill.schedule == "0 4 1 * *"
    assert dag.max_active_runs == 1 and dag.catchup is False and "drill" in dag.tags and dag.doc_md
    assert dag.on_failure_callback and dag.default_args["on_failure_callback"]
    assert set(dag.task_dict) == {"plan", "isolate", "restore_tier", "verify_tier", "report", "teardown"}
    from backups.commands.drill import DRILL  # the tasks are the procedure's steps, the ones `backupctl drill` runs

    assert set(dag.task_dict) == set(DRILL.task_ids)
    assert dag.task_dict["teardown"].is_teardown and dag.task_dict["isolate"].is_setup
    assert dag.task_dict["restore_tier"].pool == "backup_io"
    assert dag.task_dict["report"].trigger_rule == TriggerRule.ALL_DONE
    # the report's log holds the note once, not the whole verdict again as the task's returned value
    assert dag.task_dict["report"].show_return_value_in_logs is False
    # teardown before report (as in the CLI: its problems are findings); the report outside the setup's scope
    assert "teardown" in dag.task_dict["report"].upstream_task_ids
    assert {"verify_tier"} <= dag.task_dict["teardown"].upstream_task_ids
    assert dag.task_dict["teardown"].trigger_rule == TriggerRule.ALL_DONE
    for name in ("storage", "tiers"):  # optional in the trigger form (Airflow 3.3: nullable or required)
        assert "null" in dag.params.get_param(name).schema["type"] and dag.params[name] is None


def test_drill_dag_passes_then_fails_on_a_corrupted_object(airflow_db, tmp_path, monkeypatch):
    from backups.commands.drill import scratch_base
    from backups.orchestration import notifiers

    _home, root = use_shipped_local_config(tmp_path, monkeypatch)
    cfg = load_config()
    now = datetime.now(UTC).replace(microsecond=0)
    weekly, _ = run_backup(cfg, "weekly", logical_date=(now - timedelta(hours=30)).isoformat())
    daily, _ = run_backup(cfg, "daily", logical_date=(now - timedelta(hours=3)).isoformat())
    calls: list[dict] = []
    monkeypatch.setattr(notifiers, "LISTENERS", [calls.append])
    dag = _dag()

    # a stale scheduled slot (what "Unpause on trigger" starts): the drill is named by when it ran, not by the slot
    stale = now - timedelta(days=6)
    dr = dag.test(run_after=stale, logical_date=stale)
    states = task_states(dr)
    assert dr.state == "success", states
    # mapped over the configured tiers (labelled by tier): the one the drill does not cover (monthly) skips itself
    assert {k: v for k, v in states.items() if v != "success"} == {"restore_tier[2]": "skipped",
                                                                   "verify_tier[2]": "skipped"}, states
    reports = root / "local" / "reports" / "drill"
    v = json.loads((reports / "latest.json").read_text())
    assert v["passed"] and v["door"] == DAG_ID
    assert f"drill-{now:%Y%m%dT%H%M%SZ}" <= v["drill_id"] <= f"drill-{datetime.now(UTC):%Y%m%dT%H%M%SZ}", v["drill_id"]
    tiers = {t["tier"]: t for t in v["tiers"]}
    assert tiers["daily"]["snapshot_id"] == daily.id and tiers["weekly"]["snapshot_id"] == weekly.id
    assert all(t["rto_seconds"] > 0 and t["rpo_seconds"] >= 0 for t in tiers.values())
    assert {c["name"] for c in tiers["daily"]["checks"]} >= {"missions_reference_robots", "robots_known_status",
                                                            "fleet_not_empty", "config_loads"}
    assert [e for e in calls if e.get("event") == "drill_complete"][0]["passed"] is True
    # the run's note: the verdict and its cause first, then RTO/RPO per tier against the targets and the report
    note = run_note(dr)
    assert note.startswith(f"**Drill `{v['drill_id']}` passed** — 2 tier(s) restored"), note
    assert f"`daily` (`{daily.id}` from `local`): RTO " in note and "RPO " in note and "```" not in note, note
    # the report opens from the note: the Backups plugin's URL of this drill (authenticated like the UI)
    assert f"* report: [{v['drill_id']}](" in note and f"/backups/drills/{v['drill_id']})" in note, note

    obj = root / "local" / "data" / weekly.id / "app_db.tar.zst"
    raw = bytearray(obj.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)
    obj.write_bytes(bytes(raw))
    dr = dag.test(run_after=now + timedelta(minutes=1))
    states = task_states(dr)
    assert dr.state == "failed", states
    assert states["report"] == "failed" and states["teardown"] == "success"
    v = json.loads((reports / "latest.json").read_text())
    assert not v["passed"] and any(weekly.id in f and "app_db" in f for f in v["findings"])
    # a failed drill's note is the drill's own (not the failure notifier's "Failed — task report"), cause first
    note = run_note(dr)
    assert note.startswith(f"**Drill `{v['drill_id']}` FAILED** — daily: restore of snapshot {daily.id}"), note
    assert "(+2 more finding(s))" in note.splitlines()[0] and weekly.id in note, note
    assert "`weekly`" in note and "**not restored**" in note and "* findings (" in note and "```" not in note, note
    hist = (reports / "history.jsonl").read_text().splitlines()
    assert [json.loads(h)["passed"] for h in hist] == [True, False]
    assert not any(scratch_base(cfg).glob("drill-*"))


def test_drill_dag_reports_and_tears_down_when_isolation_fails(airflow_db, tmp_path, monkeypatch):
    """``isolate`` (the setup task) refuses: nothing is restored, yet the teardown runs and the report task after
    it still writes a failed verdict naming the isolation failure and what the teardown could not remove."""
    from backups.commands import drill as drill_command
    from backups.commands.drill import scratch_base
    from backups.errors import RefusedError

    _home, root = use_shipped_local_config(tmp_path, monkeypatch, scale=0.2, seed=12)
    cfg = load_config()
    now = datetime.now(UTC).replace(microsecond=0)
    run_backup(cfg, "weekly", logical_date=(now - timedelta(hours=30)).isoformat())
    run_backup(cfg, "daily", logical_date=(now - timedelta(hours=3)).isoformat())

    def refuse(*_a, **_k):
        raise RefusedError("drill: the scratch server is the live database", hint="point drill.postgres elsewhere")

    real_teardown = drill_command.teardown

    def teardown_with_a_leftover(*a, **k):
        down = real_teardown(*a, **k)
        down.problems.append("database drill_x_daily_app_pg: still in use")
        return down

    monkeypatch.setattr(drill_command, "isolate", refuse)
    monkeypatch.setattr(drill_command, "teardown", teardown_with_a_leftover)
    dr = _dag().test(run_after=now)
    states = task_states(dr)
    assert dr.state == "failed", states
    # the teardown ran (and failed on the leftover), the report ran after it and counted both as findings
    assert states["isolate"] == "failed" and states["teardown"] == "failed" and states["report"] == "failed", states
    assert "restore_tier" not in states or states["restore_tier"] == "upstream_failed", states
    v = json.loads((root / "local" / "reports" / "drill" / "latest.json").read_text())
    assert not v["passed"]
    assert any("isolate failed" in f for f in v["findings"]), v["findings"]
    assert "teardown: database drill_x_daily_app_pg: still in use" in v["findings"], v["findings"]
    assert not any(scratch_base(cfg).glob("drill-*"))
