"""Plugins: a model, a criterion and a dataset from another package join the catalogs (Python entry
points, or `mlprune.register`), keys follow their code, states record it, and what cannot work is one
line before anything runs. The example package is examples/plugin; its pyproject.toml declares the
entry points. In-process tests put it on sys.path with a dist-info written from that pyproject.toml
(importlib.metadata reads entry points from there, as from an installed package); the README's commands
run in a fresh venv where `pip install -e examples/plugin` installs it for real."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib
import torch
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "plugin"
LOTTERY = EXAMPLE / "lottery.yaml"
DIST = "mlprune-example-plugin"
ERROR_S = 10


def write_dist_info(where: Path, name: str, version: str, groups: dict) -> None:
    """A dist-info directory: what `pip install` leaves for importlib.metadata (name, version, entry points)."""
    info = where / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()) + "\n"
            for group, points in groups.items()
        )
    )


def forget(prefix: str = "mlprune_example_plugin") -> None:
    from mlprune.plugins import forget_plugins

    for module in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[module]
    forget_plugins()


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """A copy of examples/plugin on sys.path with its dist-info: the plugin as installed, its sources editable."""
    folder = tmp_path_factory.mktemp("plugin")
    shutil.copytree(EXAMPLE / "mlprune_example_plugin", folder / "mlprune_example_plugin")
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    write_dist_info(folder, project["name"], project["version"], project["entry-points"])
    sys.path.insert(0, str(folder))
    forget()
    yield folder
    sys.path.remove(str(folder))
    forget()


@pytest.fixture
def extra_dist(tmp_path):
    """Another installed distribution with entry points (shadowing, broken ones); gone after the test."""

    def install(name: str, groups: dict) -> None:
        write_dist_info(tmp_path, name, "1.0", groups)
        sys.path.insert(0, str(tmp_path))
        forget()

    yield install
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))
        forget()


def finished(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'").fetchone()[0]


def plugin_tags(db: Path) -> list[tuple[str, dict[str, dict]]]:
    """(run name, {plugin: tag value}) of the store's finished state runs."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT runs.run_uuid, runs.name, tags.key, tags.value FROM runs JOIN tags ON "
            "tags.run_uuid = runs.run_uuid WHERE tags.key LIKE 'mlprune.plugin.%' AND "
            "runs.status = 'FINISHED'"
        )
        found: dict = {}
        for run, name, key, value in rows:
            found.setdefault(run, (name, {}))[1][key[len("mlprune.plugin.") :]] = json.loads(value)
    return list(found.values())


# ---- catalogs -----------------------------------------------------------------------------------


def test_entry_points_join_the_catalogs_as_entries_of_the_same_kind(example):
    from mlprune.data.catalog import DATASETS, Dataset
    from mlprune.models.catalog import MODELS, Model
    from mlprune.pruning.catalog import METHODS, Method
    from mlprune.spec.steps import resolve_root

    assert {"example_mlp", "lenet"} <= set(MODELS) and "example_taylor" in METHODS and "example_blobs" in DATASETS
    assert isinstance(MODELS["example_mlp"], Model) and isinstance(METHODS["example_taylor"], Method)
    assert isinstance(DATASETS["example_blobs"], Dataset)
    found = METHODS.plugin("example_taylor")
    assert (found.distribution, found.version, found.keyed_by) == (DIST, "0.1.0", "digest")
    assert METHODS.plugin("l1_unstructured") is None
    # the digest covers the module the code field names, not the model's nor the declarations'
    from mlprune.plugins import code_files

    assert list(code_files(found.modules)) == ["mlprune_example_plugin.criteria"]
    root = resolve_root({"model": "example_mlp", "dataset": "example_blobs"})
    assert root["plugins"] == {
        name: {
            "version": "0.1.0",
            "digest": MODELS.plugin(name).digest() if name in MODELS else DATASETS.plugin(name).digest(),
        }
        for name in ("example_blobs", "example_mlp")
    }
    assert "plugins" not in resolve_root({"model": "lenet", "dataset": "digits"})  # built-in keys stay
    from mlprune.cli import main

    listed = CliRunner().invoke(main, ["plugins"])
    assert listed.exit_code == 0, listed.output
    assert (
        f"pruning method   example_taylor       {DIST} 0.1.0 digest {found.digest()}  first-order Taylor"
        in listed.output
        and "model            example_mlp" in listed.output
    )


def test_the_dataset_plugin_joins_the_deterministic_pipeline(example):
    from mlprune.data import load_data

    data = load_data("example_blobs")
    assert (data.num_classes, tuple(data.input_shape), data.len_train, data.len_test) == (4, (1, 8, 8), 512, 128)
    first = list(data.train_batches(32, seed=3, epoch=1))
    again = list(load_data("example_blobs").train_batches(32, seed=3, epoch=1))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    skipped = list(data.train_batches(32, seed=3, epoch=1, skip=5))
    assert len(skipped) == len(first) - 5 and torch.equal(skipped[0][0], first[5][0])
    # normalized with the entry's statistics: (x - 0.5) / 0.25 of images in [0, 1]
    x = torch.cat([b[0] for b in data.test_batches(128)])
    assert float(x.min()) >= -2.0 - 1e-6 and float(x.max()) <= 2.0 + 1e-6


def test_a_map_style_dataset_plugin_is_read_per_sample_in_the_seeded_order(tmp_path, monkeypatch):
    """Data that does not fit in memory: the reader returns (train, test) map-style Datasets, decoded per sample
    in the seeded order of every dataset read so (`skip` included), normalized with the entry's statistics."""
    import mlprune
    from mlprune.data import load_data
    from mlprune.data.sampling import shuffle_seed
    from mlprune.names import ENV_PLUGIN_MODULES

    monkeypatch.setenv(ENV_PLUGIN_MODULES, "")
    monkeypatch.setenv("MLPRUNE_DATA_WORKERS", "0")
    (tmp_path / "my_stream.py").write_text(
        "import torch\n\n\nclass Squares(torch.utils.data.Dataset):\n"
        "    def __init__(self, n, offset):\n        self.n, self.offset = n, offset\n"
        "    def __len__(self):\n        return self.n\n"
        "    def __getitem__(self, i):\n"
        "        return torch.full((1, 4, 4), ((i + self.offset) % 256) / 255.0), (i + self.offset) % 3\n\n\n"
        "def read(root):\n    return Squares(40, 0), Squares(10, 100)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    forget("my_stream")
    try:
        import my_stream

        mlprune.register(
            mlprune.Dataset(
                "my_stream",
                my_stream.read,
                num_classes=3,
                channels=1,
                mean=(0.5,),
                std=(0.5,),
                augment="flip",
                default_augment=False,
                needs_files=False,
                in_memory=False,
                image_size=4,
            )
        )
        data = load_data("my_stream")
        assert (data.num_classes, tuple(data.input_shape), data.len_train, data.len_test) == (3, (1, 4, 4), 40, 10)
        batches = list(data.train_batches(8, seed=2, epoch=1))
        order = torch.randperm(40, generator=torch.Generator().manual_seed(shuffle_seed(2, 1)))
        x = torch.cat([b[0] for b in batches])
        assert torch.equal(torch.cat([b[1] for b in batches]), order % 3)
        assert torch.allclose(x[:, 0, 0, 0], (order.float() / 255.0 - 0.5) / 0.5)
        assert torch.equal(list(data.train_batches(8, seed=2, epoch=1, skip=3))[0][0], batches[3][0])
    finally:
        forget("my_stream")


# ---- the criterion against its formula -------------------------------------------------------------


def test_the_plugin_criterion_is_first_order_taylor_with_global_scope_an_override_and_invert(example, experiment):
    from mlprune_example_plugin.nets import ExampleMLP

    from mlprune import Recipe
    from mlprune.data import load_data
    from mlprune.recipes.controls import invert_control

    trained = experiment.init(model="example_mlp", dataset="example_blobs", seed=1).apply(
        Recipe.train(steps="8it", lr=0.1, batch_size=64)
    )
    step = {
        "method": "example_taylor",
        "amount": 0.3,
        "scope": "global",
        "batches": 2,
        "batch_size": 32,
        "layers": {"fc2.*": {"skip": True}},
    }
    pruned = trained.apply(Recipe.prune(**step))
    inverted = trained.apply(Recipe.prune(**{**step, **invert_control(step, None, "parent")["prune"]}))

    # |w * dL/dw| summed over the first two batches of epoch 0 of the root's data order, computed here
    model = ExampleMLP(4, (1, 8, 8))
    model.load_state_dict(trained.weights)
    model.eval()
    grad = torch.zeros_like(model.fc1.weight)
    for x, y in itertools.islice(load_data("example_blobs").train_batches(32, seed=1, epoch=0), 2):
        grad += torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), [model.fc1.weight])[0]
    score = (model.fc1.weight * grad).abs().detach().flatten()
    k = round(0.3 * score.numel())  # global over the layers left: fc1 only (fc2 skipped by the override)
    for state, prune in ((pruned, score.argsort()[:k]), (inverted, score.argsort(descending=True)[:k])):
        expected = torch.ones_like(score, dtype=torch.bool)
        expected[prune] = False
        assert torch.equal(state.masks["fc1.weight"].flatten(), expected)
        assert bool(state.masks["fc2.weight"].all())
    assert pruned.key != inverted.key
    # the state records the plugins it depends on: the root's model and dataset, its own method
    assert set(pruned.spec["plugins"]) == {"example_mlp", "example_blobs", "example_taylor"}
    assert set(pruned.spec["steps"][0]["prune"]["plugins"]) == {"example_taylor"}
    tags = experiment.store.run(pruned.run_id).data.tags
    record = json.loads(tags["mlprune.plugin.example_taylor"])
    assert record == {
        "distribution": DIST,
        "version": "0.1.0",
        "digest": pruned.spec["plugins"]["example_taylor"]["digest"],
    }
    assert "prune.plugins" not in experiment.store.run(pruned.run_id).data.params


# ---- keys follow the code ------------------------------------------------------------------------------


def test_keys_follow_the_plugin_code_and_a_version_keyed_plugin_only_its_version(tmp_path, monkeypatch):
    import mlprune
    from mlprune.names import ENV_PLUGIN_MODULES

    monkeypatch.setenv(ENV_PLUGIN_MODULES, "")  # register() names this module there for workers
    from mlprune.spec.steps import resolve_root

    (tmp_path / "my_nets").mkdir()
    (tmp_path / "my_nets" / "__init__.py").write_text("")
    (tmp_path / "my_nets" / "helpers.py").write_text("WIDTH = 8\n")
    (tmp_path / "my_nets" / "nets.py").write_text(
        "import torch\nfrom .helpers import WIDTH\n\n\ndef mlp(num_classes, shape):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(shape[0] * shape[1] * shape[2], WIDTH),\n"
        "                               torch.nn.ReLU(), torch.nn.Linear(WIDTH, num_classes))\n"
    )
    (tmp_path / "my_nets" / "other.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    forget("my_nets")
    try:
        from my_nets import nets

        mlprune.register(mlprune.Model("my_mlp", impl=nets.mlp), version="1.0")
        mlprune.register(mlprune.plugin(mlprune.Model("my_mlp_v", impl=nets.mlp), version="2.0", keyed_by="version"))
        assert mlprune.Model is type(mlprune.models.catalog.MODELS["my_mlp"])
        assert mlprune.models.catalog.MODELS["my_mlp"].impl == "my_nets.nets:mlp"
        keys = {name: resolve_root({"model": name})["plugins"][name] for name in ("my_mlp", "my_mlp_v")}
        assert keys["my_mlp_v"] == {"version": "2.0"} and keys["my_mlp"]["version"] == "1.0"

        def edit(path: str, text: str):
            (tmp_path / "my_nets" / path).write_text(text)
            return {name: resolve_root({"model": name})["plugins"][name] for name in ("my_mlp", "my_mlp_v")}

        assert edit("other.py", "X = 2  # a module it does not import\n") == keys
        changed = edit("helpers.py", "WIDTH = 16  # a helper it imports\n")
        assert changed["my_mlp"]["digest"] != keys["my_mlp"]["digest"] and changed["my_mlp_v"] == keys["my_mlp_v"]
        # a name taken: one line naming both
        with pytest.raises(
            mlprune.SpecError,
            match=r"model 'lenet' registered in .* shadows the built-in model "
            r"'lenet' \(mlprune.models.nets:LeNet\)",
        ):
            mlprune.register(mlprune.Model("lenet", impl=nets.mlp))
    finally:
        forget("my_nets")


def test_a_plugin_reinit_strategy_with_an_option_of_its_own(experiment, tmp_path, monkeypatch):
    import mlprune
    from mlprune import Recipe
    from mlprune.names import ENV_PLUGIN_MODULES

    monkeypatch.setenv(ENV_PLUGIN_MODULES, "")
    (tmp_path / "my_reinit.py").write_text(
        "def scaled(current, source, fresh, masks, generator, order, factor=1.0):\n"
        "    return {k: (v * factor if k in masks else v.clone()) for k, v in source.items()}, masks\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    forget("my_reinit")
    try:
        import my_reinit

        mlprune.register(
            mlprune.Strategy(
                "scaled_rewind",
                my_reinit.scaled,
                reads_source=True,
                options=mlprune.Schema(
                    "scaled_rewind option",
                    (
                        mlprune.Option(
                            "factor", 1.0, mlprune.spec.options.number(positive=True), "scale of the weights"
                        ),
                    ),
                ),
            ),
            version="1",
        )
        root = experiment.init(model="lenet_300_100", seed=2)
        pruned = root.apply(Recipe.prune(method="l1_unstructured", amount=0.5))
        rewound = pruned.apply(Recipe.reinit(strategy="scaled_rewind", to="root", factor=0.5))
        for name, mask in pruned.masks.items():
            assert torch.equal(rewound.weights[name], root.weights[name] * 0.5 * mask)
        assert rewound.spec["steps"][0]["reinit"]["plugins"] == {
            "scaled_rewind": {"version": "1", "digest": rewound.spec["plugins"]["scaled_rewind"]["digest"]}
        }
        assert "mlprune.plugin.scaled_rewind" in experiment.store.run(rewound.run_id).data.tags
        with pytest.raises(mlprune.SpecError, match="factor"):
            pruned.apply(Recipe.reinit(strategy="scaled_rewind", to="root", factor=-1))
    finally:
        forget("my_reinit")


def test_validate_counts_the_stored_states_other_code_left_behind():
    from mlprune.plugins import stale_plugin_states

    def tags(key, version, digest):
        return {
            "mlprune.key": key,
            "mlprune.plugin.net": json.dumps({"distribution": "d", "version": version, "digest": digest}),
        }

    old, new = "a" * 16, "b" * 16
    stored = [
        tags("k1", "1", old),
        tags("k2", "1", old),
        tags("k3", "1", new),
        tags("k4", "0", old),
        {"mlprune.key": "k5"},
    ]
    now = {"net": {"version": "1", "digest": new}}
    tail = "; this plan reaches none of them (net is now 1 digest bbbbbbbb…)"
    assert stale_plugin_states(now, stored, reached_keys={"k3", "k2"}) == [
        "1 state was computed with net 0 digest aaaaaaaa…" + tail,
        "1 state was computed with net 1 digest aaaaaaaa…" + tail,
    ]
    # keyed by version: another digest of the same version is the same code as far as keys go
    assert len(stale_plugin_states({"net": {"version": "1"}}, stored, reached_keys=set())) == 1


# ---- what cannot work: one line, exit 2, in seconds, nothing FINISHED -----------------------------------


def refused(args, tracking) -> str:
    from mlprune.cli import main

    db = Path(tracking.removeprefix("sqlite:///"))
    before = finished(db)
    started = time.monotonic()
    result = CliRunner().invoke(main, args)
    took = time.monotonic() - started
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output[-2000:]
    assert took < ERROR_S and finished(db) == before
    return lines[0]


def recipe(path: Path, **root) -> str:
    path.write_text(
        f"name: r\nroot: {json.dumps({'dataset': 'example_blobs', **root})}\n"
        f"train: {{steps: 2it}}\nrounds: 1\nprune: {{method: example_taylor, amount: 0.5}}\n"
        f"reinit: {{strategy: rewind, to: root}}\n"
    )
    return str(path)


def test_missing_shadowing_and_unimportable_plugins_are_one_line(example, extra_dist, tracking, tmp_path):
    line = refused(["run", recipe(tmp_path / "missing.yaml", model="no_such_net")], tracking)
    assert "unknown model 'no_such_net'" in line and "example_mlp" in line and "lenet" in line
    extra_dist("shadow-nets", {"mlprune.models": {"lenet": "shadow_nets:MODEL"}})
    line = refused(["validate", recipe(tmp_path / "shadow.yaml", model="example_mlp")], tracking)
    assert "model plugin 'lenet' (shadow-nets 1.0: shadow_nets:MODEL) shadows the built-in model 'lenet'" in line


def test_an_unimportable_plugin_is_one_line(example, extra_dist, tracking, tmp_path):
    extra_dist("broken-nets", {"mlprune.models": {"broken_net": "broken_nets_nowhere.nets:MODEL"}})
    line = refused(["run", recipe(tmp_path / "broken.yaml", model="broken_net")], tracking)
    assert (
        "model plugin 'broken_net' (broken-nets 1.0: broken_nets_nowhere.nets:MODEL) cannot be imported: "
        "ModuleNotFoundError" in line
    )


def test_a_plugin_defined_in_main_is_refused_and_one_registered_there_is_refused_for_workers(example):
    import mlprune
    from mlprune.plugins import check_portable, register

    def builder(num_classes, shape):
        return None

    builder.__module__, builder.__qualname__ = "__main__", "builder"
    with pytest.raises(mlprune.SpecError) as error:
        mlprune.register(mlprune.Model("mynet", impl=builder))
    assert str(error.value) == "model 'mynet' is defined in __main__: put it in a module importable on the workers"
    from mlprune_example_plugin.nets import ExampleMLP

    try:
        register(mlprune.Model("main_mlp", impl=ExampleMLP), caller="__main__")
        check_portable({"example_mlp": {}}, "processes")  # installed plugins: the workers find them
        with pytest.raises(
            mlprune.SpecError,
            match="model 'main_mlp' is registered in __main__: workers of --scheduler processes cannot see it",
        ):
            check_portable({"main_mlp": {}}, "processes")
    finally:
        forget()


# ---- pretrained roots ------------------------------------------------------------------------------


def test_a_pretrained_root_starts_from_the_file_keyed_by_its_content(experiment, tmp_path, tracking):
    from safetensors.torch import save_file

    from mlprune.models import build_model

    trained = build_model("lenet_300_100", num_classes=10, input_shape=(1, 8, 8), seed=7).state_dict()
    save_file({k: v.contiguous() for k, v in trained.items()}, tmp_path / "net.safetensors")
    torch.save(trained, tmp_path / "net.pth")
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "net.safetensors", tmp_path / "copy" / "net.safetensors")
    roots = {
        name: experiment.init(model="lenet_300_100", weights=str(tmp_path / name))
        for name in ("net.safetensors", "net.pth", "copy/net.safetensors")
    }
    plain = experiment.init(model="lenet_300_100")
    for root in roots.values():
        assert all(torch.equal(root.weights[k], trained[k]) for k in trained)
    sha = roots["net.safetensors"].spec["root"]["weights"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", sha) and plain.key not in {r.key for r in roots.values()}
    assert roots["copy/net.safetensors"].key == roots["net.safetensors"].key  # the content, not the path
    assert roots["net.pth"].key != roots["net.safetensors"].key
    assert experiment.store.run(roots["net.pth"].run_id).data.params["init.weights"].startswith("sha256:")

    bad = dict(trained)
    bad["classifier.2.weight"] = torch.zeros(100, 299)
    save_file({k: v.contiguous() for k, v in bad.items()}, tmp_path / "bad.safetensors")
    (tmp_path / "pre.yaml").write_text(
        f"name: pre\nroot: {{model: lenet_300_100, weights: {tmp_path}/bad.safetensors}}\ntrain: {{steps: 2it}}\n"
    )
    line = refused(["run", str(tmp_path / "pre.yaml")], tracking)
    assert line.endswith("tensor 'classifier.2.weight' has shape (100, 299), the model's is (100, 300)")


# ---- the README's commands, in a fresh venv -------------------------------------------------------


def readme_commands() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Your own model and criterion") :]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv on top of the test's Python (its packages seen through a .pth file), with `pip` and
    `mlprune` commands of its own, and a copy of examples/ to install from and edit."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "env")], check=True)
    purelib = subprocess.run(
        [str(root / "env" / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    import sysconfig

    Path(purelib, "_base_packages.pth").write_text(f"{REPO}\n{sysconfig.get_paths()['purelib']}\n")
    for command, module in (("pip", "pip"), ("mlprune", "mlprune")):
        script = root / "env" / "bin" / command
        script.write_text(f'#!/bin/sh\nexec "{root}/env/bin/python" -m {module} "$@"\n')
        script.chmod(0o755)
    work = root / "work"
    shutil.copytree(EXAMPLE, work / "examples" / "plugin", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "PYTHON", "PIP_", "VIRTUAL_ENV", "MLPRUNE_PLUGIN"))
    }
    # offline and quick: the dependencies are there already, setuptools builds without an isolated env
    env.update(
        PATH=f"{root}/env/bin:/usr/bin:/bin",
        MLFLOW_DISABLE_TELEMETRY="true",
        MLPRUNE_FIGURES="0",
        PIP_NO_DEPS="1",
        PIP_NO_BUILD_ISOLATION="0",
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    return work, env


def shell(command: str, work: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-3000:])
    return result


@pytest.mark.slow
def test_the_readme_commands_install_run_and_sweep_the_plugin_and_keys_follow_its_code(venv):
    work, env = venv
    commands = readme_commands()
    assert commands.startswith("pip install -e examples/plugin\n") and "--scheduler processes" in commands
    result = shell(commands, work, env)
    summaries = [line for line in result.stdout.splitlines() if line.endswith(" reused")]
    # run: the plugin's study; sweep: the same again (reused) beside l1_unstructured from the same trained root
    assert summaries == ["6 states: 6 computed, 0 reused", "10 states: 4 computed, 6 reused"], result.stdout
    db = work / "mlflow.db"
    [pruned] = [tags for name, tags in plugin_tags(db) if name.startswith("r1 prune taylor")]
    assert set(pruned) == {"example_mlp", "example_blobs", "example_taylor"}
    assert {t["distribution"] for t in pruned.values()} == {DIST}
    assert {t["version"] for t in pruned.values()} == {"0.1.0"}
    [root] = [tags for name, tags in plugin_tags(db) if name.startswith("init")]
    assert set(root) == {"example_mlp", "example_blobs"}  # the root does not depend on the criterion
    old = pruned["example_taylor"]["digest"]

    criteria = work / "examples" / "plugin" / "mlprune_example_plugin" / "criteria.py"
    criteria.write_text(criteria.read_text().replace("(w * g).abs()", "(w * g).abs().sqrt()"))
    validated = shell("mlprune validate examples/plugin/lottery.yaml", work, env).stdout
    assert f"4 states were computed with example_taylor 0.1.0 digest {old[:8]}…; this plan reaches none" in validated
    again = shell("mlprune run examples/plugin/lottery.yaml -P rounds=1", work, env).stdout
    # only the states that depend on the criterion: the root and its training are reused
    assert again.strip().splitlines()[-1] == "4 states: 2 computed, 2 reused"
    digests = [tags["example_taylor"]["digest"] for name, tags in plugin_tags(db) if name.startswith("r1 prune taylor")]
    assert len(digests) == 2 and old in digests and len(set(digests)) == 2
