"""``backupctl`` — the backup engine from a shell, with Airflow up or down.

Starts fast: imports Airflow only when the config names a ``conn_id`` (to resolve the connection), and never
imports Great Expectations. Exit codes are documented in README (``backupctl exit-codes``) and stable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

from . import __version__
from .commands.base import mb
from .errors import EXIT_CODES, BackupError, StorageError

log = logging.getLogger("backups")


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    """The config and its connection resolver (injected: :mod:`backups.connections`; never the Airflow layer)."""
    from .commands.base import config_and_resolver

    return config_and_resolver(args.config)


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


def _age(iso: str) -> str:
    secs = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    if secs < 120:
        return f"{secs:.0f}s"
    if secs < 7200:
        return f"{secs / 60:.0f}m"
    if secs < 172800:
        return f"{secs / 3600:.1f}h"
    return f"{secs / 86400:.1f}d"


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*[str(c) for c in r]) for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ commands
def cmd_backup(args: argparse.Namespace) -> int:
    from .commands.backup import run_backup

    cfg, resolver = _load(args)
    storages = [args.storage] if args.storage else None
    out = run_backup(cfg, args.tier, logical_date=args.logical_date, type_override=args.type, storages=storages,
                     resolver=resolver, checksum=args.checksum, sources=args.source or None, comment=args.comment or "")
    d = out.pop("manifest")
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    if out["already_committed"]:
        print(f"{out['id']} was already committed (same tier and logical date); nothing to do")
        return 0
    if d.get("promoted_reason"):
        print(f"warning: {d['requested_type']} promoted to full: {d['promoted_reason']}", file=sys.stderr)
    rows = [[n, r["kind"], r["files"], mb(r["bytes"]), r["stored_files"], mb(r["stored_bytes"]), r["deleted"], len(r["warnings"])]
            for n, r in sorted(d["sources"].items())]
    print(f"snapshot {out['id']}  type={d['type']}  parent={d.get('parent') or '-'}  storages={','.join(out['storages'])}  "
          f"{d['duration_seconds']:.1f}s  stored {mb(d['totals']['stored_bytes'])}")
    print(_table(rows, ["source", "kind", "files", "size", "stored", "stored size", "deleted", "warnings"]))
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
            for path, e in iter_index(storage, d["sources"][n]["objects"]["index"]):
                kind = {"f": "file", "d": "dir ", "l": "link"}[e[0]]
                extra = f" -> {e[6]}" if e[0] == "l" else (f"  {e[1]:>12,}  in {e[7]}" if e[0] == "f" else "")
                print(f"  {kind} {oct(e[3])[2:]:>4}  {path}{extra}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore, re-hash what was written, validate the databases (unless --no-validate) and write
    RESTORE_REPORT.md/.json into the target: the steps of :mod:`backups.commands.restore`, as the DAG runs them."""
    from .commands.restore import RestoreRequest, restore_snapshot

    cfg, resolver = _load(args)
    req = RestoreRequest(target=os.path.abspath(args.target), snapshot=args.snapshot, tier=args.tier,
                         storage=args.storage, sources=args.source, includes=args.include, tables=args.table,
                         force=args.force, pg_target_name="--pg-target" if args.pg_target else None)
    out = restore_snapshot(cfg, req, resolver, pg_dsn=args.pg_target, validate=not args.no_validate,
                           poll_seconds=args.poll_seconds)
    if args.json:
        print(json.dumps(out.to_dict(), indent=1, default=str))
        return 0
    r, v = out.restored, out.verified
    print(f"restored {r.snapshot_id} from {r.storage} into {r.target}")
    print(_table([[n, s.kind, s.files, mb(s.bytes), s.verified, v.files.get(n, {}).get("files_checked", "-"), s.path]
                  for n, s in r.sources.items()], ["source", "kind", "files", "size", "sha256 ok", "re-hashed", "path"]))
    for n, s in r.sources.items():
        for k, val in (s.extra or {}).items():
            print(f"{n}: {k}: {val}")
    for n, res in v.validation.items():
        stats = res.get("statistics") or {}
        print(f"{n}: " + (f"not validated ({res.get('skipped')})" if res.get("success") is None else
                          f"{stats.get('successful_expectations')}/{stats.get('evaluated_expectations')} expectations met"))
    print(f"report: {', '.join(out.report_paths)}")
    return 0


def _shared_lock(cfg: Any, storage: Any, operation: str):
    """A shared repository lock (a prune waits for it; it waits for a running prune)."""
    from .repository import Repository, repo_scope

    return Repository(storage, cfg).lock(repo_scope(), exclusive=False, operation=operation)


def cmd_verify(args: argparse.Namespace) -> int:
    from .commands.verify import verify

    cfg, resolver = _load(args)
    result = verify(cfg, [args.storage] if args.storage else None, snapshot=args.snapshot, tier=args.tier,
                    every=args.all, read_data=args.read_data, resolver=resolver)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
        return 0 if result.ok else 4
    mode = "read-data (every byte re-hashed)" if args.read_data else "structure (presence and sizes)"
    for r in result.storages:
        print(f"verify {mode} on {r['describe']}: {len(r['snapshots'])} snapshot(s), {r['objects']} object(s), "
              f"{mb(r['bytes'])}")
    for p in result.problems:
        print(f"  PROBLEM {p}")
    print("OK" if result.ok else f"FAILED: {len(result.problems)} problem(s)")
    return 0 if result.ok else 4


def cmd_status(args: argparse.Namespace) -> int:
    from .repository import Repository

    cfg, resolver = _load(args)
    storage = _storage(cfg, resolver, args.storage)
    cat = Repository(storage, cfg).catalog
    out = []
    for tier in cfg.tiers:
        snaps = cat.ordered(tier)
        last = snaps[-1] if snaps else None
        out.append({"tier": tier, "type": cfg.tiers[tier].type, "schedule": cfg.tiers[tier].schedule,
                    "snapshots": len(snaps), "latest": last.id if last else None,
                    "finished_at": last.doc["finished_at"] if last else None,
                    "age": _age(last.doc["finished_at"]) if last else None})
    from .repository import Repository

    locks = Repository(storage, cfg).locks.report()
    if args.json:
        print(json.dumps({"storage": storage.name, "tiers": out, "corrupt": sorted(cat.broken), "locks": locks}, indent=1))
        return 0
    print(f"storage: {storage.describe()}")
    print(_table([[o["tier"], o["type"], o["schedule"] or "-", o["snapshots"], o["latest"] or "never", o["age"] or "-"] for o in out],
                 ["tier", "type", "schedule", "snapshots", "latest", "age"]))
    if locks:
        print("\nlocks:")
        print(_table([[lk["state"].upper(), "exclusive" if lk["exclusive"] else "shared", lk["scope"], lk["operation"],
                       lk["host"], lk["pid"], lk["run"] or "-", f"{lk['heartbeat_age_seconds']:.0f}s"] for lk in locks],
                     ["state", "kind", "scope", "operation", "host", "pid", "run", "heartbeat"]))
        if any(lk["state"] != "live" for lk in locks):
            print("stale or dead locks: remove them with `backupctl unlock --stale`", file=sys.stderr)
    return 0


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
            if args.verbose:  # every snapshot with keep/forget and the rule that decided it
                from .commands.prune import decision_table

                print("  " + decision_table(r, dry_run=args.dry_run).replace("\n", "\n  "))
    error = result.error()
    if error is not None:
        raise error
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .commands.doctor import format_report, run_doctor

    result = run_doctor(args.config, airflow=False if args.no_airflow else None, smtp_timeout=args.timeout)
    print(json.dumps(result.to_dict(), indent=1) if args.json else format_report(result))
    return result.exit_code


def cmd_exit_codes(args: argparse.Namespace) -> int:
    for code, meaning in EXIT_CODES.items():
        print(f"{code:>4}  {meaning}")
    return 0


# ------------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="backupctl", description="Back up, list, verify and restore FMR V2 snapshots.",
                                epilog="Exit codes: `backupctl exit-codes`. Config: --config, else $BACKUP_CONFIG, else include/backups.yaml.")
    p.add_argument("--config", help="configuration file (default: $BACKUP_CONFIG or include/backups.yaml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    p.add_argument("--version", action="version", version=f"backupctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("backup", help="take a snapshot of a tier", description="Take a snapshot of a tier's sources.")
    b.add_argument("--tier", required=True, help="tier name from the config (daily, weekly, ...)")
    b.add_argument("--type", choices=["full", "differential", "incremental"], help="override the tier's backup type")
    b.add_argument("--storage", help="write to this storage only (default: every storage of the tier)")
    b.add_argument("--source", action="append", help="back up only this source (repeatable)")
    b.add_argument("--logical-date", help="ISO date-time the snapshot id derives from (default: now, UTC, to the second)")
    b.add_argument("--checksum", action="store_true", help="detect changed files by re-hashing instead of size/mtime/inode")
    b.add_argument("--comment", help="free text stored in the manifest")
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.set_defaults(func=cmd_backup)

    ls = sub.add_parser("list", help="list snapshots", description="List committed snapshots (and corrupt manifests).")
    ls.add_argument("--tier")
    ls.add_argument("--storage")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    sh = sub.add_parser("show", help="contents of a snapshot and the chain it needs")
    sh.add_argument("snapshot", help="snapshot id or 'latest'")
    sh.add_argument("--tier", help="with 'latest': newest of this tier")
    sh.add_argument("--storage")
    sh.add_argument("--files", action="store_true", help="also list every path of every source (and which snapshot holds it)")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=cmd_show)

    r = sub.add_parser("restore", help="restore a snapshot into a directory",
                       description="Restore each source to TARGET/<source>/ (files under their paths, the SQLite database "
                                   "under its file name, command output as 'stdout', a PostgreSQL dump as 'dump/'), re-hash "
                                   "every written file against the snapshot, validate the databases with Great "
                                   "Expectations and write RESTORE_REPORT.md/.json into TARGET.")
    r.add_argument("snapshot", help="snapshot id or 'latest'")
    r.add_argument("--tier", help="with 'latest': newest of this tier")
    r.add_argument("--target", required=True, help="directory to restore into (must be empty unless --force)")
    r.add_argument("--source", action="append", help="restore only this source (repeatable)")
    r.add_argument("--include", action="append", help="files sources: only paths matching this glob (repeatable)")
    r.add_argument("--table", action="append", help="database sources: only this table (repeatable)")
    r.add_argument("--pg-target", help="postgres sources: load the dump into this database (DSN)")
    r.add_argument("--storage", help="restore from this storage (default: the first healthy one)")
    r.add_argument("--force", action="store_true", help="restore into a non-empty target, replacing restored sources")
    r.add_argument("--poll-seconds", type=float, default=60.0, help="archive storages: seconds between restore-status polls")
    r.add_argument("--no-validate", action="store_true",
                   help="skip the Great Expectations suite on restored databases (files are still re-hashed)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_restore)

    v = sub.add_parser("verify", help="check stored snapshots")
    v.add_argument("snapshot", nargs="?", help="snapshot id or 'latest' (default: latest)")
    v.add_argument("--all", action="store_true", help="every snapshot, and report corrupt manifests")
    v.add_argument("--read-data", action="store_true", help="re-hash every stored byte (slow, thorough)")
    v.add_argument("--tier")
    v.add_argument("--storage")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    st = sub.add_parser("status", help="newest snapshot per tier and its age")
    st.add_argument("--storage")
    st.add_argument("--json", action="store_true")
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

    ec = sub.add_parser("exit-codes", help="print the documented exit codes")
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except BackupError as exc:
        print(f"backupctl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("backupctl: interrupted; nothing was committed for the running snapshot", file=sys.stderr)
        return 130
    except OSError as exc:
        import errno

        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = exc.filename or "a local file (staging or restore target)"
        free = ""
        try:
            import shutil

            free = f"; {shutil.disk_usage(os.path.dirname(str(exc.filename)) or '.').free / 1e6:,.1f} MB free there" if exc.filename else ""
        except OSError:
            pass
        print(f"backupctl: error: no space left on device while writing {where}{free}\n  fix: free space (or point "
              "BACKUP_STAGING / the target at a bigger disk) and re-run; nothing was committed", file=sys.stderr)
        return StorageError.exit_code
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
