"""``backupctl`` output discipline (issue 16): stdout holds only the command's output, whatever the config (a
``conn_id`` makes the CLI import Airflow, whose logging used to print INFO lines to stdout), ``-q`` is honoured,
and the global options are accepted after the command as well as before it (``prune -v`` as README writes it)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from backups.cli import build_parser, main
from tests.helpers import make_app, subprocess_env

CLI = [sys.executable, "-c", "import sys; from backups.cli import main; sys.exit(main(sys.argv[1:]))"]
#: a log line of any format: ours (``2026-… INFO …``) or Airflow's structlog one (``[info     ] …``)
LOG_LINE = re.compile(r"(\bINFO\b|\[info\s*\]|\bDEBUG\b|\[debug\s*\])")


# ------------------------------------------------------------------------------------------------ global options
@pytest.mark.parametrize("argv", [
    ["-v", "--config", "c.yaml", "prune"], ["prune", "-v", "--config", "c.yaml"], ["--config", "c.yaml", "prune", "-v"],
    ["prune", "--verbose", "--config=c.yaml"],
])
def test_global_options_before_or_after_the_command(argv):
    args = build_parser().parse_args(argv)
    assert args.verbose == 1 and args.config == "c.yaml" and args.quiet is False


def test_an_option_before_the_command_is_not_reset_by_the_command_parser():
    args = build_parser().parse_args(["-q", "--config", "a.yaml", "list"])
    assert args.quiet is True and args.config == "a.yaml" and not args.verbose
    args = build_parser().parse_args(["--config", "a.yaml", "list", "--config", "b.yaml", "-q"])
    assert args.config == "b.yaml" and args.quiet is True


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from tests.helpers import run_backup

    a = make_app(tmp_path_factory.mktemp("output"), scale=0.1, seed=4)
    run_backup(a["cfg"], "weekly", logical_date="2026-01-04T01:00:00Z")
    return a


def test_log_levels_are_restics():
    """Issue 20: the result table is not preceded by INFO lines — warnings by default, INFO with -v, DEBUG with
    -vv, errors only with -q."""
    import logging

    from backups.cli import log_level

    levels = {argv: log_level(*(lambda a: (a.verbose, a.quiet))(build_parser().parse_args([*argv.split(), "list"])))
              for argv in ("", "-v", "-vv", "-q")}
    assert levels == {"": logging.WARNING, "-v": logging.INFO, "-vv": logging.DEBUG, "-q": logging.ERROR}


def test_restore_prints_no_info_lines_unless_asked(app, tmp_path):
    """``backupctl restore`` printed about ten timestamped INFO lines before its result table; now only with -v."""
    args = ["--config", str(app["config_path"]), "restore", "latest", "--no-validate"]
    quiet = subprocess.run([*CLI, *args, "--target", str(tmp_path / "a")], capture_output=True, text=True,
                           env=subprocess_env(), timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert "restored weekly-20260104T010000Z" in quiet.stdout
    assert not LOG_LINE.search(quiet.stderr), quiet.stderr
    verbose = subprocess.run([*CLI, *args, "-v", "--target", str(tmp_path / "b")], capture_output=True, text=True,
                             env=subprocess_env(), timeout=300)
    assert verbose.returncode == 0, verbose.stderr
    assert LOG_LINE.search(verbose.stderr) and not re.search(r"\bDEBUG\b", verbose.stderr), verbose.stderr


def test_prune_dash_v_after_the_command_prints_the_decisions(app, capsys):
    """README: ``backupctl prune -v`` — exit 2 ("unrecognized arguments") before."""
    code = main(["prune", "--dry-run", "-v", "--config", str(app["config_path"])])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "weekly-20260104T010000Z" in out and "reason(s)" in out


def test_json_is_accepted_before_the_command(app, capsys):
    assert main(["--json", "--config", str(app["config_path"]), "list"]) == 0
    assert [s["id"] for s in json.loads(capsys.readouterr().out)["snapshots"]] == ["weekly-20260104T010000Z"]
    assert main(["exit-codes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exit_codes"]["2"].startswith("invalid configuration")


# ------------------------------------------------------------------------------------------------ stdout discipline
@pytest.fixture(scope="module")
def s3_app(tmp_path_factory):
    """An app whose tiers write to an S3 storage named by ``conn_id`` (a moto server): the CLI imports Airflow."""
    pytest.importorskip("airflow")
    from moto.server import ThreadedMotoServer

    from tests.helpers import write_config

    tmp = tmp_path_factory.mktemp("s3out")
    a = make_app(tmp, scale=0.1, seed=6)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        import boto3

        boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="backups")
        cfg = write_config(tmp / "s3.yaml", a["home"], a["root"], tier_storages="s3",
                           extra_storages="  s3: {type: s3, bucket: backups, prefix: app, conn_id: backup_s3}\n")
        env = subprocess_env(AIRFLOW_CONN_BACKUP_S3=json.dumps({
            "conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": f"http://{host}:{port}", "region_name": "us-east-1"}}))
        yield {"config": str(cfg), "env": env}
    finally:
        server.stop()


def _run(s3_app, *args):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=s3_app["env"], timeout=300)


@pytest.mark.timeout(600)
def test_stdout_holds_only_the_output_with_a_conn_id_config(s3_app):
    cfg = s3_app["config"]
    p = _run(s3_app, "--config", cfg, "backup", "--no-validate", "--tier", "weekly", "--logical-date", "2026-01-04T01:00:00Z", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["id"] == "weekly-20260104T010000Z"
    procs = {name: subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=s3_app["env"])
             for name, args in {"list": ["--config", cfg, "list", "--json", "--storage", "s3"],
                                "status": ["status", "--json", "--config", cfg],
                                "check": ["--config", cfg, "status", "--check"],
                                "quiet": ["list", "--storage", "s3", "--config", cfg, "-q"]}.items()}
    out = {name: (p.communicate(timeout=300), p.returncode) for name, p in procs.items()}
    (stdout, stderr), code = out["list"]
    assert code == 0, stderr
    assert [s["id"] for s in json.loads(stdout)["snapshots"]] == ["weekly-20260104T010000Z"]
    (stdout, stderr), code = out["status"]
    assert code == 0, stderr
    assert {t["tier"]: t["newest_id"] for t in json.loads(stdout)["tiers"]}["weekly"] == "weekly-20260104T010000Z"
    (stdout, stderr), code = out["check"]
    assert stdout.splitlines()[0].startswith("BACKUP "), stdout
    assert not LOG_LINE.search(stdout), stdout
    (stdout, stderr), code = out["quiet"]
    assert code == 0 and "weekly-20260104T010000Z" in stdout, stderr
    assert not LOG_LINE.search(stdout + stderr), stdout + stderr  # -q: warnings and errors only, on stderr


def test_a_reader_that_leaves_early_never_turns_a_failure_into_exit_0(tmp_path):
    """``set -o pipefail; backupctl verify --all | head -1`` over a damaged repository: verify found the damage
    (exit 4), but its output was larger than the pipe's buffer, the reader left, the next write raised
    BrokenPipeError and backupctl exited 0 — a green cron job over data that cannot be restored. Now: 141 (as a
    process killed by SIGPIPE), never 0. Here the reader leaves before the first write (deterministic)."""
    from tests.helpers import run_backup

    a = make_app(tmp_path, scale=0.1, seed=4)
    run_backup(a["cfg"], "weekly", logical_date="2026-01-04T01:00:00Z")
    for obj in (a["root"] / "local" / "data").rglob("*"):
        if obj.is_file():
            obj.unlink()
    args = [*CLI, "--config", str(a["config_path"]), "verify", "--all"]
    assert subprocess.run(args, capture_output=True, env=subprocess_env(), timeout=120).returncode == 4
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env())
    proc.stdout.close()  # the reader is gone before the first line
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, (proc.returncode, err)
    assert b"Traceback" not in err
