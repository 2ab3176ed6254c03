"""Every recipe and entry point, run for real on digits at small sizes; composition; step entry points."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from mlprune import SpecError
from mlprune.cli import main
from mlprune.recipes import compile_recipe, read_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
MLPROJECT = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
SEED_EXPERIMENTS = [
    "lt_unstructuredL1",
    "lt_structuredL1",
    "lt_structuredL2",
    "lt_structuredL-inf",
    "lt_structuredrandom",
    "lt_unstructuredrandom",
    "lt_mixedL1",
    "lt_convonlystructuredL1",
    "lt_fcnonlyunstructuredL1",
    "lt_half_structuredL1_half_unstructuredL1",
    "lt_half_unstructuredL1_half_structuredL1",
    *[
        f"{p}_{s}"
        for p in ("finetuning", "sign", "zhou")
        for s in ("unstructuredL1", "structuredL1", "structuredL2", "mixedL1")
    ],
    "alexnet_unstructuredL1",
    "alexnet_structuredL1",
    "alexnet_mixedL1",
    "alexnet_unstructuredL1_cifar10",
    "alexnet_structuredL1_cifar10",
    "alexnet_mixedL1_cifar10",
    "lt_unstructuredL1_alexnet",
    "vgg11_unstructuredL1_cifar10",
    "vgg11_structuredL1_cifar10",
    "vgg11_mixedL1_cifar10",
]
# the instability presets prune to the paper's sparse level: LeNet 3.5 % (15 rounds), ResNet-20 16.8 % (8)
PAPER_ROUNDS = {"lmc_lenet_300_100": 15, "lmc_resnet20_cifar10": 8}
# the paper protocol of a baseline grid changes the data, network and budgets, not the grid of states
SAME_GRID = {"shrinkbench_grid"}
SMALL = {"rounds": 1, "epochs": 2, "train_size": 64, "test_size": 64, "sparsities": 0.9}
# AlexNet, VGG and ResNet states cost seconds each on a CPU: one epoch and 32 test images prove the same
# thing (the planned keys are the executed ones; the parents and extra parents are linked)
SMALL_LARGE_MODELS = {**SMALL, "epochs": 1, "test_size": 32}
LENET_FAMILY = [
    name
    for name in RECIPES
    if read_recipe(REPO / "recipes" / f"{name}.yaml")["params"].get("model", "lenet") in ("lenet", "lenet_300_100")
]
LENET = [
    name
    for name in RECIPES
    if read_recipe(REPO / "recipes" / f"{name}.yaml")["params"].get("model", "lenet") == "lenet"
]


def test_the_seed_experiments_are_all_there():
    assert len(SEED_EXPERIMENTS) == 33
    assert set(SEED_EXPERIMENTS) <= set(RECIPES)
    assert set(RECIPES) <= set(MLPROJECT)
    assert {"init", "train", "prune", "reinit", "lth_lenet_300_100"} <= set(MLPROJECT)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_validates_with_defaults_and_paper_protocol(name):
    path = REPO / "recipes" / f"{name}.yaml"
    default = compile_recipe(path)
    assert default.params["dataset"] == "digits"  # defaults run on the embedded data
    paper = compile_recipe(path, {"protocol": "paper"})
    assert paper.params["dataset"] in ("mnist", "cifar10")
    if "rounds" in paper.params:  # one-shot recipes (one_shot) have sparsities instead of rounds
        assert paper.params["rounds"] == PAPER_ROUNDS.get(name, 20)
    if name in SAME_GRID:
        assert len(paper.nodes) == len(default.nodes) and paper.nodes[-1].key != default.nodes[-1].key
    else:
        assert len(paper.nodes) > len(default.nodes)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One real store for all entry points: they must share roots and first trained states."""
    folder = tmp_path_factory.mktemp("recipes-store")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("recipes", artifact_location=str(folder / "artifacts"))
    return {"uri": uri, "experiment_id": experiment_id, "train_states": {}, "client": client}


def _entry_point_args(name: str, values: dict) -> list[str]:
    """The mlprune command line MLflow would run for this entry point with these parameters."""
    entry = MLPROJECT[name]
    params = {key: str(values.get(key, "")) for key in entry["parameters"]}
    command = entry["command"].format(**{k: shlex.quote(v) for k, v in params.items()})
    args = shlex.split(command)
    assert args[:3] == ["python", "-m", "mlprune"]
    return args[3:]


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_entry_point_runs_end_to_end(name, shared_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_store["uri"])
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", shared_store["experiment_id"])
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("MLPRUNE_FIGURES", "0")  # keys and links are checked here; figures in test_lineage, test_pai
    small = SMALL if name in LENET_FAMILY or name.startswith("lmc_") else SMALL_LARGE_MODELS  # lmc: spawns at 1ep
    args = _entry_point_args(name, small)
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    plan = compile_recipe(
        REPO / "recipes" / f"{name}.yaml", {k: v for k, v in small.items() if k in MLPROJECT[name]["parameters"]}
    )
    client = shared_store["client"]
    workflows = client.search_runs([shared_store["experiment_id"]], filter_string=f"tags.`mlprune.recipe` = '{name}'")
    reached = {}
    for workflow in workflows:
        local = client.download_artifacts(workflow.info.run_id, "states.json")
        reached.update(yaml.safe_load(Path(local).read_text()))
    assert set(reached) == {node.name for node in plan.nodes}
    for node in plan.nodes:
        run = client.get_run(reached[node.name])
        assert run.info.status == "FINISHED"
        # the key planned without a store is the key the executor stored
        assert run.data.tags["mlprune.key"] == node.key, node.name
        if node.parent:
            assert run.data.tags["mlflow.parentRunId"] == reached[node.parent]
        for role, source in node.inputs.items():
            assert run.data.tags[f"mlprune.parent.{role}"] == reached[source]
    shared_store["train_states"][name] = (reached["root"], reached["train"])


def test_lenet_recipes_share_one_root_and_one_first_trained_state(shared_store):
    ran = {name: states for name, states in shared_store["train_states"].items() if name in LENET}
    if len(ran) < len(LENET):
        pytest.skip("needs test_every_recipe_entry_point_runs_end_to_end to have run for every LeNet recipe")
    assert len(LENET) >= 23
    assert len({root for root, _ in ran.values()}) == 1
    assert len({train for _, train in ran.values()}) == 1


def test_extends_overrides_parts_of_a_recipe():
    base = compile_recipe(REPO / "recipes" / "lt_structuredL1.yaml")
    child = compile_recipe(REPO / "recipes" / "finetuning_structuredL1.yaml")
    assert [n.name for n in base.nodes] == [n.name for n in child.nodes]
    assert base.node("prune1").steps == child.node("prune1").steps
    assert child.node("round1").steps[0] == {"reinit": {"strategy": "keep", "reset_optimizer": True}}
    assert base.node("round1").steps[0] == {
        "reinit": {"strategy": "rewind", "to": "input:weights", "reset_optimizer": True}
    }
    assert base.node("round1").inputs == {"weights": "root"} and child.node("round1").inputs == {}


def test_half_and_half_schedule_switches_method():
    plan = compile_recipe(REPO / "recipes" / "lt_half_structuredL1_half_unstructuredL1.yaml", {"rounds": 4})
    methods = [plan.node(f"prune{r}").steps[0]["prune"]["method"] for r in range(1, 5)]
    assert methods == ["ln_structured", "ln_structured", "l1_unstructured", "l1_unstructured"]


def test_early_mask_protocol_prunes_the_epoch_checkpoint():
    plan = compile_recipe(REPO / "recipes" / "lt_unstructuredL1.yaml", {"rounds": 2})
    assert plan.node("prune1").parent == "train@1ep"
    assert plan.node("prune2").parent == "round1@1ep"
    # the full training emits its epoch-1 state on the way: one training, two states
    assert plan.node("train").emits == ["train@1ep"] and plan.node("train@1ep").emitted_by == "train"
    assert plan.node("train@1ep").steps[0]["train"]["epochs"] == 1
    assert plan.node("train@1ep").parent == "root" and plan.node("round1@1ep").parent == "prune1"


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("rounds: $rounds\nwings: 3\n", ["wings"]),
        ("prune: {method: l1_unstructured, amount: $amount, colour: red}\n", ["colour", "prune"]),
        ("prune: {method: l1_unstructured, amount: 2.5}\n", ["2.5", "prune"]),
        ("train: {epochs: many}\n", ["many", "train"]),
        ("rounds: $nope\n", ["$nope"]),
    ],
)
def test_bad_recipe_files_say_file_key_and_reason(tmp_path, text, fragments):
    base = (REPO / "recipes" / "lt_structuredL1.yaml").read_text()
    lines = [line for line in base.splitlines() if not line.startswith(text.split(":")[0] + ":")]
    path = tmp_path / "broken.yaml"
    path.write_text("\n".join(lines) + "\n" + text)
    with pytest.raises(SpecError) as raised:
        compile_recipe(path)
    message = str(raised.value)
    assert "broken.yaml" in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2


def test_extends_cycle_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(SpecError, match="cycle"):
        compile_recipe(tmp_path / "a.yaml")


def test_step_commands_chain_states_by_hand(tracking):
    runner = CliRunner()

    def step(*args):
        result = runner.invoke(main, ["step", *args])
        assert result.exit_code == 0, result.output
        return result.output.strip().splitlines()[-1]

    root = step("init", "-o", "model=lenet", "-o", "dataset=digits", "-o", "seed=1", "-o", "train_size=128")
    trained = step("train", "--parent", root, "-o", "epochs=1", "-o", "lr=")
    pruned = step(
        "prune", "--parent", trained, "-o", "method=l1_unstructured", "-o", "amount=0.3", "-o", "include=[@linear]"
    )
    ticket = step("reinit", "--parent", pruned, "-o", "strategy=rewind", "-o", "to=root")
    client = MlflowClient(tracking_uri=tracking)
    assert client.get_run(ticket).data.tags["mlflow.parentRunId"] == pruned
    assert client.get_run(ticket).data.tags["mlprune.parent.weights"] == root
    assert client.get_run(pruned).data.metrics["sparsity.features.0.weight"] == 0.0
    bad = runner.invoke(main, ["step", "prune", "--parent", trained, "-o", "method=magic"])
    assert bad.exit_code == 2 and "magic" in bad.output


@pytest.mark.slow
def test_mlflow_run_prune_entry_point_creates_one_child(tracking, tmp_path):
    runner = CliRunner()
    root = runner.invoke(main, ["step", "init", "-o", "seed=2", "-o", "train_size=64"]).output.strip().splitlines()[-1]
    client = MlflowClient(tracking_uri=tracking)
    before = len(client.search_runs([client.get_run(root).info.experiment_id]))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(REPO),
            "-e",
            "prune",
            "--env-manager",
            "local",
            "-P",
            f"parent={root}",
            "-P",
            "method=l1_unstructured",
            "-P",
            "amount=0.5",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    children = client.search_runs(
        [client.get_run(root).info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{root}'"
    )
    assert len(children) == 1
    assert children[0].data.tags["mlprune.kind"] == "prune"
    assert children[0].data.metrics["sparsity"] == pytest.approx(0.5, abs=0.01)
    # the step's state went into the parent's experiment, next to it
    assert len(client.search_runs([client.get_run(root).info.experiment_id])) == before + 1
