"""Computing one state from its parents: the step runners and the state's metrics (torch).

The executor (`execute`) hands a node and its loaded parents to `compute_node`,
which runs the node's steps one after another through their runners (one per
step kind, ``STEP_KINDS[kind].runner``), evaluates the result and returns what
the store saves. Runners are thin: the maths are the pure functions of
``pruning``, ``reinit`` and ``training``.

Randomness: the root's ``seed`` seeds the initialization and, by default, the
data order of every training (retrained networks see the same batches: one
nuisance variable less). Steps that need their own randomness (random pruning,
random reinitialization, mask shuffling) take the step's ``seed`` when given,
else one derived from the state's key: reproducible, and different across branches.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import analysis, names
from .registry import Registry
from .spec.keys import canonical_json, derived_seed
from .spec.steps import STEP_KINDS


@dataclass
class Tensors:
    weights: dict
    masks: dict


class Workspace:
    """What one process keeps between the states it computes: data, model templates, the device and
    how training runs there (``channels_last``, ``compile``: run options, not part of any key)."""

    def __init__(self, device=None, *, channels_last: bool = False, compile: bool = False):
        self.device = device if device is not None else torch.device("cpu")
        self.channels_last, self.compile = channels_last, compile
        self._data: dict[str, object] = {}
        self._templates: dict[str, torch.nn.Module] = {}

    def data(self, root: dict, data_dir: str | None):
        from .data import load_data
        from .models import model_input

        channels, min_size = model_input(root["model"])
        options = {"val_size": 0, "augment": None, "image_size": None, "channels": None, "train_size": None,
                   "test_size": None, **root["data"]}
        options["channels"] = options["channels"] or channels
        options["min_image_size"] = min_size  # upsample small images only
        cache_key = canonical_json([root["dataset"], options, data_dir])
        if cache_key not in self._data:  # batches delivered on the device (resident there when they fit)
            self._data[cache_key] = load_data(root["dataset"], data_dir=data_dir, device=self.device, **options)
        return self._data[cache_key]

    def build(self, root: dict, data, seed: int | None = None) -> torch.nn.Module:
        """A freshly initialized module of the root's architecture (`seed`: another init seed)."""
        from .models import build_model

        return build_model(root["model"], num_classes=data.num_classes, input_shape=tuple(data.input_shape),
                           init=root["init"], seed=root["seed"] if seed is None else seed,
                           options=root.get("model_options"), bn_init=root.get("bn_init", "default"))

    def blank(self, root: dict, data) -> torch.nn.Module:
        """A module of the root's architecture whose weights are about to be overwritten.

        A copy of a cached one: deepcopy is ~10x cheaper than a fresh seeded random
        initialization (3 ms per state for lenet_300_100). Models over 64 MB are built anew
        rather than kept twice in memory.
        """
        cache_key = canonical_json(root)
        template = self._templates.get(cache_key)
        if template is None:
            model = self.build(root, data)
            size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
            if size > 64 * 1024 ** 2:
                return model
            self._templates[cache_key] = template = model
        return copy.deepcopy(template)


@dataclass
class StepContext:
    """What a step runner may use besides the current tensors."""

    key: str                       # the state's key (derived seeds)
    index: int                     # the step's position in the node
    root: dict                     # the lineage's resolved root spec
    data: object
    workspace: Workspace
    inputs: dict                   # role -> loaded parent state (StoredState)
    history: dict                  # per-epoch metrics {name: [(epoch, value)]}, filled by train steps
    heartbeat: Callable[[], None] = lambda: None
    emit: dict = field(default_factory=dict)    # time text -> fn(model, history, masks): checkpoints of the last train step
    progress: Callable[[str], None] | None = None
    last: bool = False             # the node's last step

    def generator(self, seed: int | None = None) -> torch.Generator:
        return torch.Generator().manual_seed(derived_seed(self.key, self.index) if seed is None else seed)


# ---- runners: (ctx, tensors, options) -> tensors ---------------------------------------------------

def run_init(ctx: StepContext, tensors, options) -> Tensors:
    from .models import prunable

    model = ctx.workspace.build(ctx.root, ctx.data)
    kinds = prunable(model)
    masks = {name: torch.ones_like(p, dtype=torch.bool) for name, p in model.named_parameters() if name in kinds}
    return Tensors(model.state_dict(), masks)


def _kinds(ctx: StepContext) -> dict:
    from .models import prunable

    return prunable(ctx.workspace.blank(ctx.root, ctx.data))


def run_prune(ctx: StepContext, tensors: Tensors, options: dict) -> Tensors:
    from .pruning import METHODS, prune_masks, transplant_mask

    if METHODS[options["method"]].granularity == "transplant":
        masks = transplant_mask(tensors.masks, ctx.inputs["mask"].masks)
    else:
        effective = {n: tensors.weights[n] * tensors.masks[n] for n in tensors.masks}
        masks = prune_masks(effective, tensors.masks, _kinds(ctx), options, generator=ctx.generator(options.get("seed")))
    weights = {n: (t * masks[n] if n in masks else t) for n, t in tensors.weights.items()}
    return Tensors(weights, masks)


def run_reinit(ctx: StepContext, tensors: Tensors, options: dict) -> Tensors:
    from .reinit import STRATEGIES, reinit_weights

    entry = STRATEGIES[options["strategy"]]
    source = ctx.inputs["weights"].weights if "weights" in ctx.inputs else None
    fresh = None
    if entry.fresh_init:
        seed = options.get("seed")
        fresh = ctx.workspace.build(ctx.root, ctx.data, seed=derived_seed(ctx.key, ctx.index) if seed is None
                                    else seed).state_dict()
    weights, masks = reinit_weights(options["strategy"], current=tensors.weights, source=source, fresh=fresh,
                                    masks=tensors.masks, kinds=_kinds(ctx), generator=ctx.generator(options.get("seed")))
    return Tensors(weights, masks)


def run_train(ctx: StepContext, tensors: Tensors, options: dict) -> Tensors:
    from .spec.times import parse_time
    from .training.loop import train

    device = ctx.workspace.device
    model = ctx.workspace.blank(ctx.root, ctx.data)
    model.load_state_dict(tensors.weights)
    model.to(device)
    masks = {n: m.to(device) for n, m in tensors.masks.items()}
    per_epoch = ctx.data.batches_per_epoch(options["batch_size"])
    cpu_masks = {n: m.to("cpu") for n, m in tensors.masks.items()}

    def checkpoint(fn):
        def store_it(model_now, partial):
            so_far = {k: ctx.history.get(k, []) + list(v) for k, v in partial.items() if isinstance(v, list)}
            fn(model_now, so_far, cpu_masks)
        return store_it

    checkpoints = ({parse_time(at).iterations(per_epoch): checkpoint(fn) for at, fn in ctx.emit.items()}
                   if ctx.last else {})

    def on_epoch(epoch, _model, _history):
        ctx.heartbeat()

    progress = None
    if ctx.progress is not None:
        progress = lambda epoch, total, loss: ctx.progress(f"epoch {epoch}/{total} train_loss {loss:.4f}")  # noqa: E731
    seed = ctx.root["seed"] if options["seed"] is None else options["seed"]
    history = train(model, masks, ctx.data, options, seed=seed, device=device, progress=progress,
                    on_epoch=on_epoch, checkpoints=checkpoints, channels_last=ctx.workspace.channels_last,
                    compile=ctx.workspace.compile)
    ctx.history.setdefault(names.M_ITERATIONS, 0)
    ctx.history[names.M_ITERATIONS] += history.pop("iterations")
    for name, values in history.items():
        ctx.history.setdefault(name, []).extend(values)
    # contiguous: a channels_last model's conv weights are stored in the plain layout like any other
    weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    return Tensors(weights, {n: m.to("cpu") for n, m in masks.items()})


# ---- a whole node -----------------------------------------------------------------------------------

def run_steps(ctx_base: dict, tensors: Tensors, steps: list) -> Tensors:
    """Run resolved steps in order (each through its kind's runner)."""
    for index, step in enumerate(steps):
        (kind, options), = step.items()
        ctx = StepContext(index=index, last=index == len(steps) - 1, **ctx_base)
        tensors = STEP_KINDS[kind].load()(ctx, tensors, options)
    return tensors


@dataclass
class Evaluated:
    """A network state about to be stored, for the evaluations: the model (eval mode, on the device)."""

    model: torch.nn.Module
    tensors: Tensors
    data: object
    root: dict
    history: dict
    steps: list
    workspace: Workspace


@dataclass(frozen=True)
class Evaluation:
    """One thing measured on every network state: ``impl(evaluated) -> (metrics, files)``.

    ``files``: extra artifacts of the state ({name: bytes}), hashed and checked like its tensors.
    """

    name: str
    impl: str
    help: str = ""

    def load(self):
        from .registry import load_impl

        return load_impl(self.impl)


EVALUATIONS: Registry[Evaluation] = Registry("state evaluation")


def evaluate_test(ev: Evaluated):
    from .training.loop import evaluate

    loss, accuracy = evaluate(ev.model, ev.data.test_batches(256), device=ev.workspace.device)
    return {names.M_TEST_LOSS: loss, names.M_TEST_ACCURACY: accuracy}, {}


def evaluate_sparsity(ev: Evaluated):
    metrics = dict(analysis.sparsity(ev.tensors.masks))
    metrics[names.M_COMPRESSION] = analysis.compression_ratio(ev.tensors.masks)
    return metrics, {}


def evaluate_flops(ev: Evaluated):
    model = ev.workspace.blank(ev.root, ev.data)  # counted on the CPU: the hooks see shapes, not values
    model.load_state_dict(ev.tensors.weights)
    return analysis.flops(model, tuple(ev.data.input_shape), ev.tensors.masks), {}


def evaluate_training(ev: Evaluated):
    """Early stopping (the epoch and iteration of the lowest validation loss) and iterations trained."""
    metrics = {}
    val = ev.history.get(names.M_VAL_LOSS)
    if val:
        best_epoch, _ = min(val, key=lambda point: point[1])
        metrics[names.M_EARLY_STOP_EPOCH] = best_epoch
        batch_size = next((next(iter(s.values()))["batch_size"] for s in reversed(ev.steps) if "train" in s), None)
        if batch_size is not None:
            metrics[names.M_EARLY_STOP_ITERATION] = best_epoch * ev.data.batches_per_epoch(batch_size)
    if names.M_ITERATIONS in ev.history:
        metrics[names.M_ITERATIONS] = ev.history[names.M_ITERATIONS]
    return metrics, {}


EVALUATIONS.add(Evaluation("test", "mlprune.compute:evaluate_test", "test loss and accuracy"))
EVALUATIONS.add(Evaluation("sparsity", "mlprune.compute:evaluate_sparsity", "sparsity per layer, compression"))
EVALUATIONS.add(Evaluation("flops", "mlprune.compute:evaluate_flops", "multiply-adds, dense and masked"))
EVALUATIONS.add(Evaluation("training", "mlprune.compute:evaluate_training", "early stopping, iterations"))


def evaluate_state(workspace: Workspace, root: dict, data, tensors: Tensors, history: dict,
                   steps: list = ()) -> tuple[dict, dict]:
    """(metrics, extra files) every network state gets: one entry of EVALUATIONS after another."""
    model = workspace.blank(root, data)
    model.load_state_dict(tensors.weights)
    model.to(workspace.device)
    model.eval()
    evaluated = Evaluated(model, tensors, data, root, history, list(steps), workspace)
    metrics, files = {}, {}
    for entry in EVALUATIONS.values():
        more_metrics, more_files = entry.load()(evaluated)
        metrics.update(more_metrics)
        files.update(more_files)
    return metrics, files


def compute_node(node: dict, parent, inputs: dict, workspace: Workspace, *, data_dir: str | None,
                 heartbeat=lambda: None, emit: dict | None = None, progress=None) -> "Computed":
    """What to store for a plan node, computed from its loaded parent and inputs.

    `parent`: the parent's StoredState (None for a root); `emit`: {time: fn(model, history, masks)}
    checkpoints of the node's last train step. A node whose step kind produces an analysis (of
    its parent and its inputs) stores metrics and files, no network.
    """
    started = time.perf_counter()
    root = node["root"] if node["root"] is not None else parent.spec["root"]
    data = workspace.data(root, data_dir)
    history: dict = {}
    ctx_base = dict(key=node["key"], root=root, data=data, workspace=workspace, inputs=inputs, history=history,
                    heartbeat=heartbeat, emit=emit or {}, progress=progress)
    steps = node["steps"]
    if steps and STEP_KINDS[next(iter(steps[0]))].produces == "analysis":
        (kind, options), = steps[0].items()
        metrics, files = STEP_KINDS[kind].load()(StepContext(index=0, last=True, **ctx_base), parent, options)
        metrics[names.M_DURATION] = time.perf_counter() - started
        return Computed(None, metrics, history, None, files)
    if node["root"] is not None:
        tensors = run_init(StepContext(index=0, **ctx_base), None, node["root"])
    else:
        tensors = Tensors({k: v.clone() for k, v in parent.weights.items()},
                          {k: v.clone() for k, v in parent.masks.items()})
        tensors = run_steps(ctx_base, tensors, steps)
    metrics, files = evaluate_state(workspace, root, data, tensors, history, steps)
    metrics[names.M_DURATION] = time.perf_counter() - started
    prune_only = bool(steps) and all(next(iter(s)) == "prune" for s in steps)
    return Computed(tensors, metrics, history, parent.run_id if prune_only else None, files)


@dataclass
class Computed:
    """What the executor stores for a node: tensors (None for an analysis), metrics, per-epoch
    history, the run whose weights it shares (prune-only states), extra files."""

    tensors: Tensors | None
    metrics: dict
    history: dict
    weights_from: str | None
    files: dict


# ---- analyses: (ctx, parent state, options) -> (metrics, files) ------------------------------------

def run_compare(ctx: StepContext, parent, options: dict):
    """Masks and weights of the parent (a) and the input b: Jaccard of the kept weights, overall and
    per layer, and the cosine similarity of the weights both keep."""
    other = ctx.inputs["b"]
    jaccard = analysis.jaccard(parent.masks, other.masks)
    metrics = {"jaccard": jaccard["overall"]}
    metrics.update({f"jaccard.{name}": value for name, value in jaccard["per_layer"].items()})
    both = [(parent.weights[n] * (parent.masks[n] & other.masks[n])).flatten() for n in parent.masks]
    others = [(other.weights[n] * (parent.masks[n] & other.masks[n])).flatten() for n in parent.masks]
    a, b = torch.cat(both).double(), torch.cat(others).double()
    denominator = float(a.norm() * b.norm())
    metrics["cosine"] = float(a @ b) / denominator if denominator else float("nan")
    return metrics, {}
