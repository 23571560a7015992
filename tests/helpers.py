"""Shared test helpers: configs, tree fingerprints, database dumps, free ports, subprocess environments."""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import stat
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  #: the repository's root


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a loopback server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment plus this interpreter's import path, for a child Python that must import
    ``backups`` and ``tests`` the way this process does (pytest's ``pythonpath`` is not inherited)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **extra}

CONFIG = """\
application: fmr-test
sources:
  app_db:       {{type: sqlite, path: "{home}/app.db"}}
  app_files:    {{type: files, root: "{home}", include: ["config/**", "user_data/**", "logs/**", "uploads/**"], exclude: ["**/*.tmp"]}}
  system_state: {{type: command, command: ["echo", "fmr-state"]}}
{extra_sources}storages:
  local: {{type: local, path: "{root}/local"}}
{extra_storages}tiers:
  daily:   {{type: incremental, schedule: "0 2 * * 1-6", sources: [{tier_sources}], storages: [{tier_storages}]}}
  weekly:  {{type: full, schedule: "0 1 * * 0", sources: [{tier_sources}], storages: [{tier_storages}]}}
  monthly: {{type: differential, schedule: "0 3 1 * *", sources: [{tier_sources}], storages: [{tier_storages}]}}
"""


def write_config(path: Path, home: Path, root: Path, *, extra_sources: str = "", extra_storages: str = "",
                 tier_sources: str = "app_db, app_files, system_state", tier_storages: str = "local") -> Path:
    path.write_text(CONFIG.format(home=home, root=root, extra_sources=extra_sources, extra_storages=extra_storages,
                                  tier_sources=tier_sources, tier_storages=tier_storages))
    return path


def tree(root: Path, include_tmp: bool = False) -> dict[str, tuple]:
    """path -> (type, sha256 or link target, mode, mtime_ns for files) of everything under root."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if not include_tmp and rel.endswith(".tmp"):
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("f", hashlib.sha256(Path(full).read_bytes()).hexdigest(), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


def app_tree(home: Path) -> dict[str, tuple]:
    """The part of an FMR home the test config backs up (without app.db and *.tmp)."""
    full = tree(home)
    keep = ("config", "user_data", "logs", "uploads")
    return {k: v for k, v in full.items() if k.split(os.sep)[0] in keep}


def db_rows(db: Path) -> dict[str, list]:
    conn = sqlite3.connect(db)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {n: conn.execute(f'SELECT * FROM "{n}" ORDER BY 1').fetchall() for n in names}
    finally:
        conn.close()


def make_app(tmp_path: Path, *, scale: float = 0.5, seed: int = 3) -> dict:
    """A generated FMR home, a repository root and the loaded test config (the ``app`` fixtures)."""
    from backups.config import load_config
    from backups.demo import fmr

    home, root = tmp_path / "home", tmp_path / "repo"
    fmr.generate(home, scale=scale, seed=seed)
    cfg_path = write_config(tmp_path / "backups.yaml", home, root)
    return {"home": home, "root": root, "config_path": cfg_path, "cfg": load_config(cfg_path), "tmp": tmp_path}


def use_shipped_local_config(tmp_path: Path, monkeypatch, *, scale: float = 0.3, seed: int = 11) -> tuple[Path, Path]:
    """A generated FMR home under ``tmp_path/fmr`` and the environment the shipped embedded config
    (``include/backups.local.yaml``) reads: ``FMR_HOME``, ``BACKUP_ROOT`` (``tmp_path/backups``), ``BACKUP_STAGING``
    and ``BACKUP_CONFIG``. Returns (home, root); ``load_config()`` then loads that config."""
    from backups.demo import fmr

    home, root = tmp_path / "fmr", tmp_path / "backups"
    fmr.generate(home, scale=scale, seed=seed)
    (tmp_path / "staging").mkdir()
    monkeypatch.setenv("FMR_HOME", str(home))
    monkeypatch.setenv("BACKUP_ROOT", str(root))
    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    monkeypatch.setenv("BACKUP_CONFIG", str(ROOT / "include" / "backups.local.yaml"))
    return home, root


class LoopbackResolver:
    """The connection-resolver protocol (``backups.connections``) for the tests' loopback servers: a moto S3
    server at ``s3_url`` and a real ``sshd``; ``s3_args`` go to the S3 client (timeouts, retries)."""

    s3_args: dict = {}

    def __init__(self, s3_url: str | None, sshd) -> None:
        self.s3_url, self.sshd = s3_url, sshd

    def s3_client(self, conn_id: str, timeout: float | None = None, max_attempts: int | None = None):
        from tests.unit.storage.test_s3 import make_client

        self.limits = {"timeout": timeout, "max_attempts": max_attempts}  # what the storage asked for
        return make_client(self.s3_url, **self.s3_args)

    def sftp_client_factory(self, conn_id: str, timeout: float | None = None):
        self.limits = {"timeout": timeout}
        return self.sshd.factory(timeout=timeout or 5)

    def secret(self, conn_id: str) -> str:
        raise AssertionError("not used")

    def postgres_dsn(self, conn_id: str) -> str:
        raise AssertionError("not used")


def run_backup(cfg, tier: str, **kw):
    """A backup through the product's one path (``backups.commands.backup.run_backup``, what ``backupctl backup``
    runs): every step of the tier DAG, with the test restore but without Great Expectations unless ``validate=True``
    (GX costs seconds per run). Returns ``(Snapshot, Plan)`` read back from the primary storage."""
    from backups.catalog.manifest import Catalog
    from backups.commands.backup import run_backup as backup
    from backups.engine.backup_pipeline import Plan
    from backups.storage import open_storage

    kw.setdefault("validate", False)
    kw.setdefault("progress", False)
    out = backup(cfg, tier, **kw)
    plan = Plan.from_dict(out["plan"])
    snap = Catalog(open_storage(cfg, plan.storages[0], kw.get("resolver"), read_only=True), cfg.application).get(out["id"])
    return snap, plan


def commit_unverified(cfg, tier: str, *, logical_date=None, resolver=None):
    """A snapshot committed on the tier's first storage and never verified — what a backup killed between its commit
    and its integrity check leaves (or one written by an older version): the engine's plan, extract and commit
    under the backup lock, nothing after. Returns ``(Snapshot, Plan)``."""
    from backups.engine import backup_pipeline as pipeline
    from backups.repository import Repository
    from backups.storage import open_storage

    st = open_storage(cfg, cfg.tier(tier).storages[0], resolver)
    repo = Repository(st, cfg)
    p = pipeline.plan(cfg, tier, logical_date, storage=st, resolver=resolver, catalog=repo.catalog,
                      storages=[st.name])
    with repo.backup_lock(p.snapshot_id) as held:
        for source in p.sources:
            pipeline.extract(cfg, p, source, st, resolver=resolver)
        return pipeline.commit(cfg, p, st, locks=held), p
