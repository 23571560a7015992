"""Damaged encrypted data on SFTP (a real sshd): the restore ends in seconds with exit 4, releases its lock and
leaves no process behind (issue 16).

Before: the restore printed the exit-8 message, then hung forever at interpreter exit — an abandoned index
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

import paramiko

import backups.connections as connections
from tests.helpers import LoopbackResolver
from tests.unit.storage.test_sftp import Sshd

server = Sshd.__new__(Sshd)
server.dir, server.port, server.user = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
server.host_key = paramiko.Ed25519Key(filename=str(server.dir / "host_ed25519"))
resolver = LoopbackResolver(None, server)
connections.resolver_for = lambda cfg: resolver
from backups.cli import main

sys.exit(main(sys.argv[4:]))
"""


@pytest.fixture
def sftp_app(tmp_path, monkeypatch):
    from tests.unit.storage.test_sftp import SSHD, Sshd

    if not SSHD:
        pytest.skip("OpenSSH sshd not found (apt-get install -y openssh-server)")
    (tmp_path / "sshd").mkdir()
    server = Sshd(tmp_path / "sshd")
    server.start()
    app = make_app(tmp_path / "app", scale=0.1, seed=16)
    with open(app["home"] / "uploads" / "big.bin", "wb") as fh:  # several prefetch windows and cipher chunks
        fh.write(os.urandom(20 << 20))
    cfg = write_config(tmp_path / "c.yaml", app["home"], app["root"], tier_storages="remote",
                       extra_storages=f'  remote: {{type: sftp, conn_id: backup_sftp, path: "{tmp_path}/sftp", '
                                      f'timeout_seconds: 10, encryption: {{key_env: FAULT_KEY}}}}\n')
    cfg.write_text(cfg.read_text() + "locks: {wait_seconds: 5, stale_after_seconds: 600, refresh_seconds: 1}\n")
    monkeypatch.setenv("FAULT_KEY", KEY)
    resolver = LoopbackResolver(None, server)
    monkeypatch.setattr("backups.connections.resolver_for", lambda cfg: resolver)
    yield {"cfg": cfg, "server": server, "sftp": tmp_path / "sftp", "tmp": tmp_path}
    server.kill()


def _cli(cfg: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--config", str(cfg), "-q", *args])
    return code, out.getvalue(), err.getvalue()


def _child(m: dict, *args: str) -> tuple[int, str, float]:
    server = m["server"]
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(server.dir), str(server.port), server.user,
                             "--config", str(m["cfg"]), "-q", *args],
                            env=subprocess_env(FAULT_KEY=KEY), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"backupctl {' '.join(args)} hung for {BOUND} s; stderr so far:\n{err.decode(errors='replace')}")
    return proc.returncode, err.decode(errors="replace"), time.monotonic() - t0


def _flip(path: Path, at: float) -> None:
    blob = bytearray(path.read_bytes())
    blob[int(len(blob) * at)] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(blob))


@pytest.mark.timeout(600)
def test_restore_of_damaged_encrypted_sftp_data_ends_in_seconds_and_releases_its_lock(sftp_app):
    m = sftp_app
    rc, _, err = _cli(m["cfg"], "backup", "--tier", "weekly", "--logical-date", "2026-05-03T01:00:00Z")
    assert rc == 0, err
    archive = next(m["sftp"].rglob("data/weekly-*/app_files.tar.zst"))
    pristine = archive.read_bytes()
    for n, at in enumerate((0.1, 0.5, 0.9)):  # the hang was a race at exit: several damaged places
        if n:
            archive.write_bytes(pristine)
        _flip(archive, at)
        rc, err, took = _child(m, "restore", "latest", "--target", str(m["tmp"] / f"out{n}"), "--no-validate")
        assert rc == 4, err
        assert "app_files.tar.zst on remote is damaged" in err and "fix:" in err and "Traceback" not in err
        assert KEY not in err
        assert took < BOUND
        assert not list(m["sftp"].glob("locks/*")), "the restore left its lock"
    # no unlock: the next backup and a prune take their locks at once (wait_seconds 5, stale_after 600)
    rc, _, err = _cli(m["cfg"], "backup", "--tier", "daily", "--logical-date", "2026-05-04T02:00:00Z")
    assert rc == 0, err
    rc, out, err = _cli(m["cfg"], "prune", "--json")
    assert rc == 0, err
    rc, out, err = _cli(m["cfg"], "verify", "--all", "--read-data")
    assert rc == 4 and archive.name in out, out + err  # the damage is named (and only it)
    assert out.count("PROBLEM") == 1, out
    rc, out, err = _cli(m["cfg"], "list", "--json", "--storage", "remote")
    assert rc == 0 and len(json.loads(out)["snapshots"]) == 2, out + err
