"""Snapshot manifests, key layout and chain resolution (full → differential → incremental)."""

from .manifest import Catalog, Snapshot, data_time, manifest_key, object_key, seal, snapshot_id, unseal

__all__ = ["Catalog", "Snapshot", "data_time", "manifest_key", "object_key", "seal", "snapshot_id", "unseal"]
