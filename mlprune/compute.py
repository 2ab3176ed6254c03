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
    """What one process keeps between the states it computes: data, model templates, the device."""

    def __init__(self, device=None):
        self.device = device if device is not None else torch.device("cpu")
        self._data: dict[str, object] = {}
        self._templates: dict[str, torch.nn.Module] = {}
        self._groups: dict[str, list] = {}

    def data(self, root: dict, data_dir: str | None):
        from .data import load_data
        from .models import model_input

        channels, min_size = model_input(root["model"])
        options = {"val_size": 0, "augment": None, "image_size": None, "channels": None, "train_size": None,
                   "test_size": None, **root["data"]}
        options["channels"] = options["channels"] or channels
        options["min_image_size"] = min_size  # upsample small images only
        cache_key = canonical_json([root["dataset"], options, data_dir])
        if cache_key not in self._data:
            self._data[cache_key] = load_data(root["dataset"], data_dir=data_dir, **options)
        return self._data[cache_key]

    def build(self, root: dict, data, seed: int | None = None) -> torch.nn.Module:
        """A freshly initialized module of the root's architecture (`seed`: another init seed)."""
        from .models import build_model

        return build_model(root["model"], num_classes=data.num_classes, input_shape=tuple(data.input_shape),
                           init=root["init"], seed=root["seed"] if seed is None else seed,
                           options=root.get("model_options"))

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


    def channel_groups(self, root: dict, data) -> list:
        """The architecture's channel groups (`pruning.structure.channel_groups`), traced once per root."""
        from .pruning.structure import channel_groups

        cache_key = canonical_json([root["model"], root.get("model_options"), data.num_classes,
                                    list(data.input_shape)])
        from .errors import SpecError

        if cache_key not in self._groups:
            try:
                self._groups[cache_key] = channel_groups(self.blank(root, data), tuple(data.input_shape))
            except SpecError as error:  # remembered: an architecture that cannot be traced is not traced again
                self._groups[cache_key] = error
        found = self._groups[cache_key]
        if isinstance(found, SpecError):
            raise SpecError(str(found))
        return found

    def removed_extras(self, root: dict, data, weights: dict, masks: dict) -> dict:
        """{tensor: bool mask} of the biases and BatchNorm entries of removed channels (every weight of
        the channel masked: `pruning.structure`); {} when no channel is removed. A model whose channels
        cannot be traced has none (a coupled prune step on it has already failed with a SpecError)."""
        from .errors import SpecError
        from .pruning.structure import extra_masks, has_removable

        if not has_removable(masks):
            return {}
        try:
            groups = self.channel_groups(root, data)
        except SpecError:
            return {}
        return extra_masks(groups, masks, {name: t.shape for name, t in weights.items()})


def with_removed_extras(ctx: "StepContext", weights: dict, masks: dict) -> dict:
    """`weights` with the biases and BatchNorm entries of removed channels at exactly 0.0."""
    from .pruning.structure import apply_extra_masks

    extras = ctx.workspace.removed_extras(ctx.root, ctx.data, weights, masks)
    return apply_extra_masks(weights, extras) if extras else weights


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
    elif options.get("coupled"):
        from .pruning.structure import prune_coupled

        effective = {n: tensors.weights[n] * tensors.masks[n] for n in tensors.masks}
        masks = prune_coupled(effective, tensors.masks, _kinds(ctx), options,
                              ctx.workspace.channel_groups(ctx.root, ctx.data), generator=ctx.generator(options.get("seed")))
    else:
        effective = {n: tensors.weights[n] * tensors.masks[n] for n in tensors.masks}
        masks = prune_masks(effective, tensors.masks, _kinds(ctx), options, generator=ctx.generator(options.get("seed")))
    weights = {n: (t * masks[n] if n in masks else t) for n, t in tensors.weights.items()}
    return Tensors(with_removed_extras(ctx, weights, masks), masks)


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
    return Tensors(with_removed_extras(ctx, weights, masks), masks)


def run_train(ctx: StepContext, tensors: Tensors, options: dict) -> Tensors:
    from .spec.times import parse_time
    from .training.loop import train

    device = ctx.workspace.device
    model = ctx.workspace.blank(ctx.root, ctx.data)
    # removed channels' biases and BatchNorm entries: zero, and masked during training like weights
    extras = ctx.workspace.removed_extras(ctx.root, ctx.data, tensors.weights, tensors.masks)
    if extras:
        from .pruning.structure import apply_extra_masks

        tensors = Tensors(apply_extra_masks(tensors.weights, extras), tensors.masks)
    model.load_state_dict(tensors.weights)
    model.to(device)
    masks = {n: m.to(device) for n, m in tensors.masks.items()}
    parameters = dict(model.named_parameters())
    train_masks = {**masks, **{n: m.to(device) for n, m in extras.items() if n in parameters}}
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
    history = train(model, train_masks, ctx.data, options, seed=seed, device=device, progress=progress,
                    on_epoch=on_epoch, checkpoints=checkpoints)
    ctx.history.setdefault(names.M_ITERATIONS, 0)
    ctx.history[names.M_ITERATIONS] += history.pop("iterations")
    for name, values in history.items():
        ctx.history.setdefault(name, []).extend(values)
    weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
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


def compact_network(workspace: Workspace, root: dict, data, weights: dict, masks: dict):
    """The state's compact network (`mlprune.compact.Compact`): its unread channels physically removed."""
    from .compact import compact_state

    return compact_state(workspace.blank(root, data), weights, masks, workspace.channel_groups(root, data),
                         model_name=root["model"], model_options=root.get("model_options"),
                         num_classes=data.num_classes, input_shape=tuple(data.input_shape))


def check_compact(compact, dense: torch.nn.Module, data, device) -> tuple[torch.nn.Module, dict]:
    """(the rebuilt compact network on `device`, its metrics): parameters, FLOPs and the largest output
    difference to the dense (masked) network on the first test batch (64 examples)."""
    from .compact import max_abs_diff, parameter_count, rebuild

    model = rebuild(compact.arch, compact.weights)
    flops = analysis.flops(model, tuple(data.input_shape))[names.M_FLOPS_DENSE]
    model.to(device)
    x, _ = next(iter(data.test_batches(64)))
    metrics = {names.M_PARAMS_COMPACT: parameter_count(model), names.M_FLOPS_COMPACT: flops,
               names.M_COMPACT_DIFF: max_abs_diff(dense, model, x.to(device))}
    compact.arch["params"], compact.arch["flops"] = metrics[names.M_PARAMS_COMPACT], flops
    compact.arch["check"] = {"max_abs_diff": metrics[names.M_COMPACT_DIFF], "test_examples": int(len(x))}
    return model, metrics


def measure_compact(compact, dense: torch.nn.Module, data, device) -> tuple[torch.nn.Module, dict]:
    """`check_compact`'s network and metrics, and the latencies of both networks on `device`."""
    from .compact import latency_ms

    model, metrics = check_compact(compact, dense, data, device)
    times = latency_ms({"dense": dense, "compact": model}, tuple(data.input_shape), device, batch_sizes=(1, 64))
    metrics.update({names.M_LATENCY: times["compact"][64], names.M_LATENCY_BATCH1: times["compact"][1],
                    names.M_LATENCY_DENSE: times["dense"][64], names.M_LATENCY_DENSE_BATCH1: times["dense"][1],
                    names.M_SPEEDUP: times["dense"][64] / times["compact"][64],
                    names.M_SPEEDUP_BATCH1: times["dense"][1] / times["compact"][1]})
    return model, metrics


COMPACT_TOLERANCE = 1e-4  # fp32: a compact network further than this from the masked one is not written


def export_compact(state, directory, *, data_dir: str | None = None) -> dict:
    """Write a stored state's compact network (compact.safetensors, compact.json) to `directory`.

    `state`: a loaded state (weights, masks, spec, run_id). The compact network is checked against
    the masked one on a test batch first; one that differs by more than COMPACT_TOLERANCE is refused
    (SpecError). Returns compact.json's content.
    """
    from .compact import write
    from .errors import SpecError

    workspace = Workspace()
    root = state.spec["root"]
    data = workspace.data(root, data_dir or state.spec.get("data_dir"))
    compact = compact_network(workspace, root, data, state.weights, state.masks)
    dense = workspace.blank(root, data)
    dense.load_state_dict(state.weights)
    dense.eval()
    _, metrics = check_compact(compact, dense, data, workspace.device)
    if not metrics[names.M_COMPACT_DIFF] <= COMPACT_TOLERANCE:
        raise SpecError(f"the compact network of {state.run_id[:8]} differs from the masked one by "
                        f"{metrics[names.M_COMPACT_DIFF]:.3g} on a test batch; allowed: <= {COMPACT_TOLERANCE:g} "
                        f"(an architecture whose channels were not traced right)")
    compact.arch["source"] = {"run_id": state.run_id, "key": state.spec.get("key")}
    compact.arch["removed"] = dict(compact.removed)
    write(directory, compact)
    return compact.arch


def evaluate_compact(ev: Evaluated):
    """Structured states (some channel no weight reads): the compact network's parameters, FLOPs and
    measured latency vs the dense network. Nothing for other states: unstructured sparsity runs as
    dense tensors, so it has no measured speedup (its `flops_masked` is a theoretical count)."""
    from .errors import SpecError
    from .pruning.structure import has_unread

    if not has_unread(ev.tensors.masks):
        return {}, {}
    try:
        compact = compact_network(ev.workspace, ev.root, ev.data, ev.tensors.weights, ev.tensors.masks)
    except SpecError:  # channels that cannot be traced: no compact network, no numbers
        return {}, {}
    if not compact.shrunk:
        return {}, {}
    _, metrics = measure_compact(compact, ev.model, ev.data, ev.workspace.device)
    return metrics, {}


EVALUATIONS.add(Evaluation("test", "mlprune.compute:evaluate_test", "test loss and accuracy"))
EVALUATIONS.add(Evaluation("sparsity", "mlprune.compute:evaluate_sparsity", "sparsity per layer, compression"))
EVALUATIONS.add(Evaluation("flops", "mlprune.compute:evaluate_flops", "multiply-adds, dense and masked"))
EVALUATIONS.add(Evaluation("training", "mlprune.compute:evaluate_training", "early stopping, iterations"))
EVALUATIONS.add(Evaluation("compact", "mlprune.compute:evaluate_compact",
                           "structured states: the compact network's parameters, FLOPs, latency and speedup"))


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
    prune_only = bool(steps) and all(next(iter(s)) == "prune" for s in steps) and _only_masked(tensors, parent)
    return Computed(tensors, metrics, history, parent.run_id if prune_only else None, files)


def _only_masked(tensors: Tensors, parent) -> bool:
    """Are the weights the parent's with the new masks applied (what loading a state that shares its
    parent's weights gives)? Not when a prune removed channels: their biases and BatchNorm entries are
    zero too, so the state keeps its own weights."""
    return all(torch.equal(t, parent.weights[n] * tensors.masks[n] if n in tensors.masks else parent.weights[n])
               for n, t in tensors.weights.items())


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
