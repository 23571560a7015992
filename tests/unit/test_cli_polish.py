"""``backupctl`` as an operator meets it (issue 11): unique-prefix snapshot ids, "did you mean" for names,
``show`` defaulting to latest, restore targets that are refused even with --force, exit codes exactly as README
documents them, log lines that never break the progress bar, a percentage on backup progress, aligned
``show --files`` columns and no SQLite side files left in a restore target."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys

import pytest

from backups.catalog.manifest import Catalog
from backups.cli import files_listing, main
from backups.errors import CHECK_EXIT_CODES, EXIT_CODES, ConfigError, NotFoundError
from tests.helpers import ROOT, make_app, run_backup, subprocess_env

WEEKLY = "weekly-20260104T010000Z"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    a = make_app(tmp_path_factory.mktemp("polish"), scale=0.2, seed=5)
    run_backup(a["cfg"], "weekly", logical_date="2026-01-04T01:00:00Z")
    run_backup(a["cfg"], "daily", logical_date="2026-01-05T02:00:00Z")
    run_backup(a["cfg"], "daily", logical_date="2026-01-06T02:00:00Z")
    return a


@pytest.fixture
def ctl(app, capsys):
    """``backupctl`` in this process (fast); the exit-code test below also runs it as a subprocess."""

    def run(*args, config=None):
        capsys.readouterr()
        code = main(["--config", str(config or app["config_path"]), *args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return run


# ------------------------------------------------------------------------------------------------ snapshot ids
def test_unique_prefix_resolves_everywhere(app, ctl):
    p = ctl("show", "weekly-2026", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["id"] == WEEKLY
    p = ctl("verify", "daily-20260105")
    assert p.returncode == 0, p.stderr
    p = ctl("restore", "weekly", "--target", str(app["tmp"] / "by-prefix"), "--source", "system_state", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["location"]["snapshot_id"] == WEEKLY


def test_ambiguous_prefix_lists_the_candidates_exit_2(app, ctl):
    p = ctl("show", "daily-2026010")
    assert p.returncode == 2 and ConfigError.exit_code == 2
    assert "ambiguous" in p.stderr and "daily-20260105T020000Z, daily-20260106T020000Z" in p.stderr
    assert "fix:" in p.stderr and "Traceback" not in p.stderr
    p = ctl("restore", "daily-", "--target", str(app["tmp"] / "never"))
    assert p.returncode == 2 and not (app["tmp"] / "never").exists()


def test_exact_id_wins_over_a_longer_one_it_prefixes():
    cat = Catalog.__new__(Catalog)
    cat.snapshots = {"manual-a": "exact", "manual-ab": "longer"}
    cat.broken, cat.refused = {}, set()
    cat.storage = type("S", (), {"name": "mem"})()
    assert cat.get("manual-a") == "exact" and cat.get("manual-ab") == "longer"
    with pytest.raises(NotFoundError, match="no snapshot 'zzz'"):
        cat.get("zzz")
    with pytest.raises(NotFoundError) as ei:
        cat.get("manual-x")
    assert "did you mean" in ei.value.hint


def test_show_without_an_id_is_latest(app, ctl):
    p = ctl("show", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["id"] == "daily-20260106T020000Z"
    p = ctl("show", "--tier", "weekly", "--json")
    assert json.loads(p.stdout)["id"] == WEEKLY


# ------------------------------------------------------------------------------------------------ names
@pytest.mark.parametrize(("args", "wrong", "right"), [
    (["list", "--tier", "dayly"], "tier named 'dayly'", "did you mean 'daily'?"),
    (["show", "--tier", "weekyl"], "tier named 'weekyl'", "did you mean 'weekly'?"),
    (["status", "--storage", "locl"], "storage named 'locl'", "did you mean 'local'?"),
    (["backup", "--tier", "daily", "--source", "app_bd"], "source named 'app_bd'", "did you mean 'app_db'?"),
    (["restore", "latest", "--tier", "montly", "--target", "/tmp/x"], "tier named 'montly'", "did you mean 'monthly'?"),
])
def test_did_you_mean_exit_3(ctl, args, wrong, right):
    p = ctl(*args)
    assert p.returncode == NotFoundError.exit_code == 3, p.stderr
    assert wrong in p.stderr and right in p.stderr


def test_did_you_mean_in_config_references(app, ctl):
    bad = app["tmp"] / "typo.yaml"
    bad.write_text(app["config_path"].read_text().replace("sources: [app_db,", "sources: [app_dbb,", 1))
    p = ctl("list", config=bad)
    assert p.returncode == 2 and "unknown source 'app_dbb'" in p.stderr and "did you mean 'app_db'?" in p.stderr


# ------------------------------------------------------------------------------------------------ targets
@pytest.mark.parametrize("where", ["/", "{repo}", "{repo}/local", "{repo}/local/data", "{tmp}"])
def test_restore_refuses_root_and_repository_even_with_force(app, where, ctl):
    target = where.format(repo=app["root"], tmp=app["tmp"])
    before = sorted(p.name for p in app["root"].rglob("*"))
    p = ctl("restore", "latest", "--target", target, "--force")
    assert p.returncode == 7, p.stderr
    assert "even with --force" in p.stderr and "fix:" in p.stderr
    assert ("filesystem root" in p.stderr) if target == "/" else ("repository of storage local" in p.stderr)
    assert sorted(p.name for p in app["root"].rglob("*")) == before


# ------------------------------------------------------------------------------------------------ exit codes
def _readme_table(text: str, header: str) -> dict[str, str]:
    """The rows ``| code | meaning |`` of the README table whose header row starts with ``| <header> |``."""
    block = text.split(f"| {header} |", 1)[1].split("\n\n", 1)[0]
    return dict(re.findall(r"^\| (\d+) \| (.+?) \|$", block, re.M))


@pytest.mark.parametrize("header, table", [("exit code", EXIT_CODES), ("`status --check` exit code", CHECK_EXIT_CODES)])
def test_readme_exit_code_tables_match_the_code(header, table):
    """README's tables and ``backupctl exit-codes`` list the same codes; each README meaning starts like the code's."""
    rows = _readme_table((ROOT / "README.md").read_text(), header)
    assert sorted(int(c) for c in rows) == sorted(table)
    for code, meaning in table.items():
        words = lambda s: re.findall(r"[a-z]+", s.lower())[:3]  # noqa: E731
        assert words(rows[str(code)]) == words(meaning), (code, rows[str(code)], meaning)
    p = subprocess.run([sys.executable, "-m", "backups.cli", "exit-codes"], capture_output=True, text=True,
                       env=subprocess_env())
    main_part, _, check_part = p.stdout.partition("backupctl status --check")
    printed = main_part if table is EXIT_CODES else check_part.split("\n", 1)[1]
    assert sorted(int(line.split()[0]) for line in printed.splitlines() if line.strip()) == sorted(table)


def test_verify_exit_5_when_only_a_storage_is_unreachable_4_with_problems(app, ctl):
    blocker = app["tmp"] / "not-a-dir"
    blocker.write_text("a file where a storage directory should be")
    cfg = app["tmp"] / "unreachable.yaml"
    cfg.write_text(app["config_path"].read_text().replace("storages:\n", f'storages:\n  broken: {{type: local, path: "{blocker}"}}\n', 1))
    p = ctl("verify", config=cfg)
    assert p.returncode == 5, p.stdout + p.stderr
    assert "broken: unreachable" in p.stdout
    p = ctl("verify", "--json", config=cfg)
    assert p.returncode == 5 and json.loads(p.stdout)["unreachable"]
    # a damaged object on the reachable storage is worse: exit 4
    victim = next(p for p in (app["root"] / "local" / "data").rglob("*") if p.is_file() and "daily-20260106" in str(p))
    saved = victim.read_bytes()
    try:
        victim.write_bytes(saved + b"x")
        p = ctl("verify", "daily-20260106T020000Z", config=cfg)
        assert p.returncode == 4, p.stdout + p.stderr
    finally:
        victim.write_bytes(saved)


# ------------------------------------------------------------------------------------------------ progress
def test_log_lines_print_above_the_bar_not_into_it(monkeypatch):
    from backups.engine.progress import Progress

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    # the root's only handler, as in the CLI: tqdm redirects the *first* console handler it finds, and earlier
    # tests in this process (Airflow, pytest) may have left others on the root logger
    saved_handlers, saved_disable = root.handlers[:], logging.root.manager.disable
    root.handlers = [handler]
    logging.disable(logging.NOTSET)
    old = root.level
    root.setLevel(logging.INFO)
    try:
        p = Progress("backup x", 1000, tty=True)
        p.advance(500)
        # its own level: an earlier in-process CLI run (-q) or Airflow's logging config may have raised "backups"
        lg = logging.getLogger("backups.test.progress")
        lg.setLevel(logging.INFO)
        lg.disabled, lg.propagate = False, True
        lg.info("a log line in the middle")
        p.skip(250)
        assert p.percent() == 75.0
        p.close()
    finally:
        root.removeHandler(handler)
        root.handlers = saved_handlers
        logging.disable(saved_disable)
        root.setLevel(old)
    segments = re.split(r"[\r\n]", err.getvalue())
    assert "INFO a log line in the middle" in segments  # on a line of its own, not glued to the bar
    assert any("50%" in s for s in segments)  # the bar shows a percentage of the total
    assert root.handlers.count(handler) == 0


def test_periodic_log_line_has_a_percentage(caplog):
    from backups.engine.progress import Progress

    p = Progress("backup y", 2_000_000, interval=0.0, tty=False)
    with caplog.at_level(logging.INFO, logger="backups.progress"):
        p.advance(1_000_000)
    assert "of ~2.0 MB (50%)" in caplog.text


def test_backup_progress_gets_the_plans_estimate(app, monkeypatch):
    from backups.commands import backup as backup_command
    from backups.engine import progress

    seen = []

    class Recorder(progress.Progress):
        def __init__(self, label, total_bytes=None, **kw):
            seen.append((label, total_bytes))
            super().__init__(label, total_bytes, tty=False)

    monkeypatch.setattr(progress, "Progress", Recorder)
    backup_command.run_backup(app["cfg"], "daily", logical_date="2026-01-07T02:00:00Z", validate=False)
    (label, total), = [s for s in seen if s[0].startswith("backup ")]
    assert label == "backup daily-20260107T020000Z" and total and total > 100_000


# ------------------------------------------------------------------------------------------------ show --files
def test_show_files_columns_line_up(app, ctl):
    p = ctl("show", WEEKLY, "--files")
    assert p.returncode == 0, p.stderr
    block = p.stdout.split("app_files:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    header, rows = block[0], block[1:]
    col = header.index("path")
    assert len(rows) > 5
    for line in rows:
        assert line[col - 2 : col] == "  " and line[col] != " ", line  # every path starts in the path column
        assert line[: col].rstrip().endswith((WEEKLY, "-")), line
    assert any(r.split()[0] == "dir" for r in rows) and any(r.split()[0] == "file" for r in rows)


def test_files_listing_handles_links_and_long_paths():
    from backups.repository.index import IndexEntry

    entries = [("a" * 300, IndexEntry("f", 5, 0, 0o644, 1, "x", None, "s1")),
               ("ln", IndexEntry("l", 0, 0, 0o777, 2, None, "target", "s1")),
               ("hard", IndexEntry("f", 5, 0, 0o644, 1, "x", "a" * 300, "s1"))]
    lines = list(files_listing(entries, ["s1"]))
    col = lines[0].index("path")
    assert all(line[col - 2 : col] == "  " for line in lines[1:])
    assert lines[2].endswith("ln -> target") and "(hard link to aaa" in lines[3]


# ------------------------------------------------------------------------------------------------ side files
def test_restore_verification_leaves_no_sqlite_side_files(app):
    """app.db is in WAL mode: reading it back (table list, Great Expectations) must not create -wal/-shm."""
    from backups.commands import restore as rc

    target = app["tmp"] / "clean"
    out = rc.restore_snapshot(app["cfg"], rc.RestoreRequest(target=str(target), snapshot=WEEKLY, sources=["app_db"]))
    assert out.verified.validation["app_db"]["success"] is True  # GX did read it
    assert sorted(x.name for x in (target / "app_db").iterdir()) == ["app.db"]


def test_readonly_open_is_immutable_only_without_pending_wal(tmp_path):
    """No side file from our reads of a clean database; a database with uncheckpointed WAL changes is still read
    correctly (plain read-only), so verification never misses a change sitting in a -wal file."""
    import sqlite3
    from contextlib import closing

    from backups.engine.databases import sqlite_ro_params
    from backups.validation.suite import sqlite_tables

    db = tmp_path / "x.db"
    with closing(sqlite3.connect(db)) as c:
        c.execute("PRAGMA journal_mode = wal")
        c.execute("CREATE TABLE a (id int)")
        c.commit()
    assert sqlite_ro_params(db) == "mode=ro&immutable=1"
    assert sqlite_tables(db) == {"a"} and sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]
    writer = sqlite3.connect(db)  # kept open: its change stays in x.db-wal
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("CREATE TABLE b (id int)")
    writer.commit()
    try:
        assert sqlite_ro_params(db) == "mode=ro"
        assert sqlite_tables(db) == {"a", "b"}
    finally:
        writer.close()


# ------------------------------------------------------------------------------------------------ words, not Python reprs
def test_approval_reads_as_words():
    """Issue 20: notes and reports said "approval: Approve by admin"; a list printed as ``['missions']``."""
    from backups.cli import _words
    from backups.commands.base import approval_phrase

    assert approval_phrase({"choice": "Approve", "by": "admin", "at": "2026-12-07T10:00:00+00:00", "note": "go"}) \
        == "approved by **admin** at 2026-12-07T10:00:00+00:00 — go"
    assert approval_phrase({"choice": "Approve", "by": "admin", "at": "T"}, when=False) == "approved by **admin**"
    assert approval_phrase({"choice": "Reject", "by": "bob"}, when=False) == "rejected by **bob**"
    assert approval_phrase({"by": None, "choice": "not required", "note": "require_approval was false"}) \
        == "not required (require_approval was false)"
    assert approval_phrase(None) == "-"
    assert _words(["missions", "crew"]) == "missions, crew" and _words("all") == "all" and _words([]) == "none"


def test_restore_prints_table_lists_as_words(app, capsys, tmp_path):
    code = main(["--config", str(app["config_path"]), "restore", "latest", "--source", "app_db", "--table", "missions",
                 "--with-dependencies", "--no-validate", "--target", str(tmp_path / "t")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "tables: " in out and "[" not in out.split("tables: ", 1)[1].splitlines()[0], out
