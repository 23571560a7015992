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
from typing import TYPE_CHECKING, Any

from . import cli_parser
from .cli_logging import LOG_FORMAT, log_level, route_logging
from .errors import BROKEN_PIPE, EXIT_CODES, BackupError, StorageError
from .units import fmt_bytes, fmt_duration

if TYPE_CHECKING:
    from .config import Config
    from .storage import Resolver
    from .storage.base import Storage

log = logging.getLogger("backups")


def _load(args: argparse.Namespace) -> tuple[Config, Resolver | None]:
    """The config and its connection resolver (injected: :mod:`backups.connections`; never the Airflow layer)."""
    from .commands.base import config_and_resolver

    with contextlib.redirect_stdout(sys.stderr):  # what a third-party import binds to "stdout" goes to stderr
        cfg, resolver = config_and_resolver(args.config)
    if resolver is not None:  # the Airflow import reconfigured logging: stdout is for the command's output only
        route_logging(getattr(args, "log_level", logging.WARNING))
    _check_names(cfg, args)
    return cfg, resolver


def _check_names(cfg: Config, args: argparse.Namespace) -> None:
    """``--tier`` / ``--storage`` / ``--source`` against the config: a misspelt name is exit 3 with a suggestion
    (``--tier dayly`` → did you mean 'daily'?) instead of an empty result further down."""
    from .commands.backup import MANUAL_TIER
    from .errors import check_name

    for kind, known in (("tier", {*cfg.tiers, MANUAL_TIER}), ("storage", cfg.storages), ("source", cfg.sources)):
        given = getattr(args, kind, None)
        for name in [given] if isinstance(given, str) else given or []:  # one value, or a repeatable option's list
            check_name(kind, name, known, f"--{kind}")


def _storage(cfg: Config, resolver: Resolver | None, name: str | None, *, read_only: bool = True) -> Storage:
    """The named storage, or the first one (config order) that answers (:func:`backups.storage.reach.first_serving`)."""
    from .storage.reach import first_serving

    storage, _, _ = first_serving(cfg, [name] if name else None, resolver, lambda s: None, read_only=read_only)
    return storage


def _words(value: Any) -> str:
    """A value for a sentence: a list as ``a, b`` (never Python's ``['a', 'b']``)."""
    if isinstance(value, (list, tuple, set)):
        return ", ".join(str(v) for v in (sorted(value) if isinstance(value, set) else value)) or "none"
    return str(value)


def _table(rows: list[list[Any]], headers: list[str]) -> str:
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
    rows = [[n, r["kind"], r["files"], fmt_bytes(r["bytes"]), r["stored_files"], fmt_bytes(r["stored_bytes"]), r["deleted"], r["warnings"]]
            for n, r in sorted(out["sources"].items())]
    took = out["durations"].get("snapshot_seconds")
    print(f"snapshot {out['id']}  type={out['type']}  parent={out.get('parent') or '-'}  storages={','.join(out['storages'])}  "
          f"{fmt_duration(took or 0)}  stored {fmt_bytes(out['totals']['stored_bytes'])}")
    print(_table(rows, ["source", "kind", "files", "size", "stored", "stored size", "deleted", "warnings"]))
    checks = out["checks"]
    for name, i in checks["integrity"].items():
        print(f"integrity on {name}: {'OK' if i['ok'] else 'FAILED'} ({i['objects_hashed']} object(s), "
              f"{fmt_bytes(i['bytes_hashed'])} re-hashed)")
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
             ",".join(s["sources"]), s["files"], fmt_bytes(s["bytes"]), fmt_bytes(s["stored_bytes"]), s["status"]] for s in snaps]
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
    print(f"logical    {d['logical_date']}\nstarted    {d['started_at']}\nfinished   {d['finished_at']} ({fmt_duration(d['duration_seconds'])})")
    print(f"storage    {storage.describe()}\nchain      " + " -> ".join(f"{s.id} ({s.type})" for s in chain))
    rows = []
    for n, r in sorted(d["sources"].items()):
        det = r["details"]
        extra = ""
        if "tables" in det:
            extra = ", ".join(f"{t}={v['rows']}" for t, v in sorted(det["tables"].items()))
        rows.append([n, r["kind"], r["files"], fmt_bytes(r["bytes"]), r["stored_files"], r["deleted"], extra[:80]])
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
    print(_table([[n, s.kind, s.files, fmt_bytes(s.bytes), s.verified, v.files.get(n, {}).get("files_checked", "-"), s.path]
                  for n, s in r.sources.items()], ["source", "kind", "files", "size", "sha256 ok",
                                                   "re-hashed" if v.reread else "present", "path"]))
    print(f"files: {v.content}" + ("" if v.reread else "; after the restore: present with their sizes (not re-read; "
                                                       "--reread re-hashes them)"))
    for n, s in r.sources.items():
        for k, val in (s.extra or {}).items():
            print(f"{n}: {k}: {_words(val)}")
        for w in s.warnings or []:
            print(f"{n}: warning: {w}")
    table_plan = TablePlan.from_dict(r.tables)  # None exactly when r.tables is empty
    for n, added in (table_plan.added() if table_plan else {}).items():
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
              f"{fmt_bytes(r['bytes'])}")
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
                   t["newest_type"] or "-", fmt_duration(t["age_seconds"]), fmt_duration(t["rpo_seconds"]),
                   "OVERDUE" if t["overdue"] else "no", fmt_bytes(t["size_bytes"]), fmt_duration(t["duration_seconds"]),
                   (t["last_failure"] or {}).get("at") or "-", _verified(t), t["state"].upper()] for t in doc["tiers"]],
                 ["tier", "schedule", "snapshots", "newest", "type", "age", "rpo", "overdue", "size", "duration",
                  "last failure", "verified", "state"]))
    print()
    print(_table([[s["storage"], s["type"], "yes" if s["reachable"] else "NO",
                   "-" if s["writable"] is None else "yes" if s["writable"] else "NO",
                   fmt_bytes(s["used_bytes"]), fmt_bytes(s["free_bytes"]), s["snapshots"],
                   (s["error"] or s["describe"] or "")[:90]] for s in doc["storages"]],
                 ["storage", "type", "reachable", "writable", "used", "free", "snapshots", "where / error"]))
    for s in doc["storages"]:  # archive storages: what a restore or drill must thaw first
        if (s.get("frozen") or {}).get("objects"):
            f = s["frozen"]
            print(f"{s['storage']}: {f['objects']} frozen object(s), {fmt_bytes(f['bytes'])} in an archive class ("
                  + ", ".join(f"{t}: {n}" for t, n in f["tiers"].items()) + "); `backupctl restore` and `backupctl "
                  "drill` thaw what they need (--thaw-timeout)")
    locks = doc.get("locks") or []
    if locks:
        print("\nlocks:")
        print(_table([[lk["storage"], lk["state"].upper(), "exclusive" if lk["exclusive"] else "shared", lk["scope"],
                       lk["operation"], lk["host"], lk["pid"], lk["run"] or "-", fmt_duration(lk["heartbeat_age_seconds"])]
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
    """Each storage on its own: an unreachable one is named (exit 5 at the end), the others are unlocked."""
    from .repository import Repository
    from .storage.reach import each_storage

    cfg, resolver = _load(args)
    out: list[dict[str, Any]] = []
    unreachable: dict[str, str] = {}
    for storage in each_storage(cfg, [args.storage] if args.storage else None, resolver, unreachable, read_only=False):
        for lk in Repository(storage, cfg).locks.unlock(everything=args.all):
            out.append({"storage": storage.name, "key": lk.key, "lock": lk.describe()})
    if args.json:
        print(json.dumps({"removed": out, "unreachable": unreachable}, indent=1))
    else:
        for o in out:
            print(f"{o['storage']}: removed {o['lock']}")
        print(f"removed {len(out)} lock(s)" + ("" if args.all else " (stale or dead only; --all removes live ones too)"))
    for name, message in unreachable.items():
        print(f"backupctl: error: storage {name} unreachable, its locks were not looked at: {message}", file=sys.stderr)
    return StorageError.exit_code if unreachable else 0


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
                  + ("" if args.dry_run else f"; removed {r['deleted_objects']} object(s), {fmt_bytes(r['deleted_bytes'])}"))
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

    print(f"drill {v['drill_id']}: targets RTO {v['targets']['rto_minutes']:g} min, RPO {v['targets']['rpo_hours']:g} h")
    print(_table([[t["tier"], t["storage"], t["snapshot_id"] or "-", fmt_duration(t["rto_seconds"]), fmt_duration(t["rpo_seconds"]),
                   t["files"], fmt_bytes(t["bytes"]), sum(1 for c in t["checks"] if c["ok"]), sum(1 for c in t["checks"] if not c["ok"]),
                   "pass" if t["passed"] else "FAIL"] for t in v["tiers"]],
                 ["tier", "storage", "snapshot", "RTO", "RPO", "files", "size", "checks ok", "failed", "result"]))
    print(f"report: {v['reports']['md']} (also .html, .json; latest.* and history.jsonl in {v['reports']['dir']})")
    if v["next_drill"]:
        print(f"next scheduled drill: {v['next_drill']}")
    if not v["passed"]:
        err = failed_error(v)
        print(f"backupctl: error: {err}", file=sys.stderr)
        return err.exit_code
    print(f"PASSED: RTO {fmt_duration(v['rto_seconds'])}, RPO {fmt_duration(v['rpo_seconds'])}")
    for finding in v["findings"]:  # a pass can still report something (a newer snapshot passed over)
        print(f"  finding: {finding}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .commands.doctor import format_report, run_doctor

    with contextlib.redirect_stdout(sys.stderr):  # the Airflow checks import Airflow (see route_logging)
        result = run_doctor(args.config, airflow=False if args.no_airflow else None, smtp_timeout=args.timeout)
    route_logging(getattr(args, "log_level", logging.WARNING))
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


def build_parser() -> argparse.ArgumentParser:
    return cli_parser.build_parser({"backup": cmd_backup, "list": cmd_list, "show": cmd_show, "restore": cmd_restore,
                          "verify": cmd_verify, "status": cmd_status, "prune": cmd_prune, "unlock": cmd_unlock,
                          "drill": cmd_drill, "exit-codes": cmd_exit_codes, "doctor": cmd_doctor})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = bool(getattr(args, "json", False) or args.global_json)
    args.log_level = log_level(args.verbose, args.quiet)
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

            free = f"; {fmt_bytes(shutil.disk_usage(os.path.dirname(str(exc.filename)) or '.').free)} free there" if exc.filename else ""
        except OSError:
            pass
        fix = ("free space (or point BACKUP_STAGING / the target at a bigger disk) and re-run"
               if args.func in (cmd_backup, cmd_restore) or exc.filename else "send the output where there is space")
        print(f"backupctl: error: no space left on device while writing {where}{free}\n  fix: {fix}"
              + ("; a snapshot whose manifest was not written was not committed (`backupctl list` shows what was)"
                 if args.func is cmd_backup else ""), file=sys.stderr)
        return StorageError.exit_code
    finally:
        if structlog is not None and saved is not None:  # an in-process caller (the Airflow demo, tests) gets its structlog setup back
            structlog.configure(**saved)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
