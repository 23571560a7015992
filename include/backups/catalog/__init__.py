"""Snapshot manifests, key layout and chain resolution (full → differential → incremental)."""

from .manifest import Catalog, Snapshot, manifest_key, object_key, seal, snapshot_id, unseal

__all__ = ["Catalog", "Snapshot", "manifest_key", "object_key", "seal", "snapshot_id", "unseal"]
