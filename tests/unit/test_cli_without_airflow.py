"""``backupctl`` is the disaster-day door: it must work when Airflow cannot even be imported (issue 9).

A child Python makes ``airflow`` unimportable (``sys.modules['airflow'] = None``) and runs backup, verify and
restore on the shipped local config; no module of the Airflow layer may be loaded on the way."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT, app_tree, db_rows, subprocess_env

CHILD = """
import json, sys
sys.modules["airflow"] = None  # `import airflow` raises ImportError from here on
from backups.cli import main
codes = [main(argv) for argv in json.loads(sys.argv[1])]
loaded = sorted(m for m in sys.modules if m.startswith(("airflow", "backups.orchestration")) and sys.modules[m])
print(json.dumps({"codes": codes, "loaded": loaded}))
"""


def test_backup_verify_restore_with_airflow_unimportable(tmp_path):
    from backups.demo import fmr

    home, root, target = tmp_path / "fmr", tmp_path / "backups", tmp_path / "restored"
    fmr.generate(home, scale=0.1, seed=8)
    config = str(ROOT / "include" / "backups.local.yaml")
    runs = [["--config", config, "-q", "backup", "--tier", "weekly", "--json"],
            ["--config", config, "-q", "verify", "--read-data", "--json"],
            ["--config", config, "-q", "restore", "latest", "--target", str(target), "--json"]]
    env = subprocess_env(FMR_HOME=str(home), BACKUP_ROOT=str(root), BACKUP_STAGING=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(runs)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"codes": [0, 0, 0], "loaded": []}
    assert app_tree(target / "app_files") == app_tree(home)
    assert db_rows(target / "app_db" / "app.db") == db_rows(home / "app.db")


def test_conn_id_config_without_airflow_is_one_clear_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text((ROOT / "include" / "backups.local.yaml").read_text().replace(
        'local: {type: local, path: "${BACKUP_ROOT}/local"}',
        'local: {type: local, path: "${BACKUP_ROOT}/local"}\n  s3: {type: s3, bucket: b, conn_id: aws_backup}'))
    child = ("import sys; sys.modules['airflow'] = None\nfrom backups.cli import main\n"
             f"sys.exit(main(['--config', {str(config)!r}, 'verify']))")
    out = subprocess.run([sys.executable, "-c", child], env=subprocess_env(BACKUP_ROOT=str(tmp_path)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "Airflow" in out.stderr and "conn_id" in out.stderr
