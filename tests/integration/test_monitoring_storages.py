"""The monitoring status over remote storages (a real S3 endpoint: moto's server on loopback): every storage is
probed — one that fails (a missing bucket) is reported and never takes the status down; an archive storage gets
no write probe; sizes and snapshot counts come from each storage; the presence of each tier's newest chain is
checked on S3 from the same listing (an object deleted or replaced by a shorter one is critical)."""

from __future__ import annotations

from backups.commands.status import status
from backups.commands.verify import verify
from backups.config import load_config
from backups.demo import fmr
from backups.storage import open_storage
from tests.helpers import LoopbackResolver, run_backup, write_config
from tests.unit.storage.test_s3 import BUCKET, s3_endpoint  # noqa: F401 - fixture

EXTRA = """\
  cloud:   {{type: s3, conn_id: backup_s3, bucket: {bucket}, prefix: "mon-{n}"}}
  gone:    {{type: s3, conn_id: backup_s3, bucket: no-such-bucket-{n}}}
  archive: {{type: s3, conn_id: backup_s3, bucket: {bucket}, prefix: "mon-arch-{n}", storage_class: GLACIER}}
"""


def test_status_probes_every_remote_storage(tmp_path, s3_endpoint):  # noqa: F811
    home = tmp_path / "home"
    fmr.generate(home, scale=0.1, seed=4)
    n = tmp_path.name.replace("_", "-").lower()[-20:]
    path = write_config(tmp_path / "c.yaml", home, tmp_path / "repo", extra_storages=EXTRA.format(bucket=BUCKET, n=n),
                        tier_storages="local, cloud")
    cfg = load_config(path)
    resolver = LoopbackResolver(s3_endpoint, None)
    run_backup(cfg, "weekly", resolver=resolver)
    verify(cfg, ["local", "cloud"], every=True, read_data=True, resolver=resolver)  # the engine alone does not
    doc = status(cfg, resolver).to_dict()
    st = {s["storage"]: s for s in doc["storages"]}
    assert st["cloud"]["reachable"] and st["cloud"]["writable"] is True and st["cloud"]["snapshots"] == 1
    assert st["cloud"]["used_bytes"] > 0 and st["cloud"]["free_bytes"] is None
    assert st["gone"]["reachable"] is False and st["gone"]["error"]
    assert st["archive"]["reachable"] and st["archive"]["writable"] is None and st["archive"]["snapshots"] == 0
    weekly = next(t for t in doc["tiers"] if t["tier"] == "weekly")
    assert weekly["storages"] == ["local", "cloud"] and weekly["state"] == "ok"
    keys = {p["key"] for p in doc["problems"]}
    assert "storage-unreachable:gone" in keys and "replica-missing:weekly" not in keys
    assert not any(k.startswith("storage-") and not k.endswith(":gone") for k in keys), keys


def test_presence_on_s3_finds_a_deleted_and_a_shrunk_object(tmp_path, s3_endpoint):  # noqa: F811
    home = tmp_path / "home"
    fmr.generate(home, scale=0.1, seed=6)
    n = tmp_path.name.replace("_", "-").lower()[-20:]
    path = write_config(tmp_path / "c.yaml", home, tmp_path / "repo", tier_storages="local, cloud",
                        extra_storages=f'  cloud: {{type: s3, conn_id: backup_s3, bucket: {BUCKET}, prefix: "pres-{n}"}}\n')
    cfg = load_config(path)
    resolver = LoopbackResolver(s3_endpoint, None)
    snap, _ = run_backup(cfg, "weekly", resolver=resolver)
    verify(cfg, ["local", "cloud"], every=True, read_data=True, resolver=resolver)
    assert not [p for p in status(cfg, resolver).to_dict()["problems"] if p["key"].startswith("presence:")]
    cloud = open_storage(cfg, "cloud", resolver)
    objs = sorted((o for o in snap.objects()), key=lambda o: o["size"])
    gone, shrunk = objs[-1]["key"], objs[-2]["key"]
    cloud.delete(gone)
    data = cloud.get_bytes(shrunk)
    cloud.delete(shrunk)
    cloud.put_bytes(shrunk, data[:-5])
    doc = status(cfg, resolver).to_dict()
    keys = {p["key"]: p for p in doc["problems"]}
    summary = keys["presence:weekly:cloud"]["summary"]
    assert keys["presence:weekly:cloud"]["severity"] == "critical" and "presence:weekly:local" not in keys
    assert (f"object {gone} of snapshot {snap.id} is missing" in summary or f"object {shrunk} of snapshot {snap.id}: "
            f"size {objs[-2]['size'] - 5}, the manifest says {objs[-2]['size']}" in summary), summary
    assert "(and 1 more object(s))" in summary
    weekly = next(t for t in doc["tiers"] if t["tier"] == "weekly")
    found = {(p["object"], p["problem"].split(",")[0]) for p in weekly["presence"]["problems"]}
    assert found == {(gone, "missing"), (shrunk, f"size {objs[-2]['size'] - 5}")}
    assert weekly["state"] == "critical" and doc["state"] == "critical"


def test_the_verification_record_stays_in_an_instant_class_on_an_archive_storage(tmp_path, s3_endpoint):  # noqa: F811
    from backups.repository import verification

    n = tmp_path.name.replace("_", "-").lower()[-20:]
    path = write_config(tmp_path / "c.yaml", tmp_path / "home", tmp_path / "repo", extra_storages=EXTRA.format(
        bucket=BUCKET, n=n))
    cfg = load_config(path)
    archive = open_storage(cfg, "archive", LoopbackResolver(s3_endpoint, None))
    assert archive.archive
    verification.record(archive, cfg.application, read_data=True, checked=[], failed={"*": ["x"]}, every=True)
    [info] = list(archive.list("verification/"))
    assert info.storage_class == "STANDARD"  # monitoring reads it every run: never behind a thaw
    rec = verification.read(archive, cfg.application)
    assert rec.problem is None and rec.doc["open"]["*"]["problems"] == ["x"]
