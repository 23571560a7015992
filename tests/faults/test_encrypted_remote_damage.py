"""Damaged encrypted data on SFTP (a real sshd) and S3 (a moto server): the restore ends in seconds with exit 4,
releases its lock and leaves no process behind (issue 16).

Before: on SFTP the restore printed the exit-8 message, then hung forever at interpreter exit — an abandoned index
reader was finalised after paramiko's transport thread was gone and waited, without a timeout, for the answer
to its close. Each restore runs as a child ``backupctl`` process with a hard bound (``communicate(timeout=)``),
so a hang fails the test instead of blocking the suite; the test itself has a pytest-timeout bound too.
Afterwards the next backup and a prune succeed without ``backupctl unlock``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backups.cli import main
from tests.helpers import LoopbackResolver, make_app, subprocess_env, write_config

KEY = "e5" * 32
BOUND = 60  # seconds a restore of damaged data may take before it counts as hung (it takes ~3 s)
CHILD = """\
import sys
from pathlib import Path

import backups.connections as connections
from tests.helpers import LoopbackResolver

server = None
if sys.argv[1] == "sftp":
    import paramiko

    from tests.unit.storage.test_sftp import Sshd

    server = Sshd.__new__(Sshd)
    server.dir, server.port, server.user = Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    server.host_key = paramiko.Ed25519Key(filename=str(server.dir / "host_ed25519"))
resolver = LoopbackResolver(sys.argv[2] if sys.argv[1] == "s3" else None, server)
connections.resolver_for = lambda cfg: resolver
from backups.cli import main

sys.exit(main(sys.argv[5:]))
"""


class Remote:
    """The encrypted primary on a real server — SFTP (sshd) or S3 (a moto server) — and raw access to it."""

    def __init__(self, kind: str, tmp: Path) -> None:
        import uuid

        self.kind, self.tmp = kind, tmp
        if kind == "sftp":
            from tests.unit.storage.test_sftp import SSHD, Sshd

            if not SSHD:
                pytest.skip("OpenSSH sshd not found (apt-get install -y openssh-server)")
            (tmp / "sshd").mkdir()
            self.server = Sshd(tmp / "sshd")
            self.server.start()
            self.resolver = LoopbackResolver(None, self.server)
            self.child_args = ["sftp", str(self.server.dir), str(self.server.port), self.server.user]
            self.yaml = f'{{type: sftp, conn_id: backup_sftp, path: "{tmp}/sftp", timeout_seconds: 10, '
        else:
            pytest.importorskip("moto.server")
            from moto.server import ThreadedMotoServer

            from tests.unit.storage.test_s3 import make_client

            self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self.server.start()
            url = f"http://127.0.0.1:{self.server.get_host_and_port()[1]}"
            self.client = make_client(url)
            self.client.create_bucket(Bucket="faults")
            self.prefix = f"enc{uuid.uuid4().hex[:8]}/"
            self.resolver = LoopbackResolver(url, None)
            self.child_args = ["s3", url, "0", "-"]
            self.yaml = f"{{type: s3, conn_id: backup_s3, bucket: faults, prefix: {self.prefix}, timeout_seconds: 10, "
        self.yaml += "encryption: {key_env: FAULT_KEY}}"

    def stop(self) -> None:
        if self.kind == "sftp":
            self.server.kill()
        else:
            self.server.stop()

    def keys(self) -> list[str]:
        if self.kind == "sftp":
            root = self.tmp / "sftp"
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket="faults", Prefix=self.prefix)
        return sorted(o["Key"][len(self.prefix):] for page in pages for o in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        if self.kind == "sftp":
            return (self.tmp / "sftp" / key).read_bytes()
        return self.client.get_object(Bucket="faults", Key=self.prefix + key)["Body"].read()

    def write(self, key: str, data: bytes) -> None:  # damage by hand: the storage itself never overwrites
        if self.kind == "sftp":
            path = self.tmp / "sftp" / key
            os.chmod(path, 0o644)
            path.write_bytes(data)
        else:
            self.client.put_object(Bucket="faults", Key=self.prefix + key, Body=data)


@pytest.fixture(params=["sftp", "s3"])
def remote_app(request, tmp_path, monkeypatch):
    remote = Remote(request.param, tmp_path)
    app = make_app(tmp_path / "app", scale=0.1, seed=16)
    with open(app["home"] / "uploads" / "big.bin", "wb") as fh:  # several prefetch windows and cipher chunks
        fh.write(os.urandom(20 << 20))
    cfg = write_config(tmp_path / "c.yaml", app["home"], app["root"], tier_storages="remote",
                       extra_storages=f"  remote: {remote.yaml}\n")
    cfg.write_text(cfg.read_text() + "locks: {wait_seconds: 5, stale_after_seconds: 600, refresh_seconds: 1}\n")
    monkeypatch.setenv("FAULT_KEY", KEY)
    monkeypatch.setattr("backups.connections.resolver_for", lambda cfg: remote.resolver)
    yield {"cfg": cfg, "remote": remote, "tmp": tmp_path}
    remote.stop()


def _cli(cfg: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--config", str(cfg), "-q", *args])
    return code, out.getvalue(), err.getvalue()


def _child(m: dict, *args: str) -> tuple[int, str, float]:
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *m["remote"].child_args, "--config", str(m["cfg"]), "-q", *args],
                            env=subprocess_env(FAULT_KEY=KEY), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"backupctl {' '.join(args)} hung for {BOUND} s; stderr so far:\n{err.decode(errors='replace')}")
    return proc.returncode, err.decode(errors="replace"), time.monotonic() - t0


@pytest.mark.timeout(600)
def test_restore_of_damaged_encrypted_remote_data_ends_in_seconds_and_releases_its_lock(remote_app):
    m = remote_app
    remote = m["remote"]
    rc, _, err = _cli(m["cfg"], "backup", "--no-validate", "--tier", "weekly", "--logical-date", "2026-05-03T01:00:00Z")
    assert rc == 0, err
    archive = next(k for k in remote.keys() if k.startswith("data/weekly-") and k.endswith("app_files.tar.zst"))
    pristine = remote.read(archive)
    for n, at in enumerate((0.1, 0.5, 0.9)):  # the hang was a race at exit: several damaged places
        blob = bytearray(pristine)
        blob[int(len(blob) * at)] ^= 0x01
        remote.write(archive, bytes(blob))
        rc, err, took = _child(m, "restore", "latest", "--target", str(m["tmp"] / f"out{n}"), "--no-validate")
        assert rc == 4, err
        assert f"{archive} on remote is damaged" in err and "fix:" in err and "Traceback" not in err
        assert KEY not in err
        assert took < BOUND
        assert not [k for k in remote.keys() if k.startswith("locks/")], "the restore left its lock"
    # no unlock: the next backup and a prune take their locks at once (wait_seconds 5, stale_after 600); the daily
    # builds on the damaged full, so its test restore fails the backup (exit 4), naming the object and a full backup
    rc, _, err = _cli(m["cfg"], "backup", "--no-validate", "--tier", "daily", "--logical-date", "2026-05-04T02:00:00Z")
    assert rc == 4 and f"{archive} on remote is damaged" in err and "--type full" in err, err
    rc, out, err = _cli(m["cfg"], "prune", "--json")
    assert rc == 0, err
    rc, out, err = _cli(m["cfg"], "verify", "--all", "--read-data")
    assert rc == 4 and archive in out, out + err  # the damage is named (and only it)
    assert out.count("PROBLEM") == 1, out
    rc, out, err = _cli(m["cfg"], "list", "--json", "--storage", "remote")
    assert rc == 0 and len(json.loads(out)["snapshots"]) == 2, out + err
