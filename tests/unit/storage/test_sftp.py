"""SftpStorage against a real OpenSSH ``sshd`` on a free loopback port (temporary host and client keys)."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from backups.demo.servers import _descendants, _free_port
from backups.errors import StorageError, TransientStorageError
from backups.storage import RetryingStorage
from backups.storage.base import TEMP_MARK
from backups.storage.sftp import SftpStorage

from .contract import StorageContract

paramiko = pytest.importorskip("paramiko")
SSHD = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:/sbin")


def _keypair(path: Path) -> paramiko.Ed25519Key:
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()))
    path.chmod(0o600)
    pub = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
    Path(f"{path}.pub").write_bytes(pub + b"\n")
    return paramiko.Ed25519Key(filename=str(path))


class Sshd:
    """``/usr/sbin/sshd -D -e`` on 127.0.0.1:<free port>; ``kill()`` takes the sessions down too."""

    def __init__(self, d: Path) -> None:
        self.dir, self.port, self.user = d, _free_port(), getpass.getuser()
        self.host_key = _keypair(d / "host_ed25519")
        _keypair(d / "client_ed25519")
        shutil.copy(d / "client_ed25519.pub", d / "authorized_keys")
        (d / "sshd_config").write_text(f"""ListenAddress 127.0.0.1
Port {self.port}
HostKey {d}/host_ed25519
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
LogLevel INFO
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        Path("/run/sshd").mkdir(exist_ok=True)  # Debian's privilege-separation directory
        log = open(self.dir / "sshd.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config")], stdout=log, stderr=log)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not start: {(self.dir / 'sshd.log').read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL the listener and every session process (as a crashed server or a dropped link would look)."""
        assert self.proc is not None
        pids = [self.proc.pid, *_descendants(self.proc.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)

    def factory(self, host_key: paramiko.PKey | None = None, pin: bool = True, timeout: float = 5):
        def connect():
            client = paramiko.SSHClient()
            if pin:
                key = host_key or self.host_key
                client.get_host_keys().add(f"[127.0.0.1]:{self.port}", key.get_name(), key)
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            client.connect("127.0.0.1", port=self.port, username=self.user, key_filename=str(self.dir / "client_ed25519"),
                           look_for_keys=False, allow_agent=False, timeout=timeout, banner_timeout=timeout,
                           auth_timeout=timeout)
            sftp = client.open_sftp()
            sftp.ssh_client = client  # keep the SSHClient referenced as long as the SFTP session
            return sftp

        return connect


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    if not SSHD:
        pytest.skip("OpenSSH sshd not found (apt-get install -y openssh-server)")
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        pytest.skip(f"cannot start sshd here: {exc}")
    yield server
    if server.proc and server.proc.poll() is None:
        server.proc.terminate()
        server.proc.wait(10)


@pytest.fixture
def remote(tmp_path) -> Path:
    return tmp_path / "remote" / uuid.uuid4().hex[:8]


class TestSftp(StorageContract):
    @pytest.fixture
    def storage(self, sshd, remote):
        s = SftpStorage(sshd.factory(), str(remote), name="vault", conn_id="backup_sftp")
        yield s
        s.close()

    def test_temp_names_are_invisible_and_reported_as_orphans(self, storage, remote):
        storage.put_bytes("x/a", b"1")
        (remote / "x" / f"{TEMP_MARK}deadbeef-b").write_bytes(b"partial")
        assert [o.key for o in storage.list("x/")] == ["x/a"]
        assert list(storage.orphan_temps()) == [f"x/{TEMP_MARK}deadbeef-b"]


def test_reads_stream_window_by_window(sshd, remote, monkeypatch):
    import backups.storage.sftp as sftp_mod

    monkeypatch.setattr(sftp_mod, "WINDOW", 100_000)  # many prefetch windows, odd read sizes
    s = SftpStorage(sshd.factory(), str(remote), name="vault")
    data = os.urandom(1_234_567)
    s.put_bytes("w.bin", data)
    got = bytearray()
    with s.open_read("w.bin") as fh:
        while chunk := fh.read(77_777):
            got += chunk
    assert bytes(got) == data
    with s.open_read("w.bin", offset=99_990, length=300_000) as fh:
        assert fh.read(5) + fh.read() == data[99_990:399_990]


def test_killed_server_mid_upload_leaves_nothing_and_retry_succeeds(sshd, remote):
    s = SftpStorage(sshd.factory(), str(remote), name="vault")
    s.put_bytes("snapshots/a.json", b"{}")
    data = os.urandom(1 << 20)
    try:
        with pytest.raises(TransientStorageError, match="vault"):
            with s.open_write("data/big.bin") as fh:
                fh.write(data)
                sshd.kill()
                for _ in range(64):
                    fh.write(data)
                    time.sleep(0.01)
        assert not (remote / "data" / "big.bin").exists()
        assert [p.name.startswith(TEMP_MARK) for p in (remote / "data").iterdir()] == [True]
    finally:
        sshd.start()
    retrying = RetryingStorage(s, attempts=3, base_delay=0.01)
    assert [o.key for o in retrying.list("")] == ["snapshots/a.json"]  # reconnects; the orphan stays invisible
    assert len(list(s.orphan_temps())) == 1
    with s.open_write("data/big.bin") as fh:
        for _ in range(3):
            fh.write(data)
    assert retrying.stat("data/big.bin").size == 3 << 20
    with s.open_read("data/big.bin", offset=(1 << 20) - 5, length=10) as fh:
        assert fh.read() == data[-5:] + data[:5]


def test_dropped_connection_is_transient_then_reconnects(sshd, remote):
    s = SftpStorage(sshd.factory(), str(remote), name="vault")
    s.put_bytes("k", b"v")
    s._client().get_channel().get_transport().sock.close()  # the link goes away under an idle client
    assert RetryingStorage(s, attempts=3, base_delay=0.01).stat("k").size == 1  # transient, then a new connection
    assert s.get_bytes("k") == b"v"


def test_wrong_host_key_is_refused(sshd, remote, tmp_path):
    impostor = _keypair(tmp_path / "other_ed25519")
    s = SftpStorage(sshd.factory(host_key=impostor), str(remote), name="vault", conn_id="backup_sftp")
    with pytest.raises(StorageError) as ei:
        s.check()
    assert not isinstance(ei.value, TransientStorageError)
    assert "host key" in str(ei.value) and "backup_sftp" in str(ei.value) and "host_key" in str(ei.value)
    unknown = SftpStorage(sshd.factory(pin=False), str(remote), name="vault", conn_id="backup_sftp")
    with pytest.raises(StorageError, match="host key") as ei:
        unknown.list("")
    assert not isinstance(ei.value, TransientStorageError)
    assert not remote.exists()


def test_unreachable_server_is_transient(sshd, remote, tmp_path):
    dead = Sshd.__new__(Sshd)
    dead.dir, dead.port, dead.user, dead.host_key = sshd.dir, _free_port(), sshd.user, sshd.host_key
    with pytest.raises(TransientStorageError, match="cannot connect"):
        SftpStorage(dead.factory(), str(remote), name="vault").stat("x")


def test_from_config_uses_resolver(sshd, remote):
    from backups.config import SftpStorage as SftpCfg

    class Resolver:
        def sftp_client_factory(self, conn_id):
            assert conn_id == "backup_sftp"
            return sshd.factory()

    s = SftpStorage.from_config(SftpCfg(type="sftp", path=str(remote)), "vault", Resolver())
    s.put_bytes("a/b", b"c")
    assert (remote / "a" / "b").read_bytes() == b"c"
    assert s.describe() == f"vault (sftp {remote} via connection backup_sftp)"


# ---- issue 16: every SFTP operation has a timeout -------------------------------------------------------------
@pytest.mark.timeout(90)
def test_frozen_server_times_out_instead_of_hanging(tmp_path):
    """sshd's session processes stopped (SIGSTOP): the TCP connection stays up and no answer ever comes. Each
    request — a read, a stat, a write, the close of an open file — fails within the storage's timeout."""
    if not SSHD:
        pytest.skip("OpenSSH sshd not found")
    (tmp_path / "sshd").mkdir()
    server = Sshd(tmp_path / "sshd")
    server.start()
    s = SftpStorage(server.factory(), str(tmp_path / "remote"), name="vault", timeout=1)
    s.put_bytes("k", b"v" * 100_000)
    frozen: list[int] = []

    def freeze() -> None:  # the sessions open now (a timeout drops the session; the next call opens another)
        s.stat("k")
        pids = [p for p in _descendants(server.proc.pid) if p not in frozen]
        assert pids, "no sshd session process"
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        frozen.extend(pids)

    def read_then_close() -> None:
        with s.open_read("k") as fh:
            freeze()
            fh.read()

    try:
        for op in (read_then_close, lambda: s.get_bytes("k"), lambda: s.stat("k"), lambda: s.put_bytes("k2", b"x"),
                   lambda: list(s.list(""))):
            if op is not read_then_close:
                freeze()
            t0 = time.monotonic()
            with pytest.raises(TransientStorageError, match="timed out|connection lost"):
                op()
            assert time.monotonic() - t0 < 15
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        server.kill()


def test_from_config_passes_the_timeout_to_the_factory(sshd, remote):
    from backups.config import SftpStorage as SftpCfg

    seen = {}

    class Resolver:
        def sftp_client_factory(self, conn_id, timeout=None):
            seen["timeout"] = timeout
            return sshd.factory(timeout=timeout)

    s = SftpStorage.from_config(SftpCfg(type="sftp", path=str(remote), timeout_seconds=7), "vault", Resolver())
    assert seen == {"timeout": 7.0} and s.timeout == 7.0
    s.put_bytes("k", b"v")
    assert s._client().get_channel().gettimeout() == 7.0
    assert SftpCfg(type="sftp", path="/x").timeout_seconds == 60  # the documented default
