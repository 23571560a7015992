"""The project's DAGs through the Airflow UI in a real browser (see conftest.py for the server and fixtures)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(900)


def test_dags_list_shows_the_project_dags(airflow_server, page, shot):
    page.goto(airflow_server.url + "/dags")
    for dag_id in ("backup_manual", "restore_snapshot", "backup_daily"):
        page.get_by_role("link", name=dag_id, exact=True).first.wait_for()
    shot("dags")
