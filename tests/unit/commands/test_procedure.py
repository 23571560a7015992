"""The CLI's executor of a declared procedure (commands/procedure.py) keeps Airflow's rules, so both doors agree:
order, fan-out that finishes every item, upstream_failed after a failure, cleanup always, failures raised."""

from __future__ import annotations

import pytest

from backups.commands.procedure import CLEANUP, Procedure, RunContext, Skip, Step, run
from backups.errors import IntegrityError, SourceError, StorageError


def _proc(calls: list, *, fail: set[str] = frozenset(), skip: set[str] = frozenset()) -> Procedure:
    def body(name: str):
        def fn(ctx, results, item):
            key = f"{name}[{item}]" if item is not None else name
            calls.append(key)
            if key in skip:
                raise Skip("not part of this run")
            if key in fail:
                raise (StorageError if item else SourceError)(f"{key} broke", hint=f"fix {key}")
            return {"step": key, "saw": sorted(results)}
        return fn

    return Procedure("toy", (
        Step("first", "a", body("first")),
        Step("copy", "b", body("copy"), fan_out="storage", items=lambda ctx, r: ["s1", "s2", "s3"], parallel=3),
        Step("check", "c", body("check")),
        Step("tidy", "d", body("tidy"), kind=CLEANUP),
    ))


def test_steps_run_in_order_and_see_the_earlier_results():
    calls: list = []
    out = run(_proc(calls), RunContext(cfg=None))
    assert calls[0] == "first" and sorted(calls[1:4]) == ["copy[s1]", "copy[s2]", "copy[s3]"] and calls[4:] == ["check", "tidy"]
    assert out.results["check"]["saw"] == ["copy", "first"]
    assert set(out.results["copy"]) == {"s1", "s2", "s3"}
    assert out.states == {"first": "success", "copy": "success", "check": "success", "tidy": "success"}


def test_a_failed_item_lets_the_other_items_finish_then_stops_the_rest_but_not_the_cleanup():
    calls: list = []
    with pytest.raises(StorageError) as info:
        run(_proc(calls, fail={"copy[s2]"}), RunContext(cfg=None))
    assert {"copy[s1]", "copy[s3]"} <= set(calls)  # every other storage still got its copy
    assert "check" not in calls and calls[-1] == "tidy"
    assert "copy[s2] broke" in info.value.message and info.value.hint == "fix copy[s2]"


def test_several_failures_are_one_error_naming_each():
    calls: list = []
    with pytest.raises(StorageError) as info:
        run(_proc(calls, fail={"copy[s1]", "copy[s3]"}), RunContext(cfg=None))
    assert "copy[s1] broke" in info.value.message and "copy[s3] broke" in info.value.message
    assert "fix copy[s1]" in info.value.hint and "fix copy[s3]" in info.value.hint


def test_failures_of_different_kinds_keep_a_non_zero_exit():
    calls: list = []
    proc = _proc(calls, fail={"copy[s1]"})
    bad = Step("copy", "b", lambda ctx, r, item: (_ for _ in ()).throw(
        IntegrityError("damaged") if item == "s1" else SourceError("unreadable")), fan_out="storage",
        items=lambda ctx, r: ["s1", "s2"])
    with pytest.raises(StorageError) as info:  # mixed kinds: a storage-level failure (exit 5)
        run(Procedure("toy", (proc.steps[0], bad, *proc.steps[2:])), RunContext(cfg=None))
    assert "damaged" in info.value.message and "unreadable" in info.value.message


def test_skipped_items_are_not_failures():
    calls: list = []
    out = run(_proc(calls, skip={"copy[s3]"}), RunContext(cfg=None))
    assert out.results["copy"]["s3"] is None and out.states["copy"] == "success" and "check" in calls


def test_a_failed_cleanup_does_not_hide_the_run_result():
    calls: list = []
    out = run(_proc(calls, fail={"tidy"}), RunContext(cfg=None))
    assert out.states["tidy"] == "failed" and out.states["check"] == "success"


def test_an_always_step_runs_after_a_failure_in_its_place_after_the_cleanup_and_its_failure_counts():
    """The drill's report: declared after the teardown (a cleanup step), it runs after it even when an earlier
    step failed (the DAG's all_done), sees the cleanup's result, and fails the run when it fails."""
    calls: list = []

    def body(name: str, fail: bool = False):
        def fn(ctx, results, item):
            calls.append(name)
            if fail:
                raise SourceError(f"{name} broke")
            return sorted(results)
        return fn

    proc = Procedure("toy", (
        Step("first", "", body("first", fail=True)),
        Step("middle", "", body("middle")),
        Step("tidy", "", body("tidy"), kind=CLEANUP),
        Step("report", "", body("report"), always=True),
    ))
    ctx = RunContext(cfg=None)
    with pytest.raises(SourceError, match="first broke"):
        run(proc, ctx)
    assert calls == ["first", "tidy", "report"]
    proc = Procedure("toy", (Step("first", "", body("first")), Step("tidy", "", body("tidy"), kind=CLEANUP),
                             Step("report", "", body("report", fail=True), always=True)))
    calls.clear()
    with pytest.raises(SourceError, match="report broke"):
        run(proc, ctx)
    assert calls == ["first", "tidy", "report"]
