"""The storage contract suite: every backend plugs in by subclassing :class:`StorageContract` and providing a
``storage`` fixture that yields a fresh, empty storage. (restic internal/backend/test, fsspec tests/abstract)"""

from __future__ import annotations

import hashlib
import os

import pytest

from backups.errors import ObjectExistsError, ObjectNotFound, StorageError


class StorageContract:
    """Behaviour every storage must have. Subclasses define the ``storage`` fixture."""

    big_size = 3 * (1 << 20) + 12345  # crosses chunk / multipart boundaries of every backend

    def test_roundtrip_small(self, storage):
        storage.put_bytes("a/b/c.bin", b"hello")
        assert storage.get_bytes("a/b/c.bin") == b"hello"
        assert storage.stat("a/b/c.bin").size == 5

    def test_roundtrip_streamed_large(self, storage):
        data = os.urandom(self.big_size)
        with storage.open_write("big/object.bin") as fh:
            for i in range(0, len(data), 100_000):
                fh.write(data[i : i + 100_000])
        h = hashlib.sha256()
        with storage.open_read("big/object.bin") as fh:
            while chunk := fh.read(1 << 16):
                h.update(chunk)
        assert h.hexdigest() == hashlib.sha256(data).hexdigest()
        assert storage.stat("big/object.bin").size == len(data)

    def test_ranged_read(self, storage):
        storage.put_bytes("r.bin", bytes(range(256)) * 4)
        with storage.open_read("r.bin", offset=10, length=20) as fh:
            assert fh.read() == (bytes(range(256)) * 4)[10:30]

    def test_existing_object_is_never_overwritten(self, storage):
        storage.put_bytes("o.bin", b"one")
        with pytest.raises(ObjectExistsError, match="o.bin already exists"):
            storage.put_bytes("o.bin", b"two-two")
        assert storage.get_bytes("o.bin") == b"one"
        assert [o.key for o in storage.list("")] == ["o.bin"]  # no temp or partial object left visible

    def test_identical_rewrite_is_an_idempotent_retry(self, storage):
        data = os.urandom(self.big_size)
        storage.put_bytes("same.bin", data)
        storage.put_bytes("same.bin", data)
        assert storage.get_bytes("same.bin") == data

    def test_concurrent_creates_of_one_key_one_wins(self, storage):
        """Two writers open the same key at once: the first to close creates it, the second fails cleanly."""
        with pytest.raises(ObjectExistsError):
            with storage.open_write("race.bin") as a:
                a.write(b"A" * 70_000)
                with storage.open_write("race.bin") as b:
                    b.write(b"B" * 50_000)
        assert storage.get_bytes("race.bin") == b"B" * 50_000
        assert [o.key for o in storage.list("")] == ["race.bin"]
        assert [t.key for t in storage.temps()] == []

    def test_mtime_is_reported(self, storage):
        import time

        before = time.time()
        storage.put_bytes("m/x", b"1")
        for info in (storage.stat("m/x"), *storage.list("m/")):
            assert info.mtime is not None and before - 5 < info.mtime < time.time() + 5

    def test_missing_key_is_not_found(self, storage):
        with pytest.raises(ObjectNotFound):
            storage.stat("nope/x")
        with pytest.raises(ObjectNotFound):
            with storage.open_read("nope/x") as fh:
                fh.read()
        assert not storage.exists("nope/x")

    def test_list_by_prefix_sorted(self, storage):
        for k in ["snapshots/b.json", "snapshots/a.json", "data/s1/x.tar.zst", "data/s2/y.tar.zst"]:
            storage.put_bytes(k, k.encode())
        assert [o.key for o in storage.list("snapshots/")] == ["snapshots/a.json", "snapshots/b.json"]
        assert [o.key for o in storage.list("data/s1/")] == ["data/s1/x.tar.zst"]
        assert len(list(storage.list(""))) == 4
        assert list(storage.list("zzz/")) == []

    def test_failed_write_leaves_nothing(self, storage):
        class Boom(Exception):
            pass

        with pytest.raises(Boom):
            with storage.open_write("half/written.bin") as fh:
                fh.write(b"x" * 200_000)
                raise Boom()
        assert not storage.exists("half/written.bin")
        assert [o.key for o in storage.list("half/")] == []

    def test_failed_write_over_existing_keeps_old_object(self, storage):
        storage.put_bytes("keep.bin", b"old")
        with pytest.raises(RuntimeError):
            with storage.open_write("keep.bin") as fh:
                fh.write(b"new-partial")
                raise RuntimeError("interrupted")
        assert storage.get_bytes("keep.bin") == b"old"

    def test_in_progress_write_not_listed(self, storage):
        with storage.open_write("prog/obj.bin") as fh:
            fh.write(b"y" * 1000)
            assert [o.key for o in storage.list("prog/")] == []
        assert [o.key for o in storage.list("prog/")] == ["prog/obj.bin"]

    def test_delete(self, storage):
        storage.put_bytes("d/x", b"1")
        storage.delete("d/x")
        assert not storage.exists("d/x")
        storage.delete("d/x")  # idempotent

    def test_invalid_keys_refused(self, storage):
        for bad in ["../escape", "/abs", "a//b", "a/./b"]:
            with pytest.raises(StorageError):
                storage.put_bytes(bad, b"x")

    def test_copy_to_memory(self, storage):
        from backups.storage import MemoryStorage

        storage.put_bytes("c/x.bin", b"payload")
        other = MemoryStorage()
        assert storage.copy_to("c/x.bin", other) == 7
        assert other.get_bytes("c/x.bin") == b"payload"

    def test_concurrent_use_when_declared_thread_safe(self, storage):
        """The engine shares one instance between threads only when ``thread_safe`` says it may."""
        import threading

        if not storage.thread_safe:
            pytest.skip(f"{type(storage).__name__} is used by one thread at a time")
        payloads = {f"t/{i}.bin": os.urandom(300_000 + i) for i in range(6)}
        errors: list[BaseException] = []

        def work(keys):
            try:
                for k in keys:
                    storage.put_bytes(k, payloads[k])
                for k in keys:
                    assert storage.get_bytes(k) == payloads[k]
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        keys = sorted(payloads)
        threads = [threading.Thread(target=work, args=(keys[i::2],)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert [o.key for o in storage.list("t/")] == keys
