"""Redundant storage end to end on real servers: local + S3 (moto) + SFTP (sshd, encrypted at rest).

The source is read once and the snapshot is copied to every storage (verified, manifest last); a target that
was down is back-filled by the next run; damage on one target is named by verify and a restore from another
target still works; a wrong encryption key is refused and writes nothing.
"""

from __future__ import annotations

import os
import uuid

import pytest

from backups.catalog import Catalog
from backups.config import load_config
from backups.demo import fmr
from backups.engine.checker import verify
from backups.engine.restorer import restore
from backups.errors import EncryptionError, StorageError
from backups.storage import open_storage
from tests.helpers import LoopbackResolver, app_tree, db_rows, run_backup, write_config
from tests.unit.storage.test_s3 import BUCKET, make_client, s3_endpoint  # noqa: F401 - fixture
from tests.unit.storage.test_sftp import sshd  # noqa: F401 - fixture

KEY = "a1" * 32


Resolver = LoopbackResolver


@pytest.fixture
def multi(tmp_path, s3_endpoint, sshd, monkeypatch):  # noqa: F811
    home, root = tmp_path / "home", tmp_path / "repo"
    fmr.generate(home, scale=0.4, seed=8)
    prefix = uuid.uuid4().hex[:10]
    monkeypatch.setenv("OFFSITE_KEY", KEY)
    storages = (f'  cloud: {{type: s3, conn_id: backup_s3, bucket: {BUCKET}, prefix: "{prefix}"}}\n'
                f'  offsite: {{type: sftp, conn_id: backup_sftp, path: "{tmp_path}/sftp", encryption: {{key_env: OFFSITE_KEY}}}}\n')
    cfg_path = write_config(tmp_path / "c.yaml", home, root, extra_storages=storages, tier_storages="local, cloud, offsite")
    return {"home": home, "cfg": load_config(cfg_path), "resolver": Resolver(s3_endpoint, sshd), "tmp": tmp_path,
            "sftp_root": tmp_path / "sftp", "sshd": sshd}


def _open(m, name):
    return open_storage(m["cfg"], name, m["resolver"])


def test_fan_out_verify_damage_and_restore_from_another_target(multi):
    m = multi
    snap, _ = run_backup(m["cfg"], "weekly", logical_date="2026-07-05T01:00:00Z", resolver=m["resolver"])
    fmr.mutate(m["home"], seed=3)
    inc, _ = run_backup(m["cfg"], "daily", logical_date="2026-07-06T02:00:00Z", resolver=m["resolver"])
    expected_files, expected_rows = app_tree(m["home"]), db_rows(m["home"] / "app.db")
    for name in ("local", "cloud", "offsite"):
        s = _open(m, name)
        cat = Catalog(s, "fmr-test")
        assert [x.id for x in cat.ordered()] == [snap.id, inc.id], name
        assert verify(s, cat, read_data=True).ok, name
    offsite = _open(m, "offsite")
    assert Catalog(offsite, "fmr-test").get(inc.id).doc["key_fingerprint"] == offsite.key_fingerprint
    # objects on the SFTP target are encrypted at rest: no tar header, no zstd magic visible
    raw = (m["sftp_root"] / snap.sources["system_state"]["objects"]["archive"]["key"]).read_bytes()
    assert b"ustar" not in raw and not raw.startswith(b"\x28\xb5\x2f\xfd") and b"fmr-state" not in raw
    # damage one object on the cloud target: verify names it; restore from another target still works
    cloud = _open(m, "cloud")
    victim = inc.sources["app_files"]["objects"]["archive"]["key"]
    cloud.delete(victim)  # objects are never overwritten: damage = replace by hand
    cloud.put_bytes(victim, b"tampered")
    report = verify(cloud, Catalog(cloud, "fmr-test"), read_data=True)
    assert not report.ok and any(victim in p for p in report.problems)
    cloud.delete(snap.sources["app_db"]["objects"]["index"]["key"])
    report = verify(cloud, Catalog(cloud, "fmr-test"))
    assert any("missing" in p for p in report.problems)
    for name in ("offsite", "local"):
        s = open_storage(m["cfg"], name, m["resolver"], read_only=True)
        cat = Catalog(s, "fmr-test")
        out = m["tmp"] / f"restore-{name}"
        restore(s, cat, cat.get("latest"), out)
        assert app_tree(out / "app_files") == expected_files
        assert db_rows(out / "app_db" / "app.db") == expected_rows


def test_target_down_is_backfilled_by_next_run(multi):
    m = multi
    m["sshd"].kill()
    try:
        with pytest.raises(StorageError) as info:
            run_backup(m["cfg"], "weekly", logical_date="2026-07-05T01:00:00Z", resolver=m["resolver"])
        assert "offsite" in str(info.value)
    finally:
        m["sshd"].start()
    # local and cloud hold the snapshot; offsite has nothing committed
    assert Catalog(_open(m, "cloud"), "fmr-test").snapshots
    # the next run (a different day) back-fills the missing weekly on offsite
    run_backup(m["cfg"], "daily", logical_date="2026-07-06T02:00:00Z", resolver=m["resolver"])
    ids = sorted(Catalog(_open(m, "offsite"), "fmr-test").snapshots)
    assert ids == ["daily-20260706T020000Z", "weekly-20260705T010000Z"]
    assert verify(_open(m, "offsite"), Catalog(_open(m, "offsite"), "fmr-test"), read_data=True).ok


def test_wrong_or_missing_key_is_refused_and_writes_nothing(multi, monkeypatch):
    m = multi
    run_backup(m["cfg"], "weekly", logical_date="2026-07-05T01:00:00Z", resolver=m["resolver"])
    before = sorted(p.relative_to(m["sftp_root"]) for p in m["sftp_root"].rglob("*"))
    monkeypatch.setenv("OFFSITE_KEY", "b2" * 32)
    with pytest.raises(EncryptionError) as info:
        run_backup(m["cfg"], "daily", logical_date="2026-07-06T02:00:00Z", resolver=m["resolver"])
    assert "b2b2" not in str(info.value) and "a1a1" not in str(info.value)
    assert sorted(p.relative_to(m["sftp_root"]) for p in m["sftp_root"].rglob("*")) == before
    s = open_storage(m["cfg"], "offsite", m["resolver"], read_only=True)
    with pytest.raises(EncryptionError):
        cat = Catalog(s, "fmr-test")
        restore(s, cat, cat.get("latest"), m["tmp"] / "never")
    assert not (m["tmp"] / "never" / "app_files").exists()
    monkeypatch.delenv("OFFSITE_KEY")
    with pytest.raises(EncryptionError) as info:
        open_storage(m["cfg"], "offsite", m["resolver"])
    assert "OFFSITE_KEY" in str(info.value)
    assert os.environ.get("OFFSITE_KEY") is None


class _WriteFaults:
    """Answer the first ``n`` object writes (PutObject / UploadPart) with 503 SlowDown from the real endpoint's
    side of the wire; botocore's standard retries (as S3Hook's client has them) must absorb the burst."""

    def __init__(self, client, n: int) -> None:
        self.left, self.hits = n, 0
        for op in ("PutObject", "UploadPart", "CompleteMultipartUpload"):
            client.meta.events.register(f"before-send.s3.{op}", self)

    def __call__(self, request, **_):
        from botocore.awsrequest import AWSResponse

        if self.left <= 0:
            return None
        self.left -= 1
        self.hits += 1
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"

        class Raw:
            def stream(self, *a, **k):
                yield body

        return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, Raw())


def test_s3_slowdown_burst_is_retried_and_the_snapshot_is_intact(multi):
    m = multi
    faults: list[_WriteFaults] = []

    class Bursty(Resolver):
        def s3_client(self, conn_id: str):
            client = make_client(self.s3_url, retries=5)
            faults.append(_WriteFaults(client, 3))
            return client

    resolver = Bursty(m["resolver"].s3_url, m["sshd"])
    snap, _ = run_backup(m["cfg"], "weekly", logical_date="2026-07-05T01:00:00Z", resolver=resolver)
    assert sum(f.hits for f in faults) >= 3
    cloud = open_storage(m["cfg"], "cloud", m["resolver"], read_only=True)
    cat = Catalog(cloud, "fmr-test")
    assert cat.get(snap.id) and verify(cloud, cat, read_data=True).ok
    restore(cloud, cat, cat.get(snap.id), m["tmp"] / "from-cloud")
    assert app_tree(m["tmp"] / "from-cloud" / "app_files") == app_tree(m["home"])


def test_sftp_server_killed_mid_upload_fails_cleanly_and_the_retry_succeeds(multi):
    import threading
    import time

    m = multi
    big = m["home"] / "uploads" / "big.bin"
    big.write_bytes(os.urandom(24 << 20))  # long enough an upload to be killed in the middle
    stop = threading.Event()

    def uploading() -> bool:
        """The big archive's upload is under way: its temporary object holds more than 1 MB."""
        for p in m["sftp_root"].rglob(".tmp-*app_files.tar.zst") if m["sftp_root"].exists() else []:
            try:
                if p.stat().st_size > (1 << 20):
                    return True
            except FileNotFoundError:  # renamed meanwhile
                pass
        return False

    def killer():
        while not stop.is_set():
            if uploading():
                m["sshd"].kill()
                return
            time.sleep(0.005)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        with pytest.raises(StorageError) as info:
            run_backup(m["cfg"], "weekly", logical_date="2026-07-05T01:00:00Z", resolver=m["resolver"])
    finally:
        stop.set()
        t.join(5)
        m["sshd"].start()
    assert "offsite" in str(info.value)
    sid = "weekly-20260705T010000Z"
    # the other targets committed it (the run failed only for offsite)
    for name in ("local", "cloud"):
        assert list(Catalog(_open(m, name), "fmr-test").snapshots) == [sid], name
    # the server died in the middle of an upload: its temporary object is on the disk ...
    on_disk = [p for p in m["sftp_root"].rglob("*") if p.is_file()]
    assert any(p.name.startswith(".tmp-") for p in on_disk), on_disk
    # ... but nothing on the SFTP target looks complete: no manifest, no temporary object visible, and every
    # visible object is whole (it decrypts, authenticated, to the primary's bytes)
    offsite, local = _open(m, "offsite"), _open(m, "local")
    assert Catalog(offsite, "fmr-test").snapshots == {} and not offsite.exists(f"snapshots/{sid}.json")
    visible = [i.key for i in offsite.list("")]
    assert not any(".tmp-" in k for k in visible)
    assert len(visible) == len([p for p in on_disk if not p.name.startswith(".tmp-")])
    # the copy's lock could not be released while the server was down: it stays, and is this process's to sweep
    for key in visible:
        if not key.startswith("locks/"):
            assert offsite.get_bytes(key) == local.get_bytes(key), key
    # the retry of the same run (same logical date) completes the copy; everything verifies
    snap, p = run_backup(m["cfg"], "weekly", logical_date="2026-07-05T01:00:00Z", resolver=m["resolver"])
    assert p.already_committed
    cat = Catalog(offsite, "fmr-test")
    assert [s.id for s in cat.ordered()] == [snap.id] and verify(offsite, cat, read_data=True).ok
    assert list(offsite.list("locks/")) == []  # the abandoned lock went with the retry
    restore(offsite, cat, cat.get(snap.id), m["tmp"] / "from-offsite", sources=["app_files"])
    assert (m["tmp"] / "from-offsite" / "app_files" / "uploads" / "big.bin").read_bytes() == big.read_bytes()
