"""The disaster-recovery drill: one implementation for ``backupctl drill`` and the ``dr_drill`` DAG.

A drill restores the newest restorable snapshot of each tier from the copy you would use in a disaster, into
isolation, tests the restored application and measures RTO and RPO against the targets of ``drill:`` in the
config. The steps are declared once, as the procedure :data:`DRILL` (:mod:`.steps`); each returns a typed,
JSON-able result, and each is one task of the ``dr_drill`` DAG (built by the generic builder):

1. :func:`plan_drill` — per tier: the drill storage (``--storage`` / ``drill.storage`` / the tier's last storage),
   opened **read-only**; the newest snapshot whose chain is complete there (newer ones with a missing object or
   manifest are passed over and reported); located with the restore command's :func:`~.restore.locate`.
2. :func:`isolate` — first :func:`clean_leftovers` (what killed drills left behind), then a fresh scratch
   directory ``<scratch>/<drill id>/`` (mode 0700, one folder per tier: the SQLite database is restored there)
   with its owner in ``.drill-owner.json``, and for PostgreSQL sources a scratch database
   ``drill_<run>_<tier>_<source>`` on ``drill.postgres`` — never a source's live database — with the same owner
   as its ``COMMENT ON DATABASE``.
3. :func:`restore_tier` — archive storages: the thaw wait (only with ``drill.approve_archive``; bounded by
   ``thaw_timeout``); then the restore command's :func:`~.restore.run_restore` (every file's SHA-256 checked while
   written; dumps loaded into the scratch database). :func:`run_drill` holds the storage's shared repository lock
   from here through step 4, so a prune cannot forget the snapshot before it is verified; the DAG's separate
   ``verify_tier`` task takes its own and fails a ``snapshot`` check when the snapshot is gone.
4. :func:`verify_tier` — every restored file re-hashed (:func:`~.restore.verify_restore`); the Great Expectations
   suite on each restored database with its Data Docs; referential integrity (``PRAGMA foreign_key_check``,
   PostgreSQL constraints validated); config files parse (YAML / JSON / TOML by extension); the ``smoke`` checks.
5. :func:`teardown` — always (a cleanup step): the scratch directory and every ``drill_<run>_*`` database
   removed (found by name, so it also cleans after a step that failed half-way); what it could not remove is a
   finding (:func:`teardown_findings`).
6. ``report`` — runs whatever happened before it, after the teardown: :func:`judge` — per tier RTO (plan +
   isolate + thaw + restore + verify) and RPO (drill start − when the snapshot's data was read,
   :func:`backups.catalog.data_time`: the basis of the status's age too — not its logical date), bytes, files,
   throughput; pass/fail of every check and of ``rto_minutes`` / ``rpo_hours``; then :func:`write_reports` —
   ``<drill id>.md/.html/.json`` and ``latest.*`` in :func:`drill_dir`, one line appended to ``history.jsonl``
   (the HTML charts RTO/RPO over that history), and a copy on another storage (:func:`store_reports`).

A drill killed with ``kill -9`` never reaches its teardown. Its scratch directory and databases carry their owner
(host, pid, the pid's kernel start time, start time, the Airflow run if any), and :func:`clean_leftovers` — run by
the next drill and by ``backupctl prune`` — removes those whose owner is dead: same host and the pid gone (or
reused by another process). A DAG run's leftovers (its tasks are separate processes) and other hosts' leftovers
are removed only when older than :data:`LEFTOVER_MAX_AGE_DAYS`; so are leftovers without an owner record.

:func:`run_drill` runs :data:`DRILL` in this process (the CLI door: :func:`backups.commands.procedure.run`).
Failures of a tier (no restorable snapshot, a damaged object, a failed check) are *findings*: the drill goes on
with the other tiers and always writes its report; the verdict says whether it passed.

The package, by concern (everything is re-exported here: ``from backups.commands.drill import X``):

* :mod:`.common` — the ``drill:`` settings, the drill id and the names derived from it, where reports and
  scratch data live, the scratch PostgreSQL server;
* :mod:`.plan` — step 1; :mod:`.isolation` — steps 2 and 7 and the leftovers of killed drills;
  :mod:`.tier_restore` — step 3; :mod:`.checks` — step 4; :mod:`.judge`, :mod:`.render` (Markdown, HTML, the
  history chart) and :mod:`.reports` (files, history, stored copies) — step 6;
  :mod:`.note` — the ``dr_drill`` run's note (verdict and cause, RTO/RPO per tier, findings, the report);
* :mod:`.steps` — :data:`DRILL` (the sequence, declared once) and :func:`run_drill` (the CLI door).
"""

from __future__ import annotations

from .checks import (
    Check,
    TierVerify,
    config_files_parse,
    postgres_integrity,
    run_smoke_command,
    run_smoke_sql,
    sqlite_integrity,
    verify_tier,
)
from .common import (
    RUNBOOK,
    admin_dsn,
    db_prefix,
    drill_dir,
    drill_id_for,
    scratch_base,
    scratch_db_name,
    scratch_root,
    settings,
)
from .isolation import (
    LEFTOVER_MAX_AGE_DAYS,
    OWNER_FILE,
    Leftovers,
    Scratch,
    Teardown,
    clean_leftovers,
    isolate,
    owner_record,
    owner_state,
    read_owner,
    teardown,
    teardown_findings,
)
from .judge import DrillVerdict, judge, next_drill
from .note import drill_cause, drill_note
from .plan import DrillPlan, DrillRequest, TierPlan, check_request, guard_scratch_server, plan_drill
from .render import history_chart, render_html, render_markdown, runbook_link
from .reports import HISTORY, KEEP_DATA_DOCS, prune_data_docs, read_history, store_reports, write_reports
from .steps import DRILL, DrillOutcome, failed_error, run_drill
from .tier_restore import TierRestore, restore_tier

__all__ = [
    "DRILL", "HISTORY", "KEEP_DATA_DOCS", "LEFTOVER_MAX_AGE_DAYS", "OWNER_FILE", "RUNBOOK",
    "Check", "DrillOutcome", "DrillPlan", "DrillRequest", "DrillVerdict", "Leftovers", "Scratch", "Teardown",
    "TierPlan", "TierRestore", "TierVerify",
    "admin_dsn", "check_request", "clean_leftovers", "config_files_parse", "db_prefix", "drill_cause", "drill_dir", "drill_note", "drill_id_for",
    "failed_error", "guard_scratch_server", "history_chart", "isolate", "judge", "next_drill", "owner_record",
    "owner_state", "plan_drill", "postgres_integrity", "prune_data_docs", "read_history", "read_owner",
    "render_html", "render_markdown", "restore_tier", "run_drill", "run_smoke_command", "run_smoke_sql",
    "runbook_link", "scratch_base", "scratch_db_name", "scratch_root", "settings", "sqlite_integrity",
    "store_reports", "teardown", "teardown_findings", "verify_tier", "write_reports",
]
