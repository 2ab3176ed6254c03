"""The `mlprune` command line (click). The only module that knows click.

Errors in what the user gave (a recipe, a parameter, a run id) print one line
and exit with status 2; nothing is recorded as FINISHED.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from .errors import SpecError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SpecError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)


def _progress_printer():
    """Progress lines on a terminal, silence otherwise."""
    if not sys.stderr.isatty():
        return None
    return lambda message: click.echo(f"  {message}", err=True)


experiment_option = click.option(
    "--experiment-name", "-e", default=None,
    help="MLflow experiment (one study) for the states. Default: MLFLOW_EXPERIMENT_ID / "
         "MLFLOW_EXPERIMENT_NAME, else 'mlprune'.")

scheduler_option = click.option(
    "--scheduler", default="sync", show_default=True, metavar="sync|processes|tcp://HOST:PORT",
    help="Where states are computed: in this process one after another (sync), on a local dask cluster "
         "(processes), or on a running dask scheduler (tcp://HOST:8786, with an `mlflow server` as "
         "MLFLOW_TRACKING_URI). Independent states run in parallel; the results are the same.")
workers_option = click.option(
    "--workers", type=click.IntRange(min=1), default=None,
    help="Worker processes of --scheduler processes (default: one per core).")


def _checked_scheduler(scheduler, workers):
    """The scheduler name, checked before anything is recorded (one-line errors)."""
    from .parallel import check_tracking, parse_scheduler

    scheduler = parse_scheduler(scheduler)
    if workers is not None and scheduler != "processes":
        raise SpecError("--workers applies to --scheduler processes only; start cluster workers with `dask worker`")
    import mlflow

    check_tracking(mlflow.get_tracking_uri())
    return scheduler


def _run_plan_parallel(plan, experiment, scheduler, workers, on_state):
    """run_plan on a dask scheduler: {node name: ExperimentState}, on_state(node, state) as they come."""
    from .parallel import run_plans

    store = experiment.store
    spec = {"tracking_uri": store.tracking_uri, "experiment_id": store.experiment_id}
    result = run_plans([plan], spec, scheduler, workers=workers,
                       on_state=lambda _index, name, run_id: on_state(plan.node(name), experiment.state(run_id)))
    return {name: experiment.state(run_id) for name, run_id in result.states[0].items()}


def _workflow_files(store, plan, reached, *, overrides=None, figures=True, plans=None):
    """Plan, lineage and figures for a workflow run (`plans`: a sweep's, lineage only).

    A failure here is a warning: it never hides the run's own outcome.
    """
    try:
        from . import report

        if plans is not None:
            return report.lineage_files(store, reached.values(), title=f"Lineage: {plans} (experiment "
                                        f"{store.experiment_name})", subtitle="the states the sweep reached "
                                        "and all their parents")
        return report.workflow_artifacts(store, plan, reached, overrides=overrides, figures=figures,
                                         warn=lambda message: click.echo(f"warning: {message}", err=True))
    except Exception as error:  # noqa: BLE001 - figures are a by-product
        click.echo(f"warning: no lineage/figures on the workflow run ({type(error).__name__}: {error})", err=True)
        return {}


def _experiment(name):
    from .dag import Experiment

    return Experiment(name, progress=_progress_printer())


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlprune")
def main():
    """mlprune: reproducible pruning experiments whose states live in MLflow.

    The tracking store is MLflow's: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    in the working directory.
    """


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("-P", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Override a recipe parameter (repeatable), e.g. -P rounds=3 -P protocol=paper.")
@experiment_option
@click.option("--figures/--no-figures", default=True, show_default=True,
              help="Log the recipe's figures (accuracy vs remaining, Jaccard, structure, stability, "
                   "weight evolution) on the workflow run. lineage.svg/.html are always logged.")
@click.option("--state-figures", is_flag=True,
              help="Also log weight figures (conv filters, fc matrices, biases) on each state computed now.")
@scheduler_option
@workers_option
def run(recipe, params, experiment_name, figures, state_figures, scheduler, workers):
    """Run a recipe file: reach every state it describes, reusing finished ones.

    The workflow run gets states.json, plan.json, lineage.svg, lineage.html and figures/
    (figures only when something was computed: a run of cached states only logs the lineage,
    its figures are on the workflow run that computed them).

    \b
    Examples:
      mlprune run recipes/lt_structuredL1.yaml
      mlprune run recipes/lt_structuredL1.yaml -P rounds=3 -P amount=0.3
      mlprune run recipes/lt_structuredL1.yaml -P protocol=paper -e my-study
      mlprune run recipes/lt_structuredL1.yaml --state-figures
      mlprune run recipes/lt_structuredL1.yaml --scheduler processes --workers 2
      MLFLOW_TRACKING_URI=http://mlflow:5000 mlprune run recipes/lt_structuredL1.yaml --scheduler tcp://sched:8786
    """
    from .recipes import compile_recipe, parse_assignments, run_plan
    from .store import WorkflowRun

    overrides = parse_assignments(params)
    plan = compile_recipe(recipe, overrides)
    scheduler = _checked_scheduler(scheduler, workers)
    experiment = _experiment(experiment_name)
    workflow = WorkflowRun(experiment.store, recipe=plan.recipe, params=plan.params)
    printer = _progress_printer()
    reached = {}

    def on_state(node, state):
        reached[node.name] = state.run_id
        if printer:
            printer(f"[{len(reached)}/{len(plan.nodes)}] {node.label}: {state.run_id[:8]}")

    ok = False
    started_ms = int(time.time() * 1000)
    try:
        if scheduler == "sync":
            states = run_plan(plan, experiment, on_state=on_state)
        else:
            states = _run_plan_parallel(plan, experiment, scheduler, workers, on_state)
        ok = True
    finally:
        try:
            # every state was already there: its figures are on the workflow run that computed them
            all_cached = scheduler == "sync" and not experiment.computed
            workflow.record(reached, _workflow_files(experiment.store, plan, reached, overrides=overrides,
                                                     figures=figures and ok and not all_cached))
        finally:
            workflow.end(ok)
    if state_figures:
        from .report import log_state_figures

        log_state_figures(experiment.store, list(reached.values()), since_ms=started_ms)
    last = states[plan.nodes[-1].name]
    click.echo(f"{plan.recipe}: {len(states)} states in experiment {experiment.store.experiment_name!r} "
               f"(id {experiment.store.experiment_id}); last state {last.run_id} "
               f"test_accuracy={last.metrics.get('test_accuracy', float('nan')):.4f} "
               f"sparsity={last.metrics.get('sparsity', float('nan')):.4f}")


@main.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--seeds", default=None, metavar="SEEDS",
              help="Seeds (the recipe parameter `seed`): 0-9, 0,3,7 or 1-3,8. Default: the recipe's.")
@click.option("-P", "--param", "params", multiple=True, metavar="NAME=V1,V2,...",
              help="A recipe parameter and its values (repeatable); commas give several values, and "
                   "several -P give their cartesian product.")
@scheduler_option
@workers_option
@experiment_option
def sweep(recipes, seeds, params, scheduler, workers, experiment_name):
    """Run recipes over seeds and parameter grids as one graph of states.

    Every recipe x seed x grid point is a plan; the plans are merged by state key,
    so shared prefixes (roots, first trainings) are computed once, and independent
    branches run in parallel on a dask scheduler. States already in the experiment
    are reused.

    \b
    Examples:
      mlprune sweep recipes/lt_structuredL1.yaml --seeds 0-9
      mlprune sweep recipes/lt_structuredL1.yaml recipes/lt_unstructuredL1.yaml --seeds 0-4 \\
          -P amount=0.1,0.2,0.3 --scheduler processes --workers 2
      MLFLOW_TRACKING_URI=http://mlflow:5000 mlprune sweep recipes/lt_structuredL1.yaml \\
          --seeds 0-9 --scheduler tcp://scheduler:8786 -e lt-seeds
    """
    from .parallel import parse_grid, parse_seeds, run_plans, sweep_plans
    from .store import Store, WorkflowRun

    plans = sweep_plans(recipes, parse_seeds(seeds), parse_grid(params))
    scheduler = _checked_scheduler(scheduler, workers)
    store = Store(experiment_name)
    workflow = WorkflowRun(store, recipe="sweep " + " ".join(Path(r).stem for r in recipes),
                           params={"recipes": " ".join(recipes), "seeds": seeds or "", "grid": " ".join(params),
                                   "scheduler": scheduler, "plans": len(plans)})
    printer = _progress_printer()
    reached: dict[str, str] = {}

    def on_state(index, name, run_id):
        reached[f"{plans[index][0]}/{name}"] = run_id
        if printer:
            printer(f"[{len(reached)}] {plans[index][0]} {name}: {run_id[:8]}")

    ok = False
    started = time.perf_counter()
    try:
        result = run_plans([plan for _, plan in plans],
                           {"tracking_uri": store.tracking_uri, "experiment_id": store.experiment_id},
                           scheduler, workers=workers, on_state=on_state)
        ok = True
    finally:
        try:
            workflow.record(reached, _workflow_files(store, None, reached, plans=" ".join(
                Path(r).stem for r in recipes)))
        finally:
            workflow.end(ok)
    for (label, plan), states in zip(plans, result.states):
        last = store.run(states[plan.nodes[-1].name])
        click.echo(f"{label}: last state {last.info.run_id} "
                   f"test_accuracy={last.data.metrics.get('test_accuracy', float('nan')):.4f} "
                   f"sparsity={last.data.metrics.get('sparsity', float('nan')):.4f}")
    click.echo(f"{len(plans)} plans, {result.computed + result.reused} distinct states "
               f"({result.computed} to compute, {result.reused} reused) in experiment {store.experiment_name!r} "
               f"(id {store.experiment_id}), scheduler {scheduler}, {time.perf_counter() - started:.1f} s")


STEP_KINDS = ("init", "train", "prune", "reinit")


@main.command()
@click.argument("kind", type=click.Choice(STEP_KINDS))
@click.option("--parent", default="", help="Run id of the parent state (not for init).")
@click.option("-o", "--option", "options", multiple=True, metavar="NAME=VALUE",
              help="A step option (repeatable); an empty value means the default. "
                   "Lists in YAML flow syntax, e.g. -o include=[@conv].")
@experiment_option
def step(kind, parent, options, experiment_name):
    """Create one child state of PARENT by one step, and print its run id.

    The child goes into the parent's experiment. A reinit's `to` is root, parent
    or a run id; a prune with method=from_state takes `from` (a run id).

    \b
    Examples:
      mlprune step init -o model=lenet -o dataset=digits -o seed=0
      mlprune step train --parent 3f2a9c... -o epochs=5 -o lr=0.01
      mlprune step prune --parent 8b1d4e... -o method=l1_unstructured -o amount=0.2
      mlprune step reinit --parent 5c7f0a... -o strategy=rewind -o to=root
    """
    from .dag import Experiment, Recipe
    from .recipes import parse_options

    values = parse_options(options)
    if kind == "init":
        if parent:
            raise SpecError("step init takes no --parent: it creates a root state")
        state = _experiment(experiment_name).init(**values)
    else:
        if not parent:
            raise SpecError(f"step {kind} needs --parent RUN_ID (the state to start from)")
        from .store import Store

        parent_experiment = Store().state_run(parent).info.experiment_id
        experiment = Experiment(experiment_id=parent_experiment, progress=_progress_printer())
        state = experiment.state(parent).apply(Recipe(({kind: values},)))
    metrics = state.metrics
    click.echo(f"{kind} state {state.run_id}: test_accuracy={metrics.get('test_accuracy', float('nan')):.4f} "
               f"sparsity={metrics.get('sparsity', float('nan')):.4f}", err=True)
    click.echo(state.run_id)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("-P", "--param", "params", multiple=True, metavar="NAME=VALUE", help="Override a parameter.")
def validate(recipe, params):
    """Check a recipe file and print the states it would reach; runs nothing.

    \b
    Example:
      mlprune validate recipes/lt_structuredL1.yaml -P rounds=5
    """
    from .recipes import compile_recipe, parse_assignments

    plan = compile_recipe(recipe, parse_assignments(params))
    click.echo(f"{recipe}: valid; {len(plan.nodes)} states")
    for node in plan.nodes:
        click.echo(f"  {node.name:<16} <- {node.parent or '-':<12} {node.label}")


@main.command()
@experiment_option
def tree(experiment_name):
    """Print the lineage DAG of an experiment: kind, accuracy, sparsity, extra parents.

    \b
    Example:
      mlprune tree -e mlprune
    """
    from .store import TAG_PARENT_PREFIX, TAG_PARENT_RUN, Store

    store = Store(experiment_name)
    runs = store.states()
    children: dict[str | None, list] = {}
    for run in runs:
        children.setdefault(run.data.tags.get(TAG_PARENT_RUN), []).append(run)
    if not runs:
        click.echo(f"experiment {store.experiment_name!r} holds no finished states")
        return

    def show(run, depth):
        tags, metrics = run.data.tags, run.data.metrics
        extra = ", ".join(f"{k.removeprefix(TAG_PARENT_PREFIX)}<-{v[:8]}"
                          for k, v in tags.items() if k.startswith(TAG_PARENT_PREFIX))
        click.echo(f"{'  ' * depth}{run.info.run_id[:8]} {tags.get('mlprune.kind', '?'):<14} "
                   f"acc={metrics.get('test_accuracy', float('nan')):.4f} "
                   f"sparsity={metrics.get('sparsity', float('nan')):.3f}"
                   f"{'  [' + extra + ']' if extra else ''}")
        for child in children.get(run.info.run_id, []):
            show(child, depth + 1)

    for root in children.get(None, []):
        show(root, 0)


@main.command()
@click.argument("run_id")
def show(run_id):
    """Show one state: kind, parents, metrics and its resolved spec.

    \b
    Example:
      mlprune show 3f2a9c...
    """
    import json

    from .store import Store

    store = Store()
    run = store.state_run(run_id)
    spec = store.spec(run_id)
    click.echo(f"state {run_id} kind={spec['kind']} key={spec['key']}")
    click.echo(f"  parent: {spec.get('parent_run') or '-'}  root: {spec.get('root_run') or run_id}")
    for role, source in spec.get("inputs", {}).items():
        click.echo(f"  {role} from: {source['run_id']}")
    for name, value in sorted(run.data.metrics.items()):
        click.echo(f"  {name} = {value:.6g}")
    click.echo(json.dumps({"root": spec["root"], "steps": spec["steps"]}, indent=1))


@main.command()
@click.argument("experiment")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--ui-url", default=None, metavar="URL",
              help="MLflow UI the lineage links point to. Default: the tracking server, or "
                   "http://127.0.0.1:5000 (`mlflow ui`) for a local store.")
def report(experiment, out_dir, ui_url):
    """Write a self-contained HTML report of EXPERIMENT (name or id) into OUT_DIR.

    OUT_DIR/report.html embeds every figure (it works offline): the lineage DAG,
    accuracy and early-stopping epoch vs remaining weights (mean ± std over seeds),
    Jaccard heatmaps, emergent structure, weight stability and evolution, and the
    weights of the dense and final states. Also figures/*.png and numbers.json.
    Runs that are not mlprune states, or states with missing artifacts, are
    skipped with a warning.

    \b
    Examples:
      mlprune report mlprune ./report
      mlprune report my-study out/ --ui-url http://mlflow.example:5000
    """
    from .report import write_report

    result = write_report(experiment, out_dir, ui_url=ui_url,
                          warn=lambda message: click.echo(f"warning: {message}", err=True))
    click.echo(f"wrote {result.path} ({result.n_states} states, {len(result.figures)} figures)")


@main.command()
@click.argument("runs", nargs=-1, metavar="[RUN_A RUN_B]")
@experiment_option
def compare(runs, experiment_name):
    """Compare recipes (accuracy vs remaining weights), or the masks of two states.

    With no run ids: a table of every recipe round in the experiment, test
    accuracy against the fraction of weights remaining, mean ± std over seeds.
    With two run ids: Jaccard similarity of their kept weights, overall and per layer.

    \b
    Examples:
      mlprune compare -e my-study
      mlprune compare 3f2a9c... 8b1d4e...
    """
    if len(runs) == 2:
        from .dag import Experiment
        from .report import mask_similarity

        experiment = Experiment()
        a, b = experiment.state(runs[0]), experiment.state(runs[1])
        result = mask_similarity(a, b)
        click.echo(f"Jaccard of kept weights, {runs[0][:8]} ({a.kind}) vs {runs[1][:8]} ({b.kind}): "
                   f"overall {result['overall']:.4f}")
        for name, value in result["per_layer"].items():
            click.echo(f"  {name:<32} {value:.4f}")
        return
    if runs:
        raise SpecError(f"compare takes no run id (a table of recipes) or two (their masks), got {len(runs)}")
    from . import analysis
    from .report import _rows, collect
    from .store import Store

    store = Store(experiment_name)
    rows = _rows(collect(store, warn=lambda message: click.echo(f"warning: {message}", err=True)))
    if not rows:
        click.echo(f"experiment {store.experiment_name!r} holds no recipe rounds (run a recipe first)")
        return
    click.echo(f"{'recipe':<44} {'round':>5} {'remaining':>10} {'test accuracy':>18} {'n':>3}")
    for row in analysis.accuracy_vs_remaining(rows):
        click.echo(f"{row['recipe']:<44} {row['round']:>5} {100 * row['remaining']:>9.2f}% "
                   f"{100 * row['mean']:>9.2f}% ± {100 * row['std']:<5.2f} {row['n']:>3}")


@main.command()
@click.argument("run_id")
@click.argument("directory", type=click.Path(file_okay=False))
def export(run_id, directory):
    """Write a state's weights.safetensors, masks.safetensors and state.json to DIRECTORY.

    Weights are resolved even when the state references its parent's.

    \b
    Example:
      mlprune export 3f2a9c... ./ticket
    """
    from .store import Store

    files = Store().artifact_files(run_id)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (out / name).write_bytes(content)
    click.echo(f"wrote {', '.join(files)} to {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
