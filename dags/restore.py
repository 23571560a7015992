"""The ``restore_snapshot`` DAG of FMR V2 for Apache Airflow: a snapshot into a directory, approved and verified.

Triggered from the UI form (snapshot or "latest", storage, target directory, sources, include globs, tables);
a person approves it under "Required Actions"; archived (S3 GLACIER) objects are thawed by a deferrable sensor;
every restored file is re-hashed and the databases validated; the report lands in the target directory.
Config in, DAG out, like the backup DAGs (see docs/dags.md, "Restore").
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import backups  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:  # Astro-style project: the package lives in <project>/include
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from backups.config import load_config  # noqa: E402
from backups.orchestration.restore_dag import build_restore_dag  # noqa: E402

_dag = build_restore_dag(load_config())
globals()[_dag.dag_id] = _dag
