"""Owners of drill leftovers (:func:`backups.commands.drill.clean_leftovers`): which scratch directories a drill or
prune removes — a dead owner on this host (pid gone, or reused by another process), another host's or a DAG run's
only after ``LEFTOVER_MAX_AGE_DAYS``, an unowned one by the age in its name — and that a live one, a foreign
name, a symlink and the caller's own drill are never touched. (Real kill -9 runs: tests/integration/test_drill.py.)"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backups.commands import drill as dc
from backups.config import load_config
from backups.repository.locks import HOST, pid_start
from tests.helpers import write_config

NOW = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)


@pytest.fixture
def cfg(tmp_path):
    path = write_config(tmp_path / "b.yaml", tmp_path / "home", tmp_path / "repo")
    path.write_text(path.read_text() + f"drill:\n  scratch_dir: {tmp_path / 'scratch'}\n")
    return load_config(path)


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _leftover(cfg, when: datetime, owner: dict | None | str) -> Path:
    d = dc.scratch_base(cfg) / dc.drill_id_for(when)
    (d / "weekly").mkdir(parents=True)
    if owner is not None:
        (d / dc.OWNER_FILE).write_text(owner if isinstance(owner, str) else json.dumps(owner))
    return d


def _owner(when: datetime, **kw) -> dict:
    return {"drill_id": dc.drill_id_for(when), "host": HOST, "pid": os.getpid(), "pid_start": pid_start(os.getpid()),
            "started_at": when.isoformat(), "run": None, **kw}


def test_only_leftovers_whose_owner_is_dead_are_removed(cfg):
    recent, old = NOW - timedelta(hours=1), NOW - timedelta(days=dc.LEFTOVER_MAX_AGE_DAYS, hours=1)
    cases = {  # name: (directory, removed?)
        "dead pid": (_leftover(cfg, recent, _owner(recent, pid=_dead_pid())), True),
        "pid reused": (_leftover(cfg, recent + timedelta(seconds=1), _owner(recent, pid_start="1")), True),
        "live": (_leftover(cfg, recent + timedelta(seconds=2), _owner(recent)), False),
        "other host, recent": (_leftover(cfg, recent + timedelta(seconds=3), _owner(recent, host="elsewhere")), False),
        "other host, old": (_leftover(cfg, old, _owner(old, host="elsewhere", pid=1)), True),
        "DAG run, recent": (_leftover(cfg, recent + timedelta(seconds=4),
                                      _owner(recent, pid=_dead_pid(), run="dr_drill/manual__1/isolate")), False),
        "no owner, recent": (_leftover(cfg, recent + timedelta(seconds=5), None), False),
        "no owner, old": (_leftover(cfg, old + timedelta(seconds=1), None), True),
        "garbage owner, old": (_leftover(cfg, old + timedelta(seconds=2), "\x00{not json"), True),
    }
    stranger = dc.scratch_base(cfg) / "not-a-drill"
    stranger.mkdir()
    link = dc.scratch_base(cfg) / dc.drill_id_for(old - timedelta(days=1))
    link.symlink_to(stranger)
    dry = dc.clean_leftovers(cfg, dry_run=True, now=NOW)
    assert all(d.exists() for d, _ in cases.values())  # a dry run removes nothing
    out = dc.clean_leftovers(cfg, now=NOW)
    assert sorted(out.directories) == sorted(dry.directories) == sorted(str(d) for d, gone in cases.values() if gone)
    for name, (d, gone) in cases.items():
        assert d.exists() is not gone, name
    assert stranger.is_dir() and link.is_symlink() and out.problems == []
    kept = "\n".join(out.kept)
    assert "is still running" in kept and f"kept until {dc.LEFTOVER_MAX_AGE_DAYS} days old" in kept


def test_the_callers_own_drill_is_never_touched(cfg):
    when = NOW - timedelta(minutes=5)
    mine = _leftover(cfg, when, _owner(when, pid=_dead_pid()))
    assert dc.clean_leftovers(cfg, keep=mine.name, now=NOW).directories == [] and mine.is_dir()
    assert dc.clean_leftovers(cfg, now=NOW).directories == [str(mine)] and not mine.exists()


def test_the_owner_record_names_this_process():
    rec = dc.owner_record("drill-20261207T050000Z")
    assert rec["host"] == HOST and rec["pid"] == os.getpid() and rec["pid_start"] == pid_start(os.getpid())
    assert dc.owner_state(rec, None)[0] is False


@pytest.mark.parametrize("kind", ["symlink", "fifo", "huge", "array", "directory"])
def test_a_crafted_owner_record_counts_as_none_and_never_blocks(cfg, tmp_path, kind):
    """An owner record that is a symlink (to a live owner's record), a FIFO (a read would block), over 64 KiB, not a
    JSON object or a directory is no owner: the leftover is judged by the age in its name alone."""
    when = NOW - timedelta(hours=1)
    d = _leftover(cfg, when, None)
    rec = d / dc.OWNER_FILE
    live = tmp_path / "live.json"
    live.write_text(json.dumps(_owner(when)))
    {"symlink": lambda: rec.symlink_to(live), "fifo": lambda: os.mkfifo(rec),
     "huge": lambda: rec.write_text(json.dumps({**_owner(when), "pad": "x" * 70000})),
     "array": lambda: rec.write_text(json.dumps([_owner(when)])), "directory": rec.mkdir}[kind]()
    assert dc.read_owner(rec) is None
    recent = dc.clean_leftovers(cfg, now=NOW)
    assert recent.directories == [] and "no owner record" in recent.kept[0]
    later = NOW + timedelta(days=dc.LEFTOVER_MAX_AGE_DAYS)
    assert dc.clean_leftovers(cfg, now=later).directories == [str(d)] and not d.exists() and live.is_file()


def test_backupctl_prune_removes_dead_drills_leftovers_and_says_so(cfg, tmp_path, capsys):
    from backups.cli import main

    when = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    dead = _leftover(cfg, when, _owner(when, pid=_dead_pid()))
    live = _leftover(cfg, when + timedelta(seconds=1), _owner(when))
    args = ["--config", str(tmp_path / "b.yaml"), "prune"]
    assert main([*args, "--dry-run"]) == 0
    assert f"drill leftovers that would be removed: {dead}" in capsys.readouterr().out and dead.is_dir()
    assert main([*args, "--json"]) == 0
    left = json.loads(capsys.readouterr().out)["drill_leftovers"]
    assert left["directories"] == [str(dead)] and not dead.exists() and live.is_dir()


@pytest.mark.parametrize(("field", "now", "later"), [
    ({"pid": 1 << 70}, False, True), ({"pid": -3}, False, True), ({"pid": True}, False, True),
    ({"pid": "123"}, False, True), ({"host": None}, False, True), ({"run": {"a": 1}}, False, True),
    ({"pid_start": ["x"]}, True, True),  # not this process's start time: its drill is gone
    ({"started_at": "2026-01-01T00:00:00"}, False, False),  # naive time: no crash; the owner (us) is alive
    ({"started_at": "2026-01-01T00:00:00", "host": "elsewhere"}, False, True),  # age from the drill id
])
def test_odd_owner_fields_never_crash_and_never_shorten_the_wait(cfg, field, now, later):
    """Whatever an owner record holds, the cleanup decides without an exception; a record it cannot check (a pid that
    is no pid) keeps a recent leftover and removes it only after LEFTOVER_MAX_AGE_DAYS counted from the drill id."""
    when = NOW - timedelta(hours=1)
    d = _leftover(cfg, when, {**_owner(when), **field})
    out = dc.clean_leftovers(cfg, now=NOW)
    assert out.problems == [] and d.exists() is not now, out
    dc.clean_leftovers(cfg, now=NOW + timedelta(days=dc.LEFTOVER_MAX_AGE_DAYS))
    assert d.exists() is not later
