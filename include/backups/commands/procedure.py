"""A procedure declared once: named steps, and the in-process runner ``backupctl`` uses.

A :class:`Procedure` is an ordered list of :class:`Step`\\ s. Each step names its task (``group.name`` is the DAG's
task id), the function that does the work, whether it fans out (one call per source or per storage of the run),
and its kind: ``ordinary``; ``cleanup`` (always runs, where it is declared — usually last: a DAG teardown, a
``finally`` in the CLI); ``gate`` (a person approves: the DAG's approval operator; the CLI asks nothing — whoever
runs ``backupctl`` decided — and the step counts as skipped, so the next step runs on ``none_failed``); or ``wait``
(the body returns a :class:`Wait` whose ``poll()`` says when it is done: the CLI loops ``poll`` with a sleep, the
DAG runs a sensor — or a deferrable trigger — over the same ``poll``).
The DAG door turns the same list into tasks (``orchestration/backup_dags.py`` builds the backup DAG's tasks from
``backups.commands.backup.BACKUP``; a test checks the DAG's task ids against it), the CLI door calls
:func:`run` below. The semantics are Airflow's, so both doors behave alike:

* the steps run in order; a fan-out step runs every item even when one fails (every other storage still gets its
  copy), then counts as failed;
* after a failed step every later ordinary step is skipped (``upstream_failed``); cleanup steps and steps marked
  ``always`` (a report written whatever happened) still run, in their declared place;
* the run then raises the failures: one failure as is, several as one error of their common kind naming each.

A step function takes ``(ctx, results, item)``: the run's :class:`RunContext`, the results of the steps before it
(by step name; a fan-out step's results as ``{item: result}``) and its fan-out item (``None`` for a plain step).
It returns a :class:`~backups.commands.base.Result` (what a DAG task would push to XCom). It may raise
:class:`~backups.commands.procedure.Skip` to say "not part of this run" (a DAG task skips itself the same way).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..errors import BackupError, StorageError
from ..storage import Resolver

log = logging.getLogger("backups.commands.procedure")

ORDINARY, CLEANUP, GATE, WAIT = "ordinary", "cleanup", "gate", "wait"


@dataclass
class Wait:
    """What a ``wait`` step's body returns: ``poll()`` (True when done; a
    :class:`~backups.errors.TransientStorageError` just means "ask again"), every ``interval`` seconds for at most
    ``timeout`` seconds (None: no limit) — then ``expired(timeout)`` is raised; ``result()`` is the step's result."""

    poll: Callable[[], bool]
    interval: float
    result: Callable[[], Any]
    timeout: float | None = None
    expired: Callable[[float], BaseException] | None = None
    progress: Callable[[], str] | None = None


def wait_until_done(w: Wait, *, sleep: Callable[[float], None] = time.sleep) -> Any:
    """The CLI's executor of a ``wait`` step: poll every ``w.interval`` seconds until done; ``w.result()``."""
    from ..errors import TransientStorageError

    t0 = time.monotonic()
    while True:
        try:
            if w.poll():
                return w.result()
        except TransientStorageError as exc:
            log.warning("poll failed (%s); asking again in %.0fs", exc.message, w.interval)
        else:
            if w.progress is not None:
                log.info("%s", w.progress())
        waited = time.monotonic() - t0
        if w.timeout is not None and waited > w.timeout:
            raise (w.expired(w.timeout) if w.expired else StorageError(f"still waiting after {waited:.0f} s"))
        sleep(max(0.0, min(w.interval, (w.timeout - waited + 0.01) if w.timeout is not None else w.interval)))


class Skip(Exception):
    """A step (or one fan-out item) that is not part of this run: skipped, not failed."""


@dataclass
class RunContext:
    """What every step of one run shares: the config, the connection resolver, who runs it, its parameters
    (``params``: the CLI's options or the DAG's form) and the run's own scratch state (``state``)."""

    cfg: Config
    resolver: Resolver | None = None
    dag_id: str = "backupctl"
    run_id: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


StepFn = Callable[[RunContext, dict[str, Any], Any], Any]


@dataclass(frozen=True)
class Step:
    """One step of a procedure: ``group.name`` is its DAG task id; ``fan_out`` names what it maps over
    (``items(ctx, results)`` lists the run's items; the DAG maps over the candidates known when it is parsed);
    ``parallel``: how many items the CLI runs at once (each item opens its own storages)."""

    name: str
    group: str
    run: StepFn
    fan_out: str | None = None
    items: Callable[[RunContext, dict[str, Any]], list[str]] | None = None
    kind: str = ORDINARY
    parallel: int = 1
    doc: str = ""
    #: the earlier steps whose results the body reads (the DAG pulls exactly these from XCom)
    needs: tuple[str, ...] = ()
    #: the steps it waits for (default: the ordinary step declared before it)
    after: tuple[str, ...] = ()
    #: the type of its result (``from_dict`` rebuilds it from an XCom); None: a plain JSON value
    result: type | None = None
    #: runs even after a failed step, in its place (the DAG: trigger rule ``all_done``) — a report that must be
    #: written whatever happened; unlike a cleanup step its own failure fails the run
    always: bool = False

    @property
    def task_id(self) -> str:
        return f"{self.group}.{self.name}" if self.group else self.name


@dataclass(frozen=True)
class Procedure:
    name: str
    steps: tuple[Step, ...]

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    @property
    def task_ids(self) -> list[str]:
        return [s.task_id for s in self.steps]


@dataclass
class Outcome:
    """What :func:`run` did: each step's result (fan-out: by item), state and seconds; the failures in order."""

    results: dict[str, Any] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    failures: list[BaseException] = field(default_factory=list)


def _call(step: Step, ctx: RunContext, results: dict[str, Any], item: Any) -> tuple[str, Any]:
    if step.kind == GATE:  # the CLI asks nothing: who runs the command decided
        log.info("%s: no approval asked (run from the command line)", step.task_id)
        return "skipped", None
    try:
        out = step.run(ctx, results, item)
        if step.kind == WAIT and isinstance(out, Wait):
            out = wait_until_done(out)
        return "success", out
    except Skip as why:
        log.info("%s%s skipped: %s", step.task_id, f"[{item}]" if item is not None else "", why)
        return "skipped", None


def _fan_out(step: Step, ctx: RunContext, results: dict[str, Any], items: list[str]) -> tuple[str, dict[str, Any], list[BaseException]]:
    out: dict[str, Any] = {}
    errors: list[BaseException] = []
    states = []
    workers = max(1, min(step.parallel, len(items)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=step.name) as pool:
        futures = {item: pool.submit(_call, step, ctx, results, item) for item in items}
    for item, fut in futures.items():
        exc = fut.exception()
        if exc is None:
            state, out[item] = fut.result()
            states.append(state)
        elif isinstance(exc, BackupError):
            log.error("%s[%s] failed: %s", step.task_id, item, exc.message)
            errors.append(exc)
            states.append("failed")
        else:
            raise exc
    state = "failed" if errors else ("success" if "success" in states else "skipped")
    return state, out, errors


def run(proc: Procedure, ctx: RunContext) -> Outcome:
    """Run ``proc``'s steps in order in this process (see the module doc for the rules); raises the failures
    after the cleanup steps ran, else returns the :class:`Outcome`."""
    o = Outcome()
    failed = False
    for step in proc.steps:  # in declaration order (a cleanup step runs where it is declared, as its DAG edges say)
        if failed and step.kind != CLEANUP and not step.always:
            o.states[step.name] = "upstream_failed"
            continue
        failed = _run_step(step, ctx, o) or failed
    if o.failures:
        raise combined(o.failures)
    return o


def _run_step(step: Step, ctx: RunContext, o: Outcome) -> bool:
    t0 = time.monotonic()
    try:
        if step.fan_out:
            items = step.items(ctx, o.results) if step.items else []
            state, o.results[step.name], errors = _fan_out(step, ctx, o.results, items)
            o.failures += errors
        else:
            state, o.results[step.name] = _call(step, ctx, o.results, None)
    except BackupError as exc:
        if step.kind == CLEANUP:  # a cleanup that fails does not hide the run's own result
            log.warning("%s failed: %s", step.task_id, exc.message)
            state = "failed"
        else:
            o.failures.append(exc)
            state = "failed"
    o.states[step.name] = state
    o.seconds[step.name] = round(time.monotonic() - t0, 3)
    return state == "failed" and step.kind != CLEANUP


def combined(failures: list[BaseException]) -> BaseException:
    """One failure as is; several as one error of their common kind (else StorageError) listing each."""
    if len(failures) == 1:
        return failures[0]
    errs = [f for f in failures if isinstance(f, BackupError)]
    kinds = {type(f) for f in errs}
    kind = kinds.pop() if len(kinds) == 1 else StorageError
    return kind("\n  ".join(["several steps failed:", *(f.message for f in errs)]),
                hint="; ".join(dict.fromkeys(f.hint for f in errs if f.hint)) or None)
