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
from backups.storage import LocalStorage
from tests.helpers import run_backup

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
    "keep_within_days: before now (2026-01-04)": (
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
    ("", range(3, 13)),  # default: keep_last 10 (Mar..Dec) and everything within 90 days of now (Oct..Dec)
    ("manual_retention: {keep_last: 2}\n", range(11, 13)),
    ("manual_retention: {keep_within_days: 31}\n", range(11, 13)),
    ("manual_retention: {}\n", range(1, 13)),  # an explicit {} keeps them all
])
def test_manual_snapshots_follow_manual_retention(manuals, tmp_path, setting, kept_months):
    cfg = _config(tmp_path, manuals, _tier("snap") + setting)
    storage = LocalStorage(manuals, name="local")
    # windows count back from now (the clock), here the day of the newest snapshot
    plan = plan_prune(cfg, storage, Catalog(storage, "keep-test"), now=datetime(2025, 12, 1, 12, tzinfo=UTC))
    kept = sorted(int(k[len("manual-2025"):][:2]) for k in plan.keep)
    assert kept == list(kept_months)
    assert all(k.startswith("manual-") for k in plan.keep)


# ------------------------------------------------------------------------------------------------ time (issue 16)
def test_a_future_dated_snapshot_never_makes_keep_within_forget_the_real_ones(tmp_path):
    """A mistyped year (2062) used to be the tier's newest snapshot: keep_within_days counted back from it and the
    next prune forgot every real snapshot, one taken after the typo included. Windows count back from now."""
    repo = tmp_path / "repo"
    cfg = _config(tmp_path, repo, _tier("daily", "full", "{keep_within_days: 7}"))
    taken_at = {"2026-01-01T02:00:00Z": "2026-01-01T02:05:00Z", "2026-01-03T02:00:00Z": "2026-01-03T02:05:00Z",
                "2062-01-03T02:00:00Z": "2062-01-03T02:05:00Z",  # an older version accepted it
                "2026-01-04T02:00:00Z": "2026-01-04T02:05:00Z"}  # taken after the typo
    for when, clock in taken_at.items():
        run_backup(cfg, "daily", logical_date=when, now=datetime.fromisoformat(clock))
    storage = LocalStorage(repo, name="local")
    plan = plan_prune(cfg, storage, Catalog(storage, "keep-test"), now=datetime(2026, 1, 5, tzinfo=UTC))
    assert plan.forget == []
    assert plan.keep["daily-20620103T020000Z"] == ["dated in the future: kept, and not counted by the rules"]
    assert plan.keep["daily-20260104T020000Z"] == ["keep_within_days 7"]
    assert len(plan.warnings) == 1 and "daily-20620103T020000Z" in plan.warnings[0] and "future" in plan.warnings[0]
    assert plan.to_dict()["warnings"] == plan.warnings
    # a week later the real ones age out of the window as usual; the newest real one is always kept
    plan = plan_prune(cfg, storage, Catalog(storage, "keep-test"), now=datetime(2026, 1, 11, 3, tzinfo=UTC))
    assert plan.forget == ["daily-20260101T020000Z", "daily-20260103T020000Z"]
    assert sorted(plan.keep) == ["daily-20260104T020000Z", "daily-20620103T020000Z"]


def test_a_prune_host_whose_clock_ran_ahead_forgets_nothing_the_true_clock_keeps(tmp_path):
    """Before: a prune under a clock ten years ahead aged every snapshot out of keep_within_days 30 (only the
    newest and the chains survived), exit 0. Windows end at the storage's newest commit when that is earlier."""
    repo = tmp_path / "repo"
    cfg = _config(tmp_path, repo, _tier("weekly", "full", "{keep_within_days: 30}"))
    today = datetime.now(UTC).replace(microsecond=0)
    for days in (21, 14, 7, 1):
        run_backup(cfg, "weekly", logical_date=(today - timedelta(days=days)).isoformat())
    storage = LocalStorage(repo, name="local")
    true = plan_prune(cfg, storage, Catalog(storage, "keep-test"))
    ahead = plan_prune(cfg, storage, Catalog(storage, "keep-test"), now=today + timedelta(days=3650))
    assert true.forget == [] and ahead.forget == []
    assert datetime.fromisoformat(ahead.anchor) <= datetime.now(UTC)  # the newest commit, not the clock
    assert len(ahead.keep) == 4


def test_a_future_snapshot_takes_no_keep_last_slot_and_no_bucket(fulls, tmp_path):
    """Now = 2025-12-30: f, g, h and i (2026) are in the future; the rules see a..e only."""
    _tmp, repo = fulls
    storage = LocalStorage(repo, name="local")
    now = datetime(2025, 12, 30, tzinfo=UTC)
    for policy, kept in [("{keep_last: 2}", "de"), ("{keep_daily: 2}", "de"), ("{keep_monthly: 1}", "e"),
                         ("{keep_yearly: 1}", "e")]:
        cfg = _config(tmp_path, repo, _tier("snap", retention=policy))
        plan = plan_prune(cfg, storage, Catalog(storage, "keep-test"), now=now)
        assert sorted(plan.keep) == sorted(sid(x) for x in kept + "fghi"), policy
        assert len(plan.warnings) == 4


def test_the_newest_snapshot_not_in_the_future_is_always_kept(fulls, tmp_path):
    _tmp, repo = fulls
    storage = LocalStorage(repo, name="local")
    cfg = _config(tmp_path, repo, _tier("snap", retention="{keep_within_days: 1}"))
    plan = plan_prune(cfg, storage, Catalog(storage, "keep-test"), now=datetime(2027, 1, 1, tzinfo=UTC))
    assert list(plan.keep) == [sid("i")] and plan.keep[sid("i")] == ["the tier's newest snapshot (always kept)"]


def test_a_logical_date_in_the_future_is_refused_before_anything_is_written(tmp_path):
    from backups.errors import ConfigError

    repo = tmp_path / "repo"
    cfg = _config(tmp_path, repo, _tier("daily", "full"))
    now = datetime(2026, 1, 5, 12, tzinfo=UTC)
    with pytest.raises(ConfigError) as info:
        run_backup(cfg, "daily", logical_date="2062-01-05T12:00:00Z", now=now)
    assert info.value.exit_code == 2
    assert "2062-01-05T12:00:00+00:00" in str(info.value) and "2026-01-05T12:00:00+00:00" in str(info.value)
    assert not repo.exists() or not any(repo.rglob("*.json"))
    run_backup(cfg, "daily", logical_date="2026-01-05T12:04:59Z", now=now)  # within the tolerance (5 minutes)


def _manifest(sid_: str, when: datetime, seq: int) -> bytes:
    from backups.catalog.manifest import new_manifest, seal

    return seal(new_manifest(id=sid_, application="keep-test", tier="snap", type="full", requested_type="full",
                             parent=None, chain=[sid_], logical_date=when.isoformat(), sequence=seq, sources={},
                             started_at=when.isoformat(), finished_at=when.isoformat(),
                             totals={"files": 0, "bytes": 0, "stored_files": 0, "stored_bytes": 0}))


def test_property_future_snapshots_never_cost_an_older_one(tmp_path):
    """Property: for any snapshot dates (some in the future) and any rules, the decision about every snapshot
    that is not in the future is the one it would get if the future ones did not exist, the future ones are
    kept, and the newest snapshot that is not in the future is always kept."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from backups.catalog.manifest import FUTURE_TOLERANCE, manifest_key, snapshot_id
    from backups.config import Retention
    from backups.storage.memory import MemoryStorage

    now = datetime(2026, 6, 15, 12, tzinfo=UTC)
    base_cfg = _config(tmp_path, tmp_path / "unused", _tier("snap"))
    offsets = st.integers(min_value=-3 * 365 * 24 * 60, max_value=40 * 365 * 24 * 60)  # minutes from now
    rule = st.one_of(st.none(), st.integers(1, 12))
    rules = st.fixed_dictionaries({k: rule for k in Retention.model_fields})

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.function_scoped_fixture])
    @given(st.lists(offsets, min_size=1, max_size=14, unique=True), rules, st.randoms(use_true_random=False))
    def check(minutes, policy, rnd):
        dates = [now + timedelta(minutes=m) for m in minutes]
        ids = [snapshot_id("snap", d) for d in dates]
        if len(set(ids)) != len(ids):
            return
        seqs = list(range(1, len(dates) + 1))
        rnd.shuffle(seqs)  # any commit order (clock skew, backfills)
        cfg = base_cfg.model_copy(update={"tiers": {"snap": base_cfg.tiers["snap"].model_copy(
            update={"retention": Retention(**policy)})}})
        future = {i for i, d in zip(ids, dates, strict=True) if d > now + FUTURE_TOLERANCE}
        everything, present_only = MemoryStorage("all"), MemoryStorage("present")
        for i, d, q in zip(ids, dates, seqs, strict=True):
            everything.put_bytes(manifest_key(i), _manifest(i, d, q))
            if i not in future:
                present_only.put_bytes(manifest_key(i), _manifest(i, d, q))
        with_future = plan_prune(cfg, everything, Catalog(everything, "keep-test"), now=now)
        without = plan_prune(cfg, present_only, Catalog(present_only, "keep-test"), now=now)
        assert future <= set(with_future.keep)
        assert set(with_future.keep) - future == set(without.keep)
        assert len(with_future.warnings) == len(future)
        present = [(d, i) for i, d in zip(ids, dates, strict=True) if i not in future]
        if present:
            assert max(present)[1] in with_future.keep

    check()
