"""The ``dr_drill`` DAG of FMR V2 for Apache Airflow: a scheduled disaster-recovery drill.

Restores each tier's newest restorable snapshot from the drill storage into isolation, tests the restored
application (Great Expectations with Data Docs, integrity, config files, the configured smoke checks), measures
RTO and RPO against the targets of ``drill:`` and reports; the scratch data is removed by a teardown task.
Config in, DAG out (see docs/dags.md and docs/disaster-recovery.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import backups  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:  # Astro-style project: the package lives in <project>/include
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from backups.config import load_config  # noqa: E402
from backups.orchestration.drill_dag import build_drill_dag  # noqa: E402

_dag = build_drill_dag(load_config())
globals()[_dag.dag_id] = _dag
