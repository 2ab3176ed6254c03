"""The analysis step runners: ``(ctx, parent state, options) -> (metrics, files)`` of two stored
networks (mask and weight comparison, linear CKA of layer outputs, the linear interpolation path and
its instability)."""

from __future__ import annotations

import torch

from .. import analysis, names
from ..data.pipeline import test_images
from ..errors import SpecError
from .context import StepContext


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

    from ..models import prunable

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
    record = {
        "layers": values,
        "probe_size": len(probe),
        "batches": estimator.batches,
        "batch_size": options["batch_size"],
        "seed": options["seed"],
        "estimator": "linear CKA, minibatch, unbiased HSIC (Nguyen, Raghu & Kornblith 2021)",
        "activations": "each prunable layer's output (Conv2d / Linear), flattened per example",
    }
    return metrics, {names.CKA_FILE: json.dumps(record, indent=1, allow_nan=True).encode()}


BN_RESET_BATCH_SIZE = 128  # batches of the training set that BatchNorm statistics are recomputed on (one epoch)


def _same_network_kind(a, b) -> None:
    """A one-line SpecError unless a and b are one architecture on one dataset with one mask."""

    def setting(state):
        root = state.spec["root"]
        return {k: root.get(k) for k in ("model", "model_options", "dataset", "data")}

    if setting(a) != setting(b):
        raise SpecError(
            f"cannot interpolate state {a.run_id[:8]} ({setting(a)}) with state {b.run_id[:8]} "
            f"({setting(b)}): they need one architecture on one dataset"
        )
    if set(a.masks) != set(b.masks) or any(not torch.equal(a.masks[n], b.masks[n]) for n in a.masks):
        differ = sorted(
            n
            for n in set(a.masks) | set(b.masks)
            if n not in a.masks or n not in b.masks or not torch.equal(a.masks[n], b.masks[n])
        )
        raise SpecError(
            f"cannot interpolate state {a.run_id[:8]} with state {b.run_id[:8]}: their masks differ "
            f"({differ[0]!r}); a linear path is taken between networks with the same mask"
        )


def spawn_point(a, b, data) -> dict | None:
    """Where two sibling copies were spawned: their common parent's key and the time (and iteration) of
    the schedule both trained from, when their (one) train steps differ only in the data order; None
    otherwise."""
    from ..spec.steps import TRAIN_SCHEMA
    from ..spec.times import parse_time

    parent = a.spec.get("parent_run")
    steps_a, steps_b = a.spec.get("steps") or [], b.spec.get("steps") or []
    if not parent or parent != b.spec.get("parent_run") or len(steps_a) != 1 or len(steps_b) != 1:
        return None
    options_a, options_b = steps_a[0].get("train"), steps_b[0].get("train")
    order = TRAIN_SCHEMA["data_order_seed"].stored_as
    if (
        options_a is None
        or options_b is None
        or {k: v for k, v in options_a.items() if k != order} != {k: v for k, v in options_b.items() if k != order}
    ):
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

    from ..plots import plot_interpolation
    from ..training.loop import evaluate, has_batchnorm, recompute_batchnorm

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
            bn_batches = recompute_batchnorm(
                model, ctx.data.train_batches(BN_RESET_BATCH_SIZE, seed=ctx.root["seed"], epoch=0), device=device
            )
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
            ctx.progress(
                f"interpolate α={alpha:.3f} ({i + 1}/{len(alphas)}): test error {curves['test']['error'][-1]:.4f}"
            )
    metrics = {
        names.M_INSTABILITY: analysis.barrier_height(curves["test"]["error"]),
        names.M_BARRIER_LOSS: analysis.barrier_height(curves["test"]["loss"]),
    }
    if "train" in curves:
        metrics[names.M_TRAIN_INSTABILITY] = analysis.barrier_height(curves["train"]["error"])
        metrics[names.M_TRAIN_BARRIER_LOSS] = analysis.barrier_height(curves["train"]["loss"])
    spawn = spawn_point(a, b, ctx.data)
    if spawn is not None:
        metrics[names.M_SPAWN_ITERATION] = spawn["iteration"]
    result = {
        "alphas": alphas,
        **curves,
        "metrics": metrics,
        "bn_reset": reset,
        "bn_reset_batches": bn_batches,
        "a": a.spec["key"],
        "b": b.spec["key"],
        "spawn": spawn,
    }
    title = (
        f"{ctx.root['model']}: a {a.run_id[:8]} → b {b.run_id[:8]}"
        + (f", copies spawned at {spawn['time']}" if spawn else "")
        + f"; instability {100 * metrics[names.M_INSTABILITY]:.2f}%"
    )
    figure = plot_interpolation(alphas, curves, title=title, bn_reset=reset)
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    files = {
        names.INTERPOLATION_FILE: json.dumps(_finite_or_null(result), indent=1, allow_nan=False).encode(),
        names.INTERPOLATION_FIGURE_FILE: png.getvalue(),
    }
    return metrics, files
