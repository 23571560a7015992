"""A copy never takes "the id is already there" for "the data is already there" (issue 16: green means restorable).

Two deployments that share a replica (the same bucket and prefix, or here the same folder), or a re-run after the
primary was lost, produce the same snapshot id with other data. The copy used to skip the id, the backup said
OK, and a restore from the replica returned the other deployment's data.
"""

from __future__ import annotations

import pytest

from backups.catalog import Catalog
from backups.config import load_config
from backups.demo import fmr
from backups.errors import RefusedError
from backups.storage.local import LocalStorage
from tests.helpers import run_backup, write_config

WHEN = "2026-03-01T01:00:00Z"


def _deployment(tmp_path, name: str, shared, seed: int):
    home, root = tmp_path / name / "home", tmp_path / name / "repo"
    fmr.generate(home, scale=0.05, seed=seed)
    storages = f'  shared: {{type: local, path: "{shared}"}}\n'
    return load_config(write_config(tmp_path / name / "c.yaml", home, root, extra_storages=storages,
                                    tier_storages="local, shared"))


def test_a_replica_holding_the_same_id_with_other_data_is_refused_not_skipped(tmp_path):
    shared = tmp_path / "shared"
    first = _deployment(tmp_path, "a", shared, seed=1)
    second = _deployment(tmp_path, "b", shared, seed=2)
    snap, _ = run_backup(first, "weekly", logical_date=WHEN)
    before = {o["key"]: o["sha256"] for o in Catalog(LocalStorage(shared), first.application).get(snap.id).objects()}
    with pytest.raises(RefusedError) as ei:
        run_backup(second, "weekly", logical_date=WHEN)
    assert ei.value.exit_code == 7 and "shared" in ei.value.message and snap.id in ei.value.message
    assert "own bucket/prefix" in ei.value.hint
    after = {o["key"]: o["sha256"] for o in Catalog(LocalStorage(shared), first.application).get(snap.id).objects()}
    assert after == before  # the first deployment's copy is untouched
    # the same deployment's retry (the same data) still resumes as a no-op
    again, _ = run_backup(first, "weekly", logical_date=WHEN)
    assert again.id == snap.id
