"""S3Storage against a real HTTP S3 endpoint (moto's server mode on a free loopback port)."""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest

from backups.errors import ObjectNotFound, StorageError, TransientStorageError
from backups.storage import RetryingStorage
from backups.storage.s3 import MIN_PART, S3Storage

from .contract import StorageContract

BUCKET = "backups"
SECRET = "testing-secret-key-do-not-print"


@pytest.fixture(scope="session")
def s3_endpoint():
    pytest.importorskip("moto.server", reason="moto[server] is needed for the S3 tests")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    make_client(url).create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


def make_client(url: str, retries: int = 1, **cfg):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key=SECRET,
        config=Config(retries={"total_max_attempts": retries, "mode": "standard"}, **cfg),
    )


@pytest.fixture
def client(s3_endpoint):
    return make_client(s3_endpoint)


def fresh(client, **kw) -> S3Storage:
    return S3Storage(client, BUCKET, f"t/{uuid.uuid4().hex[:12]}", name="offsite", **kw)


class TestS3(StorageContract):
    @pytest.fixture
    def storage(self, client):
        return fresh(client)


class TestEncryptedS3(StorageContract):
    @pytest.fixture
    def storage(self, client):
        from backups.storage.crypto import EncryptedStorage

        return EncryptedStorage(fresh(client), bytes(32), chunk_size=64 << 10)


def test_range_past_end_reads_empty(client):
    s = fresh(client)
    s.put_bytes("k", b"0123456789")
    with s.open_read("k", offset=10, length=5) as fh:
        assert fh.read() == b""
    with s.open_read("k", offset=8) as fh:
        assert fh.read() == b"89"


def test_multipart_streams_and_completes(client):
    s = fresh(client, part_size=MIN_PART)
    data = os.urandom(2 * MIN_PART + 1234)
    with s.open_write("data/big.bin") as fh:
        for i in range(0, len(data), 1 << 20):
            fh.write(data[i : i + (1 << 20)])
        assert client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")  # in progress, not an object
        assert list(s.list("data/")) == []
    head = client.head_object(Bucket=BUCKET, Key=s.prefix + "data/big.bin")
    assert head["ETag"].endswith('-3"')  # 3 parts
    with s.open_read("data/big.bin", offset=MIN_PART - 10, length=20) as fh:
        assert fh.read() == data[MIN_PART - 10 : MIN_PART + 10]
    assert hashlib.sha256(s.get_bytes("data/big.bin")).digest() == hashlib.sha256(data).digest()


def test_failed_multipart_is_aborted(client):
    s = fresh(client, part_size=MIN_PART)
    with pytest.raises(RuntimeError):
        with s.open_write("data/half.bin") as fh:
            fh.write(os.urandom(MIN_PART + 10))
            raise RuntimeError("source failed")
    uploads = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert not [u for u in uploads if u["Key"].startswith(s.prefix)]
    assert not s.exists("data/half.bin")


class _Faults:
    """Answer the first ``n`` requests to the real endpoint with an S3 error (botocore ``before-send`` hook)."""

    def __init__(self, client, n: int, status: int, code: str) -> None:
        self.left, self.status, self.code, self.seen = n, status, code, 0
        client.meta.events.register("before-send.s3.*", self)

    def __call__(self, request, **_):
        from botocore.awsrequest import AWSResponse

        self.seen += 1
        if self.left <= 0:
            return None  # let the request go to the server
        self.left -= 1
        body = f"<Error><Code>{self.code}</Code><Message>injected</Message></Error>".encode()

        class Raw:
            def stream(self, *a, **k):
                yield body

        return AWSResponse(request.url, self.status, {"Content-Type": "application/xml"}, Raw())


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError")])
def test_error_burst_is_transient_and_retried(client, status, code):
    s = fresh(client)
    s.put_bytes("snapshots/a.json", b"{}")
    faults = _Faults(client, 3, status, code)
    with pytest.raises(TransientStorageError):
        s.stat("snapshots/a.json")
    faults.left = 3
    retrying = RetryingStorage(s, attempts=5, base_delay=0.01)
    assert [o.key for o in retrying.list("snapshots/")] == ["snapshots/a.json"]
    assert retrying.stat("snapshots/a.json").size == 2
    assert faults.left == 0


def test_connection_refused_is_transient_and_hides_credentials():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = S3Storage(make_client(f"http://127.0.0.1:{port}", connect_timeout=1), BUCKET, name="offsite")
    with pytest.raises(TransientStorageError) as ei:
        s.stat("x")
    assert "offsite" in str(ei.value) and SECRET not in str(ei.value)


def test_access_denied_and_missing_bucket_are_permanent(s3_endpoint, client):
    s = S3Storage(client, "no-such-bucket", name="offsite", conn_id="backup_s3")
    with pytest.raises(StorageError) as ei:
        s.check()
    assert not isinstance(ei.value, TransientStorageError | ObjectNotFound)
    assert "no-such-bucket" in str(ei.value)
    fresh(client).check()


def test_glacier_object_refused_until_restored(client):
    s = fresh(client, storage_class="GLACIER")
    assert s.archive
    s.put_bytes("data/full/x.tar.zst", b"archived bytes")
    assert s.stat("data/full/x.tar.zst").storage_class == "GLACIER"
    with pytest.raises(StorageError) as ei:
        s.get_bytes("data/full/x.tar.zst")
    assert "object is in GLACIER; request a restore" in str(ei.value)
    assert not isinstance(ei.value, TransientStorageError)
    assert s.restore_request("data/full/x.tar.zst", days=2) is True  # moto restores at once
    assert s.get_bytes("data/full/x.tar.zst") == b"archived bytes"
    assert s.restore_request("data/full/x.tar.zst") is True


def test_manifests_are_always_standard(client):
    s = fresh(client, storage_class="DEEP_ARCHIVE")
    s.put_bytes("snapshots/daily-20260101T020000Z.json", b"{}")
    s.put_bytes("data/daily/x", b"1")
    classes = {o.key: o.storage_class for o in s.list("")}
    assert classes == {"data/daily/x": "DEEP_ARCHIVE", "snapshots/daily-20260101T020000Z.json": "STANDARD"}
    assert s.get_bytes("snapshots/daily-20260101T020000Z.json") == b"{}"


def test_lock_objects_are_standard_so_an_archive_storage_can_be_locked(client):
    from backups.repository.locks import Locks

    s = fresh(client, storage_class="GLACIER")
    with Locks(s, wait_seconds=0).acquire("repo", exclusive=True, operation="prune"):
        assert [o.storage_class for o in s.list("locks/")] == ["STANDARD"]
        assert len(Locks(s).list()) == 1  # readable without a restore request


def test_sse_is_requested(client):
    s = fresh(client, sse="AES256")
    s.put_bytes("k", b"v")
    assert client.head_object(Bucket=BUCKET, Key=s.prefix + "k")["ServerSideEncryption"] == "AES256"


def test_from_config_uses_resolver(client):
    from backups.config import S3Storage as S3Cfg

    class Resolver:
        def s3_client(self, conn_id):
            assert conn_id == "backup_s3"
            return client

    sc = S3Cfg(type="s3", bucket=BUCKET, prefix="/cfg/x/", storage_class="STANDARD_IA")
    s = S3Storage.from_config(sc, "offsite", Resolver())
    assert (s.prefix, s.storage_class, s.describe()) == ("cfg/x/", "STANDARD_IA", "offsite (s3://backups/cfg/x/)")


def test_unfinished_multipart_uploads_are_temps_and_can_be_removed(client):
    s = fresh(client)
    full = s.prefix + "data/x/app.tar.zst"
    up = client.create_multipart_upload(Bucket=BUCKET, Key=full)["UploadId"]  # a writer killed mid-upload
    temps = list(s.temps())
    assert [t.key for t in temps] == [f"data/x/app.tar.zst?uploadId={up}"] and temps[0].mtime is not None
    assert list(s.list("")) == []  # never visible as an object
    s.remove_temp(temps[0].key)
    assert list(s.temps()) == []


# ---- issue 16: every S3 request has a timeout --------------------------------------------------------------
@pytest.mark.timeout(60)
def test_timeouts_reach_the_client_and_a_silent_endpoint_fails_fast():
    """An endpoint that accepts connections and never answers: with timeout_seconds 1 and max_attempts 1 a read
    fails (transient) in seconds instead of botocore's 60 s x 5 attempts."""
    import socket
    import time

    from backups.config import S3Storage as S3Cfg
    from backups.errors import TransientStorageError

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    seen = {}

    class Resolver:
        def s3_client(self, conn_id, timeout=None, max_attempts=None):
            seen.update(timeout=timeout, max_attempts=max_attempts)
            return make_client(url, retries=max_attempts, connect_timeout=timeout, read_timeout=timeout)

    try:
        s = S3Storage.from_config(S3Cfg(type="s3", bucket=BUCKET, timeout_seconds=1, max_attempts=1), "cloud", Resolver())
        assert seen == {"timeout": 1.0, "max_attempts": 1}
        t0 = time.monotonic()
        with pytest.raises(TransientStorageError, match="cloud"):
            s.get_bytes("k")
        assert time.monotonic() - t0 < 10
    finally:
        silent.close()
    defaults = S3Cfg(type="s3", bucket=BUCKET)
    assert (defaults.timeout_seconds, defaults.max_attempts) == (60, 3)  # the documented defaults
