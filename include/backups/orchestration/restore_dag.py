"""The ``restore_snapshot`` DAG: a snapshot (an id, or "latest") from a storage into a directory, behind a human
approval, verified file by file and with Great Expectations, and reported next to the restored data.

Graph::

    locate → approve_restore → wait_for_archive → restore → verify_restored → report

* ``locate`` — the named storage, or the first one (config order) that is reachable and holds the snapshot with
  its whole chain (every object present with its size). Checks the params against the snapshot. Small XCom:
  storage, snapshot id, chain, archive or not, object count, the sources to restore, the target's state.
* ``approve_restore`` — Airflow's ``ApprovalOperator`` (skipped when ``require_approval`` is false). It comes
  *before* the archive wait on purpose: S3 bills every GLACIER retrieval, so nothing is thawed before a person
  said yes. Reject (or no answer in 24 h) skips everything after it.
* ``wait_for_archive`` — :class:`~backups.orchestration.archive.WaitForArchiveSensor`: at once for non-archive
  storage; otherwise requests the S3 restores and defers to the triggerer until every object is readable.
* ``restore`` — :func:`backups.engine.restorer.restore` from the storage opened read-only; every file's SHA-256
  is checked while it is written, a source only appears when complete, a non-empty target is refused without
  ``force``. Any library error fails the task at once with its message (a retry would only meet a half-filled
  target).
* ``verify_restored`` — reads the restored tree back: every regular file re-hashed against the snapshot's index,
  no unexpected file in a ``files`` source; the Great Expectations suite on restored SQLite databases (and on the
  PostgreSQL target database when one was given).
* ``report`` — ``RESTORE_REPORT.json`` and ``RESTORE_REPORT.md`` written into the target directory (the backup
  repository may be read-only for restores), and logged.

The target directory is the DAG's output: ``restore``, ``verify_restored`` and ``report`` must run on the host
that owns it. With LocalExecutor that is always true; on Celery/Kubernetes set :data:`TARGET_QUEUE` to a queue
served only by that host (or use a shared mount). The plain functions (``options``, ``locate``, ``run_restore``,
``verify_restored``, ``restore_report``, ``write_report``) do the work; the ``@task`` adapters only read the
context and map errors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, TriggerRule, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from ..catalog import Catalog
from ..config import Config, load_config
from ..errors import BackupError, ConfigError, IntegrityError, NotFoundError, RefusedError
from ..storage import open_storage
from . import notifiers, steps
from .dags import FAIL_FAST, POOL, START_DATE, default_args

log = logging.getLogger("backups.orchestration.restore")

DAG_ID = "restore_snapshot"
LOCATE_TASK = "locate"
APPROVE_TASK = "approve_restore"
REPORT_NAME = "RESTORE_REPORT"
#: Celery/Kubernetes: a queue served only by the host that owns the restore targets (restore, verify_restored and
#: report share the target directory). None: the default queue (LocalExecutor: one host, nothing to do).
TARGET_QUEUE: str | None = None
#: wait_for_archive: defer to the triggerer (False: the classic poke loop, for a deployment without a triggerer)
DEFERRABLE = True
ARCHIVE_POKE_SECONDS = 300.0
CHUNK = 1 << 20


# ------------------------------------------------------------------------------------------------ params
@dataclass
class RestoreOptions:
    """The trigger form, checked against the config (names) — the snapshot itself is checked by :func:`locate`."""

    snapshot: str
    tier: str | None
    storage: str | None
    target: str
    sources: list[str] | None
    includes: list[str] | None
    tables: list[str] | None
    pg_target_conn_id: str | None
    force: bool
    require_approval: bool


def _list(value: Any) -> list[str] | None:
    items = [str(v).strip() for v in (value or []) if str(v).strip()]
    return items or None


def options(cfg: Config, params: dict[str, Any] | None) -> RestoreOptions:
    p = dict(params or {})
    target = str(p.get("target") or "").strip()
    if not target:
        raise ConfigError(f"{DAG_ID}: params.target is required", hint="give the directory to restore into (an "
                          "absolute path on the worker), e.g. /srv/restore/2026-03-01")
    if not os.path.isabs(target):
        raise ConfigError(f"{DAG_ID}: params.target {target!r} is not an absolute path",
                          hint="give an absolute directory path on the worker, e.g. /srv/restore/2026-03-01")
    storage, tier = str(p.get("storage") or "") or None, str(p.get("tier") or "") or None
    if storage and storage not in cfg.storages:
        raise ConfigError(f"{DAG_ID}: params.storage: unknown storage {storage!r}",
                          hint=f"choose from: {', '.join(cfg.storages)} (or leave it empty for the first healthy one)")
    sources = _list(p.get("sources"))
    unknown = [s for s in sources or [] if s not in cfg.sources]
    if unknown:
        raise ConfigError(f"{DAG_ID}: params.sources: unknown source {unknown[0]!r}",
                          hint=f"choose from: {', '.join(cfg.sources)} (or leave it empty for all)")
    opts = RestoreOptions(snapshot=str(p.get("snapshot") or "latest").strip(), tier=tier, storage=storage,
                          target=os.path.normpath(target), sources=sources, includes=_list(p.get("include")),
                          tables=_list(p.get("tables")), pg_target_conn_id=str(p.get("pg_target_conn_id") or "") or None,
                          force=bool(p.get("force", False)), require_approval=bool(p.get("require_approval", True)))
    _guard_target(cfg, opts.target)
    return opts


def _guard_target(cfg: Config, target: str) -> None:
    """Refuse the filesystem root and anything inside a local backup repository."""
    real = Path(os.path.realpath(target))
    if real == Path("/"):
        raise RefusedError(f"{DAG_ID}: refusing to restore into the filesystem root", hint="give a dedicated directory")
    for name, sc in cfg.storages.items():
        if sc.type == "local":
            repo = Path(os.path.realpath(sc.path))
            if real == repo or real.is_relative_to(repo):
                raise RefusedError(f"{DAG_ID}: target {target} is inside the repository of storage {name} ({sc.path})",
                                   hint="restore somewhere outside the backup repository")


def restore_params(cfg: Config) -> dict[str, Param]:
    sources, storages = list(cfg.sources), list(cfg.storages)
    tiers = sorted({*cfg.tiers, steps.MANUAL_TIER})
    return {
        "snapshot": Param("latest", type="string", minLength=1, title="Snapshot",
                          description="A snapshot id (e.g. daily-20260105T020000Z, see `backupctl list`) or 'latest'"),
        "tier": Param("", type="string", enum=["", *tiers], values_display={"": "any tier"}, title="Tier",
                      description="With 'latest': the newest snapshot of this tier only"),
        "storage": Param("", type="string", enum=["", *storages],
                         values_display={"": "first healthy storage (config order)"}, title="Storage",
                         description="Where to read from; empty: the first storage that is reachable and holds the "
                                     "snapshot with its whole chain"),
        # required, but with an (invalid) default: Airflow 3.3.2 cannot build a DAG callback's context for a Param
        # without a default. A manual DAG may carry an invalid default: the form insists on a value.
        "target": Param("", type="string", minLength=2, pattern="^/", title="Target directory",
                        description="Absolute path on the worker. Each source lands in TARGET/<source>/; the report "
                                    f"in TARGET/{REPORT_NAME}.md and .json"),
        "sources": Param([], type="array", items={"type": "string", "enum": sources}, uniqueItems=True,
                         examples=sources, title="Sources", description="What to restore; empty: every source of the snapshot"),
        "include": Param([], type="array", items={"type": "string"}, title="Include globs",
                         description="files sources only: restore just these paths (one glob per line, e.g. config/**)"),
        "tables": Param([], type="array", items={"type": "string"}, title="Tables",
                        description="Database sources only: keep just these tables (one per line)"),
        "pg_target_conn_id": Param("", type="string", title="PostgreSQL target connection",
                                   description="An Airflow connection id (never a DSN with a password): load PostgreSQL "
                                               "dumps into that database; empty: leave the dump files in the target"),
        "force": Param(False, type="boolean", title="Force",
                       description="Replace TARGET/<source> when the target is not empty"),
        "require_approval": Param(True, type="boolean", title="Require approval",
                                  description="Ask a person to approve before anything is thawed or written"),
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
        "stops the run. `require_approval=false` skips the gate.",
        "3. `wait_for_archive`: for S3 GLACIER / DEEP_ARCHIVE storage, requests the restores and waits in the "
        "triggerer (hours); at once otherwise.",
        "4. `restore`: every file SHA-256 checked; a non-empty target is refused unless `force`.",
        "5. `verify_restored`: every restored file re-hashed against the snapshot's index; Great Expectations on "
        "the restored databases.",
        f"6. `report`: `{REPORT_NAME}.md` and `.json` in the target directory.", "",
        "**Storages:** " + ", ".join(f"`{n}` ({s.type})" for n, s in cfg.storages.items()),
        "", "**Sources:** " + ", ".join(f"`{n}` ({s.type})" for n, s in cfg.sources.items()),
        "", "Without Airflow: `backupctl restore SNAPSHOT --target DIR` does the same (see README, Restore runbook)."])


# ------------------------------------------------------------------------------------------------ locate
def _target_state(target: str) -> str:
    p = Path(target)
    if not p.exists():
        return "missing (will be created)"
    if not p.is_dir():
        return "not a directory"
    n = sum(1 for _ in p.iterdir())
    return "empty" if n == 0 else f"not empty ({n} entries)"


def locate(cfg: Config, opts: RestoreOptions, resolver: Any = None) -> dict[str, Any]:
    """The storage to restore from and the snapshot, checked against the params (small, JSON-safe)."""
    from ..engine.locate import find_snapshot
    from ..engine.thaw import needed_keys

    st, cat, snap, skipped = find_snapshot(cfg, opts.snapshot, opts.tier, storage=opts.storage, resolver=resolver)
    chosen = opts.sources or sorted(snap.sources)
    absent = [s for s in chosen if s not in snap.sources]
    if absent:
        raise NotFoundError(f"snapshot {snap.id} has no source {absent[0]!r}", hint=f"it has: {', '.join(sorted(snap.sources))}")
    kinds = {n: snap.sources[n]["kind"] for n in chosen}
    if opts.tables and not any(k in steps.DB_KINDS for k in kinds.values()):
        raise ConfigError(f"{DAG_ID}: params.tables applies to sqlite and postgres sources only",
                          hint="add a database source to params.sources, or clear params.tables")
    if opts.includes and "files" not in kinds.values():
        raise ConfigError(f"{DAG_ID}: params.include applies to files sources only",
                          hint="add a files source to params.sources, or clear params.include")
    if opts.pg_target_conn_id and "postgres" not in kinds.values():
        raise ConfigError(f"{DAG_ID}: params.pg_target_conn_id is set but no postgres source is restored",
                          hint="clear it, or add the postgres source to params.sources")
    chain = cat.chain_of(snap)
    keys = needed_keys(cat, snap)
    loc = {"snapshot_id": snap.id, "tier": snap.tier, "type": snap.type, "logical_date": snap.doc["logical_date"],
           "chain": snap.chain, "storage": st.name, "storage_type": cfg.storages[st.name].type,
           "archive": bool(st.archive), "objects": len(keys),
           "chain_bytes": sum(o["size"] for s in chain for o in s.objects()),
           "sources": chosen, "kinds": kinds, "target": opts.target, "target_state": _target_state(opts.target),
           "skipped_storages": skipped}
    log.info("restore %s (%s, chain %s) from %s%s into %s (%s): sources %s", snap.id, snap.type, " -> ".join(snap.chain),
             st.name, f" (archive: {len(keys)} object(s) to thaw)" if st.archive else "", opts.target,
             loc["target_state"], ", ".join(chosen))
    if loc["target_state"].startswith("not empty") and not opts.force:
        log.warning("the target %s is not empty and force is off: the restore task will refuse it", opts.target)
    return loc


# ------------------------------------------------------------------------------------------------ restore
def _open(cfg: Config, loc: dict[str, Any], resolver: Any) -> tuple[Any, Catalog, Any]:
    st = open_storage(cfg, loc["storage"], resolver, read_only=True)
    cat = Catalog(st, cfg.application)
    return st, cat, cat.get(loc["snapshot_id"])


def pg_target_dsn(opts: RestoreOptions) -> str | None:
    """The PostgreSQL target from its Airflow connection (never logged, never in XCom)."""
    if not opts.pg_target_conn_id:
        return None
    from .connections import AirflowResolver

    return AirflowResolver().postgres_dsn(opts.pg_target_conn_id)


def run_restore(cfg: Config, loc: dict[str, Any], opts: RestoreOptions, resolver: Any = None,
                pg_dsn: str | None = None) -> dict[str, Any]:
    from ..engine.progress import Progress
    from ..engine.restorer import restore
    from ..repository import Repository

    st = open_storage(cfg, loc["storage"], resolver, read_only=True)
    t0 = time.monotonic()
    with Repository(st, cfg).lock("repo", exclusive=False, operation="restore"):  # a prune waits for it
        st, cat, snap = _open(cfg, loc, resolver)
        progress = Progress(f"restore {snap.id}", snap.doc["totals"]["bytes"], interval=10.0, tty=False)
        try:
            results = restore(st, cat, snap, Path(opts.target), sources=loc["sources"], includes=opts.includes,
                              tables=opts.tables, force=opts.force, pg_target=pg_dsn, progress=progress)
        finally:
            progress.close()
    seconds = round(time.monotonic() - t0, 3)
    out = {r.source: {"kind": r.kind, "path": r.path, "files": r.files, "bytes": r.bytes, "verified": r.verified,
                      **({"extra": r.extra} if r.extra else {})} for r in results}
    log.info("restored %s from %s into %s in %.1fs: %s", snap.id, st.name, opts.target, seconds,
             "; ".join(f"{n}: {r['files']} files, {steps._mb(r['bytes'])}" for n, r in out.items()))
    return {"snapshot_id": snap.id, "storage": st.name, "target": opts.target, "sources": out, "seconds": seconds}


# ------------------------------------------------------------------------------------------------ verify
def _selector(includes: list[str] | None) -> Callable[[str], bool]:
    """The restorer's selection: a glob matches a path, and ``dir/**`` also selects ``dir`` itself."""
    from ..sources.files import matches

    if not includes:
        return lambda p: True
    dir_globs = [g for g in includes if g.endswith("/**")]
    return lambda p: matches(p, includes) or any(matches(p + "/x", [g]) for g in dir_globs)


def _sha256(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _regular_files(root: Path) -> Iterator[str]:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            full = os.path.join(dirpath, f)
            if os.path.isfile(full) and not os.path.islink(full):
                yield os.path.relpath(full, root).replace(os.sep, "/")


def _hash_check(storage: Any, rec: dict[str, Any], root: Path, select: Callable[[str], bool], skip: set[str],
                strict: bool) -> tuple[dict[str, int], list[str]]:
    """Every selected regular file of the index re-hashed on disk; ``strict``: no other regular file allowed."""
    from ..engine.archiver import iter_index

    checked = nbytes = 0
    expected: set[str] = set()
    problems: list[str] = []
    for path, e in iter_index(storage, rec["objects"]["index"]):
        if e[0] != "f" or not select(path):
            continue
        expected.add(path)
        if path in skip:
            continue
        try:
            digest, size = _sha256(root / path)
        except FileNotFoundError:
            problems.append(f"{path}: missing")
            continue
        if digest != e[5] or size != e[1]:
            problems.append(f"{path}: content differs from the snapshot (SHA-256 {digest[:12]}…, index {str(e[5])[:12]}…)")
            continue
        checked += 1
        nbytes += size
    if strict:
        problems += [f"{p}: not in the snapshot" for p in sorted(set(_regular_files(root)) - expected)]
    return {"files_checked": checked, "bytes_checked": nbytes, "files_expected": len(expected)}, problems


def _validate_db(snap: Any, name: str, path: Path, opts: RestoreOptions, pg_dsn: str | None,
                 resolver: Any) -> dict[str, Any] | None:
    rec = snap.sources[name]
    details = rec["details"]
    tables = details.get("tables") or {}
    if opts.tables:
        tables = {t: d for t, d in tables.items() if t in opts.tables or t.split(".")[-1] in opts.tables}
    if rec["kind"] == "sqlite":
        from ..validation import validate_sqlite

        return validate_sqlite(path / details["database"], tables, raise_on_failure=False)
    if rec["kind"] == "postgres":
        if pg_dsn:
            from ..validation import validate_postgres

            return validate_postgres(pg_dsn, tables, raise_on_failure=False, label=f"{name} (target database)")
        if not opts.tables:
            return steps._validate_restored(snap, {name: path}, resolver)[name]
        return {"database": name, "success": None, "skipped": "tables chosen without a PostgreSQL target"}
    return None


def verify_restored(cfg: Config, loc: dict[str, Any], restored: dict[str, Any], opts: RestoreOptions,
                    resolver: Any = None, pg_dsn: str | None = None) -> dict[str, Any]:
    """Read the restored tree back: re-hash every regular file against the snapshot's index, run the GX suite on
    the databases. All problems are collected; IntegrityError lists them."""
    st, _cat, snap = _open(cfg, loc, resolver)
    t0 = time.monotonic()
    files: dict[str, Any] = {}
    problems: list[str] = []
    validation: dict[str, Any] = {}
    for name, r in restored["sources"].items():
        rec, root = snap.sources[name], Path(r["path"])
        if not root.is_dir():
            problems.append(f"{name}: {root} does not exist on this worker (restore, verify_restored and report must "
                            "run on the host that owns the target: see TARGET_QUEUE)")
            continue
        kind = rec["kind"]
        skip = {rec["details"]["database"]} if kind == "sqlite" and opts.tables else set()  # reduced: GX checks it
        stats, found = _hash_check(st, rec, root, _selector(opts.includes) if kind == "files" else (lambda p: True),
                                   skip, strict=kind == "files")
        files[name] = {"kind": kind, **stats, "problems": len(found)}
        problems += [f"{name}/{p}" for p in found]
        res = _validate_db(snap, name, root, opts, pg_dsn, resolver)
        if res is not None:
            validation[name] = res
            if res.get("success") is False:
                problems += [f"{name}: {f}" for f in res.get("failures", [])]
    seconds = round(time.monotonic() - t0, 3)
    if problems:
        raise IntegrityError(f"verification of the restore of {snap.id} into {opts.target} failed: {len(problems)} "
                             "problem(s):\n  - " + "\n  - ".join(problems[:30]),
                             hint="do not use this restore; run `backupctl verify --read-data` on the storage, then "
                                  "restore again (force) or from another storage")
    log.info("restore of %s verified in %.1fs: %d file(s) re-hashed; %s", snap.id, seconds,
             sum(f["files_checked"] for f in files.values()),
             ", ".join(f"{n}: " + ("skipped" if v.get("success") is None else
                                   f"{v['statistics']['successful_expectations']}/{v['statistics']['evaluated_expectations']}"
                                   " expectations met") for n, v in validation.items()) or "no database")
    return {"snapshot_id": snap.id, "target": opts.target, "ok": True, "files": files,
            "validation": steps._compact(validation), "seconds": seconds}


# ------------------------------------------------------------------------------------------------ report
def restore_report(loc: dict[str, Any], restored: dict[str, Any], verified: dict[str, Any], *, dag_id: str,
                   run_id: str, requested_by: str | None, approval: dict[str, Any] | None, params: dict[str, Any],
                   archive_wait: dict[str, Any] | None, run_seconds: float | None) -> tuple[dict[str, Any], str]:
    if approval:
        who = approval.get("responded_by_user") or {}
        approved = {"by": who.get("name") or who.get("id") or "unknown", "at": str(approval.get("responded_at")),
                    "choice": (approval.get("chosen_options") or ["?"])[0],
                    "note": (approval.get("params_input") or {}).get("note", "")}
    else:
        approved = {"by": None, "choice": "not required", "note": "require_approval was false"}
    doc = {"kind": "restore-result", "dag_id": dag_id, "run_id": run_id, "requested_by": requested_by or "unknown",
           "approval": approved, "params": params, "snapshot": {k: loc[k] for k in (
               "snapshot_id", "tier", "type", "logical_date", "chain", "storage", "storage_type", "archive", "objects")},
           "target": restored["target"], "archive_wait": archive_wait, "sources": restored["sources"],
           "verification": verified, "durations": {"restore_seconds": restored["seconds"],
                                                   "verify_seconds": verified["seconds"], "run_seconds": run_seconds},
           "finished_at": datetime.now(UTC).isoformat(timespec="seconds"), "status": "success"}
    md = [f"# Restore of {loc['snapshot_id']}", "",
          f"* into: `{restored['target']}`",
          f"* from storage: `{loc['storage']}` ({loc['storage_type']}" + (", archive" if loc["archive"] else "") + ")",
          f"* snapshot: {loc['type']}, tier {loc['tier']}, logical date {loc['logical_date']}, chain "
          + " -> ".join(loc["chain"]),
          f"* requested by: **{doc['requested_by']}** (run `{run_id}`)",
          f"* approval: {approved['choice']}" + (f" by **{approved['by']}** at {approved.get('at')}" if approved["by"] else "")
          + (f" — {approved['note']}" if approved.get("note") else ""),
          f"* options: include {params.get('includes') or 'all'}, tables {params.get('tables') or 'all'}, "
          f"force {params.get('force')}" + (f", PostgreSQL target connection {params['pg_target_conn_id']}"
                                             if params.get("pg_target_conn_id") else ""), ""]
    if archive_wait and archive_wait.get("archive"):
        md += [f"Archived objects: {archive_wait.get('keys')} made readable after {archive_wait.get('waited_seconds')} s.", ""]
    md += ["| source | kind | files | size | SHA-256 checked on restore | re-hashed after | path |",
           "|---|---|---|---|---|---|---|"]
    for n, r in restored["sources"].items():
        v = verified["files"].get(n, {})
        md.append(f"| {n} | {r['kind']} | {r['files']} | {steps._mb(r['bytes'])} | {r['verified']} | "
                  f"{v.get('files_checked', '-')} | `{r['path']}` |")
    md += ["", "## Data validation (Great Expectations)", ""]
    for n, v in verified["validation"].items():
        stats = v.get("statistics") or {}
        md.append(f"* {n}: " + (f"skipped ({v.get('skipped')})" if v.get("success") is None else
                                f"{stats.get('successful_expectations')}/{stats.get('evaluated_expectations')} expectations met"))
    if not verified["validation"]:
        md.append("* no database source restored")
    md += ["", f"Restore took {restored['seconds']} s, verification {verified['seconds']} s; the run {run_seconds} s.", ""]
    return doc, "\n".join(md)


def write_report(target: str, doc: dict[str, Any], markdown: str) -> list[str]:
    """``RESTORE_REPORT.json`` / ``.md`` in the target directory, each written to a temp name then renamed."""
    paths = []
    for ext, text in (("json", json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n"), ("md", markdown)):
        final = Path(target) / f"{REPORT_NAME}.{ext}"
        tmp = final.with_name(f".{final.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, final)
        paths.append(str(final))
    return paths


# ------------------------------------------------------------------------------------------------ the DAG
@contextlib.contextmanager
def _fail_on(kinds: tuple[type[BaseException], ...]) -> Iterator[None]:
    try:
        yield
    except kinds as exc:
        raise AirflowFailException(str(exc)) from None


def _runtime() -> tuple[Config, Any, RestoreOptions, Any]:
    ctx = get_current_context()
    cfg = load_config()
    with _fail_on((BackupError,)):
        opts = options(cfg, ctx["params"])
    return cfg, steps.resolver_for(cfg), opts, ctx


def build_restore_dag(cfg: Config) -> DAG:
    on_host = {"queue": TARGET_QUEUE} if TARGET_QUEUE else {}
    heavy = {**on_host, **({"pool": POOL} if POOL else {})}
    failure = [notifiers.BackupNotifier("task_failure"), *notifiers._mail(
        cfg, "[restore] {{ dag.dag_id }}: {{ ti.task_id }} failed",
        "<p>Restore task <b>{{ ti.task_id }}</b> of <b>{{ dag.dag_id }}</b> failed (run {{ run_id }}, target "
        "{{ params.target }}).</p><pre>{{ exception | e }}</pre>")]
    dag = DAG(
        dag_id=DAG_ID,
        description=f"Restore a snapshot of {cfg.application} into a directory: approved, verified, reported",
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args={**default_args(cfg), "on_failure_callback": failure},
        tags=["restore"],
        doc_md=restore_doc(cfg),
        params=restore_params(cfg),
        on_success_callback=[notifiers.BackupNotifier("dag_success"), *notifiers._mail(
            cfg, "[restore] {{ dag.dag_id }} succeeded", "<p>Restore run {{ run_id }} into {{ params.target }} "
            f"succeeded: restored, re-hashed and validated. Application {cfg.application}.</p>")],
        on_failure_callback=notifiers.dag_failure_callbacks(cfg),
    )
    with dag:
        _wire(on_host, heavy)
    return dag


def _wire(on_host: dict[str, Any], heavy: dict[str, Any]) -> None:
    from .approval import BackupApprovalOperator
    from .archive import WaitForArchiveSensor

    @task(task_id=LOCATE_TASK)
    def locate_task() -> dict[str, Any]:
        cfg, resolver, opts, _ctx = _runtime()
        with _fail_on(FAIL_FAST):
            return locate(cfg, opts, resolver)

    loc_ref = "ti.xcom_pull(task_ids='" + LOCATE_TASK + "')"
    approve = BackupApprovalOperator(
        task_id=APPROVE_TASK,
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
             "* include: {{ params.include | join(', ') or 'everything' }}; tables: "
             "{{ params.tables | join(', ') or 'all' }}"
             "{% if params.pg_target_conn_id %}; PostgreSQL target: connection `{{ params.pg_target_conn_id }}`{% endif %}\n"
             "{% if loc['target_state'].startswith('not empty') and not params.force %}\n**The target is not empty and "
             "force is off: the restore will be refused.**\n{% endif %}\n"
             "Approve to restore now; Reject (or no answer in 24 h) stops the run.",
        defaults="Reject",
        response_timeout=timedelta(hours=24),
        params={"note": Param("", type="string", title="Note", description="Optional note for the restore report")},
    )

    wait = WaitForArchiveSensor(
        task_id="wait_for_archive",
        storage="{{ " + loc_ref + "['storage'] }}",
        snapshot_id="{{ " + loc_ref + "['snapshot_id'] }}",
        deferrable=DEFERRABLE,
        mode="poke" if DEFERRABLE else "reschedule",  # without a triggerer: free the worker slot between polls
        poke_interval=ARCHIVE_POKE_SECONDS,
        trigger_rule=TriggerRule.NONE_FAILED,  # a skipped gate (require_approval=false) lets it through
    )

    @task(task_id="restore", **heavy)
    def restore_task(loc: dict[str, Any]) -> dict[str, Any]:
        cfg, resolver, opts, _ctx = _runtime()
        # every library error fails at once: a retry would only meet the half-filled target and be refused
        with _fail_on((BackupError,)):
            return run_restore(cfg, loc, opts, resolver, pg_target_dsn(opts))

    @task(task_id="verify_restored", **heavy)
    def verify_task(loc: dict[str, Any], restored: dict[str, Any]) -> dict[str, Any]:
        cfg, resolver, opts, _ctx = _runtime()
        with _fail_on(FAIL_FAST):
            return verify_restored(cfg, loc, restored, opts, resolver, pg_target_dsn(opts))

    @task(task_id="report", **on_host)
    def report_task(loc: dict[str, Any], restored: dict[str, Any], verified: dict[str, Any]) -> dict[str, Any]:
        _cfg, _resolver, opts, ctx = _runtime()
        ti, dag_run = ctx["ti"], ctx["dag_run"]
        begun = getattr(dag_run, "start_date", None)
        doc, md = restore_report(
            loc, restored, verified, dag_id=ctx["dag"].dag_id, run_id=ctx["run_id"],
            requested_by=getattr(dag_run, "triggering_user_name", None),
            approval=ti.xcom_pull(task_ids=APPROVE_TASK, map_indexes=-1),
            params={**asdict(opts), "sources": loc["sources"]},
            archive_wait=ti.xcom_pull(task_ids="wait_for_archive", map_indexes=-1),
            run_seconds=round((datetime.now(UTC) - begun).total_seconds(), 1) if begun else None)
        paths = write_report(opts.target, doc, md)
        log.info("restore report written to %s:\n%s", ", ".join(paths), md)
        notifiers.publish("restore_complete", {"dag_id": ctx["dag"].dag_id, "run_id": ctx["run_id"], "report": paths,
                                               "snapshot_id": loc["snapshot_id"], "target": opts.target})
        return {"report": paths, "snapshot_id": loc["snapshot_id"], "target": opts.target}

    loc = locate_task()
    restored = restore_task(loc)
    verified = verify_task(loc, restored)
    loc >> approve >> wait >> restored
    report_task(loc, restored, verified)
