"""Archive storages (S3 GLACIER on moto's server) through ``backupctl``: ``status`` counts the frozen objects per
storage and tier; reading a frozen object (``show --files``) names the commands that thaw it, never a Python
function; ``restore --thaw-timeout`` / ``drill --thaw-timeout`` bound the thaw wait (exit 5 naming the option).

moto thaws at once; real S3 takes hours: where a test needs a thaw that does not finish, ``restore_request`` reports
"not yet" (S3's answer for a pending restore), the one thing moto cannot play."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest

from backups.cli import main
from backups.config import load_config
from backups.storage.s3 import S3Storage
from tests.helpers import LoopbackResolver, make_app, run_backup
from tests.unit.storage.test_s3 import BUCKET, s3_endpoint  # noqa: F401 - fixture

WEEKLY = "weekly-20260104T010000Z"
CONFIG = """\
application: fmr-test
sources:
  app_db:    {{type: sqlite, path: "{home}/app.db"}}
  app_files: {{type: files, root: "{home}", include: ["config/**", "uploads/**"]}}
storages:
  local:   {{type: local, path: "{root}/local"}}
  glacier: {{type: s3, conn_id: archive_s3, bucket: {bucket}, prefix: "{prefix}", storage_class: GLACIER}}
tiers:
  weekly: {{type: full, schedule: "0 1 * * 0", sources: [app_db, app_files], storages: [local, glacier]}}
  daily:  {{type: incremental, schedule: "0 2 * * 1-6", sources: [app_db], storages: [local]}}
drill:
  tiers: [weekly]
  storage: glacier
  approve_archive: true
  scratch_dir: "{tmp}/scratch"
"""


@pytest.fixture
def archived(tmp_path, s3_endpoint, monkeypatch):  # noqa: F811 - the imported fixture
    """The sample app's weekly full on a local storage and replicated to a GLACIER storage (moto)."""
    app = make_app(tmp_path, scale=0.1, seed=7)
    path = tmp_path / "archive.yaml"
    path.write_text(CONFIG.format(home=app["home"], root=tmp_path / "repo", bucket=BUCKET, tmp=tmp_path,
                                  prefix=f"arch-{uuid.uuid4().hex[:8]}"))
    resolver = LoopbackResolver(s3_endpoint, None)
    monkeypatch.setattr("backups.connections.resolver_for", lambda cfg: resolver)
    monkeypatch.setenv("BACKUP_STATUS_DIR", str(tmp_path / "status"))
    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path))
    cfg = load_config(path)
    run_backup(cfg, "weekly", logical_date="2026-01-04T01:00:00Z", resolver=resolver)
    return {**app, "path": path, "cfg": cfg, "resolver": resolver}


def _never_thawed(monkeypatch) -> list[str]:
    asked: list[str] = []

    def pending(self, key, days=1):
        asked.append(key)
        return False

    monkeypatch.setattr(S3Storage, "restore_request", pending)
    return asked


def test_status_counts_frozen_objects_per_storage_and_tier(archived, capsys):
    assert main(["--config", str(archived["path"]), "status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    st = {s["storage"]: s for s in doc["storages"]}
    data = [o for o in archived["resolver"].s3_client("x").list_objects_v2(Bucket=BUCKET)["Contents"]
            if "/data/" in o["Key"] and o["Key"].split("/")[0] in st["glacier"]["describe"]]
    frozen = st["glacier"]["frozen"]
    assert frozen["objects"] == len(data) > 0 and frozen["tiers"] == {"weekly": len(data)}
    assert frozen["bytes"] == sum(o["Size"] for o in data)
    assert st["local"]["frozen"] is None  # not an archive storage
    assert main(["--config", str(archived["path"]), "status"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"glacier: {len(data)} frozen object\(s\), .* \(weekly: {len(data)}\)", out), out
    assert "`backupctl restore`" in out and "--thaw-timeout" in out


def test_reading_a_frozen_object_names_the_commands_that_thaw_it(archived, capsys):
    code = main(["--config", str(archived["path"]), "show", WEEKLY, "--storage", "glacier", "--files"])
    err = capsys.readouterr().err
    assert code == 5, err
    assert "object is in GLACIER" in err and "`backupctl restore`" in err and "--thaw-timeout" in err, err
    assert "()" not in err and "restore_request" not in err  # no Python function named to a user
    assert main(["--config", str(archived["path"]), "show", WEEKLY, "--storage", "local", "--files"]) == 0


def test_restore_thaw_timeout_bounds_the_wait(archived, capsys, monkeypatch):
    asked = _never_thawed(monkeypatch)
    target = archived["tmp"] / "restored"
    t0 = time.monotonic()
    code = main(["--config", str(archived["path"]), "restore", WEEKLY, "--storage", "glacier", "--target", str(target),
                 "--no-validate", "--poll-seconds", "0.2", "--thaw-timeout", "1"])
    err = capsys.readouterr().err
    assert code == 5 and time.monotonic() - t0 < 30, err
    assert "still not thawed after" in err and "thaw timeout 1 s" in err and "--thaw-timeout" in err, err
    assert asked and not target.exists()  # the thaw was requested; nothing restored
    monkeypatch.undo()  # thawed now (moto at once): the same restore goes through
    monkeypatch.setattr("backups.connections.resolver_for", lambda cfg: archived["resolver"])
    monkeypatch.setenv("BACKUP_STAGING", str(archived["tmp"]))
    assert main(["--config", str(archived["path"]), "restore", WEEKLY, "--storage", "glacier", "--target",
                 str(target), "--no-validate", "--poll-seconds", "0.2", "--thaw-timeout", "1m"]) == 0


@pytest.mark.parametrize("bad", ["0", "-5", "soon", "3w"])
def test_a_bad_thaw_timeout_is_a_usage_error(archived, capsys, bad):
    with pytest.raises(SystemExit) as ei:
        main(["--config", str(archived["path"]), "restore", WEEKLY, "--target", "/tmp/x", f"--thaw-timeout={bad}"])
    assert ei.value.code == 2 and "is not a duration" in capsys.readouterr().err


def test_drill_thaw_timeout_fails_the_tier_naming_it(archived, capsys, monkeypatch):
    _never_thawed(monkeypatch)
    code = main(["--config", str(archived["path"]), "drill", "--poll-seconds", "0.2", "--thaw-timeout", "1", "--json"])
    v = json.loads(capsys.readouterr().out)["verdict"]
    assert code == 10 and not v["passed"]
    assert any("still not thawed after" in f and "thaw timeout 1 s" in f for f in v["findings"]), v["findings"]
