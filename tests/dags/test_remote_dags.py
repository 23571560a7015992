"""The shipped production config end to end under Airflow: backup_weekly fans out to local + S3 (moto) + SFTP
(a real sshd, objects encrypted at rest), every copy verified; the credentials never appear in task logs,
manifests or reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from backups.catalog import Catalog
from backups.config import load_config
from backups.demo import fmr
from backups.engine.checker import verify
from backups.storage import open_storage
from tests.dags.common import load_dags, task_states
from tests.helpers import ROOT
from tests.unit.storage.test_s3 import BUCKET, SECRET, s3_endpoint  # noqa: F401 - fixture
from tests.unit.storage.test_sftp import sshd  # noqa: F401 - fixture

pytestmark = pytest.mark.airflow
OFFSITE_KEY = "5eC7e7" * 10 + "abcd"  # 64 hex digits


@pytest.fixture
def prod(tmp_path, monkeypatch, s3_endpoint, sshd):  # noqa: F811
    home, root = tmp_path / "fmr", tmp_path / "backups"
    fmr.generate(home, scale=0.3, seed=17)
    pub = (sshd.dir / "host_ed25519.pub").read_text().split()
    env = {
        "BACKUP_CONFIG": str(ROOT / "include" / "backups.yaml"),
        "FMR_HOME": str(home), "BACKUP_ROOT": str(root), "BACKUP_STAGING": str(tmp_path),
        "BACKUP_S3_BUCKET": BUCKET, "BACKUP_SFTP_PATH": str(tmp_path / "offsite"), "BACKUP_OFFSITE_KEY": OFFSITE_KEY,
        "AIRFLOW_CONN_BACKUP_S3": json.dumps({
            "conn_type": "aws", "login": "testing", "password": SECRET,
            "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}}),
        "AIRFLOW_CONN_BACKUP_SFTP": json.dumps({
            "conn_type": "sftp", "host": "127.0.0.1", "port": sshd.port, "login": sshd.user,
            "extra": {"key_file": str(sshd.dir / "client_ed25519"), "host_key": f"{pub[0]} {pub[1]}",
                      "look_for_keys": "false"}}),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return {"home": home, "root": root, "tmp": tmp_path}


def _secrets() -> list[str]:
    return [SECRET, OFFSITE_KEY]


def test_weekly_fans_out_to_every_target_and_never_logs_secrets(airflow_db, prod, capfd, caplog):
    from backups.orchestration.connections import AirflowResolver

    dag = load_dags().dags["backup_weekly"]
    dr = dag.test(logical_date=datetime(2026, 8, 2, 1, 0, tzinfo=UTC))
    states = task_states(dr)
    assert dr.state == "success", states
    assert [states[f"backup.upload[{i}]"] for i in range(3)] == ["success"] * 3
    cfg = load_config()
    resolver = AirflowResolver()
    for name in ("local", "cloud", "offsite"):
        storage = open_storage(cfg, name, resolver, read_only=True)
        cat = Catalog(storage, cfg.application)
        assert [s.id for s in cat.ordered()] == ["weekly-20260802T010000Z"], name
        assert verify(storage, cat, read_data=True).ok, name
    # the offsite copy is encrypted at rest and its manifest names the key only by fingerprint
    offsite = open_storage(cfg, "offsite", resolver)
    assert Catalog(offsite, cfg.application).get("latest").doc["key_fingerprint"] == offsite.key_fingerprint
    raw_manifest = (prod["tmp"] / "offsite" / "snapshots" / "weekly-20260802T010000Z.json").read_bytes()
    assert raw_manifest.startswith(b"FMRBKENC") and b"format_version" not in raw_manifest  # ciphertext
    # no secret anywhere a person (or an attacker) can read: task logs, manifests, reports. dag.test() runs every
    # task in this process, so the task logs ARE this output and these log records (it writes no log files under
    # AIRFLOW_HOME/logs): first prove they were captured, from every task, with the lines where credentials are
    # handled and where return values (XComs) are logged, then look for the secrets in them.
    out, err = capfd.readouterr()
    task_logs = out + err + caplog.text
    for task_id in dag.task_ids:
        assert f"task_id={task_id} " in task_logs, f"no log of task {task_id} was captured"
    assert "conn_id='backup_s3'" in task_logs and "via connection backup_sftp" in task_logs
    assert "Returned value was" in task_logs and "weekly-20260802T010000Z" in task_logs
    local = prod["root"] / "local"
    documents = [local / "snapshots" / "weekly-20260802T010000Z.json",
                 local / "reports" / "weekly" / "weekly-20260802T010000Z.json",
                 local / "reports" / "weekly" / "weekly-20260802T010000Z.md"]
    documents += sorted(local.rglob("*.part.json"))
    assert len(documents) == 6 and all(p.is_file() for p in documents)  # the manifest, 2 reports, 3 part records
    texts = [task_logs, *(p.read_text(errors="replace") for p in documents)]
    for secret in _secrets():
        for t in texts:
            assert secret not in t
