"""The Airflow side of ``backupctl doctor`` (backups.orchestration.doctor, loaded through the ``backups.doctor``
entry point): connections defined in Airflow, the backup_io pool in the metadata DB, the SMTP connection."""

from __future__ import annotations

import json

import pytest

from tests.helpers import free_port, write_config

pytestmark = pytest.mark.airflow


@pytest.fixture
def s3_config(tmp_path, monkeypatch):
    home, root = tmp_path / "home", tmp_path / "repo"
    home.mkdir()
    cfg = write_config(tmp_path / "backups.yaml", home, root,
                       extra_storages="  cloud: {type: s3, bucket: b, conn_id: doctor_s3}\n")
    cfg.write_text(cfg.read_text() + "notify_email: [ops@example.com]\n")
    monkeypatch.setenv("BACKUP_CONFIG", str(cfg))
    return cfg


def _checks(result) -> dict[str, dict]:
    return {c["name"]: c for c in result.checks}


def test_pool_and_connections_missing_then_present(airflow_db, s3_config, monkeypatch):
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    from backups.commands.doctor import FAIL, OK, SmtpEndpoint, run_doctor
    from backups.config import load_config
    from backups.orchestration.doctor import AirflowDoctor

    monkeypatch.delenv("AIRFLOW_CONN_DOCTOR_S3", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_SMTP_DEFAULT", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_BACKUP_AIRFLOW_API", raising=False)
    with create_session() as session:
        session.query(Pool).filter(Pool.pool == "backup_io").delete()
    cfg = load_config()
    missing = {c.name: c for c in AirflowDoctor().checks(cfg)}
    assert missing["airflow connection doctor_s3"].status == FAIL
    assert "AIRFLOW_CONN_DOCTOR_S3" in missing["airflow connection doctor_s3"].fix
    assert missing["airflow pool backup_io"].status == FAIL and "pools set backup_io" in missing["airflow pool backup_io"].fix
    assert missing["airflow connection smtp_default"].status == FAIL
    assert missing["airflow connection backup_airflow_api"].status == "warn"

    Pool.create_or_update_pool("backup_io", slots=2, description="doctor test", include_deferred=False)
    port = free_port()
    monkeypatch.setenv("AIRFLOW_CONN_DOCTOR_S3", json.dumps({"conn_type": "aws", "login": "a", "password": "b", "extra": {
        "endpoint_url": f"http://127.0.0.1:{free_port()}", "region_name": "us-east-1"}}))  # nothing listens there
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port,
                                                                "extra": {"disable_ssl": True}}))
    present = {c.name: c for c in AirflowDoctor().checks(cfg)}
    assert present["airflow connection doctor_s3"].status == OK
    assert present["airflow pool backup_io"].status == OK and "2 slot" in present["airflow pool backup_io"].detail
    assert AirflowDoctor().smtp_endpoint() == SmtpEndpoint("smtp_default", "127.0.0.1", port, False)

    # the whole doctor through the entry point: nothing listens on the SMTP port, the S3 bucket is unreachable
    result = run_doctor(smtp_timeout=2)
    checks = _checks(result)
    assert checks["airflow pool backup_io"]["status"] == OK
    assert checks["smtp smtp_default"]["status"] == FAIL and not result.ok
    assert checks["storage cloud"]["status"] == FAIL and checks["storage local"]["status"] == OK


def test_one_api_connection_with_the_deprecated_fallbacks(airflow_db, s3_config, monkeypatch, caplog):
    """Run notes and the schedule check share ``backup_airflow_api``; the schedule check's former ``airflow_api``
    (and the config key ``monitoring.airflow_api_conn_id``) still work, with a deprecation warning, and doctor says
    which one is used and how to move."""
    from backups.commands.doctor import FAIL, OK, WARN
    from backups.config import load_config
    from backups.orchestration.api_connection import api_client
    from backups.orchestration.doctor import AirflowDoctor

    for var in ("AIRFLOW_CONN_BACKUP_AIRFLOW_API", "AIRFLOW_CONN_AIRFLOW_API", "AIRFLOW_CONN_MY_API"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config()
    check = lambda c: AirflowDoctor().api_connection(c)  # noqa: E731

    assert api_client() == (None, "backup_airflow_api")
    assert check(cfg).status == WARN and "schedules-unverified" in check(cfg).detail

    legacy = {"conn_type": "http", "host": "airflow-api:8080/", "login": "monitor", "password": "pw"}
    monkeypatch.setenv("AIRFLOW_CONN_AIRFLOW_API", json.dumps(legacy))
    with pytest.warns(DeprecationWarning, match="'airflow_api' is deprecated: rename it to 'backup_airflow_api'"):
        api, conn_id = api_client()
    assert (conn_id, api.base, api.login) == ("airflow_api", "http://airflow-api:8080", "monitor")
    assert "rename it to 'backup_airflow_api'" in caplog.text  # in the task log too
    c = check(cfg)
    assert c.status == WARN and "'airflow_api' (http://airflow-api:8080) is used instead" in c.detail
    assert c.fix == "rename the connection 'airflow_api' to 'backup_airflow_api'"

    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_AIRFLOW_API", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": 8080, "schema": "https", "login": "ops", "password": "pw"}))
    caplog.clear()
    api, conn_id = api_client()  # both defined: the one id, no warning
    assert (conn_id, api.base, api.login) == ("backup_airflow_api", "https://127.0.0.1:8080", "ops")
    assert "deprecated" not in caplog.text
    assert check(cfg).status == OK and "https://127.0.0.1:8080" in check(cfg).detail

    # an explicit monitoring.airflow_api_conn_id is tried first, deprecated
    monkeypatch.setenv("AIRFLOW_CONN_MY_API", json.dumps({"conn_type": "http", "host": "http://other:9090"}))
    configured = cfg.model_copy(update={"monitoring": cfg.monitoring.model_copy(update={"airflow_api_conn_id": "my_api"})})
    with pytest.warns(DeprecationWarning, match="monitoring.airflow_api_conn_id .* is deprecated"):
        api, conn_id = api_client("my_api")
    assert (conn_id, api.base) == ("my_api", "http://other:9090")
    c = check(configured)
    assert c.status == WARN and "remove monitoring.airflow_api_conn_id" in c.fix

    # a connection whose host and port disagree: doctor fails it, the client refuses it naming the connection
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_AIRFLOW_API", json.dumps(
        {"conn_type": "http", "host": "http://airflow-api:8080", "port": 9090}))
    with pytest.raises(ValueError, match="Airflow connection 'backup_airflow_api': .*port 8080 .* says 9090"):
        api_client()
    assert check(cfg).status == FAIL and "says 9090" in check(cfg).detail


def test_connections_are_looked_up_as_a_task_does(airflow_db, s3_config, monkeypatch):
    """A connection stored only in the metadata database (Admin -> Connections, `make airflow`'s settings) is
    found — outside a task Airflow reads the environment only, so doctor reported it missing."""
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    from backups.commands.doctor import OK, run_doctor

    monkeypatch.delenv("AIRFLOW_CONN_DOCTOR_S3", raising=False)
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == "doctor_s3").delete()
        session.add(Connection(conn_id="doctor_s3", conn_type="aws", login="a", password="b",
                               extra=json.dumps({"endpoint_url": f"http://127.0.0.1:{free_port()}"})))
    try:
        checks = _checks(run_doctor(smtp_timeout=1))
        assert checks["airflow connection doctor_s3"]["status"] == OK, checks["airflow connection doctor_s3"]
        assert "airflow" not in checks  # the Airflow checks ran (no skip, no failure of the layer itself)
    finally:
        with create_session() as session:
            session.query(Connection).filter(Connection.conn_id == "doctor_s3").delete()
