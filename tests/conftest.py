"""Test-session environment: a private Airflow home and metadata DB, set before anything imports Airflow.

Airflow reads its configuration when it is first imported, so the variables are set here at module level; Airflow
itself is imported only inside the ``airflow_db`` fixture, which only the DAG tests request — the plain-library
tests never pay for it. ``FMR_HOME`` and ``BACKUP_ROOT`` get temporary defaults so that the shipped
``include/backups.yaml`` loads when the DAG files are parsed (tests that back something up set their own).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_TMP = Path(tempfile.mkdtemp(prefix="fmr-tests-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)

os.environ["AIRFLOW_HOME"] = str(_TMP / "airflow-home")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")  # dag.test() needs the DAGs in this folder
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_TMP / 'airflow.db'}"
os.environ.setdefault("BACKUP_CONFIG", str(ROOT / "include" / "backups.local.yaml"))  # the embedded default
os.environ.setdefault("FMR_HOME", str(_TMP / "fmr-home"))
os.environ.setdefault("BACKUP_ROOT", str(_TMP / "backup-root"))


@pytest.fixture(scope="session")
def airflow_db():
    """A fresh Airflow metadata DB (tables from the ORM), for tests that run ``dag.test()``."""
    from airflow.utils import db

    db.resetdb()
    yield


# Hypothesis profiles (tests/property): "default" keeps make test fast; `--hypothesis-profile=long` searches deeper.
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

_PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]  # no slow 'explain' phase

settings.register_profile("default", max_examples=300, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow], phases=_PHASES)
settings.register_profile("long", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow], phases=_PHASES)
settings.load_profile("default")
settings.register_profile("quick", max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow], phases=_PHASES)


@pytest.fixture(autouse=True)
def _no_airflow_task_context(monkeypatch):
    """``dag.test()`` runs tasks in this process, and the task runner leaves its AIRFLOW_CTX_* variables in
    ``os.environ``: a later test's ``backupctl`` child would believe it is an Airflow task (a drill records the run
    as its owner, and its leftovers are then kept for days instead of removed when the process is gone)."""
    for name in [n for n in os.environ if n.startswith("AIRFLOW_CTX_")]:
        monkeypatch.delenv(name)
