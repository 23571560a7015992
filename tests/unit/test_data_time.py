"""One age per snapshot (issue 20 item 10): ``catalog.data_time`` — when the data was read (the backup run's start in
the manifest) — is the basis of the status's age and of the drill's RPO; a logical date in the past does not make
the data older."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backups.catalog import Catalog, data_time
from backups.commands.status import status
from backups.config import load_config
from backups.demo import fmr
from backups.errors import IntegrityError
from backups.storage import open_storage
from tests.helpers import run_backup, write_config


def test_data_time_is_the_run_start_else_the_commit_else_the_logical_date():
    doc = {"id": "daily-x", "logical_date": "2026-12-01T04:00:00+00:00", "started_at": "2026-12-07T10:00:00+00:00",
           "finished_at": "2026-12-07T10:05:00+00:00"}
    assert data_time(doc) == datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    assert data_time({**doc, "started_at": None}) == datetime(2026, 12, 7, 10, 5, tzinfo=UTC)
    assert data_time({"id": "x", "logical_date": "2026-12-01T04:00:00"}) == datetime(2026, 12, 1, 4, tzinfo=UTC)
    with pytest.raises(IntegrityError, match="records no time"):
        data_time({"id": "x", "started_at": "garbage"})


def test_the_status_ages_a_snapshot_from_when_its_data_was_read_not_its_logical_date(tmp_path):
    home = tmp_path / "home"
    fmr.generate(home, scale=0.1, seed=5)
    cfg = load_config(write_config(tmp_path / "c.yaml", home, tmp_path / "repo"))
    before = datetime.now(UTC).replace(microsecond=0)
    snap, _ = run_backup(cfg, "weekly", logical_date=(before - timedelta(hours=26)).isoformat())
    stored = Catalog(open_storage(cfg, "local"), cfg.application).get(snap.id)
    assert before <= data_time(stored) <= datetime.now(UTC)
    now = datetime.now(UTC)
    weekly = next(t for t in status(cfg, now=now).to_dict()["tiers"] if t["tier"] == "weekly")
    assert weekly["age_seconds"] == pytest.approx((now - data_time(stored)).total_seconds(), abs=0.2)
    assert weekly["age_seconds"] < 600  # not 26 h: the logical date is not when the data was read
