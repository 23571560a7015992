"""Data validation of backed-up databases with Great Expectations (plain library: no Airflow import).

The suite is derived from what the *source* reported when it was backed up — the manifest's
``sources[<name>]["details"]["tables"]``: per table the row count, the column names, the primary key and the
unique constraints. A restored database must match it exactly:

* ``ExpectTableRowCountToEqual(value=rows)`` — no row lost or added;
* ``ExpectTableColumnsToMatchSet(column_set=..., exact_match=True)`` — same schema (column names);
* ``ExpectColumnValuesToBeUnique`` / ``ExpectCompoundColumnsToBeUnique`` on the primary key and every unique
  constraint, ``ExpectColumnValuesToNotBeNull`` on key columns — keys survived intact.

Tables missing from (or unexpected in) the restored database are reported as failures before GX runs.

``great_expectations`` takes 10–15 s to import, so it is imported inside the functions only: importing this
package is free. The result of a validation is a JSON-safe dict (XCom-sized); a failed validation raises
:class:`backups.errors.IntegrityError` listing the failed expectations (``exc.result`` holds the dict).
"""

from __future__ import annotations

from .suite import suite_for, validate_postgres, validate_sqlite

__all__ = ["suite_for", "validate_postgres", "validate_sqlite"]
