"""The ``backup_retention`` DAG of FMR V2 for Apache Airflow: every tier's retention, on every storage, daily.

Config in, DAG out, like the backup DAGs (see docs/dags.md, "Retention").
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import backups  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:  # Astro-style project: the package lives in <project>/include
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from backups.config import load_config  # noqa: E402
from backups.orchestration.retention_dag import build_retention_dag  # noqa: E402

_dag = build_retention_dag(load_config())
globals()[_dag.dag_id] = _dag
