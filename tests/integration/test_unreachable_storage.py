"""The one unreachable-storage rule (issue 17, ``backups.storage.reach``), with a storage whose S3 server is down
(a loopback port nothing listens on): each operation names it and goes on with the others, unless it needs that
very storage (named with ``--storage``, or a backup's primary).

Before: ``backupctl unlock`` aborted at the first unreachable storage (the locks of the others stayed), and the
rule was written five times (``cli._storage``, ``cmd_unlock``, ``each_storage``, ``find_snapshot``, the backup's
system check)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from backups.config import load_config
from backups.demo import fmr
from backups.errors import StorageError
from tests.helpers import free_port, run_backup, write_config

STALE = {"lock_format": 1, "scope": "repo", "exclusive": True, "operation": "prune", "host": "worker-7", "pid": 99,
         "run": "backup_retention/x/prune try 1"}


class DeadS3Resolver:
    """Every S3 connection points at a loopback port nothing listens on (one attempt, short timeouts)."""

    def __init__(self) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"

    def s3_client(self, conn_id: str, timeout: float | None = None, max_attempts: int | None = None):
        from tests.unit.storage.test_s3 import make_client

        return make_client(self.url, retries=1, connect_timeout=1, read_timeout=1)

    def sftp_client_factory(self, conn_id: str, timeout: float | None = None):
        raise AssertionError("not used")

    def secret(self, conn_id: str) -> str:
        raise AssertionError("not used")

    def postgres_dsn(self, conn_id: str) -> str:
        raise AssertionError("not used")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unreachable")
    home, root = tmp / "home", tmp / "repo"
    fmr.generate(home, scale=0.1, seed=12)
    # "cloud" comes first in config order: every default walk meets the dead storage before the live one
    path = write_config(tmp / "c.yaml", home, root, tier_storages="local")
    path.write_text(path.read_text().replace("storages:\n", "storages:\n  cloud: {type: s3, conn_id: backup_s3, "
                                                             "bucket: b, prefix: p}\n", 1))
    cfg = load_config(path)
    resolver = DeadS3Resolver()
    run_backup(cfg, "weekly", logical_date="2026-01-04T01:00:00Z", resolver=resolver)
    return {"cfg": cfg, "resolver": resolver, "root": root, "path": path}


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    """The retrying wrapper's backoff (seconds per dead storage) is not what is tested here."""
    monkeypatch.setattr("backups.storage.wrappers.RetryingStorage.__init__.__defaults__", (1, 0.0, 0.0))


def test_each_storage_names_the_dead_one_and_goes_on(app):
    from backups.storage.reach import each_storage

    unreachable: dict[str, str] = {}
    got = [s.name for s in each_storage(app["cfg"], None, app["resolver"], unreachable)]
    assert got == ["local"] and list(unreachable) == ["cloud"]
    with pytest.raises(StorageError):  # named by the user: needed
        list(each_storage(app["cfg"], ["cloud"], app["resolver"], {}))


def test_restore_and_list_find_the_live_storage(app):
    from backups.engine.locate import find_snapshot
    from backups.storage.reach import first_serving

    st, _cat, snap, skipped = find_snapshot(app["cfg"], "latest", resolver=app["resolver"])
    assert st.name == "local" and snap.id == "weekly-20260104T010000Z" and list(skipped) == ["cloud"]
    with pytest.raises(StorageError):
        find_snapshot(app["cfg"], "latest", storage="cloud", resolver=app["resolver"])
    with pytest.raises(StorageError, match=r"no storage can be read:\n  cloud: .*\n  local: "):
        first_serving(app["cfg"], None, app["resolver"], lambda s: (_ for _ in ()).throw(StorageError("refused")))


def test_backup_goes_ahead_when_a_copy_target_is_dead_but_not_its_primary(app):
    from backups.commands.backup import Selection, SystemStateError, check_system_state

    sel = Selection("weekly", None, ["app_files"], ["local", "cloud"], "")
    state = check_system_state(app["cfg"], sel, app["resolver"])
    assert list(state.unavailable) == ["cloud"] and "local" in state.free_bytes
    with pytest.raises(SystemStateError, match="storage cloud"):
        check_system_state(app["cfg"], Selection("weekly", None, ["app_files"], ["cloud", "local"], ""), app["resolver"])


def test_unlock_handles_each_storage_on_its_own(app, monkeypatch, capsys):
    """The first (dead) storage aborted everything: the stale lock on the live one stayed."""
    from backups import cli

    locks = app["root"] / "local" / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    old = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    (locks / "0123abcd.json").write_text(json.dumps({**STALE, "created": old, "heartbeat": old}))
    monkeypatch.setattr(cli, "_load", lambda args: (app["cfg"], app["resolver"]))
    code = cli.main(["unlock", "--json"])
    captured = capsys.readouterr()
    assert code == 5, captured.err
    doc = json.loads(captured.out)
    assert [r["storage"] for r in doc["removed"]] == ["local"] and list(doc["unreachable"]) == ["cloud"]
    assert "storage cloud unreachable" in captured.err and not locks.exists()
