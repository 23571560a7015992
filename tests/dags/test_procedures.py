"""A new operation needs no Airflow wiring: a toy procedure declared the commands way runs through both executors —
``commands.procedure.run`` (the CLI's) and ``orchestration.procedures.add_procedure_tasks`` (the DAG's) — with the
same results, the same skip, and its cleanup step as a teardown (the worked example of docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from backups.commands.base import Result
from backups.commands.procedure import CLEANUP, Procedure, RunContext, Skip, Step, run
from tests.dags.common import task_states

pytestmark = pytest.mark.airflow

WORDS = ["fleet", "robot", "skip-me", "dock"]


@dataclass
class Counted(Result):
    word: str
    letters: int


@dataclass
class Total(Result):
    letters: int
    words: list[str]


def _count(ctx: RunContext, results: dict, word: str) -> Counted:
    if word.startswith("skip"):
        raise Skip("not part of this run")
    return Counted(word, len(word) * ctx.params["weight"])


def _total(ctx: RunContext, results: dict, _: object) -> Total:
    counted = [c for c in results["count"].values() if c]
    return Total(sum(c.letters for c in counted), sorted(c.word for c in counted))


def _tidy(ctx: RunContext, results: dict, _: object) -> dict:
    return {"tidied": True}


TOY = Procedure("toy", (
    Step("count", "work", _count, fan_out="word", items=lambda ctx, r: list(WORDS), result=Counted, parallel=2),
    Step("total", "work", _total, needs=("count",), result=Total),
    Step("tidy", "end", _tidy, kind=CLEANUP, after=("total",)),
))


DAG_FILE = """
from datetime import UTC, datetime

from airflow.sdk import DAG

from backups.commands.procedure import RunContext
from backups.orchestration.procedures import add_procedure_tasks
from tests.dags.test_procedures import TOY, WORDS

with DAG("toy_procedure", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
    add_procedure_tasks(TOY, context=lambda actx, step: RunContext(cfg=None, params={"weight": 2}),
                        candidates=lambda step: list(WORDS))
"""


def test_a_toy_procedure_runs_alike_through_both_executors(airflow_db, tmp_path):
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    by_cli = run(TOY, RunContext(cfg=None, params={"weight": 2}))
    assert by_cli.results["total"] == Total(2 * len("fleetrobotdock"), ["dock", "fleet", "robot"])
    assert by_cli.results["count"]["skip-me"] is None and by_cli.states["tidy"] == "success"

    # the DAG door: the whole DAG file is the declaration handed to the builder; dag.test() needs the DAG
    # serialized in the metadata DB, as the DAG processor would leave it
    (tmp_path / "toy.py").write_text(DAG_FILE)
    DagBundlesManager().sync_bundles_to_db()
    bag = BundleDagBag(dag_folder=str(tmp_path), bundle_path=tmp_path, bundle_name="dags-folder")
    assert bag.import_errors == {}
    sync_bag_to_db(bag, "dags-folder", None)
    dag = bag.dags["toy_procedure"]
    assert sorted(dag.task_ids) == ["end.tidy", "work.count", "work.total"]
    assert dag.get_task("end.tidy").is_teardown
    dr = dag.test()
    states = task_states(dr)
    assert dr.state == "success", states
    assert states["work.count[2]"] == "skipped" and states["work.total"] == "success" and states["end.tidy"] == "success"
    ti = next(t for t in dr.get_task_instances() if t.task_id == "work.total")
    assert Total.from_dict(ti.xcom_pull(task_ids="work.total", map_indexes=-1)) == by_cli.results["total"]


def _approve_step(ctx, results, _):  # a gate's body never runs: the CLI skips it, the DAG asks a person
    raise AssertionError("not called")


def _thaw(ctx, results, _):
    from pathlib import Path

    from backups.commands.procedure import Wait

    polls = Path(ctx.params["polls"])

    def poll() -> bool:
        polls.write_text(polls.read_text() + "p" if polls.exists() else "p")
        return len(polls.read_text()) >= 2

    return Wait(poll=poll, interval=0.0, result=lambda: {"polls": len(polls.read_text())})


GATED = Procedure("gated", (
    Step("approve", "", _approve_step, kind="gate", doc="Go ahead?"),
    Step("thaw", "", _thaw, kind="wait"),
    Step("use", "", lambda ctx, r, _: {"thawed_after": r["thaw"]["polls"]}, needs=("thaw",)),
))

GATED_DAG_FILE = """
from datetime import UTC, datetime

from airflow.sdk import DAG, Param

from backups.commands.procedure import RunContext
from backups.orchestration.procedures import TaskOptions, add_procedure_tasks
from tests.dags.test_procedures import GATED

with DAG("gated_procedure", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC),
         params={"require_approval": Param(True, type="boolean"), "polls": Param("", type="string")}) as dag:
    add_procedure_tasks(GATED, context=lambda actx, step: RunContext(cfg=None, params=dict(actx["params"])),
                        candidates=lambda step: [], options={"thaw": TaskOptions(task_args={"poke_interval": 1})})
"""


def test_a_gate_and_a_wait_step_become_an_approval_and_a_sensor_over_the_same_poll(airflow_db, tmp_path):
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.providers.standard.operators.hitl import ApprovalOperator
    from airflow.sdk import BaseSensorOperator

    by_cli = run(GATED, RunContext(cfg=None, params={"polls": str(tmp_path / "cli-polls")}))
    assert by_cli.states == {"approve": "skipped", "thaw": "success", "use": "success"}
    assert by_cli.results["use"] == {"thawed_after": 2}

    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "gated.py").write_text(GATED_DAG_FILE)
    DagBundlesManager().sync_bundles_to_db()
    bag = BundleDagBag(dag_folder=str(tmp_path / "dags"), bundle_path=tmp_path / "dags", bundle_name="dags-folder")
    assert bag.import_errors == {}
    sync_bag_to_db(bag, "dags-folder", None)
    dag = bag.dags["gated_procedure"]
    assert isinstance(dag.get_task("approve"), ApprovalOperator) and dag.get_task("approve").subject == "Go ahead?"
    assert isinstance(dag.get_task("thaw"), BaseSensorOperator) and dag.get_task("thaw").trigger_rule == "none_failed"
    dr = dag.test(run_conf={"require_approval": False, "polls": str(tmp_path / "dag-polls")})
    states = task_states(dr)
    assert dr.state == "success", states
    assert states == {"approve": "skipped", "thaw": "success", "use": "success"}
    ti = next(t for t in dr.get_task_instances() if t.task_id == "use")
    assert ti.xcom_pull(task_ids="use", map_indexes=-1) == {"thawed_after": 2}
