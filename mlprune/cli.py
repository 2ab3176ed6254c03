"""The `mlprune` command line (click). The only module that knows click.

Errors in what the user gave (a recipe, a parameter, a run id, a store) print one
line and exit with status 2; nothing is recorded as FINISHED. An interrupt
(Ctrl-C) exits with status 130 and one line. A stop request (SIGTERM, SIGUSR1; commands
that compute in this process) checkpoints the training in progress, leaves its state
unfinished for the next run to resume, and exits with 128 + the signal's number in one line.

Why one file: only this module may import click (tests/test_architecture.py), and each command is
a short function over the same few helpers (run options, stores, summaries, output directories).
"""

from __future__ import annotations

import errno
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import click

from .errors import SpecError
from .training.interrupt import Interrupted


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SpecError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except Interrupted as stopped:
            click.echo(
                f"interrupted: {stopped}: the state being computed is left unfinished and resumes from "
                f"its checkpoint when run again; finished ones are kept",
                err=True,
            )
            sys.exit(stopped.exit_status)
        except KeyboardInterrupt:
            click.echo("interrupted: states being computed are marked FAILED; finished ones are kept", err=True)
            sys.exit(130)
        except Exception as error:  # noqa: BLE001 - a tracking store's failure is one line, not a traceback
            origin = getattr(error, "type_name", type(error).__module__)  # a local worker's error: its own type
            if not origin.startswith(("mlflow", "sqlalchemy", "sqlite3", "psycopg2")):
                raise
            text = " ".join(str(error).split())
            click.echo(f"error: tracking store: {type(error).__name__}: {text[:300]}", err=True)
            sys.exit(2)


def _progress_printer():
    """Progress lines on a terminal, silence otherwise."""
    if not sys.stderr.isatty():
        return None
    return lambda message: click.echo(f"  {message}", err=True)


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


experiment_option = click.option(
    "--experiment-name",
    "-e",
    default=None,
    help="MLflow experiment (one study) for the states. Default: MLFLOW_EXPERIMENT_ID / "
    "MLFLOW_EXPERIMENT_NAME, else 'mlprune'.",
)
scheduler_option = click.option(
    "--scheduler",
    default=None,
    metavar="auto|sync|local|processes|slurm|tcp://HOST:PORT",
    help="Where states are computed: in this process one after another (sync), side by side in worker "
    "processes of this machine (local), on a local dask cluster (processes), on workers started as SLURM "
    "jobs (slurm: docs/cluster.md), or on a running dask scheduler (tcp://HOST:8786, with an `mlflow "
    "server` as MLFLOW_TRACKING_URI). Independent states run in parallel; each state is the same. "
    "Default: MLPRUNE_SCHEDULER, else auto (local where independent trainings are missing and the "
    "machine has a core for each, else sync); processes where --workers is given.",
)
workers_option = click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes of --scheduler local (default: one per core, at most what the graph can run at "
    "once) and processes (default: one per core; --workers alone implies processes); worker jobs of "
    "--scheduler slurm (default: as many as the graph can run at once, at most 16).",
)
slurm_opt_option = click.option(
    "--slurm-opt",
    "slurm_opts",
    multiple=True,
    metavar="KEY=VALUE",
    help="A SLURM option of the worker jobs of --scheduler slurm (repeatable), e.g. partition=gpu, "
    "time=04:00:00, gpus=1, mem=8G, cpus-per-task=4, account=..., signal=120; every key: docs/cluster.md.",
)
slurm_config_option = click.option(
    "--slurm-config",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="SLURM options of --scheduler slurm from a YAML or JSON file (the --slurm-opt keys); --slurm-opt "
    "overrides them.",
)


def _run_flag(option):
    """The click option of one run option (`executor.options.RUN_OPTIONS`): its flag, given as text."""
    return click.option(
        option.flag,
        option.name,
        default=None,
        metavar=option.metavar or None,
        help=option.help,
        **({"is_flag": False, "flag_value": option.flag_value} if option.flag_value else {}),
    )


def run_options(function=None, *, steps: bool = False):
    """The run options a command that computes states takes as flags (every one declared once in
    `executor.options.RUN_OPTIONS`; ``steps``: those of the one-step command). The command receives them
    as text by name; `_run_options` checks them."""
    from .executor.options import cli_options

    def decorate(function):
        for option in reversed(cli_options(steps=steps)):
            function = _run_flag(option)(function)
        return function

    return decorate(function) if function is not None else decorate


def _run_options(given: dict):
    """The run options given as flags, checked (MLPRUNE_THREADS too): called before the store is opened."""
    from .executor.options import RunOptions

    return RunOptions.from_text(given)


def _step_kinds():
    from .spec.steps import STEP_KINDS

    return STEP_KINDS


def _stop_on_signals(scheduler: str) -> None:
    """SIGTERM / SIGUSR1 checkpoint and stop the training this process runs (`training.interrupt`), or that
    its local workers run (it passes the request on). A dask scheduler's workers get their signals themselves."""
    if scheduler in (None, "auto", "sync", "local"):
        from .training.interrupt import install_signal_handlers

        install_signal_handlers()


def _store(experiment_name=None, *, create=True, experiment_id=None):
    from .store import Store

    return Store(experiment_name, create=create, experiment_id=experiment_id)


class _LazyStore:
    """The store, opened on first use: a recipe that names an existing state needs it to plan."""

    def __init__(self, experiment_name):
        self.experiment_name, self.store = experiment_name, None

    def get(self):
        if self.store is None:
            self.store = _store(self.experiment_name)
        return self.store

    def load_state(self, run_id):
        from .plan import StateInfo

        store = self.get()
        run_id = store.resolve_run_id(run_id)
        spec = store.spec(run_id)
        return StateInfo(run_id, spec["key"], spec)


reader_experiment_option = click.option(
    "--experiment-name",
    "-e",
    "experiment_option",
    default=None,
    metavar="EXPERIMENT",
    help="The experiment (name or id), the same as the positional EXPERIMENT (give it one way). Default: "
    "MLFLOW_EXPERIMENT_ID / MLFLOW_EXPERIMENT_NAME, else 'mlprune'.",
)


def _experiment_ref(positional, option):
    """The experiment a reading command was given: positionally or with -e (the same, or one of them)."""
    if positional and option and positional != option:
        raise SpecError(
            f"the experiment is given twice, {positional!r} as EXPERIMENT and {option!r} with -e; "
            f"give it once, either way"
        )
    return positional or option


def _reader_store(positional=None, option=None):
    """The existing experiment a command reads (never created): named, or MLflow's env vars, else 'mlprune'."""
    ref = _experiment_ref(positional, option)
    if ref is None:
        return _store(None, create=False)
    from .store import open_experiment

    return open_experiment(ref)


def _writable_directory(directory: str) -> Path:
    """DIRECTORY, checked before anything is computed or loaded: it is a directory (or can be made
    one) where a file can be written; a one-line SpecError naming it otherwise. Nothing is created."""
    out = Path(directory)
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(existing))
        with tempfile.TemporaryFile(dir=existing):  # write access as the file system sees it (root, ro mounts)
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        place = f": {reason}" if existing == out else f" ({existing}: {reason})"
        raise SpecError(
            f"cannot write into the directory {directory!r}{place}; allowed: a writable directory, "
            f"or a new one under one"
        ) from None
    return out


def _summary(result) -> str:
    return f"{result.computed + result.reused} states: {result.computed} computed, {result.reused} reused"


def entry() -> None:
    """The `mlprune` program (`python -m mlprune`, the console script): the command, then the process ends
    without Python's teardown of the modules it loaded (torch's and MLflow's: 0.7-1.4 s of every command
    that computed something), once its threads, exit handlers and output are done as at a normal exit."""
    import atexit
    import threading

    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code
    shutdown = getattr(threading, "_shutdown", None)  # what the interpreter runs first at exit
    if shutdown is None:
        sys.exit(code)
    shutdown()
    atexit._run_exitfuncs()
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): nothing more to write
            code = code or 1
    os._exit(code or 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlprune")
def main():
    """mlprune: reproducible pruning experiments whose states live in MLflow.

    The tracking store is MLflow's: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    in the working directory.
    """


accept_data_change_option = click.option(
    "--accept-data-change",
    is_flag=True,
    help="Compute new states from reused ones even where the data now read differs from the data those were "
    "computed on (a changed data_dir's fingerprint); the new states record the change (state.json's "
    "data_change). Without it such a run stops with one line before it creates anything.",
)


def slurm_options(function):
    """--slurm-opt and --slurm-config (commands that take --scheduler)."""
    return slurm_opt_option(slurm_config_option(function))


def _slurm(pairs, config_file):
    """The checked SLURM options, or None when none were given."""
    if not pairs and not config_file:
        return None
    from .executor.slurm_options import slurm_config

    return slurm_config(pairs, config_file)


class _Where(NamedTuple):
    """How and where a command computes states: its scheduler and workers, the SLURM options of its jobs
    (None: not given) and the run options (`executor.RunOptions`)."""

    scheduler: str
    workers: int | None
    slurm: object
    options: object
    accept_data_change: bool = False  # --accept-data-change (run, sweep)


def _scheduler(scheduler: str | None, workers: int | None) -> str:
    """--scheduler, else processes where --workers is given, else MLPRUNE_SCHEDULER or auto."""
    from .executor.graph import default_scheduler

    return scheduler or ("processes" if workers is not None else default_scheduler())


def _where(flags: dict) -> _Where:
    """`_Where` from a command's flags (--scheduler, --workers, --slurm-*, the run options), checked before
    the store is opened; stop signals are caught where the trainings run in this process."""
    workers = flags.pop("workers")
    scheduler = _scheduler(flags.pop("scheduler"), workers)
    pairs, config_file = flags.pop("slurm_opts"), flags.pop("slurm_config")
    accept = bool(flags.pop("accept_data_change", False))
    options = _run_options(flags)
    _stop_on_signals(scheduler)
    return _Where(scheduler, workers, _slurm(pairs, config_file), options, accept)


def _execute(plans, store, where: _Where, recipe_label, params, *, figures):
    """Run plans under a workflow run; returns (result, reached {label/node: run id}, background work
    [(task, payload)] to start once the summary is printed: `_finish_later`)."""
    from . import report
    from .executor import Execution
    from .executor.threads import collector_paused
    from .store import WorkflowRun
    from .store.workflow import record_digest

    printer = _progress_printer()
    with collector_paused():  # the checks import torch
        execution = Execution(
            [p for _, p in plans],
            store,
            scheduler=where.scheduler,
            workers=where.workers,
            options=where.options,
            progress=printer,
            slurm=where.slurm,
            accept_data_change=where.accept_data_change,
        )
        for run_id, reason in execution.invalid:
            _warn(f"state {run_id[:8]} is not used and will be recomputed: {reason}")
        execution.check()
    for message in execution.data_changes:
        _warn(f"{message}: accepted (--accept-data-change), recorded on the new states")
    if execution.slurm is not None and execution.missing:
        from .executor.slurm_options import time_limit_note

        click.echo(time_limit_note(execution.slurm), err=True)
    reached: dict[str, str] = {}
    per_plan: list[dict[str, str]] = [{} for _ in plans]
    total = len({n.key for _, p in plans for n in p.nodes})
    single = len(plans) == 1

    def on_state(index, name, run_id):
        per_plan[index][name] = run_id
        reached[name if single else f"{plans[index][0]}/{name}"] = run_id
        if printer:
            printer(f"[{len(set(reached.values()))}/{total}] {plans[index][1].node(name).label}: {run_id[:8]}")

    launcher = os.environ.get("MLFLOW_RUN_ID") or None
    if not execution.missing:
        # every state exists: nothing to write but the workflow record, and nothing at all when a
        # workflow run already records these states reached with these parameters (and no
        # `mlflow run` run waits for a link); writing it means opening MLflow, so it is done after
        # the summary, in the background
        result = execution.run(on_state)
        if store.read_only:
            _warn("the tracking store is read-only: this run's workflow record is not written")
            return result, reached, []
        digest = record_digest(report.plan_json([p for _, p in plans], per_plan), params)
        if launcher is None and WorkflowRun.find_record(store, recipe_label, digest) is not None:
            return result, reached, []
        payload = {
            "tracking_uri": store.tracking_uri,
            "experiment_id": store.experiment_id,
            "recipe": recipe_label,
            "params": params,
            "plans": [p.to_json() for _, p in plans],
            "reached": per_plan,
            "states": reached,
            "launcher": launcher,
        }
        return result, reached, [("workflow-record", payload)]
    with collector_paused():  # creating it imports MLflow
        workflow = WorkflowRun(store, recipe=recipe_label, params=params, launcher=launcher)
    ok = False
    result = None
    try:
        result = execution.run(on_state, workflow=workflow.run_id)
        ok = True
    finally:
        files = {}
        try:
            files = report.workflow_files(store, [p for _, p in plans], per_plan, figures=False, warn=_warn)
        except Exception as error:  # noqa: BLE001 - the lineage is a by-product: never hide the run's outcome
            _warn(f"no lineage on the workflow run ({type(error).__name__}: {error})")
        try:
            workflow.record(reached, files)
        finally:
            workflow.end(ok)
    later = []
    if figures and len(plans) == 1 and result.computed:
        later.append(
            (
                "workflow-figures",
                {
                    "tracking_uri": store.tracking_uri,
                    "experiment_id": store.experiment_id,
                    "workflow_run_id": workflow.run_id,
                },
            )
        )
    return result, reached, later


def _finish_later(store, later) -> None:
    """Start the background work `_execute` left (figures, a cached run's record): `mlprune.background`."""
    from .background import start

    for task, payload in later:
        try:
            start(task, payload, store.tracking_uri)
        except Exception as error:  # noqa: BLE001 - by-products: the states are stored and the summary printed
            _warn(f"{task} not done ({type(error).__name__}: {error})")


def _last_network(plan):
    """The plan's last node that is a network (analyses, e.g. a recipe's `cka`, come after the rounds)."""
    return next((n for n in reversed(plan.nodes) if n.kind != "analysis"), plan.nodes[-1])


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option(
    "-P",
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override a recipe parameter (repeatable), e.g. -P rounds=3 -P protocol=paper.",
)
@experiment_option
@click.option(
    "--figures/--no-figures",
    default=None,
    help="Log the recipe's figures (accuracy vs remaining, Jaccard, structure, stability, "
    "weight evolution) on the workflow run (default: on; MLPRUNE_FIGURES=0 makes it off). "
    "lineage.svg/.html are always logged.",
)
@click.option(
    "--state-figures",
    is_flag=True,
    help="Also log weight figures (conv filters, fc matrices, biases) on each state computed now.",
)
@scheduler_option
@workers_option
@slurm_options
@run_options
@accept_data_change_option
def run(recipe, params, experiment_name, figures, state_figures, **flags):
    """Run a recipe file: reach every state it describes, reusing finished ones.

    Ends with a summary: `N states: C computed, R reused`. The workflow run (named after
    the recipe, in the states' experiment) gets plan.json, states.json, lineage.svg,
    lineage.html and figures/ (figures only when something was computed).

    \b
    Examples:
      mlprune run recipes/lt_structuredL1.yaml
      mlprune run recipes/lt_structuredL1.yaml -P rounds=3 -P amount=0.3
      mlprune run recipes/lt_structuredL1.yaml -P protocol=paper -e my-study
      mlprune run recipes/lt_structuredL1.yaml --scheduler processes --workers 2
      mlprune run recipes/lth_lenet_300_100.yaml --batch 3
      MLFLOW_TRACKING_URI=http://mlflow:5000 mlprune run recipes/lt_structuredL1.yaml --scheduler tcp://sched:8786
      mlprune run recipes/lt_structuredL1.yaml --scheduler slurm --slurm-opt partition=gpu --slurm-opt gpus=1
    """
    from .recipes import compile_recipe, parse_assignments

    where = _where(flags)
    if figures is None:  # a few seconds of matplotlib per run computed: off where nobody looks (MLPRUNE_FIGURES=0)
        from .names import ENV_FIGURES

        figures = os.environ.get(ENV_FIGURES, "1").strip() != "0"
    overrides = parse_assignments(params)
    lazy = _LazyStore(experiment_name)
    plan = compile_recipe(recipe, overrides, load_state=lazy.load_state)
    store = lazy.get()
    started_ms = int(time.time() * 1000)
    result, reached, later = _execute([(plan.recipe, plan)], store, where, plan.recipe, plan.params, figures=figures)
    if state_figures:
        from .report import log_state_figures

        log_state_figures(store, list(reached.values()), since_ms=started_ms)
    last = store.run(result.states[0][_last_network(plan).name])
    metrics = last.data.metrics
    click.echo(
        f"{plan.recipe}: experiment {store.experiment_name!r} (id {store.experiment_id}); last state "
        f"{last.info.run_id[:8]} test_accuracy={metrics.get('test_accuracy', float('nan')):.4f} "
        f"sparsity={metrics.get('sparsity', float('nan')):.4f}"
    )
    click.echo(_summary(result))
    _finish_later(store, later)


@main.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--seeds",
    default=None,
    metavar="SEEDS",
    help="Seeds (the recipe parameter `seed`): 0-9, 0,3,7 or 1-3,8. Default: the recipe's.",
)
@click.option(
    "-P",
    "--param",
    "params",
    multiple=True,
    metavar="NAME=V1,V2,...",
    help="A recipe parameter and its values (repeatable); commas give several values, and "
    "several -P give their cartesian product.",
)
@scheduler_option
@workers_option
@slurm_options
@run_options
@experiment_option
@accept_data_change_option
def sweep(recipes, seeds, params, experiment_name, **flags):
    """Run recipes over seeds and parameter values as one graph (shared states computed once).

    \b
    Examples:
      mlprune sweep recipes/lt_structuredL1.yaml --seeds 0-9
      mlprune sweep recipes/lth_lenet_300_100.yaml --seeds 0-7 --batch 8
      mlprune sweep recipes/lt_structuredL1.yaml recipes/lt_unstructuredL1.yaml --seeds 0-4 \\
          -P amount=0.1,0.2,0.3 --scheduler processes --workers 2
      MLFLOW_TRACKING_URI=http://mlflow:5000 mlprune sweep recipes/lt_structuredL1.yaml \\
          --seeds 0-9 --scheduler tcp://scheduler:8786 -e lt-seeds
      MLFLOW_TRACKING_URI=http://mlflow:5000 mlprune sweep recipes/lt_structuredL1.yaml --seeds 0-9 \\
          --scheduler slurm --workers 10 --slurm-opt partition=gpu --slurm-opt gpus=1 --slurm-opt time=04:00:00
    """
    from .recipes import parse_grid, parse_seeds, sweep_plans

    where = _where(flags)
    lazy = _LazyStore(experiment_name)
    plans = sweep_plans(recipes, parse_seeds(seeds), parse_grid(params), load_state=lazy.load_state)
    store = lazy.get()
    started = time.perf_counter()
    label = "sweep " + " ".join(Path(r).stem for r in recipes)
    result, _, later = _execute(
        plans,
        store,
        where,
        label,
        {
            "recipes": " ".join(recipes),
            "seeds": seeds or "",
            "grid": " ".join(params),
            "scheduler": where.scheduler,
            "plans": len(plans),
        },
        figures=False,
    )
    from .report import answer_lines, plans_collection, study_answer

    answer = study_answer(
        plans_collection(
            store, [{**plan.to_json(), "reached": states} for (_, plan), states in zip(plans, result.states)]
        )
    )
    for line in answer_lines(answer):
        click.echo(line)
    if not answer:  # no recipe rounds (e.g. a recipe of one training): where each plan ended
        for (plan_label, plan), states in zip(plans, result.states):
            last = store.run(states[_last_network(plan).name])
            click.echo(
                f"{plan_label}: last state {last.info.run_id[:8]} "
                f"test_accuracy={last.data.metrics.get('test_accuracy', float('nan')):.4f} "
                f"sparsity={last.data.metrics.get('sparsity', float('nan')):.4f}"
            )
    click.echo(
        f"{len(plans)} plans in experiment {store.experiment_name!r} (id {store.experiment_id}), "
        f"scheduler {result.scheduler}, {time.perf_counter() - started:.1f} s"
    )
    click.echo(_summary(result))
    _finish_later(store, later)


@main.command()
@click.argument("kind", type=click.Choice(list(_step_kinds())))
@click.option("--parent", default="", help="Run id (or an 8-character prefix) of the parent state (not for init).")
@click.option(
    "-o",
    "--option",
    "options",
    multiple=True,
    metavar="NAME=VALUE",
    help="A step option (repeatable); an empty value means the default. Lists in YAML flow "
    "syntax, e.g. -o include=[@conv]. Also data_dir (where the data is; default: the "
    "root's).",
)
@experiment_option
@run_options(steps=True)
def step(kind, parent, options, experiment_name, **run_flags):
    """Create one child state of PARENT by one step, and print its run id.

    The child goes into the parent's experiment. A reinit's `to` is root, parent
    or a run id; a transplant (or a prune with method=from_state) takes `from` (a
    run id); an analysis (compare, cka, interpolate) takes `b`, the other state (a
    run id or a prefix).

    \b
    Examples:
      mlprune step init -o model=lenet -o dataset=digits -o seed=0
      mlprune step train --parent 3f2a9c1d -o epochs=5 -o lr=0.01 -o momentum=0.9
      mlprune step prune --parent 8b1d4e2a -o method=l1_unstructured -o amount=0.2
      mlprune step reinit --parent 5c7f0a9b -o strategy=rewind -o to=root
      mlprune step interpolate --parent 1a2b3c4d -o b=9e8f7a6b -o alphas=30
    """
    from .api import Experiment, Recipe
    from .recipes import parse_options

    values = parse_options(options)
    data_dir = values.pop("data_dir", None)
    checked = _run_options(run_flags)
    switches = {name: getattr(checked, name) for name in run_flags}
    _stop_on_signals("sync")
    if _step_kinds()[kind].root:
        if parent:
            raise SpecError("step init takes no --parent: it creates a root state")
        experiment = Experiment(experiment_name, progress=_progress_printer(), **switches)
        state = experiment.init(**values, **({"data_dir": data_dir} if data_dir else {}))
    else:
        if not parent:
            raise SpecError(f"step {kind} needs --parent RUN_ID (the state to start from)")
        probe = _store(create=False)
        parent = probe.resolve_run_id(parent)
        parent_experiment = probe.state_run(parent).info.experiment_id
        experiment = Experiment(
            experiment_id=parent_experiment, progress=_progress_printer(), data_dir=data_dir, **switches
        )
        for other in ("b", "with"):  # an analysis's other state: a run id or a prefix of one
            ref = values.get(other)
            if isinstance(ref, (str, int)) and str(ref) not in ("root", "parent") and not str(ref).startswith("state:"):
                values[other] = probe.resolve_run_id(str(ref))
        state = experiment.state(parent).apply(Recipe(({kind: values},)))
    metrics = state.metrics
    if state.spec.get("analysis"):
        from .names import M_DURATION

        shown = " ".join(
            f"{name}={value:.4f}" for name, value in sorted(metrics.items()) if "." not in name and name != M_DURATION
        )
        click.echo(f"{kind} state {state.run_id}: {shown}", err=True)
    else:
        click.echo(
            f"{kind} state {state.run_id}: test_accuracy={metrics.get('test_accuracy', float('nan')):.4f} "
            f"sparsity={metrics.get('sparsity', float('nan')):.4f}",
            err=True,
        )
    click.echo(state.run_id)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("-P", "--param", "params", multiple=True, metavar="NAME=VALUE", help="Override a parameter.")
@experiment_option
def validate(recipe, params, experiment_name):
    """Check a recipe file and print the states it would reach, with their keys; runs nothing.

    A recipe that uses plugins also says which stored states of the experiment were computed with
    other code of them (another version or digest) and are not reached by this plan.

    \b
    Example:
      mlprune validate recipes/lt_structuredL1.yaml -P rounds=5
    """
    from .plugins import plan_plugins, stale_plugin_states
    from .recipes import compile_recipe, parse_assignments

    plan = compile_recipe(recipe, parse_assignments(params))
    click.echo(f"{recipe}: valid; {len(plan.nodes)} states")
    for node in plan.nodes:
        click.echo(f"  {node.name:<18} <- {node.parent or '-':<12} {node.key[:12]}  {node.label}")
    used = plan_plugins(plan.nodes)
    if used:
        for line in stale_plugin_states(used, _stored_tags(experiment_name), {n.key for n in plan.nodes}):
            click.echo(line)


def _stored_tags(experiment_name) -> list[dict]:
    """The tags of the experiment's finished states; [] when there is no such store or experiment yet."""
    from .errors import SpecError
    from .store.experiments import default_tracking_uri, sqlite_path

    try:
        path = sqlite_path(default_tracking_uri())
        if path is not None and not path.exists():
            return []
        return [run.data.tags for run in _store(experiment_name, create=False).states()]
    except SpecError:
        return []


@main.command()
def plugins():
    """List the installed plugins (entry points mlprune.models, mlprune.datasets, mlprune.methods,
    mlprune.reinit): group, name, distribution, version, digest and help.

    \b
    Example:
      mlprune plugins
    """
    from .plugins import installed_plugins

    rows = installed_plugins()
    if not rows:
        click.echo("no plugins installed (docs/plugins.md: how to write one)")
    for what, name, found in rows:
        if isinstance(found, str):  # a plugin that cannot be imported: its one-line error
            click.echo(f"{what:<16} {name:<20} {found}")
            continue
        click.echo(
            f"{what:<16} {name:<20} {found.distribution or '-'} {found.version} digest {found.digest()}"
            f"{' (keyed by version)' if found.keyed_by == 'version' else ''}  {found.entry.help}"
        )


@main.command()
@click.argument("experiment", required=False)
@reader_experiment_option
def tree(experiment, experiment_option):
    """Print the lineage DAG of EXPERIMENT (name or id): kind, accuracy, sparsity, extra parents.

    \b
    Examples:
      mlprune tree
      mlprune tree my-study
    """
    from . import lineage
    from .names import TAG_KIND, TAG_PARENT_PREFIX

    store = _reader_store(experiment, experiment_option)
    runs = store.states()
    if not runs:
        click.echo(f"experiment {store.experiment_name!r} holds no finished states")
        return
    known = {run.info.run_id for run in runs}
    _, edges = lineage.lineage_graph(runs)  # every state once: a parent tag that closes a cycle is not followed
    for line in lineage.cycle_warnings(edges):
        _warn(line)
    parents = lineage.primary_parents(edges)
    children: dict[str | None, list] = {}
    for run in runs:
        parent = parents.get(run.info.run_id)
        children.setdefault(parent if parent in known else None, []).append(run)

    def show(run, depth):
        tags, metrics = run.data.tags, run.data.metrics
        extra = ", ".join(
            f"{k.removeprefix(TAG_PARENT_PREFIX)}<-{v[:8]}" for k, v in tags.items() if k.startswith(TAG_PARENT_PREFIX)
        )
        click.echo(
            f"{'  ' * depth}{run.info.run_id[:8]} {tags.get(TAG_KIND, '?'):<14} "
            f"acc={metrics.get('test_accuracy', float('nan')):.4f} "
            f"sparsity={metrics.get('sparsity', float('nan')):.3f}  {run.info.run_name or ''}"
            f"{'  [' + extra + ']' if extra else ''}"
        )
        for child in children.get(run.info.run_id, []):
            show(child, depth + 1)

    for root in children.get(None, []):
        show(root, 0)


@main.command()
@click.argument("experiment", required=False)
@reader_experiment_option
@click.option(
    "--ui-url",
    default=None,
    metavar="URL",
    help="Where the MLflow UI is. Default: the tracking server; for a local store "
    "http://127.0.0.1:5000, where `mlflow server --app-name mlprune` serves it.",
)
@click.option(
    "--filter",
    "search_filter",
    default="",
    metavar="FILTER",
    help="A runs filter the view starts with, e.g. \"params.seed = '1' and params.round = '20'\".",
)
def ui(experiment, experiment_option, ui_url, search_filter):
    """Print the URL of EXPERIMENT's states in the MLflow UI: the runs table, flat (sorted by sparsity), with the
    columns seed, round, branch, test_accuracy, sparsity.

    The view is stored on the experiment (tag mlflow.sharedViewState.mlprune-states); the URL opens it in
    the UI's model-training view.

    \b
    Examples:
      mlprune ui
      mlprune ui my-study --filter "params.round = '20'"
    """
    from .store.ui import LOCAL_UI, states_url, ui_base, write_states_view

    store = _reader_store(experiment, experiment_option)
    key = write_states_view(store, search_filter)
    base = ui_base(store.tracking_uri, ui_url)
    if base is None:
        click.echo(
            f"the store {store.tracking_uri} is local: serve it with `mlflow server --app-name mlprune "
            f"--backend-store-uri {store.tracking_uri}` (or give --ui-url), then open:",
            err=True,
        )
        base = LOCAL_UI
    click.echo(states_url(base, store.experiment_id, key))


@main.command()
@click.argument("args", nargs=-1, metavar="[EXPERIMENT] RUN_ID")
@reader_experiment_option
def show(args, experiment_option):
    """Show one state: kind, parents, params, metrics and its resolved spec.

    RUN_ID is a run id or an 8-character prefix; with EXPERIMENT (name or id) the state must be in it.

    \b
    Examples:
      mlprune show 3f2a9c1d
      mlprune show my-study 3f2a9c1d
    """
    if len(args) not in (1, 2):
        raise SpecError(f"show takes [EXPERIMENT] RUN_ID, got {len(args)} arguments")
    experiment = _experiment_ref(args[0] if len(args) == 2 else None, experiment_option)
    store = _reader_store(experiment) if experiment else _store(create=False)
    run_id = store.resolve_run_id(args[-1])
    run = store.state_run(run_id)
    if experiment and run.info.experiment_id != store.experiment_id:
        raise SpecError(
            f"state {run_id[:8]} is not in experiment {store.experiment_name!r} (it is in experiment id "
            f"{run.info.experiment_id}); leave EXPERIMENT out or name that one"
        )
    spec = store.spec(run_id)
    click.echo(f"state {run_id} {run.info.run_name or ''} kind={spec['kind']} key={spec['key']}")
    click.echo(f"  parent: {spec.get('parent_run') or '-'}  root: {spec.get('root_run') or run_id}")
    for role, source in spec.get("inputs", {}).items():
        click.echo(f"  {role} from: {source['run_id']}")
    for name, value in sorted(run.data.params.items()):
        click.echo(f"  param {name} = {value}")
    for name, value in sorted(run.data.metrics.items()):
        click.echo(f"  {name} = {value:.6g}")
    click.echo(json.dumps({"root": spec["root"], "steps": spec["steps"]}, indent=1))


@main.command()
@click.argument("args", nargs=-1, metavar="[EXPERIMENT] OUT_DIR")
@reader_experiment_option
@click.option(
    "--ui-url",
    default=None,
    metavar="URL",
    help="MLflow UI the report's links point to. Default: the tracking server; for a local store "
    "(sqlite, files) links need it, e.g. http://127.0.0.1:5000 of `mlflow server "
    "--app-name mlprune`.",
)
def report(args, experiment_option, ui_url):
    """Write a self-contained HTML report of EXPERIMENT (name or id) into OUT_DIR.

    OUT_DIR/report.html embeds every figure (it works offline): the lineage DAG,
    accuracy and early-stopping iteration vs remaining weights (mean and 95% CI over
    seeds), accuracy vs compression and theoretical speedup, Claims (each branch
    against its controls, paired over seeds), Jaccard heatmaps, emergent structure, weight stability and evolution, and the
    weights of the dense and final states. Also figures/*.png, report.json (per
    series and round: remaining fraction, test accuracy and loss, run id) and
    numbers.json. Runs that are not mlprune states, or states with missing
    artifacts, are skipped with a warning.

    \b
    Examples:
      mlprune report mlprune ./report
      mlprune report my-study out/ --ui-url http://mlflow.example:5000
    """
    if len(args) not in (1, 2):
        raise SpecError(f"report takes [EXPERIMENT] OUT_DIR, got {len(args)} arguments")
    out_dir = args[-1]
    experiment = _experiment_ref(args[0] if len(args) == 2 else None, experiment_option)
    _writable_directory(out_dir)  # before the report's imports and the store: seconds
    from .report import write_report

    if experiment is None:
        experiment = _store(None, create=False).experiment_id  # MLflow's env vars, else 'mlprune'
    result = write_report(experiment, out_dir, ui_url=ui_url, warn=_warn)
    click.echo(f"wrote {result.path} ({result.n_states} states, {len(result.figures)} figures)")


@main.command()
@click.argument("runs", nargs=-1, metavar="[EXPERIMENT] | [RUN_A RUN_B]")
@reader_experiment_option
@click.option(
    "--against",
    metavar="NAME",
    default=None,
    help="Compare branches with the branch NAME (a control such as random, shuffle, reinit, or a one-shot "
    "method) round by round: paired differences over seeds, their 95% CI, paired t-test and "
    "Wilcoxon p-values, Holm-adjusted across rounds, a verdict.",
)
@click.option(
    "--ci",
    "ci",
    type=click.Choice(["t", "bootstrap"]),
    default="t",
    show_default=True,
    help="95% confidence intervals: Student-t, or a seeded percentile bootstrap (10000 resamples, seed 0).",
)
def compare(runs, experiment_option, against, ci):
    """Compare recipes (accuracy vs remaining weights), branches (--against), or the masks of two states.

    With no run ids: a table of every recipe round in EXPERIMENT (name or id), test
    accuracy against the fraction of weights remaining, mean ± std over seeds
    with a 95% confidence interval of the mean. With --against NAME: each branch
    against the branch NAME, paired per seed where both hang off the same dense
    network. With two run ids (or 8-character prefixes): Jaccard similarity of
    their kept weights, overall and per layer.

    \b
    Examples:
      mlprune compare my-study
      mlprune compare -e my-study --against random
      mlprune compare 3f2a9c1d 8b1d4e2a
    """
    if len(runs) == 2:
        from .api import Experiment
        from .report import mask_similarity

        experiment = Experiment(store=_store(create=False))
        a, b = experiment.state(runs[0]), experiment.state(runs[1])
        result = mask_similarity(a, b)
        click.echo(
            f"Jaccard of kept weights, {a.run_id[:8]} ({a.kind}) vs {b.run_id[:8]} ({b.kind}): "
            f"overall {result['overall']:.4f}"
        )
        for name, value in result["per_layer"].items():
            click.echo(f"  {name:<32} {value:.4f}")
        return
    if len(runs) > 2:
        raise SpecError(
            f"compare takes [EXPERIMENT] (a table of recipes) or two run ids (their masks), got {len(runs)} arguments"
        )
    from .report import accuracy_table, collect
    from .report import claims as claim_module

    store = _reader_store(runs[0] if runs else None, experiment_option)
    collection = collect(store, warn=_warn)
    rows = accuracy_table(collection, ci)
    if not rows:
        click.echo(f"experiment {store.experiment_name!r} holds no recipe rounds (run a recipe first)")
        return
    for line in claim_module.environment_warnings(collection):
        _warn(line)
    if against is not None:
        _print_claims(claim_module, collection, against, ci)
    else:
        click.echo(f"{'recipe':<44} {'round':>5} {'remaining':>10} {'test accuracy':>18} {'95% CI':>17} {'n':>3}")
        for row in rows:
            spread = f"± {100 * row['std']:<5.2f}" if row["n"] > 1 else " " * 7
            interval = (
                f"[{100 * row['ci_low']:.2f}, {100 * row['ci_high']:.2f}]"
                if row["ci_low"] is not None
                else "1 seed: no interval"
            )
            click.echo(
                f"{row['recipe']:<44} {row['round']:>5} {100 * row['remaining']:>9.2f}% "
                f"{100 * row['mean']:>9.2f}% {spread} {interval:>17} {row['n']:>3}"
            )
        if ci == "bootstrap":
            click.echo(f"95% CI: {next((r['ci'] for r in rows if r['n'] > 1), 'bootstrap')}")
    line = claim_module.one_seed_line(collection)
    if line:
        click.echo(line)


def _print_claims(claim_module, collection, against: str, ci: str) -> None:
    rows = claim_module.claims(collection, against, ci)
    branches = sorted({s.branch for s in collection.series})
    if not rows:
        raise SpecError(f"no branch to compare with {against!r}; branches here: {', '.join(branches)}")
    click.echo(
        f"test accuracy difference (points) vs {against}, per round; 95% CI "
        f"({rows[0]['ci'] if rows[0]['paired'] else 'welch'}); p-values Holm-adjusted across rounds"
    )
    click.echo(
        f"{'series':<40} {'round':>5} {'remaining':>9} {'n':>3} {'pairing':<8} {'difference':>10} "
        f"{'95% CI':>18} {'p (t)':>9} {'p (W)':>9} {'Holm (t)':>9} {'Holm (W)':>9}  verdict"
    )
    for row in rows:
        holm_t = row.get("p_t_holm", row.get("p_welch_holm"))
        remaining = "–" if row["remaining"] is None else f"{100 * row['remaining']:.2f}%"
        click.echo(
            f"{row['series']:<40} {row['round']:>5} {remaining:>9} "
            f"{row['n']:>3} {'paired' if row['paired'] else 'unpaired':<8} {claim_module.difference(row):>10} "
            f"{claim_module.interval(row):>18} {claim_module.p(row.get('p_t', row.get('p_welch'))):>9} "
            f"{claim_module.p(row.get('p_wilcoxon')):>9} {claim_module.p(holm_t):>9} "
            f"{claim_module.p(row.get('p_wilcoxon_holm')):>9}  {row['verdict']}"
        )


@main.command()
@click.argument("experiment", required=False)
@reader_experiment_option
@click.option(
    "--repair",
    is_flag=True,
    help="Mark every broken state invalid (FAILED, tag mlprune.invalid): the next run that needs it "
    "computes it again into a new run.",
)
def verify(experiment, experiment_option, repair):
    """Check every finished state of EXPERIMENT (name or id; default: mlprune) against what was recorded.

    Every artifact must match the SHA-256 recorded when the state was finished, and the key tag the
    key its state.json determines; a state with a missing, changed or truncated file is broken.
    Exit status 1 when something is broken and not repaired.

    \b
    Examples:
      mlprune verify
      mlprune verify my-study --repair
    """
    store = _reader_store(experiment, experiment_option)
    checked, broken = store.check_all(repair=repair, progress=_progress_printer())
    for run_id, reason in broken:
        click.echo(f"{'repaired' if repair else 'broken'}: {run_id[:8]} {reason}")
    cycles = _lineage_cycles(store)
    for line in cycles:
        click.echo(f"broken lineage: {line} (set the tag back to the parent its state.json names)")
    click.echo(
        f"{checked} states checked in experiment {store.experiment_name!r}: {len(broken)} broken"
        + (", marked invalid (the next run recomputes them)" if repair and broken else "")
    )
    if (broken and not repair) or cycles:
        sys.exit(1)


def _lineage_cycles(store) -> list[str]:
    """The cycles the parent tags of the experiment's states make (`lineage.cycle_warnings`)."""
    from . import lineage

    return lineage.cycle_warnings(lineage.lineage_graph(store.states())[1])


@main.command()
@click.argument("run_id")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--compact",
    is_flag=True,
    help="Write the physically smaller network instead: "
    "compact.safetensors and compact.json (load it with mlprune.compact.load(DIRECTORY)).",
)
def export(run_id, directory, compact):
    """Write a state's weights.safetensors, masks.safetensors and state.json to DIRECTORY.

    Weights are resolved even when the state references its parent's; every file is
    checked against the SHA-256 recorded when the state was finished.

    With --compact: the network with its removed channels physically gone (weights as
    safetensors, architecture as JSON), checked to give the masked network's outputs.

    \b
    Examples:
      mlprune export 3f2a9c1d ./ticket
      mlprune export 3f2a9c1d ./small --compact
    """
    out = _writable_directory(directory)
    store = _store(create=False)
    resolved = store.resolve_run_id(run_id)
    if compact:
        from .names import COMPACT_ARCH_FILE, COMPACT_WEIGHTS_FILE
        from .runners.compact import export_compact

        arch = export_compact(store.load(resolved), out)
        kept = sum(g["kept"] for g in arch["groups"])
        total = sum(g["units"] for g in arch["groups"])
        click.echo(
            f"wrote {COMPACT_WEIGHTS_FILE}, {COMPACT_ARCH_FILE} to {out}: {arch['params']} parameters, "
            f"{arch['flops']} FLOPs, {kept} of {total} channels kept, max |compact - masked| = "
            f"{arch['check']['max_abs_diff']:.2g} on {arch['check']['test_examples']} test examples"
        )
        if kept == total:
            click.echo(
                "no channel is removed: the compact network is the dense one (unstructured sparsity "
                "runs as dense tensors and gives no dense speedup)"
            )
        return
    files = store.artifact_files(resolved)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (out / name).write_bytes(content)
    except OSError as error:  # e.g. the disk filled up while writing
        raise SpecError(f"cannot write the state's files into {directory!r}: {error.strerror or error}") from None
    click.echo(f"wrote {', '.join(files)} to {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
