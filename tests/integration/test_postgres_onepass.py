"""PostgreSQL in one pass (real server on 127.0.0.1:5432): each table file of the dump is hashed, compressed and
row-counted while pg_dump writes it, and never read again.

* row counts are exact — equal to ``count(*)`` — for values holding newlines, carriage returns, tabs, backslashes
  and ``\\.``, empty strings and NULLs, an empty table, a table without columns, a 12 MB row, inheritance and
  partitions (``count(*)`` of a parent counts its children);
* with a writer committing into two tables (one row in each per transaction) during the backup, the recorded
  counts are equal (one instant) and equal to the rows of the dump once loaded;
* the archive stays a plain ``.tar.zst`` (``zstd -dc | tar -x`` then ``pg_restore``), its frame table valid, a
  partial restore of ``dump/toc.dat`` reads it; an unchanged table file is referenced from the parent;
* without inotify (or when following fails) the dump is read after pg_dump, as before: same counts, same bytes;
* a data file without pg_dump's end marker is not trusted for its count (``count(*)`` instead).
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from backups.catalog import Catalog
from backups.config import load_config
from backups.engine.restorer import load_frames, restore
from backups.sources import postgres as pgsrc
from backups.storage import LocalStorage
from tests.helpers import run_backup, write_config

TRICKY = ["a\nb", "c\r\nd", "tab\there", "back\\slash", "\\.", "\\", "", None, "\n", "x\\.\ny", "end\\"]


def _seed(dsn: str) -> None:
    with psycopg.connect(dsn) as c:
        c.execute("CREATE TABLE tricky (id serial PRIMARY KEY, t text, b bytea)")
        for i, v in enumerate(TRICKY * 30):
            c.execute("INSERT INTO tricky (t, b) VALUES (%s, %s)", (v, None if v is None else (v * (i % 3)).encode()))
        c.execute("CREATE TABLE empty_one (id int PRIMARY KEY)")
        c.execute("CREATE TABLE no_columns ()")
        c.execute("INSERT INTO no_columns SELECT FROM generate_series(1, 7)")
        c.execute("CREATE TABLE huge (id int PRIMARY KEY, blob text)")
        c.execute("INSERT INTO huge VALUES (1, repeat(E'line\\n\\t\\\\', 3000000)), (2, 'small')")
        c.execute("CREATE TABLE parent (id int, note text)")
        c.execute("CREATE TABLE child (extra int) INHERITS (parent)")
        c.execute("INSERT INTO parent SELECT g, 'p' FROM generate_series(1, 10) g")
        c.execute("INSERT INTO child SELECT g, E'c\\n', g FROM generate_series(1, 25) g")
        c.execute("CREATE TABLE measure (id int, at date) PARTITION BY RANGE (at)")
        c.execute("CREATE TABLE measure_a PARTITION OF measure FOR VALUES FROM ('2020-01-01') TO ('2021-01-01')")
        c.execute("CREATE TABLE measure_b PARTITION OF measure FOR VALUES FROM ('2021-01-01') TO ('2022-01-01')")
        c.execute("INSERT INTO measure SELECT g, DATE '2020-01-01' + g FROM generate_series(1, 600) g")
        c.execute("CREATE SCHEMA other")
        c.execute('CREATE TABLE other."Mixed Case" (v text)')
        c.execute('INSERT INTO other."Mixed Case" VALUES (E\'q\\nr\'), (NULL)')


def _counts(dsn: str, tables: list[str]) -> dict[str, int]:
    with psycopg.connect(dsn) as c:
        return {t: c.execute(f"SELECT count(*) FROM {pgsrc.exact_table_pattern(t)}").fetchone()[0] for t in tables}


def _cfg(app, dsn: str, extra: str = ""):
    path = write_config(app["tmp"] / "pg.yaml", app["home"], app["root"],
                        extra_sources=f'  db: {{type: postgres, dsn: "{dsn}", jobs: 2{extra}}}\n', tier_sources="db")
    return load_config(path)


def test_row_counts_exact_and_archive_restorable_by_hand(app, pg_db):
    dsn = pg_db["dsn"]
    _seed(dsn)
    full, _ = run_backup(_cfg(app, dsn), "weekly", logical_date="2026-02-01T01:00:00Z")
    rec = full.sources["db"]
    tables = rec["details"]["tables"]
    assert set(tables) == {"tricky", "empty_one", "no_columns", "huge", "parent", "child", "measure", "measure_a",
                           "measure_b", "other.Mixed Case"}
    expected = _counts(dsn, list(tables))
    assert {t: v["rows"] for t, v in tables.items()} == expected
    assert expected["parent"] == 35 and expected["measure"] == 600 and expected["tricky"] == len(TRICKY) * 30

    # the by-hand restore: zstd -dc | tar -x, then pg_restore into a scratch database
    storage = LocalStorage(app["root"] / "local")
    archive = app["root"] / "local" / rec["objects"]["archive"]["key"]
    out = app["tmp"] / "byhand"
    out.mkdir()
    subprocess.run(f"zstd -dc '{archive}' | tar -x -C '{out}'", shell=True, check=True)
    index = {p: e for p, e in _index(storage, rec)}
    for p, e in index.items():
        if e.type == "f":
            assert hashlib.sha256((out / p).read_bytes()).hexdigest() == e.sha256, p
    target = pg_db["make"]("byhand")
    subprocess.run([pgsrc.find_tool("pg_restore"), "--no-owner", "-d", target, str(out / "dump")], check=True,
                   capture_output=True)
    assert _counts(target, list(tables)) == expected
    with psycopg.connect(dsn) as a, psycopg.connect(target) as b:
        q = "SELECT id, t, b FROM tricky ORDER BY id"
        assert a.execute(q).fetchall() == b.execute(q).fetchall()
        q = "SELECT md5(blob) FROM huge ORDER BY id"
        assert a.execute(q).fetchall() == b.execute(q).fetchall()

    # the frame table is valid and a partial restore reads only what it wants
    frames = load_frames(storage, rec["objects"]["archive"])
    assert frames is not None and len(frames) == rec["objects"]["archive"]["frames"]
    cat = Catalog(storage, "fmr-test")
    restore(storage, cat, cat.get(full.id), app["tmp"] / "part", sources=["db"], includes=["dump/toc.dat"])
    assert (app["tmp"] / "part" / "db" / "dump" / "toc.dat").read_bytes() == (out / "dump" / "toc.dat").read_bytes()

    # nothing changed: every table file is referenced from the parent (only toc.dat, with its timestamp, is new)
    inc, _ = run_backup(_cfg(app, dsn), "daily", logical_date="2026-02-02T02:00:00Z")
    assert inc.sources["db"]["stored_files"] <= 1
    assert {t: v["rows"] for t, v in inc.sources["db"]["details"]["tables"].items()} == expected


def _index(storage, rec):
    from backups.repository.index import iter_index

    return list(iter_index(storage, rec["objects"]["index"]))


def test_counts_describe_the_dump_instant_under_a_concurrent_writer(app, pg_db):
    dsn = pg_db["dsn"]
    with psycopg.connect(dsn) as c:
        c.execute("CREATE TABLE orders (id bigserial PRIMARY KEY, note text)")
        c.execute("CREATE TABLE lines (id bigserial PRIMARY KEY, note text)")
        c.execute("INSERT INTO orders (note) SELECT md5(g::text) FROM generate_series(1, 200000) g")
        c.execute("INSERT INTO lines (note) SELECT md5(g::text) FROM generate_series(1, 200000) g")
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.is_set():
                with c.transaction():
                    c.execute("INSERT INTO orders (note) VALUES (E'w\\nx')")
                    c.execute("INSERT INTO lines (note) VALUES ('w\\y')")
                written[0] += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.3)
        snap, _ = run_backup(_cfg(app, dsn), "weekly", logical_date="2026-02-01T01:00:00Z")
    finally:
        stop.set()
        t.join()
    rows = {k: v["rows"] for k, v in snap.sources["db"]["details"]["tables"].items()}
    assert written[0] > 0
    assert rows["orders"] == rows["lines"] and 200000 <= rows["orders"] < 200000 + written[0] + 1
    assert _counts(dsn, ["orders"])["orders"] > rows["orders"]  # the writer went on after the snapshot
    storage = LocalStorage(app["root"] / "local")
    cat = Catalog(storage, "fmr-test")
    target = pg_db["make"]("instant")
    restore(storage, cat, cat.get(snap.id), app["tmp"] / "r", sources=["db"], pg_target=target)
    assert _counts(target, ["orders", "lines"]) == {"orders": rows["orders"], "lines": rows["lines"]}


def test_without_inotify_the_dump_is_read_after_pg_dump(app, pg_db, monkeypatch, tmp_path):
    dsn = pg_db["dsn"]
    _seed(dsn)
    src = pgsrc.PostgresSource("db", dsn, jobs=2)

    def digests_of(staging: Path, every: bool = True) -> tuple[dict, dict]:
        """(row counts, {path: digest}) of a dump, checking that a followed file is gone from staging and its
        spool decompresses to bytes of its SHA-256; ``files`` gets the SHA-256 of every file read from disk."""
        import zstandard

        with src.prepare(staging) as prep:
            entries = list(prep.entries)
            assert [e.path for e in entries] == sorted((e.path for e in entries), key=lambda p: p.split("/"))
            got = {e.path: e.digest for e in entries if getattr(e, "digest", None) is not None}
            for e in entries:
                if e.path in got:
                    d = got[e.path]
                    assert not Path(e.fs_path).exists() and d.size == e.size
                    assert hashlib.sha256(zstandard.ZstdDecompressor().stream_reader(
                        d.spool, read_across_frames=True).read()).hexdigest() == d.sha256
                    shas.setdefault(e.path, set()).add(d.sha256)
                elif e.path != "dump/toc.dat":
                    shas.setdefault(e.path, set()).add(hashlib.sha256(Path(e.fs_path).read_bytes()).hexdigest())
            if got and every:  # every table's data file (pg_restore -l: TABLE DATA) was read while pg_dump wrote it
                assert set(got) == {f"dump/{n}" for n in pgsrc.dump_data_files(staging / "dump")}
            return {k: v["rows"] for k, v in prep.details["tables"].items()}, got

    shas: dict[str, set[str]] = {}  # path -> SHA-256 seen, followed or read from disk: the same bytes each time

    (tmp_path / "a").mkdir()
    counts, followed = digests_of(tmp_path / "a")
    assert counts == _counts(dsn, list(counts))
    assert len(followed) == 9  # ten tables, one of them partitioned (its rows are in its partitions' files)
    assert not any(d.spool._rolled for d in followed.values())  # small compressed tables stay in memory

    monkeypatch.setattr(pgsrc, "_SPOOLS_MEMORY", 0)  # memory for none: every complete table waits in staging
    (tmp_path / "a2").mkdir()
    counts_a2, followed_a2 = digests_of(tmp_path / "a2")
    assert counts_a2 == counts and len(followed_a2) == 9 and all(d.spool._rolled for d in followed_a2.values())
    monkeypatch.undo()

    def no_inotify(path):
        raise OSError(38, "inotify_init1")

    monkeypatch.setattr(pgsrc, "_Inotify", no_inotify)
    (tmp_path / "b").mkdir()
    counts_b, followed_b = digests_of(tmp_path / "b")
    assert followed_b == {} and counts_b == counts

    real_pump = pgsrc._Tail.pump

    def failing_on_the_huge_table(self, budget):
        if self.size > 1 << 20:
            raise OSError(5, "Input/output error")
        return real_pump(self, budget)

    monkeypatch.undo()
    monkeypatch.setattr(pgsrc._Tail, "pump", failing_on_the_huge_table)
    (tmp_path / "c").mkdir()
    counts_c, followed_c = digests_of(tmp_path / "c", every=False)  # the files complete by then stay followed, the rest is read
    assert counts_c == counts and len(followed_c) < 9
    assert not any(d.size > 1 << 20 for d in followed_c.values())
    assert len(shas) == 9 and all(len(v) == 1 for v in shas.values())


@pytest.mark.parametrize(("content", "rows"), [
    (b"\\.\n\n\n", 0),
    (b"1\tx\n2\t\\N\n\\.\n\n\n", 2),
    (b"\n\n\\.\n\n\n", 2),  # a table without columns: empty lines
    (b"a\\nb\tc\\\\\n\\.\n", 1),
    (b"1\tx\n2\ty\n", None),  # no end marker: not trusted
    (b"1\tx\\.\n", None),  # "\." inside a line is not the marker
    (b"", None),
])
def test_row_count_from_copy_text(tmp_path, content, rows):
    f = tmp_path / "1.dat"
    f.write_bytes(content)
    tail = pgsrc._Tail(f, tmp_path)
    digest = tail.finish()
    digest.spool.close()
    assert digest.rows == rows and digest.size == len(content)
    assert digest.sha256 == hashlib.sha256(content).hexdigest()

