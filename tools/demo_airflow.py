"""``make demo``: the backup DAGs end to end through Airflow on the embedded default (local storage, SQLite).

Generates the sample FMR V2 application under ``.demo/fmr``, runs ``backup_weekly`` (a full) with Airflow's
``dag.test()`` (a real DAG run: every task, XCom, asset event and callback, in one process, metadata in SQLite
under ``.demo/airflow``), changes the application's data, runs ``backup_daily`` (an incremental on top of the
weekly), then restores the newest chain into ``.demo/restore``, checks it equals the live data and prints a
summary with the task states and where the reports are.

``--remote`` (``make demo-remote``, with ``--config include/backups.yaml``) first starts loopback stand-ins for
the remote storages (``backups.demo.servers``: moto S3 and an OpenSSH sshd), points the production config's
connections at them, and at the end lists which snapshots landed on every storage; the servers are stopped even
after a failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backups.units import fmt_bytes, fmt_duration

ROOT = Path(__file__).resolve().parents[1]


def _environment(base: Path, config: Path) -> None:
    """Must run before anything imports Airflow (it reads its configuration at import time)."""
    os.environ.update({
        "AIRFLOW_HOME": str(base / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # `make demo` passes the metadata DB `make airflow` uses (PostgreSQL when reachable), so the UI shows these runs
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": os.environ.get("DEMO_AIRFLOW_DB") or f"sqlite:///{base / 'airflow' / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("DEMO_LOG_LEVEL", "WARNING"),
        "FMR_HOME": str(base / "fmr"),
        "BACKUP_ROOT": str(base / "backups"),
        "BACKUP_CONFIG": str(config),
    })
    (base / "airflow").mkdir(parents=True, exist_ok=True)
    from tools.airflow_local import ensure_fernet_key

    # the key `make airflow` then uses too (same home): connections stored encrypted, no "empty cryptography key"
    os.environ.setdefault("AIRFLOW__CORE__FERNET_KEY", ensure_fernet_key(base / "airflow"))


def _quiet_library_warnings() -> None:
    """Warnings a demo user cannot act on: dag.test() runs the execution API in process through Starlette's test
    client, which warns that it is used with httpx (a pairing of two libraries Airflow chose, not ours)."""
    import warnings

    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient` is deprecated")


class _TaskLogFiles(logging.Handler):
    """Task logs where the UI's log reader finds them. ``dag.test()`` runs every task in this process and writes
    no task log file, so the UI says "Log file not found". This handler writes each task's records, as the JSON
    lines Airflow's reader parses, to ``$AIRFLOW_HOME/logs/`` + the default ``[logging] log_filename_template``
    (``dag_id=…/run_id=…/task_id=…/[map_index=…/]attempt=N.log``), switching files on dag.test's own
    "[DAG TEST] running task <ti>" / "end task" records."""

    def __init__(self, folder: Path) -> None:
        super().__init__(logging.INFO)
        self.folder, self.out = folder, None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.msg if isinstance(record.msg, str) else ""
            if msg.startswith("[DAG TEST] running task") and record.args:
                ti = record.args[0] if isinstance(record.args, tuple) else record.args
                self._close()
                path = self.folder / f"dag_id={ti.dag_id}" / f"run_id={ti.run_id}" / f"task_id={ti.task_id}"
                path = (path / f"map_index={ti.map_index}" if ti.map_index >= 0 else path) / f"attempt={ti.try_number}.log"
                path.parent.mkdir(parents=True, exist_ok=True)
                self.out = path.open("a", encoding="utf-8")
            if self.out is not None:
                text = record.getMessage() + (("\n" + logging.Formatter().formatException(record.exc_info))
                                              if record.exc_info else "")
                when = datetime.fromtimestamp(record.created, UTC).isoformat()
                self.out.write(json.dumps({"timestamp": when, "level": record.levelname.lower(), "event": text,
                                           "logger": record.name}) + "\n")
                self.out.flush()
            if msg.startswith("[DAG TEST] end task"):
                self._close()
        except Exception:  # a log file is never worth a failed demo
            self.handleError(record)

    def _close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None


def _ui_logging() -> _TaskLogFiles:
    """INFO records of our tasks into the task log files (``[logging] base_log_folder``, where ``make airflow``'s
    API server reads them); the console keeps showing warnings only."""
    from airflow.configuration import conf

    root = logging.getLogger()
    for h in root.handlers:
        h.setLevel(max(h.level, logging.WARNING))
    root.setLevel(logging.INFO)
    logging.getLogger("airflow.sdk.definitions.dag").setLevel(logging.INFO)  # its "[DAG TEST]" task boundaries
    handler = _TaskLogFiles(Path(conf.get("logging", "base_log_folder")))
    root.addHandler(handler)
    return handler


def _real_start(dr: Any, started: datetime) -> None:
    """``dag.test()`` records the logical date as the run's start (a run for last Sunday would show a duration of
    days in the UI): store when it really started."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(update(DagRun).where(DagRun.id == dr.id).values(start_date=started))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(ROOT / ".demo"), help="working directory (default .demo)")
    ap.add_argument("--config", default=str(ROOT / "include" / "backups.local.yaml"), help="backup config to run")
    ap.add_argument("--remote", action="store_true",
                    help="start loopback S3 (moto) and SFTP (sshd) servers for the config's remote storages")
    args = ap.parse_args(argv)
    _quiet_library_warnings()
    if not args.remote:
        return _run(args)
    from backups.demo.servers import ServerError, remote_servers

    try:
        with remote_servers(Path(args.dir).resolve() / "offsite-sftp") as env:
            os.environ.update(env)
            conn = json.loads(env["AIRFLOW_CONN_BACKUP_SFTP"])
            print(f"remote storages on loopback: S3 {json.loads(env['AIRFLOW_CONN_BACKUP_S3'])['extra']['endpoint_url']}"
                  f" (moto, bucket {env['BACKUP_S3_BUCKET']}), SFTP {conn['login']}@127.0.0.1:{conn['port']} (sshd, "
                  f"{env['BACKUP_SFTP_PATH']}), offsite encryption key: a fresh random one", flush=True)
            return _run(args, _landed)
    except ServerError as exc:
        print(f"DEMO FAILED: {exc}", file=sys.stderr)
        return 2


def _landed(cfg: Any, runs: list[tuple[str, str]]) -> bool:
    """Print which snapshots each storage holds; True when every run landed on every storage of its tier."""
    from backups.catalog import Catalog
    from backups.orchestration.connections import AirflowResolver
    from backups.storage import open_storage

    resolver, ok = AirflowResolver(), True
    print()
    print("where the copies landed:")
    for name in cfg.storages:
        storage = open_storage(cfg, name, resolver, read_only=True)
        ids = [s.id for s in Catalog(storage, cfg.application).ordered()]
        want = [sid for tier, sid in runs if name in cfg.tiers[tier].storages]
        missing = [sid for sid in want if sid not in ids]
        ok = ok and not missing
        print(f"  {name:<8} {', '.join(ids) or '-':<49} {storage.describe()}"
              + (f"   MISSING: {', '.join(missing)}" if missing else ""))
    print("  (the loopback servers stop now: the S3 copies were in moto's memory; the SFTP copies stay in "
          f"{os.environ.get('BACKUP_SFTP_PATH')})")
    return ok


def _run(args: argparse.Namespace, landed: Callable[[Any, list[tuple[str, str]]], bool] | None = None) -> int:
    base = Path(args.dir).resolve()
    shutil.rmtree(base, ignore_errors=True)
    _environment(base, Path(args.config).resolve())

    from backups.catalog import Catalog
    from backups.catalog.manifest import snapshot_id
    from backups.config import load_config
    from backups.demo import fmr
    from backups.demo.run import file_hashes, table_hashes
    from backups.engine.restorer import restore
    from backups.storage import open_storage

    cfg = load_config()
    info = fmr.generate(base / "fmr", seed=7)
    print(f"generated the FMR V2 sample application in {base / 'fmr'} ({fmt_bytes(info.get('bytes', 0))})")
    db_url = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    print(f"preparing Airflow (metadata DB: {db_url.split('://')[0].split('+')[0]} "
          f"{db_url.rsplit('/', 1)[-1]}) ...", flush=True)
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    logging.getLogger("alembic").setLevel(logging.WARNING)
    db.resetdb()
    _ui_logging()
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    if bag.import_errors:
        for path, err in bag.import_errors.items():
            print(f"DAG import error in {path}:\n{err}", file=sys.stderr)
        return 2
    sunday = datetime.now(UTC).replace(hour=1, minute=0, second=0, microsecond=0)
    sunday -= timedelta(days=(sunday.weekday() + 1) % 7 or 7)
    runs = [("backup_weekly", sunday), ("backup_daily", sunday + timedelta(days=1, hours=1))]
    summary = []
    run_ids: list[tuple[str, str]] = []
    for i, (dag_id, when) in enumerate(runs):
        if i:
            changed = fmr.mutate(base / "fmr", seed=100 + i)
            print(f"application activity before {dag_id}: edited {len(changed.get('edited', []))}, "
                  f"deleted {len(changed.get('deleted', []))}, added {len(changed.get('added', []))} file(s); "
                  f"database: {changed.get('db')}")
        print(f"running {dag_id} for logical date {when.isoformat()} ...", flush=True)
        t0, started = time.monotonic(), datetime.now(UTC)
        dr = bag.get_dag(dag_id).test(logical_date=when, run_after=started)
        _real_start(dr, started)
        tis = sorted(dr.get_task_instances(), key=lambda ti: (ti.start_date or datetime.max.replace(tzinfo=UTC), ti.task_id))
        print(f"  {dag_id}: {dr.state} in {fmt_duration(time.monotonic() - t0)}")
        for ti in tis:
            name = ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else "")
            print(f"    {name:<36} {ti.state}")
        summary.append((dag_id, dr.state))
        run_ids.append((dag_id.removeprefix("backup_"), snapshot_id(dag_id.removeprefix("backup_"), when)))
        if dr.state != "success":
            print(f"DEMO FAILED: {dag_id} ended {dr.state}", file=sys.stderr)
            return 1
    storage = open_storage(cfg, cfg.tiers["daily"].storages[0], read_only=True)
    cat = Catalog(storage, cfg.application)
    newest = cat.get("latest")
    target = base / "restore"
    restore(storage, cat, newest, target)
    same_files = file_hashes(target / "app_files") == file_hashes(base / "fmr")
    same_db = table_hashes(target / "app_db" / "app.db") == table_hashes(base / "fmr" / "app.db")
    print()
    print(f"{'snapshot':<26} {'type':<12} {'parent':<26} {'files':>6} {'stored':>6} {'stored size':>11}")
    for s in cat.ordered():
        t = s.doc["totals"]
        print(f"{s.id:<26} {s.type:<12} {s.parent or '-':<26} {t['files']:>6} {t['stored_files']:>6} {fmt_bytes(t['stored_bytes']):>11}")
    print()
    print(f"restored {newest.id} (chain {' -> '.join(newest.chain)}) into {target}")
    print(f"files equal live data:   {'yes' if same_files else 'NO'}")
    print(f"database equals live:    {'yes' if same_db else 'NO'}")
    root = getattr(storage.unwrap(), "root", None) or storage.describe()
    print(f"repository:              {root}")
    print(f"reports:                 {root}/reports/<tier>/<snapshot>.md and .json (e.g. reports/daily/{newest.id}.md)")
    print("browse the runs in the UI: make airflow  (then open http://127.0.0.1:8080)")
    ok = same_files and same_db
    if landed is not None:
        ok = landed(cfg, run_ids) and ok
    ok = _drill(cfg, bag, run_ids) and ok
    ok = _monitoring_summary(bag) and ok
    print("DEMO OK" if ok else "DEMO FAILED")
    return 0 if ok else 1


def _drill(cfg: Any, bag: Any, runs: list[tuple[str, str]]) -> bool:
    """Run ``dr_drill`` with ``dag.test()`` on the tiers just backed up that the drill storage holds; print the
    verdict and the report path. True when the drill passed."""
    from backups.commands.drill import drill_dir, settings

    d = settings(cfg)
    tiers = [t for t, _sid in runs if (not d.tiers or t in d.tiers)
             and (d.storage or cfg.tiers[t].storages[-1]) in cfg.tiers[t].storages]
    print()
    print(f"running dr_drill (disaster-recovery drill of {', '.join(tiers)}) ...", flush=True)
    t0 = time.monotonic()
    dr = bag.get_dag("dr_drill").test(run_conf={"tiers": tiers}, run_after=datetime.now(UTC))
    print(f"  dr_drill: {dr.state} in {fmt_duration(time.monotonic() - t0)}")
    try:
        v = json.loads((drill_dir(cfg) / "latest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        print("  no drill report was written (see the task states above)")
        return False
    for t in v["tiers"]:
        rto, rpo = fmt_duration(t["rto_seconds"]), fmt_duration(t["rpo_seconds"])
        print(f"    {t['tier']:<8} {t['snapshot_id'] or '-':<26} RTO {rto:>7}  RPO {rpo:>6}  "
              f"{sum(c['ok'] for c in t['checks'])}/{len(t['checks'])} checks  {'pass' if t['passed'] else 'FAIL'}")
    for f in v["findings"]:
        print(f"    finding: {f}")
    print(f"drill verdict:           {'PASSED' if v['passed'] else 'FAILED'} (targets RTO {v['targets']['rto_minutes']:g} min, "
          f"RPO {v['targets']['rpo_hours']:g} h)")
    print(f"drill report:            {v['reports'].get('html')} (and .md, .json; latest.* and history.jsonl beside it)")
    return bool(v["passed"]) and dr.state == "success"


def _monitoring_summary(bag: Any) -> bool:
    """Run ``backup_monitoring`` once, print the status table (as ``backupctl status``) and where the reports and
    the Backups page are. True when the monitoring run succeeded."""
    from backups.cli import main as backupctl
    from backups.config import load_config
    from backups.monitoring import status_path
    from backups.monitoring.store import read_json

    print()
    print("running backup_monitoring (status, health checks, reports, dashboard data) ...", flush=True)
    dr = bag.get_dag("backup_monitoring").test(run_after=datetime.now(UTC))
    print(f"  backup_monitoring: {dr.state}")
    print()
    backupctl(["-q", "status"])
    doc = read_json(status_path(load_config()), {}) or {}
    reports = doc.get("reports") or {}
    print()
    print(f"status report:           {reports.get('html') or '-'} (and status.json, history.jsonl)")
    print("dashboard:               make airflow, then open http://127.0.0.1:8080 and choose Browse > Backups "
          "(the monthly tier is red: the demo runs only weekly and daily)")
    return dr.state == "success"


if __name__ == "__main__":
    sys.exit(main())
