"""``make bench``: backupctl against tar+zstd, restic, borg and pg_dump on a synthetic FMR V2 tree.

Not a test: one run, one Markdown table (stdout and ``.bench/results.md``), PASS/FAIL against the targets.

Algorithm:

1. generate the benchmark tree under ``.bench/tree`` (``backups.demo.fmr.generate_big``: ≈ 800 MB × scale,
   ≈ 20,000 × scale files, ≈ 60 MB × scale SQLite) and record its listing (state S0);
2. full backups of S0: backupctl (CLI, temporary config), ``tar | zstd -3 -T0`` (baseline), restic, borg;
   then the fan-out: the same full backup to local + S3 (moto) + SFTP (OpenSSH sshd), both servers on loopback
   (``backups.demo.servers``), vs the local-only run; with the Airflow-connection start-up cost, and the bytes
   read from the source (``/proc/self/io`` of the backupctl process, split by engine phase);
3. ``fmr.mutate`` (≈ 1 % changed) → state S1; incremental backups: backupctl, restic (baseline), borg;
4. restores: backupctl ``latest`` (S1 chain), ``zstd -dc | tar -x`` (baseline, S0), restic, borg (S1); each
   restored tree is checked against the listing it should reproduce (paths and sizes, SQLite row counts);
   then backupctl again with ``--reread`` (``n/a`` when ``restore --help`` has no such option) and a partial
   restore of 1 % of the files source (every 100th path), checked and compared with the full restore;
4b. many small files (``--small-files``, default 200,000): full backup vs ``tar | zstd -3 -T0`` and restore
   vs ``zstd -dc | tar -x`` on a tree of 0.5-12 KB files, both restores checked;
5. PostgreSQL: ``bench_pg`` filled by ``pgbench -i -s N`` (or generate_series), backupctl full backup of a
   postgres source vs ``pg_dump -Fc``; the database is dropped at the end;
6. DAG folder parse time (``DagBag``), only when ``dags/`` holds Python files.

Every measured command runs under a fresh ``python -c`` wrapper: wall time with ``perf_counter``, peak RSS as
the larger of (a) the sum of the RSS of the whole process tree sampled every 20 ms (psutil) and (b) the largest
``ru_maxrss`` of ``getrusage(RUSAGE_CHILDREN)`` (catches short peaks the sampler misses). Server-side memory
(the PostgreSQL backends) is not part of the tree. Caches cannot be dropped here: the tree is warm in the page
cache for every tool alike, and each measurement runs once.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "include"))

from backups.demo import fmr  # noqa: E402  (after the sys.path fix for a checkout without the editable install)

PG_DSN = "postgresql://postgres@127.0.0.1:5432/bench_pg"
PG_ADMIN = ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"]
INCLUDE = ["config/**", "user_data/**", "logs/**", "uploads/**"]
RSS_LIMIT_MB = 150.0
FLAT_TOLERANCE = 1.25  # "flat": peak RSS at 4× data within +25 % (or +20 MB) of the smaller run

# A fresh interpreter per measurement so RUSAGE_CHILDREN only sees this command's process tree.
MEASURE = r"""
import json, resource, subprocess, sys, threading, time
out, log, cmd, cwd, env = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] or None, json.loads(sys.argv[5])
try:
    import psutil
except ImportError:
    psutil = None
peak = 0
done = threading.Event()
def sample(pid):
    global peak
    try:
        root = psutil.Process(pid)
    except Exception:
        return
    while not done.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except Exception:
                    pass
            peak = max(peak, total)
        except Exception:
            pass
        done.wait(0.02)
with open(log, "ab") as fh:
    fh.write(("$ " + (cmd if isinstance(cmd, str) else " ".join(cmd)) + "\n").encode())
    fh.flush()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, shell=isinstance(cmd, str), executable="/bin/bash" if isinstance(cmd, str) else None,
                            stdout=fh, stderr=fh, cwd=cwd, env=env)
    t = threading.Thread(target=sample, args=(proc.pid,), daemon=True) if psutil else None
    if t:
        t.start()
    rc = proc.wait()
    wall = time.perf_counter() - start
    done.set()
    if t:
        t.join()
maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
json.dump({"rc": rc, "wall": wall, "sampled_rss": peak, "maxrss": maxrss, "rss": max(peak, maxrss)}, open(out, "w"))
"""


# backupctl's main in this interpreter (same code path as the console script), and at exit its /proc/self/io:
# rchar (every byte read by read()/pread(), page cache hits included) and read_bytes (from the block device), plus
# rchar split by engine phase: `extract` (reading the sources into the primary storage) and `replicate` (copying
# the committed snapshot from the primary to the other storages), with the peak RSS (VmHWM) before and after each
# phase call. Usage: python -c IO_LAUNCH OUT.json INCLUDE ARGS...
IO_LAUNCH = r"""
import json, sys, time
out, sys.path[:0], argv = sys.argv[1], [sys.argv[2]], sys.argv[3:]
def io():
    with open("/proc/self/io") as fh:
        return {k: int(v) for k, v in (line.split(":") for line in fh)}
def hwm():
    with open("/proc/self/status") as fh:
        return next((int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:")), 0)
phases = {"extract": [], "replicate": []}
if "backup" in argv:
    import backups.engine.backup_pipeline as pipeline
    def wrap(name):
        orig = getattr(pipeline, name)
        def counted(*a, **kw):
            r0, t0, h0 = io()["rchar"], time.perf_counter(), hwm()
            try:
                return orig(*a, **kw)
            finally:
                what = getattr(a[3], "name", "?") if name == "replicate" and len(a) > 3 else (a[2] if len(a) > 2 else "?")
                r1, t1 = io()["rchar"], time.perf_counter()
                phases[name].append({"target": str(what), "rchar": r1 - r0, "seconds": t1 - t0, "r0": r0, "r1": r1,
                                     "t0": t0, "t1": t1, "hwm_before": h0, "hwm_after": hwm()})
        setattr(pipeline, name, counted)
    wrap("extract")
    wrap("replicate")
from backups.cli import main
rc = 1
try:
    rc = main(argv)
finally:
    with open(out, "w") as fh:
        json.dump({**io(), "hwm": hwm(), "phases": phases}, fh)
sys.exit(rc)
"""


@dataclass
class Run:
    rc: int
    wall: float
    rss: int
    log: Path

    @property
    def rss_mb(self) -> float:
        return self.rss / 1e6


@dataclass
class Row:
    operation: str
    tool: str
    wall: float | None = None
    rss_mb: float | None = None
    size_mb: float | None = None
    ratio: float | None = None
    target: str = ""
    result: str = "—"
    note: str = ""


@dataclass
class Bench:
    args: argparse.Namespace
    base: Path
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    backupctl_rss: list[float] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.logs = self.base / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env.update(
            RESTIC_PASSWORD="bench-not-secret",
            RESTIC_CACHE_DIR=str(self.base / "restic-cache"),
            BORG_BASE_DIR=str(self.base / "borg-home"),
            BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
            BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
            BORG_PASSPHRASE="",
            PGCONNECT_TIMEOUT="5",
        )

    # ------------------------------------------------------------------------------------------- running
    def measure(
        self,
        name: str,
        cmd: list[str] | str,
        cwd: Path | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> Run:
        out = self.logs / f"{name}.json"
        log = self.logs / f"{name}.log"
        log.unlink(missing_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-c",
                MEASURE,
                str(out),
                str(log),
                json.dumps(cmd),
                str(cwd or ""),
                json.dumps(env or self.env),
            ],
            check=True,
        )
        data = json.loads(out.read_text())
        run = Run(data["rc"], data["wall"], data["rss"], log)
        status = "ok" if run.rc == 0 else f"exit {run.rc}"
        print(f"  {name:<28} {run.wall:8.2f} s  {run.rss_mb:8.1f} MB  {status}", flush=True)
        if check and run.rc != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"{name} failed (exit {run.rc}); log {log}:\n{tail}")
        return run

    def quiet(self, cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, **kw)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


# ----------------------------------------------------------------------------------------------- helpers
def du(path: Path) -> int:
    """Bytes in regular files under ``path`` (a file's own size for a file)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total


def listing(root: Path) -> dict[str, int]:
    """Relative path → size of the regular files under ``root`` (SQLite ``-wal`` / ``-shm`` side files ignored)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath, f)
            if not p.is_symlink() and not f.endswith(("-wal", "-shm")):
                out[p.relative_to(root).as_posix()] = p.stat().st_size
    return out


def selected(files: dict[str, int]) -> dict[str, int]:
    """What the backupctl ``app_files`` source should hold: the included directories, minus ``*.tmp``."""
    tops = tuple(p.split("/")[0] + "/" for p in INCLUDE)
    return {k: v for k, v in files.items() if k.startswith(tops) and not k.endswith(".tmp")}


def compare(expected: dict[str, int], got: dict[str, int]) -> str:
    """'' when equal, else a short description of the difference."""
    if expected == got:
        return ""
    missing = sorted(expected.keys() - got.keys())
    extra = sorted(got.keys() - expected.keys())
    size = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    parts = []
    for label, items in (("missing", missing), ("unexpected", extra), ("wrong size", size)):
        if items:
            parts.append(f"{len(items)} {label} (e.g. {items[0]})")
    return "; ".join(parts)


def find_root(out: Path, marker: str = "config/app.yaml") -> Path | None:
    """Where a tool put the tree inside its restore directory (restic keeps absolute paths)."""
    hits = sorted(out.rglob(marker), key=lambda p: len(p.parts))
    return hits[0].parent.parent if hits else None


def tool_version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except Exception:  # noqa: BLE001 - a version string is decoration only
        return "?"


def rm(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def verdict(value: float | None, limit: float) -> str:
    if value is None:
        return "n/a"
    return "PASS" if value <= limit else "FAIL"


def write_config(path: Path, tree: Path, repo: Path) -> None:
    q = json.dumps  # JSON strings are valid YAML scalars
    path.write_text(
        f"""# written by benchmarks/run.py
application: bench
sources:
  app_db: {{type: sqlite, path: {q(str(tree / "app.db"))}}}
  app_files: {{type: files, root: {q(str(tree))}, include: {q(INCLUDE)}, exclude: ["**/*.tmp"]}}
  pg: {{type: postgres, dsn: {q(PG_DSN)}}}
storages:
  local: {{type: local, path: {q(str(repo))}}}
tiers:
  bench: {{type: incremental, schedule: "0 2 * * *", sources: [app_db, app_files], storages: [local]}}
  pg: {{type: full, schedule: "0 2 * * *", sources: [pg], storages: [local]}}
""",
        encoding="utf-8",
    )


def backupctl_bin() -> str:
    cand = Path(sys.executable).parent / "backupctl"
    return str(cand) if cand.exists() else (shutil.which("backupctl") or str(cand))


def ctl_io(out: Path, cfg: Path) -> list[str]:
    """backupctl under IO_LAUNCH (writes its /proc/self/io to ``out``); append the backupctl arguments."""
    return [sys.executable, "-c", IO_LAUNCH, str(out), str(ROOT / "include"), "--config", str(cfg)]


def write_fanout_config(path: Path, tree: Path, repo: Path, sftp: Path, bucket: str) -> None:
    q = json.dumps
    path.write_text(
        f"""# written by benchmarks/run.py: the bench sources fanned out to local + S3 (moto) + SFTP (sshd) on loopback
application: bench
sources:
  app_db: {{type: sqlite, path: {q(str(tree / "app.db"))}}}
  app_files: {{type: files, root: {q(str(tree))}, include: {q(INCLUDE)}, exclude: ["**/*.tmp"]}}
storages:
  local: {{type: local, path: {q(str(repo))}}}
  cloud: {{type: s3, conn_id: backup_s3, bucket: {q(bucket)}, prefix: bench}}
  offsite: {{type: sftp, conn_id: backup_sftp, path: {q(str(sftp))}}}
tiers:
  fanout: {{type: full, schedule: "0 2 * * *", sources: [app_db, app_files], storages: [local, cloud, offsite]}}
""",
        encoding="utf-8",
    )


def _s3_usage(env: dict[str, str], prefix: str) -> tuple[int, list[str]]:
    """Bytes under ``prefix`` in the moto bucket, and the manifest keys there."""
    import boto3

    conn = json.loads(env["AIRFLOW_CONN_BACKUP_S3"])
    client = boto3.client(
        "s3",
        endpoint_url=conn["extra"]["endpoint_url"],
        region_name=conn["extra"]["region_name"],
        aws_access_key_id=conn["login"],
        aws_secret_access_key=conn["password"],
    )
    total, manifests = 0, []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=env["BACKUP_S3_BUCKET"], Prefix=prefix):
        for obj in page.get("Contents", []):
            total += obj["Size"]
            if obj["Key"].startswith(prefix + "snapshots/") and obj["Key"].endswith(".json"):
                manifests.append(obj["Key"])
    return total, manifests


def bench_fanout(
    b: Bench, tree: Path, data: int, local: Run, local_stored: int, startup_local: Run, local_io: dict[str, Any]
) -> None:
    """Full backup to local + S3 + SFTP vs local only: wall time (raw and minus start-up), RSS, source reads."""
    from backups.demo import servers

    op = "full backup, fan-out local+S3+SFTP"
    try:
        servers.find_sshd()
        import moto.server  # noqa: F401 - only checking that moto's server mode is installed
    except (servers.ServerError, ImportError) as exc:
        b.add(Row(op, "backupctl", target="≤ 1.5× local only", result="n/a", note=f"not run: {exc}"))
        return
    repo, sftp, cfg = b.base / "repo-fanout", b.base / "sftp-fanout", b.base / "bench-fanout.yaml"
    for p in (repo, sftp):
        rm(p)
    snap = "fanout-20240601T020000Z"
    print("fan-out: the same full backup to local + S3 (moto) + SFTP (sshd), servers on loopback", flush=True)
    try:
        with servers.remote_servers(sftp) as renv:
            write_fanout_config(cfg, tree, repo, sftp, renv["BACKUP_S3_BUCKET"])
            env = {
                **b.env,
                **renv,
                "AIRFLOW_HOME": str(b.base / "airflow-home"),  # never the project's .airflow/
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            }
            start_io, fan_io = b.logs / "startup-fanout.io.json", b.logs / "fanout-backupctl.io.json"
            # `list` alone answers from the local storage without Airflow; --storage cloud pays the whole fixed
            # cost of a remote config: the Airflow import, the connection lookup, the boto3 client, one LIST
            start = b.measure(
                "startup-backupctl-list-cloud", [*ctl_io(start_io, cfg), "list", "--storage", "cloud"], env=env
            )
            cpu0 = os.times()
            run = b.measure(
                "fanout-backupctl",
                [*ctl_io(fan_io, cfg), "backup", "--tier", "fanout", "--logical-date", "2024-06-01T02:00:00+00:00"],
                env=env,
            )
            cpu1 = os.times()
            moto_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)  # this process = the moto server
            # not in b.backupctl_rss: that row is the plain CLI's; here the Airflow import alone is ~150 MB
            s3_bytes, s3_manifests = _s3_usage(renv, "bench/")
            sftp_bytes, local_bytes = du(sftp), du(repo)
            landed = [
                name
                for name, ok in (
                    ("local", (repo / "snapshots" / f"{snap}.json").is_file()),
                    ("cloud", f"bench/snapshots/{snap}.json" in s3_manifests),
                    ("offsite", (sftp / "snapshots" / f"{snap}.json").is_file()),
                )
                if ok
            ]
    except (servers.ServerError, RuntimeError) as exc:
        b.add(Row(op, "backupctl", target="≤ 1.5× local only", result="FAIL", note=str(exc).splitlines()[0][:200]))
        return
    finally:
        if not b.args.keep:
            rm(repo)
            rm(sftp)
    b.notes.append(
        "Fan-out: moto's S3 server (in the benchmark process) and OpenSSH sshd run on loopback on the same host, so "
        "their CPU competes with backupctl's; the SFTP connection sets compress=false (Airflow's SSHHook turns zlib "
        "on by default, which cut pipelined SFTP writes of incompressible data from 155 to 36 MB/s here); the "
        "offsite storage is not encrypted in this config. Source reads = rchar of the backupctl process during the "
        "engine's extract phase ÷ source bytes (the SQLite online copy is read back from staging, hence > 1.0)."
    )
    fio = json.loads(fan_io.read_text())
    sio = json.loads(start_io.read_text())
    copies = {c["target"]: c for c in fio["phases"]["replicate"]}
    extract_s = _span(fio["phases"]["extract"], "t")
    steps = fio["phases"]["extract"]
    peaks = [("start-up", steps[0]["hwm_before"])] if steps else []
    peaks += [("extract", steps[-1]["hwm_after"])] if steps else []
    peaks += [(f"copy to {n}", c["hwm_after"]) for n, c in copies.items()]
    b.add(
        Row(
            "CLI start-up, Airflow connections (`list --storage cloud`)",
            "backupctl",
            start.wall,
            start.rss_mb,
            target="info",
            note=f"fixed cost of a config with conn_ids (Airflow import, AWS connection, boto3); local-only "
            f"start-up {startup_local.wall:.2f} s; read {sio['rchar'] / 1e6:,.0f} MB (rchar)",
        )
    )
    r = ratio(run.wall, local.wall)
    where = ", ".join(
        f"{n} {v / 1e6:,.1f}" for n, v in (("local", local_bytes), ("S3", s3_bytes), ("SFTP", sftp_bytes))
    )
    ok_all = landed == ["local", "cloud", "offsite"]
    b.add(
        Row(
            op,
            "backupctl",
            run.wall,
            run.rss_mb,
            (local_bytes + s3_bytes + sftp_bytes) / 1e6,
            r,
            "≤ 1.5× local only",
            verdict(r, 1.5) if ok_all else "FAIL",
            note=f"raw; landed on {', '.join(landed) or 'nothing'} (MB: {where}); extract {extract_s:.1f} s, "
            + ", ".join(f"copy to {n} {c['seconds']:.1f} s" for n, c in copies.items())
            + f" (in parallel, {_span(list(copies.values()), 't'):.1f} s together); peak RSS MB "
            + ", ".join(f"{k} {v / 1e6:.0f}" for k, v in peaks)
            + " (not in the 'peak RSS, all runs' row: the Airflow import alone is ~150 MB)"
            + f"; moto server CPU {moto_cpu:.1f} s (in the benchmark process, not counted in RSS)",
        )
    )
    fixed_r = ratio(run.wall - start.wall, local.wall - startup_local.wall)
    b.add(
        Row(
            "fan-out minus fixed start-up",
            "backupctl",
            run.wall - start.wall,
            ratio=fixed_r,
            target="≤ 1.5× local only",
            result=verdict(fixed_r, 1.5) if ok_all else "FAIL",
            note=f"({run.wall:.2f} − {start.wall:.2f}) ÷ (local {local.wall:.2f} − {startup_local.wall:.2f})",
        )
    )
    # sources are extracted concurrently (and copies run in parallel): a phase's reads are the process's rchar
    # from the phase's first start to its last end, not the sum of overlapping per-call windows
    l_ext = _span(local_io["phases"]["extract"], "r")
    f_ext = _span(fio["phases"]["extract"], "r")
    copy_read = _span(list(copies.values()), "r")
    b.add(
        Row(
            "source reads, local only",
            "backupctl",
            size_mb=l_ext / 1e6,
            ratio=ratio(l_ext, data),
            target="info",
            note=f"bytes read while extracting ÷ {data / 1e6:,.1f} MB of source data",
        )
    )
    once = f_ext <= 1.05 * l_ext and (ratio(f_ext, data) or 0) <= 1.2
    b.add(
        Row(
            "source reads, fan-out",
            "backupctl",
            size_mb=f_ext / 1e6,
            ratio=ratio(f_ext, data),
            target="≈ 1× data, = local only (read once)",
            result="PASS" if once else "FAIL",
            note=f"{ratio(f_ext, l_ext) or 0:.2f}× the local-only reads; the copies read {copy_read / 1e6:,.1f} MB "
            f"from the local repository ({ratio(copy_read, local_stored) or 0:.2f}× its size), not the source; "
            f"process total rchar {fio['rchar'] / 1e6:,.0f} MB, read_bytes {fio['read_bytes'] / 1e6:,.1f} MB",
        )
    )


def _span(calls: list[dict], field: str) -> float:
    """Union of concurrent phase calls: last end minus first start of ``field`` ("t" seconds, "r" rchar)."""
    if not calls:
        return 0
    if f"{field}0" not in calls[0]:  # results of an older launcher: per-call values
        return sum(c["seconds" if field == "t" else "rchar"] for c in calls)
    return max(c[f"{field}1"] for c in calls) - min(c[f"{field}0"] for c in calls)


# ----------------------------------------------------------------------------------------------- phases
def bench_files(b: Bench) -> None:
    args = b.args
    tree, repo, cfg = b.base / "tree", b.base / "repo", b.base / "bench.yaml"
    for p in (
        tree,
        repo,
        b.base / "restic",
        b.base / "borg",
        b.base / "tree.tar.zst",
        b.base / "restic-cache",
        b.base / "borg-home",
    ):
        rm(p)
    print(f"generating the tree (scale {args.scale}) under {tree} ...", flush=True)
    summary = fmr.generate_big(
        tree,
        target_bytes=800e6 * args.scale,
        files=max(50, round(20_000 * args.scale)),
        db_bytes=60e6 * args.scale,
        seed=args.seed,
    )
    b.notes.append(
        f"Tree: {summary['files']:,} files, {summary['bytes'] / 1e6:,.0f} MB "
        f"(SQLite {summary['db_bytes'] / 1e6:,.0f} MB, {summary['tables']['telemetry']:,} telemetry rows), "
        f"generated in {summary['seconds']:.0f} s (seed {args.seed}, scale {args.scale})."
    )
    s0 = listing(tree)
    write_config(cfg, tree, repo)
    ctl = [backupctl_bin(), "--config", str(cfg)]
    have_restic = shutil.which("restic") is not None and not args.skip_others
    have_borg = shutil.which("borg") is not None and not args.skip_others

    # ---- fixed cost: interpreter start, imports, config load, storage check
    run = startup = b.measure("startup-backupctl-list", [*ctl, "list"])
    b.add(
        Row(
            "CLI start-up (`list`, empty repo)",
            "backupctl",
            run.wall,
            run.rss_mb,
            target="info",
            note="fixed cost in every backupctl row",
        )
    )

    # ---- full
    print("full backups", flush=True)
    base = b.measure("full-tar-zstd", f"tar -C {q(tree)} -cf - . | zstd -q -3 -T0 -o {q(b.base / 'tree.tar.zst')}")
    tar_size = du(b.base / "tree.tar.zst")
    b.add(Row("full backup", "tar + zstd -3 -T0", base.wall, base.rss_mb, tar_size / 1e6, 1.0, "baseline"))
    local_io = b.logs / "full-backupctl.io.json"
    run = b.measure(
        "full-backupctl",
        [
            *ctl_io(local_io, cfg),
            *["backup", "--tier", "bench", "--type", "full", "--logical-date", "2024-06-01T02:00:00+00:00"],
        ],
    )
    b.backupctl_rss.append(run.rss_mb)
    b.add(Row("full backup", "backupctl (whole procedure)", run.wall, run.rss_mb, du(repo) / 1e6,
              ratio(run.wall, base.wall), "info", note="`backupctl backup`: + integrity check, test restore, report"))
    local_full, local_stored = run, du(repo)
    xcfg, xrepo = b.base / "bench-extract.yaml", b.base / "repo-extract"
    write_config(xcfg, tree, xrepo)
    ext = bench_extract(b, "full-backupctl-extract", xcfg, xrepo, "bench", "full", "2024-06-01T02:00:00+00:00")
    r = ratio(ext.wall, base.wall)
    b.add(Row("full backup", "backupctl extract + commit", ext.wall, ext.rss_mb, local_stored / 1e6, r,
              "≤ 1.3× tar+zstd", verdict(r, 1.3), note="the backup alone: what tar + zstd does"))
    restic_full = borg_full = None
    if have_restic:
        b.quiet(["restic", "init", "--repo", str(b.base / "restic")], check=True)
        restic_full = b.measure(
            "full-restic", ["restic", "backup", "--repo", str(b.base / "restic"), "--host", "bench", "."], cwd=tree
        )
        b.add(
            Row(
                "full backup",
                "restic",
                restic_full.wall,
                restic_full.rss_mb,
                du(b.base / "restic") / 1e6,
                ratio(restic_full.wall, base.wall),
                "info",
            )
        )
    else:
        b.add(Row("full backup", "restic", note="not installed" if not args.skip_others else "skipped"))
    if have_borg:
        b.quiet(["borg", "init", "--encryption=none", str(b.base / "borg")], check=True)
        borg_full = b.measure(
            "full-borg", ["borg", "create", "--compression", "zstd,3", f"{b.base / 'borg'}::full", "."], cwd=tree
        )
        b.add(
            Row(
                "full backup",
                "borg",
                borg_full.wall,
                borg_full.rss_mb,
                du(b.base / "borg") / 1e6,
                ratio(borg_full.wall, base.wall),
                "info",
            )
        )
    else:
        b.add(Row("full backup", "borg", note="not installed" if not args.skip_others else "skipped"))

    # ---- fan-out: the same full backup to local + S3 + SFTP
    if args.skip_fanout:
        b.add(Row("full backup, fan-out local+S3+SFTP", "backupctl", note="skipped (--skip-fanout)"))
    else:
        data = sum(selected(s0).values()) + s0.get("app.db", 0)
        bench_fanout(b, tree, data, local_full, local_stored, startup, json.loads(local_io.read_text()))

    # ---- incremental
    changes = fmr.mutate(tree, seed=args.seed + 1, fraction=0.01)
    b.notes.append(
        f"Mutation (~1 %): {len(changes['edited'])} documents edited, {len(changes['deleted'])} deleted, "
        f"{len(changes['appended'])} logs appended, 1 upload added, {changes['db']['telemetry_inserted']:,} telemetry rows "
        f"inserted, {len(changes['db']['robots_updated'])} robots updated."
    )
    s1 = listing(tree)
    s1_db = fmr.table_counts(tree / "app.db")
    print("incremental backups", flush=True)
    restic_incr = None
    if have_restic:
        before = du(b.base / "restic")
        restic_incr = b.measure(
            "incr-restic", ["restic", "backup", "--repo", str(b.base / "restic"), "--host", "bench", "."], cwd=tree
        )
        b.add(
            Row(
                "incremental (~1 %)",
                "restic",
                restic_incr.wall,
                restic_incr.rss_mb,
                (du(b.base / "restic") - before) / 1e6,
                1.0,
                "baseline",
            )
        )
    else:
        b.add(
            Row(
                "incremental (~1 %)",
                "restic",
                note="not installed — no baseline" if not args.skip_others else "skipped",
            )
        )
    before = du(repo)
    # extract + commit first, on an untimed copy of the repository (the full backup is its parent)
    ext = bench_extract(b, "incr-backupctl-extract", xcfg, xrepo, "bench", "incremental", "2024-06-02T02:00:00+00:00",
                        seed_from=repo)
    run = b.measure(
        "incr-backupctl",
        [*ctl, "backup", "--tier", "bench", "--type", "incremental", "--logical-date", "2024-06-02T02:00:00+00:00"],
    )
    b.backupctl_rss.append(run.rss_mb)
    stored_mb = (du(repo) - before) / 1e6
    b.add(Row("incremental (~1 %)", "backupctl (whole procedure)", run.wall, run.rss_mb, stored_mb,
              ratio(run.wall, restic_incr.wall if restic_incr else None), "info",
              note="`backupctl backup`: + integrity check, test restore, report"))
    r = ratio(ext.wall, restic_incr.wall if restic_incr else None)
    b.add(Row("incremental (~1 %)", "backupctl extract + commit", ext.wall, ext.rss_mb, stored_mb, r, "≤ 1.0× restic",
              verdict(r, 1.0), note="the backup alone: what restic backup does"))
    if have_borg:
        before = du(b.base / "borg")
        borg_incr = b.measure(
            "incr-borg", ["borg", "create", "--compression", "zstd,3", f"{b.base / 'borg'}::incr", "."], cwd=tree
        )
        b.add(
            Row(
                "incremental (~1 %)",
                "borg",
                borg_incr.wall,
                borg_incr.rss_mb,
                (du(b.base / "borg") - before) / 1e6,
                ratio(borg_incr.wall, restic_incr.wall if restic_incr else None),
                "info",
            )
        )

    # ---- restore
    print("restores", flush=True)
    out = b.base / "restore-tar"
    rm(out)
    out.mkdir()
    base = b.measure("restore-zstd-tar", f"zstd -q -dc {q(b.base / 'tree.tar.zst')} | tar -x -C {q(out)}")
    diff = compare(s0, listing(out))
    note = diff or "verified (S0: the archive predates the mutation)"
    b.add(Row("restore", "zstd -dc + tar -x", base.wall, base.rss_mb, du(out) / 1e6, 1.0, "baseline", note=note))
    rm(out)

    out = b.base / "restore-backupctl"
    rm(out)
    # like with like: tar checks nothing, so the compared row skips the Great Expectations suite (--no-validate);
    # backupctl still checks every file's SHA-256 while writing (then a stat walk of the tree; --reread: the next row)
    run = b.measure("restore-backupctl", [*ctl, "restore", "latest", "--tier", "bench", "--target", str(out),
                                          "--no-validate"])
    b.backupctl_rss.append(run.rss_mb)
    restored_files = listing(out / "app_files") if (out / "app_files").is_dir() else {}
    diff = compare(selected(s1), restored_files)
    db = next(iter(sorted((out / "app_db").rglob("*.db"))), None) if (out / "app_db").is_dir() else None
    if db is None:
        diff = (diff + "; " if diff else "") + "no SQLite file restored"
    elif fmr.table_counts(db) != s1_db:
        diff = (diff + "; " if diff else "") + f"row counts differ: {fmr.table_counts(db)} != {s1_db}"
    r = ratio(run.wall, base.wall)
    res = verdict(r, 1.3) if not diff else "FAIL"
    full_restore = run.wall
    b.add(
        Row(
            "restore",
            "backupctl",
            run.wall,
            run.rss_mb,
            du(out) / 1e6,
            r,
            "≤ 1.3× zstd+tar",
            res,
            note=diff or "verified (S1, full + incr chain); --no-validate",
        )
    )
    rm(out)
    # what `backupctl restore` does by default: the same, plus the Great Expectations suite on the restored database
    run = b.measure("restore-backupctl-validated", [*ctl, "restore", "latest", "--tier", "bench", "--target", str(out)])
    b.add(Row("restore + data validation", "backupctl", run.wall, run.rss_mb, du(out) / 1e6, ratio(run.wall, base.wall),
              "info", "—", note="the CLI default: --no-validate's checks + Great Expectations on app.db (GX import ~10 s)"))
    rm(out)
    bench_reread(b, ctl, out, base.wall)
    bench_partial(b, ctl, out, selected(s1), full_restore)

    if have_restic:
        out = b.base / "restore-restic"
        rm(out)
        run = b.measure(
            "restore-restic", ["restic", "restore", "latest", "--repo", str(b.base / "restic"), "--target", str(out)]
        )
        root = find_root(out)
        diff = compare(s1, listing(root)) if root else "tree not found in the restore"
        b.add(
            Row(
                "restore",
                "restic",
                run.wall,
                run.rss_mb,
                du(out) / 1e6,
                ratio(run.wall, base.wall),
                "info",
                note=diff or "verified (S1)",
            )
        )
        rm(out)
    if have_borg:
        out = b.base / "restore-borg"
        rm(out)
        out.mkdir()
        run = b.measure("restore-borg", ["borg", "extract", f"{b.base / 'borg'}::incr"], cwd=out)
        root = find_root(out)
        diff = compare(s1, listing(root)) if root else "tree not found in the restore"
        b.add(
            Row(
                "restore",
                "borg",
                run.wall,
                run.rss_mb,
                du(out) / 1e6,
                ratio(run.wall, base.wall),
                "info",
                note=diff or "verified (S1)",
            )
        )
        rm(out)
    b.versions = {  # type: ignore[attr-defined]
        "restic": tool_version(["restic", "version"]) if have_restic else None,
        "borg": tool_version(["borg", "--version"]) if have_borg else None,
    }
    if not args.keep:
        for p in (
            tree,
            repo,
            b.base / "restic",
            b.base / "borg",
            b.base / "tree.tar.zst",
            b.base / "restic-cache",
            b.base / "borg-home",
        ):
            rm(p)


def pgbench_bin() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    hits = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))
    return hits[-1] if hits else None


FALLBACK_SQL = """
CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88));
CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84));
CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));
INSERT INTO pgbench_branches SELECT b, 0, '' FROM generate_series(1, {s}) b;
INSERT INTO pgbench_tellers SELECT t, (t - 1) / 10 + 1, 0, '' FROM generate_series(1, {s} * 10) t;
INSERT INTO pgbench_accounts SELECT a, (a - 1) / 100000 + 1, 0, '' FROM generate_series(1, {s} * 100000) a;
VACUUM ANALYZE;
"""


#: the backup of the ``pg`` tier alone (plan, extract and commit under the backup lock), without the CLI's checks,
#: integrity check and test restore
# The backup alone, as the DAG's extract and commit tasks run it: plan, extract every source (two at a time, as
# the CLI's extract steps do) and commit, under the backup lock; no integrity check, no test restore, no report.
EXTRACT = """
import sys
from concurrent.futures import ThreadPoolExecutor
from backups.config import load_config
from backups.engine import backup_pipeline as pipeline
from backups.repository import Repository
from backups.storage import open_storage

cfg_path, tier, kind, when = sys.argv[1:5]
cfg = load_config(cfg_path)
st = open_storage(cfg, cfg.tier(tier).storages[0])
repo = Repository(st, cfg)
p = pipeline.plan(cfg, tier, when, type_override=kind, storage=st, catalog=repo.catalog, storages=[st.name])
with repo.backup_lock(p.snapshot_id) as held:
    with ThreadPoolExecutor(max_workers=2) as pool:
        for f in [pool.submit(pipeline.extract, cfg, p, source, st) for source in p.sources]:
            f.result()
    pipeline.commit(cfg, p, st, locks=held)
"""


def extract_cmd(cfg: Path, tier: str, kind: str, when: str) -> list[str]:
    """The "extract + commit" measurement of a backup (:data:`EXTRACT`)."""
    return [sys.executable, "-c", EXTRACT, str(cfg), tier, kind, when]


def bench_extract(b: Bench, name: str, cfg: Path, repo: Path, tier: str, kind: str, when: str,
                  seed_from: Path | None = None) -> Run:
    """Measure "extract + commit" into ``repo`` (a copy of ``seed_from`` when given: the parent of an
    incremental, copied untimed), then remove ``repo``."""
    rm(repo)
    if seed_from is not None:
        shutil.copytree(seed_from, repo, symlinks=True)
    try:
        return b.measure(name, extract_cmd(cfg, tier, kind, when))
    finally:
        rm(repo)


def bench_postgres(b: Bench) -> None:
    args = b.args
    psql = shutil.which("psql")
    if not psql or not shutil.which("pg_dump"):
        b.add(Row("PostgreSQL full", "pg_dump -Fc", note="psql / pg_dump not installed"))
        return
    ready = b.quiet([psql, *PG_ADMIN, "-d", "postgres", "-Atc", "select version()"])
    if ready.returncode != 0:
        b.add(Row("PostgreSQL full", "pg_dump -Fc", note=f"no server on 127.0.0.1:5432 ({ready.stderr.strip()[:80]})"))
        return
    repo, cfg = b.base / "repo-pg", b.base / "bench-pg.yaml"
    rm(repo)
    write_config(cfg, b.base / "tree", repo)
    b.quiet([psql, *PG_ADMIN, "-d", "postgres", "-c", "DROP DATABASE IF EXISTS bench_pg"], check=True)
    b.quiet([psql, *PG_ADMIN, "-d", "postgres", "-c", "CREATE DATABASE bench_pg"], check=True)
    try:
        print(f"PostgreSQL: filling bench_pg (scale {args.pg_scale}) ...", flush=True)
        started = time.monotonic()
        pgbench = pgbench_bin()
        if pgbench:
            b.quiet([pgbench, *PG_ADMIN, "-i", "-q", "-s", str(args.pg_scale), "bench_pg"], check=True)
            how = f"pgbench -i -s {args.pg_scale}"
        else:
            b.quiet(
                [
                    psql,
                    *PG_ADMIN,
                    "-d",
                    "bench_pg",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    FALLBACK_SQL.format(s=args.pg_scale),
                ],
                check=True,
            )
            how = f"generate_series (pgbench-like, scale {args.pg_scale})"
        size = b.quiet([psql, *PG_ADMIN, "-d", "bench_pg", "-Atc", "select pg_database_size('bench_pg')"], check=True)
        b.notes.append(
            f"PostgreSQL: bench_pg filled by {how}: {int(size.stdout) / 1e6:,.0f} MB on disk, "
            f"{time.monotonic() - started:.0f} s; server {tool_version([psql, *PG_ADMIN, '-d', 'postgres', '-Atc', 'show server_version'])}, "
            f"{tool_version(['pg_dump', '--version'])}."
        )
        dump = b.base / "bench_pg.dump"
        print("PostgreSQL backups", flush=True)
        bases, runs, extracts = [], [], []
        for i in range(args.pg_runs):  # paired runs (pg_dump, backupctl, extract + commit); medians reported
            rm(dump)
            rm(repo)
            bases.append(b.measure(f"pg-pg_dump-{i}", ["pg_dump", *PG_ADMIN, "-Fc", "-f", str(dump), "bench_pg"]))
            dump_mb = du(dump) / 1e6
            rm(dump)
            runs.append(b.measure(
                f"pg-backupctl-{i}",
                [backupctl_bin(), "--config", str(cfg), "backup", "--tier", "pg", "--type", "full",
                 "--logical-date", "2024-06-01T03:00:00+00:00"],
            ))
            repo_mb = du(repo) / 1e6
            rm(repo)
            extracts.append(b.measure(f"pg-extract-{i}", extract_cmd(cfg, "pg", "full", "2024-06-01T03:00:00+00:00")))
        base, run, extract = (sorted(r, key=lambda r: r.wall)[len(r) // 2] for r in (bases, runs, extracts))
        if args.pg_runs > 1:
            b.notes.append(
                f"PostgreSQL: {args.pg_runs} paired runs: wall = median, ratio = median of the pairs' ratios; pg_dump -Fc {', '.join(f'{r.wall:.2f}' for r in bases)} s, "
                f"backupctl {', '.join(f'{r.wall:.2f}' for r in runs)} s, extract + commit "
                f"{', '.join(f'{r.wall:.2f}' for r in extracts)} s."
            )
        b.notes.append(
            "PostgreSQL: `backupctl backup` includes its test restore (the dump restored and loaded with pg_restore into "
            "a scratch database, dropped) and its other checks; \"extract + commit\" is the backup alone (`engine.backup_pipeline` "
            "plan, extract and commit under the backup lock: the DAG's extract and commit tasks)."
        )
        b.add(Row("PostgreSQL full", "pg_dump -Fc", base.wall, base.rss_mb, dump_mb, 1.0, "baseline"))
        # the backup's memory; the CLI row's is Great Expectations' (its test restore validates by default)
        b.backupctl_rss.append(extract.rss_mb)

        def paired(rs: list[Run]) -> float:  # the median of the per-pair ratios (the load of the machine varies)
            return sorted(x.wall / y.wall for x, y in zip(rs, bases, strict=True))[len(rs) // 2]

        r = paired(runs)
        b.add(Row("PostgreSQL full", "backupctl (with test restore)", run.wall, run.rss_mb, repo_mb, r))
        r = paired(extracts)
        b.add(
            Row(
                "PostgreSQL full",
                "backupctl extract + commit",
                extract.wall,
                extract.rss_mb,
                du(repo) / 1e6,
                r,
                "≤ 1.1× pg_dump",
                verdict(r, 1.1),
            )
        )
    finally:
        b.quiet([psql, *PG_ADMIN, "-d", "postgres", "-c", "DROP DATABASE IF EXISTS bench_pg"])
        if not args.keep:
            rm(repo)


def has_reread(ctl: list[str]) -> bool:
    """Whether ``backupctl restore`` offers the opt-in re-read of the restored tree (``--reread``)."""
    out = subprocess.run([*ctl, "restore", "--help"], capture_output=True, text=True).stdout
    return "--reread" in out


def bench_reread(b: Bench, ctl: list[str], out: Path, baseline: float) -> None:
    """The S1 restore again with ``--reread`` (every restored file read and hashed a second time), next to the
    ``restore`` row above (each file hashed once, while written); n/a when the CLI has no ``--reread``."""
    if not has_reread(ctl):
        b.add(Row("restore with re-read", "backupctl", target="info", result="n/a",
                  note="`backupctl restore --help` lists no --reread (this version always re-reads: the restore row)"))
        return
    rm(out)
    run = b.measure("restore-backupctl-reread", [*ctl, "restore", "latest", "--tier", "bench", "--target", str(out),
                                                 "--no-validate", "--reread"])
    b.add(Row("restore with re-read", "backupctl", run.wall, run.rss_mb, du(out) / 1e6, ratio(run.wall, baseline),
              "info", note="--reread --no-validate; the restore row above hashes each file once, while written"))
    rm(out)


def partial_selection(files: dict[str, int], fraction: float = 0.01) -> list[str]:
    """About ``fraction`` of the files, spread over the whole tree (every n-th path in canonical order)."""
    paths = sorted(files)
    step = max(1, round(1 / fraction))
    return paths[step // 2 :: step] or paths[:1]


def bench_partial(b: Bench, ctl: list[str], out: Path, expected: dict[str, int], full_restore: float | None) -> None:
    """Restore 1 % of the files source's files (every 100th path, one --include each) from the S1 chain;
    compared with the full restore: the target is ≤ 0.1× once archives are seekable (issue 18)."""
    from backups.sources.files import glob_escape

    pick = partial_selection(expected)
    rm(out)
    cmd = [*ctl, "restore", "latest", "--tier", "bench", "--target", str(out), "--no-validate", "--source", "app_files"]
    for path in pick:
        cmd += ["--include", glob_escape(path)]
    run = b.measure("restore-backupctl-partial", cmd)
    got = listing(out / "app_files") if (out / "app_files").is_dir() else {}
    diff = compare({k: expected[k] for k in pick}, got)
    r = ratio(run.wall, full_restore)
    b.add(Row(f"partial restore (1 %: {len(pick):,} files)", "backupctl", run.wall, run.rss_mb, du(out) / 1e6, r,
              "≤ 0.1× full restore", verdict(r, 0.1) if not diff else "FAIL",
              note=diff or "verified; ratio to the backupctl restore row"))
    rm(out)


def small_tree(root: Path, files: int, seed: int) -> int:
    """``files`` small files (0.5-12 KB, half text, half random bytes) in directories of 500; returns the bytes."""
    import random

    rng = random.Random(seed)
    words = [b"robot", b"fleet", b"config", b"mission", b"sensor", b"battery", b"status", b"error", b"ok", b"map"]
    total = 0
    for i in range(files):
        d = root / f"d{i // 500:05d}"
        if i % 500 == 0:
            d.mkdir(parents=True)
        size = rng.randint(512, 12 * 1024)
        if i % 2:
            data = rng.randbytes(size)
        else:
            data = b" ".join(rng.choice(words) for _ in range(size // 5))[:size]
        (d / f"f{i:07d}.dat").write_bytes(data)
        total += len(data)
    return total


def bench_small_files(b: Bench) -> None:
    """Many small files (``--small-files``, default 200,000): full backup vs ``tar | zstd -3 -T0`` and restore
    vs ``zstd -dc | tar -x``, both trees checked (paths and sizes). Targets: backup ≤ 1.5×, restore ≤ 1.3×."""
    n = b.args.small_files
    tree, repo, cfg = b.base / "small", b.base / "small-repo", b.base / "small.yaml"
    archive, out = b.base / "small.tar.zst", b.base / "small-restore"
    for p in (tree, repo, archive, out):
        rm(p)
    print(f"small files: generating {n:,} files under {tree} ...", flush=True)
    total = small_tree(tree, n, b.args.seed)
    expected = listing(tree)
    q_ = json.dumps
    cfg.write_text(
        f"""# written by benchmarks/run.py
application: bench-small
sources:
  small: {{type: files, root: {q_(str(tree))}}}
storages:
  local: {{type: local, path: {q_(str(repo))}}}
tiers:
  small: {{type: full, schedule: "0 2 * * *", sources: [small], storages: [local]}}
""",
        encoding="utf-8",
    )
    ctl = [backupctl_bin(), "--config", str(cfg)]
    label = f"{n:,} small files ({total / 1e6:,.0f} MB)"
    base = b.measure("small-full-tar-zstd", f"tar -C {q(tree)} -cf - . | zstd -q -3 -T0 -o {q(archive)}")
    b.add(Row(f"full backup, {label}", "tar + zstd -3 -T0", base.wall, base.rss_mb, du(archive) / 1e6, 1.0, "baseline"))
    run = b.measure("small-full-backupctl", [*ctl, "backup", "--tier", "small", "--type", "full", "--logical-date",
                                             "2024-06-01T02:00:00+00:00"])
    b.backupctl_rss.append(run.rss_mb)
    b.add(Row(f"full backup, {label}", "backupctl (whole procedure)", run.wall, run.rss_mb, du(repo) / 1e6,
              ratio(run.wall, base.wall), "info", note="`backupctl backup`: + integrity check, test restore, report"))
    xcfg, xrepo = b.base / "small-extract.yaml", b.base / "small-repo-extract"
    xcfg.write_text(cfg.read_text(encoding="utf-8").replace(q_(str(repo)), q_(str(xrepo))), encoding="utf-8")
    ext = bench_extract(b, "small-full-backupctl-extract", xcfg, xrepo, "small", "full", "2024-06-01T02:00:00+00:00")
    r = ratio(ext.wall, base.wall)
    b.add(Row(f"full backup, {label}", "backupctl extract + commit", ext.wall, ext.rss_mb, du(repo) / 1e6, r,
              "≤ 1.5× tar+zstd", verdict(r, 1.5), note="the backup alone: what tar + zstd does"))
    out.mkdir()
    base = b.measure("small-restore-zstd-tar", f"zstd -q -dc {q(archive)} | tar -x -C {q(out)}")
    diff = compare(expected, listing(out))
    b.add(Row(f"restore, {label}", "zstd -dc + tar -x", base.wall, base.rss_mb, du(out) / 1e6, 1.0, "baseline",
              note=diff or "verified"))
    rm(out)
    run = b.measure("small-restore-backupctl", [*ctl, "restore", "latest", "--tier", "small", "--target", str(out),
                                                "--no-validate"])
    b.backupctl_rss.append(run.rss_mb)
    got = listing(out / "small") if (out / "small").is_dir() else {}
    diff = compare(expected, got)
    r = ratio(run.wall, base.wall)
    b.add(Row(f"restore, {label}", "backupctl", run.wall, run.rss_mb, du(out) / 1e6, r, "≤ 1.3× zstd+tar",
              verdict(r, 1.3) if not diff else "FAIL", note=diff or "verified; --no-validate"))
    if not b.args.keep:
        for p in (tree, repo, archive, out):
            rm(p)


def bench_rss_growth(b: Bench) -> float | None:
    """backupctl full backup of a 4× tree; returns its peak RSS in MB."""
    s = b.args.scale * 4
    tree, repo, cfg = b.base / "tree4", b.base / "repo4", b.base / "bench4.yaml"
    for p in (tree, repo):
        rm(p)
    print(f"RSS growth check: generating a 4× tree (scale {s}) ...", flush=True)
    fmr.generate_big(tree, target_bytes=800e6 * s, files=round(20_000 * s), db_bytes=60e6 * s, seed=b.args.seed)
    write_config(cfg, tree, repo)
    run = b.measure(
        "full-backupctl-4x",
        [
            backupctl_bin(),
            "--config",
            str(cfg),
            "backup",
            "--tier",
            "bench",
            "--type",
            "full",
            "--logical-date",
            "2024-06-01T02:00:00+00:00",
        ],
    )
    b.backupctl_rss.append(run.rss_mb)
    b.add(
        Row(
            "full backup, 4× data",
            "backupctl",
            run.wall,
            run.rss_mb,
            du(repo) / 1e6,
            None,
            "RSS check",
            note=f"scale {s}",
        )
    )
    if not b.args.keep:
        rm(tree)
        rm(repo)
    return run.rss_mb


def bench_dags(b: Bench) -> None:
    dags = b.args.dags
    if not any(dags.glob("*.py")):
        b.add(Row("DAG folder parse", "DagBag", target="≤ 1 s", result="n/a", note="dags/ holds no Python files yet"))
        return
    code = (
        "import json, time, airflow\n"
        "try:\n    from airflow.dag_processing.dagbag import DagBag\n"
        "except ImportError:\n    from airflow.models.dagbag import DagBag\n"
        "t = time.perf_counter()\n"
        f"bag = DagBag(dag_folder={str(dags)!r})\n"
        "seconds = time.perf_counter() - t\n"
        "for path, err in sorted(bag.import_errors.items()):\n"
        "    print(f'import error in {path}:\\n{err}')\n"
        "first = next(iter(sorted(bag.import_errors.items())), ('', ''))\n"
        "last_line = str(first[1]).strip().splitlines()[-1:] or ['']\n"
        "print(json.dumps({'seconds': seconds, 'dags': len(bag.dags), 'errors': len(bag.import_errors),\n"
        "                  'first_error': (first[0].rsplit('/', 1)[-1] + ': ' + last_line[0])[:160] if first[0] else ''}))\n"
    )
    env = dict(b.env)
    env.setdefault("AIRFLOW_HOME", str(b.base / "airflow-home"))  # never touch the project's .airflow/
    # include/backups.yaml expands these; parsing needs values, not existing paths
    env.setdefault("FMR_HOME", str(b.base / "tree"))
    env.setdefault("BACKUP_ROOT", str(b.base / "dag-repo"))
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    (b.logs / "dagbag.log").write_text(proc.stdout + proc.stderr)
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        b.add(
            Row(
                "DAG folder parse",
                "DagBag",
                target="≤ 1 s",
                result="FAIL",
                note=f"could not parse: see {b.logs / 'dagbag.log'}",
            )
        )
        return
    res = verdict(data["seconds"], 1.0) if data["errors"] == 0 else "FAIL"
    b.add(
        Row(
            "DAG folder parse",
            "DagBag",
            data["seconds"],
            target="≤ 1 s",
            result=res,
            note=f"{data['dags']} DAGs, {data['errors']} import errors (airflow import excluded)"
            + (f"; first: {data['first_error']}" if data.get("first_error") else ""),
        )
    )


def rss_rows(b: Bench, growth: float | None) -> None:
    if not b.backupctl_rss:
        return
    peak = max(b.backupctl_rss)
    b.add(
        Row(
            "peak RSS, all runs",
            "backupctl",
            rss_mb=peak,
            target=f"≤ {RSS_LIMIT_MB:.0f} MB",
            result=verdict(peak, RSS_LIMIT_MB),
        )
    )
    full = next((r.rss_mb for r in b.rows if r.operation == "full backup" and r.tool == "backupctl (whole procedure)"), None)
    small = big = None
    label = ""
    if growth is not None:
        small, big, label = full, growth, f"same run, scale {b.args.scale * 4:g}"
    else:  # a stored run at 4× or ¼ of this scale
        for s in (b.args.scale * 4, b.args.scale / 4):
            f = b.base / f"results-scale-{s:g}.json"
            other = json.loads(f.read_text()).get("backupctl_full_rss_mb") if f.exists() else None
            if other is not None:
                small, big = (full, other) if s > b.args.scale else (other, full)
                label = f"scale {min(s, b.args.scale):g} → {max(s, b.args.scale):g}, from {f.name}"
                break
    target = f"≤ {FLAT_TOLERANCE}× (or +20 MB)"
    if small is None or big is None:
        note = f"run with --rss-growth, or run --scale {b.args.scale * 4:g} after this run"
        b.add(Row("RSS flat at 4× data", "backupctl", target=target, result="n/a", note=note))
        return
    r = big / small if small else None
    ok = r is not None and (r <= FLAT_TOLERANCE or big - small <= 20)
    note = f"{small:.0f} MB → {big:.0f} MB ({label})"
    b.add(
        Row(
            "RSS flat at 4× data",
            "backupctl",
            rss_mb=big,
            ratio=r,
            target=target,
            result="PASS" if ok else "FAIL",
            note=note,
        )
    )


def q(p: Path | str) -> str:
    import shlex

    return shlex.quote(str(p))


def fmt(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def table(b: Bench) -> str:
    head = "| operation | tool | wall s | peak RSS MB | size MB | ratio vs baseline | target | result | notes |"
    lines = [head, "|" + "---|" * 9]
    for r in b.rows:
        lines.append(
            f"| {r.operation} | {r.tool} | {fmt(r.wall, '.2f')} | {fmt(r.rss_mb, '.0f')} | {fmt(r.size_mb, ',.1f')} | "
            f"{fmt(r.ratio, '.2f') + '×' if r.ratio is not None else ''} | {r.target} | {r.result} | {r.note} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--scale", type=float, default=None, help="tree size factor: 1 = 800 MB / 20,000 files (default 1, --quick 0.1)"
    )
    p.add_argument("--pg-scale", type=int, default=None, help="pgbench scale factor (default 30, --quick 3)")
    p.add_argument("--quick", action="store_true", help="small tree (scale 0.1) and small database (pgbench -s 3)")
    p.add_argument("--skip-pg", action="store_true", help="skip the PostgreSQL comparison")
    p.add_argument("--only-pg", action="store_true", help="run only the PostgreSQL comparison")
    p.add_argument("--pg-runs", type=int, default=1, help="paired PostgreSQL runs, medians reported (default 1)")
    p.add_argument("--skip-others", action="store_true", help="skip restic and borg")
    p.add_argument(
        "--skip-fanout", action="store_true", help="skip the fan-out rows (local + S3 via moto + SFTP via sshd)"
    )
    p.add_argument(
        "--rss-growth", action="store_true", help="also back up a 4× tree with backupctl to check RSS stays flat"
    )
    p.add_argument("--dags", type=Path, default=ROOT / "dags", help="DAG folder whose parse time is measured")
    p.add_argument(
        "--small-files", type=int, default=None,
        help="files in the many-small-files rows (default 200,000, --quick 20,000; 0 skips them)",
    )
    p.add_argument("--only-small-files", action="store_true", help="run only the many-small-files rows")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--keep", action="store_true", help="keep trees and repositories under .bench/ (default: delete them)"
    )
    p.add_argument("--dir", type=Path, default=ROOT / ".bench", help="work directory (default .bench/ in the project)")
    args = p.parse_args(argv)
    args.scale = args.scale if args.scale is not None else (0.1 if args.quick else 1.0)
    args.pg_scale = args.pg_scale if args.pg_scale is not None else (3 if args.quick else 30)
    args.small_files = args.small_files if args.small_files is not None else (20_000 if args.quick else 200_000)
    if args.small_files < 0:
        p.error("--small-files must be ≥ 0")
    if args.scale <= 0:
        p.error("--scale must be > 0")
    missing = [t for t in ("tar", "zstd") if not shutil.which(t)]
    if missing:
        p.error(f"{', '.join(missing)} not installed (apt-get install {' '.join(missing)})")

    args.dir.mkdir(parents=True, exist_ok=True)
    b = Bench(args, args.dir.resolve())
    started = time.monotonic()
    if args.pg_runs < 1:
        p.error("--pg-runs must be ≥ 1")
    if args.only_pg and (args.skip_pg or args.only_small_files):
        p.error("--only-pg cannot be combined with --skip-pg or --only-small-files")
    if args.only_small_files:
        bench_small_files(b)
    elif args.only_pg:
        bench_postgres(b)
    else:
        bench_files(b)
        if args.small_files:
            bench_small_files(b)
        else:
            b.add(Row("full backup, small files", "backupctl", note="skipped (--small-files 0)"))
        if not args.skip_pg:
            bench_postgres(b)
        else:
            b.add(Row("PostgreSQL full", "backupctl", note="skipped (--skip-pg)"))
        growth = bench_rss_growth(b) if args.rss_growth else None
        bench_dags(b)
        rss_rows(b, growth)

    versions = getattr(b, "versions", {})
    b.notes += [
        f"Host: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{tool_version(['zstd', '--version'])}; {tool_version(['tar', '--version'])}; "
        f"restic: {versions.get('restic') or 'not installed/skipped'}; borg: {versions.get('borg') or 'not installed/skipped'}.",
        "Each measurement ran once; caches could not be dropped, so the tree was warm in the page cache for every tool alike.",
        "ratio = wall time ÷ the baseline's wall time. Peak RSS = max(sampled sum over the process tree, largest ru_maxrss); "
        "PostgreSQL server memory is not included. tar/restic/borg back up the whole tree; backupctl the configured "
        "sources (app.db + four directories, *.tmp excluded). restic 0.14 always encrypts; borg runs with "
        "--encryption=none --compression zstd,3.",
        f"Total benchmark time {time.monotonic() - started:.0f} s. Logs: {b.logs}.",
    ]
    text = (
        f"# Benchmark results (scale {args.scale:g})\n\n"
        + table(b)
        + "\n\n"
        + "\n".join(f"- {n}" for n in b.notes)
        + "\n"
    )
    print()
    print(text)
    (b.base / "results.md").write_text(text, encoding="utf-8")
    full = next((r.rss_mb for r in b.rows if r.operation == "full backup" and r.tool == "backupctl (whole procedure)"), None)
    (b.base / f"results-scale-{args.scale:g}.json").write_text(
        json.dumps({"scale": args.scale, "backupctl_full_rss_mb": full, "rows": [r.__dict__ for r in b.rows]}, indent=2)
    )
    return 1 if any(r.result == "FAIL" for r in b.rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
