"""FMR V2 backups: a streaming, verifiable snapshot engine with full / differential / incremental chains.

The plain library (everything here except ``orchestration``) never imports Airflow; the DAGs under ``dags/``
and the ``backupctl`` CLI both drive it.
"""

__version__ = "0.1.0"
FORMAT_VERSION = 2
