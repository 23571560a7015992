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


def test_a_gate_asks_nothing_on_the_command_line_and_a_wait_polls_until_done():
    """The two step kinds of a human gate and of a wait: the CLI skips the gate (the next step still runs) and
    loops the wait's ``poll()`` — a transient storage error only means "ask again" — then takes its result."""
    from backups.commands.procedure import GATE, WAIT, Wait
    from backups.errors import TransientStorageError

    answers = iter([False, TransientStorageError("throttled"), False, True])
    polled: list = []

    def poll():
        polled.append(1)
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    proc = Procedure("gated", (
        Step("approve", "", lambda ctx, r, i: pytest.fail("a gate's body never runs on the command line"), kind=GATE),
        Step("thaw", "", lambda ctx, r, i: Wait(poll=poll, interval=0.0, result=lambda: {"polls": len(polled)}),
             kind=WAIT),
        Step("after", "", lambda ctx, r, i: r["thaw"]),
    ))
    out = run(proc, RunContext(cfg=None))
    assert out.states == {"approve": "skipped", "thaw": "success", "after": "success"}
    assert out.results["after"] == {"polls": 4}


def test_a_wait_that_outlasts_its_timeout_fails_with_its_own_error():
    from backups.commands.procedure import WAIT, Wait

    proc = Procedure("slow", (
        Step("thaw", "", lambda ctx, r, i: Wait(poll=lambda: False, interval=0.0, result=lambda: None, timeout=0.0,
                                                expired=lambda t: StorageError("still frozen", hint="wait longer")),
             kind=WAIT),
        Step("after", "", lambda ctx, r, i: "never"),
    ))
    with pytest.raises(StorageError, match="still frozen"):
        run(proc, RunContext(cfg=None))
