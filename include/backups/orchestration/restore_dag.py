"""The ``restore_snapshot`` DAG: a snapshot (an id, or "latest") from a storage into a directory, behind a human
approval, verified file by file and with Great Expectations, and reported next to the restored data.

Graph::

    locate → approve_restore → wait_for_archive → restore → verify_restored → report

* ``locate`` — ``commands.restore.locate`` and ``check_before_approval`` (target, space, claim, tables and their
  foreign keys — everything knowable before the approval; a refusal ends the run with "trigger again with …"): the named storage, or the first one (config order) that is reachable and holds the snapshot with
  its whole chain (every object present with its size). Checks the params against the snapshot. Small XCom:
  storage, snapshot id, chain, archive or not, object count, the sources to restore, the target's state.
* ``approve_restore`` — :class:`~backups.orchestration.approval.BackupApprovalOperator` (skipped when
  ``require_approval`` is false). It comes *before* the archive wait on purpose: S3 bills every GLACIER retrieval,
  so nothing is thawed before a person said yes. Reject (or no answer in 24 h) fails the gate: the run ends
  *failed*, its note "**Rejected** by … at … — nothing was restored" (or "No answer within 24 h — …").
* ``wait_for_archive`` — :class:`~backups.orchestration.archive.WaitForArchiveSensor`: at once for non-archive
  storage; otherwise requests the S3 restores and defers to the triggerer until every object is readable.
* ``restore`` — ``check_prerequisites`` again (the target may have changed during the approval), the target
  claimed for this run, the table plan (made in ``locate``; an archive's now), then ``run_restore``:
  :func:`backups.engine.restorer.restore` from the storage opened read-only; every file's SHA-256
  is checked while it is written, a source only appears when complete, a non-empty target is refused without
  ``force``. Any library error fails the task at once with its message (a retry would only meet a half-filled
  target).
* ``verify_restored`` — ``verify_restore`` checks the restored tree against the snapshot's index: every regular file
  present with its size, no unexpected file in a ``files`` source (a stat walk: each file's SHA-256 was checked
  while written); with the ``reread`` param every file is also read back and re-hashed. Then the Great
  Expectations suite on restored SQLite databases (and on the PostgreSQL target database when one was given).
* ``report`` — ``build_report`` / ``write_report``: ``RESTORE_REPORT.json`` and ``.md`` (the CLI's too) written into the target directory (the backup
  repository may be read-only for restores), and logged.

The target directory is the DAG's output: ``restore``, ``verify_restored`` and ``report`` must run on the host
that owns it. With LocalExecutor that is always true; on Celery/Kubernetes set :data:`TARGET_QUEUE` to a queue
served only by that host (or use a shared mount). The tasks are built from the one declaration
:data:`backups.commands.restore.steps.RESTORE` (the steps ``backupctl restore`` runs) by
:func:`~backups.orchestration.procedures.add_procedure_tasks`; this module adds the form, the run context
(:func:`restore_context`), the approval text, the deferrable archive sensor, the run note and the error mapping.
Runs are concurrent; two runs into one target are refused (:mod:`backups.commands.target_lock`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param

from ..commands import notes
from ..commands import restore as restore_command
from ..commands.backup import MANUAL_TIER
from ..commands.procedure import RunContext, Step
from ..commands.restore import REPORT_NAME, Location, RestoreRequest, RunInfo
from ..commands.validate import pg_scratch_dsn
from ..config import Config, load_config
from ..errors import BackupError, ConfigError, NotFoundError, RefusedError
from . import notifiers, run_notes
from .adapters import POOL, run_seconds, task_errors
from .backup_dags import START_DATE, default_args

log = logging.getLogger("backups.orchestration.restore")

DAG_ID = "restore_snapshot"
LOCATE_TASK = "locate"
APPROVE_TASK = "approve_restore"
WAIT_TASK = "wait_for_archive"
#: Celery/Kubernetes: a queue served only by the host that owns the restore targets (restore, verify_restored and
#: report share the target directory). None: the default queue (LocalExecutor: one host, nothing to do).
TARGET_QUEUE: str | None = None
#: wait_for_archive: defer to the triggerer (False: the classic poke loop, for a deployment without a triggerer)
DEFERRABLE = True
ARCHIVE_POKE_SECONDS = 300.0


# ------------------------------------------------------------------------------------------------ params
def request_from_params(cfg: Config, params: dict[str, Any] | None) -> RestoreRequest:
    """The trigger form as a checked :class:`~backups.commands.restore.RestoreRequest` (the snapshot itself is
    checked by the ``locate`` step). An empty optional field (None, "" or []) means its default."""
    p = dict(params or {})
    req = RestoreRequest(target=str(p.get("target") or "").strip(),
                         snapshot=str(p.get("snapshot") or "").strip() or "latest",
                         tier=str(p.get("tier") or "") or None, storage=str(p.get("storage") or "") or None,
                         sources=p.get("sources"), includes=p.get("include"), tables=p.get("tables"),
                         force=bool(p.get("force", False)), pg_target_name=str(p.get("pg_target_conn_id") or "") or None,
                         include_dependencies=bool(p.get("include_dependencies") or False),
                         no_owner=bool(p.get("no_owner") or False), reread=bool(p.get("reread") or False))
    return restore_command.check_request(cfg, req)


def pg_target_dsn(req: RestoreRequest) -> str | None:
    """The PostgreSQL target from its Airflow connection (never logged, never in XCom)."""
    if not req.pg_target_name:
        return None
    from .connections import AirflowResolver

    return AirflowResolver().postgres_dsn(req.pg_target_name)


def scratch_dsn(loc: Location) -> str | None:
    """The scratch server for validating restored PostgreSQL dumps (env or the Airflow connection)."""
    if "postgres" not in loc.kinds.values():
        return None
    from .connections import AirflowResolver

    return pg_scratch_dsn(AirflowResolver())


#: the trigger form's second section: everything a common restore ("latest" into a directory) leaves as it is
ADVANCED = "Advanced"
#: the params a run cannot do without (every other one is nullable or has a valid default: the form submits as is)
REQUIRED_PARAMS = ("target",)


def restore_params(cfg: Config) -> dict[str, Param]:
    """The trigger form. Only ``target`` is required; every optional field is nullable (Airflow's form marks a field
    required unless its schema type includes ``"null"``) and an empty value (None, "" or []) means its default."""
    sources, storages = list(cfg.sources), list(cfg.storages)
    tiers = sorted({*cfg.tiers, MANUAL_TIER})
    return {
        # required, but with an (invalid) default: Airflow 3.3.2 cannot build a DAG callback's context for a Param
        # without a default. A manual DAG may carry an invalid default: the form insists on a value.
        "target": Param("", type="string", minLength=2, pattern="^/", title="Target directory",
                        description="Absolute path on the worker. Each source lands in TARGET/<source>/; the report "
                                    f"in TARGET/{REPORT_NAME}.md and .json"),
        "snapshot": Param("latest", type=["null", "string"], title="Snapshot",
                          description="A snapshot id (e.g. daily-20260105T020000Z, see `backupctl list`) or 'latest' "
                                      "(also when empty)"),
        "force": Param(False, type="boolean", title="Force",
                       description="Replace TARGET/<source> when the target is not empty; with tables and a PostgreSQL "
                                   "target connection: replace chosen tables that hold rows (one transaction)"),
        "require_approval": Param(True, type="boolean", title="Require approval",
                                  description="Ask a person to approve before anything is thawed or written"),
        "tier": Param(None, type=["null", "string"], enum=[None, *tiers], values_display={None: "any tier"},
                      title="Tier", description="With 'latest': the newest snapshot of this tier only; empty: any tier",
                      section=ADVANCED),
        "storage": Param(None, type=["null", "string"], enum=[None, *storages],
                         values_display={None: "first healthy storage (config order)"}, title="Storage",
                         description="Where to read from; empty: the first storage that is reachable and holds the "
                                     "snapshot with its whole chain", section=ADVANCED),
        "sources": Param(None, type=["null", "array"], items={"type": "string", "enum": sources}, uniqueItems=True,
                         examples=sources, title="Sources",
                         description="What to restore; empty: every source of the snapshot", section=ADVANCED),
        "include": Param(None, type=["null", "array"], items={"type": "string"}, title="Include globs",
                         description="files sources only: restore just these paths (one glob per line, e.g. "
                                     "config/**); empty: everything", section=ADVANCED),
        "tables": Param(None, type=["null", "array"], items={"type": "string"}, title="Tables",
                        description="Database sources only: keep just these tables (one per line); empty: all",
                        section=ADVANCED),
        "pg_target_conn_id": Param(None, type=["null", "string"], title="PostgreSQL target connection",
                                   description="An Airflow connection id (never a DSN with a password): load PostgreSQL "
                                               "dumps into that database; empty: leave the dump files in the target",
                                   section=ADVANCED),
        "include_dependencies": Param(False, type=["null", "boolean"], title="Include dependencies",
                                      description="With tables: also restore the tables they reference (foreign keys, "
                                                  "transitively); off: a missing one stops the restore before anything "
                                                  "is written", section=ADVANCED),
        "no_owner": Param(False, type=["null", "boolean"], title="Do not restore owners",
                          description="Files sources: leave restored files owned by the worker's user even when it "
                                      "is root (as tar's --no-same-owner); off: root restores the recorded owners",
                          section=ADVANCED),
        "reread": Param(False, type=["null", "boolean"], title="Re-read the restored files",
                        description="verify_restored: read every restored file back and re-hash it (for disks you "
                                    "distrust; about as long as the restore again). Off: each file's SHA-256 is "
                                    "checked on the bytes written, then the tree is checked with a stat walk "
                                    "(present, type, size, no stray file)", section=ADVANCED),
    }


def restore_doc(cfg: Config) -> str:
    return "\n".join([
        f"# Restore a snapshot of {cfg.application}", "",
        "Trigger with the form: which snapshot (`latest`, optionally of one tier, or an id from `backupctl list`), "
        "which storage (empty: the first reachable one holding the whole chain), the target directory, and "
        "optionally the sources, include globs, tables and a PostgreSQL target connection.", "",
        "1. `locate` finds the snapshot and checks its chain is complete on that storage.",
        "2. `approve_restore`: a person approves (**Required Actions** in the UI, or `PATCH /api/v2/dags/"
        f"{DAG_ID}/dagRuns/{{run_id}}/taskInstances/{APPROVE_TASK}/-1/hitlDetails`); Reject or no answer in 24 h "
        "ends the run as failed, with a note saying nothing was restored. `require_approval=false` skips the gate. "
        "Runs are concurrent; a second run into the same target directory is refused.",
        "3. `wait_for_archive`: for S3 GLACIER / DEEP_ARCHIVE storage, requests the restores and waits in the "
        "triggerer (hours); at once otherwise.",
        "4. `restore`: every file SHA-256 checked; a non-empty target is refused unless `force`.",
        "5. `verify_restored`: every restored file present with its size, no stray file (a stat walk; `reread`: every "
        "file read back and re-hashed against the snapshot's index); Great Expectations on the restored databases.",
        f"6. `report`: `{REPORT_NAME}.md` and `.json` in the target directory.", "",
        "**Storages:** " + ", ".join(f"`{n}` ({s.type})" for n, s in cfg.storages.items()),
        "", "**Sources:** " + ", ".join(f"`{n}` ({s.type})" for n, s in cfg.sources.items()),
        "", "Without Airflow: `backupctl restore SNAPSHOT --target DIR` does the same (see README, Restore runbook)."])


# ------------------------------------------------------------------------------------------------ the DAG
#: errors whose fix is a different request (a parameter): the run's note says "trigger again with …"
REQUEST_ERRORS = (ConfigError, RefusedError, NotFoundError)


def request_note(exc: BackupError, *, approved: bool) -> str:
    """The run's note when the request itself cannot be restored as asked: the refusal, the fix, and that the
    fix is a new run with other parameters (clearing a task would rerun it with the same ones)."""
    lines = exc.message.strip().splitlines() or ["(no message)"]
    head = "**Refused** — " if approved else "**Refused before approval** — "
    out = [head + lines[0].removeprefix("restore: "), ""]
    out += [f"* {ln.strip().removeprefix('- ')}" for ln in lines[1:] if ln.strip()]
    if exc.hint:
        out.append(f"* fix: {exc.hint}")
    out += ["", ("Nothing was written. " if approved else "Nothing was thawed or written. ")
            + "Trigger the DAG again with the changed parameters — clearing the task would rerun it with the same ones."]
    return "\n".join(out)


@contextmanager
def refused_request(*, approved: bool) -> Iterator[None]:
    """A request error (bad parameter, target, table, snapshot) ends the run at once with a "trigger again" note."""
    from .approval import RunEnded

    try:
        yield
    except REQUEST_ERRORS as exc:
        raise RunEnded(str(exc), request_note(exc, approved=approved)) from None


def release_target(context: Any) -> None:
    """Failure callback of the tasks that hold the target's claim (restore, verify_restored, report): the run is
    over for the target, another restore may use it. Never raises."""
    from ..commands.target_lock import release

    try:
        target = str((context.get("params") or {}).get("target") or "").strip()
        if target and release(os.path.normpath(target), context["run_id"]):
            log.info("released the claim on the restore target %s", target)
    except Exception:
        log.exception("the restore target's claim could not be released")


def _requested_by(ctx: Any) -> str:
    return getattr(ctx["dag_run"], "triggering_user_name", None) or "unknown"


def build_restore_dag(cfg: Config) -> DAG:
    from .approval import ended_note

    on_host = {"queue": TARGET_QUEUE} if TARGET_QUEUE else {}
    heavy = {**on_host, **({"pool": POOL} if POOL else {})}
    failure = [notifiers.BackupNotifier("task_failure"), *notifiers.mail_notifiers(
        cfg, "[restore] {{ dag.dag_id }}: {{ ti.task_id }} failed",
        "<p>Restore task <b>{{ ti.task_id }}</b> of <b>{{ dag.dag_id }}</b> failed (run {{ run_id }}, target "
        "{{ params.target }}).</p><pre>{{ exception | e }}</pre>"), ended_note]
    dag = DAG(
        dag_id=DAG_ID,
        description=f"Restore a snapshot of {cfg.application} into a directory: approved, verified, reported",
        schedule=None,
        start_date=START_DATE,
        catchup=False,  # runs are concurrent: the target's claim refuses two runs into one directory
        default_args={**default_args(cfg), "on_failure_callback": failure},
        tags=["restore"],
        doc_md=restore_doc(cfg),
        params=restore_params(cfg),
        on_success_callback=[notifiers.BackupNotifier("dag_success"), *notifiers.mail_notifiers(
            cfg, "[restore] {{ dag.dag_id }} succeeded", "<p>Restore run {{ run_id }} into {{ params.target }} "
            f"succeeded: restored, checked and validated. Application {cfg.application}.</p>")],
        on_failure_callback=notifiers.dag_failure_callbacks(cfg),
    )
    claim_holder = {"on_failure_callback": [*failure, release_target]}
    with dag:
        add_restore_tasks({**on_host, **claim_holder}, {**heavy, **claim_holder}, failure)
    return dag


def approval_gate(loc_ref: str, failure: list[Any], args: dict[str, Any] | None = None) -> Any:
    """``approve_restore``: the approval text shows what ``locate`` found and checked (``loc_ref``: its XCom)."""
    from .approval import BackupApprovalOperator, note_param

    args = {"task_id": APPROVE_TASK, **(args or {})}
    return BackupApprovalOperator(
        **args,
        subject="Restore {{ " + loc_ref + "['snapshot_id'] }} from {{ " + loc_ref + "['storage'] }} into "
                "{{ params.target }}?",
        body="{% set loc = " + loc_ref + " %}"
             "Requested by **{{ dag_run.triggering_user_name or 'unknown' }}** (run `{{ run_id }}`).\n\n"
             "* snapshot: `{{ loc['snapshot_id'] }}` ({{ loc['type'] }}, tier {{ loc['tier'] }}, logical date "
             "{{ loc['logical_date'] }}), chain {{ loc['chain'] | join(' → ') }}\n"
             "* from storage: `{{ loc['storage'] }}` ({{ loc['storage_type'] }})"
             "{% if loc['archive'] %} — ARCHIVE: {{ loc['objects'] }} object(s), {{ (loc['chain_bytes'] / 1e6) | round(1) }}"
             " MB will be retrieved from S3 (billed; hours){% endif %}\n"
             "* into: `{{ params.target }}` — currently {{ loc['target_state'] }}; force: {{ params.force }}\n"
             "* sources: {{ loc['sources'] | join(', ') }}\n"
             "* include: {{ (params.include or []) | join(', ') or 'everything' }}; tables: "
             "{{ (params.tables or []) | join(', ') or 'all' }}"
             "{% if params.tables %} (include dependencies: {{ params.include_dependencies or False }}){% endif %}"
             "{% if params.pg_target_conn_id %}; PostgreSQL target: connection `{{ params.pg_target_conn_id }}`{% endif %}\n"
             "{% for src, names in (loc.get('db_tables') or {}).items() %}"
             "* tables of `{{ src }}` in this snapshot: {{ names[:40] | join(', ') or 'not recorded' }}"
             "{% if names | length > 40 %} … ({{ names | length }} in all){% endif %}\n{% endfor %}"
             "* space: {{ ((loc.get('free_bytes') or 0) / 1e6) | round(1) }} MB free at the target"
             "{% if loc.get('needed_bytes') %}, {{ (loc['needed_bytes'] / 1e6) | round(1) }} MB needed{% endif %}; "
             "the chain is {{ (loc['chain_bytes'] / 1e6) | round(1) }} MB"
             "{% if loc['archive'] %}, all of it retrieved from the archive (thaw needed){% else %}, readable now "
             "(no thaw){% endif %}\n\n"
             "Checked before this request: {{ (loc.get('checked') or []) | join('; ') }}.\n\n"
             "Approve to restore now; Reject (or no answer in 24 h) ends the run as failed, nothing restored.",
        outcome="restored",
        params={"note": note_param("restore report")},
        on_failure_callback=failure,  # ended_note last: the gate's note replaces the generic failure note
    )


@contextmanager
def restore_errors(*, approved: bool) -> Iterator[None]:
    """The restore's error mapping: every library error fails at once (a retry would only meet the half-filled
    target, or the same request), and a request error ends the run with a "trigger again with …" note."""
    with task_errors(fail_fast=(BackupError,)), refused_request(approved=approved):
        yield


def restore_context(actx: Any, step: Step) -> RunContext:
    """The run context of one restore task: the checked request (from the form), the PostgreSQL DSNs from their
    Airflow connections (never in XCom), and for ``report`` who asked, the approval and the archive wait."""
    cfg = load_config()
    from .connections import task_resolver

    req = request_from_params(cfg, actx["params"])
    ctx = RunContext(cfg, task_resolver(cfg), dag_id=actx["dag"].dag_id, run_id=actx["run_id"],
                     params={"request": req, "pg_dsn": pg_target_dsn(req), "validate": True})
    ti, dag_run = actx["ti"], actx["dag_run"]
    if step.name == "verify_restored":
        loc = Location.from_dict(ti.xcom_pull(task_ids=LOCATE_TASK, map_indexes=-1))
        ctx.params["scratch_dsn"] = scratch_dsn(loc)
    if step.name in ("wait_for_archive", "restore", "report"):
        ctx.state["run"] = RunInfo(
            door=actx["dag"].dag_id, run_id=actx["run_id"], requested_by=_requested_by(actx),
            approval=restore_command.approval_from_hitl(ti.xcom_pull(task_ids=APPROVE_TASK, map_indexes=-1)),
            run_seconds=run_seconds(dag_run), archive_wait=ti.xcom_pull(task_ids=WAIT_TASK, map_indexes=-1))
    return ctx


def add_restore_tasks(on_host: dict[str, Any], heavy: dict[str, Any], failure: list[Any]) -> None:
    """The procedure :data:`backups.commands.restore.steps.RESTORE` (the steps ``backupctl restore`` runs) built by
    :func:`~backups.orchestration.procedures.add_procedure_tasks`, plus what only Airflow has: the approval text,
    the deferrable archive wait, the run note, the ``restore_complete`` event and the target's release."""
    from ..commands.restore.steps import RESTORE
    from ..commands.target_lock import release
    from .archive import WaitForArchiveSensor
    from .procedures import TaskOptions, add_procedure_tasks

    loc_ref = "ti.xcom_pull(task_ids='" + LOCATE_TASK + "')"

    def wait(step: Step, args: dict[str, Any]) -> Any:
        # the DAG's wait: the same poll (engine.thaw.ThawPoll), deferred to the triggerer
        return WaitForArchiveSensor(
            storage="{{ " + loc_ref + "['storage'] }}", snapshot_id="{{ " + loc_ref + "['snapshot_id'] }}",
            deferrable=DEFERRABLE, mode="poke" if DEFERRABLE else "reschedule",  # no triggerer: free the slot
            poke_interval=ARCHIVE_POKE_SECONDS, **args)

    def reported(actx: Any, result: dict[str, Any]) -> None:
        req = request_from_params(load_config(), actx["params"])
        paths = [str(Path(req.target) / f"{REPORT_NAME}.{ext}") for ext in ("json", "md")]
        log.info("restore report written to %s:\n%s", ", ".join(paths), result["markdown"])
        release(req.target, actx["run_id"])
        run_notes.set_run_note(actx["dag"].dag_id, actx["run_id"], notes.restore_note(result["doc"], paths))
        notifiers.publish("restore_complete", {"dag_id": actx["dag"].dag_id, "run_id": actx["run_id"],
                                               "report": paths, "snapshot_id": result["doc"]["snapshot"]["snapshot_id"],
                                               "target": req.target})

    add_procedure_tasks(RESTORE, context=restore_context, candidates=lambda step: [], options={
        "locate": TaskOptions(errors=lambda: restore_errors(approved=False)),
        "approve_restore": TaskOptions(operator=lambda step, args: approval_gate(loc_ref, failure, args)),
        "wait_for_archive": TaskOptions(operator=wait),
        "restore": TaskOptions(task_args=heavy, errors=lambda: restore_errors(approved=True)),
        "verify_restored": TaskOptions(task_args=heavy),
        "report": TaskOptions(task_args=on_host, after=reported),
    })
