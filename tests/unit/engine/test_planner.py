"""The planner (engine/backup_pipeline.py ``plan``): which parent a snapshot builds on, its chain, and promotion to full.

pgBackRest's words: a *full* has no parent; a *differential* builds on the newest full; an *incremental* on the
newest snapshot of any tier — "newest" meaning the newest DATA (the highest manifest ``sequence``), never the
logical dates: a host whose clock is behind, or a backfill, still builds on the true newest snapshot (issue 16),
and is warned about (naming the repository's newest snapshot). With no usable parent (none, or its chain is damaged) the snapshot is promoted to full and
says why. Table-driven on a one-file ``files`` source and a local
storage: no Airflow, about a second for the whole file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from backups.config import load_config
from backups.engine.backup_pipeline import plan
from backups.errors import ConfigError
from backups.storage import LocalStorage
from tests.helpers import run_backup

CONFIG = """\
application: plan-test
sources:
  notes: {{type: files, root: "{home}"}}
  other: {{type: files, root: "{home}"}}
storages:
  local: {{type: local, path: "{repo}"}}
  spare: {{type: local, path: "{repo}-spare"}}
tiers:
  daily:   {{type: incremental, schedule: null, sources: [notes], storages: [local]}}
  weekly:  {{type: full, schedule: null, sources: [notes], storages: [local]}}
  monthly: {{type: differential, schedule: null, sources: [notes], storages: [local]}}
"""

# the history every case starts from: a full, an incremental on it, a differential, an incremental on that
W, D1, M, D2 = ("weekly-20260104T010000Z", "daily-20260105T020000Z", "monthly-20260106T030000Z",
                "daily-20260107T020000Z")
HISTORY = [("weekly", "2026-01-04T01:00:00Z"), ("daily", "2026-01-05T02:00:00Z"),
           ("monthly", "2026-01-06T03:00:00Z"), ("daily", "2026-01-07T02:00:00Z")]
LATER = "2026-01-08T02:00:00Z"
NONE_EARLIER = "no usable earlier snapshot on storage local"
NO_FULL_EARLIER = "no usable earlier full snapshot on storage local"


def _write(tmp: Path, name: str) -> tuple:
    home, repo = tmp / "home", tmp / name
    home.mkdir(exist_ok=True)
    (home / "note.txt").write_text("v1\n")
    path = tmp / f"{name}.yaml"
    path.write_text(CONFIG.format(home=home, repo=repo))
    return load_config(path), repo


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Path:
    """A repository holding HISTORY (built once; cases copy it)."""
    tmp = tmp_path_factory.mktemp("planner")
    cfg, repo = _write(tmp, "repo")
    for i, (tier, when) in enumerate(HISTORY):
        (tmp / "home" / "note.txt").write_text(f"v{i}\n")
        run_backup(cfg, tier, logical_date=when)
    return repo


@pytest.fixture
def repo(history, tmp_path):
    """A private copy of the history repository and the config pointing at it."""
    cfg, repo = _write(tmp_path, "repo")
    shutil.copytree(history, repo)
    return cfg, repo


def _plan(cfg, repo, tier, when, override=None):
    return plan(cfg, tier, when, type_override=override, storage=LocalStorage(repo, name="local"))


# (tier, logical date, --type, expected type, expected parent, expected chain without the new id, promoted reason)
CASES = {
    "incremental on the newest of any tier": ("daily", LATER, None, "incremental", D2, [W, M, D2], None),
    "differential on the newest full": ("monthly", LATER, None, "differential", W, [W], None),
    "full never has a parent": ("weekly", LATER, None, "full", None, [], None),
    "--type differential on a daily tier": ("daily", LATER, "differential", "differential", W, [W], None),
    "--type full on a daily tier": ("daily", LATER, "full", "full", None, [], None),
    "--type incremental on the weekly tier": ("weekly", LATER, "incremental", "incremental", D2, [W, M, D2], None),
}

# a logical date older than snapshots already taken (a clock behind, a backfill): the parent is still the newest
# data, never an older snapshot and never a silent promotion to full; the plan warns (the newest one named)
SKEWED = {
    "incremental between two snapshots": ("daily", "2026-01-05T12:00:00Z", "incremental", D2, [W, M, D2], D2),
    "incremental between a full and a differential": ("daily", "2026-01-04T12:00:00Z", "incremental", D2, [W, M, D2],
                                                      D2),
    "incremental before everything": ("daily", "2026-01-03T02:00:00Z", "incremental", D2, [W, M, D2], D2),
    "differential before every full": ("monthly", "2026-01-04T00:59:59Z", "differential", W, [W], D2),
    "full before the newest full": ("weekly", "2026-01-03T01:00:00Z", "full", None, [], D2),
    "the same instant as the weekly": ("daily", "2026-01-04T01:00:00Z", "incremental", D2, [W, M, D2], D2),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_parent_choice_and_promotion(repo, case):
    tier, when, override, typ, parent, chain, reason = case
    p = _plan(*repo, tier, when, override)
    assert (p.type, p.parent, p.chain[:-1], p.promoted_reason) == (typ, parent, chain, reason)
    assert p.requested_type == (override or {"daily": "incremental", "weekly": "full", "monthly": "differential"}[tier])
    assert p.chain[-1] == p.snapshot_id and not p.already_committed
    assert p.warnings == [] and p.sequence == len(HISTORY) + 1


@pytest.mark.parametrize("case", SKEWED.values(), ids=SKEWED.keys())
def test_an_older_logical_date_builds_on_the_newest_data_and_warns(repo, case):
    tier, when, typ, parent, chain, newest = case
    p = _plan(*repo, tier, when)
    assert (p.type, p.parent, p.chain[:-1], p.promoted_reason) == (typ, parent, chain, None)
    assert len(p.warnings) == 1 and newest in p.warnings[0] and "clock" in p.warnings[0], p.warnings
    assert p.sequence == len(HISTORY) + 1  # it will be `latest`


# (what is damaged, tier, expected type, parent, chain without the new id, promoted reason)
DAMAGE = {
    "newest incremental damaged: its parent is used": ([D2], "daily", "incremental", M, [W, M], None),
    "differential damaged: its dependants are skipped too": ([M], "daily", "incremental", D1, [W, D1], None),
    "the full damaged: every chain is broken": ([W], "daily", "full", None, [], NONE_EARLIER),
    "the full damaged: no differential": ([W], "monthly", "full", None, [], NO_FULL_EARLIER),
    "a damaged incremental does not matter to a differential": ([D1, D2], "monthly", "differential", W, [W], None),
}


@pytest.mark.parametrize("case", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_chain_is_never_a_parent(repo, case):
    damaged, tier, typ, parent, chain, reason = case
    cfg, root = repo
    for sid in damaged:  # docs/format.md layout: data/<id>/<source>.tar.zst
        (root / "data" / sid / "notes.tar.zst").unlink()
    p = _plan(cfg, root, tier, LATER)
    assert (p.type, p.parent, p.chain[:-1], p.promoted_reason) == (typ, parent, chain, reason)


def test_empty_repository_promotes_and_a_full_does_not(tmp_path):
    cfg, root = _write(tmp_path, "empty")
    for tier, typ, reason in [("daily", "full", NONE_EARLIER), ("monthly", "full", NO_FULL_EARLIER),
                              ("weekly", "full", None)]:
        p = _plan(cfg, root, tier, LATER)
        assert (p.type, p.parent, p.chain, p.promoted_reason) == (typ, None, [p.snapshot_id], reason)


@pytest.mark.parametrize("when,sid", [
    ("2026-01-08T02:00:00Z", "daily-20260108T020000Z"),
    ("2026-01-08T04:00:00+02:00", "daily-20260108T020000Z"),  # ids are UTC
    ("2026-01-08T02:00:00", "daily-20260108T020000Z"),  # no zone: UTC
    ("2026-01-08T02:00:00.999Z", "daily-20260108T020000Z"),  # whole seconds
])
def test_id_is_tier_and_logical_date_in_utc(repo, when, sid):
    assert _plan(*repo, "daily", when).snapshot_id == sid


def test_a_committed_snapshot_is_planned_as_itself(repo):
    """An Airflow retry of the same run gets the committed plan back, whatever happened since."""
    cfg, root = repo
    p = _plan(cfg, root, "daily", "2026-01-07T02:00:00Z")
    assert p.already_committed and (p.snapshot_id, p.type, p.parent, p.chain) == (D2, "incremental", M, [W, M, D2])
    (root / "data" / M / "notes.tar.zst").unlink()  # even when its chain is damaged now: no silent re-plan
    assert _plan(cfg, root, "daily", "2026-01-07T02:00:00Z").parent == M


@pytest.mark.parametrize("kwargs,named", [
    ({"type_override": "weird"}, "weird"),
    ({"sources": ["nope"]}, "nope"),
    ({"storages": ["nope"]}, "nope"),
    ({"logical_date": "yesterday"}, "yesterday"),
])
def test_bad_requests_name_the_culprit(repo, kwargs, named):
    cfg, root = repo
    kwargs = {"logical_date": LATER, **kwargs}
    with pytest.raises(ConfigError, match=named):
        plan(cfg, "daily", storage=LocalStorage(root, name="local"), **kwargs)


def test_chosen_sources_and_storages_are_kept_in_order(repo):
    cfg, root = repo
    p = plan(cfg, "daily", LATER, storage=LocalStorage(root, name="local"), sources=["other", "notes"],
             storages=["spare", "local"], comment="before the roll-out")
    assert (p.sources, p.storages, p.comment) == (["other", "notes"], ["spare", "local"], "before the roll-out")


def test_latest_is_the_newest_data_and_old_manifests_still_read():
    """``sequence`` orders snapshots by the data they hold; a manifest without it (an older version) or with a value
    that is not a count reads as 0: older than every sequenced one, ordered by logical date among its peers."""
    from backups.catalog import Catalog
    from backups.catalog.manifest import manifest_key, new_manifest, seal
    from backups.storage.memory import MemoryStorage

    storage = MemoryStorage()

    def put(sid, when, **extra):
        storage.put_bytes(manifest_key(sid), seal(new_manifest(
            id=sid, application="plan-test", tier=sid.split("-")[0], type="full", requested_type="full", parent=None,
            chain=[sid], logical_date=when, sources={}, started_at=when, finished_at=when,
            totals={"files": 0, "bytes": 0, "stored_files": 0, "stored_bytes": 0}, **extra)))

    put("daily-20260101T000000Z", "2026-01-01T00:00:00+00:00")  # legacy: no sequence
    put("daily-20260103T000000Z", "2026-01-03T00:00:00+00:00")  # legacy, newer date
    for i, bad in enumerate(["7", True, -3, 2.5, None, [1]]):
        put(f"weekly-2026010{i + 1}T120000Z", f"2026-01-0{i + 1}T12:00:00+00:00", sequence=bad)
    cat = Catalog(storage, "plan-test")
    assert all(s.sequence == 0 for s in cat.snapshots.values())
    assert cat.latest().id == "weekly-20260106T120000Z" and cat.latest("daily").id == "daily-20260103T000000Z"
    assert cat.next_sequence() == 1
    put("daily-20251231T000000Z", "2025-12-31T00:00:00+00:00", sequence=1)  # taken later, by a clock behind
    cat = Catalog(storage, "plan-test")
    assert cat.get("latest").id == "daily-20251231T000000Z" == cat.latest("daily").id
    assert cat.latest("weekly").id == "weekly-20260106T120000Z"
    assert cat.next_sequence() == 2
    assert [s["sequence"] for s in (x.summary() for x in cat.ordered("daily"))] == [1, 0, 0]


def test_a_logical_date_ahead_of_the_clock_is_refused_within_tolerance_accepted(repo):
    from datetime import UTC, datetime

    cfg, root = repo
    now = datetime(2026, 1, 8, 2, 0, tzinfo=UTC)
    storage = LocalStorage(root, name="local")
    assert plan(cfg, "daily", "2026-01-08T02:05:00Z", storage=storage, now=now).snapshot_id == "daily-20260108T020500Z"
    for ahead in ("2026-01-08T02:05:01Z", "2062-01-08T02:00:00Z", "2026-01-08T04:00:00+01:00"):
        with pytest.raises(ConfigError) as info:
            plan(cfg, "daily", ahead, storage=storage, now=now)
        assert "in the future" in str(info.value) and "now 2026-01-08T02:00:00+00:00" in str(info.value)
