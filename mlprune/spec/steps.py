"""One declaration per step kind: its options, how they resolve, what other states it reads.

A recipe step is a one-key mapping ``{kind: options}`` (``{"train": {...}}``).
`resolve_step` turns it into a `ResolvedStep`: the canonical options that keys
hash (defaults filled, sources replaced by ``input:<role>``) and the *sources*
it reads beyond its parent (a rewind's weights, a transplant's mask), by role.
The planner turns sources into states and their keys (`plan.PlanBuilder`).

`STEP_KINDS` is the registry: validation and errors, the options' defaults, the
MLproject parameters, the CLI's ``-o`` options and docs/recipes.md all come from
these entries. Adding a step kind is one `StepKind` entry (and its runner).
Pure Python: nothing here imports torch or mlflow.

Why one file: it is the one declaration of every step kind; the schemas, their resolution and the
registry lines are read together when a step kind changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import SpecError, choice_error, shown
from ..plugins import PLUGINS_KEY, code_identities
from ..registry import Registry, load_impl
from ..reinit.catalog import STRATEGIES, reinit_schema, resolve_reinit_step
from .limits import MAX_BATCH_SIZE, MAX_EXAMPLES, MAX_IMAGE_SIZE
from .options import (
    REQUIRED,
    Option,
    Schema,
    any_value,
    boolean,
    choice,
    integer,
    number,
    optional,
    seed_value,
    time_value,
)
from .times import parse_time

# ---- sources ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Another state a step reads: ``ref`` is "root", "parent", "state:<plan node or run id>",
    a run id, or a state object (Python API); ``at`` a time of the lineage's first training
    (rewinding to a point of training: the state after ``at`` of it)."""

    ref: object
    at: str | None = None


@dataclass(frozen=True)
class ResolvedStep:
    kind: str
    options: dict  # key form: exactly what the key hashes
    sources: dict = field(default_factory=dict)  # role -> Source

    def as_dict(self) -> dict:
        """The step as keys hash it and states record it (``{kind: options}``, or the kind's `recorded_as`)."""
        return STEP_KINDS[self.kind].record(self.options)


@dataclass(frozen=True)
class StepKind:
    """One step kind, and everything code would otherwise switch on by its name.

    declared / schema: its options (validation, docs, CLI, MLproject); resolve: raw options -> ResolvedStep
    (canonical key form, sources); runner: ``"module:function"`` that computes it; produces:
    "network" (weights and masks) or "analysis" (metrics and files of its parent and inputs).
    """

    name: str
    declared: Schema | Callable[[], Schema]  # its options, or how to build them from a registry it reads
    resolve: Callable[[dict], ResolvedStep]
    runner: str = ""
    produces: str = "network"
    help: str = ""
    root: bool = False  # makes a root (init): no parent, never a step of a recipe
    entry_point: bool = False  # an MLproject step entry point of its own
    describe: Callable[[dict, dict], str] | None = None  # (options, sources) -> a few words for run names
    retrain_label: bool = False  # followed by a training, a run name reads '<its words>+train'
    check: str = ""  # "module:function" (options, parent: validate.Parent): checks against
    #   the parent's layers and data, before any run is created
    trains: bool = False  # its runner trains: sibling trainings batch on it (`executor.batching`)
    masks_only: bool = False  # its runner changes the masks only: the weights are the parent's,
    #   masked, so a state of such steps may share its parent's weights file
    new_masks: bool = False  # computes masks over the layers from its options (`pruning.layer_plan`)
    mask_source: str | None = None  # the input role whose mask it takes (and that state's structure)
    recorded_as: tuple | None = None  # (kind, fixed options): how its steps are keyed and recorded, when a
    #   spelling of another kind came first (keys and params stay)

    @property
    def schema(self) -> Schema:
        """Its options (prune's: those of the methods registered now, plugins' too)."""
        return self.declared() if callable(self.declared) else self.declared

    def load(self):
        return load_impl(self.runner)

    def load_check(self):
        return load_impl(self.check) if self.check else None

    def record(self, options: dict) -> dict:
        """One step of this kind as keys hash it and states record it."""
        if self.recorded_as is None:
            return {self.name: options}
        kind, fixed = self.recorded_as
        return {kind: {**fixed, **options}}


def _is_state_object(value) -> bool:
    return hasattr(value, "run_id") and hasattr(value, "key")


# ---- init (the root) ------------------------------------------------------------------------


def _model_check(value, name):
    from ..models.catalog import model_entry

    model_entry(value, check_torchvision=False)
    return value


def _model_options_check(value, name):
    if not isinstance(value, dict):
        raise SpecError(f"{name} must be a mapping of the model's options, got {value!r}")
    return dict(sorted(value.items()))


_model_options_check.doc = "mapping"


def _dataset_check(value, name):
    from ..data.catalog import DATASETS

    DATASETS[value]
    return value


def _init_check(value, name):
    from ..models.catalog import INIT_NAMES

    if value not in INIT_NAMES:
        raise choice_error("init", value, INIT_NAMES)
    return value


def _bn_init_check(value, name):
    from ..models.catalog import BN_INIT_NAMES

    if value not in BN_INIT_NAMES:
        raise choice_error("bn_init", value, BN_INIT_NAMES)
    return value


_bn_init_check.doc = "default (weight 1, bias 0) | uniform (weight ~ U[0, 1), OpenLTH)"


def _val_size(value, name):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value < 0
        or (isinstance(value, float) and value >= 1)
        or value > MAX_EXAMPLES
    ):
        raise SpecError(
            f"{name} must be an int in 0..{MAX_EXAMPLES} (a count) or a float in [0, 1) (a fraction), "
            f"got {shown(value)}"
        )
    return value


_val_size.doc = f"int in 0..{MAX_EXAMPLES} (a count) or float in [0, 1) (a fraction)"


_FILE_HASHES: dict[str, tuple[tuple, str]] = {}


def file_sha256(path) -> str:
    """SHA-256 of a file (cached while its size and modification time stay)."""
    import hashlib
    import os

    path = os.path.abspath(os.fspath(path))
    stat = os.stat(path)
    cached = _FILE_HASHES.get(path)
    if cached is None or cached[0] != (stat.st_mtime_ns, stat.st_size):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        cached = _FILE_HASHES[path] = ((stat.st_mtime_ns, stat.st_size), digest.hexdigest())
    return cached[1]


_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")


def _weights_check(value, name):
    import os

    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise SpecError(f"root {name} must be a path to a .safetensors or .pth file, got {shown(value)}")
    if not str(value).endswith(_WEIGHT_SUFFIXES):
        raise SpecError(f"root {name} {str(value)!r} is not a .safetensors, .pth or .pt file")
    if not os.path.isfile(value):
        raise SpecError(f"root {name} {str(value)!r}: no such file")
    return os.path.abspath(os.fspath(value))


_weights_check.doc = "null or a path (.safetensors, .pth, .pt)"


INIT_SCHEMA = Schema(
    "root option",
    (
        Option("model", "lenet", _model_check, "architecture (models.MODELS, or tv:<torchvision name>)"),
        Option("dataset", "digits", _dataset_check, "dataset (data.DATASETS)"),
        Option("init", "default", _init_check, "weight initialization"),
        Option("seed", 0, seed_value, "seeds the initialization and, by default, every training's data order"),
        Option(
            "bn_init",
            "default",
            _bn_init_check,
            "BatchNorm init: default (weight 1, bias 0) or uniform (weight ~ U[0, 1), bias 0: OpenLTH)",
            key="unless_default",
        ),
        Option(
            "model_options",
            {},
            _model_options_check,
            "the model's own options (e.g. resnet20: width, shortcut)",
            key="unless_default",
        ),
        # data options: in the key only when they differ from their default (under "data")
        Option(
            "val_size",
            0,
            _val_size,
            "validation split held out of the training data (count or fraction)",
            key="unless_default",
        ),
        Option(
            "augment",
            None,
            any_value,
            "augmentation: null (dataset default), true, false, crop, flip, crop+flip",
            key="unless_default",
        ),
        Option(
            "image_size",
            None,
            optional(integer(1, MAX_IMAGE_SIZE)),
            "resize images to this side (px)",
            key="unless_default",
        ),
        Option("channels", None, optional(choice(1, 3)), "convert images to 1 or 3 channels", key="unless_default"),
        Option(
            "train_size",
            None,
            optional(integer(1, MAX_EXAMPLES)),
            "use this many training examples (a seeded subset)",
            key="unless_default",
        ),
        Option(
            "test_size",
            None,
            optional(integer(1, MAX_EXAMPLES)),
            "use the first this many test examples",
            key="unless_default",
        ),
        Option("data_dir", None, any_value, "where the dataset's files are (not part of the key)", key="never"),
        Option(
            "weights",
            None,
            _weights_check,
            "a pretrained network to start from: a .safetensors file or a "
            "PyTorch .pth / .pt state dict (read with weights_only); its SHA-256 is part of the key, not its path",
            key="unless_default",
        ),
    ),
)
_DATA_OPTIONS = ("val_size", "augment", "image_size", "channels", "train_size", "test_size")


def resolve_root(spec: dict) -> dict:
    """Validate a root (init) spec; its canonical form ``{model, dataset, init, seed, data: {...}}``.

    Data options left at their default are not part of it: a new no-op option cannot change old keys.
    """
    from ..data.catalog import DATASETS
    from ..models.catalog import MODELS, model_entry

    resolved = INIT_SCHEMA.resolve({k: v for k, v in spec.items() if k != PLUGINS_KEY})
    out = {k: resolved[k] for k in ("model", "dataset", "init", "seed")}
    if "bn_init" in resolved:  # at its default, the key stays as it was
        out["bn_init"] = resolved["bn_init"]
    model_options = model_entry(resolved["model"], check_torchvision=False).check_options(resolved.get("model_options"))
    if model_options:  # at their defaults, model options leave the key as it was
        out["model_options"] = model_options
    out["data"] = {k: resolved[k] for k in _DATA_OPTIONS if k in resolved}
    if resolved.get("weights") is not None:  # a pretrained root: the file's content, never its path
        out["weights"] = "sha256:" + file_sha256(resolved["weights"])
    plugins = code_identities([(MODELS, resolved["model"]), (DATASETS, resolved["dataset"])])
    if plugins:  # only for a plugin model or dataset: built-in keys stay as they were
        out[PLUGINS_KEY] = plugins
    return out


def _resolve_init(raw: dict) -> ResolvedStep:
    return ResolvedStep("init", resolve_root(raw))


# ---- train ------------------------------------------------------------------------------------


def _optimizer_check(value, name):
    from ..training import OPTIMIZERS

    OPTIMIZERS[value]
    return value


def _lr_schedule_check(value, name):
    """ "constant" | "<kind>" | {kind: ..., <options>}: canonical "constant" or a dict with times as text."""
    from ..training import SCHEDULES

    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict) or "kind" not in value:
        raise SpecError(f"{name} must be a kind ({', '.join(SCHEDULES)}) or a mapping with 'kind', got {value!r}")
    entry = SCHEDULES[value["kind"]]
    unknown = sorted(set(value) - {"kind", *entry.options})
    if unknown:
        raise SpecError(
            f"unknown {name} option {unknown[0]!r} for kind {entry.name!r}; "
            f"allowed: {', '.join(entry.options) or 'none'}"
        )
    if not entry.options:
        return entry.name  # a kind without options is written as its name (the default: "constant")
    out = {"kind": entry.name}
    for option, default in entry.options.items():
        given = value.get(option, default)
        if given is None:
            raise SpecError(f"{name} kind {entry.name!r} needs {option!r}")
        if option == "milestones":
            if isinstance(given, str):  # OpenLTH's notation, also what a -P parameter can carry: "80ep,120ep"
                given = [part.strip() for part in given.split(",") if part.strip()]
            if not isinstance(given, (list, tuple)) or not given:
                raise SpecError(f"{name} milestones must be a non-empty list of times (or '80ep,120ep'), got {given!r}")
            given = [str(parse_time(m, "milestone")) for m in given]
        elif option == "gamma":
            given = number(positive=True)(given, "gamma")
        out[option] = given
    return out


_lr_schedule_check.doc = "constant | multistep (milestones, gamma) | cosine | linear"


_SPARSITY_KEYS = ("kind", "final", "start", "end", "every", "initial", "scope")


def _sparsity_schedule_check(value, name):
    """Gradual magnitude pruning inside the training: canonical {kind, initial, final, start, end, every,
    scope} (times as text), or None (no gradual pruning, the default)."""
    from ..training import SPARSITY_SCHEDULES

    if value is None:
        return None
    if not isinstance(value, dict):
        raise SpecError(f"{name} must be a mapping {{kind, final, start, end, every, initial?, scope?}}, got {value!r}")
    unknown = sorted(set(value) - set(_SPARSITY_KEYS))
    if unknown:
        raise SpecError(f"unknown {name} option {unknown[0]!r}; allowed: {', '.join(_SPARSITY_KEYS)}")
    kind = value.get("kind", "agp")
    SPARSITY_SCHEDULES[kind]
    for required in ("final", "end"):
        if required not in value:
            raise SpecError(f"{name} needs {required!r}")
    final = number(0.0, below=1.0)(value["final"], f"{name} final")
    initial = number(0.0, below=1.0)(value.get("initial", 0.0), f"{name} initial")
    if not 0.0 < final < 1.0 or initial > final:
        raise SpecError(f"{name} final must be a fraction in (0, 1) and at least initial ({initial}), got {final}")
    start = parse_time(value.get("start", "0it"), f"{name} start")
    end = parse_time(value["end"], f"{name} end")
    every = parse_time(value.get("every", "1ep"), f"{name} every")
    if every.is_zero:
        raise SpecError(f"{name} every must be more than 0, got {every}")
    if start.unit == end.unit and start.amount >= end.amount:
        raise SpecError(f"{name} start ({start}) must be before end ({end})")
    scope = choice("layer", "global")(value.get("scope", "layer"), f"{name} scope")
    return {
        "kind": kind,
        "initial": initial,
        "final": final,
        "start": str(start),
        "end": str(end),
        "every": str(every),
        "scope": scope,
    }


_sparsity_schedule_check.doc = "null | {kind: agp or linear, final, start, end, every, initial, scope}"


_SPARSE_TRAINING_KEYS = ("kind", "update_every", "drop_fraction", "end")


def _sparse_training_check(value, name):
    """Dynamic sparse training: canonical {kind, update_every, drop_fraction, end} (times as text, end null:
    3/4 of the training), or None (masks fixed, the default)."""
    from ..training import SPARSE_TRAININGS

    if value is None:
        return None
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict):
        raise SpecError(
            f"{name} must be a kind ({', '.join(SPARSE_TRAININGS)}) or a mapping "
            f"{{kind, update_every, drop_fraction, end}}, got {shown(value)}"
        )
    unknown = sorted(set(value) - set(_SPARSE_TRAINING_KEYS))
    if unknown:
        raise SpecError(f"unknown {name} option {unknown[0]!r}; allowed: {', '.join(_SPARSE_TRAINING_KEYS)}")
    if "kind" not in value:
        raise SpecError(f"{name} needs 'kind'; allowed: {', '.join(SPARSE_TRAININGS)}")
    kind = SPARSE_TRAININGS[value["kind"]].name
    every = parse_time(value.get("update_every", "100it"), f"{name} update_every")
    if every.is_zero:
        raise SpecError(f"{name} update_every must be more than 0, got {every}")
    fraction = number(positive=True, below=1.0)(value.get("drop_fraction", 0.3), f"{name} drop_fraction")
    end = value.get("end")
    return {
        "kind": kind,
        "update_every": str(every),
        "drop_fraction": fraction,
        "end": None if end is None else str(parse_time(end, f"{name} end")),
    }


_sparse_training_check.doc = "null | set | rigl | {kind: set or rigl, update_every: 100it, drop_fraction: 0.3, end}"


def _checkpoints_check(value, name):
    if not isinstance(value, (list, tuple)):
        raise SpecError(f"train {name} must be a list of times, got {value!r}")
    return sorted({parse_time(v, "checkpoint") for v in value})


TRAIN_SCHEMA = Schema(
    "train option",
    (
        Option("steps", 1, time_value, "training length: epochs (int), '<N>ep' or '<N>it'", aliases=("epochs",)),
        Option("lr", 0.01, number(positive=True), "base learning rate"),
        Option("optimizer", "sgd", _optimizer_check, "sgd | adam | adamw"),
        Option("momentum", 0.0, number(0.0), "SGD momentum (sgd only)"),
        Option("weight_decay", 0.0, number(0.0), "weight decay (L2 for sgd/adam, decoupled for adamw)"),
        Option("batch_size", 32, integer(1, MAX_BATCH_SIZE), "examples per optimizer step"),
        # named "seed" in keys (the first version's name): null = the root's seed
        Option(
            "data_order_seed",
            None,
            optional(seed_value),
            "seeds the data order and augmentation "
            "(null: the root's seed); two trainings that differ only in it differ only in SGD noise",
            aliases=("seed",),
            key_name="seed",
        ),
        Option("nesterov", False, boolean, "Nesterov momentum (sgd with momentum > 0)", key="unless_default"),
        Option("lr_schedule", "constant", _lr_schedule_check, "learning-rate schedule", key="unless_default"),
        Option("warmup", "0it", time_value, "linear warmup of the LR from 0 over this time", key="unless_default"),
        Option(
            "label_smoothing",
            0.0,
            number(0.0, below=1.0),
            "label smoothing of the cross-entropy loss",
            key="unless_default",
        ),
        Option(
            "on_divergence",
            "fail",
            choice("fail", "record"),
            "a non-finite loss or weight: fail the state "
            "(one line, nothing stored), or record it: training stops there, the state is stored with metric "
            "diverged = 1 and its non-finite weights, and nothing can be pruned from it",
            key="unless_default",
        ),
        Option(
            "precision",
            "fp32",
            choice("fp32", "bf16", "fp16"),
            "fp32, or autocast to bf16 / fp16 (fp16 with a gradient scaler)",
            key="unless_default",
        ),
        Option(
            "schedule_from",
            "0it",
            time_value,
            "start at this time of the schedule (LR, warmup, data order) and train to the end (`steps`)",
            key="unless_default",
        ),
        Option(
            "stop_at",
            None,
            optional(time_value),
            "stop at this time of the schedule (a checkpoint of a longer training)",
            key="unless_default",
        ),
        Option(
            "sparsity_schedule",
            None,
            _sparsity_schedule_check,
            "gradual magnitude pruning during the training: "
            "{kind: agp | linear, final, start, end, every, initial: 0, scope: layer | global}; the sparsity "
            "rises from initial to final between start and end, pruning every `every`",
            key="unless_default",
        ),
        Option(
            "sparse_training",
            None,
            _sparse_training_check,
            "dynamic sparse training: the masks change during the "
            "training at constant sparsity per layer, every update_every until end (null: 3/4 of the training) the "
            "smallest-|w| fraction drop_fraction (cosine-annealed) of each layer's weights is replaced: set grows at "
            "random, rigl by the dense gradient's magnitude; grown weights start at 0",
            key="unless_default",
        ),
        Option(
            "bn_l1",
            0.0,
            number(0.0),
            "network slimming: L1 penalty λ on every BatchNorm scale γ (λ·sign(γ) added to its gradient)",
            key="unless_default",
        ),
        Option(
            "checkpoints",
            (),
            _checkpoints_check,
            "also store the state at these times of this training (each is the training stopped there)",
            key="never",
            cli=False,
        ),
    ),
)


def resolve_train(raw: dict) -> ResolvedStep:
    """Canonical train options (see `TRAIN_SCHEMA`), in key form.

    The length is ``epochs: N`` when given in epochs (the first version's form, so old keys
    stay) and ``steps: "<N>it"`` when given in iterations. Options of another optimizer are
    dropped when at their default, refused otherwise. A stop that cuts a training whose
    schedule does not depend on its length is that shorter training (same key), so a
    checkpoint and the shorter training are one state.
    """
    from ..training import OPTIMIZERS, SCHEDULES, schedule_of

    given = TRAIN_SCHEMA.canonical_names(raw)
    resolved = TRAIN_SCHEMA.resolve(given)
    length = parse_time(resolved.pop("steps"), "train steps")
    if length.is_zero:  # a "trained" state that never trained would pass for one
        raise SpecError(
            f"train length (epochs / steps) must be more than 0, got {given.get('steps')!r}: a state "
            f"that is not trained needs no train step"
        )
    optimizer = OPTIMIZERS[resolved["optimizer"]]
    for other in OPTIMIZERS.values():
        for option in other.takes:
            if option in optimizer.takes:
                continue
            if given.get(option):
                raise SpecError(
                    f"train option {option!r} applies to optimizer {other.name} only, not {optimizer.name!r}"
                )
            resolved.pop(option, None)
    if resolved.get("nesterov") and resolved.get("momentum", 0.0) <= 0:
        raise SpecError("train option 'nesterov' needs momentum > 0")
    start = parse_time(resolved.get("schedule_from", "0it"))
    schedule = schedule_of(resolved.get("lr_schedule", TRAIN_SCHEMA["lr_schedule"].default))
    # dynamic sparse training without an end stops its updates at 3/4 of the training: a length of its own
    length_dependent = SCHEDULES[schedule["kind"]].length_dependent or bool(
        resolved.get("sparse_training") and resolved["sparse_training"]["end"] is None
    )
    if "stop_at" in resolved:
        stop = parse_time(resolved["stop_at"])
        if stop.is_zero:
            raise SpecError("train stop_at must be after the start of the training, got 0")
        if stop.unit == length.unit:  # other units compare only when the iterations per epoch are known
            if stop.amount > length.amount:
                raise SpecError(f"train stop_at {stop} is after the end of the training ({length})")
            if stop.amount == length.amount or not length_dependent:
                length = stop  # stopped at its end, or cut where nothing depends on the length: a shorter training
                del resolved["stop_at"]
    end = parse_time(resolved.get("stop_at", str(length)))
    if start.unit == end.unit and start.amount > end.amount:
        raise SpecError(f"train schedule_from {start} is after the end of the training ({end})")
    gradual = resolved.get("sparsity_schedule")
    if gradual and parse_time(gradual["end"]).unit == length.unit and parse_time(gradual["end"]).amount > length.amount:
        raise SpecError(f"train sparsity_schedule end {gradual['end']} is after the end of the training ({length})")
    if resolved.get("bn_l1") and resolved.get("precision") == "fp16":
        raise SpecError(
            "train bn_l1 with precision fp16: the gradient scaler would scale the penalty with the "
            "gradients; allowed: precision fp32 or bf16"
        )
    sparse = resolved.get("sparse_training")
    if sparse and gradual:
        raise SpecError("train sparse_training and sparsity_schedule both change the masks; allowed: one of them")
    if (
        sparse
        and sparse["end"]
        and parse_time(sparse["end"]).unit == length.unit
        and parse_time(sparse["end"]).amount > length.amount
    ):
        raise SpecError(f"train sparse_training end {sparse['end']} is after the end of the training ({length})")
    if length.unit == "ep":
        resolved["epochs"] = length.amount
    else:
        resolved["steps"] = str(length)
    return ResolvedStep("train", resolved)


def train_length(options: dict):
    """The `Time` a resolved train step runs to (its end, or its stop_at)."""
    if options.get("stop_at"):
        return parse_time(options["stop_at"])
    return parse_time(options["epochs"]) if "epochs" in options else parse_time(options["steps"])


def truncated_train(options: dict, at) -> dict:
    """The resolved train step `options` stopped at time `at`: the state after `at` of that training."""
    raw = {k: v for k, v in options.items() if k not in ("epochs", "steps", "stop_at")}
    full = options["steps"] if "steps" in options else options["epochs"]
    return resolve_train({**raw, "steps": full, "stop_at": str(parse_time(at))}).options


# ---- prune and transplant ------------------------------------------------------------------------


def _percent(amount) -> str:
    if isinstance(amount, int):
        return f"n={amount}"
    return f"{100 * amount:.3g}%"


def _describe_prune(options: dict, sources: dict) -> str:
    """'prune l1 20%', 'prune lamp 20%' (a method's default scope is not repeated), 'prune 2:4' (a pattern
    has no amount of its own), 'prune l1 erk 80%'."""
    from ..pruning.catalog import DISTRIBUTIONS, METHODS

    method = METHODS[options["method"]]
    extra = "*" if options.get("layers") or options.get("include") != ["*"] or options.get("exclude") else ""
    scope = " global" if options.get("scope") == "global" and method.default_scope != "global" else ""
    if options.get("distribution"):
        scope = f" {DISTRIBUTIONS[options['distribution']].short or options['distribution']}"
    amount = "" if method.pattern else f" {_percent(options['amount'])}"
    return f"prune {method.describe(options)}{scope}{amount}{extra}"


# A recipe's `prune: {method: from_state, from: <state>}` (the first spelling of a transplant): the
# step kind `transplant`, keyed and recorded as that prune step, so its states keep their keys.
TRANSPLANT_METHOD = "from_state"
TRANSPLANT_SCHEMA = Schema(
    "transplant option",
    (
        Option(
            "from",
            REQUIRED,
            any_value,
            "the state whose mask to take: a run id, state:<node>, root or parent",
            aliases=("state",),
        ),
    ),
)


_PRUNE_STEP: dict = {}


def _prune_step_schema() -> Schema:
    """The prune step's options (`pruning.prune_schema`) and the source of its from_state spelling."""
    from ..pruning.prune_step import prune_schema

    base = prune_schema()
    if _PRUNE_STEP.get("base") is not base:  # built once per set of registered methods
        _PRUNE_STEP.update(base=base, schema=_with_from(base))
    return _PRUNE_STEP["schema"]


def _with_from(base: Schema) -> Schema:
    method = base["method"]
    return base.with_options(
        Option("method", REQUIRED, method.check, f"{method.help}, {TRANSPLANT_METHOD} (a transplant: `from`)"),
        Option(
            "from", None, any_value, f"{TRANSPLANT_METHOD}: the state whose mask to take (a run id or state:<node>)"
        ),
        after="seed",
    )


def resolve_prune(raw: dict) -> ResolvedStep:
    from ..pruning.prune_step import resolve_prune_step

    raw = dict(raw or {})
    if raw.get("method") == TRANSPLANT_METHOD:
        return _transplant(
            {k: v for k, v in raw.items() if k != "method"},
            TRANSPLANT_METHOD,
            "method, from",
            f"prune method {TRANSPLANT_METHOD!r}",
        )
    raw.pop("from", None)
    return ResolvedStep("prune", resolve_prune_step(raw))


def resolve_transplant(raw: dict) -> ResolvedStep:
    """The mask of another state (`from`), intersected with the parent's."""
    return _transplant(dict(raw or {}), "transplant", ", ".join(TRANSPLANT_SCHEMA.names), "transplant")


def _transplant(raw: dict, what: str, allowed: str, subject: str) -> ResolvedStep:
    unknown = sorted(set(raw) - set(TRANSPLANT_SCHEMA.by_name))
    if unknown:
        raise SpecError(f"unknown {what} option {unknown[0]!r}; allowed: {allowed}")
    given = TRANSPLANT_SCHEMA.canonical_names(raw)
    if given.get("from") is None:
        raise SpecError(f"{subject} needs 'from': the state whose mask to take")
    return ResolvedStep("transplant", {"from": "input:mask"}, {"mask": Source(given["from"])})


def _describe_transplant(options: dict, sources: dict) -> str:
    return "prune transplant"


def _describe_reinit(options: dict, sources: dict) -> str:
    source = (sources or {}).get("weights")
    at = f"@{source.at}" if source is not None and source.at else ""
    return f"{options['strategy']}{at}"


def _describe_train(options: dict, sources: dict) -> str:
    start = options.get("schedule_from")
    return f"train {start + '-' if start else ''}{train_length(options)}"


# ---- reinit -----------------------------------------------------------------------------------


def resolve_reinit(raw: dict) -> ResolvedStep:
    raw = dict(raw or {})
    objects = {k: v for k, v in raw.items() if _is_state_object(v)}  # Python API: to=<state>
    options = resolve_reinit_step({k: ("state:object" if k in objects else v) for k, v in raw.items()})
    if not STRATEGIES[options["strategy"]].reads_source:
        return ResolvedStep("reinit", options)
    source = Source(objects.get("to", options["to"]), options["at"])
    if source.at is not None and source.ref != "root":
        raise SpecError(
            f"a rewind point 'at' counts time of the first training from the root; "
            f"'to' must be root, not {source.ref!r}"
        )
    keyed = {k: v for k, v in options.items() if k != "at"}
    keyed["to"] = "input:weights"
    return ResolvedStep("reinit", keyed, {"weights": source})


# ---- analyses: states that measure their parent (a) against other states ---------------------------

COMPARE_SCHEMA = Schema(
    "compare option",
    (
        Option(
            "b",
            REQUIRED,
            any_value,
            "the state to compare with: a run id, state:<node>, root or parent",
            aliases=("with",),
        ),
    ),
)


def resolve_compare(raw: dict) -> ResolvedStep:
    given = COMPARE_SCHEMA.canonical_names(dict(raw or {}))
    if "b" not in given:
        raise SpecError("compare needs 'b': the state to compare the parent with")
    return ResolvedStep("compare", {"a": "input:a", "b": "input:b"}, {"a": Source("parent"), "b": Source(given["b"])})


CKA_SCHEMA = Schema(
    "cka option",
    (
        Option(
            "b",
            REQUIRED,
            any_value,
            "the state to compare with: a run id, state:<node>, root or parent",
            aliases=("with",),
        ),
        Option(
            "probe_size",
            1024,
            integer(4, MAX_EXAMPLES),
            "test examples in the probe set (a seeded draw; at most the test set)",
        ),
        Option(
            "batch_size",
            256,
            integer(4, MAX_BATCH_SIZE),
            "examples per minibatch of the CKA estimator (it changes the estimate slightly, so it is part of the key)",
        ),
        Option("seed", 0, seed_value, "seeds the draw of the probe set"),
    ),
)


def resolve_cka(raw: dict) -> ResolvedStep:
    given = CKA_SCHEMA.canonical_names(dict(raw or {}))
    if "b" not in given:
        raise SpecError("cka needs 'b': the state whose representations to compare the parent's with")
    options = CKA_SCHEMA.resolve({**given, "b": "input:b"})
    return ResolvedStep("cka", {"a": "input:a", **options}, {"a": Source("parent"), "b": Source(given["b"])})


INTERPOLATE_SCHEMA = Schema(
    "interpolate option",
    (
        Option(
            "b",
            REQUIRED,
            any_value,
            "the other end of the path (a = the parent): a run id, state:<node>, root or parent",
            aliases=("with",),
        ),
        Option(
            "alphas", 30, integer(2, 1000), "points on the path (1 - α)·a + α·b, evenly spaced, both endpoints included"
        ),
        Option(
            "bn_reset",
            None,
            optional(boolean),
            "recompute BatchNorm running statistics on training batches at "
            "every α (null: when the network has BatchNorm); interpolated statistics are meaningless",
        ),
        Option("train_set", False, boolean, "also measure error and loss on the training set (unaugmented)"),
    ),
)


def resolve_interpolate(raw: dict) -> ResolvedStep:
    """Linear interpolation between the parent (a) and b: options in key form, sources a and b."""
    given = INTERPOLATE_SCHEMA.canonical_names(dict(raw or {}))
    if "b" not in given:
        raise SpecError(
            f"interpolate option 'b' is required (given: {', '.join(sorted(given)) or 'no option'}); "
            f"allowed: the state at the other end of the path (a is the parent): a run id, state:<node>, "
            f"root or parent"
        )
    options = INTERPOLATE_SCHEMA.resolve({k: v for k, v in given.items() if k != "b"} | {"b": "input:b"})
    return ResolvedStep("interpolate", {"a": "input:a", **options}, {"a": Source("parent"), "b": Source(given["b"])})


# ---- the registry -----------------------------------------------------------------------------

STEP_KINDS: Registry[StepKind] = Registry("step")
STEP_KINDS.add(
    StepKind(
        "init",
        INIT_SCHEMA,
        _resolve_init,
        "mlprune.runners.network:run_init",
        root=True,
        entry_point=True,
        help="the root: a freshly initialized network",
    )
)
STEP_KINDS.add(
    StepKind(
        "train",
        TRAIN_SCHEMA,
        resolve_train,
        "mlprune.runners.network:run_train",
        entry_point=True,
        describe=_describe_train,
        check="mlprune.validate:check_train",
        trains=True,
        help="train with a fresh optimizer; masks enforced at every step",
    )
)
STEP_KINDS.add(
    StepKind(
        "prune",
        _prune_step_schema,
        resolve_prune,
        "mlprune.runners.network:run_prune",
        entry_point=True,
        describe=_describe_prune,
        check="mlprune.validate:check_prune",
        masks_only=True,
        new_masks=True,
        help="compute new masks from the current effective weights",
    )
)
STEP_KINDS.add(
    StepKind(
        "transplant",
        TRANSPLANT_SCHEMA,
        resolve_transplant,
        "mlprune.runners.network:run_transplant",
        describe=_describe_transplant,
        masks_only=True,
        mask_source="mask",
        recorded_as=("prune", {"method": TRANSPLANT_METHOD}),
        help="take the mask of another state (`from`; never revives a weight the parent pruned); "
        "also spelled prune: {method: from_state, from: ...}",
    )
)
STEP_KINDS.add(
    StepKind(
        "reinit",
        reinit_schema,
        resolve_reinit,
        "mlprune.runners.network:run_reinit",
        entry_point=True,
        describe=_describe_reinit,
        retrain_label=True,
        help="set the weights before retraining (rewind, random, sign, zhou, shuffle, keep)",
    )
)
STEP_KINDS.add(
    StepKind(
        "compare",
        COMPARE_SCHEMA,
        resolve_compare,
        "mlprune.runners.analyses:run_compare",
        produces="analysis",
        help="an analysis: the kept weights of the parent (a) vs another state (b): Jaccard, cosine",
    )
)
STEP_KINDS.add(
    StepKind(
        "cka",
        CKA_SCHEMA,
        resolve_cka,
        "mlprune.runners.analyses:run_cka",
        produces="analysis",
        help="an analysis: linear CKA between the outputs of each prunable layer of the parent (a) "
        "and another state (b), minibatch estimator on a seeded probe set of test examples",
    )
)
STEP_KINDS.add(
    StepKind(
        "interpolate",
        INTERPOLATE_SCHEMA,
        resolve_interpolate,
        "mlprune.runners.analyses:run_interpolate",
        produces="analysis",
        help="an analysis: error and loss along the linear path from the parent (a) to b, "
        "instability and loss barrier (Frankle et al. 2020); a and b need the same mask",
    )
)


def child_kinds() -> tuple[str, ...]:
    """The step kinds a recipe's list of steps may hold (init makes roots; an analysis is a step alone)."""
    return STEP_KINDS.where(root=False, produces="network")


def kind_of(step: dict) -> tuple[StepKind, dict]:
    """(its step kind, its options) of a resolved or recorded step ``{kind: options}``: a step recorded
    as another kind's spelling (`StepKind.recorded_as`) is read back as its own kind."""
    ((name, options),) = step.items()
    for entry in STEP_KINDS.values():
        if (
            entry.recorded_as is not None
            and entry.recorded_as[0] == name
            and isinstance(options, dict)
            and entry.recorded_as[1].items() <= options.items()
        ):
            return entry, {k: v for k, v in options.items() if k not in entry.recorded_as[1]}
    return STEP_KINDS[name], options


def describe_step(step: dict, sources: dict | None = None) -> str:
    """A few words for one resolved step: 'prune l1-struct 20%', 'rewind@500it', 'train 30ep'."""
    entry, options = kind_of(step)
    return entry.describe(options, sources or {}) if entry.describe is not None else entry.name


def resolve_step(step) -> ResolvedStep:
    """One recipe step ``{kind: options}`` -> its `ResolvedStep`; a one-line SpecError if invalid."""
    if not isinstance(step, dict) or len(step) != 1:
        raise SpecError(f"a step is a mapping with one key out of {', '.join(child_kinds())}; got {step!r}")
    ((kind, options),) = step.items()
    if kind not in STEP_KINDS or STEP_KINDS[kind].root:
        raise choice_error("step", kind, STEP_KINDS.where(root=False))
    if options is not None and not isinstance(options, dict):
        raise SpecError(f"{kind} options must be a mapping, got {options!r}")
    return STEP_KINDS[kind].resolve(dict(options or {}))


def resolve_steps(steps) -> tuple[list[dict], dict[str, Source], list]:
    """(resolved steps in key form, {role: Source}, run-only extras per step) of a recipe's steps.

    Run-only extras: a train step's ``checkpoints`` (times at which its state is also stored).
    """
    if not steps:
        raise SpecError(f"a recipe needs at least one step ({', '.join(sorted(child_kinds()))})")
    resolved, sources, extras = [], {}, []
    kinds = [next(iter(step)) if isinstance(step, dict) and len(step) == 1 else None for step in steps]
    if any(k in STEP_KINDS and STEP_KINDS[k].produces == "analysis" for k in kinds) and len(steps) > 1:
        raise SpecError(
            f"an analysis ({', '.join(k for k in kinds if k)}) is a step of its own, not part of a list of steps"
        )
    rewound_to = None  # a rewind to a point of training: the retrain continues the schedule from there
    for step, kind in zip(steps, kinds):
        options = step.get(kind) if kind is not None else None
        trains = kind in STEP_KINDS and STEP_KINDS[kind].trains and isinstance(options, dict)
        if rewound_to is not None and trains and "schedule_from" not in options:
            step = {kind: {**options, "schedule_from": rewound_to}}
        result = resolve_step(step)
        source = result.sources.get("weights")
        rewound_to = source.at if source is not None and source.at else rewound_to
        for role, source in result.sources.items():
            if role in sources:
                raise SpecError(f"a recipe can take its {role} source from one state only")
            sources[role] = source
        resolved.append(result.as_dict())
        run_only = [o for o in STEP_KINDS[kind].schema if o.key == "never" and not o.cli]
        extras.append({o.name: o.check((options or {}).get(o.name, o.default), o.name) for o in run_only})
    return resolved, sources, extras
