"""Fault-injection suite (issue 8): crashes, full disks and concurrency never lose a committed snapshot.

Seeded (``FAULTS_SEED``, default 8) so a failure is reproducible; ``FAULTS_LONG=1`` runs every crash point and
a longer concurrent loop. Faults:

* SIGKILL of ``backupctl backup`` at injected crash points — the N-th object write of the process, before or
  after the object is created (``BACKUPS_FAULT=kill:N`` / ``kill-after:N``, a storage wrapper) — and of
  ``backup``, ``prune`` and ``restore`` after seeded random delays;
* ENOSPC at the N-th write (``BACKUPS_FAULT=enospc:N``; a real full tmpfs is in tests/integration);
* a bounded concurrent loop of backups of several tiers, the same id twice, prune, verify and restore;
* an old-logical-date backup racing a prune;
* SFTP (real sshd) and S3 (moto server) connections cut while a lock is held and while a snapshot commits.

After every fault the invariants are checked: a prune past the grace period (0 here) leaves no leftover (no
uncommitted data, no ``.tmp-*``), no lock of a finished or killed run remains, ``verify --all --read-data``
passes, every snapshot committed before stays (bytes lost = 0), and every listed snapshot restores identical
to the state recorded when it was taken (each snapshot is restored once: committed snapshots are immutable,
and ``verify --read-data`` re-checks every byte after every fault). Figures are printed at the end.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from backups.cli import main
from backups.demo import fmr
from tests.helpers import LoopbackResolver, db_rows, make_app, tree

SEED = int(os.environ.get("FAULTS_SEED", "8"))
LONG = os.environ.get("FAULTS_LONG") == "1"
CODE = "import sys; from backups.cli import main; sys.exit(main(sys.argv[1:]))"
FIGURES: Counter = Counter()
LOCKS = "locks: {wait_seconds: 60, stale_after_seconds: 30, refresh_seconds: 1, orphan_grace_hours: 0}\n"


def _files(root: Path) -> dict[str, tuple]:
    return {k: v[:3] for k, v in tree(root).items() if v[0] == "f"}


class Repo:
    """One application home and repository, with the expected state of every snapshot id."""

    def __init__(self, tmp: Path, seed: int) -> None:
        self.app = make_app(tmp, scale=0.15, seed=seed)
        self.cfg = tmp / "faults.yaml"
        self.cfg.write_text(self.app["config_path"].read_text() + LOCKS)
        self.home, self.root, self.tmp = self.app["home"], self.app["root"] / "local", tmp
        self.rng = random.Random(seed)
        self.expected: dict[str, tuple] = {}  #: snapshot id -> (app_files state, app_db rows) when it was taken
        self.restored: set[str] = set()
        self.committed: dict[str, int] = {}  #: snapshot id -> stored bytes, once seen committed
        self.day = 0

    def state(self) -> tuple:
        files = {k: v for k, v in _files(self.home).items() if k.split(os.sep)[0] in ("config", "user_data", "logs", "uploads")}
        return files, db_rows(self.home / "app.db")

    def next_id(self, tier: str = "daily") -> tuple[str, str]:
        self.day += 1
        hour = {"daily": 2, "weekly": 1, "monthly": 3}[tier]
        when = f"2026-0{1 + self.day // 28}-{1 + self.day % 28:02d}T{hour:02d}:00:00Z"
        return f"{tier}-{when[:10].replace('-', '')}T{hour:02d}0000Z", when

    def mutate(self) -> None:
        fmr.mutate(self.home, seed=self.rng.randrange(1 << 30), fraction=0.05)

    def cli(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--config", str(self.cfg), "-q", *args])
        return code, out.getvalue(), err.getvalue()

    def spawn(self, *args: str, fault: str | None = None) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        env.pop("BACKUPS_FAULT", None)
        if fault:
            env["BACKUPS_FAULT"] = fault
        return subprocess.Popen([sys.executable, "-c", CODE, "--config", str(self.cfg), "-q", *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def backup_args(self, tier: str, when: str) -> list[str]:
        return ["backup", "--no-validate", "--tier", tier, "--logical-date", when]

    # ---- the invariants ------------------------------------------------------------------------------
    def check(self) -> None:
        rc, out, err = self.cli("prune", "--json")  # grace 0: every leftover of a dead run goes
        assert rc == 0, err
        assert not list(self.root.rglob(".tmp-*")), "a temp object survived a prune past the grace period"
        assert not (self.root / "locks").exists() or not list((self.root / "locks").iterdir()), "a lock was left"
        rc, out, err = self.cli("verify", "--all", "--read-data")
        assert rc == 0, out + err
        rc, out, err = self.cli("list", "--json")
        assert rc == 0, err
        listed = {s["id"]: s["stored_bytes"] for s in json.loads(out)["snapshots"]}
        lost = sum(size for sid, size in self.committed.items() if sid not in listed)
        FIGURES["bytes lost"] += lost
        assert lost == 0, f"committed snapshots vanished: {sorted(set(self.committed) - set(listed))}"
        self.committed.update(listed)
        for sid in sorted(set(listed) - self.restored):
            assert sid in self.expected, f"{sid} was committed but never attempted"
            target = self.tmp / f"restore-{sid}"
            rc, _, err = self.cli("restore", sid, "--target", str(target))
            assert rc == 0, err
            files, rows = self.expected[sid]
            assert _files(target / "app_files") == files, f"{sid}: restored files differ from the state at backup time"
            assert db_rows(target / "app_db" / "app.db") == rows, f"{sid}: restored database differs"
            shutil.rmtree(target)
            self.restored.add(sid)
            FIGURES["snapshots restored and compared"] += 1
        FIGURES["snapshot checks (verify --read-data)"] += len(listed)


def _wait(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode(errors="replace")


@pytest.fixture(scope="module", autouse=True)
def figures():
    yield
    print(f"\nfault suite (seed {SEED}{', long' if LONG else ''}): " +
          ", ".join(f"{k}: {v}" for k, v in sorted(FIGURES.items())))
    assert FIGURES["bytes lost"] == 0


@pytest.fixture
def repo(tmp_path) -> Repo:
    return Repo(tmp_path, SEED)


def test_sigkill_at_injected_crash_points_then_retry(repo):
    """Killed at the N-th object write (before or after it is created); the retry of the same id then commits."""
    points = [(m, n) for m in ("kill", "kill-after") for n in range(1, 22)]
    if not LONG:
        points = random.Random(SEED).sample(points, 10)
    for mode, n in points:
        tier = repo.rng.choice(["daily", "weekly"])
        sid, when = repo.next_id(tier)
        repo.expected[sid] = repo.state()
        rc, err = _wait(repo.spawn(*repo.backup_args(tier, when), fault=f"{mode}:{n}"))
        assert rc in (0, -signal.SIGKILL), err
        FIGURES["faults injected"] += rc == -signal.SIGKILL
        repo.check()
        rc, err = _wait(repo.spawn(*repo.backup_args(tier, when)))  # the retry (an Airflow retry of the run)
        assert rc == 0, err
        repo.check()
        repo.mutate()


def test_sigkill_after_random_delays_of_backup_prune_and_restore(repo):
    rng = random.Random(SEED + 1)
    sid, when = repo.next_id("weekly")
    repo.expected[sid] = repo.state()
    assert repo.cli(*repo.backup_args("weekly", when))[0] == 0
    for _ in range(8 if LONG else 3):
        repo.mutate()
        sid, when = repo.next_id(rng.choice(["daily", "weekly"]))
        repo.expected[sid] = repo.state()
        procs = [repo.spawn(*repo.backup_args(sid.split("-")[0], when)), repo.spawn("prune"),
                 repo.spawn("restore", "latest", "--target", str(repo.tmp / f"killed-restore-{sid}"))]
        time.sleep(rng.uniform(0.2, 1.5))
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                FIGURES["faults injected"] += 1
        for p in procs:
            rc, err = _wait(p)
            assert rc in (0, 9, -signal.SIGKILL), err
        repo.check()


def test_enospc_at_every_write_site_is_exit_5_without_traceback(repo):
    sites = range(1, 22) if LONG else random.Random(SEED + 2).sample(range(1, 22), 6)
    hit = 0
    for n in sites:
        sid, when = repo.next_id("weekly")
        repo.expected[sid] = repo.state()
        rc, err = _wait(repo.spawn(*repo.backup_args("weekly", when), fault=f"enospc:{n}"))
        assert rc in (0, 5), err
        assert "Traceback" not in err
        if rc == 5:
            hit += 1
            FIGURES["faults injected"] += 1
            assert "no space left on device" in err, err
        repo.check()
    assert hit


def test_concurrent_loop_of_backups_prune_verify_restore(repo):
    rng = random.Random(SEED + 3)
    sid, when = repo.next_id("weekly")
    repo.expected[sid] = repo.state()
    assert repo.cli(*repo.backup_args("weekly", when))[0] == 0
    deadline = time.monotonic() + (60 if LONG else 12)
    rounds = 0
    while time.monotonic() < deadline:
        repo.mutate()
        jobs = []
        for tier in ("daily", "weekly", "monthly"):
            sid, when = repo.next_id(tier)
            repo.expected[sid] = repo.state()
            jobs.append(repo.backup_args(tier, when))
        jobs.append(jobs[rng.randrange(3)])  # the same id twice
        jobs += [["prune"], ["verify", "--all"], ["restore", "latest", "--target", str(repo.tmp / f"cr-{rounds}")]]
        rng.shuffle(jobs)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda a: _wait(repo.spawn(*a)), jobs))
        for (rc, err), args in zip(results, jobs, strict=True):
            assert rc in (0, 9), f"{args}: {err}"
            FIGURES["lock waits that gave up (exit 9)"] += rc == 9
        FIGURES["concurrent runs"] += len(jobs)
        rounds += 1
        repo.check()


def test_old_logical_date_backup_racing_prune(repo):
    sid, when = repo.next_id("weekly")
    repo.expected[sid] = repo.state()
    old = "2025-01-05T01:00:00Z"
    repo.expected["weekly-20250105T010000Z"] = repo.state()
    backup = repo.spawn(*repo.backup_args("weekly", old))
    time.sleep(0.1)
    prune = repo.spawn("prune")
    for p in (backup, prune):
        rc, err = _wait(p)
        assert rc == 0, err
    FIGURES["faults injected"] += 1
    repo.check()
    assert "weekly-20250105T010000Z" in repo.committed


# ---- remote storages: the connection is cut while a lock is held and while the snapshot commits -------------
class _Remote(LoopbackResolver):
    """A primary on a real server that can be cut and brought back: SFTP (sshd) or S3 (a moto server); it is
    also the resolver of its connection."""

    s3_args = {"connect_timeout": 1, "read_timeout": 5}

    def __init__(self, kind: str, tmp: Path, sshd=None) -> None:
        super().__init__(None, sshd)
        self.kind, self.tmp = kind, tmp
        self.moto = None
        if kind == "s3":
            from moto.server import ThreadedMotoServer

            self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self.moto.start()
            self.port = self.moto.get_host_and_port()[1]
            self.url = self.s3_url = f"http://127.0.0.1:{self.port}"
            from tests.unit.storage.test_s3 import make_client

            with contextlib.suppress(Exception):  # moto keeps buckets in-process across servers
                make_client(self.url).create_bucket(Bucket="faults")

    def storage_yaml(self) -> str:
        if self.kind == "s3":
            import uuid

            return f"  remote: {{type: s3, conn_id: backup_s3, bucket: faults, prefix: r{uuid.uuid4().hex[:10]}}}\n"
        return f'  remote: {{type: sftp, conn_id: backup_sftp, path: "{self.tmp}/sftp"}}\n'

    def cut(self) -> None:
        if self.kind == "s3":
            self.moto.stop()
        else:
            self.sshd.kill()

    def restore(self) -> None:
        if self.kind == "s3":
            from moto.server import ThreadedMotoServer

            self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self.moto.start()  # moto keeps its state in this process: the bucket is still there
        else:
            self.sshd.start()


@pytest.fixture(params=["sftp", "s3"])
def remote(request, tmp_path):
    if request.param == "sftp":
        from tests.unit.storage.test_sftp import SSHD, Sshd

        if not SSHD:
            pytest.skip("OpenSSH sshd not found")
        (tmp_path / "sshd").mkdir()
        server = Sshd(tmp_path / "sshd")
        server.start()
        yield _Remote("sftp", tmp_path, sshd=server)
        server.kill()
    else:
        pytest.importorskip("moto.server")
        r = _Remote("s3", tmp_path)
        yield r
        r.moto.stop()


@pytest.mark.parametrize("when", ["lock refresh", "commit"])
def test_connection_cut_while_locked_and_while_committing(remote, tmp_path, when):
    import threading

    from backups.catalog import Catalog
    from backups.config import load_config
    from backups.engine.checker import verify
    from backups.engine.restorer import restore
    from backups.errors import BackupError
    from backups.storage import open_storage
    from tests.helpers import run_backup, write_config

    app = make_app(tmp_path / "app", scale=0.1, seed=SEED)
    with open(app["home"] / "uploads" / "big.bin", "wb") as fh:
        fh.write(os.urandom(12 << 20))
    cfg_path = write_config(tmp_path / "r.yaml", app["home"], app["root"], extra_storages=remote.storage_yaml(),
                            tier_storages="remote")
    cfg_path.write_text(cfg_path.read_text() + "locks: {wait_seconds: 20, stale_after_seconds: 1, refresh_seconds: 0.2}\n")
    cfg = load_config(cfg_path)
    st = open_storage(cfg, "remote", remote)
    expected = (_files(app["home"] / "uploads"), db_rows(app["home"] / "app.db"))

    def trigger() -> bool:
        try:
            keys = [o.key for o in st.list("")]
        except BackupError:
            return False
        if when == "lock refresh":
            return any(k.startswith("locks/") for k in keys)
        return sum(k.endswith(".part.json") for k in keys) == 3  # every source extracted: the commit is next

    outcome: dict = {}

    def run() -> None:
        try:
            outcome["snap"] = run_backup(cfg, "weekly", logical_date="2026-05-03T01:00:00Z", resolver=remote)[0]
        except BackupError as exc:
            outcome["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and t.is_alive() and not trigger():
        time.sleep(0.01)
    remote.cut()
    FIGURES["connection cuts"] += 1
    time.sleep(1.5)  # longer than stale_after: a holder that lost its heartbeat must not commit on it
    remote.restore()
    t.join(120)
    assert not t.is_alive()
    # whatever happened, the storage holds no half snapshot; the retry of the same run commits it
    st = open_storage(cfg, "remote", remote)
    cat = Catalog(st, "fmr-test")
    if "error" in outcome:
        assert cat.snapshots == {} or verify(st, cat, read_data=True).ok
    snap, _ = run_backup(cfg, "weekly", logical_date="2026-05-03T01:00:00Z", resolver=remote)
    cat = Catalog(st, "fmr-test")
    assert list(cat.snapshots) == [snap.id] and verify(st, cat, read_data=True).ok
    FIGURES["snapshot checks (verify --read-data)"] += 1
    restore(st, cat, snap, tmp_path / "out")
    assert (_files(tmp_path / "out" / "app_files" / "uploads"), db_rows(tmp_path / "out" / "app_db" / "app.db")) == expected
    FIGURES["snapshots restored and compared"] += 1
    from backups.repository import Repository

    with Repository(st, cfg).lock("repo", exclusive=True, operation="test"):  # sweeps locks of the killed attempt
        pass
    assert list(st.list("locks/")) == []
