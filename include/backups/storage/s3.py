"""S3 storage: one object per key under ``s3://bucket/prefix/``, written by a streaming multipart upload.

* ``open_write`` buffers ``part_size`` bytes (8 MiB) at a time; an object smaller than one part is sent with a
  single ``put_object`` on close, a larger one as a multipart upload that is completed on a clean exit and
  aborted on an exception, so a partial object is never visible (S3 shows nothing until completion).
* objects are created, never overwritten: ``put_object`` and ``complete_multipart_upload`` carry
  ``If-None-Match: *`` (AWS S3 since 2024-08, MinIO, moto); an existing key answers 412 and the writer then
  accepts only identical bytes, else raises :class:`ObjectExistsError`. A server that rejects the header as not
  implemented gets a ``head_object`` check before the write instead (not atomic against a concurrent writer of
  the same key; the repository locks serialise those) — logged once per storage.
* ``open_read`` streams ``get_object`` (with ``Range`` for partial reads).
* botocore errors are classified: 404 / NoSuchKey → :class:`ObjectNotFound`; 5xx, throttling and connection
  errors → :class:`TransientStorageError` (``RetryingStorage`` retries them); anything else → :class:`StorageError`.
  Messages name the storage, bucket and key, never a credential.
* GLACIER / DEEP_ARCHIVE: reading an un-restored object raises a clear error; :meth:`S3Storage.restore_request`
  asks S3 for a temporary copy. Manifests (``snapshots/``) are always written as STANDARD so listing and chain
  resolution never wait for a restore; so are lock objects (``locks/``) and the verification record
  (``verification/``), which monitoring reads on every run.

* Timeouts: ``timeout_seconds`` (default 60) and ``max_attempts`` (default 3) go to the resolver
  (``resolver.s3_client(conn_id, timeout=..., max_attempts=...)``), which builds the client with botocore's
  ``connect_timeout`` / ``read_timeout`` and ``retries={"total_max_attempts": ..., "mode": "standard"}``: no request
  — connect, each read of a streamed body, an upload — waits longer; a timeout is transient (retried by
  ``RetryingStorage``).

boto3 is not imported here: the client comes from the :class:`~backups.storage.Resolver`.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import ObjectNotFound, StorageError, TransientStorageError
from .base import ObjectInfo, Storage, check_key, exists_error, resolve_client, same_content

if TYPE_CHECKING:
    from ..config import S3Storage as S3StorageConfig
    from . import Resolver

log = logging.getLogger(__name__)

PART = 8 << 20
TIMEOUT = 60.0  #: seconds, the default of ``storages.*.timeout_seconds``
MAX_ATTEMPTS = 3  #: the default of ``storages.*.max_attempts``
MIN_PART = 5 << 20  # S3's minimum size for every part but the last
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
MANIFEST_PREFIX = "snapshots/"
STANDARD_PREFIXES = (MANIFEST_PREFIX, "locks/", "verification/")  # read on every run: never in an archive class
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
              "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequestsException"}


class S3Storage(Storage):
    thread_safe = True  # boto3 clients are thread-safe

    def __init__(self, client: Any, bucket: str, prefix: str = "", *, name: str = "s3", storage_class: str = "STANDARD",
                 sse: str | None = None, kms_key_id: str | None = None, conn_id: str | None = None,
                 part_size: int = PART) -> None:
        if part_size < MIN_PART:
            raise StorageError(f"{name}: S3 part size {part_size} is below the S3 minimum of {MIN_PART} bytes")
        self.client, self.bucket, self.name, self.conn_id = client, bucket, name, conn_id
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.storage_class, self.part_size = storage_class, part_size
        self.conditional_writes = True  #: If-None-Match on writes; False after the server said it cannot
        self.archive = storage_class in ARCHIVE_CLASSES
        self._sse: dict[str, str] = {}
        if sse:
            self._sse["ServerSideEncryption"] = sse
        if kms_key_id:
            self._sse["SSEKMSKeyId"] = kms_key_id

    @classmethod
    def from_config(cls, sc: S3StorageConfig, name: str, resolver: Resolver) -> S3Storage:
        client = resolve_client(resolver.s3_client, sc.conn_id, timeout=float(getattr(sc, "timeout_seconds", TIMEOUT)),
                                max_attempts=int(getattr(sc, "max_attempts", MAX_ATTEMPTS)))
        return cls(client, sc.bucket, sc.prefix, name=name, storage_class=sc.storage_class,
                   sse=sc.sse, kms_key_id=sc.kms_key_id, conn_id=sc.conn_id)

    def describe(self) -> str:
        return f"{self.name} (s3://{self.bucket}/{self.prefix})"

    # ---- error classification ----------------------------------------------------------------------
    def _fail(self, what: str, key: str | None, exc: Exception) -> StorageError:
        where = f"s3://{self.bucket}/{self.prefix}{key or ''}"
        resp = getattr(exc, "response", None)
        if resp is None:  # botocore.exceptions.BotoCoreError: connection, timeout, credentials, ...
            transient = type(exc).__name__ in {"EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError",
                                               "ConnectTimeoutError", "ResponseStreamingError", "IncompleteReadError",
                                               "ProxyConnectionError", "HTTPClientError", "ConnectionError"}
            cls = TransientStorageError if transient or isinstance(exc, OSError) else StorageError
            return cls(f"{self.name}: {what} {where} failed: {type(exc).__name__}: {exc}", hint=self._hint())
        err = resp.get("Error", {})
        code, msg = str(err.get("Code", "")), str(err.get("Message", "")).strip()
        status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        text = f"{self.name}: {what} {where} failed: {code or status}" + (f" ({msg})" if msg else "")
        if code == "InvalidRange":
            return _RangePastEnd(text)
        if code in _NOT_FOUND and key is not None:
            return ObjectNotFound(f"{self.name}: object {key} is missing ({where})")
        if code == "NoSuchBucket" or (code in _NOT_FOUND and key is None):
            return StorageError(f"{self.name}: bucket {self.bucket} does not exist", hint="create it or fix storages.*.bucket")
        if code == "InvalidObjectState" and key is not None:
            return StorageError(f"{self.name}: {where}: object is in {self._class_of(key)}; request a restore before reading it",
                                hint="`backupctl restore` and `backupctl drill` (and the restore_snapshot / dr_drill "
                                "DAGs) thaw the objects they need and wait (--thaw-timeout): minutes to hours for "
                                "GLACIER, up to 48 h for DEEP_ARCHIVE; to list or check a snapshot without a thaw, use a "
                                "storage that holds it in an instant class (--storage)")
        if status >= 500 or status == 429 or code in _TRANSIENT:
            return TransientStorageError(text)
        return StorageError(text, hint=self._hint() if status in (401, 403) else None)

    def _class_of(self, key: str) -> str:
        try:
            return str(self.client.head_object(Bucket=self.bucket, Key=self.prefix + key).get("StorageClass") or "STANDARD")
        except Exception:  # noqa: BLE001 - only used to word an error message
            return self.storage_class if self.archive else "an archive storage class"

    def _hint(self) -> str:
        conn = f"Airflow connection {self.conn_id!r}" if self.conn_id else "the S3 client's credentials"
        return f"check {conn} (keys, endpoint_url, region) and the bucket policy for {self.bucket}"

    def _call(self, what: str, key: str | None, fn: Any, **kw: Any) -> Any:
        try:
            return fn(Bucket=self.bucket, **kw)
        except Exception as exc:
            if type(exc).__module__.startswith(("botocore", "urllib3")) or isinstance(exc, OSError):
                raise self._fail(what, key, exc) from None
            raise

    # ---- the five operations --------------------------------------------------------------------------
    def _extra(self, key: str) -> dict[str, str]:
        cls = "STANDARD" if key.startswith(STANDARD_PREFIXES) else self.storage_class
        return {**self._sse, **({"StorageClass": cls} if cls != "STANDARD" else {})}

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        full = self.prefix + check_key(key)
        writer = _MultipartWriter(self, key, full)
        try:
            yield writer  # type: ignore[misc]
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    @contextmanager
    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[BinaryIO]:
        full = self.prefix + check_key(key)
        kw: dict[str, str] = {}
        if offset or length is not None:
            kw["Range"] = f"bytes={offset}-" + ("" if length is None else str(offset + length - 1))
        body = None
        try:
            if length != 0:
                body = self._call("reading", key, self.client.get_object, Key=full, **kw)["Body"]
        except _RangePastEnd:  # a range past the end reads as empty, like a file
            pass
        if body is None:
            yield io.BytesIO(b"")
            return
        try:
            yield _Reader(self, key, body)  # type: ignore[misc]
        finally:
            body.close()

    def stat(self, key: str) -> ObjectInfo:
        head = self._call("stat of", key, self.client.head_object, Key=self.prefix + check_key(key))
        return ObjectInfo(key, int(head["ContentLength"]), head.get("StorageClass") or "STANDARD", _ts(head.get("LastModified")))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        out: list[ObjectInfo] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(self.prefix):]
                    if rel and not rel.endswith("/"):
                        out.append(ObjectInfo(rel, int(obj["Size"]), obj.get("StorageClass") or "STANDARD",
                                              _ts(obj.get("LastModified"))))
        except Exception as exc:
            if type(exc).__module__.startswith(("botocore", "urllib3")):
                raise self._fail("listing", prefix, exc) from None
            raise
        return iter(sorted(out, key=lambda o: o.key))

    def delete(self, key: str) -> None:
        self._call("deleting", key, self.client.delete_object, Key=self.prefix + check_key(key))

    # ---- leftovers: unfinished multipart uploads of killed writers --------------------------------------
    def temps(self) -> Iterator[ObjectInfo]:
        """Multipart uploads never completed nor aborted (a killed writer), as ``<key>?uploadId=<id>``."""
        out = []
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for up in page.get("Uploads", []):
                    rel = up["Key"][len(self.prefix):]
                    out.append(ObjectInfo(f"{rel}?uploadId={up['UploadId']}", 0, up.get("StorageClass"), _ts(up.get("Initiated"))))
        except Exception as exc:
            if type(exc).__module__.startswith(("botocore", "urllib3")):
                raise self._fail("listing multipart uploads", None, exc) from None
            raise
        return iter(sorted(out, key=lambda o: o.key))

    def remove_temp(self, key: str) -> None:
        rel, sep, upload_id = key.partition("?uploadId=")
        if not sep or not upload_id:
            raise StorageError(f"{self.name}: {key} is not an unfinished multipart upload")
        try:
            self._call("aborting multipart upload", rel, self.client.abort_multipart_upload,
                       Key=self.prefix + check_key(rel), UploadId=upload_id)
        except ObjectNotFound:
            pass
        except StorageError as exc:
            if "NoSuchUpload" not in exc.message:  # already completed or aborted
                raise

    # ---- extras -----------------------------------------------------------------------------------------
    def check(self) -> None:
        self._call("checking bucket", None, self.client.head_bucket)

    def restore_request(self, key: str, days: int = 1) -> bool:
        """Ask S3 to restore an archived object for ``days``; True once the restored copy is readable."""
        full = self.prefix + check_key(key)

        def restored() -> bool | None:
            head = self._call("stat of", key, self.client.head_object, Key=full)
            if (head.get("StorageClass") or "STANDARD") not in ARCHIVE_CLASSES:
                return True
            state = head.get("Restore")
            return None if state is None else 'ongoing-request="false"' in state

        state = restored()
        if state is not None:
            return state
        try:
            self._call("restore request for", key, self.client.restore_object, Key=full,
                       RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": "Standard"}})
        except StorageError as exc:
            if "RestoreAlreadyInProgress" not in exc.message:
                raise
        return bool(restored())


class _RangePastEnd(StorageError):
    pass


def _ts(value: Any) -> float | None:
    return value.timestamp() if hasattr(value, "timestamp") else None


class _MultipartWriter:
    """Multipart upload with bounded concurrency: at most ``CONCURRENCY`` parts (of ``part_size`` bytes each) are
    in flight, so memory stays bounded while uploads overlap with producing the next part."""

    CONCURRENCY = 4

    def __init__(self, s3: S3Storage, key: str, full: str) -> None:
        self.s3, self.key, self.full = s3, key, full
        self.buf = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.sent = 0
        self.inflight: list[Any] = []
        self.pool: Any = None
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.buf += data
        # S3 allows 10 000 parts: parts grow by part_size every 1000 (8 MiB parts → objects up to ~440 GB)
        while len(self.buf) >= (size := self.s3.part_size * (1 + self.sent // 1000)):
            self._send_part(bytes(self.buf[:size]))
            del self.buf[:size]
        return len(data)

    def _upload(self, n: int, data: bytes) -> dict[str, Any]:
        s3, c = self.s3, self.s3.client
        r = s3._call("writing", self.key, c.upload_part, Key=self.full, UploadId=self.upload_id, PartNumber=n, Body=data)
        return {"PartNumber": n, "ETag": r["ETag"]}

    def _send_part(self, data: bytes) -> None:
        from concurrent.futures import ThreadPoolExecutor

        s3, c = self.s3, self.s3.client
        if self.upload_id is None:
            self.upload_id = s3._call("writing", self.key, c.create_multipart_upload, Key=self.full, **s3._extra(self.key))["UploadId"]
            self.pool = ThreadPoolExecutor(max_workers=self.CONCURRENCY, thread_name_prefix="s3-part")
        self.sent += 1
        while len(self.inflight) >= self.CONCURRENCY:
            self.parts.append(self.inflight.pop(0).result())
        self.inflight.append(self.pool.submit(self._upload, self.sent, data))

    def _drain(self) -> None:
        try:
            while self.inflight:
                self.parts.append(self.inflight.pop(0).result())
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
                self.pool = None

    def commit(self) -> None:
        s3 = self.s3
        if self.upload_id is None:
            self._create(s3.client.put_object, Body=bytes(self.buf), **s3._extra(self.key))
            return
        if self.buf or not self.sent:
            self._send_part(bytes(self.buf))
        self._drain()
        parts = sorted(self.parts, key=lambda p: p["PartNumber"])
        self._create(s3.client.complete_multipart_upload, UploadId=self.upload_id, MultipartUpload={"Parts": parts})
        self.upload_id = None

    def _create(self, fn: Any, **kw: Any) -> None:
        """One create-only request (If-None-Match: *); an existing key is accepted only with identical bytes."""
        s3 = self.s3
        if not s3.conditional_writes and s3.exists(self.key):
            self._existing()
            return
        try:
            s3._call("writing", self.key, fn, Key=self.full, **({"IfNoneMatch": "*"} if s3.conditional_writes else {}), **kw)
        except StorageError as exc:
            if "PreconditionFailed" in exc.message or " 412" in exc.message:
                self._existing()
                return
            if s3.conditional_writes and ("NotImplemented" in exc.message or " 501" in exc.message):
                log.warning("%s: the S3 server does not support conditional writes (If-None-Match); objects are "
                            "checked before writing instead (locks serialise writers)", s3.name)
                s3.conditional_writes = False
                self._create(fn, **kw)
                return
            raise

    def _existing(self) -> None:
        if self.upload_id is not None:
            self.abort()
        if not same_content(self.s3, self.key, self.sha.hexdigest(), self.size):
            raise exists_error(self.s3.name, self.key)

    def abort(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.inflight.clear()
        if self.upload_id is not None:
            try:
                self.s3.client.abort_multipart_upload(Bucket=self.s3.bucket, Key=self.full, UploadId=self.upload_id)
            except Exception:  # noqa: BLE001 - best effort; a lifecycle rule cleans up stale uploads
                pass
            self.upload_id = None

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True


class _Reader:
    def __init__(self, s3: S3Storage, key: str, body: Any) -> None:
        self.s3, self.key, self.body = s3, key, body

    def read(self, n: int = -1) -> bytes:
        try:
            return self.body.read() if n is None or n < 0 else self.body.read(n)
        except Exception as exc:
            raise self.s3._fail("reading", self.key, exc) from None

    def readable(self) -> bool:
        return True
