"""The ``backup_manual`` DAG of FMR V2 for Apache Airflow: an on-demand backup behind a human approval.

Triggered from the UI form (type, sources, storages, comment); a person approves it under "Required
Actions" before anything runs. Config in, DAG out, like the tier DAGs (see docs/dags.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import backups  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:  # Astro-style project: the package lives in <project>/include
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from backups.commands.backup import MANUAL_TIER  # noqa: E402
from backups.config import load_config  # noqa: E402
from backups.orchestration.backup_dags import build_backup_dag  # noqa: E402

_dag = build_backup_dag(load_config(), MANUAL_TIER)
globals()[_dag.dag_id] = _dag
