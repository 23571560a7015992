"""The restore command's steps (:mod:`backups.commands.restore`) without Airflow, and ``backupctl restore`` on
top of them: the request checks, the prerequisites, the read-back verification catching damage, and the CLI
writing the verified report (GX only when databases are validated, ``--no-validate`` skipping it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backups.cli import main
from backups.commands import restore as rc
from backups.errors import ConfigError, IntegrityError, RefusedError, SourceError, StorageError
from tests.helpers import app_tree, db_rows, run_backup, subprocess_env
from tests.unit.commands.conftest import WEEKLY


@pytest.mark.parametrize(("change", "error", "text"), [
    ({"target": ""}, ConfigError, "no target directory given"),
    ({"target": "relative/dir"}, ConfigError, "is not an absolute path"),
    ({"target": "/"}, RefusedError, "filesystem root"),
    ({"target": "{root}/local/inside"}, RefusedError, "inside the repository of storage local"),
    ({"storage": "nowhere"}, ConfigError, "unknown storage 'nowhere'"),
    ({"sources": ["app_db", "nope"]}, ConfigError, "unknown source 'nope'"),
])
def test_check_request_refuses_bad_requests(app, change, error, text):
    fields = {"target": str(app["tmp"] / "out"), **change}
    fields["target"] = fields["target"].format(root=app["root"])
    with pytest.raises(error, match=text) as ei:
        rc.check_request(app["cfg"], rc.RestoreRequest(**fields))
    assert ei.value.hint  # every refusal says how to fix it


def test_a_target_below_a_file_is_refused_before_anything_is_written(app):
    blocker = app["tmp"] / "a-file"
    blocker.write_text("x")
    req = rc.RestoreRequest(target=str(blocker / "restore"))
    with pytest.raises(ConfigError, match=f"{blocker} is not a directory, so the restore target") as ei:
        rc.check_prerequisites(app["cfg"], req, rc.locate(app["cfg"], req))
    assert ei.value.exit_code == 2 and blocker.read_text() == "x"


def test_check_request_normalises(app):
    req = rc.check_request(app["cfg"], rc.RestoreRequest(target=str(app["tmp"] / "x") + "//", sources=[" ", "app_db"],
                                                         includes=[], tables=None, snapshot=" latest "))
    assert (req.target, req.sources, req.includes, req.snapshot) == (str(app["tmp"] / "x"), ["app_db"], None, "latest")
    assert rc.RestoreRequest.from_dict(req.to_dict()) == req


@pytest.mark.parametrize(("change", "text"), [
    ({"sources": ["system_state"], "tables": ["robots"]}, "tables apply to sqlite and postgres sources only"),
    ({"sources": ["app_db"], "includes": ["config/**"]}, "include globs apply to files sources only"),
    ({"sources": ["app_db"], "pg_target_name": "pg"}, "no postgres source is restored"),
])
def test_locate_checks_the_request_against_the_snapshot(app, change, text):
    with pytest.raises(ConfigError, match=text):
        rc.locate(app["cfg"], rc.RestoreRequest(target=str(app["tmp"] / "o"), **change))


def test_prerequisites_refuse_a_busy_target_a_full_disk_and_a_dead_pg_target(app, monkeypatch):
    cfg = app["cfg"]
    busy = app["tmp"] / "busy"
    busy.mkdir()
    (busy / "keep").write_text("x")
    req = rc.RestoreRequest(target=str(busy))
    loc = rc.locate(cfg, req)
    assert loc.target_state == "not empty (1 entries)" and loc.source_bytes > 0
    with pytest.raises(RefusedError, match="is not empty"):
        rc.check_prerequisites(cfg, req, loc)
    ok = rc.check_prerequisites(cfg, rc.RestoreRequest(target=str(busy), force=True), loc)
    assert ok.needed_bytes == loc.source_bytes and ok.free_bytes > ok.needed_bytes

    fresh = rc.RestoreRequest(target=str(app["tmp"] / "new" / "deeper"))
    real = rc.shutil.disk_usage
    monkeypatch.setattr(rc.shutil, "disk_usage", lambda p: real(p)._replace(free=loc.source_bytes - 1))
    with pytest.raises(StorageError, match="to restore but only") as ei:
        rc.check_prerequisites(cfg, fresh, loc)
    assert "bigger disk" in ei.value.hint
    monkeypatch.setattr(rc.shutil, "disk_usage", real)
    with pytest.raises(SourceError, match="cannot connect to the PostgreSQL target") as ei:
        rc.check_prerequisites(cfg, fresh, loc, "postgresql://u:pw-secret@127.0.0.1:1/none")
    assert "pw-secret" not in str(ei.value)
    assert not (app["tmp"] / "new").exists()  # nothing written by the checks


def test_verify_restore_catches_a_changed_missing_or_extra_file(app):
    """Without --reread: a stat walk. A same-size change of content after the restore is not seen (nothing is read
    back: each file's SHA-256 was checked on the bytes written), but a deleted, resized or added file is."""
    cfg = app["cfg"]
    req = rc.check_request(cfg, rc.RestoreRequest(target=str(app["tmp"] / "r"), sources=["app_files"]))
    assert req.reread is False
    loc = rc.locate(cfg, req)
    restored = rc.run_restore(cfg, req, loc)
    assert rc.RestoreResult.from_dict(restored.to_dict()) == restored
    clean = rc.verify_restore(cfg, req, loc, restored)
    stats = clean.files["app_files"]
    assert stats["problems"] == 0 and stats["files_checked"] == stats["files_expected"] > 5
    assert (stats["check"], stats["files_rehashed"], clean.reread, clean.content) == ("stat", 0, False,
                                                                                      rc.CHECKED_WHILE_WRITTEN)
    root = Path(restored.sources["app_files"].path)
    tampered, gone, resized = sorted(p for p in root.rglob("*.json") if p.is_file() and p.stat().st_size > 2)[:3]
    original = tampered.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF  # same size: only reading it back can see it
    tampered.write_bytes(bytes(data))
    # not re-read: the same-size change passes the default verification
    assert rc.verify_restore(cfg, req, loc, restored).files["app_files"]["problems"] == 0
    gone.unlink()
    resized.write_bytes(resized.read_bytes()[:-1])
    (root / "config" / "intruder.yaml").write_text("x: 1")
    with pytest.raises(IntegrityError) as ei:
        rc.verify_restore(cfg, req, loc, restored)
    msg = str(ei.value)
    assert "3 problem(s)" in msg
    assert f"app_files/{gone.relative_to(root)}: missing" in msg
    assert f"app_files/{resized.relative_to(root)}: size differs from the snapshot" in msg
    assert "app_files/config/intruder.yaml: not in the snapshot" in msg
    assert str(tampered.relative_to(root)) not in msg

    # --reread: every file read back and re-hashed, the same-size change too
    reread = rc.RestoreRequest.from_dict({**req.to_dict(), "reread": True})
    with pytest.raises(IntegrityError) as ei:
        rc.verify_restore(cfg, reread, loc, restored)
    msg = str(ei.value)
    assert "4 problem(s)" in msg
    assert f"app_files/{tampered.relative_to(root)}: content differs from the snapshot" in msg
    tampered.write_bytes(original)
    gone.write_bytes(b"")
    (root / "config" / "intruder.yaml").unlink()
    resized.unlink()
    with pytest.raises(IntegrityError) as ei:  # the original content back: only the deleted and emptied files left
        rc.verify_restore(cfg, reread, loc, restored)
    assert "2 problem(s)" in str(ei.value) and "content differs" not in str(ei.value)


def test_reread_verification_says_so_in_report_and_note(app):
    """The report, the JSON result and the run note say which check ran: SHA-256 checked while written (the
    default), or re-read and re-hashed (--reread)."""
    from backups.commands.notes import restore_note

    cfg = app["cfg"]
    for reread in (False, True):
        req = rc.check_request(cfg, rc.RestoreRequest(target=str(app["tmp"] / f"n{reread}"), sources=["app_files"],
                                                      reread=reread))
        loc = rc.locate(cfg, req)
        restored = rc.run_restore(cfg, req, loc)
        v = rc.verify_restore(cfg, req, loc, restored)
        assert rc.Verification.from_dict(v.to_dict()) == v
        stats = v.files["app_files"]
        assert stats["files_rehashed"] == (stats["files_checked"] if reread else 0) and stats["files_checked"] > 5
        report = rc.build_report(req, loc, restored, v, rc.cli_run_info(1.0))
        note = restore_note(report.doc, [])
        assert report.doc["verification"]["reread"] is reread and report.doc["params"]["reread"] is reread
        if reread:
            assert "re-read and re-hashed" in report.markdown and "re-read and re-hashed" in note
            assert "re-read and re-hashed" in v.summary()
        else:
            assert "SHA-256 checked while written" in report.markdown and "re-hashed" not in report.markdown
            assert "not re-read" in note and "re-hashed" not in note and "not re-read" in v.summary()
    # a result written before the field existed still loads (the DAG's XCom of an older run)
    old = {k: val for k, val in v.to_dict().items() if k not in ("reread", "content")}
    assert rc.Verification.from_dict(old).reread is False


def test_verify_restore_fails_on_a_damaged_database(app):
    """GX catches what the file hashes cannot see when a table was chosen: a row deleted after the restore."""
    import sqlite3

    cfg = app["cfg"]
    req = rc.check_request(cfg, rc.RestoreRequest(target=str(app["tmp"] / "t"), sources=["app_db"], tables=["robots"]))
    loc = rc.locate(cfg, req)
    restored = rc.run_restore(cfg, req, loc)
    assert rc.verify_restore(cfg, req, loc, restored).validation["app_db"]["success"] is True
    with sqlite3.connect(Path(restored.sources["app_db"].path) / "app.db") as c:
        c.execute("DELETE FROM robots WHERE rowid IN (SELECT rowid FROM robots LIMIT 1)")
    with pytest.raises(IntegrityError, match="app_db: .*robots"):
        rc.verify_restore(cfg, req, loc, restored)
    skipped = rc.verify_restore(cfg, req, loc, restored, validate=False)  # the hashes alone do not see it
    assert skipped.validation["app_db"] == {"database": "app_db", "success": None, "skipped": "validation turned off"}


def test_cli_restore_verifies_validates_and_reports(app, capsys):
    target = app["tmp"] / "cli"
    assert main(["--config", str(app["config_path"]), "restore", WEEKLY, "--target", str(target), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verified"]["ok"] and out["verified"]["validation"]["app_db"]["success"] is True
    assert app_tree(target / "app_files") == app_tree(app["home"])
    assert db_rows(target / "app_db" / "app.db") == db_rows(app["home"] / "app.db")
    doc = json.loads((target / "RESTORE_REPORT.json").read_text())
    assert doc["dag_id"] == "cli" and doc["approval"]["choice"] == "not required (CLI)"
    assert doc["requested_by"] and doc["requested_by"] != "unknown"
    assert doc["snapshot"]["snapshot_id"] == WEEKLY and doc["status"] == "success"
    assert doc["verification"]["files"]["app_files"]["files_checked"] == doc["sources"]["app_files"]["files"] > 5
    md = (target / "RESTORE_REPORT.md").read_text()
    assert md.startswith(f"# Restore of {WEEKLY}") and "approval: not required (CLI)" in md and "expectations met" in md
    assert sorted(out["report"]) == [str(target / "RESTORE_REPORT.json"), str(target / "RESTORE_REPORT.md")]


def test_cli_restore_refusal_writes_nothing(app, capsys):
    target = app["tmp"] / "busy"
    target.mkdir()
    (target / "keep").write_text("x")
    assert main(["--config", str(app["config_path"]), "restore", WEEKLY, "--target", str(target)]) == 7
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "is not empty" in err and "--force" in err
    assert sorted(p.name for p in target.iterdir()) == ["keep"]


def test_cli_restore_without_airflow_imports_gx_only_to_validate(app):
    code = ("import sys; sys.modules['airflow'] = None; "  # Airflow unimportable: the disaster-day door
            "from backups.cli import main; rc = main(sys.argv[1:]); "
            "print('GX', 'great_expectations' in sys.modules, sys.modules.get('airflow') is not None, file=sys.stderr); sys.exit(rc)")
    base = [sys.executable, "-c", code, "--config", str(app["config_path"]), "restore", WEEKLY]
    p = subprocess.run([*base, "--target", str(app["tmp"] / "a"), "--no-validate"], capture_output=True, text=True,
                       env=subprocess_env())
    assert p.returncode == 0, p.stderr
    assert "GX False False" in p.stderr and "app_db: not validated (validation turned off)" in p.stdout
    assert "validation turned off" in (app["tmp"] / "a" / "RESTORE_REPORT.md").read_text()
    p = subprocess.run([*base, "--target", str(app["tmp"] / "b"), "--source", "app_files"], capture_output=True,
                       text=True, env=subprocess_env())
    assert p.returncode == 0 and "GX False False" in p.stderr, p.stderr  # no database restored: GX not needed
    p = subprocess.run([*base, "--target", str(app["tmp"] / "c"), "--source", "app_db"], capture_output=True, text=True,
                       env=subprocess_env())
    assert p.returncode == 0 and "GX True False" in p.stderr, p.stderr
    assert "expectations met" in p.stdout


def test_cli_restore_reverifies_paths_longer_than_path_max(tmp_path):
    """The check after a restore (``--reread``: re-hash) walks by directory descriptors: a path over 4 KiB
    verifies instead of failing with ENAMETOOLONG, and a symlink swapped into the restored tree is reported, never
    followed (with or without the re-read)."""
    import os

    from tests.property.tools import backupctl, files_config

    root = tmp_path / "src"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    for _ in range(20):  # 20 × 250-byte components: about 5 KiB
        os.mkdir("d" * 250, dir_fd=fd)
        fd, old = os.open("d" * 250, os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
    f = os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(f, b"deep\n")
    os.close(f)
    os.close(fd)
    files_config(tmp_path, root, tmp_path / "repo")
    assert backupctl("backup", "--no-validate", "--tier", "full", config=tmp_path / "backups.yaml").returncode == 0
    proc = backupctl("restore", "latest", "--target", str(tmp_path / "out"), "--json", "--reread",
                     config=tmp_path / "backups.yaml")
    assert proc.returncode == 0, proc.stderr
    verified = json.loads(proc.stdout)["verified"]
    assert verified["ok"] is True and verified["reread"] is True
    assert next(iter(verified["files"].values()))["files_checked"] == 1
    assert next(iter(verified["files"].values()))["files_rehashed"] == 1
    # a symlink planted where the snapshot has a directory is a problem, and is not followed
    restored = next(p for p in (tmp_path / "out").iterdir() if p.is_dir())
    os.rename(restored / ("d" * 250), tmp_path / "moved")
    os.symlink(tmp_path / "moved", restored / ("d" * 250))
    _, problems = rc.hash_check(*_index_args(tmp_path, restored))
    assert len(problems) == 1 and "not a regular file" in problems[0]
    _, problems = rc.hash_check(*_index_args(tmp_path, restored), reread=False)
    assert len(problems) == 1 and "not a regular file" in problems[0]


def _index_args(tmp_path, restored):
    from backups.catalog import Catalog
    from backups.storage import LocalStorage
    from tests.property.tools import APP, SOURCE

    storage = LocalStorage(tmp_path / "repo")
    snap = Catalog(storage, APP).get("latest")
    return storage, snap.sources[SOURCE], restored, (lambda p: True), set(), True


def _restore_without_dac_override(config_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``backupctl restore`` in a child whose root lacks CAP_DAC_OVERRIDE: file modes apply to it as to a service
    user (the same trick as the unreadable-files backup tests)."""
    import os
    import shutil

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and util-linux setpriv to drop CAP_DAC_OVERRIDE")
    code = "import sys; from backups.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", code,
                           "--config", str(config_path), "restore", WEEKLY, *args],
                          capture_output=True, text=True, env=subprocess_env())


@pytest.mark.parametrize("where", ["target", "parent"])
def test_cli_restore_into_an_unwritable_target_is_refused_up_front(app, where):
    """A target (or, for a missing target, the directory it would be created in) that this user cannot write is a
    prerequisite failure — exit 2 naming the directory and the fix — not a PermissionError traceback, and nothing
    is written."""
    ro = app["tmp"] / "readonly"
    ro.mkdir()
    target = ro if where == "target" else ro / "restore"
    ro.chmod(0o555)
    try:
        p = _restore_without_dac_override(app["config_path"], "--target", str(target), "--no-validate")
    finally:
        ro.chmod(0o755)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and p.stderr.count("error:") == 1, p.stderr
    assert f"{ro} is not writable" in p.stderr and "fix:" in p.stderr, p.stderr
    assert list(ro.iterdir()) == []  # nothing written: no partial source, no report
    # the same user restores fine into a directory it can write
    ok = _restore_without_dac_override(app["config_path"], "--target", str(app["tmp"] / "ok"), "--no-validate")
    assert ok.returncode == 0, ok.stderr


# ------------------------------------------------------------------------------------------------ the shared lock
def _keep_one_weekly(app) -> object:
    """The app's config with ``keep_last: 1`` on weekly and a second weekly full: a prune forgets WEEKLY."""
    from backups.config import load_config

    path = app["config_path"]
    path.write_text(path.read_text().replace('weekly:  {type: full, schedule: "0 1 * * 0", ',
                                             'weekly:  {type: full, schedule: "0 1 * * 0", retention: {keep_last: 1}, '))
    cfg = load_config(path)
    run_backup(cfg, "weekly", logical_date="2026-01-11T01:00:00Z")
    return cfg


def _prune_right_after(monkeypatch, module, step: str, cfg) -> dict:
    """Start a real prune (exclusive lock) the moment ``module.step`` returns, and give it 3 s to run before the
    next step goes on — as a prune that was waiting for the restore's lock would."""
    import threading

    from backups.commands.prune import prune

    real, box = getattr(module, step), {}

    def step_then_prune(*a, **kw):
        out = real(*a, **kw)
        t = threading.Thread(target=lambda: box.setdefault("result", prune(cfg)), daemon=True)
        box["thread"] = t
        t.start()
        t.join(3.0)
        box["ran_before_next_step"] = not t.is_alive()
        return out

    monkeypatch.setattr(module, step, step_then_prune)
    return box


def test_a_waiting_prune_cannot_forget_the_snapshot_between_the_restore_and_its_verification(app, monkeypatch):
    cfg = _keep_one_weekly(app)
    from backups.commands.restore import steps

    box = _prune_right_after(monkeypatch, steps, "run_restore", cfg)
    out = rc.restore_snapshot(cfg, rc.RestoreRequest(target=str(app["tmp"] / "t"), snapshot=WEEKLY), validate=False)
    assert out.verified.ok and out.verified.files["app_files"]["files_checked"] > 0
    assert box["ran_before_next_step"] is False  # the prune waited for the verification
    box["thread"].join(30)
    assert WEEKLY in box["result"].storages[0]["forget"]  # and then forgot it


def test_a_separate_verification_takes_the_lock_and_names_a_snapshot_pruned_since_the_restore(app):
    """The DAG's ``verify_restored`` is its own task: a prune may run between it and ``restore``. It then fails
    clearly (exit 3, the snapshot named) instead of re-hashing against nothing."""
    from backups.commands.prune import prune
    from backups.errors import NotFoundError

    cfg = _keep_one_weekly(app)
    req = rc.check_request(cfg, rc.RestoreRequest(target=str(app["tmp"] / "t"), snapshot=WEEKLY))
    loc = rc.locate(cfg, req)
    restored = rc.run_restore(cfg, req, loc)
    assert rc.verify_restore(cfg, req, loc, restored, validate=False).ok
    assert WEEKLY in prune(cfg).storages[0]["forget"]
    with pytest.raises(NotFoundError, match=f"verification of the restore: snapshot {WEEKLY} is no longer on storage "
                                            "local") as ei:
        rc.verify_restore(cfg, req, loc, restored, validate=False)
    assert ei.value.exit_code == 3 and "restore again" in ei.value.hint


def test_cli_restore_force_over_a_source_this_user_cannot_remove_is_refused_up_front(app):
    """``--force`` replaces ``TARGET/<source>``: a directory in it this user cannot write could not be removed, and
    the restore would fail half-way with the old copy already moved aside. Refused first (exit 2), nothing changed."""
    from tests.helpers import tree

    target = app["tmp"] / "busy"
    sealed = target / "app_files" / "config"
    sealed.mkdir(parents=True)
    (sealed / "old.yaml").write_text("a: 1")
    before = tree(target)
    sealed.chmod(0o555)
    try:
        p = _restore_without_dac_override(app["config_path"], "--target", str(target), "--force", "--no-validate")
    finally:
        for d in [target, *target.rglob("*")]:  # wherever a failed restore moved it
            if d.is_dir() and not d.is_symlink():
                d.chmod(0o755)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and f"--force would replace {target / 'app_files'}" in p.stderr, p.stderr
    assert f"{sealed} in it is not writable" in p.stderr
    assert tree(target, include_tmp=True) == before
