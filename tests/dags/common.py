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


def run_note(dr: Any) -> str | None:
    """The note of a DAG run as the UI shows it (read fresh from the metadata DB)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        row = s.scalar(select(DagRun).where(DagRun.dag_id == dr.dag_id, DagRun.run_id == dr.run_id))
        return None if row is None else row.note
