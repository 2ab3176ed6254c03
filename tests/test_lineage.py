"""Lineage views on a real MLflow store: graph, SVG/HTML, workflow-run artifacts, the MLflow plugin."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from mlprune import Experiment, Recipe, lineage
from mlprune.cli import main

TRAIN = Recipe.train(epochs=1, lr=0.05, momentum=0.9)
TICKET = Recipe.reinit(strategy="rewind", to="root") + TRAIN


@pytest.fixture(scope="module")
def tree(store_folder):
    """root -> train -> two prunes of the trained state -> a rewound ticket (weights edge to the root)."""
    with store_folder("lineage-store") as (folder, uri, _):
        exp = Experiment("tree", tracking_uri=uri)
        root = exp.init(model="lenet", dataset="digits", seed=0)
        trained = root.apply(TRAIN)
        l1 = trained.apply(Recipe.prune(method="l1_unstructured", amount=0.5))
        ln = trained.apply(Recipe.prune(method="ln_structured", amount=0.25, n=1, dim=1))
        ticket = l1.apply(TICKET)
    states = {"root": root, "trained": trained, "l1": l1, "ln": ln, "ticket": ticket}
    return {"uri": uri, "folder": folder, "experiment_id": exp.store.experiment_id, "states": states}


def runs_of(tree):
    return MlflowClient(tracking_uri=tree["uri"]).search_runs([tree["experiment_id"]])


def test_graph_has_every_state_and_every_parent(tree):
    s = {k: v.run_id for k, v in tree["states"].items()}
    nodes, edges = lineage.lineage_graph(runs_of(tree))
    by_id = {n["id"]: n for n in nodes}
    assert set(by_id) == set(s.values())
    assert [by_id[s[k]]["label"] for k in ("root", "trained", "l1", "ln", "ticket")] == [
        "init",
        "train",
        "prune",
        "prune",
        "reinit+train",
    ]
    assert nodes[0]["id"] == s["root"]  # parents first
    assert set(edges) == {
        (s["root"], s["trained"], "primary"),
        (s["trained"], s["l1"], "primary"),
        (s["trained"], s["ln"], "primary"),
        (s["l1"], s["ticket"], "primary"),
        (s["root"], s["ticket"], "weights"),
    }
    metrics = tree["states"]["l1"].metrics
    assert by_id[s["l1"]]["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert by_id[s["l1"]]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert all(n["experiment_id"] == tree["experiment_id"] and not n["missing"] for n in nodes)


def test_parent_outside_the_runs_is_drawn_as_missing(tree):
    s = {k: v.run_id for k, v in tree["states"].items()}
    runs = [r for r in runs_of(tree) if r.info.run_id != s["root"]]
    nodes, edges = lineage.lineage_graph(runs)
    missing = [n for n in nodes if n["missing"]]
    assert [n["id"] for n in missing] == [s["root"]] and missing[0]["label"] == "missing"
    assert (s["root"], s["ticket"], "weights") in edges
    # ancestors() brings it back when it can be fetched
    client = MlflowClient(tracking_uri=tree["uri"])
    found = lineage.ancestors([s["ticket"]], {r.info.run_id: r for r in runs}, client.get_run)
    assert set(found) == {s["root"], s["trained"], s["l1"], s["ticket"]}


def test_non_state_runs_are_not_nodes(tree):
    client = MlflowClient(tracking_uri=tree["uri"])
    other = client.create_run(tree["experiment_id"], run_name="not a state")
    try:
        nodes, _ = lineage.lineage_graph(client.search_runs([tree["experiment_id"]]))
        assert other.info.run_id not in {n["id"] for n in nodes}
    finally:
        client.delete_run(other.info.run_id)


def _links(html: str) -> dict[str, str]:
    """{run id: href} of the DAG's node links (an <a> around each <g class="node" data-id=...>)."""
    return dict(
        (m.group(2), m.group(1))
        for m in re.finditer(
            r'<a data-ui-path="[^"]*" href="([^"]*)" target="_top"><g class="node(?: current)?" data-id="([^"]*)"', html
        )
    )


def test_lineage_html_links_every_node_to_its_run(tree):
    nodes, edges = lineage.lineage_graph(runs_of(tree))
    exp = tree["experiment_id"]
    html = lineage.lineage_html(nodes, edges, title="t", base="/", file_base="http://127.0.0.1:5000")
    links = _links(html)
    assert links == {n["id"]: f"/#/experiments/{exp}/runs/{n['id']}" for n in nodes}
    for run_id in links:  # the table links each state too
        assert f'data-ui-path="/#/experiments/{exp}/runs/{run_id}"' in html
    assert '"http://127.0.0.1:5000"' in html and "<script>" in html  # re-bases links opened as a file
    assert "http" not in re.sub(r"<script>.*?</script>", "", html, flags=re.S).replace(
        "http://www.w3.org/2000/svg", ""
    )  # no external resource: works offline
    served = lineage.lineage_html(nodes, edges, title="t", base="/prefix/")
    assert "fileBase" not in served  # served by the tracking server: links need no re-basing (the viewer script stays)
    assert set(_links(served).values()) == {f"/prefix/#/experiments/{exp}/runs/{n['id']}" for n in nodes}
    svg = lineage.lineage_svg(nodes, edges, base=None)
    assert "<a " not in svg and svg.count('class="node"') == len(nodes)


RECIPE = """\
name: tiny_lt
params: {rounds: 1, epochs: 1, seed: 0}
root: {model: lenet, dataset: digits, seed: $seed}
train: {epochs: $epochs, lr: 0.05, momentum: 0.9}
rounds: $rounds
prune: {method: l1_unstructured, amount: 0.5}
reinit: {strategy: rewind, to: root}
"""


@pytest.mark.slow
def test_workflow_run_gets_lineage_and_figures(tracking, tmp_path):
    recipe = tmp_path / "tiny_lt.yaml"
    recipe.write_text(RECIPE)
    result = CliRunner().invoke(main, ["run", str(recipe), "-e", "wf", "-P", "rounds=2", "--state-figures"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=tracking)
    exp = client.get_experiment_by_name("wf").experiment_id
    runs = client.search_runs([exp])
    workflow = next(r for r in runs if r.data.tags.get("mlprune.recipe") == "tiny_lt")
    states = [r for r in runs if "mlprune.key" in r.data.tags]
    assert len(states) == 6
    art = Path(workflow.info.artifact_uri)
    names = {str(p.relative_to(art)) for p in art.rglob("*") if p.is_file()}
    assert {
        "states.json",
        "plan.json",
        "params.json",
        "lineage.svg",
        "lineage.html",
        "figures/accuracy_vs_remaining.png",
        "figures/jaccard_rounds.png",
        "figures/structure.png",
        "figures/stability.png",
    } <= names
    assert sum(n.startswith("figures/weight_evolution/") for n in names) == 5  # one per LeNet layer
    inside = [n for n in names if n.startswith("figures/inside/")]  # learning curves, class impact, PIEs, churn
    assert any("curves" in n for n in inside) and any("churn" in n for n in inside), inside
    html = (art / "lineage.html").read_text()
    assert set(_links(html)) == {r.info.run_id for r in states}
    assert (art / "lineage.svg").read_text().count('class="node"') == 6
    recorded = json.loads((art / "plan.json").read_text())["plans"]
    assert len(recorded) == 1
    plan = recorded[0]
    assert plan["recipe"] == "tiny_lt" and plan["overrides"] == {"rounds": 2}
    assert {n["name"] for n in plan["nodes"]} == {"root", "train", "prune1", "round1", "prune2", "round2"}
    # every node carries its key and the run it reached: the report groups by them, parses nothing
    assert {n["key"] for n in plan["nodes"]} == {r.data.tags["mlprune.key"] for r in states}
    assert set(plan["reached"].values()) == {r.info.run_id for r in states}
    assert {(n["name"], n["round"], n["role"]) for n in plan["nodes"] if n["round"]} == {
        ("prune1", 1, "pruned"),
        ("round1", 1, "trained"),
        ("prune2", 2, "pruned"),
        ("round2", 2, "trained"),
    }
    # --state-figures: weight figures on each state computed now
    state_art = Path(states[-1].info.artifact_uri)
    assert (state_art / "figures" / "weights" / "features.0.weight.png").is_file()
    assert (state_art / "figures" / "weights" / "biases.png").is_file()
    # a rerun computes nothing and, reaching the same states with the same parameters, records
    # nothing new: the first workflow run already says it all
    again = CliRunner().invoke(main, ["run", str(recipe), "-e", "wf", "-P", "rounds=2"])
    assert again.exit_code == 0, again.output
    workflows = [r for r in client.search_runs([exp]) if r.data.tags.get("mlprune.recipe") == "tiny_lt"]
    assert [r.info.run_id for r in workflows] == [workflow.info.run_id]
    # a rerun with other parameters whose states all exist computes nothing, still gets its lineage;
    # its figures stay on the run that computed the states (rendering them again would cost most of
    # a cached run's time)
    fewer = CliRunner().invoke(main, ["run", str(recipe), "-e", "wf", "-P", "rounds=1"])
    assert fewer.exit_code == 0 and fewer.output.strip().splitlines()[-1] == "4 states: 0 computed, 4 reused"
    runs = client.search_runs([exp], order_by=["attributes.start_time DESC"])
    second = next(r for r in runs if r.data.tags.get("mlprune.recipe") == "tiny_lt")
    assert second.info.run_id != workflow.info.run_id
    art2 = Path(second.info.artifact_uri)
    assert (art2 / "lineage.html").is_file() and not (art2 / "figures").exists()
    assert json.loads((art2 / "plan.json").read_text())["plans"][0]["overrides"] == {"rounds": 1}


def test_run_context_provider_tags_runs(tracking):
    import mlflow

    from mlprune import __version__

    mlflow.set_experiment("ctx")
    with mlflow.start_run() as run:
        pass
    assert MlflowClient(tracking_uri=tracking).get_run(run.info.run_id).data.tags["mlprune.version"] == __version__


def test_entry_points_are_registered():
    from importlib.metadata import entry_points

    apps = {e.name: e.value for e in entry_points(group="mlflow.app")}
    assert apps["mlprune"] == "mlprune.mlflow_plugin:create_app"
    providers = {e.name: e.load() for e in entry_points(group="mlflow.run_context_provider")}
    from mlflow.tracking.context.abstract_context import RunContextProvider

    assert issubclass(providers["mlprune"], RunContextProvider)


def test_plugin_pages_with_flask_test_client(tree, monkeypatch):
    from mlflow.server import app
    from mlflow.tracking._tracking_service.utils import _get_store

    from mlprune import mlflow_plugin

    monkeypatch.setattr(mlflow_plugin, "_store", lambda: _get_store(tree["uri"]))
    mlflow_plugin.add_lineage_routes(app)
    mlflow_plugin.add_lineage_routes(app)  # idempotent
    client = app.test_client()
    exp = tree["experiment_id"]
    page = client.get(f"/mlprune/lineage/{exp}")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert set(_links(html)) == {s.run_id for s in tree["states"].values()}
    assert "fileBase" not in html
    index = client.get("/mlprune/lineage/").get_data(as_text=True)
    assert f'href="/mlprune/lineage/{exp}">tree</a>' in index
    assert client.get("/mlprune/lineage/987654").status_code == 404
    # a state's own page (its description links here): its experiment's DAG, that state marked
    state = next(iter(tree["states"].values()))
    own = client.get(f"/mlprune/lineage/{state.run_id}").get_data(as_text=True)
    assert set(_links(own)) == set(_links(html))
    assert own.count('class="node current"') == 1 and f'class="node current" data-id="{state.run_id}"' in own
    assert client.get(f"/mlprune/lineage/{'0' * 32}").status_code == 404


def test_create_app_wraps_flask_in_mlflows_fastapi(monkeypatch):
    from fastapi import FastAPI
    from flask import Flask

    from mlprune import mlflow_plugin

    monkeypatch.setenv("_MLFLOW_SGI_NAME", "gunicorn")
    assert isinstance(mlflow_plugin.create_app(), Flask)
    monkeypatch.setenv("_MLFLOW_SGI_NAME", "uvicorn")
    assert isinstance(mlflow_plugin.create_app(), FastAPI)
