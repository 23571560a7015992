from __future__ import annotations

import pytest

from backups.errors import RefusedError
from backups.storage import LocalStorage, MemoryStorage, ReadOnlyStorage

from .contract import StorageContract


class TestLocal(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path):
        return LocalStorage(tmp_path / "repo", name="local")

    def test_temp_files_left_by_a_crash_are_invisible(self, storage):
        storage.put_bytes("x/a", b"1")
        (storage.root / "x" / ".tmp-deadbeef-b").write_bytes(b"partial")
        assert [o.key for o in storage.list("x/")] == ["x/a"]
        assert len(list(storage.orphan_temps())) == 1


class TestMemory(StorageContract):
    @pytest.fixture
    def storage(self):
        return MemoryStorage()

    def test_invalid_keys_refused(self, storage):
        super().test_invalid_keys_refused(storage)


def test_read_only_wrapper_refuses_writes(tmp_path):
    inner = LocalStorage(tmp_path)
    inner.put_bytes("k", b"v")
    ro = ReadOnlyStorage(inner)
    assert ro.get_bytes("k") == b"v"
    with pytest.raises(RefusedError):
        ro.put_bytes("k2", b"x")
    with pytest.raises(RefusedError):
        ro.delete("k")
    assert inner.get_bytes("k") == b"v"
