"""AirflowResolver: Airflow connections (AIRFLOW_CONN_* JSON env vars) → S3 client, SFTP factory, secret."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import uuid

import pytest

pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def resolver():
    if "airflow" not in sys.modules:  # keep a bare run from writing into ~/airflow
        os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))
    from backups.orchestration.connections import AirflowResolver

    return AirflowResolver()


def test_s3_client_and_secret_from_connections(resolver, monkeypatch):
    from moto.server import ThreadedMotoServer

    from backups.config import EncryptionConfig
    from backups.storage.crypto import load_key
    from backups.storage.s3 import S3Storage

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        monkeypatch.setenv("AIRFLOW_CONN_BACKUP_S3", json.dumps({
            "conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": f"http://{host}:{port}", "region_name": "us-east-1"}}))
        client = resolver.s3_client("backup_s3")
        client.create_bucket(Bucket="backups")
        s = S3Storage(client, "backups", "app", name="offsite", conn_id="backup_s3")
        s.put_bytes("snapshots/a.json", b"{}")
        assert [o.key for o in s.list("")] == ["snapshots/a.json"]
    finally:
        server.stop()

    key_hex = os.urandom(32).hex()
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_KEY", json.dumps({"conn_type": "generic", "password": key_hex}))
    assert load_key(EncryptionConfig(key_conn_id="backup_key"), resolver, "offsite").hex() == key_hex
    from backups.errors import ConfigError

    with pytest.raises(ConfigError, match="AIRFLOW_CONN_NO_SUCH_CONN"):
        resolver.secret("no_such_conn")


def test_sftp_factory_pins_host_key_and_refuses_others(resolver, monkeypatch, tmp_path):
    from tests.unit.storage.test_sftp import SSHD, Sshd, _keypair

    if not SSHD:
        pytest.skip("OpenSSH sshd not found (apt-get install -y openssh-server)")
    from backups.errors import StorageError, TransientStorageError
    from backups.storage.sftp import SftpStorage

    server = Sshd(tmp_path)
    server.start()
    try:
        def conn(**extra):
            return json.dumps({"conn_type": "sftp", "host": "127.0.0.1", "port": server.port, "login": server.user,
                               "extra": {"key_file": str(tmp_path / "client_ed25519"), "look_for_keys": "false", **extra}})

        pub = (tmp_path / "host_ed25519.pub").read_text().split()
        monkeypatch.setenv("AIRFLOW_CONN_BACKUP_SFTP", conn(host_key=f"{pub[0]} {pub[1]}"))
        remote = tmp_path / "remote" / uuid.uuid4().hex[:6]
        s = SftpStorage(resolver.sftp_client_factory("backup_sftp"), str(remote), name="vault", conn_id="backup_sftp")
        s.put_bytes("a/b", b"c")
        assert s.get_bytes("a/b") == b"c"
        s.close()

        other = _keypair(tmp_path / "impostor")
        monkeypatch.setenv("AIRFLOW_CONN_BACKUP_SFTP", conn(host_key=f"{other.get_name()} {other.get_base64()}"))
        with pytest.raises(StorageError, match="host key has CHANGED") as ei:
            SftpStorage(resolver.sftp_client_factory("backup_sftp"), str(remote), name="vault").check()
        assert "backup_sftp" in str(ei.value) and "host_key extra" in str(ei.value)

        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/known_hosts: the server is unknown
        monkeypatch.setenv("AIRFLOW_CONN_BACKUP_SFTP", conn())
        with pytest.raises(StorageError, match="host key is unknown") as ei:
            SftpStorage(resolver.sftp_client_factory("backup_sftp"), str(remote), name="vault").check()
        assert not isinstance(ei.value, TransientStorageError) and "backup_sftp" in str(ei.value)
    finally:
        server.kill()


@pytest.mark.timeout(120)
def test_storage_timeouts_reach_the_s3_client_and_the_sftp_hook(resolver, monkeypatch, tmp_path):
    """issue 16: timeout_seconds / max_attempts become botocore's connect/read timeouts and retries, and the SSH
    connect, banner and auth timeouts: a server that accepts the TCP connection and never speaks SSH is given
    up in seconds (SSHHook's banner default is 30 s), through the storage built from the config."""
    import socket
    import time

    from backups.config import S3Storage as S3Cfg
    from backups.config import SftpStorage as SftpCfg
    from backups.errors import StorageError
    from backups.storage.s3 import S3Storage
    from backups.storage.sftp import SftpStorage

    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_S3", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"}}))
    s3 = S3Storage.from_config(S3Cfg(type="s3", bucket="b", timeout_seconds=7, max_attempts=2), "cloud", resolver)
    config = s3.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (7, 7)
    assert config.retries == {"total_max_attempts": 2, "mode": "standard"}

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        monkeypatch.setenv("AIRFLOW_CONN_BACKUP_SFTP", json.dumps({
            "conn_type": "sftp", "host": "127.0.0.1", "port": silent.getsockname()[1], "login": "nobody",
            "extra": {"look_for_keys": "false", "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE9H+VXUhOO1bzQ+E4aVqHJ1h9iO6hbn+Gf7tVRqbQf7"}}))
        sftp = SftpStorage.from_config(SftpCfg(type="sftp", path=str(tmp_path), timeout_seconds=2), "vault", resolver)
        t0 = time.monotonic()
        with pytest.raises(StorageError, match="vault"):
            sftp.check()
        assert time.monotonic() - t0 < 20
    finally:
        silent.close()
