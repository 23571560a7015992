"""The operations of the backup system, written once for both doors: ``backupctl`` and the DAG task adapters.

One module per operation (:mod:`.backup`, :mod:`.verify`, :mod:`.prune`; restore in :mod:`.restore`). Plain
Python: nothing here imports Airflow or :mod:`backups.orchestration`. A step takes the config, the selection or
plan and an optional connection resolver (:mod:`backups.connections`), returns a JSON-able result (a dict, or a
:class:`~backups.commands.base.Result` with ``to_dict()``) and raises only :mod:`backups.errors`.
"""
