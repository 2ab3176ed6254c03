"""The `mlprune` command line (click). The only module that knows click.

Errors in what the user gave (a recipe, a parameter, a run id) print one line
and exit with status 2; nothing is recorded as FINISHED.
"""

from __future__ import annotations

import os
import sys
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
def run(recipe, params, experiment_name):
    """Run a recipe file: reach every state it describes, reusing finished ones.

    \b
    Examples:
      mlprune run recipes/lt_structuredL1.yaml
      mlprune run recipes/lt_structuredL1.yaml -P rounds=3 -P amount=0.3
      mlprune run recipes/lt_structuredL1.yaml -P protocol=paper -e my-study
    """
    from .recipes import compile_recipe, parse_assignments, run_plan
    from .store import WorkflowRun

    plan = compile_recipe(recipe, parse_assignments(params))
    experiment = _experiment(experiment_name)
    workflow = WorkflowRun(experiment.store, recipe=plan.recipe, params=plan.params)
    printer = _progress_printer()
    reached = {}

    def on_state(node, state):
        reached[node.name] = state.run_id
        if printer:
            printer(f"[{len(reached)}/{len(plan.nodes)}] {node.label}: {state.run_id[:8]}")

    ok = False
    try:
        states = run_plan(plan, experiment, on_state=on_state)
        ok = True
    finally:
        workflow.record(reached)
        workflow.end(ok)
    last = states[plan.nodes[-1].name]
    click.echo(f"{plan.recipe}: {len(states)} states in experiment {experiment.store.experiment_name!r} "
               f"(id {experiment.store.experiment_id}); last state {last.run_id} "
               f"test_accuracy={last.metrics.get('test_accuracy', float('nan')):.4f} "
               f"sparsity={last.metrics.get('sparsity', float('nan')):.4f}")


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
