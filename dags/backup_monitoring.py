"""The ``backup_monitoring`` DAG of FMR V2 for Apache Airflow: stale, failing and anomalous backups noticed,
alerted once, escalated, reported (see README, "Monitoring").

Config in, DAG out, like the backup DAGs: the ``monitoring:`` block of the config is the only input; Variables and
connections are read by the tasks, never at parse time.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import backups  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:  # Astro-style project: the package lives in <project>/include
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from backups.config import load_config  # noqa: E402
from backups.orchestration.monitoring_dag import build_monitoring_dag  # noqa: E402

_dag = build_monitoring_dag(load_config())
globals()[_dag.dag_id] = _dag
