"""The task bodies of the backup DAGs without Airflow: selection, system checks, retry-safety, cleanup."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from backups.catalog import Catalog
from backups.commands import backup as steps
from backups.config import load_config
from backups.demo import fmr
from backups.errors import ConfigError, SystemStateError
from backups.storage import open_storage
from backups.storage.local import LocalStorage
from tests.helpers import write_config

pytestmark = pytest.mark.airflow  # lives with the DAG tests (one process), although it needs no Airflow


@pytest.fixture
def env(tmp_path):
    home, root = tmp_path / "home", tmp_path / "repo"
    fmr.generate(home, scale=0.2, seed=4)
    path = write_config(tmp_path / "backups.yaml", home, root,
                        extra_storages=f'  offsite: {{type: local, path: "{root}/offsite"}}\n')
    return {"home": home, "root": root, "cfg": load_config(path), "tmp": tmp_path}


def test_manual_selection_keeps_config_order_and_rejects_unknown_names(env):
    cfg = steps.with_manual_tier(env["cfg"])
    sel = steps.selection(cfg, steps.MANUAL_TIER, {"backup_type": "incremental", "sources": ["system_state", "app_db"],
                                                   "storages": ["offsite", "local"], "comment": "x"})
    assert (sel.type, sel.sources, sel.storages, sel.comment) == ("incremental", ["app_db", "system_state"],
                                                                  ["local", "offsite"], "x")
    with pytest.raises(ConfigError, match="params.sources: unknown source 'nope'"):
        steps.selection(cfg, steps.MANUAL_TIER, {"sources": ["nope"]})
    tier = steps.selection(env["cfg"], "daily")
    assert (tier.type, tier.storages) == (None, ["local"])


def test_a_tier_named_manual_is_refused(env):
    cfg = env["cfg"]
    clash = cfg.model_copy(update={"tiers": {**cfg.tiers, "manual": cfg.tiers["daily"]}})
    with pytest.raises(ConfigError, match="tiers.manual: the tier name 'manual' is reserved"):
        steps.with_manual_tier(clash)


def test_system_state_reports_every_problem_and_whether_a_retry_helps(env, monkeypatch):
    cfg = env["cfg"]
    (env["home"] / "app.db").unlink()
    with pytest.raises(SystemStateError) as info:
        steps.check_system_state(cfg, steps.selection(cfg, "daily"))
    assert info.value.retryable is False
    assert "source app_db (sqlite): SQLite database" in str(info.value) and "fix sources.app_db.path" in str(info.value)

    fmr.generate(env["home"], scale=0.2, seed=4)
    monkeypatch.setattr(LocalStorage, "free_bytes", lambda self: 1000)
    with pytest.raises(SystemStateError, match=r"storage local \(local\): only 0.0 MB free") as info:
        steps.check_system_state(cfg, steps.selection(cfg, "daily"))
    assert info.value.retryable is False


def test_unreachable_postgres_is_retryable(env, tmp_path):
    path = write_config(tmp_path / "pg.yaml", env["home"], env["root"], tier_sources="app_db, pg",
                        extra_sources='  pg: {type: postgres, dsn: "host=127.0.0.1 port=1 user=x dbname=x"}\n')
    cfg = load_config(path)
    with pytest.raises(SystemStateError, match="source pg \\(postgres\\): cannot connect") as info:
        steps.check_system_state(cfg, steps.selection(cfg, "daily"))
    assert info.value.retryable is True


def _run(cfg, tier, when, scratch):
    sel = steps.selection(cfg, tier)
    state = steps.check_system_state(cfg, sel)
    prep = steps.plan_run(cfg, sel, when, state)
    extracts = [steps.extract_source(cfg, prep.plan, s, scratch) for s in prep.plan.sources]
    committed = steps.commit_snapshot(cfg, prep.plan)
    uploads = [steps.replicate_to(cfg, prep.plan, s) for s in prep.storages]
    return prep, extracts, committed, uploads


def test_a_rerun_of_a_committed_run_only_verifies(env, tmp_path):
    cfg = load_config(write_config(tmp_path / "two.yaml", env["home"], env["root"], tier_storages="local, offsite",
                                   extra_storages=f'  offsite: {{type: local, path: "{env["root"]}/offsite"}}\n'))
    when = datetime(2026, 4, 5, 1, 0, tzinfo=UTC)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    prep, extracts, committed, uploads = _run(cfg, "weekly", when, scratch)
    assert committed.snapshot_id == "weekly-20260405T010000Z" and not committed.already_committed
    assert [u.role for u in uploads] == ["primary", "replica"] and uploads[1].copied_bytes > 0
    prep2, extracts2, committed2, uploads2 = _run(cfg, "weekly", when, scratch)  # e.g. the run is cleared
    assert prep2.plan.already_committed is True
    assert all(e.skipped == "already committed" for e in extracts2)
    assert all(e.to_dict() == {"source": e.source, "skipped": "already committed"} for e in extracts2)
    assert committed2.snapshot_id == committed.snapshot_id and committed2.already_committed
    assert uploads2[1].copied_bytes == 0
    for s in ("local", "offsite"):
        assert steps.check_integrity(cfg, prep2.plan, s).ok


def test_cleanup_removes_scratch_and_keeps_uncommitted_objects_for_a_retry(env, tmp_path, monkeypatch):
    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    (tmp_path / "staging").mkdir()
    cfg = env["cfg"]
    sel = steps.selection(cfg, "daily")
    prep = steps.plan_run(cfg, sel, datetime(2026, 4, 6, 2, 0, tzinfo=UTC),
                          steps.check_system_state(cfg, sel))
    with steps.task_scratch("backup_daily", "run-1", "extract-app_db") as scratch:
        steps.extract_source(cfg, prep.plan, "app_db", scratch)
        (scratch / "leftover").write_text("x")
    assert steps.run_scratch("backup_daily", "run-1").is_dir()  # the task removed its own dir, not the run's
    out = steps.cleanup(cfg, prep.plan, "backup_daily", "run-1")
    assert not steps.run_scratch("backup_daily", "run-1").exists()
    assert out.committed is False and out.uncommitted_objects > 0
    primary = open_storage(cfg, "local")
    assert list(primary.list(f"data/{prep.plan.snapshot_id}/"))  # still there: a retry reuses them


def test_a_copy_target_that_is_down_does_not_stop_the_backup_and_is_backfilled(env, tmp_path):
    """The primary is healthy, the offsite target is not: the run backs up anyway (its upload fails, so the run is
    red), and the next run's upload back-fills the snapshot the target missed."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the offsite directory should be")
    down = write_config(tmp_path / "down.yaml", env["home"], env["root"], tier_storages="local, offsite",
                        extra_storages=f'  offsite: {{type: local, path: "{blocker}/offsite"}}\n')
    cfg = load_config(down)
    sel = steps.selection(cfg, "weekly")
    state = steps.check_system_state(cfg, sel)
    assert list(state.unavailable) == ["offsite"]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(Exception, match="offsite"):
        _run(cfg, "weekly", datetime(2026, 4, 5, 1, 0, tzinfo=UTC), scratch)
    assert [s.id for s in Catalog(open_storage(cfg, "local"), cfg.application).ordered()] == ["weekly-20260405T010000Z"]
    # the target is repaired; the next run (the next weekly full) copies its own snapshot and back-fills the missed one
    up = load_config(write_config(tmp_path / "up.yaml", env["home"], env["root"], tier_storages="local, offsite",
                                  extra_storages=f'  offsite: {{type: local, path: "{tmp_path}/offsite"}}\n'))
    _, _, _, uploads = _run(up, "weekly", datetime(2026, 4, 12, 1, 0, tzinfo=UTC), scratch)
    assert uploads[1].backfilled == ["weekly-20260405T010000Z"]
    offsite = Catalog(open_storage(up, "offsite"), up.application)
    assert [s.id for s in offsite.ordered()] == ["weekly-20260405T010000Z", "weekly-20260412T010000Z"]


def test_step_results_travel_as_the_same_dicts_and_come_back_typed(env, tmp_path):
    """What a task pushes (``to_dict()``) has exactly the keys the next task reads; ``from_dict`` rebuilds the result."""
    cfg = load_config(write_config(tmp_path / "two.yaml", env["home"], env["root"], tier_storages="local, offsite",
                                   extra_storages=f'  offsite: {{type: local, path: "{env["root"]}/offsite"}}\n'))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    prep, extracts, committed, uploads = _run(cfg, "weekly", datetime(2026, 4, 5, 1, 0, tzinfo=UTC), scratch)
    pushed = prep.to_dict()
    assert set(pushed) == {"plan", "data_sources", "file_sources", "storages", "estimates"}
    assert isinstance(pushed["plan"], dict) and pushed["plan"]["snapshot_id"] == committed.snapshot_id
    assert steps.PreparedRun.from_dict(pushed) == prep
    assert set(uploads[0].to_dict()) == {"storage", "role", "objects", "bytes", "seconds"}
    assert set(uploads[1].to_dict()) == {"storage", "role", "copied_bytes", "seconds", "backfilled"}
    assert set(extracts[0].to_dict()) == {"source", "files", "bytes", "stored_bytes", "seconds", "warnings"}
    for result in (*extracts, committed, *uploads):
        assert type(result).from_dict(result.to_dict()) == result
    integrity = steps.check_integrity(cfg, prep.plan, "offsite")
    assert steps.IntegrityResult.from_dict(integrity.to_dict()) == integrity and integrity.ok
