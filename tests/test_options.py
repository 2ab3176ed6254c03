"""One option vocabulary (`spec.options.Option` / `Schema`) and step kinds that carry their behaviour.

Every option is declared once: a pruning method's options, the prune step's (their union), a model's, a
reinit strategy's, the run options. A run option's one declaration gives the command-line flag, the
MLproject parameter, the `Experiment` keyword, the param logged and the docs row: a test adds one and
finds it in all five places. A transplant is a step kind of its own, keyed as the prune step that first
spelled it, so its states keep their keys (pinned here). Pure Python, in-process, a second or two.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mlprune.errors import SpecError
from mlprune.spec.options import Option, Schema, choice, integer, optional, text

REPO = Path(__file__).resolve().parents[1]


# ---- the vocabulary ---------------------------------------------------------------------------------


def test_every_method_model_and_strategy_declares_its_options_as_a_schema():
    from mlprune.models import MODELS
    from mlprune.pruning import METHODS, prune_schema
    from mlprune.reinit import STRATEGIES
    from mlprune.spec.steps import STEP_KINDS

    registries = (METHODS, MODELS, STRATEGIES)
    assert all(isinstance(entry.options, Schema) for registry in registries for entry in registry.values())
    for method in METHODS.builtins().values():  # prune's schema is the union of the methods': their declarations
        for option in method.options:  # (a name may mean two things to two methods: n is ln_structured's norm
            # and nm's N; the step checks each method's options with its own declaration)
            declared = {o.check for m in METHODS.builtins().values() for o in m.options if o.name == option.name}
            assert prune_schema()[option.name].check in declared, (method.name, option.name)
            assert STEP_KINDS["prune"].schema[option.name].check in declared
    assert all(isinstance(kind.schema, Schema) for kind in STEP_KINDS.values())
    # the checks of the vocabulary, with their one-line errors naming the value and what is allowed
    with pytest.raises(SpecError, match=r"^batches must be an integer >= 1 and <= \d+, got 0$"):
        METHODS["snip"].options["batches"].check(0, "batches")
    with pytest.raises(SpecError, match="model 'resnet20' option width"):
        MODELS["resnet20"].check_options({"width": 7})
    assert MODELS["resnet20"].check_options({"width": 16, "shortcut": "B"}) == {"shortcut": "B"}  # defaults left out


def test_free_form_text_with_a_validator_and_family_metadata():
    """What a family of options needs beyond the vocabulary (SLURM's: free-form words checked by a
    validator, the directive each becomes) fits in an `Option` without a subclass."""

    def word(value, name):
        if " " in value:
            raise SpecError(f"{name} must be one word, got {value!r}")
        return value

    schema = Schema(
        "SLURM option",
        (
            Option(
                "partition",
                None,
                optional(text(word, "a word")),
                "the queue",
                key="never",
                meta={"sbatch": "--partition={}"},
            ),
            Option("cpus-per-task", 1, integer(1, 4096), "CPUs", key="never", aliases=("cpus_per_task",)),
        ),
    )
    assert schema.checked({"partition": " gpu ", "cpus_per_task": 4}) == {"partition": "gpu", "cpus-per-task": 4}
    assert schema["partition"].meta["sbatch"].format("gpu") == "--partition=gpu"
    with pytest.raises(SpecError, match="partition must be one word, got 'a b'"):
        schema.checked({"partition": "a b"})
    with pytest.raises(SpecError, match="^unknown SLURM option 'qeue'; allowed: partition, cpus-per-task$"):
        schema.checked({"qeue": "x"})


# ---- run options: declared once, found in five places ---------------------------------------------------


def test_a_run_option_declared_once_is_a_flag_a_parameter_a_keyword_a_param_and_a_docs_row(monkeypatch):
    import mlprune.executor.options as run_options
    from mlprune import cli
    from mlprune.api import Experiment
    from mlprune.mlproject import render

    profile = Option(
        "profile",
        "off",
        choice("off", "torch"),
        "profile each training with the torch profiler",
        key="never",
        metavar="off|torch",
    )
    monkeypatch.setattr(run_options, "RUN_OPTIONS", run_options.RUN_OPTIONS.with_options(profile))

    # 1. the command line: every command that computes states takes the flag, checked before anything runs
    seen = {}

    @click.command()
    @cli.run_options
    def command(**flags):
        seen["options"] = cli._run_options(flags)

    assert CliRunner().invoke(command, ["--profile", "torch"]).exit_code == 0
    assert seen["options"].profile == "torch" and CliRunner().invoke(command, []).exit_code == 0
    assert seen["options"].profile == "off"
    refused = CliRunner().invoke(command, ["--profile", "perf"])
    assert refused.exit_code != 0 and "unknown --profile 'perf'; allowed: off, torch" in str(refused.exception)
    # 2. the MLproject parameters of every recipe and step entry point, passed on as the flag
    mlproject = render(REPO / "recipes")
    assert mlproject.count("--profile={profile}") == mlproject.count("python -m mlprune ") > 30
    assert "profile: *string" in mlproject
    # 3. the Python keyword
    experiment = Experiment(store="a store", profile="torch")
    assert experiment.run_options().profile == "torch"
    with pytest.raises(TypeError, match="'profiel'"):
        Experiment(store="a store", profiel="torch")
    # 4. the param recorded on every state
    assert run_options.run_params(experiment.run_options().resolved(), batch=1)["run.profile"] == "torch"
    # 5. the docs row
    assert "| `profile` | `--profile` | parameter / keyword | `off` | off \\| torch |" in run_options.docs_table()


def test_the_run_options_table_in_the_docs_is_the_generated_one():
    from mlprune.executor.options import docs_table

    assert docs_table() in (REPO / "docs" / "training.md").read_text(), (
        "docs/training.md is stale: python -m mlprune.executor.options prints the table"
    )


def test_run_options_given_as_text_keep_their_errors():
    from mlprune.executor.options import RunOptions

    for flags, error in (
        ({"deterministic": "maybe"}, "--deterministic must be true or false, got 'maybe'"),
        ({"batch": "x"}, "--batch must be an integer >= 1, got 'x'"),
        ({"batch": "0"}, "--batch must be an integer >= 1, got 0"),
        ({"checkpoint_every": "often"}, "checkpoint_every 'often' is not a cadence"),
    ):
        with pytest.raises(SpecError, match=error):
            RunOptions.from_text(flags)
    options = RunOptions.from_text({"deterministic": "", "compile": "true", "checkpoint_every": "500it"})
    assert (options.deterministic, options.compile, options.checkpoint_every, options.batch) == (
        False,
        True,
        "500it",
        1,
    )
    with pytest.raises(SpecError, match="^run option threads must be an integer >= 1, got 0$"):
        RunOptions(threads=0).resolved()


# ---- step kinds --------------------------------------------------------------------------------------------

# Keys planned by mlprune before transplanting became a step kind (the prune spelling was the only one).
TRANSPLANT_KEYS = {
    "root0": "c1877e2c347084bd8f7c55270a0abc3f",
    "train0": "929e847e9eb4a375e3b4c7f95dda49f7",
    "pruned": "91440a45bc3d13862f13c794dd0c4a84",
    "root1": "a42360aaa293a0c24369a37cd4efcee7",
    "moved": "1f33aa915fef1814f6b4c00438b204a5",
    "moved_train": "a363fabca92fc50e7871970e46d54a7d",
}


@pytest.mark.parametrize(
    "spelling",
    [{"method": "from_state", "from": "state:pruned"}, {"method": "from_state", "state": "state:pruned"}, "transplant"],
)
def test_a_transplant_keeps_its_pinned_keys_params_and_names_in_every_spelling(spelling):
    from mlprune.plan import PlanBuilder

    step = {"transplant": {"from": "state:pruned"}} if spelling == "transplant" else {"prune": spelling}
    builder = PlanBuilder("transplant")
    root0 = builder.root("root0", {"model": "lenet", "dataset": "digits", "seed": 0})
    train0 = builder.child("train0", root0, [{"train": {"epochs": 1}}])
    builder.child("pruned", train0, [{"prune": {"method": "l1_unstructured", "amount": 0.2}}])
    root1 = builder.root("root1", {"model": "lenet", "dataset": "digits", "seed": 1})
    moved = builder.child("moved", root1, [step])
    builder.child("moved_train", root1, [step, {"train": {"epochs": 1}}])
    assert builder.build().keys == TRANSPLANT_KEYS
    assert (moved.kind, moved.label, moved.inputs) == ("prune", "prune transplant", {"mask": "pruned"})
    steps = {k: v for k, v in moved.params.items() if "." in k}  # the step's params (not seed, recipe, ...)
    assert steps == {"prune.method": "from_state", "prune.from": "state:pruned"}


def test_step_kinds_say_what_code_used_to_ask_their_names():
    from mlprune.spec.steps import STEP_KINDS, describe_step, kind_of

    assert STEP_KINDS.where(root=True) == ("init",) and STEP_KINDS.where(trains=True) == ("train",)
    assert set(STEP_KINDS.where(masks_only=True)) == {"prune", "transplant"}
    assert STEP_KINDS.where(entry_point=True) == ("init", "train", "prune", "reinit")  # the MLproject's
    recorded = {"prune": {"method": "from_state", "from": "input:mask"}}
    kind, options = kind_of(recorded)
    assert (kind.name, options, kind.mask_source, kind.record(options)) == (
        "transplant",
        {"from": "input:mask"},
        "mask",
        recorded,
    )
    assert kind_of({"prune": {"method": "l1_unstructured", "amount": 0.2}})[0].name == "prune"
    assert describe_step({"train": {"epochs": 3}}) == "train 3ep"
    with pytest.raises(SpecError, match="unknown step 'prnue'; allowed: .*cka.*transplant"):
        from mlprune.spec.steps import resolve_step

        resolve_step({"prnue": {}})
