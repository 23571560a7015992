"""The one builder: a :class:`~backups.commands.procedure.Procedure` turned into Airflow tasks.

Every step becomes one ``@task`` in its group (``group.name``), with the same body the CLI's runner calls
(:func:`backups.commands.procedure.run`): the generic adapter rebuilds the run context from the Airflow context,
pulls the results of the steps the body reads from XCom (typed again with ``from_dict``), calls the body and pushes
its ``to_dict()``. A fan-out step is mapped (``expand``) over the candidates known when the DAG is parsed; an item
that is not part of the run skips itself (:class:`~backups.commands.procedure.Skip`). A step that follows a
fan-out step runs when none failed and at least one succeeded; a ``cleanup`` step is a teardown that runs whatever
happened; a step marked ``always`` (a report) runs whatever happened too (``all_done``) but fails the run when it
fails. A step without a group is a task at the DAG's top level. A ``gate`` step is an approval operator
(:class:`~backups.orchestration.approval.BackupApprovalOperator`, or the one ``TaskOptions.operator`` makes); the step
after it runs on ``none_failed`` (a gate skipped by ``require_approval=false`` lets it through, a Reject fails the
run). A ``wait`` step is a sensor (``@task.sensor``, reschedule mode) that calls its
:class:`~backups.commands.procedure.Wait`'s ``poll()`` once per poke — or the deferrable operator
``TaskOptions.operator`` makes over the same poll. What is Airflow's alone — notifications, run notes, asset events,
the approval gate — comes in as
``after`` hooks and task options, never inside a step.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow.sdk import PokeReturnValue, TaskGroup, TriggerRule, get_current_context, task, teardown
from airflow.sdk.exceptions import AirflowSkipException

from ..commands.procedure import CLEANUP, GATE, WAIT, Procedure, RunContext, Skip, Step, Wait
from .adapters import io_pool_args, task_errors

log = logging.getLogger("backups.orchestration.procedures")


@dataclass
class TaskOptions:
    """What only Airflow needs for one step: extra ``@task`` arguments (``outlets``, ``multiple_outputs``), the
    ``backup_io`` pool for long I/O, a private scratch directory for the body (``ctx.state["scratch"]``), a trigger
    rule that differs from the generic one, and a hook called with (Airflow context, the step's result — a dict, or
    e.g. notify_start's message) after the body."""

    task_args: dict[str, Any] = field(default_factory=dict)
    io_pool: bool = False
    scratch: bool = False
    trigger_rule: str | None = None
    after: Callable[[Any, Any], None] | None = None
    #: an operator instead of the generic task (a gate's approval text, a deferrable wait): called with the step
    #: and the task arguments (``task_id``, ``task_group``, ``trigger_rule``, …)
    operator: Callable[[Step, dict[str, Any]], Any] | None = None
    #: the error mapping instead of ``task_errors()`` (a context-manager factory usable as a decorator)
    errors: Callable[[], Any] | None = None


@dataclass
class Built:
    """The tasks made from a procedure: by step name (a mapped task for a fan-out step) and the groups."""

    tasks: dict[str, Any]
    groups: dict[str, Any]


def _pull(ti: Any, step: Step, candidates: list[str] | None, rtype: type[Any] | None) -> Any:
    """The result of an earlier step from XCom, typed again: a plain step's value; a fan-out step's as
    ``{item: result or None}`` over the DAG's candidates (a skipped item pushed nothing)."""

    def typed(v: Any) -> Any:
        return rtype.from_dict(v) if (rtype is not None and isinstance(v, dict)) else v

    if not step.fan_out:
        return typed(ti.xcom_pull(task_ids=step.task_id, map_indexes=-1))
    return {item: typed(ti.xcom_pull(task_ids=step.task_id, map_indexes=i)) for i, item in enumerate(candidates or [])}


def add_procedure_tasks(proc: Procedure, *, context: Callable[[Any, Step], RunContext],
                        candidates: Callable[[Step], list[str]],
                        options: dict[str, TaskOptions] | None = None,
                        first_trigger_rule: str = TriggerRule.ALL_SUCCESS,
                        tooltips: dict[str, str] | None = None) -> Built:
    """Add ``proc``'s tasks to the DAG being defined (inside its ``with dag:``). ``context(airflow_ctx)`` makes the
    run's :class:`RunContext` (config, resolver, params) on the worker; ``candidates(step)`` lists what a fan-out step
    is mapped over. A step waits for its ``after`` (default: the step before it) and its ``needs``. ``tooltips``: a text
    per group for the UI."""
    options = options or {}
    groups: dict[str, Any] = {}
    tasks: dict[str, Any] = {}
    by_name = {s.name: s for s in proc.steps}

    def adapter(step: Step) -> Callable[..., Any]:
        opts = options.get(step.name, TaskOptions())

        def body(item: Any = None) -> Any:
            from ..commands.backup import task_scratch

            actx = get_current_context()
            if step.fan_out:
                actx[f"{step.fan_out}_name"] = item  # type: ignore[literal-required]  # the map index's label
            ctx = context(actx, step)
            ti = actx["ti"]
            results = {n: _pull(ti, by_name[n], candidates(by_name[n]) if by_name[n].fan_out else None,
                                by_name[n].result) for n in step.needs}
            try:
                if opts.scratch:
                    label = f"{step.name}-{item}" if item is not None else step.name
                    with task_scratch(actx["dag"].dag_id, actx["run_id"], label) as scratch:
                        ctx.state["scratch"] = scratch
                        out = step.run(ctx, results, item)
                else:
                    out = step.run(ctx, results, item)
            except Skip as why:
                raise AirflowSkipException(str(why)) from None
            if isinstance(out, Wait):  # one poke: one poll
                if not out.poll():
                    if out.progress is not None:
                        log.info("%s", out.progress())
                    return PokeReturnValue(False)
                out = out.result()
                done = out.to_dict() if hasattr(out, "to_dict") else out
                return PokeReturnValue(True, done)
            value = out.to_dict() if hasattr(out, "to_dict") else out
            if opts.after is not None:
                opts.after(actx, value)
            return value

        if step.fan_out:  # the mapped argument is named after what it maps over: expand(source=[...])
            item_name = step.fan_out

            def mapped(**kw: Any) -> Any:
                return body(kw.get(item_name))

            mapped.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
                [inspect.Parameter(item_name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)])
            fn: Callable[..., Any] = mapped
        else:
            fn = body
        fn.__name__ = step.name
        fn.__doc__ = step.doc
        return fn

    prev: Step | None = None
    for step in proc.steps:
        opts = options.get(step.name, TaskOptions())
        if step.group and step.group not in groups:  # a step without a group is a top-level task
            groups[step.group] = TaskGroup(step.group, tooltip=(tooltips or {}).get(step.group, ""))
        follows = [by_name[a] for a in (step.after or ((prev.name,) if prev else ()))]
        rule = opts.trigger_rule or (TriggerRule.ALL_DONE if step.always else first_trigger_rule if prev is None else
                                     TriggerRule.NONE_FAILED if any(a.kind == GATE for a in follows) else
                                     TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS if any(a.fan_out for a in follows)
                                     else TriggerRule.ALL_SUCCESS)
        args: dict[str, Any] = {"task_id": step.name, **({"task_group": groups[step.group]} if step.group else {}),
                                **opts.task_args}
        if step.kind != CLEANUP:
            args["trigger_rule"] = rule
        if opts.io_pool:
            args.update(io_pool_args())
        if step.fan_out:
            args["map_index_template"] = "{{ " + step.fan_out + "_name }}"
        if opts.operator is not None or step.kind == GATE:
            tasks[step.name] = (opts.operator or _approval)(step, args)
        else:
            fn = (opts.errors or task_errors)()(adapter(step))
            decorated = (task.sensor(mode="reschedule", **args) if step.kind == WAIT else task(**args))(fn)
            if step.kind == CLEANUP:
                decorated = teardown(decorated)
            tasks[step.name] = decorated.expand(**{step.fan_out: candidates(step)}) if step.fan_out else decorated()
        # it waits for what it follows and for every step whose result it reads
        for name in dict.fromkeys((*(step.after or ((prev.name,) if prev else ())), *step.needs)):
            tasks[name] >> tasks[step.name]
        if step.kind != CLEANUP:
            prev = step
    return Built(tasks=tasks, groups=groups)


def _approval(step: Step, args: dict[str, Any]) -> Any:
    """The default operator of a ``gate`` step: an approval asking the step's doc."""
    from .approval import BackupApprovalOperator, note_param

    return BackupApprovalOperator(subject=step.doc or f"Approve {step.name}?", outcome="done",
                                  params={"note": note_param(step.name)}, **args)
