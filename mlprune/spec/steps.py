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

from dataclasses import dataclass, field
from typing import Callable

from ..errors import SpecError, choice_error, shown
from ..plugins import PLUGINS_KEY, code_identities
from ..registry import Registry, load_impl
from .limits import MAX_BATCH_SIZE, MAX_EXAMPLES, MAX_IMAGE_SIZE
from .options import (REQUIRED, Option, Schema, any_value, boolean, choice, integer, number, optional,
                      seed_value, time_value)
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
    options: dict                                   # key form: exactly what the key hashes
    sources: dict = field(default_factory=dict)     # role -> Source

    def as_dict(self) -> dict:
        return {self.kind: self.options}


@dataclass(frozen=True)
class StepKind:
    """One step kind.

    schema: its options (docs, CLI, MLproject); resolve: raw options -> ResolvedStep
    (validation, canonical key form, sources); runner: ``"module:function"`` that
    computes it (``compute``); produces: "network" (weights and masks) or "analysis".
    """

    name: str
    schema: Schema
    resolve: Callable[[dict], ResolvedStep]
    runner: str = ""
    produces: str = "network"
    help: str = ""

    def load(self):
        return load_impl(self.runner)


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
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
            isinstance(value, float) and value >= 1) or value > MAX_EXAMPLES:
        raise SpecError(f"{name} must be an int in 0..{MAX_EXAMPLES} (a count) or a float in [0, 1) (a fraction), "
                        f"got {shown(value)}")
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


INIT_SCHEMA = Schema("root option", (
    Option("model", "lenet", _model_check, "architecture (models.MODELS, or tv:<torchvision name>)"),
    Option("dataset", "digits", _dataset_check, "dataset (data.DATASETS)"),
    Option("init", "default", _init_check, "weight initialization"),
    Option("seed", 0, seed_value, "seeds the initialization and, by default, every training's data order"),
    Option("bn_init", "default", _bn_init_check, "BatchNorm init: default (weight 1, bias 0) or uniform "
           "(weight ~ U[0, 1), bias 0: OpenLTH)", key="unless_default"),
    Option("model_options", {}, _model_options_check, "the model's own options (e.g. resnet20: width, shortcut)",
           key="unless_default"),
    # data options: in the key only when they differ from their default (under "data")
    Option("val_size", 0, _val_size, "validation split held out of the training data (count or fraction)",
           key="unless_default"),
    Option("augment", None, any_value, "augmentation: null (dataset default), true, false, crop, flip, crop+flip",
           key="unless_default"),
    Option("image_size", None, optional(integer(1, MAX_IMAGE_SIZE)), "resize images to this side (px)",
           key="unless_default"),
    Option("channels", None, optional(choice(1, 3)), "convert images to 1 or 3 channels", key="unless_default"),
    Option("train_size", None, optional(integer(1, MAX_EXAMPLES)), "use this many training examples (a seeded subset)",
           key="unless_default"),
    Option("test_size", None, optional(integer(1, MAX_EXAMPLES)), "use the first this many test examples",
           key="unless_default"),
    Option("data_dir", None, any_value, "where the dataset's files are (not part of the key)", key="never"),
    Option("weights", None, _weights_check, "a pretrained network to start from: a .safetensors file or a "
           "PyTorch .pth / .pt state dict (read with weights_only); its SHA-256 is part of the key, not its path",
           key="unless_default"),
))
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
    model_options = model_entry(resolved["model"], check_torchvision=False).check_options(
        resolved.get("model_options"))
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
    """"constant" | "<kind>" | {kind: ..., <options>}: canonical "constant" or a dict with times as text."""
    from ..training import SCHEDULES

    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict) or "kind" not in value:
        raise SpecError(f"{name} must be a kind ({', '.join(SCHEDULES)}) or a mapping with 'kind', got {value!r}")
    entry = SCHEDULES[value["kind"]]
    unknown = sorted(set(value) - {"kind", *entry.options})
    if unknown:
        raise SpecError(f"unknown {name} option {unknown[0]!r} for kind {entry.name!r}; "
                        f"allowed: {', '.join(entry.options) or 'none'}")
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
                raise SpecError(f"{name} milestones must be a non-empty list of times (or '80ep,120ep'), "
                                f"got {given!r}")
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
    return {"kind": kind, "initial": initial, "final": final, "start": str(start), "end": str(end),
            "every": str(every), "scope": scope}


_sparsity_schedule_check.doc = "null | {kind: agp or linear, final, start, end, every, initial, scope}"


def _checkpoints_check(value, name):
    if not isinstance(value, (list, tuple)):
        raise SpecError(f"train {name} must be a list of times, got {value!r}")
    return sorted({parse_time(v, "checkpoint") for v in value})


TRAIN_SCHEMA = Schema("train option", (
    Option("steps", 1, time_value, "training length: epochs (int), '<N>ep' or '<N>it'", aliases=("epochs",)),
    Option("lr", 0.01, number(positive=True), "base learning rate"),
    Option("optimizer", "sgd", _optimizer_check, "sgd | adam | adamw"),
    Option("momentum", 0.0, number(0.0), "SGD momentum (sgd only)"),
    Option("weight_decay", 0.0, number(0.0), "weight decay (L2 for sgd/adam, decoupled for adamw)"),
    Option("batch_size", 32, integer(1, MAX_BATCH_SIZE), "examples per optimizer step"),
    # named "seed" in keys (the first version's name): null = the root's seed
    Option("data_order_seed", None, optional(seed_value), "seeds the data order and augmentation "
           "(null: the root's seed); two trainings that differ only in it differ only in SGD noise",
           aliases=("seed",), key_name="seed"),
    Option("nesterov", False, boolean, "Nesterov momentum (sgd with momentum > 0)", key="unless_default"),
    Option("lr_schedule", "constant", _lr_schedule_check, "learning-rate schedule", key="unless_default"),
    Option("warmup", "0it", time_value, "linear warmup of the LR from 0 over this time", key="unless_default"),
    Option("label_smoothing", 0.0, number(0.0, below=1.0), "label smoothing of the cross-entropy loss",
           key="unless_default"),
    Option("on_divergence", "fail", choice("fail", "record"), "a non-finite loss or weight: fail the state "
           "(one line, nothing stored), or record it: training stops there, the state is stored with metric "
           "diverged = 1 and its non-finite weights, and nothing can be pruned from it", key="unless_default"),
    Option("precision", "fp32", choice("fp32", "bf16", "fp16"),
           "fp32, or autocast to bf16 / fp16 (fp16 with a gradient scaler)", key="unless_default"),
    Option("schedule_from", "0it", time_value, "start at this time of the schedule (LR, warmup, data order) "
           "and train to the end (`steps`)", key="unless_default"),
    Option("stop_at", None, optional(time_value), "stop at this time of the schedule (a checkpoint of a longer "
           "training)", key="unless_default"),
    Option("sparsity_schedule", None, _sparsity_schedule_check, "gradual magnitude pruning during the training: "
           "{kind: agp | linear, final, start, end, every, initial: 0, scope: layer | global}; the sparsity "
           "rises from initial to final between start and end, pruning every `every`", key="unless_default"),
    Option("checkpoints", (), _checkpoints_check, "also store the state at these times of this training "
           "(each is the training stopped there)", key="never", cli=False),
))


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
        raise SpecError(f"train length (epochs / steps) must be more than 0, got {given.get('steps')!r}: a state "
                        f"that is not trained needs no train step")
    optimizer = OPTIMIZERS[resolved["optimizer"]]
    for other in OPTIMIZERS.values():
        for option in other.takes:
            if option in optimizer.takes:
                continue
            if given.get(option):
                raise SpecError(f"train option {option!r} applies to optimizer {other.name} only, "
                                f"not {optimizer.name!r}")
            resolved.pop(option, None)
    if resolved.get("nesterov") and resolved.get("momentum", 0.0) <= 0:
        raise SpecError("train option 'nesterov' needs momentum > 0")
    start = parse_time(resolved.get("schedule_from", "0it"))
    schedule = schedule_of(resolved.get("lr_schedule", TRAIN_SCHEMA["lr_schedule"].default))
    length_dependent = SCHEDULES[schedule["kind"]].length_dependent
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


# ---- prune ------------------------------------------------------------------------------------

def _prune_option_doc():
    from ..pruning.catalog import METHODS, method_options

    options = [
        Option("method", REQUIRED, any_value, "pruning method: " + ", ".join(METHODS)),
        Option("amount", REQUIRED, any_value, "a fraction in (0, 1) of what remains, or an int count"),
        Option("scope", "layer", choice("layer", "global"), "layer (each layer alone) or global (one threshold); "
               "score methods (snip, grasp, synflow) default to global"),
    ]
    for name, option in method_options().items():
        users = [m for m, e in METHODS.items() if name in e.option_names]
        options.append(Option(name, option.default, option.check, f"{option.help} ({', '.join(users)})"))
    options += [
        Option("include", ["*"], any_value, "layers to prune: globs over parameter names or @conv, @linear, @output"),
        Option("exclude", [], any_value, "layers to leave alone (same selectors)"),
        Option("layers", {}, any_value, "per-layer overrides {selector: {method, amount, ..., skip}}", cli=False),
        Option("seed", None, optional(seed_value), "seed of random methods (default: derived from the state's key)"),
        Option("from", None, any_value, "from_state: the state whose mask to take (a run id or state:<node>)"),
        Option("bias", False, any_value, "bias pruning (not supported)", cli=False),
        Option("coupled", False, boolean, "structured methods: remove whole channels with their biases, "
               "BatchNorm entries and the next layers' inputs; residual groups together (docs/structured.md)",
               key="unless_default"),
    ]
    return Schema("prune option", tuple(options))


def resolve_prune(raw: dict) -> ResolvedStep:
    from ..pruning.catalog import METHODS
    from ..pruning.prune_step import resolve_prune_step

    raw = dict(raw or {})
    method = raw.get("method")
    if method in METHODS and METHODS[method].granularity == "transplant":
        unknown = sorted(set(raw) - {"method", "from"})
        if unknown:
            raise SpecError(f"unknown {method} option {unknown[0]!r}; allowed: method, from")
        source = raw.get("from")
        if source is None:
            raise SpecError(f"prune method {method!r} needs 'from': the state whose mask to take")
        return ResolvedStep("prune", {"method": method, "from": "input:mask"}, {"mask": Source(source)})
    raw.pop("from", None)
    return ResolvedStep("prune", resolve_prune_step(raw))


# ---- reinit -----------------------------------------------------------------------------------

REINIT_SCHEMA = Schema("reinit option", (
    Option("strategy", REQUIRED, any_value, "rewind | random | sign | zhou | shuffle | keep"),
    Option("to", "root", any_value, "the weights source: root, parent, state:<node> or a run id"),
    Option("at", None, optional(time_value), "rewind to this time of the first training (to: root)"),
    Option("epoch", None, any_value, "the same as at: <epoch> (first version)", cli=False),
    Option("seed", None, optional(seed_value), "seed of random strategies (default: derived from the state's key)"),
    Option("biases", False, boolean, "sign, zhou: set the pruned layers' biases the same way (as the seed did)"),
    Option("reset_optimizer", True, any_value, "every train step starts a fresh optimizer (false is refused)",
           cli=False),
))


def resolve_reinit(raw: dict) -> ResolvedStep:
    from ..reinit.catalog import STRATEGIES, resolve_reinit_step

    raw = dict(raw or {})
    objects = {k: v for k, v in raw.items() if _is_state_object(v)}  # Python API: to=<state>
    options = resolve_reinit_step({k: ("state:object" if k in objects else v) for k, v in raw.items()})
    if not STRATEGIES[options["strategy"]].reads_source:
        return ResolvedStep("reinit", options)
    source = Source(objects.get("to", options["to"]), options["at"])
    if source.at is not None and source.ref != "root":
        raise SpecError(f"a rewind point 'at' counts time of the first training from the root; "
                        f"'to' must be root, not {source.ref!r}")
    keyed = {k: v for k, v in options.items() if k != "at"}
    keyed["to"] = "input:weights"
    return ResolvedStep("reinit", keyed, {"weights": source})


# ---- analyses: states that measure their parent (a) against other states ---------------------------

COMPARE_SCHEMA = Schema("compare option", (
    Option("b", REQUIRED, any_value, "the state to compare with: a run id, state:<node>, root or parent",
           aliases=("with",)),
))


def resolve_compare(raw: dict) -> ResolvedStep:
    given = COMPARE_SCHEMA.canonical_names(dict(raw or {}))
    if "b" not in given:
        raise SpecError("compare needs 'b': the state to compare the parent with")
    return ResolvedStep("compare", {"a": "input:a", "b": "input:b"},
                        {"a": Source("parent"), "b": Source(given["b"])})


CKA_SCHEMA = Schema("cka option", (
    Option("b", REQUIRED, any_value, "the state to compare with: a run id, state:<node>, root or parent",
           aliases=("with",)),
    Option("probe_size", 1024, integer(4, MAX_EXAMPLES),
           "test examples in the probe set (a seeded draw; at most the test set)"),
    Option("batch_size", 256, integer(4, MAX_BATCH_SIZE),
           "examples per minibatch of the CKA estimator (it changes the estimate slightly, so it is part of the key)"),
    Option("seed", 0, seed_value, "seeds the draw of the probe set"),
))


def resolve_cka(raw: dict) -> ResolvedStep:
    given = CKA_SCHEMA.canonical_names(dict(raw or {}))
    if "b" not in given:
        raise SpecError("cka needs 'b': the state whose representations to compare the parent's with")
    options = CKA_SCHEMA.resolve({**given, "b": "input:b"})
    return ResolvedStep("cka", {"a": "input:a", **options}, {"a": Source("parent"), "b": Source(given["b"])})


INTERPOLATE_SCHEMA = Schema("interpolate option", (
    Option("b", REQUIRED, any_value, "the other end of the path (a = the parent): a run id, state:<node>, root or "
           "parent", aliases=("with",)),
    Option("alphas", 30, integer(2, 1000), "points on the path (1 - α)·a + α·b, evenly spaced, both endpoints "
           "included"),
    Option("bn_reset", None, optional(boolean), "recompute BatchNorm running statistics on training batches at "
           "every α (null: when the network has BatchNorm); interpolated statistics are meaningless"),
    Option("train_set", False, boolean, "also measure error and loss on the training set (unaugmented)"),
))


def resolve_interpolate(raw: dict) -> ResolvedStep:
    """Linear interpolation between the parent (a) and b: options in key form, sources a and b."""
    given = INTERPOLATE_SCHEMA.canonical_names(dict(raw or {}))
    if "b" not in given:
        raise SpecError("interpolate needs 'b': the state at the other end of the path (a is the parent)")
    options = INTERPOLATE_SCHEMA.resolve({k: v for k, v in given.items() if k != "b"} | {"b": "input:b"})
    return ResolvedStep("interpolate", {"a": "input:a", **options},
                        {"a": Source("parent"), "b": Source(given["b"])})


# ---- the registry -----------------------------------------------------------------------------

STEP_KINDS: Registry[StepKind] = Registry("step")
STEP_KINDS.add(StepKind("init", INIT_SCHEMA, _resolve_init, "mlprune.runners.network:run_init",
                        help="the root: a freshly initialized network"))
STEP_KINDS.add(StepKind("train", TRAIN_SCHEMA, resolve_train, "mlprune.runners.network:run_train",
                        help="train with a fresh optimizer; masks enforced at every step"))
STEP_KINDS.add(StepKind("prune", None, resolve_prune, "mlprune.runners.network:run_prune",
                        help="compute new masks from the current effective weights"))
STEP_KINDS.add(StepKind("reinit", REINIT_SCHEMA, resolve_reinit, "mlprune.runners.network:run_reinit",
                        help="set the weights before retraining (rewind, random, sign, zhou, shuffle, keep)"))
STEP_KINDS.add(StepKind("compare", COMPARE_SCHEMA, resolve_compare, "mlprune.runners.analyses:run_compare", produces="analysis",
                        help="an analysis: the kept weights of the parent (a) vs another state (b): Jaccard, cosine"))
STEP_KINDS.add(StepKind("cka", CKA_SCHEMA, resolve_cka, "mlprune.runners.analyses:run_cka", produces="analysis",
                        help="an analysis: linear CKA between the outputs of each prunable layer of the parent (a) "
                             "and another state (b), minibatch estimator on a seeded probe set of test examples"))
STEP_KINDS.add(StepKind("interpolate", INTERPOLATE_SCHEMA, resolve_interpolate, "mlprune.runners.analyses:run_interpolate",
                        produces="analysis",
                        help="an analysis: error and loss along the linear path from the parent (a) to b, "
                             "instability and loss barrier (Frankle et al. 2020); a and b need the same mask"))
CHILD_KINDS = ("prune", "reinit", "train")  # what a recipe's steps may be (init makes roots only)


_PRUNE_SCHEMAS: dict[tuple, Schema] = {}


def schema_of(kind: str) -> Schema:
    """The option schema of a step kind (prune's is built from the method catalog, once per catalog:
    every planned prune state asks for it)."""
    from ..pruning.catalog import METHODS

    entry = STEP_KINDS[kind]
    if entry.schema is not None:
        return entry.schema
    methods = tuple(METHODS)
    if methods not in _PRUNE_SCHEMAS:
        _PRUNE_SCHEMAS.clear()
        _PRUNE_SCHEMAS[methods] = _prune_option_doc()
    return _PRUNE_SCHEMAS[methods]


def resolve_step(step) -> ResolvedStep:
    """One recipe step ``{kind: options}`` -> its `ResolvedStep`; a one-line SpecError if invalid."""
    if not isinstance(step, dict) or len(step) != 1:
        raise SpecError(f"a step is a mapping with one key out of {', '.join(CHILD_KINDS)}; got {step!r}")
    (kind, options), = step.items()
    if kind not in CHILD_KINDS and not (kind in STEP_KINDS and STEP_KINDS[kind].produces == "analysis"):
        raise choice_error("step", kind, [k for k in STEP_KINDS if k != "init"])
    if options is not None and not isinstance(options, dict):
        raise SpecError(f"{kind} options must be a mapping, got {options!r}")
    return STEP_KINDS[kind].resolve(dict(options or {}))


def resolve_steps(steps) -> tuple[list[dict], dict[str, Source], list]:
    """(resolved steps in key form, {role: Source}, run-only extras per step) of a recipe's steps.

    Run-only extras: a train step's ``checkpoints`` (times at which its state is also stored).
    """
    if not steps:
        raise SpecError("a recipe needs at least one step (prune, reinit or train)")
    resolved, sources, extras = [], {}, []
    kinds = [next(iter(step)) if isinstance(step, dict) and len(step) == 1 else None for step in steps]
    if any(k in STEP_KINDS and STEP_KINDS[k].produces == "analysis" for k in kinds) and len(steps) > 1:
        raise SpecError(f"an analysis ({', '.join(k for k in kinds if k)}) is a step of its own, not part of a "
                        f"list of steps")
    rewound_to = None  # a rewind to a point of training: the retrain continues the schedule from there
    for step in steps:
        if rewound_to is not None and isinstance(step, dict) and "train" in step and isinstance(step["train"], dict) \
                and "schedule_from" not in step["train"]:
            step = {"train": {**step["train"], "schedule_from": rewound_to}}
        result = resolve_step(step)
        source = result.sources.get("weights")
        rewound_to = source.at if source is not None and source.at and result.kind == "reinit" else rewound_to
        for role, source in result.sources.items():
            if role in sources:
                raise SpecError(f"a recipe can take its {role} source from one state only")
            sources[role] = source
        resolved.append(result.as_dict())
        (kind, options), = step.items()
        extras.append({"checkpoints": TRAIN_SCHEMA["checkpoints"].check((options or {}).get("checkpoints", ()),
                                                                        "checkpoints")}
                      if kind == "train" else {})
    return resolved, sources, extras
