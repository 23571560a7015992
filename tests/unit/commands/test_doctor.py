"""``backupctl doctor``: each check passes on a ready host and fails, with its fix, on a broken one.

Real services: the local storage on disk, a real SMTP server (aiosmtpd) for the reachable case and a closed
port for the unreachable one. The Airflow-side checks are in tests/dags/test_doctor_airflow.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from backups.commands.doctor import FAIL, OK, SmtpEndpoint, format_report, run_doctor
from tests.helpers import ROOT, free_port, subprocess_env, write_config


def _by_name(result) -> dict[str, dict]:
    return {c["name"]: c for c in result.checks}


@pytest.fixture
def ready(tmp_path, monkeypatch):
    home, root = tmp_path / "home", tmp_path / "repo"
    home.mkdir()
    cfg = write_config(tmp_path / "backups.yaml", home, root)
    monkeypatch.setenv("BACKUP_CONFIG", str(cfg))
    return {"config": cfg, "root": root, "tmp": tmp_path}


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller

    class Sink:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd hook name
            return "250 OK"

    port = free_port()
    ctl = Controller(Sink(), hostname="127.0.0.1", port=port)
    ctl.start()
    yield port
    ctl.stop()


def test_ready_host_passes_and_leaves_no_probe_object(ready):
    result = run_doctor(airflow=False)
    checks = _by_name(result)
    assert result.ok and result.exit_code == 0, format_report(result)
    assert checks["config"]["status"] == OK and checks["env BACKUP_CONFIG"]["status"] == OK
    assert checks["storage local"]["status"] == OK and "writable" in checks["storage local"]["detail"]
    leftovers = [p for p in (ready["root"] / "local").rglob("*") if p.is_file()]
    assert leftovers == []
    assert format_report(result).endswith("READY")


def test_unwritable_storage_fails_with_fix_and_exit_5(ready, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    text = ready["config"].read_text().replace(str(ready["root"] / "local"), str(blocker / "local"))
    ready["config"].write_text(text)
    result = run_doctor(airflow=False)
    check = _by_name(result)["storage local"]
    assert check["status"] == FAIL and check["fix"] and str(blocker) in check["detail"]
    assert result.exit_code == 5
    report = format_report(result)
    assert "fix:" in report and report.splitlines()[-1] == "NOT READY: 1 check(s) failed"


def test_unset_variable_fails_config_and_env(ready, monkeypatch):
    ready["config"].write_text(ready["config"].read_text().replace(str(ready["root"]), "${DOCTOR_TEST_ROOT}"))
    monkeypatch.delenv("DOCTOR_TEST_ROOT", raising=False)
    result = run_doctor(airflow=False)
    checks = _by_name(result)
    assert checks["config"]["status"] == FAIL and "DOCTOR_TEST_ROOT" in checks["config"]["detail"]
    assert checks["env variables"]["status"] == FAIL and "export DOCTOR_TEST_ROOT=" in checks["env variables"]["fix"]
    assert result.exit_code == 2


def test_missing_encryption_key_is_exit_8(ready, monkeypatch):
    text = ready["config"].read_text().replace(
        f'local: {{type: local, path: "{ready["root"]}/local"}}',
        f'local: {{type: local, path: "{ready["root"]}/local", encryption: {{key_env: DOCTOR_TEST_KEY}}}}')
    ready["config"].write_text(text)
    monkeypatch.delenv("DOCTOR_TEST_KEY", raising=False)
    result = run_doctor(airflow=False)
    assert _by_name(result)["env DOCTOR_TEST_KEY"]["status"] == FAIL
    assert result.exit_code == 8


def test_unset_backup_config_is_a_warning_not_a_failure(ready, monkeypatch):
    monkeypatch.delenv("BACKUP_CONFIG")
    result = run_doctor(str(ready["config"]), airflow=False)
    assert _by_name(result)["env BACKUP_CONFIG"]["status"] == "warn" and result.ok


def test_unset_backup_config_without_a_shipped_config_fails_with_the_fix(ready, monkeypatch, tmp_path):
    # pip-installed: the default path (next to the package) holds no config; the DAGs would not import
    monkeypatch.delenv("BACKUP_CONFIG")
    monkeypatch.setattr("backups.config.DEFAULT_CONFIG", tmp_path / "site-packages" / "backups.yaml")
    result = run_doctor(str(ready["config"]), airflow=False)
    check = _by_name(result)["env BACKUP_CONFIG"]
    assert check["status"] == FAIL and "no shipped config" in check["detail"] and "ships none" in check["detail"]
    assert "include/backups.yaml" in check["fix"] and "BACKUP_CONFIG" in check["fix"]
    assert "the shipped" not in check["detail"] and result.exit_code == 2


def test_smtp_reachable(ready, smtp_server):
    ready["config"].write_text(ready["config"].read_text() + "notify_email: [ops@example.com]\n")
    result = run_doctor(airflow=False, smtp=SmtpEndpoint("smtp_default", "127.0.0.1", smtp_server))
    check = _by_name(result)["smtp smtp_default"]
    assert check["status"] == OK and f"127.0.0.1:{smtp_server}" in check["detail"] and result.ok


def test_smtp_unreachable_fails_with_fix(ready):
    ready["config"].write_text(ready["config"].read_text() + "notify_email: [ops@example.com]\n")
    closed = free_port()  # nothing listens there
    result = run_doctor(airflow=False, smtp=SmtpEndpoint("smtp_default", "127.0.0.1", closed), smtp_timeout=2)
    check = _by_name(result)["smtp smtp_default"]
    assert check["status"] == FAIL and "smtp_default" in check["fix"] and result.exit_code == 2


def test_cli_doctor_without_airflow_loads_no_airflow_layer(ready):
    child = ("import json, sys\nsys.modules['airflow'] = None\nfrom backups.cli import main\n"
             "code = main(['doctor'])\n"
             "print(json.dumps({'code': code, 'loaded': sorted(m for m in sys.modules if m.startswith(('airflow', "
             "'backups.orchestration')) and sys.modules[m])}))")
    out = subprocess.run([sys.executable, "-c", child], env=subprocess_env(), capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"code": 0, "loaded": []}
    assert "READY" in lines and any(line.startswith("SKIP  airflow") for line in lines)


# ------------------------------------------------------------------------------------------------ Airflow side (issue 20)
def _doctor_child(tmp_path, **env):
    """``backupctl doctor`` as a person runs it: a fresh process, HOME in tmp_path, no Airflow environment."""
    base = {k: v for k, v in subprocess_env().items() if not k.startswith("AIRFLOW")}
    base.update(HOME=str(tmp_path / "home-dir"), **env)
    (tmp_path / "home-dir").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "backups.cli", "doctor"], env=base, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_doctor_without_airflow_home_creates_nothing(ready, tmp_path):
    """Run without AIRFLOW_HOME it created ~/airflow/airflow.db (and ~/airflow/logs); now it creates nothing
    there, says it is not looking at an Airflow component's environment, and cannot check the pool."""
    pytest.importorskip("airflow")
    out = _doctor_child(tmp_path, BACKUP_CONFIG=str(ready["config"]))
    assert out.returncode == 0, out.stdout + out.stderr
    assert not (tmp_path / "home-dir" / "airflow").exists(), list((tmp_path / "home-dir").rglob("*"))
    lines = out.stdout.splitlines()
    assert any(x.startswith("WARN  airflow home") and "does not exist (AIRFLOW_HOME is not set)" in x for x in lines)
    assert any(x.startswith("WARN  airflow pool backup_io") and "no metadata database" in x for x in lines), out.stdout


def test_installed_but_broken_airflow_fails(ready, tmp_path):
    """Airflow installed but not importable said ``SKIP … not importable`` and then READY; now it fails."""
    broken = tmp_path / "broken" / "airflow"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('airflow is broken on purpose')\n")
    out = _doctor_child(tmp_path, BACKUP_CONFIG=str(ready["config"]),
                        PYTHONPATH=f"{tmp_path / 'broken'}:{ROOT}:{ROOT / 'include'}")
    assert out.returncode == 2, out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("FAIL  airflow "))
    assert "cannot be used here" in line and "broken on purpose" in line
    assert out.stdout.rstrip().endswith("NOT READY: 1 check(s) failed")
