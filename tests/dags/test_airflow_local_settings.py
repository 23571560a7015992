"""``make airflow`` loads ``airflow_settings.yaml`` through the REST API of the Airflow it started
(``tools.airflow_local.apply_settings`` with the library's one client, ``backups.airflow_api.AirflowApi``): against
Airflow's real API (uvicorn on loopback, the test metadata DB) every connection, pool and variable arrives, and
loading again replaces them (409 → PATCH) instead of failing."""

from __future__ import annotations

import json

import pytest

from tests.dags.approvals import PASSWORD, USER, serve_core_api
from tests.helpers import ROOT

pytestmark = pytest.mark.airflow


def test_settings_reach_airflow_and_a_second_load_replaces_them(airflow_db, approver, tmp_path):
    from backups.airflow_api import AirflowApi
    from tools.airflow_local import apply_settings
    from tools.airflow_settings import load

    data = load(ROOT / "airflow_settings.yaml")
    data["variables"] = {"h_tools_probe": "one"}
    with serve_core_api() as (url, _port):
        api = AirflowApi(url + "/", login=USER, password=PASSWORD)
        for cid in data["connections"]:
            try:
                api.delete(f"/connections/{cid}")
            except Exception:  # noqa: BLE001 - not there yet
                pass
        first = apply_settings(api, data)
        assert first == ["connection fmr_postgres", "connection backup_s3", "connection backup_sftp",
                         "pool backup_io", "variable h_tools_probe"]
        s3 = api.get("/connections/backup_s3")
        assert (s3["conn_type"], s3["login"]) == ("aws", "testing")
        assert json.loads(s3["extra"])["endpoint_url"] == "http://127.0.0.1:5000"
        assert api.get("/pools/backup_io")["slots"] == 2

        data["variables"]["h_tools_probe"] = "two"
        data["pools"]["backup_io"]["slots"] = 3
        assert apply_settings(api, data) == first  # every one existed: replaced, none FAILED
        assert api.get("/variables/h_tools_probe")["value"] == "two"
        assert api.get("/pools/backup_io")["slots"] == 3
