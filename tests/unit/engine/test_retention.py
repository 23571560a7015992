"""Retention: per-tier rules, chains never broken, manifest removed first, orphans after a grace period."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

from backups.catalog import Catalog
from backups.config import load_config
from backups.engine.checker import verify
from backups.engine.restorer import restore
from backups.engine.retention import apply_prune, plan_prune
from backups.storage import LocalStorage
from tests.helpers import run_backup, write_config


def _cfg(app, daily="{keep_daily: 2}", weekly="{keep_weekly: 1}"):
    path = write_config(app["tmp"] / "r.yaml", app["home"], app["root"])
    text = path.read_text()
    text = text.replace('storages: [local]}\n  weekly', f'storages: [local], retention: {daily}}}\n  weekly', 1)
    text = text.replace('storages: [local]}\n  monthly', f'storages: [local], retention: {weekly}}}\n  monthly', 1)
    path.write_text(text)
    return load_config(path)


def test_rules_keep_what_they_say_and_never_break_a_chain(app):
    cfg = _cfg(app)
    start = datetime(2026, 1, 4, 1, 0, tzinfo=UTC)  # a Sunday
    for week in range(2):
        run_backup(cfg, "weekly", logical_date=(start + timedelta(weeks=week)).isoformat())
        for day in range(1, 4):
            run_backup(cfg, "daily", logical_date=(start + timedelta(weeks=week, days=day, hours=1)).isoformat())
    storage = LocalStorage(app["root"] / "local")
    cat = Catalog(storage, "fmr-test")
    assert len(cat.ordered()) == 8
    plan = plan_prune(cfg, storage, cat)
    # daily: the 2 newest days; their incremental chains reach back to the second weekly full
    kept = set(plan.keep)
    assert {"daily-20260113T020000Z", "daily-20260114T020000Z"} <= kept
    assert "weekly-20260111T010000Z" in kept  # keep_weekly 1 — and needed by the kept dailies
    assert "daily-20260112T020000Z" in kept and any(r.startswith("needed by") for r in plan.keep["daily-20260112T020000Z"])
    assert set(plan.forget) == {"weekly-20260104T010000Z", "daily-20260105T020000Z", "daily-20260106T020000Z",
                                "daily-20260107T020000Z"}
    apply_prune(storage, cat, plan)
    cat2 = Catalog(storage, "fmr-test")
    assert sorted(cat2.snapshots) == sorted(kept)
    assert verify(storage, cat2, read_data=True).ok
    assert not list(storage.list("data/weekly-20260104T010000Z/"))
    restore(storage, cat2, cat2.get("latest"), app["tmp"] / "after-prune")


def test_no_rule_keeps_everything_and_dry_run_changes_nothing(app):
    cfg = load_config(write_config(app["tmp"] / "n.yaml", app["home"], app["root"]))
    run_backup(cfg, "weekly", logical_date="2026-01-04T01:00:00Z")
    run_backup(cfg, "weekly", logical_date="2026-01-11T01:00:00Z")
    storage = LocalStorage(app["root"] / "local")
    plan = plan_prune(cfg, storage, Catalog(storage, "fmr-test"))
    assert plan.forget == [] and len(plan.keep) == 2


def test_orphans_are_removed_after_the_grace_period_only(app):
    cfg = _cfg(app)
    run_backup(cfg, "weekly", logical_date="2026-01-04T01:00:00Z")
    storage = LocalStorage(app["root"] / "local")
    storage.put_bytes("data/weekly-20260101T010000Z/app_db.tar.zst", b"left by a killed run")
    # an OLD logical date whose objects were just written (a backfill still running): aged by mtime, kept
    storage.put_bytes("data/weekly-20250104T020000Z/app_db.tar.zst", b"a run still in progress")
    (storage.root / "data" / "weekly-20260101T010000Z" / ".tmp-dead-app_db.sums.zst").write_bytes(b"partial")
    three_days = time.time() - 3 * 86400
    for p in (storage.root / "data" / "weekly-20260101T010000Z").iterdir():
        os.utime(p, (three_days, three_days))
    cat = Catalog(storage, "fmr-test")
    plan = plan_prune(cfg, storage, cat)
    assert plan.orphans == ["weekly-20260101T010000Z"] and plan.kept_orphans == ["weekly-20250104T020000Z"]
    assert plan.temps == ["data/weekly-20260101T010000Z/.tmp-dead-app_db.sums.zst"]
    apply_prune(storage, cat, plan)
    assert not storage.exists("data/weekly-20260101T010000Z/app_db.tar.zst")
    assert list(storage.temps()) == []
    assert storage.exists("data/weekly-20250104T020000Z/app_db.tar.zst")
    assert Catalog(storage, "fmr-test").get("weekly-20260104T010000Z")


def test_a_keep_within_days_reaching_before_year_1_keeps_everything(app):
    """``keep_within_days: 1000000`` (an operator's "forever"). Before: every prune was an OverflowError traceback."""
    cfg = _cfg(app, daily="{keep_within_days: 1000000}", weekly="{keep_within_days: 999999999}")
    run_backup(cfg, "weekly", logical_date="2026-01-04T01:00:00Z")
    run_backup(cfg, "daily", logical_date="1970-01-05T01:00:00Z")
    run_backup(cfg, "daily", logical_date="2026-01-06T01:00:00Z")
    storage = LocalStorage(app["root"] / "local")
    plan = plan_prune(cfg, storage, Catalog(storage, "fmr-test"))
    assert plan.forget == [] and len(plan.keep) == 3
    assert all("keep_within_days" in " ".join(r) for r in plan.keep.values())
