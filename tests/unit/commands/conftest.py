"""The restore command tests' application: a small FMR tree with one weekly full backup (``WEEKLY``)."""

from __future__ import annotations

import pytest

from tests.helpers import make_app, run_backup

WEEKLY = "weekly-20260104T010000Z"


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path))
    a = make_app(tmp_path, scale=0.2, seed=5)
    run_backup(a["cfg"], "weekly", logical_date="2026-01-04T01:00:00Z")
    return a
