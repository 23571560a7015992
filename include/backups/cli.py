"""``backupctl`` — the backup engine from a shell, with Airflow up or down.

Starts fast: imports Airflow only when the config names a ``conn_id`` (to resolve the connection), and never
imports Great Expectations. Exit codes are documented in README (``backupctl exit-codes``) and stable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from typing import Any

from . import __version__
from .commands.base import mb
from .errors import BROKEN_PIPE, EXIT_CODES, BackupError, StorageError

log = logging.getLogger("backups")


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    """The config and its connection resolver (injected: :mod:`backups.connections`; never the Airflow layer)."""
    from .commands.base import config_and_resolver

    with contextlib.redirect_stdout(sys.stderr):  # what a third-party import binds to "stdout" goes to stderr
        cfg, resolver = config_and_resolver(args.config)
    if resolver is not None:  # the Airflow import reconfigured logging: stdout is for the command's output only
        route_logging(getattr(args, "log_level", logging.INFO))
    _check_names(cfg, args)
    return cfg, resolver


#: the CLI's log line format (stderr)
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def route_logging(level: int) -> None:
    """Every log record to stderr at ``level`` (stdout holds only the command's output, so ``--json`` parses).

    Applied after a third-party import that configures logging (``main`` starts with a plain stderr handler):
    importing Airflow (to resolve a ``conn_id``) replaces the root handlers with one on stdout at INFO, sets its own loggers' levels and makes
    structlog (which Airflow's hooks log through) print to stdout. Loggers set below ``level`` are raised to it
    (``-q`` silences their INFO lines); handlers on stdout are moved to stderr."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if _on_stdout(handler):
            root.removeHandler(handler)
    if not any(isinstance(h, logging.StreamHandler) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if not isinstance(logger, logging.Logger):
            continue
        if logger.level != logging.NOTSET and logger.level < level:
            logger.setLevel(level)
        for handler in logger.handlers:
            if _on_stdout(handler):
                handler.setStream(sys.stderr)  # type: ignore[attr-defined]
    structlog = sys.modules.get("structlog")
    if structlog is not None:  # configured by a library (Airflow): hand its events to the stdlib loggers above
        import structlog.stdlib

        # stdlib BoundLogger: the loggers keep the stdlib interface Airflow's code calls (getEffectiveLevel, …)
        structlog.configure(processors=[structlog.stdlib.filter_by_level, _structlog_to_stdlib],
                            wrapper_class=structlog.stdlib.BoundLogger,
                            logger_factory=structlog.stdlib.LoggerFactory(), cache_logger_on_first_use=False)


def _on_stdout(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.__stdout__)


def _structlog_to_stdlib(_logger: Any, _method: str, event_dict: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """structlog's last processor: the event as a plain stdlib log call (its other keys are dropped: they may be
    LogRecord attribute names, and a bound context is Airflow's, not ours)."""
    kwargs = {"exc_info": event_dict["exc_info"]} if event_dict.get("exc_info") else {}
    return (str(event_dict.get("event", "")).replace("%", "%%"),), kwargs


def _check_names(cfg: Any, args: argparse.Namespace) -> None:
    """``--tier`` / ``--storage`` / ``--source`` against the config: a misspelt name is exit 3 with a suggestion
    (``--tier dayly`` → did you mean 'daily'?) instead of an empty result further down."""
    from .commands.backup import MANUAL_TIER
    from .errors import check_name

    for kind, known in (("tier", {*cfg.tiers, MANUAL_TIER}), ("storage", cfg.storages), ("source", cfg.sources)):
        given = getattr(args, kind, None)
        for name in [given] if isinstance(given, str) else given or []:  # one value, or a repeatable option's list
            check_name(kind, name, known, f"--{kind}")


def _storage(cfg: Any, resolver: Any, name: str | None, *, read_only: bool = True):
    """The named storage, or the first one (config order) that answers."""
    from .storage import open_storage

    if name:
        s = open_storage(cfg, name, resolver, read_only=read_only)
        s.check()
        return s
    errors: list[str] = []
    kinds: set[type] = set()
    for n in cfg.storages:
        try:
            s = open_storage(cfg, n, resolver, read_only=read_only)
            s.check()
            return s
        except BackupError as exc:
            errors.append(f"{n}: {exc.message}")
            kinds.add(type(exc))
            log.warning("storage %s unavailable: %s", n, exc.message)
    from .errors import EncryptionError

    if EncryptionError in kinds:  # a key problem is the thing to fix, whatever else failed (exit 8)
        raise EncryptionError("no storage can be read:\n  " + "\n  ".join(errors),
                              hint="set the encryption key the repository was written with (see the message above)")
    raise StorageError("no storage is reachable:\n  " + "\n  ".join(errors), hint="check the storages section and the network")


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*[str(c) for c in r]) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


# ------------------------------------------------------------------------------------------------ commands
def cmd_backup(args: argparse.Namespace) -> int:
    from .commands.backup import run_backup

    cfg, resolver = _load(args)
    storages = [args.storage] if args.storage else None
    out = run_backup(cfg, args.tier, logical_date=args.logical_date, type_override=args.type, storages=storages,
                     resolver=resolver, checksum=args.checksum, sources=args.source or None, comment=args.comment or "",
                     validate=not args.no_validate)
    if args.json:
        print(json.dumps(out, indent=1, default=str))
        return 0
    if out["already_committed"]:
        print(f"{out['id']} was already committed (same tier and logical date): not taken again; verified below")
    if out.get("promoted_reason"):
        print(f"warning: {out['requested_type']} promoted to full: {out['promoted_reason']}", file=sys.stderr)
    for w in out.get("warnings") or []:  # the plan's own (clock skew); the sources' are counted in the table
        print(f"warning: {w}", file=sys.stderr)
    rows = [[n, r["kind"], r["files"], mb(r["bytes"]), r["stored_files"], mb(r["stored_bytes"]), r["deleted"], r["warnings"]]
            for n, r in sorted(out["sources"].items())]
    took = out["durations"].get("snapshot_seconds")
    print(f"snapshot {out['id']}  type={out['type']}  parent={out.get('parent') or '-'}  storages={','.join(out['storages'])}  "
          f"{took or 0:.1f}s  stored {mb(out['totals']['stored_bytes'])}")
    print(_table(rows, ["source", "kind", "files", "size", "stored", "stored size", "deleted", "warnings"]))
    checks = out["checks"]
    for name, i in checks["integrity"].items():
        print(f"integrity on {name}: {'OK' if i['ok'] else 'FAILED'} ({i['objects_hashed']} object(s), "
              f"{mb(i['bytes_hashed'])} re-hashed)")
    rt = checks["restore_test"]
    print(f"test restore from {rt['storage']}: {rt['files']} file(s) restored, every SHA-256 checked")
    for name, src in sorted((rt.get("sources") or {}).items()):
        said = ["the dump loaded into a scratch database (dropped again)"] if src.get("kind") == "postgres" else []
        v = rt["validation"].get(name)
        if v is not None:
            stats = v.get("statistics") or {}
            said.append(v.get("skipped") or "not validated" if v.get("success") is None else
                        f"{stats.get('successful_expectations')}/{stats.get('evaluated_expectations')} expectations "
                        "met (Great Expectations)")
        if said:
            print(f"  {name}: " + "; ".join(said))
    for key in out.get("report") or []:
        print(f"result document: {key}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .repository import Repository

    cfg, resolver = _load(args)
    storage = _storage(cfg, resolver, args.storage)
    cat = Repository(storage, cfg).catalog
    snaps = [s.summary() for s in cat.ordered(args.tier)]
    broken = [{"id": sid, "status": "corrupt", "error": msg} for sid, msg in sorted(cat.broken.items())]
    if args.json:
        print(json.dumps({"storage": storage.name, "snapshots": snaps, "corrupt": broken}, indent=1))
        return 0
    rows = [[s["id"], s["tier"], s["type"], s["parent"] or "-", s["started_at"][:19], s["finished_at"][:19],
             ",".join(s["sources"]), s["files"], mb(s["bytes"]), mb(s["stored_bytes"]), s["status"]] for s in snaps]
    rows += [[b["id"], "?", "?", "?", "?", "?", "?", "?", "?", "?", "CORRUPT"] for b in broken]
    print(f"storage: {storage.describe()}")
    print(_table(rows, ["id", "tier", "type", "parent", "started", "finished", "sources", "files", "size", "stored", "status"])
          if rows else "no snapshots yet")
    for b in broken:
        print(f"corrupt manifest {b['id']}: {b['error']}", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .repository import Repository

    cfg, resolver = _load(args)
    storage = _storage(cfg, resolver, args.storage)
    cat = Repository(storage, cfg).catalog
    snap = cat.get(args.snapshot, args.tier)
    chain = cat.chain_of(snap)
    if args.json:
        print(json.dumps({**snap.doc, "chain_needed": [{"id": s.id, "type": s.type} for s in chain]}, indent=1))
        return 0
    d = snap.doc
    print(f"snapshot   {d['id']}\ntier       {d['tier']}\ntype       {d['type']}" +
          (f" (requested {d['requested_type']}: {d['promoted_reason']})" if d.get("promoted_reason") else ""))
    print(f"logical    {d['logical_date']}\nstarted    {d['started_at']}\nfinished   {d['finished_at']} ({d['duration_seconds']}s)")
    print(f"storage    {storage.describe()}\nchain      " + " -> ".join(f"{s.id} ({s.type})" for s in chain))
    rows = []
    for n, r in sorted(d["sources"].items()):
        det = r["details"]
        extra = ""
        if "tables" in det:
            extra = ", ".join(f"{t}={v['rows']}" for t, v in sorted(det["tables"].items()))
        rows.append([n, r["kind"], r["files"], mb(r["bytes"]), r["stored_files"], r["deleted"], extra[:80]])
    print(_table(rows, ["source", "kind", "files", "size", "stored", "deleted", "tables (rows)"]))
    for n, r in sorted(d["sources"].items()):
        for w in r["warnings"]:
            print(f"warning {n}: {w}")
    if args.files:
        from .repository.index import iter_index

        for n in sorted(d["sources"]):
            print(f"\n{n}:")
            for line in files_listing(iter_index(storage, d["sources"][n]["objects"]["index"]), d["chain"]):
                print(line)
    return 0


def files_listing(entries: Any, chain: list[str]) -> Any:
    """``show --files`` lines in fixed columns: type, mode, size, the snapshot holding the bytes, path (the path
    last, so a long one never shifts the others; a symlink's target after it)."""
    width = max([len(c) for c in chain] + [len("in snapshot")])
    yield f"  {'type':<4}  {'mode':>4}  {'size':>15}  {'in snapshot':<{width}}  path"
    for path, e in entries:
        kind = {"f": "file", "d": "dir", "l": "link"}.get(e[0], e[0])
        size = f"{e[1]:,}" if e[0] == "f" else "-"
        held = (e[7] or "-") if e[0] == "f" else "-"
        target = f" -> {e[6]}" if e[0] == "l" else (f" (hard link to {e[6]})" if e[0] == "f" and e[6] else "")
        yield f"  {kind:<4}  {oct(e[3])[2:]:>4}  {size:>15}  {held:<{width}}  {path}{target}"


def _thaw_timeout(text: str) -> float:
    """``--thaw-timeout``: seconds, or a number with s / m / h / d; positive."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)] if m else 0.0
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: give seconds or e.g. 90m, 12h, 2d")
    return seconds


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore (each file's SHA-256 checked while written), check the restored tree (--reread: re-read and re-hash
    it), validate the databases (unless --no-validate) and write
    RESTORE_REPORT.md/.json into the target: the steps of :mod:`backups.commands.restore`, as the DAG runs them."""
    from .commands.restore import RestoreRequest, TablePlan, restore_snapshot

    cfg, resolver = _load(args)
    req = RestoreRequest(target=os.path.abspath(args.target), snapshot=args.snapshot, tier=args.tier,
                         storage=args.storage, sources=args.source, includes=args.include, tables=args.table,
                         force=args.force, pg_target_name="--pg-target" if args.pg_target else None,
                         include_dependencies=args.with_dependencies, no_owner=args.no_owner, reread=args.reread)
    out = restore_snapshot(cfg, req, resolver, pg_dsn=args.pg_target, validate=not args.no_validate,
                           poll_seconds=args.poll_seconds, thaw_timeout=args.thaw_timeout)
    if args.json:
        print(json.dumps(out.to_dict(), indent=1, default=str))
        return 0
    r, v = out.restored, out.verified
    print(f"restored {r.snapshot_id} from {r.storage} into {r.target}")
    print(_table([[n, s.kind, s.files, mb(s.bytes), s.verified, v.files.get(n, {}).get("files_checked", "-"), s.path]
                  for n, s in r.sources.items()], ["source", "kind", "files", "size", "sha256 ok",
                                                   "re-hashed" if v.reread else "present", "path"]))
    print(f"files: {v.content}" + ("" if v.reread else "; after the restore: present with their sizes (not re-read; "
                                                       "--reread re-hashes them)"))
    for n, s in r.sources.items():
        for k, val in (s.extra or {}).items():
            print(f"{n}: {k}: {val}")
        for w in s.warnings or []:
            print(f"{n}: warning: {w}")
    for n, added in (TablePlan.from_dict(r.tables).added() if r.tables else {}).items():
        print(f"{n}: dependencies restored with the tables (foreign keys): {', '.join(added)}")
    for n, res in v.validation.items():
        stats = res.get("statistics") or {}
        print(f"{n}: " + (f"not validated ({res.get('skipped')})" if res.get("success") is None else
                          f"{stats.get('successful_expectations')}/{stats.get('evaluated_expectations')} expectations met"))
    print(f"report: {', '.join(out.report_paths)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .commands.verify import verify

    cfg, resolver = _load(args)
    result = verify(cfg, [args.storage] if args.storage else None, snapshot=args.snapshot, tier=args.tier,
                    every=args.all, read_data=args.read_data, resolver=resolver)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
        return _verify_exit(result)
    mode = "read-data (every byte re-hashed)" if args.read_data else "structure (presence and sizes)"
    for r in result.storages:
        print(f"verify {mode} on {r['describe']}: {len(r['snapshots'])} snapshot(s), {r['objects']} object(s), "
              f"{mb(r['bytes'])}")
    for p in result.problems:
        print(f"  PROBLEM {p}")
    print("OK" if result.ok else f"FAILED: {len(result.problems)} problem(s)")
    return _verify_exit(result)


def _verify_exit(result: Any) -> int:
    """0 when everything checked out; 4 when stored data has problems (whatever else); 5 when the only problem is
    an unreachable storage (as the exit-code table says)."""
    if result.ok:
        return 0
    if any(s["problems"] for s in result.storages):
        return 4
    return StorageError.exit_code


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 3600:.1f}h" if seconds < 172800 else f"{seconds / 86400:.1f}d"


def cmd_status(args: argparse.Namespace) -> int:
    """Every tier (manual included) and every storage, numeric ages against the RPO, problems. ``--check``: exit
    with the Nagios code of the overall state (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN when it cannot be built)."""
    from .commands.status import CHECK_UNKNOWN

    try:
        return _status(args)
    except BackupError as exc:
        if not args.check:
            raise
        print(f"BACKUP UNKNOWN - {exc.message}")
        print(f"backupctl: error: {exc}", file=sys.stderr)
        return CHECK_UNKNOWN
    except Exception as exc:  # noqa: BLE001 - a monitor must get UNKNOWN, not a traceback's exit 1
        if not args.check:
            raise
        print(f"BACKUP UNKNOWN - internal error: {exc.__class__.__name__}: {exc}")
        log.exception("status failed")
        return CHECK_UNKNOWN


def _verified(tier: dict) -> str:
    """The tier's verification verdict for the status table: - (no snapshot), ok, never, OVERDUE, FAILED,
    UNKNOWN (the record is unreadable); MISSING when an object of the newest chain is not on a storage."""
    if (tier.get("presence") or {}).get("problems"):
        return "MISSING"
    state = (tier.get("verification") or {}).get("state") or "none"
    return {"none": "-", "ok": "ok", "never": "never"}.get(state, state.upper())


def _status(args: argparse.Namespace) -> int:
    from .commands.status import status

    cfg, resolver = _load(args)
    if args.storage:
        if args.storage not in cfg.storages:
            from .errors import NotFoundError

            raise NotFoundError(f"no storage named {args.storage!r}", hint=f"use one of: {', '.join(sorted(cfg.storages))}")
        cfg = cfg.model_copy(update={"storages": {args.storage: cfg.storages[args.storage]}})
    result = status(cfg, resolver)
    doc = result.to_dict()
    if args.prometheus:
        from .monitoring.metrics import render_prometheus, write_textfile

        write_textfile(args.prometheus, render_prometheus(doc))
    if args.json:
        print(json.dumps(doc, indent=1, default=str))
        return result.check_code if args.check else 0
    if args.check:
        print(result.check_line())
    print(f"backups of {doc['application']}: {doc['state'].upper()}  (generated {doc['generated_at']})")
    print(_table([[t["tier"], t["schedule"] or "manual", t["snapshots"], t["newest_id"] or "never",
                   t["newest_type"] or "-", _hours(t["age_seconds"]), _hours(t["rpo_seconds"]),
                   "OVERDUE" if t["overdue"] else "no", mb(t["size_bytes"]) if t["size_bytes"] is not None else "-",
                   f"{t['duration_seconds']:.1f}s" if t["duration_seconds"] is not None else "-",
                   (t["last_failure"] or {}).get("at") or "-", _verified(t), t["state"].upper()] for t in doc["tiers"]],
                 ["tier", "schedule", "snapshots", "newest", "type", "age", "rpo", "overdue", "size", "duration",
                  "last failure", "verified", "state"]))
    print()
    print(_table([[s["storage"], s["type"], "yes" if s["reachable"] else "NO",
                   "-" if s["writable"] is None else "yes" if s["writable"] else "NO",
                   mb(s["used_bytes"]) if s["used_bytes"] is not None else "-",
                   mb(s["free_bytes"]) if s["free_bytes"] is not None else "-", s["snapshots"],
                   (s["error"] or s["describe"] or "")[:90]] for s in doc["storages"]],
                 ["storage", "type", "reachable", "writable", "used", "free", "snapshots", "where / error"]))
    for s in doc["storages"]:  # archive storages: what a restore or drill must thaw first
        if (s.get("frozen") or {}).get("objects"):
            f = s["frozen"]
            print(f"{s['storage']}: {f['objects']} frozen object(s), {mb(f['bytes'])} in an archive class ("
                  + ", ".join(f"{t}: {n}" for t, n in f["tiers"].items()) + "); `backupctl restore` and `backupctl "
                  "drill` thaw what they need (--thaw-timeout)")
    locks = doc.get("locks") or []
    if locks:
        print("\nlocks:")
        print(_table([[lk["storage"], lk["state"].upper(), "exclusive" if lk["exclusive"] else "shared", lk["scope"],
                       lk["operation"], lk["host"], lk["pid"], lk["run"] or "-", f"{lk['heartbeat_age_seconds']:.0f}s"]
                      for lk in locks], ["storage", "state", "kind", "scope", "operation", "host", "pid", "run", "heartbeat"]))
        if any(lk["state"] != "live" for lk in locks):
            print("stale or dead locks: remove them with `backupctl unlock --stale`", file=sys.stderr)
    if doc["problems"]:
        print("\nproblems:")
        for p in doc["problems"]:
            print(f"  {p['severity'].upper():<8} {p['key']}: {p['summary']}")
    return result.check_code if args.check else _unread_storages(doc)


def _unread_storages(doc: dict) -> int:
    """Plain ``status``: 0, or — when a storage could not be read — that storage's exit code (5 unreachable, 8 a
    missing or wrong encryption key…; the highest when several), each named on stderr with its fix."""
    codes = []
    for s in doc["storages"]:
        if s.get("exit_code"):
            codes.append(s["exit_code"])
            hint = f"\n  fix: {s['hint']}" if s.get("hint") else ""
            print(f"backupctl: error: storage {s['storage']}: {s['error']}{hint}", file=sys.stderr)
    return max(codes, default=0)


def cmd_unlock(args: argparse.Namespace) -> int:
    from .repository import Repository
    from .storage import open_storage

    cfg, resolver = _load(args)
    names = [args.storage] if args.storage else list(cfg.storages)
    out = []
    for n in names:
        storage = open_storage(cfg, n, resolver)
        storage.check()
        for lk in Repository(storage, cfg).locks.unlock(everything=args.all):
            out.append({"storage": n, "key": lk.key, "lock": lk.describe()})
    if args.json:
        print(json.dumps({"removed": out}, indent=1))
        return 0
    for o in out:
        print(f"{o['storage']}: removed {o['lock']}")
    print(f"removed {len(out)} lock(s)" + ("" if args.all else " (stale or dead only; --all removes live ones too)"))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from .commands.prune import prune

    cfg, resolver = _load(args)
    result = prune(cfg, [args.storage] if args.storage else None, dry_run=args.dry_run, resolver=resolver)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        verb = "would forget" if args.dry_run else "forgot"
        for r in result.storages:
            print(f"{r['storage']}: keep {len(r['keep'])}, {verb} {len(r['forget'])}: {', '.join(r['forget']) or '-'}; "
                  f"orphans {len(r['orphans'])}, temp objects {len(r['temps'])}"
                  + ("" if args.dry_run else f"; removed {r['deleted_objects']} object(s), {mb(r['deleted_bytes'])}"))
            for w in r.get("warnings") or []:  # snapshots dated in the future (kept)
                print(f"  WARNING {w}")
            if args.verbose:  # every snapshot with keep/forget and the rule that decided it
                from .commands.prune import decision_table

                print("  " + decision_table(r, dry_run=args.dry_run).replace("\n", "\n  "))
        left = result.drill_leftovers
        if left.get("directories") or left.get("databases"):  # what killed drills left behind on this host
            print(f"drill leftovers {'that would be removed' if args.dry_run else 'removed'}: "
                  + ", ".join(left["directories"] + [f"database {d}" for d in left["databases"]]))
    error = result.error()
    if error is not None:
        raise error
    return 0


def cmd_drill(args: argparse.Namespace) -> int:
    """A disaster-recovery drill (see :mod:`backups.commands.drill`): restore each tier's newest restorable
    snapshot into isolation, test it, measure RTO/RPO; report; teardown always. Exit 10 when it failed."""
    from .commands.drill import DrillRequest, failed_error, run_drill

    cfg, resolver = _load(args)
    out = run_drill(cfg, DrillRequest(storage=args.storage, tiers=args.tier), resolver, poll_seconds=args.poll_seconds,
                    thaw_timeout=args.thaw_timeout)
    v = out.verdict
    if args.json:
        print(json.dumps(out.to_dict(), indent=1, default=str))
        return 0 if v["passed"] else failed_error(v).exit_code

    def dur(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}s" if x < 120 else f"{x / 60:.1f}m" if x < 7200 else f"{x / 3600:.1f}h"

    print(f"drill {v['drill_id']}: targets RTO {v['targets']['rto_minutes']:g} min, RPO {v['targets']['rpo_hours']:g} h")
    print(_table([[t["tier"], t["storage"], t["snapshot_id"] or "-", dur(t["rto_seconds"]), dur(t["rpo_seconds"]),
                   t["files"], mb(t["bytes"]), sum(1 for c in t["checks"] if c["ok"]), sum(1 for c in t["checks"] if not c["ok"]),
                   "pass" if t["passed"] else "FAIL"] for t in v["tiers"]],
                 ["tier", "storage", "snapshot", "RTO", "RPO", "files", "size", "checks ok", "failed", "result"]))
    print(f"report: {v['reports']['md']} (also .html, .json; latest.* and history.jsonl in {v['reports']['dir']})")
    if v["next_drill"]:
        print(f"next scheduled drill: {v['next_drill']}")
    if not v["passed"]:
        err = failed_error(v)
        print(f"backupctl: error: {err}", file=sys.stderr)
        return err.exit_code
    print(f"PASSED: RTO {dur(v['rto_seconds'])}, RPO {dur(v['rpo_seconds'])}")
    for finding in v["findings"]:  # a pass can still report something (a newer snapshot passed over)
        print(f"  finding: {finding}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .commands.doctor import format_report, run_doctor

    with contextlib.redirect_stdout(sys.stderr):  # the Airflow checks import Airflow (see route_logging)
        result = run_doctor(args.config, airflow=False if args.no_airflow else None, smtp_timeout=args.timeout)
    route_logging(getattr(args, "log_level", logging.INFO))
    print(json.dumps(result.to_dict(), indent=1) if args.json else format_report(result))
    return result.exit_code


def cmd_exit_codes(args: argparse.Namespace) -> int:
    from .errors import CHECK_EXIT_CODES

    if args.json:
        print(json.dumps({"exit_codes": {str(c): m for c, m in EXIT_CODES.items()},
                          "check_exit_codes": {str(c): m for c, m in CHECK_EXIT_CODES.items()}}, indent=1))
        return 0
    for code, meaning in EXIT_CODES.items():
        print(f"{code:>4}  {meaning}")
    print("\nbackupctl status --check (Nagios plugin codes):")
    for code, meaning in CHECK_EXIT_CODES.items():
        print(f"{code:>4}  {meaning}")
    return 0


# ------------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="backupctl", description="Back up, list, verify and restore FMR V2 snapshots.",
                                epilog="Exit codes: `backupctl exit-codes`. Config: --config, else $BACKUP_CONFIG, else include/backups.yaml.")
    _global_options(p)
    p.add_argument("--json", action="store_true", dest="global_json", help="machine-readable output (any command)")
    p.add_argument("--version", action="version", version=f"backupctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("backup", help="take a snapshot of a tier", description="Take a snapshot of a tier's sources: the tier DAG's steps in this process — system checks, plan, "
                       "extraction, commit, a checked copy on every storage, integrity on every storage, a test restore "
                       "(database dumps loaded, Great Expectations), the result document in reports/, cleanup.")
    b.add_argument("--tier", required=True, help="tier name from the config (daily, weekly, ...)")
    b.add_argument("--type", choices=["full", "differential", "incremental"], help="override the tier's backup type")
    b.add_argument("--storage", help="write to this storage only (default: every storage of the tier)")
    b.add_argument("--source", action="append", help="back up only this source (repeatable)")
    b.add_argument("--logical-date", help="ISO date-time the snapshot id derives from (default: now, UTC, to the second)")
    b.add_argument("--checksum", action="store_true", help="detect changed files by re-hashing instead of size/mtime/inode")
    b.add_argument("--comment", help="free text stored in the manifest")
    b.add_argument("--no-validate", action="store_true",
                   help="skip Great Expectations in the test restore (the restore, every SHA-256 and the loading of "
                        "every database dump still run)")
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.set_defaults(func=cmd_backup)

    ls = sub.add_parser("list", help="list snapshots", description="List committed snapshots (and corrupt manifests).")
    ls.add_argument("--tier")
    ls.add_argument("--storage")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    sh = sub.add_parser("show", help="contents of a snapshot and the chain it needs")
    sh.add_argument("snapshot", nargs="?", default="latest",
                    help="snapshot id, a unique prefix of one, or 'latest' (the default)")
    sh.add_argument("--tier", help="with 'latest': newest of this tier")
    sh.add_argument("--storage")
    sh.add_argument("--files", action="store_true", help="also list every path of every source (and which snapshot holds it)")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=cmd_show)

    r = sub.add_parser("restore", help="restore a snapshot into a directory",
                       description="Restore each source to TARGET/<source>/ (files under their paths, the SQLite database "
                                   "under its file name, command output as 'stdout', a PostgreSQL dump as 'dump/'), check "
                                   "every file's SHA-256 against the snapshot on the bytes written, check the restored "
                                   "tree (every file present with its size; --reread: re-read and re-hashed), validate "
                                   "the databases with Great Expectations and write RESTORE_REPORT.md/.json into TARGET.")
    r.add_argument("snapshot", help="snapshot id, a unique prefix of one (daily-2026113), or 'latest'")
    r.add_argument("--tier", help="with 'latest': newest of this tier")
    r.add_argument("--target", required=True, help="directory to restore into (must be empty unless --force)")
    r.add_argument("--source", action="append", help="restore only this source (repeatable)")
    r.add_argument("--include", action="append", help="files sources: only paths matching this glob (repeatable)")
    r.add_argument("--table", action="append", help="database sources: only this table (repeatable)")
    r.add_argument("--with-dependencies", action="store_true",
                   help="with --table: also restore the tables they reference (foreign keys, transitively); without "
                        "it a missing one stops the restore before anything is written (exit 7)")
    r.add_argument("--pg-target", help="postgres sources: load the dump into this database (DSN)")
    r.add_argument("--storage", help="restore from this storage (default: the first healthy one)")
    r.add_argument("--force", action="store_true",
                   help="restore into a non-empty target, replacing restored sources; with --table and --pg-target, "
                        "replace chosen tables that hold rows there (one transaction). Never / or a repository")
    r.add_argument("--no-owner", action="store_true",
                   help="files sources: leave restored files owned by the restoring user, even as root (as tar's "
                        "--no-same-owner); by default root restores the recorded owners (names first, then ids)")
    r.add_argument("--poll-seconds", type=float, default=60.0, help="archive storages: seconds between restore-status polls")
    r.add_argument("--thaw-timeout", type=_thaw_timeout, metavar="DURATION",
                   help="archive storages: give up waiting for the thaw after this long (seconds, or 90m, 12h, 2d; "
                        "default 48h), exit 5")
    r.add_argument("--no-validate", action="store_true",
                   help="skip the Great Expectations suite on restored databases (every file's SHA-256 is still "
                        "checked while written)")
    r.add_argument("--reread", action="store_true",
                   help="after the restore, read every restored file back and re-hash it against the snapshot "
                        "(for disks you distrust; each file's SHA-256 is always checked on the bytes written, and "
                        "without --reread the tree is checked with a stat walk: present, type, size, no stray file)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_restore)

    v = sub.add_parser("verify", help="check stored snapshots")
    v.add_argument("snapshot", nargs="?", help="snapshot id, a unique prefix of one, or 'latest' (default: latest)")
    v.add_argument("--all", action="store_true", help="every snapshot, and report corrupt manifests")
    v.add_argument("--read-data", action="store_true", help="re-hash every stored byte (slow, thorough)")
    v.add_argument("--tier")
    v.add_argument("--storage")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    st = sub.add_parser("status", help="every tier and storage: newest snapshot, age vs RPO, sizes, problems",
                        description="Every tier (manual included) and every storage: the newest snapshot, its age "
                                    "against the tier's RPO (monitoring.rpo_hours, default two cron intervals), an "
                                    "overdue flag, sizes, storage reachability and usage, and the open problems. "
                                    "--check exits with Nagios codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.")
    st.add_argument("--storage", help="only this storage")
    st.add_argument("--json", action="store_true", help="the status document (see backups.monitoring)")
    st.add_argument("--check", action="store_true",
                    help="exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (for cron, Nagios/Icinga and other monitors)")
    st.add_argument("--prometheus", metavar="FILE", help="also write the metrics to FILE (node_exporter textfile, atomic)")
    st.set_defaults(func=cmd_status)

    pr = sub.add_parser("prune", help="apply the tiers' retention and remove orphaned objects",
                        description="Forget snapshots the tiers' retention rules no longer keep (never one that a kept "
                                    "snapshot's chain needs; manifest first, then objects) and remove objects left by "
                                    "interrupted runs and temp objects of killed writers, once their modification time is older than "
                                    "locks.orphan_grace_hours (48 h) and no lock covers them. Holds the repository's exclusive "
                                    "lock (waits for running backups, restores and verifies). On every storage unless --storage.")
    pr.add_argument("--storage")
    pr.add_argument("--dry-run", action="store_true", help="show what would be removed; change nothing")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_prune)

    ul = sub.add_parser("unlock", help="remove stale locks (or, with --all, every lock)",
                        description="Remove locks whose holder is gone: dead processes of this host and locks of any "
                                    "host whose heartbeat is older than locks.stale_after_seconds (--stale, the default). "
                                    "--all removes every lock: only when you are sure no backup, prune, restore or verify "
                                    "runs (a holder whose lock was removed aborts before committing).")
    ul.add_argument("--stale", action="store_true", help="remove stale and dead locks (the default)")
    ul.add_argument("--all", action="store_true", help="remove every lock, live ones included")
    ul.add_argument("--storage")
    ul.add_argument("--json", action="store_true")
    ul.set_defaults(func=cmd_unlock)

    dr = sub.add_parser("drill", help="disaster-recovery drill: restore into isolation, test, measure RTO/RPO",
                        description="Restore each tier's newest restorable snapshot from the drill storage (read-only) "
                                    "into a scratch directory (and PostgreSQL dumps into scratch databases), re-hash and "
                                    "validate it (Great Expectations, integrity, config files, the drill.smoke checks), "
                                    "measure RTO and RPO against drill.rto_minutes / drill.rpo_hours, write the report "
                                    "(Markdown, HTML, JSON) and remove the scratch data. Exit 10 when a check failed or a "
                                    "target was missed. Runbook: docs/disaster-recovery.md.")
    dr.add_argument("--storage", help="drill from this storage (default: drill.storage, else each tier's last storage)")
    dr.add_argument("--tier", action="append", help="drill this tier (repeatable; default: drill.tiers, else all)")
    dr.add_argument("--poll-seconds", type=float, default=60.0, help="archive storages: seconds between thaw polls")
    dr.add_argument("--thaw-timeout", type=_thaw_timeout, metavar="DURATION",
                    help="archive storages (drill.approve_archive): give up waiting for the thaw after this long "
                         "(seconds, or 90m, 12h, 2d; default 48h); the tier then fails the drill")
    dr.add_argument("--json", action="store_true")
    dr.set_defaults(func=cmd_drill)

    ec = sub.add_parser("exit-codes", help="print the documented exit codes")
    ec.add_argument("--json", action="store_true")
    ec.set_defaults(func=cmd_exit_codes)

    dr = sub.add_parser("doctor", help="check this host can run the backups (config, env, connections, storages, "
                                       "pool, SMTP)",
                        description="Check a deployment where the DAGs run (each worker and the triggerer): the config "
                                    "loads, its environment variables are set, its connections resolve, every storage "
                                    "is reachable and writable (a probe object is written, read back and deleted), "
                                    "and - when Airflow is importable - the connections are defined in Airflow, the "
                                    "backup_io pool exists and the SMTP server of notify_email answers. Each failed "
                                    "check prints its fix. Exit 0 when ready, else the code of the first failed check "
                                    "(2 setup, 5 storage, 8 encryption key).")
    dr.add_argument("--no-airflow", action="store_true", help="skip the checks that need Airflow")
    dr.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the SMTP server")
    dr.add_argument("--json", action="store_true")
    dr.set_defaults(func=cmd_doctor)
    for command in sub.choices.values():  # `backupctl prune -v` as well as `backupctl -v prune`
        _global_options(command, after_command=True)
    return p


def _global_options(parser: argparse.ArgumentParser, *, after_command: bool = False) -> None:
    """--config, -v and -q: on the main parser (before the command) and on every command's parser (after it).
    After the command their default is SUPPRESS, so an option given only before the command is not reset."""
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if after_command else {}
    parser.add_argument("--config", help="configuration file (default: $BACKUP_CONFIG or include/backups.yaml)",
                        **default)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging", **default)
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only", **default)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = bool(getattr(args, "json", False) or args.global_json)
    args.log_level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT, stream=sys.stderr)
    structlog = sys.modules.get("structlog")
    saved = structlog.get_config() if structlog is not None else None  # route_logging's change ends with main
    try:
        return args.func(args)
    except BackupError as exc:
        print(f"backupctl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("backupctl: interrupted; nothing was committed for the running snapshot", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `backupctl show --files | head`: the reader left; no traceback, no error at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        # never 0: the command stopped mid-output, before its own exit code (a `verify` that found damage is 4);
        # 141 is what a shell reports for a process killed by SIGPIPE, so `set -o pipefail` sees it
        return BROKEN_PIPE
    except OSError as exc:
        import errno

        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = exc.filename or ("the command's output" if args.func is not cmd_backup and args.func is not cmd_restore
                                 else "a local file (staging or restore target)")
        free = ""
        try:
            import shutil

            free = f"; {shutil.disk_usage(os.path.dirname(str(exc.filename)) or '.').free / 1e6:,.1f} MB free there" if exc.filename else ""
        except OSError:
            pass
        fix = ("free space (or point BACKUP_STAGING / the target at a bigger disk) and re-run"
               if args.func in (cmd_backup, cmd_restore) or exc.filename else "send the output where there is space")
        print(f"backupctl: error: no space left on device while writing {where}{free}\n  fix: {fix}"
              + ("; a snapshot whose manifest was not written was not committed (`backupctl list` shows what was)"
                 if args.func is cmd_backup else ""), file=sys.stderr)
        return StorageError.exit_code
    finally:
        if saved is not None:  # an in-process caller (the Airflow demo, tests) gets its structlog setup back
            structlog.configure(**saved)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
