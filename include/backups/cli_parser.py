"""``backupctl``'s command line: the parser of every command (the commands themselves are in :mod:`backups.cli`)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from typing import Any

from . import __version__


def thaw_timeout(text: str) -> float:
    """``--thaw-timeout``: seconds, or a number with s / m / h / d; positive."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)] if m else 0.0
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: give seconds or e.g. 90m, 12h, 2d")
    return seconds


def build_parser(commands: Mapping[str, Callable[[argparse.Namespace], int]]) -> argparse.ArgumentParser:
    """``backupctl``'s parser; ``commands``: command name → the function that runs it (``args.func``)."""
    p = argparse.ArgumentParser(prog="backupctl", description="Back up, list, verify and restore FMR V2 snapshots.",
                                epilog="Exit codes: `backupctl exit-codes`. Config: --config, else $BACKUP_CONFIG, else include/backups.yaml.")
    global_options(p)
    p.add_argument("--json", action="store_true", dest="global_json", help="machine-readable output (any command)")
    p.add_argument("--version", action="version", version=f"backupctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _data_commands(sub, commands)
    _check_commands(sub, commands)
    _maintenance_commands(sub, commands)
    for command in sub.choices.values():  # `backupctl prune -v` as well as `backupctl -v prune`
        global_options(command, after_command=True)
    return p


def _data_commands(sub: Any, commands: Mapping[str, Callable[[argparse.Namespace], int]]) -> None:
    """backup, list, show, restore."""
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
    b.set_defaults(func=commands["backup"])

    ls = sub.add_parser("list", help="list snapshots", description="List committed snapshots (and corrupt manifests).")
    ls.add_argument("--tier")
    ls.add_argument("--storage")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=commands["list"])

    sh = sub.add_parser("show", help="contents of a snapshot and the chain it needs")
    sh.add_argument("snapshot", nargs="?", default="latest",
                    help="snapshot id, a unique prefix of one, or 'latest' (the default)")
    sh.add_argument("--tier", help="with 'latest': newest of this tier")
    sh.add_argument("--storage")
    sh.add_argument("--files", action="store_true", help="also list every path of every source (and which snapshot holds it)")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=commands["show"])

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
    r.add_argument("--thaw-timeout", type=thaw_timeout, metavar="DURATION",
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
    r.set_defaults(func=commands["restore"])


def _check_commands(sub: Any, commands: Mapping[str, Callable[[argparse.Namespace], int]]) -> None:
    """verify, status."""
    v = sub.add_parser("verify", help="check stored snapshots")
    v.add_argument("snapshot", nargs="?", help="snapshot id, a unique prefix of one, or 'latest' (default: latest)")
    v.add_argument("--all", action="store_true", help="every snapshot, and report corrupt manifests")
    v.add_argument("--read-data", action="store_true", help="re-hash every stored byte (slow, thorough)")
    v.add_argument("--tier")
    v.add_argument("--storage")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=commands["verify"])

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
    st.set_defaults(func=commands["status"])


def _maintenance_commands(sub: Any, commands: Mapping[str, Callable[[argparse.Namespace], int]]) -> None:
    """prune, unlock, drill, exit-codes, doctor."""
    pr = sub.add_parser("prune", help="apply the tiers' retention and remove orphaned objects",
                        description="Forget snapshots the tiers' retention rules no longer keep (never one that a kept "
                                    "snapshot's chain needs; manifest first, then objects) and remove objects left by "
                                    "interrupted runs and temp objects of killed writers, once their modification time is older than "
                                    "locks.orphan_grace_hours (48 h) and no lock covers them. Holds the repository's exclusive "
                                    "lock (waits for running backups, restores and verifies). On every storage unless --storage.")
    pr.add_argument("--storage")
    pr.add_argument("--dry-run", action="store_true", help="show what would be removed; change nothing")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=commands["prune"])

    ul = sub.add_parser("unlock", help="remove stale locks (or, with --all, every lock)",
                        description="Remove locks whose holder is gone: dead processes of this host and locks of any "
                                    "host whose heartbeat is older than locks.stale_after_seconds (--stale, the default). "
                                    "--all removes every lock: only when you are sure no backup, prune, restore or verify "
                                    "runs (a holder whose lock was removed aborts before committing).")
    ul.add_argument("--stale", action="store_true", help="remove stale and dead locks (the default)")
    ul.add_argument("--all", action="store_true", help="remove every lock, live ones included")
    ul.add_argument("--storage")
    ul.add_argument("--json", action="store_true")
    ul.set_defaults(func=commands["unlock"])

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
    dr.add_argument("--thaw-timeout", type=thaw_timeout, metavar="DURATION",
                    help="archive storages (drill.approve_archive): give up waiting for the thaw after this long "
                         "(seconds, or 90m, 12h, 2d; default 48h); the tier then fails the drill")
    dr.add_argument("--json", action="store_true")
    dr.set_defaults(func=commands["drill"])

    ec = sub.add_parser("exit-codes", help="print the documented exit codes")
    ec.add_argument("--json", action="store_true")
    ec.set_defaults(func=commands["exit-codes"])

    dr = sub.add_parser("doctor", help="check this host can run the backups (config, env, connections, storages, "
                                       "pool, SMTP)",
                        description="Check a deployment where the DAGs run (each worker and the triggerer): the config "
                                    "loads, its environment variables are set, its connections resolve, every storage "
                                    "is reachable and writable (a probe object is written, read back and deleted), "
                                    "and - when Airflow is installed - the connections are defined in Airflow, the "
                                    "backup_io pool exists and the SMTP server of notify_email answers. Each failed "
                                    "check prints its fix. Exit 0 when ready, else the code of the first failed check "
                                    "(2 setup, 5 storage, 8 encryption key).")
    dr.add_argument("--no-airflow", action="store_true", help="skip the checks that need Airflow")
    dr.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the SMTP server")
    dr.add_argument("--json", action="store_true")
    dr.set_defaults(func=commands["doctor"])


def global_options(parser: argparse.ArgumentParser, *, after_command: bool = False) -> None:
    """--config, -v (repeatable) and -q: on the main parser (before the command) and on every command's parser (after it).
    After the command their default is SUPPRESS, so an option given only before the command is not reset."""
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if after_command else {}
    parser.add_argument("--config", help="configuration file (default: $BACKUP_CONFIG or include/backups.yaml)",
                        **default)
    parser.add_argument("-v", "--verbose", action="count", help="log what is being done (INFO lines on stderr; -vv: "
                        "debug). Without it only warnings and errors are logged", **(default or {"default": 0}))
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only (no warnings)", **default)


