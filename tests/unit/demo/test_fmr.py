"""The FMR V2 sample application generator: shape, determinism, mutation and the live writer."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from backups.demo import fmr


def _digest(home: Path) -> dict[str, str]:
    """Content hash of every file except the database (compared by its rows instead)."""
    return {
        rel: hashlib.sha256((home / rel).read_bytes()).hexdigest() for rel in fmr.tree_files(home) if rel != fmr.DB_NAME
    }


def _rows(db: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(db)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in fmr.TABLES}
    finally:
        conn.close()


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict]:
    home = tmp_path / "fmr"
    return home, fmr.generate(home, scale=0.5, seed=3)


def test_generate_writes_the_documented_layout(tree):
    home, summary = tree
    files = fmr.tree_files(home)
    assert summary["files"] == len(files)
    assert summary["bytes"] == sum(files.values())
    assert {"config/app.yaml", "config/fleet.json", "app.db"} <= set(files)
    for top, suffix in (("user_data", ".json"), ("logs", ".log"), ("uploads", ".bin")):
        assert any(r.startswith(f"{top}/") and r.endswith(suffix) for r in files), top
    assert summary["tmp_files"] and all(r.endswith(".tmp") for r in summary["tmp_files"])
    for rel in files:
        if rel.endswith(".json"):
            json.loads((home / rel).read_bytes())
    # user documents live one directory per user
    assert all(len(r.split("/")) == 3 for r in files if r.startswith("user_data/"))


def test_tables_exist_with_rows_and_constraints(tree):
    home, summary = tree
    counts = fmr.table_counts(home / fmr.DB_NAME)
    assert set(counts) == set(fmr.TABLES)
    assert all(n > 0 for n in counts.values()), counts
    assert summary["tables"] == counts
    conn = sqlite3.connect(home / fmr.DB_NAME)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO robots (name) VALUES ('rb-0001')")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO users (email) VALUES (NULL)")
        orphans = conn.execute("SELECT count(*) FROM missions WHERE robot_id NOT IN (SELECT id FROM robots)").fetchone()
        assert orphans == (0,)
    finally:
        conn.close()


def test_scale_one_is_small(tmp_path):
    summary = fmr.generate(tmp_path / "fmr")  # its speed is the benchmark's business, not a timed test's
    assert 1_000_000 < summary["bytes"] < 8_000_000


def test_uploads_are_incompressible_and_logs_are_not(tree):
    zlib = pytest.importorskip("zlib")
    home, _ = tree
    upload = next((home / "uploads").glob("*.bin")).read_bytes()
    log = next((home / "logs").glob("*.log")).read_bytes()
    assert len(zlib.compress(upload)) > 0.99 * len(upload)
    assert len(zlib.compress(log)) < 0.5 * len(log)


def test_same_seed_same_tree_other_seed_other_tree(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    fmr.generate(a, scale=0.3, seed=11)
    fmr.generate(b, scale=0.3, seed=11)
    fmr.generate(c, scale=0.3, seed=12)
    assert _digest(a) == _digest(b)
    assert _rows(a / fmr.DB_NAME) == _rows(b / fmr.DB_NAME)
    assert _digest(a) != _digest(c)
    assert _rows(a / fmr.DB_NAME) != _rows(c / fmr.DB_NAME)


def test_generate_refuses_an_existing_database(tree):
    home, _ = tree
    with pytest.raises(FileExistsError):
        fmr.generate(home)


def test_mutate_changes_exactly_what_it_reports(tree):
    home, _ = tree
    before_files = _digest(home)
    before_rows = _rows(home / fmr.DB_NAME)
    changes = fmr.mutate(home, seed=5, fraction=0.05)
    after_files = _digest(home)
    after_rows = _rows(home / fmr.DB_NAME)

    assert changes["edited"] and changes["deleted"] and changes["appended"] and len(changes["added"]) == 1
    for rel in changes["deleted"]:
        assert rel in before_files and rel not in after_files
    for rel in changes["added"]:
        assert rel not in before_files and rel in after_files
    changed = {r for r in before_files.keys() & after_files.keys() if before_files[r] != after_files[r]}
    assert changed == set(changes["edited"]) | set(changes["appended"])
    for rel, n in changes["appended"].items():
        assert (home / rel).stat().st_size >= n
    for rel in changes["edited"]:
        assert json.loads((home / rel).read_bytes())["revision"] == 1

    db = changes["db"]
    assert len(after_rows["telemetry"]) == len(before_rows["telemetry"]) + db["telemetry_inserted"]
    assert after_rows["telemetry"][: len(before_rows["telemetry"])] == before_rows["telemetry"]
    changed_robots = [a[0] for a, b in zip(after_rows["robots"], before_rows["robots"], strict=True) if a != b]
    assert set(changed_robots) <= set(db["robots_updated"]) and db["robots_updated"]
    for mission in after_rows["missions"]:
        if mission[0] in db["missions_finished"]:
            assert mission[4] == "done"
    assert after_rows["users"] == before_rows["users"]


def test_mutate_is_deterministic_for_a_seed(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for home in (a, b):
        fmr.generate(home, scale=0.3, seed=1)
    assert fmr.mutate(a, seed=9) == fmr.mutate(b, seed=9)
    assert _digest(a) == _digest(b)
    assert _rows(a / fmr.DB_NAME) == _rows(b / fmr.DB_NAME)


def test_mutate_twice_with_the_same_seed_adds_a_second_upload(tree):
    home, _ = tree
    first = fmr.mutate(home, seed=2)
    second = fmr.mutate(home, seed=2)
    assert first["added"] != second["added"]


def test_big_mode_hits_its_budget_at_small_size(tmp_path):
    summary = fmr.generate_big(tmp_path / "big", target_bytes=20e6, files=400, db_bytes=2e6, seed=1)
    assert 350 <= summary["files"] <= 450
    assert 15e6 < summary["bytes"] < 25e6
    assert summary["db_bytes"] >= 2e6
    assert all(n > 0 for n in summary["tables"].values())
    changes = fmr.mutate(tmp_path / "big", seed=1)
    assert changes["edited"] and changes["db"]["telemetry_inserted"] >= 10


def test_write_while_keeps_committing_until_stopped(tree):
    home, _ = tree
    before = fmr.table_counts(home / fmr.DB_NAME)["telemetry"]
    stop = threading.Event()
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.setdefault("rows", fmr.write_while(home, stop)))
    thread.start()
    deadline = time.monotonic() + 10
    # a concurrent reader (what a backup does) sees the count grow while the writer runs
    while fmr.table_counts(home / fmr.DB_NAME)["telemetry"] == before and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert result["rows"] > 0
    assert fmr.table_counts(home / fmr.DB_NAME)["telemetry"] == before + result["rows"]


def test_background_writer_context_manager(tree):
    home, _ = tree
    before = fmr.table_counts(home / fmr.DB_NAME)["telemetry"]
    with fmr.background_writer(home) as writer:
        time.sleep(0.2)
        src = sqlite3.connect(home / fmr.DB_NAME)
        dst = sqlite3.connect(":memory:")
        src.backup(dst)  # an online backup while the writer commits
        src.close()
        assert dst.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert dst.execute("SELECT count(*) FROM telemetry").fetchone()[0] >= before
    assert writer["rows"] > 0
    assert fmr.table_counts(home / fmr.DB_NAME)["telemetry"] == before + writer["rows"]


def test_command_line(tmp_path, capsys):
    assert fmr.main(["generate", str(tmp_path / "x"), "--scale", "0.2", "--seed", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 4
    assert fmr.main(["mutate", str(tmp_path / "x"), "--seed", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["added"]
