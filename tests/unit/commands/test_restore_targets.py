"""Restores run concurrently; one target directory takes one restore at a time (:mod:`backups.commands.target_lock`).

* two CLI restores at once into different targets both succeed (the repository lock is shared);
* a target claimed by another run refuses a restore at once, naming that run, and nothing is written;
* the claim is released when the run ends (success or failure); a dead CLI process's claim is taken over.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from backups.commands import restore as rc
from backups.commands import target_lock as tl
from backups.errors import RefusedError
from tests.helpers import app_tree
from tests.unit.commands.conftest import WEEKLY


def _restore(app, target, **kw):
    return rc.restore_snapshot(app["cfg"], rc.RestoreRequest(target=str(target), snapshot=WEEKLY,
                                                             sources=["app_files"], **kw), validate=False)


def test_two_restores_at_once_into_different_targets_both_succeed(app, monkeypatch):
    """Both runs are inside their restore step at the same time (a barrier in the restorer), so neither waits for
    the other: the repository's shared lock lets them both read."""
    barrier = threading.Barrier(2, timeout=60)
    from backups.commands.restore import steps

    real = steps.run_restore

    def meet_then_restore(*a, **kw):
        barrier.wait()  # raises BrokenBarrierError if the other restore cannot get this far at the same time
        return real(*a, **kw)

    monkeypatch.setattr(steps, "run_restore", meet_then_restore)
    out: dict[str, object] = {}

    def one(name):
        try:
            out[name] = _restore(app, app["tmp"] / name)
        except BaseException as exc:  # reported below
            out[name] = exc

    threads = [threading.Thread(target=one, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for name in ("a", "b"):
        assert isinstance(out[name], rc.RestoreOutcome), out[name]
        assert app_tree(app["tmp"] / name / "app_files") == app_tree(app["home"])
        assert not tl.lock_path(app["tmp"] / name).exists()  # released


def test_a_target_claimed_by_another_run_is_refused_at_once_and_nothing_is_written(app):
    target = app["tmp"] / "busy"
    other = tl.TargetOwner(door="restore_snapshot", run_id="manual__2026-12-07T10:00:00", user="olga.ops")
    tl.claim(target, other)
    with pytest.raises(RefusedError, match="already being restored by restore_snapshot run "
                                           "manual__2026-12-07T10:00:00 of olga.ops") as ei:
        _restore(app, target)
    assert ei.value.exit_code == 7 and str(tl.lock_path(target)) in ei.value.hint
    assert not target.exists()
    assert tl.holder(target).run_id == other.run_id  # the other run's claim is untouched
    # meanwhile another target restores fine; once the other run released its claim, this one does too
    assert _restore(app, app["tmp"] / "free").verified.ok
    assert tl.release(target, other.run_id)
    assert _restore(app, target).verified.ok
    assert not tl.lock_path(target).exists()


def test_the_same_run_may_claim_again_and_a_failed_run_releases_its_claim(app):
    target = app["tmp"] / "t"
    me = tl.TargetOwner(door="restore_snapshot", run_id="r1")
    tl.claim(target, me)
    tl.claim(target, me)  # a retried task, a later task of the same run
    tl.check_free(target, "r1")
    with pytest.raises(RefusedError):
        tl.check_free(target, "r2")
    assert not tl.release(target, "r2") and tl.release(target, "r1")
    (target / "app_files").mkdir(parents=True)
    (target / "app_files" / "x").write_text("x")
    with pytest.raises(RefusedError, match="is not empty"):
        _restore(app, target)
    assert not tl.lock_path(target).exists()


def test_a_dead_cli_process_claim_is_taken_over(app):
    target = app["tmp"] / "t"
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                       check=True)
    tl.claim(target, tl.TargetOwner(door="cli", run_id="cli-dead", pid=int(p.stdout)))
    assert tl.holder(target) is None  # stale: its process is gone
    assert _restore(app, target).verified.ok


def test_a_cli_restore_opens_its_storage_once(app, monkeypatch):
    """The run context shares what a run opened: locate, the table plan, the restore, its verification and the
    lock all read through one opened storage (a spy around the real ``open_storage``)."""
    import backups.storage as storage_module
    import backups.storage.reach as reach

    opened: list[str] = []
    real = storage_module.open_storage

    def counting(cfg, name, *a, **kw):
        opened.append(name)
        return real(cfg, name, *a, **kw)

    monkeypatch.setattr(storage_module, "open_storage", counting)
    monkeypatch.setattr(reach, "open_storage", counting)  # locate opens storages through the reach rule
    out = rc.restore_snapshot(app["cfg"], rc.RestoreRequest(target=str(app["tmp"] / "once"), snapshot=WEEKLY,
                                                            storage="local", sources=["app_db"], tables=["robots"]),
                              validate=False)
    assert out.verified.ok
    assert opened == ["local"]
