"""A synthetic "FMR V2" application tree (a fleet manager for robots) for demos, tests and the benchmark.

Plain Python (standard library only; no Airflow). Everything is deterministic for a given seed: the same
seed writes the same file contents and the same database rows.

Layout written under ``home``::

    app.db                       SQLite (WAL mode): robots, missions, telemetry, users, performance_metrics
    config/app.yaml              application config
    config/fleet.json            fleet config (one entry per robot)
    config/features.yaml         feature flags
    user_data/<user>/*.json      small JSON documents (preferences, saved routes, mission reports)
    logs/*.log                   text logs
    uploads/*.bin                incompressible random bytes (maps, firmware images)
    uploads/*.tmp, logs/*.tmp    partial files a backup config excludes with ``**/*.tmp``

Entry points:

* :func:`generate` — a small tree (scale 1.0 ≈ 3 MB, well under a second) for ``make demo`` and tests;
* :func:`generate_big` — the benchmark tree (default ≈ 800 MB, ≈ 20,000 files, ≈ 60 MB database);
* :func:`mutate` — one "day" of application activity (≈ ``fraction`` of everything changes) on either tree;
* :func:`write_while` / :func:`background_writer` — keep inserting telemetry while a backup runs.

Command line: ``python -m backups.demo.fmr generate HOME [--scale S] [--seed N] [--big]`` and
``python -m backups.demo.fmr mutate HOME --seed N [--fraction F]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "DB_NAME",
    "TABLES",
    "background_writer",
    "generate",
    "generate_big",
    "mutate",
    "table_counts",
    "tree_files",
    "write_while",
]

DB_NAME = "app.db"
TABLES = ("robots", "missions", "telemetry", "users", "performance_metrics")
EPOCH = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())  # all generated timestamps start here

SCHEMA = """
CREATE TABLE robots (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    model      TEXT,
    status     TEXT,
    battery    REAL,
    last_seen  TEXT
);
CREATE TABLE missions (
    id          INTEGER PRIMARY KEY,
    robot_id    INTEGER NOT NULL REFERENCES robots(id),
    started_at  TEXT,
    finished_at TEXT,
    status      TEXT,
    distance_m  REAL
);
CREATE TABLE telemetry (
    id        INTEGER PRIMARY KEY,
    robot_id  INTEGER NOT NULL REFERENCES robots(id),
    ts        TEXT NOT NULL,
    x         REAL,
    y         REAL,
    battery   REAL,
    speed     REAL
);
CREATE INDEX telemetry_robot_ts ON telemetry(robot_id, ts);
CREATE TABLE users (
    id          INTEGER PRIMARY KEY,
    email       TEXT NOT NULL UNIQUE,
    name        TEXT,
    role        TEXT,
    created_at  TEXT
);
CREATE TABLE performance_metrics (
    id             INTEGER PRIMARY KEY,
    robot_id       INTEGER NOT NULL REFERENCES robots(id),
    day            TEXT NOT NULL,
    uptime_pct     REAL,
    missions_done  INTEGER,
    avg_speed      REAL,
    UNIQUE (robot_id, day)
);
"""

MODELS = ("AMR-100", "AMR-200", "Tugger-X", "Lift-3", "Scout-S")
STATUSES = ("idle", "charging", "on_mission", "error", "maintenance", "offline")
MISSION_STATUSES = ("done", "done", "done", "done", "aborted", "failed", "running")
ROLES = ("operator", "operator", "operator", "supervisor", "admin", "viewer")
FIRST = ("ada", "alan", "grace", "linus", "barbara", "ken", "margaret", "dennis", "frances", "edsger", "radia", "john")
LAST = ("lovelace", "turing", "hopper", "torvalds", "liskov", "thompson", "hamilton", "ritchie", "allen", "dijkstra")
COMPONENTS = ("fleet.scheduler", "fleet.router", "robot.link", "api.http", "auth", "maps", "charging", "telemetry")
LEVELS = ("INFO",) * 12 + ("DEBUG",) * 5 + ("WARN",) * 2 + ("ERROR",)
MESSAGES = (
    "mission {m} assigned to {r} path_len={f}m",
    "robot {r} heartbeat battery={p}% rssi=-{i}dBm",
    "robot {r} reached waypoint {i} of mission {m}",
    "GET /api/v2/robots/{r}/status 200 {i}ms",
    "POST /api/v2/missions 201 {i}ms user=u{i}",
    "charging dock {i} occupied by {r}",
    "re-planned route for {r}: obstacle at ({f}, {f})",
    "user session refreshed for u{i}",
    "map tile {i} loaded in {f}ms",
    "telemetry batch of {i} points from {r} stored",
)


def _fast(rng: random.Random) -> tuple[Any, Any, Any]:
    """``random``, ``randint`` and ``choice`` built on one ``rng.random()`` call each (3× faster than the stdlib ones).

    Still fully determined by the generator's seed; the bias is irrelevant for synthetic data.
    """
    rand = rng.random

    def randint(a: int, b: int) -> int:
        return a + int(rand() * (b - a + 1))

    def choice(seq: Any) -> Any:
        return seq[int(rand() * len(seq))]

    return rand, randint, choice


def _iso(seconds: int) -> str:
    """UTC ISO-8601 with a ``Z`` suffix, fast (no datetime object per row)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _seconds(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def _connect(db: Path, timeout: float = 30.0) -> sqlite3.Connection:
    conn = sqlite3.connect(db, timeout=timeout, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    return conn


# ----------------------------------------------------------------------------------------------- file content
def _log_lines(rng: random.Random, start: int, nbytes: int, robots: int) -> tuple[str, int]:
    """Text log lines totalling about ``nbytes``; returns the text and the last timestamp used."""
    out: list[str] = []
    size = 0
    ts = start
    rand, randint, choice = _fast(rng)
    while size < nbytes:
        ts += randint(0, 3)
        msg = choice(MESSAGES).format(
            m=randint(1, 99999),
            r=f"rb-{randint(1, robots):04d}",
            f=round(rand() * 500, 1),
            p=randint(5, 100),
            i=randint(1, 999),
        )
        line = f"{_iso(ts)} {choice(LEVELS):<5} [{choice(COMPONENTS)}] {msg}\n"
        out.append(line)
        size += len(line)
    return "".join(out), ts


def _document(rng: random.Random, user: str, kind: str, index: int, items: int, robots: int) -> dict[str, Any]:
    """One user JSON document; ``items`` waypoints / entries drive its size (~40 bytes each)."""
    rand, randint, choice = _fast(rng)
    created = EPOCH + randint(0, 90 * 86400)
    if kind == "preferences":
        return {
            "user": user,
            "kind": kind,
            "theme": choice(("dark", "light", "system")),
            "language": choice(("en", "de", "fr", "ja")),
            "dashboard": [f"widget-{randint(1, 40)}" for _ in range(max(1, items // 10))],
            "favourite_robots": [f"rb-{randint(1, robots):04d}" for _ in range(max(1, items // 20))],
            "updated_at": _iso(created),
        }
    if kind == "route":
        return {
            "user": user,
            "kind": kind,
            "id": f"{user}-route-{index}",
            "name": f"route {index} for {choice(('aisle', 'dock', 'bay', 'zone'))} {randint(1, 60)}",
            "robot": f"rb-{randint(1, robots):04d}",
            "created_at": _iso(created),
            "waypoints": [
                {"x": round(rand() * 200, 2), "y": round(rand() * 120, 2), "wait_s": randint(0, 30)}
                for _ in range(items)
            ],
        }
    return {
        "user": user,
        "kind": "report",
        "id": f"{user}-report-{index}",
        "mission": randint(1, 99999),
        "robot": f"rb-{randint(1, robots):04d}",
        "created_at": _iso(created),
        "events": [
            {"t": _iso(created + i * randint(1, 9)), "event": choice(MESSAGES)[:24], "v": round(rand() * 100, 1)}
            for i in range(items // 2)
        ],
        "summary": {"distance_m": round(rand() * 5000, 1), "ok": rand() > 0.1},
    }


def _dump(doc: dict[str, Any]) -> bytes:
    """Compact JSON (the C encoder; ``indent`` would fall back to the slow pure-Python one)."""
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


def _write(path: Path, data: bytes | str) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return len(data)


def _config_files(home: Path, rng: random.Random, robots: int, application: str = "fmr-v2") -> int:
    total = _write(
        home / "config" / "app.yaml",
        f"""# FMR V2 application configuration
application: {application}
http:
  listen: 0.0.0.0:8080
  workers: 4
database:
  path: app.db
  journal_mode: wal
telemetry:
  retention_days: 90
  batch_size: 500
uploads:
  max_mb: 64
""",
    )
    fleet = {
        "fleet": "main",
        "robots": [
            {"name": f"rb-{i:04d}", "model": rng.choice(MODELS), "home_dock": f"dock-{rng.randint(1, 12)}"}
            for i in range(1, robots + 1)
        ],
    }
    total += _write(home / "config" / "fleet.json", _dump(fleet))
    flags = "".join(f"  {name}: {str(rng.random() > 0.5).lower()}\n" for name in ("auto_charge", "replan", "beta_ui"))
    total += _write(home / "config" / "features.yaml", "flags:\n" + flags)
    return total


def _tmp_files(home: Path, rng: random.Random) -> int:
    total = _write(home / "uploads" / "upload-in-progress.tmp", rng.randbytes(4096))
    total += _write(home / "logs" / "rotate.tmp", "partial rotation\n")
    return total


# ----------------------------------------------------------------------------------------------- database
def _create_db(db: Path) -> sqlite3.Connection:
    if db.exists():
        raise FileExistsError(f"{db} already exists; generate into an empty directory")
    conn = _connect(db)
    conn.execute("PRAGMA journal_mode = wal")
    conn.executescript(SCHEMA)
    return conn


def _fill_static(
    conn: sqlite3.Connection, rng: random.Random, robots: int, users: int, missions: int, days: int
) -> None:
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO robots (id, name, model, status, battery, last_seen) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (
                i,
                f"rb-{i:04d}",
                rng.choice(MODELS),
                rng.choice(STATUSES),
                round(rng.random() * 100, 1),
                _iso(EPOCH + days * 86400),
            )
            for i in range(1, robots + 1)
        ],
    )
    conn.executemany(
        "INSERT INTO users (id, email, name, role, created_at) VALUES (?, ?, ?, ?, ?)",
        [
            (
                i,
                f"user{i:05d}@fmr.example",
                f"{rng.choice(FIRST).title()} {rng.choice(LAST).title()}",
                rng.choice(ROLES),
                _iso(EPOCH + rng.randint(0, days * 86400)),
            )
            for i in range(1, users + 1)
        ],
    )
    rows = []
    for i in range(1, missions + 1):
        start = EPOCH + rng.randint(0, days * 86400)
        status = rng.choice(MISSION_STATUSES)
        end = None if status == "running" else _iso(start + rng.randint(60, 7200))
        rows.append((i, rng.randint(1, robots), _iso(start), end, status, round(rng.random() * 3000, 1)))
    conn.executemany(
        "INSERT INTO missions (id, robot_id, started_at, finished_at, status, distance_m) VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.executemany(
        "INSERT INTO performance_metrics (robot_id, day, uptime_pct, missions_done, avg_speed) VALUES (?, ?, ?, ?, ?)",
        [
            (
                r,
                _iso(EPOCH + d * 86400)[:10],
                round(80 + rng.random() * 20, 2),
                rng.randint(0, 40),
                round(rng.random() * 2, 3),
            )
            for r in range(1, robots + 1)
            for d in range(days)
        ],
    )
    conn.execute("COMMIT")


def _telemetry_rows(rng: random.Random, first_id: int, count: int, robots: int, start: int) -> Iterator[tuple]:
    rand, randint, _ = _fast(rng)
    ts = start
    for i in range(first_id, first_id + count):
        ts += randint(0, 2)
        yield (
            i,
            randint(1, robots),
            _iso(ts),
            round(rand() * 200, 2),
            round(rand() * 120, 2),
            round(rand() * 100, 1),
            round(rand() * 2, 2),
        )


_INSERT_TELEMETRY = "INSERT INTO telemetry (id, robot_id, ts, x, y, battery, speed) VALUES (?, ?, ?, ?, ?, ?, ?)"


def _insert_telemetry(conn: sqlite3.Connection, rng: random.Random, count: int, robots: int) -> int:
    """Append ``count`` telemetry rows after the newest one (ids and timestamps continue); returns rows added."""
    last = conn.execute("SELECT id, ts FROM telemetry ORDER BY id DESC LIMIT 1").fetchone()  # ts grows with id
    last_id, last_ts = last if last else (0, None)
    start = _seconds(last_ts) if last_ts else EPOCH
    conn.executemany(_INSERT_TELEMETRY, _telemetry_rows(rng, (last_id or 0) + 1, count, robots, start))
    return count


def _db_size(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    return pages * conn.execute("PRAGMA page_size").fetchone()[0]


def table_counts(db: Path) -> dict[str, int]:
    """Row count of each FMR table.

    A plain connection on purpose: a ``mode=ro`` one cannot checkpoint, so it would leave ``-wal`` / ``-shm`` files
    behind in the tree; this one only reads, and the last connection to close removes them.
    """
    conn = _connect(Path(db))
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        conn.close()


def tree_files(home: Path) -> dict[str, int]:
    """Relative path → size of every regular file under ``home`` (sorted; SQLite -wal/-shm files excluded)."""
    out = {}
    for p in sorted(home.rglob("*")):
        if p.is_file() and not p.name.endswith(("-wal", "-shm", "-journal")):
            out[p.relative_to(home).as_posix()] = p.stat().st_size
    return out


def _summary(home: Path, seed: int, started: float) -> dict[str, Any]:
    files = tree_files(home)
    by_dir: dict[str, dict[str, int]] = {}
    for rel, size in files.items():
        top = rel.split("/", 1)[0] if "/" in rel else "."
        d = by_dir.setdefault(top, {"files": 0, "bytes": 0})
        d["files"] += 1
        d["bytes"] += size
    return {
        "home": str(home),
        "seed": seed,
        "files": len(files),
        "bytes": sum(files.values()),
        "db_bytes": files.get(DB_NAME, 0),
        "tables": table_counts(home / DB_NAME),
        "by_dir": by_dir,
        "tmp_files": sorted(r for r in files if r.endswith(".tmp")),
        "seconds": round(time.monotonic() - started, 3),
    }


# ----------------------------------------------------------------------------------------------- generate
def generate(home: Path, *, scale: float = 1.0, seed: int = 7) -> dict[str, Any]:
    """Write a small FMR V2 tree under ``home`` (scale 1.0 ≈ 3 MB, ≈ 200 files, < 1 s). Returns a summary."""
    if scale <= 0:
        raise ValueError("scale must be > 0")
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    robots = max(3, round(25 * scale))
    users = max(2, round(40 * scale))
    missions = max(5, round(800 * scale))
    telemetry = max(50, round(20_000 * scale))
    days = 30
    started = time.monotonic()

    conn = _create_db(home / DB_NAME)
    try:
        _fill_static(conn, rng, robots, users, missions, days)
        conn.execute("BEGIN")
        _insert_telemetry(conn, rng, telemetry, robots)
        conn.execute("COMMIT")
    finally:
        conn.close()

    _config_files(home, rng, robots)
    for u in range(1, users + 1):
        user = f"user{u:05d}"
        _write(
            home / "user_data" / user / "preferences.json", _dump(_document(rng, user, "preferences", 0, 20, robots))
        )
        for k in range(rng.randint(1, 3)):
            kind = "route" if k % 2 == 0 else "report"
            _write(
                home / "user_data" / user / f"{kind}-{k:03d}.json",
                _dump(_document(rng, user, kind, k, rng.randint(5, 40), robots)),
            )
    for name in ("fmr-api.log", "fmr-scheduler.log", "fmr-robot-link.log"):
        text, _ = _log_lines(rng, EPOCH, max(2048, round(120_000 * scale)), robots)
        _write(home / "logs" / name, text)
    for name in ("map-warehouse-a.bin", "map-warehouse-b.bin", "firmware-amr-2.4.1.bin"):
        _write(home / "uploads" / name, rng.randbytes(max(1024, round(256 * 1024 * scale))))
    _tmp_files(home, rng)
    return _summary(home, seed, started)


def generate_big(
    home: Path,
    *,
    target_bytes: float = 800e6,
    files: int = 20_000,
    db_bytes: float = 60e6,
    seed: int = 7,
) -> dict[str, Any]:
    """Write the benchmark tree: ≈ ``target_bytes`` in ≈ ``files`` files, with a ≈ ``db_bytes`` SQLite database.

    Byte budget: the database, ~10 % text logs of 2 MB each, ~25 % small JSON documents (most of the files),
    and the rest incompressible 5 MB uploads. Counts shrink with the budget, never below one of each.
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    started = time.monotonic()
    target_bytes, db_bytes = float(target_bytes), float(db_bytes)

    log_size, upload_size = 2_000_000, 5_000_000
    n_logs = max(1, round(target_bytes * 0.10 / log_size))
    json_budget = target_bytes * 0.25
    n_uploads = max(1, round((target_bytes - db_bytes - n_logs * log_size - json_budget) / upload_size))
    n_docs = max(10, files - n_logs - n_uploads - 3 - 2 - 1)  # config files, tmp files, app.db
    doc_items = max(2, round(json_budget / n_docs / 40))  # first guess: ~40 bytes of JSON per item
    robots = 200
    users = max(2, n_docs // 10)
    days = 90

    conn = _create_db(home / DB_NAME)
    try:
        conn.execute("PRAGMA synchronous = off")
        _fill_static(conn, rng, robots, users, max(100, users * 5), days)
        batch = 50_000
        while _db_size(conn) < db_bytes:
            conn.execute("BEGIN")
            _insert_telemetry(conn, rng, batch, robots)
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()

    _config_files(home, rng, robots)
    written = sized_bytes = sized_items = 0
    for d in range(n_docs):
        u = d % users + 1
        user = f"user{u:05d}"
        k = d // users
        kind = "preferences" if k == 0 else ("route" if k % 2 else "report")
        name = "preferences.json" if k == 0 else f"{kind}-{k:03d}.json"
        if sized_items and d % 64 == 0:  # steer the average document size towards the remaining budget
            doc_items = max(2, round((json_budget - written) / (n_docs - d) / (sized_bytes / sized_items)))
        items = rng.randint(max(1, doc_items // 2), doc_items * 3 // 2 + 1)
        size = _write(home / "user_data" / user / name, _dump(_document(rng, user, kind, k, items, robots)))
        written += size
        if kind != "preferences":
            sized_bytes += size
            sized_items += items
    ts = EPOCH
    for i in range(n_logs):
        text, ts = _log_lines(rng, ts, log_size, robots)
        _write(home / "logs" / f"fmr-{COMPONENTS[i % len(COMPONENTS)].replace('.', '-')}-{i:03d}.log", text)
    for i in range(n_uploads):
        kind = "map" if i % 3 else "firmware"
        _write(home / "uploads" / f"{kind}-{i:04d}.bin", rng.randbytes(upload_size))
    _tmp_files(home, rng)
    return _summary(home, seed, started)


# ----------------------------------------------------------------------------------------------- mutate
def mutate(home: Path, *, seed: int, fraction: float = 0.01) -> dict[str, Any]:
    """Simulate application activity on a generated tree; ≈ ``fraction`` of documents and DB rows change.

    Edits JSON documents, appends to logs, deletes a few documents, adds one upload, inserts telemetry,
    updates robot statuses and finishes running missions. Returns exactly what changed (relative paths, ids).
    """
    if not 0 < fraction <= 1:
        raise ValueError("fraction must be in (0, 1]")
    home = Path(home)
    rng = random.Random(f"mutate-{seed}")
    docs = sorted(p.relative_to(home).as_posix() for p in (home / "user_data").rglob("*.json"))
    logs = sorted(p.relative_to(home).as_posix() for p in (home / "logs").glob("*.log"))
    uploads = sorted((home / "uploads").glob("*.bin"))

    n_edit = min(len(docs), max(1, round(len(docs) * fraction)))
    n_delete = min(len(docs) - n_edit, max(1, round(len(docs) * fraction / 4)))
    chosen = rng.sample(docs, n_edit + n_delete)
    edited, deleted = sorted(chosen[:n_edit]), sorted(chosen[n_edit:])
    stamp = _iso(EPOCH + 120 * 86400 + seed)
    for rel in edited:
        path = home / rel
        doc = json.loads(path.read_bytes())
        doc["updated_at"] = stamp
        doc["revision"] = doc.get("revision", 0) + 1
        if isinstance(doc.get("waypoints"), list):
            doc["waypoints"].append({"x": round(rng.random() * 200, 2), "y": round(rng.random() * 120, 2), "wait_s": 0})
        path.write_bytes(_dump(doc))
    for rel in deleted:
        (home / rel).unlink()

    appended: dict[str, int] = {}
    if logs:
        log_bytes = sum((home / r).stat().st_size for r in logs)
        targets = sorted(rng.sample(logs, max(1, math.ceil(len(logs) * 0.1))))
        each = max(200, round(log_bytes * fraction / len(targets)))
        for rel in targets:
            text, _ = _log_lines(rng, EPOCH + 120 * 86400 + seed, each, 200)
            with open(home / rel, "a", encoding="utf-8") as fh:
                fh.write(text)
            appended[rel] = len(text.encode())

    size = sorted(p.stat().st_size for p in uploads)[len(uploads) // 2] if uploads else 256 * 1024
    new = home / "uploads" / f"upload-{seed}.bin"
    n = 1
    while new.exists():
        new = home / "uploads" / f"upload-{seed}-{n}.bin"
        n += 1
    _write(new, rng.randbytes(size))
    added = [new.relative_to(home).as_posix()]

    db_changes: dict[str, Any] = {}
    db = home / DB_NAME
    if db.exists():
        conn = _connect(db)
        try:
            robots = conn.execute("SELECT count(*) FROM robots").fetchone()[0]
            rows = conn.execute("SELECT count(*) FROM telemetry").fetchone()[0]
            conn.execute("BEGIN IMMEDIATE")
            inserted = _insert_telemetry(conn, rng, max(10, round(rows * fraction)), robots)
            robot_ids = sorted(rng.sample(range(1, robots + 1), max(1, min(robots, round(robots * fraction * 10)))))
            conn.executemany(
                "UPDATE robots SET status = ?, battery = ?, last_seen = ? WHERE id = ?",
                [(rng.choice(STATUSES), round(rng.random() * 100, 1), stamp, r) for r in robot_ids],
            )
            running = [r[0] for r in conn.execute("SELECT id FROM missions WHERE status = 'running' ORDER BY id")]
            total_missions = conn.execute("SELECT count(*) FROM missions").fetchone()[0]
            finished = sorted(rng.sample(running, min(len(running), max(1, round(total_missions * fraction)))))
            conn.executemany(
                "UPDATE missions SET status = 'done', finished_at = ? WHERE id = ?", [(stamp, m) for m in finished]
            )
            conn.execute("COMMIT")
        finally:
            conn.close()
        db_changes = {"telemetry_inserted": inserted, "robots_updated": robot_ids, "missions_finished": finished}
    return {
        "seed": seed,
        "edited": edited,
        "deleted": deleted,
        "appended": appended,
        "added": added,
        "db": db_changes,
    }


# ----------------------------------------------------------------------------------------------- live writer
def write_while(home: Path, stop_event: threading.Event, *, rows_per_tx: int = 20, pause: float = 0.002) -> int:
    """Insert telemetry into ``home/app.db`` in small transactions until ``stop_event`` is set.

    Uses its own connection (safe to run in a thread or a separate process). Returns the rows committed.
    """
    rng = random.Random()
    conn = _connect(Path(home) / DB_NAME)
    written = 0
    try:
        robots = conn.execute("SELECT count(*) FROM robots").fetchone()[0] or 1
        while not stop_event.is_set():
            try:
                conn.execute("BEGIN IMMEDIATE")
                written += _insert_telemetry(conn, rng, rows_per_tx, robots)
                conn.execute("COMMIT")
            except sqlite3.OperationalError:  # locked past the busy timeout: back off and retry
                with contextlib.suppress(sqlite3.OperationalError):
                    conn.execute("ROLLBACK")
                time.sleep(0.05)
                continue
            if pause:
                stop_event.wait(pause)
    finally:
        conn.close()
    return written


@contextlib.contextmanager
def background_writer(home: Path, **kwargs: Any) -> Iterator[dict[str, int]]:
    """Run :func:`write_while` in a thread for the duration of the ``with`` block.

    Yields a dict whose ``"rows"`` key holds the committed row count once the block exits.
    """
    stop = threading.Event()
    result = {"rows": 0}

    def run() -> None:
        result["rows"] = write_while(home, stop, **kwargs)

    thread = threading.Thread(target=run, name="fmr-writer", daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join(timeout=60)


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backups.demo.fmr", description="Generate or mutate an FMR V2 demo tree."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write a new tree")
    g.add_argument("home", type=Path)
    g.add_argument("--scale", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--big", action="store_true", help="benchmark tree: 800 MB × scale, 20,000 × scale files")
    m = sub.add_parser("mutate", help="simulate a day of activity")
    m.add_argument("home", type=Path)
    m.add_argument("--seed", type=int, required=True)
    m.add_argument("--fraction", type=float, default=0.01)
    args = parser.parse_args(argv)
    if args.cmd == "generate" and args.big:
        out = generate_big(
            args.home,
            target_bytes=800e6 * args.scale,
            files=round(20_000 * args.scale),
            db_bytes=60e6 * args.scale,
            seed=args.seed,
        )
    elif args.cmd == "generate":
        out = generate(args.home, scale=args.scale, seed=args.seed)
    else:
        out = mutate(args.home, seed=args.seed, fraction=args.fraction)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
