"""``make demo`` without Airflow: the engine end to end on the embedded default (local storage, SQLite).

Generates the sample FMR V2 application under ``.demo/fmr``, takes a weekly full, changes data, takes a daily
incremental, changes data again, takes a differential, restores the newest chain into ``.demo/restore``,
checks that it equals the live data (every file and every table row) and prints a summary.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from . import fmr


def file_hashes(root: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under root (to compare a restore with the live data)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not p.is_symlink() and not rel.endswith(".tmp") and rel.split("/")[0] in ("config", "user_data", "logs", "uploads"):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def table_hashes(db: Path) -> dict[str, str]:
    """table -> digest of its rows, of a SQLite database (to compare a restore with the live data)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {n: hashlib.sha256(repr(conn.execute(f'SELECT * FROM "{n}" ORDER BY 1').fetchall()).encode()).hexdigest() for n in names}
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=".demo", help="working directory (default .demo)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    base = Path(args.dir).resolve()
    shutil.rmtree(base, ignore_errors=True)
    home, root = base / "fmr", base / "backups"
    os.environ["FMR_HOME"], os.environ["BACKUP_ROOT"] = str(home), str(root)
    from ..catalog import Catalog
    from ..commands.backup import run_backup
    from ..config import load_config
    from ..engine.checker import verify
    from ..engine.restorer import restore
    from ..storage import open_storage

    cfg = load_config(Path(__file__).resolve().parents[2] / "backups.local.yaml")
    info = fmr.generate(home, seed=7)
    print(f"generated FMR V2 sample application in {home} ({info.get('bytes', 0) / 1e6:.1f} MB)")
    day0 = datetime.now(UTC).replace(hour=1, minute=0, second=0, microsecond=0) - timedelta(days=3)
    steps = [("weekly", None, day0), ("daily", None, day0 + timedelta(days=1, hours=1)),
             ("weekly", "differential", day0 + timedelta(days=2, hours=1))]
    rows = []
    for i, (tier, typ, when) in enumerate(steps):
        if i:
            changed = fmr.mutate(home, seed=100 + i)
            print(f"application activity: {changed}")
        t0 = time.monotonic()
        out = run_backup(cfg, tier, logical_date=when.isoformat(), type_override=typ, progress=False)
        snap = Catalog(open_storage(cfg, "local"), cfg.application).get(out["id"])
        d = snap.doc
        rows.append((snap.id, d["type"], d.get("parent") or "-", d["totals"]["files"], d["totals"]["stored_files"],
                     d["totals"]["stored_bytes"] / 1e6, time.monotonic() - t0))
    storage = open_storage(cfg, "local")
    cat = Catalog(storage, cfg.application)
    newest = cat.get("latest")
    target = base / "restore"
    t0 = time.monotonic()
    restore(storage, cat, newest, target)
    restore_s = time.monotonic() - t0
    same_files = file_hashes(target / "app_files") == file_hashes(home)
    same_db = table_hashes(target / "app_db" / "app.db") == table_hashes(home / "app.db")
    report = verify(storage, cat, read_data=True)
    print()
    print(f"{'snapshot':<26} {'type':<13} {'parent':<26} {'files':>6} {'stored':>6} {'MB':>7} {'secs':>6}")
    for r in rows:
        print(f"{r[0]:<26} {r[1]:<13} {r[2]:<26} {r[3]:>6} {r[4]:>6} {r[5]:>7.2f} {r[6]:>6.2f}")
    print()
    print(f"restored {newest.id} (chain: {' -> '.join(newest.chain)}) into {target} in {restore_s:.2f}s")
    print(f"files equal live data:    {'yes' if same_files else 'NO'}")
    print(f"database equals live:     {'yes' if same_db else 'NO'}")
    print(f"verify --read-data:       {'OK' if report.ok else report.problems}")
    print(f"repository:               {root / 'local'}")
    ok = same_files and same_db and report.ok
    print("DEMO OK" if ok else "DEMO FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
