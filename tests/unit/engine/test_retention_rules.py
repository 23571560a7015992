"""Retention rules (engine/retention.py ``plan_prune``), table-driven: restic's keep_last / keep_daily /
keep_weekly (ISO weeks) / keep_monthly / keep_yearly, their union, chains never broken, tiers the config no longer
has kept, orphans only after the grace period. One small history is built once; each case only plans (reads).
No Airflow, about a second.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backups.catalog import Catalog
from backups.config import load_config
from backups.engine.retention import plan_prune
from backups.engine.snapshot import run_backup
from backups.storage import LocalStorage

CONFIG = """\
application: keep-test
sources:
  notes: {{type: files, root: "{home}"}}
storages:
  local: {{type: local, path: "{repo}"}}
tiers:
{tiers}"""

# one tier of fulls; the dates cross day, ISO-week, month and year boundaries
DATES = {
    "a": "2024-12-31T10:00:00Z",  # Tuesday of ISO week 2025-W01, calendar year 2024
    "b": "2025-06-15T10:00:00Z",  # 2025-W24
    "c": "2025-12-01T10:00:00Z",  # 2025-W49
    "d": "2025-12-28T10:00:00Z",  # Sunday, 2025-W52
    "e": "2025-12-29T10:00:00Z",  # Monday, ISO week 2026-W01, calendar year 2025
    "f": "2026-01-01T01:00:00Z",
    "g": "2026-01-01T23:00:00Z",  # the same day as f, later
    "h": "2026-01-02T10:00:00Z",
    "i": "2026-01-03T10:00:00Z",  # the newest
}


def sid(letter: str) -> str:
    return "snap-" + DATES[letter].replace("-", "").replace(":", "")


def _config(tmp: Path, repo: Path, tiers: str, name: str = "c"):
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    (home / "note.txt").write_text("x\n")
    path = tmp / f"{name}.yaml"
    path.write_text(CONFIG.format(home=home, repo=repo, tiers=tiers))
    return load_config(path)


def _tier(name: str, typ: str = "full", retention: str = "{}") -> str:
    return f"  {name}: {{type: {typ}, schedule: null, sources: [notes], storages: [local], retention: {retention}}}\n"


@pytest.fixture(scope="module")
def fulls(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keep")
    repo = tmp / "repo"
    cfg = _config(tmp, repo, _tier("snap"))
    for when in DATES.values():
        run_backup(cfg, "snap", logical_date=when)
    return tmp, repo


# policy -> {kept snapshot: the reasons}; everything else is forgotten
CASES = {
    "no rule keeps everything": ("{}", {x: ["no retention rule"] for x in DATES}),
    "keep_last": ("{keep_last: 3}", {"g": ["keep_last"], "h": ["keep_last"], "i": ["keep_last"]}),
    "keep_daily: the newest of each day": (
        "{keep_daily: 4}",
        {"e": ["keep_daily 2025-12-29"], "g": ["keep_daily 2026-01-01"], "h": ["keep_daily 2026-01-02"],
         "i": ["keep_daily 2026-01-03"]}),
    "keep_weekly: ISO weeks, across the year's end": (
        "{keep_weekly: 5}",
        {"a": ["keep_weekly 2025-W01"], "b": ["keep_weekly 2025-W24"], "c": ["keep_weekly 2025-W49"],
         "d": ["keep_weekly 2025-W52"], "i": ["keep_weekly 2026-W01"]}),
    "keep_monthly": ("{keep_monthly: 2}", {"e": ["keep_monthly 2025-12"], "i": ["keep_monthly 2026-01"]}),
    "keep_yearly: calendar years": (
        "{keep_yearly: 5}",
        {"a": ["keep_yearly 2024"], "e": ["keep_yearly 2025"], "i": ["keep_yearly 2026"]}),
    "rules add up": (
        "{keep_last: 1, keep_daily: 2, keep_monthly: 3}",
        {"i": ["keep_last", "keep_daily 2026-01-03", "keep_monthly 2026-01"], "h": ["keep_daily 2026-01-02"],
         "e": ["keep_monthly 2025-12"], "b": ["keep_monthly 2025-06"]}),
    "keep_weekly 2": ("{keep_weekly: 2}", {"d": ["keep_weekly 2025-W52"], "i": ["keep_weekly 2026-W01"]}),
    "keep_within_days: of the newest snapshot": (
        "{keep_within_days: 3}", {x: ["keep_within_days 3"] for x in "fghi"}),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_rules_keep_exactly_what_they_say(fulls, tmp_path, case):
    policy, kept = case
    _tmp, repo = fulls
    cfg = _config(tmp_path, repo, _tier("snap", retention=policy))
    storage = LocalStorage(repo, name="local")
    plan = plan_prune(cfg, storage, Catalog(storage, "keep-test"), now=datetime(2026, 1, 4, tzinfo=UTC))
    assert plan.keep == {sid(x): kept[x] for x in sorted(kept)}
    assert plan.forget == [sid(x) for x in DATES if x not in kept]  # oldest first
    assert plan.orphans == [] and plan.storage == "local"


def test_a_tier_no_longer_in_the_config_is_kept(fulls, tmp_path):
    _tmp, repo = fulls
    cfg = _config(tmp_path, repo, _tier("other", retention="{keep_last: 1}"))
    storage = LocalStorage(repo, name="local")
    plan = plan_prune(cfg, storage, Catalog(storage, "keep-test"))
    assert plan.forget == [] and set(plan.keep) == {sid(x) for x in DATES}
    assert {tuple(v) for v in plan.keep.values()} == {("tier snap is not in the config",)}


def test_chains_are_never_broken(tmp_path):
    """A kept incremental keeps its whole chain, across tiers, whatever the chain's own tier says."""
    repo = tmp_path / "repo"
    tiers = _tier("weekly", "full", "{keep_last: 1}") + _tier("daily", "incremental", "{keep_last: 1}")
    cfg = _config(tmp_path, repo, tiers)
    for tier, when in [("weekly", "2026-01-04T01:00:00Z"), ("daily", "2026-01-05T02:00:00Z"),
                       ("weekly", "2026-01-11T01:00:00Z"), ("daily", "2026-01-12T02:00:00Z"),
                       ("daily", "2026-01-13T02:00:00Z")]:
        run_backup(cfg, tier, logical_date=when)
    storage = LocalStorage(repo, name="local")
    plan = plan_prune(cfg, storage, Catalog(storage, "keep-test"))
    assert plan.keep == {
        "daily-20260112T020000Z": ["needed by daily-20260113T020000Z"],
        "daily-20260113T020000Z": ["keep_last"],
        "weekly-20260111T010000Z": ["keep_last", "needed by daily-20260113T020000Z"],
    }
    assert plan.forget == ["weekly-20260104T010000Z", "daily-20260105T020000Z"]


# orphan = objects under data/<id>/ without a manifest; removed only when older than the grace (2 days by default)
ORPHANS = {
    "older than the grace": ("snap-20251231T235959Z", True),
    "exactly the grace": ("snap-20260101T000000Z", False),
    "a run still in progress": ("snap-20260102T230000Z", False),
    "not a snapshot id": ("scratch", False),
}


@pytest.mark.parametrize("case", ORPHANS.values(), ids=ORPHANS.keys())
def test_orphans_only_after_the_grace_period(fulls, tmp_path, case):
    leftover, is_orphan = case
    _tmp, repo = fulls
    cfg = _config(tmp_path, repo, _tier("snap"))
    storage = LocalStorage(tmp_path / "copy", name="local")
    for info in LocalStorage(repo).list(""):  # a private copy of the repository
        storage.put_bytes(info.key, LocalStorage(repo).get_bytes(info.key))
    storage.put_bytes(f"data/{leftover}/notes.tar.zst", b"left by a killed run")
    # the grace is measured on the objects' modification time: date the leftover as its id says (an old one if none)
    stamp = leftover.split("-", 1)[-1]
    written = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC) if "T" in stamp else datetime(2025, 1, 1, tzinfo=UTC)
    os.utime(tmp_path / "copy" / "data" / leftover / "notes.tar.zst", (written.timestamp(), written.timestamp()))
    now = datetime(2026, 1, 3, 0, 0, tzinfo=UTC)
    plan = plan_prune(cfg, storage, Catalog(storage, "keep-test"), now=now, orphan_grace=timedelta(days=2))
    assert plan.orphans == ([leftover] if is_orphan else [])
    assert plan.forget == []  # no rule: orphans are not snapshots, snapshots are not orphans


def test_objects_of_another_application_on_the_same_storage_are_not_orphans(fulls, tmp_path):
    _tmp, repo = fulls
    cfg = _config(tmp_path, repo, _tier("snap"))
    storage = LocalStorage(repo, name="local")
    plan = plan_prune(cfg, storage, Catalog(storage, "another-app"), now=datetime(2030, 1, 1, tzinfo=UTC))
    assert plan.orphans == [] and plan.keep == {} and plan.forget == []


def test_decisions_list_every_snapshot_with_the_rule_that_decided(fulls, tmp_path):
    from backups.commands.prune import decision_table

    _tmp, repo = fulls
    cfg = _config(tmp_path, repo, _tier("snap", retention="{keep_last: 2, keep_monthly: 1}"))
    storage = LocalStorage(repo, name="local")
    plan = plan_prune(cfg, storage, Catalog(storage, "keep-test")).to_dict()
    rows = {d["id"]: d for d in plan["decisions"]}
    assert list(rows) == [sid(x) for x in DATES]  # every snapshot, oldest first
    assert rows[sid("i")]["action"] == "keep" and rows[sid("i")]["reasons"] == ["keep_last", "keep_monthly 2026-01"]
    assert rows[sid("h")]["reasons"] == ["keep_last"]
    assert rows[sid("a")] | {"logical_date": None} == {
        "id": sid("a"), "tier": "snap", "type": "full", "logical_date": None, "action": "forget",
        "reasons": ["no rule of tier snap keeps it (keep_last=2, keep_monthly=1)"]}
    table = decision_table(plan, dry_run=True).splitlines()
    assert table[0].split() == ["snapshot", "tier", "type", "action", "reason(s)"]
    assert len(table) == 1 + len(DATES)
    assert table[-1].split()[:4] == [sid("i"), "snap", "full", "keep"]
    assert "would forget" in table[1] and "no rule of tier snap keeps it" in table[1]


MANUAL_DATES = [f"2025-{m:02d}-01T10:00:00Z" for m in range(1, 13)]  # monthly, Jan .. Dec 2025


@pytest.fixture(scope="module")
def manuals(tmp_path_factory):
    from backups.commands.backup import MANUAL_TIER, with_manual_tier

    tmp = tmp_path_factory.mktemp("manual")
    repo = tmp / "repo"
    cfg = with_manual_tier(_config(tmp, repo, _tier("snap")))
    for when in MANUAL_DATES:
        run_backup(cfg, MANUAL_TIER, logical_date=when)
    return repo


@pytest.mark.parametrize(("setting", "kept_months"), [
    ("", range(3, 13)),  # default: keep_last 10 (Mar..Dec) and everything within 90 days of Dec 1 (Oct..Dec)
    ("manual_retention: {keep_last: 2}\n", range(11, 13)),
    ("manual_retention: {keep_within_days: 31}\n", range(11, 13)),
    ("manual_retention: {}\n", range(1, 13)),  # an explicit {} keeps them all
])
def test_manual_snapshots_follow_manual_retention(manuals, tmp_path, setting, kept_months):
    cfg = _config(tmp_path, manuals, _tier("snap") + setting)
    storage = LocalStorage(manuals, name="local")
    plan = plan_prune(cfg, storage, Catalog(storage, "keep-test"))
    kept = sorted(int(k[len("manual-2025"):][:2]) for k in plan.keep)
    assert kept == list(kept_months)
    assert all(k.startswith("manual-") for k in plan.keep)
