"""Helpers of the DAG tests: the parsed DAG folder and a run's task states."""

from __future__ import annotations

from typing import Any

from tests.helpers import ROOT

DAGS = ROOT / "dags"


def load_dags() -> Any:
    """``DagBag`` of the shipped ``dags/`` folder; fails the test on any import error."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag


def task_states(dr: Any) -> dict[str, str]:
    """task id (``task[i]`` for a mapped task's i-th instance) → state, for one DAG run."""
    return {f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: str(ti.state)
            for ti in dr.get_task_instances()}
