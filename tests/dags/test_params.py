"""Every form submits with its defaults: trigger forms and approval forms.

Airflow 3's form (the trigger dialog and the *Required Actions* view) marks a field required — and keeps *Trigger*
or *Approve*/*Reject* disabled — when its schema has a ``type`` that does not include ``"null"`` and its value is
None or "" (the UI's rule, read in ``airflow/ui``: ``!!schema.type && !(Array.isArray(type) && type.includes("null"))``).

* for every DAG and every human-in-the-loop task: the fields the form would block on are exactly the declared
  required ones (``restore_snapshot``: ``target``; ``backup_manual`` and the approval notes: none); every other
  param is nullable or carries a non-empty default that validates;
* the adapters treat None like "unset" (a cleared field means its default);
* the approval note accepts None; ``restore_snapshot`` runs with nothing but a target and a one-click approval
  (``{"note": None}``, as the form sends an untouched note); ``backup_manual`` runs with an empty conf.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from backups.config import load_config
from backups.demo import fmr
from tests.dags.common import load_dags, task_states
from tests.helpers import ROOT, run_backup

pytestmark = pytest.mark.airflow

#: dag id → the params a run cannot do without (everything else must let the form submit as is)
REQUIRED = {"restore_snapshot": {"target"}}


def _form_blocks(param) -> bool:
    """Airflow's form rule for one field holding its default: would it keep the submit button disabled?"""
    typ = param.schema.get("type")
    required = bool(typ) and not (isinstance(typ, list) and "null" in typ)
    return required and param.value in (None, "")


def _blocking(params) -> set[str]:
    return {k for k in params if _form_blocks(params.get_param(k))}


@pytest.fixture(scope="module")
def bag():
    return load_dags()


def test_every_optional_param_is_nullable_or_has_a_valid_default(bag):
    from airflow.sdk.definitions.param import ParamsDict

    assert {"restore_snapshot", "backup_manual", "backup_retention"} <= set(bag.dags)
    for dag_id, dag in bag.dags.items():
        required = REQUIRED.get(dag_id, set())
        assert _blocking(dag.params) == required, dag_id
        for name in dag.params:
            if name in required:
                continue
            p = dag.params.get_param(name)
            typ = p.schema.get("type")
            nullable = isinstance(typ, list) and "null" in typ
            assert nullable or p.value not in (None, "", []), f"{dag_id}.{name}: not nullable, empty default"
            p.resolve(p.value)  # the default itself validates
            if nullable:
                p.resolve(None)  # and so does a cleared field
        if not required:
            dag.params.validate()  # the whole form as it comes
        else:
            ParamsDict({k: v for k, v in dag.params.items() if k not in required})


def test_approval_forms_need_nothing_typed(bag):
    from airflow.providers.standard.operators.hitl import HITLOperator

    hitl = [(dag_id, t) for dag_id, dag in bag.dags.items() for t in dag.tasks if isinstance(t, HITLOperator)]
    assert {(d, t.task_id) for d, t in hitl} == {("backup_manual", "approve_backup"),
                                                  ("restore_snapshot", "approve_restore")}
    for dag_id, t in hitl:
        assert set(t.params) == {"note"}, (dag_id, t.task_id)
        assert _blocking(t.params) == set(), (dag_id, t.task_id)
        t.validate_params_input({"note": None})  # the form's untouched note
        t.validate_params_input({"note": ""})


def test_an_empty_choice_has_words_not_null(bag):
    """Issue 20: the drill form's Storage field showed a literal ``null``: a select whose choices include None
    (the field's "empty") labels it with ``values_display``."""
    seen = []
    for dag_id, dag in bag.dags.items():
        for name in dag.params:
            schema = dag.params.get_param(name).schema
            if None in (schema.get("enum") or []):
                seen.append((dag_id, name))
                label = (schema.get("values_display") or {}).get(None)
                assert label and label != "null", (dag_id, name)
    assert ("dr_drill", "storage") in seen and ("restore_snapshot", "storage") in seen


def test_restore_sections_put_only_the_common_fields_first(bag):
    p = bag.dags["restore_snapshot"].params
    basic = [k for k in p if not p.get_param(k).schema.get("section")]
    assert basic == ["target", "snapshot", "force", "require_approval"]
    assert {p.get_param(k).schema["section"] for k in p if k not in basic} == {"Advanced"}
    assert p.get_param("storage").schema["enum"][0] is None and p.get_param("tier").schema["enum"][0] is None


def test_cleared_fields_mean_their_defaults(tmp_path):
    from backups.commands.backup import MANUAL_TIER, selection, with_manual_tier
    from backups.orchestration.restore_dag import request_from_params

    cfg = load_config()
    cleared = {"target": str(tmp_path / "t"), "snapshot": None, "tier": None, "storage": None, "sources": None,
               "include": None, "tables": None, "pg_target_conn_id": None, "force": False}
    req = request_from_params(cfg, cleared)
    assert (req.snapshot, req.tier, req.storage, req.sources, req.includes, req.tables, req.pg_target_name) == \
           ("latest", None, None, None, None, None, None)
    assert request_from_params(cfg, {**cleared, "snapshot": "  ", "sources": [], "tier": ""}).snapshot == "latest"
    mcfg = with_manual_tier(cfg)
    sel = selection(mcfg, MANUAL_TIER, {"backup_type": None, "sources": None, "storages": None, "comment": None})
    assert (sel.type, sel.sources, sel.storages, sel.comment) == ("full", list(cfg.sources), list(cfg.storages), "")


# ------------------------------------------------------------------------------------------------ runs
@pytest.fixture
def app(tmp_path, monkeypatch):
    home, root = tmp_path / "fmr", tmp_path / "backups"
    fmr.generate(home, scale=0.2, seed=13)
    (tmp_path / "staging").mkdir()
    monkeypatch.setenv("FMR_HOME", str(home))
    monkeypatch.setenv("BACKUP_ROOT", str(root))
    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    monkeypatch.setenv("BACKUP_CONFIG", str(ROOT / "include" / "backups.local.yaml"))
    return {"home": home, "root": root, "tmp": tmp_path}


@pytest.mark.timeout(240)
def test_restore_with_only_a_target_and_one_click_approval(airflow_db, app, approver):
    run_backup(load_config(), "weekly", logical_date="2026-01-04T01:00:00Z")
    target = app["tmp"] / "restored"
    responder = approver("restore_snapshot", "approve_restore", ["Approve"], {"note": None})
    dr = load_dags().dags["restore_snapshot"].test(run_conf={"target": str(target)})
    responder.join(5)
    states = task_states(dr)
    assert dr.state == "success", states
    assert set(states.values()) == {"success"}, states
    doc = json.loads((target / "RESTORE_REPORT.json").read_text())
    assert doc["approval"]["choice"] == "Approve" and doc["approval"]["note"] == ""
    assert "include: everything; tables: all" in responder.detail["body"]


@pytest.mark.timeout(240)
def test_manual_backup_with_an_empty_conf_and_one_click_approval(airflow_db, app, approver):
    responder = approver("backup_manual", "approve_backup", ["Approve"], {"note": None})
    dr = load_dags().dags["backup_manual"].test(logical_date=datetime(2026, 2, 6, 9, 0, tzinfo=UTC), run_conf={})
    responder.join(5)
    states = task_states(dr)
    assert dr.state == "success", states
    assert "failed" not in states.values(), states
    assert "* comment: -" in responder.detail["body"]
