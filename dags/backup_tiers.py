"""Scheduled backup DAGs of FMR V2 for Apache Airflow: one ``backup_<tier>`` DAG per tier of the config.

Config in, DAG out: the validated config (``$BACKUP_CONFIG`` or ``include/backups.yaml``) is the only input;
a broken config surfaces as this file's import error, naming the file, the key and the fix. No Variable,
Connection or heavy import at parse time: tasks resolve connections and load the engine when they run.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import backups  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:  # Astro-style project: the package lives in <project>/include
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from backups.config import load_config  # noqa: E402
from backups.orchestration.backup_dags import build_backup_dag  # noqa: E402

_cfg = load_config()
for _tier in sorted(_cfg.tiers):
    _dag = build_backup_dag(_cfg, _tier)
    globals()[_dag.dag_id] = _dag
