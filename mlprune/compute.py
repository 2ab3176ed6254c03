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
from .errors import SpecError
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
        self._groups: dict[str, list] = {}

    def data(self, root: dict, data_dir: str | None):
        from .data.loading import load_data
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

    if not all(bool(torch.isfinite(t).all()) for t in tensors.weights.values() if t.is_floating_point()):
        raise SpecError("cannot prune a state whose weights are not finite (its training diverged): masks "
                        "computed from NaN or inf weights mean nothing")
    entry = METHODS[options["method"]]
    if entry.granularity == "transplant":
        masks = transplant_mask(tensors.masks, ctx.inputs["mask"].masks)
    elif options.get("coupled"):
        from .pruning.structure import prune_coupled

        effective = {n: tensors.weights[n] * tensors.masks[n] for n in tensors.masks}
        masks = prune_coupled(effective, tensors.masks, _kinds(ctx), options,
                              ctx.workspace.channel_groups(ctx.root, ctx.data), generator=ctx.generator(options.get("seed")))
    else:
        effective = {n: tensors.weights[n] * tensors.masks[n] for n in tensors.masks}
        scores = _network_scores(ctx, effective, tensors.weights, options) if entry.scores_network else None
        masks = prune_masks(effective, tensors.masks, _kinds(ctx), options, generator=ctx.generator(options.get("seed")),
                            scores=scores)
    weights = {n: (t * masks[n] if n in masks else t) for n, t in tensors.weights.items()}
    return Tensors(with_removed_extras(ctx, weights, masks), masks)


def _network_scores(ctx: StepContext, effective: dict, weights: dict, options: dict):
    """A score method's ``scores(masks)`` on this state's network. Its data: the first training
    batches of epoch 0 of the root's data order (the same for every state of a lineage, so an
    inverted or shuffled sibling is scored on the very batches its original was)."""
    from .pruning.scores import ScoringData, network_scores

    model = ctx.workspace.blank(ctx.root, ctx.data)
    model.load_state_dict({**weights, **effective})
    model.to(ctx.workspace.device)

    def batches(count: int, batch_size: int) -> list:
        taken = []
        for batch in ctx.data.train_batches(batch_size, seed=ctx.root["seed"], epoch=0):
            if len(taken) == count:
                break
            taken.append(batch)
        return taken

    data = ScoringData(tuple(ctx.data.input_shape), batches, ctx.workspace.device)
    return network_scores(options["method"], model, data, options)


def run_reinit(ctx: StepContext, tensors: Tensors, options: dict) -> Tensors:
    from .reinit import STRATEGIES, reinit_weights

    entry = STRATEGIES[options["strategy"]]
    source = ctx.inputs["weights"].weights if "weights" in ctx.inputs else None
    fresh = None
    if entry.fresh_init:
        seed = options.get("seed")
        fresh = ctx.workspace.build(ctx.root, ctx.data, seed=derived_seed(ctx.key, ctx.index) if seed is None
                                    else seed).state_dict()
    own = {name: options[name] for name in entry.options if name in options}
    weights, masks = reinit_weights(options["strategy"], current=tensors.weights, source=source, fresh=fresh,
                                    masks=tensors.masks, kinds=_kinds(ctx), generator=ctx.generator(options.get("seed")),
                                    **own)
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

    def checkpoint(fn):
        def store_it(model_now, partial):
            so_far = {k: ctx.history.get(k, []) + list(v) for k, v in partial.items() if isinstance(v, list)}
            fn(model_now, so_far, {n: train_masks[n].to("cpu") for n in masks})  # gradual pruning changes them
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
                    on_epoch=on_epoch, checkpoints=checkpoints, channels_last=ctx.workspace.channels_last,
                    compile=ctx.workspace.compile)
    ctx.history.setdefault(names.M_ITERATIONS, 0)
    ctx.history[names.M_ITERATIONS] += history.pop("iterations")
    if "diverged" in history:
        ctx.history["diverged"] = history.pop("diverged")
    for name, values in history.items():
        ctx.history.setdefault(name, []).extend(values)
    # contiguous: a channels_last model's conv weights are stored in the plain layout like any other
    weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    # gradual pruning replaced the masks it tightened in train_masks
    return Tensors(weights, {n: train_masks[n].to("cpu") for n in masks})


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
    _test: object = None

    def test_predictions(self):
        """The model's `training.loop.Predictions` on the test set (fixed order): one pass, shared by
        every evaluation that needs the test outputs (loss and accuracy, predictions, per class)."""
        if self._test is None:
            from .training.loop import predict

            self._test = predict(self.model, self.data.test_batches(256), device=self.workspace.device)
        return self._test


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
    result = ev.test_predictions()
    return {names.M_TEST_LOSS: result.loss, names.M_TEST_ACCURACY: result.accuracy}, {}


def evaluate_predictions(ev: Evaluated):
    """The test pass kept: predictions.safetensors (per example, test order: predicted class, true
    class, probability of the true class), confusion.json and each class's accuracy (its recall)."""
    import json

    import numpy as np

    from .store.artifacts import tensors_bytes

    result = ev.test_predictions()
    small = torch.int16 if ev.data.num_classes <= torch.iinfo(torch.int16).max else torch.int32
    files = {names.PREDICTIONS_FILE: tensors_bytes({
        names.PRED_PREDICTED: result.predicted.to(small), names.PRED_LABEL: result.labels.to(small),
        names.PRED_TRUE_PROBABILITY: result.true_probability.float()})}
    confusion = analysis.confusion_matrix(result.labels.numpy(), result.predicted.numpy(), ev.data.num_classes)
    files[names.CONFUSION_FILE] = json.dumps({"classes": ev.data.num_classes, "rows": "true class",
                                              "columns": "predicted class", "matrix": confusion.tolist()}).encode()
    recall = analysis.class_recall(confusion)
    metrics = {f"{names.M_CLASS_ACCURACY_PREFIX}{k}": float(v) for k, v in enumerate(recall) if np.isfinite(v)}
    return metrics, files


def evaluate_sparsity(ev: Evaluated):
    metrics = dict(analysis.sparsity(ev.tensors.masks))
    metrics[names.M_COMPRESSION] = analysis.compression_ratio(ev.tensors.masks)
    return metrics, {}


def evaluate_flops(ev: Evaluated):
    model = ev.workspace.blank(ev.root, ev.data)  # counted on the CPU: the hooks see shapes, not values
    model.load_state_dict(ev.tensors.weights)
    return analysis.flops(model, tuple(ev.data.input_shape), ev.tensors.masks), {}


def evaluate_training(ev: Evaluated):
    """Early stopping (the epoch and iteration of the lowest validation loss, the test accuracy then)
    and iterations trained."""
    metrics = {}
    val = ev.history.get(names.M_VAL_LOSS)
    if val:
        best_epoch, _ = min(val, key=lambda point: point[1])  # the first epoch of the lowest validation loss
        metrics[names.M_EARLY_STOP_EPOCH] = best_epoch
        at_best = [value for epoch, value in ev.history.get(names.M_EPOCH_TEST_ACCURACY, []) if epoch == best_epoch]
        if at_best:
            metrics[names.M_EARLY_STOP_TEST_ACCURACY] = at_best[-1]
        batch_size = next((next(iter(s.values()))["batch_size"] for s in reversed(ev.steps) if "train" in s), None)
        if batch_size is not None:
            metrics[names.M_EARLY_STOP_ITERATION] = best_epoch * ev.data.batches_per_epoch(batch_size)
    if names.M_ITERATIONS in ev.history:
        metrics[names.M_ITERATIONS] = ev.history[names.M_ITERATIONS]
    if "diverged" in ev.history:
        metrics[names.M_DIVERGED] = 1.0
        metrics[names.M_DIVERGED_EPOCH] = ev.history["diverged"][0]
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
EVALUATIONS.add(Evaluation("predictions", "mlprune.compute:evaluate_predictions",
                           "test predictions, confusion matrix, accuracy per class (the test pass, reused)"))
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


def run_cka(ctx: StepContext, parent, options: dict):
    """Linear CKA between the outputs of each prunable layer of the parent (a) and the input b, on a
    seeded probe set of test examples, minibatch estimator (`analysis.MinibatchCKA`)."""
    import json

    from .models import prunable

    other = ctx.inputs["b"]
    device = ctx.workspace.device
    networks = []
    for state in (parent, other):
        model = ctx.workspace.blank(ctx.root, ctx.data)
        model.load_state_dict(state.weights)
        networks.append(model.to(device).eval())
    layers = {param: param[: -len(".weight")] for param in prunable(networks[0])}  # param -> its module
    hooked = [{param: dict(net.named_modules())[module] for param, module in layers.items()} for net in networks]
    probe = analysis.probe_indices(options["probe_size"], ctx.data.len_test, options["seed"])
    images = test_images(ctx.data, probe)
    estimator = analysis.MinibatchCKA()
    for start, stop in analysis.probe_batches(len(probe), options["batch_size"]):
        x = images[start:stop].to(device)
        outputs = [analysis.layer_outputs(net, modules, x) for net, modules in zip(networks, hooked)]
        estimator.update(outputs[0], outputs[1])
        ctx.heartbeat()
    values = estimator.result()
    metrics = {f"{names.M_CKA_PREFIX}{param}": v for param, v in values.items() if v == v}  # NaN: a dead layer
    record = {"layers": values, "probe_size": len(probe), "batches": estimator.batches,
              "batch_size": options["batch_size"], "seed": options["seed"],
              "estimator": "linear CKA, minibatch, unbiased HSIC (Nguyen, Raghu & Kornblith 2021)",
              "activations": "each prunable layer's output (Conv2d / Linear), flattened per example"}
    return metrics, {names.CKA_FILE: json.dumps(record, indent=1, allow_nan=True).encode()}


def test_images(data, indices: torch.Tensor) -> torch.Tensor:
    """The preprocessed test images at `indices` (in that order), gathered from the test batches
    (the order every evaluation sees; one pass, nothing else is kept)."""
    wanted = {int(i): position for position, i in enumerate(indices)}
    out = None
    seen = 0
    for x, _y in data.test_batches(256):
        for offset in range(x.shape[0]):
            position = wanted.get(seen + offset)
            if position is not None:
                if out is None:
                    out = torch.empty((len(indices), *x.shape[1:]), dtype=x.dtype)
                out[position] = x[offset]
        seen += x.shape[0]
    return out


BN_RESET_BATCH_SIZE = 128  # batches of the training set that BatchNorm statistics are recomputed on (one epoch)


def _same_network_kind(a, b) -> None:
    """A one-line SpecError unless a and b are one architecture on one dataset with one mask."""
    def setting(state):
        root = state.spec["root"]
        return {k: root.get(k) for k in ("model", "model_options", "dataset", "data")}

    if setting(a) != setting(b):
        raise SpecError(f"cannot interpolate state {a.run_id[:8]} ({setting(a)}) with state {b.run_id[:8]} "
                        f"({setting(b)}): they need one architecture on one dataset")
    if set(a.masks) != set(b.masks) or any(not torch.equal(a.masks[n], b.masks[n]) for n in a.masks):
        differ = sorted(n for n in set(a.masks) | set(b.masks)
                        if n not in a.masks or n not in b.masks or not torch.equal(a.masks[n], b.masks[n]))
        raise SpecError(f"cannot interpolate state {a.run_id[:8]} with state {b.run_id[:8]}: their masks differ "
                        f"({differ[0]!r}); a linear path is taken between networks with the same mask")


def spawn_point(a, b, data) -> dict | None:
    """Where two sibling copies were spawned: their common parent's key and the time (and iteration) of
    the schedule both trained from, when their (one) train steps differ only in the data order; None
    otherwise."""
    from .spec.steps import TRAIN_SCHEMA
    from .spec.times import parse_time

    parent = a.spec.get("parent_run")
    steps_a, steps_b = a.spec.get("steps") or [], b.spec.get("steps") or []
    if not parent or parent != b.spec.get("parent_run") or len(steps_a) != 1 or len(steps_b) != 1:
        return None
    options_a, options_b = steps_a[0].get("train"), steps_b[0].get("train")
    order = TRAIN_SCHEMA["data_order_seed"].stored_as
    if options_a is None or options_b is None or \
            {k: v for k, v in options_a.items() if k != order} != {k: v for k, v in options_b.items() if k != order}:
        return None
    start = options_a.get("schedule_from", TRAIN_SCHEMA["schedule_from"].default)
    iteration = parse_time(start).iterations(data.batches_per_epoch(options_a["batch_size"]))
    return {"key": a.spec.get("parent_key"), "time": start, "iteration": iteration}


def _finite_or_null(value):
    """JSON has no NaN or infinity: such a number (a diverged point) is written as null."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def run_interpolate(ctx: StepContext, parent, options: dict):
    """Error and loss of the networks (1 - α)·a + α·b on the linear path from the parent (a) to the input
    b, masks applied, at `alphas` evenly spaced points: the instability (Frankle et al. 2020: the
    largest test error on the path minus the mean of the endpoints') and the loss barrier.

    At α = 0 and α = 1 the networks are a and b themselves and are evaluated exactly as every state
    is (`evaluate_test`), so those errors are the states' own 1 - test_accuracy (with ``bn_reset``
    their statistics are recomputed too, like every other point's).
    """
    import io
    import json

    from .report.figures import plot_interpolation
    from .training.loop import evaluate, has_batchnorm, recompute_batchnorm

    a, b = parent, ctx.inputs["b"]
    _same_network_kind(a, b)
    device = ctx.workspace.device
    model = ctx.workspace.blank(ctx.root, ctx.data)
    with_bn = has_batchnorm(model)
    reset = with_bn if options["bn_reset"] is None else options["bn_reset"]
    if reset and not with_bn:
        raise SpecError(f"interpolate: bn_reset is true but {ctx.root['model']} has no BatchNorm layer")
    alphas = analysis.interpolation_alphas(options["alphas"])
    curves = {"test": {"error": [], "loss": []}}
    if options["train_set"]:
        curves["train"] = {"error": [], "loss": []}
    bn_batches = 0
    for i, alpha in enumerate(alphas):
        model.load_state_dict(analysis.interpolate_weights(a.weights, b.weights, alpha, a.masks))
        model.to(device)
        if reset:
            bn_batches = recompute_batchnorm(model, ctx.data.train_batches(BN_RESET_BATCH_SIZE, seed=ctx.root["seed"],
                                                                            epoch=0), device=device)
        model.eval()
        measured = {"test": ctx.data.test_batches(256)}
        if options["train_set"]:
            measured["train"] = ctx.data.train_eval_batches(256)
        for split, batches in measured.items():
            loss, accuracy = evaluate(model, batches, device=device)
            curves[split]["error"].append(1.0 - accuracy)
            curves[split]["loss"].append(loss)
        ctx.heartbeat()
        if ctx.progress is not None:
            ctx.progress(f"interpolate α={alpha:.3f} ({i + 1}/{len(alphas)}): test error "
                         f"{curves['test']['error'][-1]:.4f}")
    metrics = {names.M_INSTABILITY: analysis.barrier_height(curves["test"]["error"]),
               names.M_BARRIER_LOSS: analysis.barrier_height(curves["test"]["loss"])}
    if "train" in curves:
        metrics[names.M_TRAIN_INSTABILITY] = analysis.barrier_height(curves["train"]["error"])
        metrics[names.M_TRAIN_BARRIER_LOSS] = analysis.barrier_height(curves["train"]["loss"])
    spawn = spawn_point(a, b, ctx.data)
    if spawn is not None:
        metrics[names.M_SPAWN_ITERATION] = spawn["iteration"]
    result = {"alphas": alphas, **curves, "metrics": metrics, "bn_reset": reset,
              "bn_reset_batches": bn_batches, "a": a.spec["key"], "b": b.spec["key"], "spawn": spawn}
    title = (f"{ctx.root['model']}: a {a.run_id[:8]} → b {b.run_id[:8]}"
             + (f", copies spawned at {spawn['time']}" if spawn else "")
             + f"; instability {100 * metrics[names.M_INSTABILITY]:.2f}%")
    figure = plot_interpolation(alphas, curves, title=title, bn_reset=reset)
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    files = {names.INTERPOLATION_FILE: json.dumps(_finite_or_null(result), indent=1, allow_nan=False).encode(),
             names.INTERPOLATION_FIGURE_FILE: png.getvalue()}
    return metrics, files
