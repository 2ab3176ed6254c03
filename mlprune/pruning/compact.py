"""The compact network: a pruned state with its removed channels physically gone, and what it costs.

`compact_state` slices a state's tensors down to the channels something still reads
(`pruning.structure`: a channel group's *unread* units go, with their filters, biases and
BatchNorm entries); the result is a plain, smaller network whose outputs equal the masked
model's. Its architecture is data, never code:

``compact.json``::

    {"format": "mlprune.compact/1",
     "model": "resnet20", "model_options": {...}, "num_classes": 10, "input_shape": [3, 32, 32],
     "modules": {"layer1.0.conv1": {"in_channels": 9, "out_channels": 8}, "layer1.0.bn1": {"num_features": 8},
                 "layer2.0.shortcut": {"in_channels": 9, "index": [...]}, "fc": {"in_features": 40}, ...},
     "params": ..., "flops": ..., "groups": [{"name", "units", "kept"}], "source": {...}}

``compact.safetensors``: the compact tensors (state_dict names of the original architecture).
`rebuild` makes the catalog's model and gives each listed module its new sizes; `load`
reads a directory written by `write` (`mlprune export RUN_ID DIR --compact`).

`latency_ms` times forward passes (eval mode, no grad) of several networks, interleaved so
that a change of load on the machine hits them alike; the median of each.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import names
from ..errors import SpecError

FORMAT = "mlprune.compact/1"

__all__ = ["Compact", "compact_state", "rebuild", "write", "load", "latency_ms", "max_abs_diff"]


@dataclass
class Compact:
    arch: dict  # compact.json (without params/flops until `measure`)
    weights: dict  # compact tensors
    removed: dict = field(default_factory=dict)  # group name -> removed units

    @property
    def shrunk(self) -> bool:
        return any(self.removed.values())


# --------------------------------------------------------------------------- slicing


def _keep_positions(size: int, gone: set) -> torch.Tensor:
    return torch.tensor([i for i in range(size) if i not in gone], dtype=torch.long)


def compact_state(
    model: nn.Module,
    weights: dict,
    masks: dict,
    groups: list,
    *,
    model_name: str,
    model_options: dict | None,
    num_classes: int,
    input_shape,
) -> Compact:
    """Slice `weights` (a state_dict of `model`'s architecture; masked entries are zeros) to the
    channels something reads. `groups`: `pruning.structure.channel_groups(model, input_shape)`."""
    from ..models.nets import ZeroPadShortcut
    from .structure import unread_units

    effective = {n: (t * masks[n] if n in masks else t) for n, t in weights.items()}
    gone: dict[tuple[str, int], set] = {}
    pad_gone: dict[tuple[str, str], set] = {}
    removed = {}
    for group in groups:
        units = unread_units(group, masks)
        removed[group.name] = len(units)
        for slot in group.members:
            positions = {p for u in units for p in slot.positions[u]}
            if not positions:
                continue
            if slot.role in ("pad_in", "pad_out"):
                pad_gone.setdefault((slot.tensor, slot.role), set()).update(positions)
            else:
                gone.setdefault((slot.tensor, slot.dim), set()).update(positions)
    out = {}
    for name, tensor in effective.items():
        t = tensor
        for dim in range(t.dim()):
            drop = gone.get((name, dim))
            if drop:
                t = t.index_select(dim, _keep_positions(t.shape[dim], drop))
        out[name] = t.contiguous()

    modules = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            w = out[f"{prefix}weight"]
            if tuple(w.shape) != tuple(module.weight.shape):
                modules[name] = {"in_channels": int(w.shape[1]) * module.groups, "out_channels": int(w.shape[0])}
        elif isinstance(module, nn.Linear):
            w = out[f"{prefix}weight"]
            if tuple(w.shape) != tuple(module.weight.shape):
                modules[name] = {"in_features": int(w.shape[1]), "out_features": int(w.shape[0])}
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            n = (
                int(out[f"{prefix}running_mean"].shape[0])
                if module.running_mean is not None
                else int(out[f"{prefix}weight"].shape[0])
            )
            if n != module.num_features:
                modules[name] = {"num_features": n}
        elif isinstance(module, ZeroPadShortcut):
            in_gone = pad_gone.get((name, "pad_in"), set())
            out_gone = pad_gone.get((name, "pad_out"), set())
            if in_gone or out_gone:
                renumber = {
                    old: new for new, old in enumerate(i for i in range(module.in_channels) if i not in in_gone)
                }
                index = [renumber.get(i, -1) if i >= 0 else -1 for o, i in enumerate(module.index) if o not in out_gone]
                modules[name] = {"in_channels": len(renumber), "index": index}
    arch = {
        "format": FORMAT,
        "model": model_name,
        "model_options": dict(model_options or {}),
        "num_classes": int(num_classes),
        "input_shape": [int(s) for s in input_shape],
        "modules": modules,
        "groups": [{"name": g.name, "units": g.units, "kept": g.units - removed[g.name]} for g in groups],
    }
    return Compact(arch, out, removed)


# --------------------------------------------------------------------------- rebuilding


def _resize(module: nn.Module, sizes: dict, where: str) -> None:
    from ..models.nets import ZeroPadShortcut

    def fresh(shape):
        return nn.Parameter(torch.empty(shape))

    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        module.in_channels, module.out_channels = int(sizes["in_channels"]), int(sizes["out_channels"])
        module.weight = fresh((module.out_channels, module.in_channels // module.groups, *module.kernel_size))
        if module.bias is not None:
            module.bias = fresh((module.out_channels,))
    elif isinstance(module, nn.Linear):
        module.in_features, module.out_features = int(sizes["in_features"]), int(sizes["out_features"])
        module.weight = fresh((module.out_features, module.in_features))
        if module.bias is not None:
            module.bias = fresh((module.out_features,))
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        n = module.num_features = int(sizes["num_features"])
        if module.affine:
            module.weight, module.bias = fresh((n,)), fresh((n,))
        if module.track_running_stats:
            module.running_mean, module.running_var = torch.zeros(n), torch.ones(n)
    elif isinstance(module, ZeroPadShortcut):
        module.in_channels = int(sizes["in_channels"])
        module.index = [int(i) for i in sizes["index"]]
    else:
        raise SpecError(
            f"compact architecture resizes {where} ({type(module).__name__}); allowed: conv, linear, "
            f"batch norm and option-A shortcut modules"
        )


def rebuild(arch: dict, weights: dict | None = None) -> nn.Module:
    """The compact network `arch` (compact.json) describes, with `weights` loaded (strict), in eval mode."""
    from ..models import build_model

    if not isinstance(arch, dict) or arch.get("format") != FORMAT:
        raise SpecError(
            f"not a compact architecture (format {arch.get('format') if isinstance(arch, dict) else arch!r});"
            f" allowed: {FORMAT}"
        )
    model = build_model(
        arch["model"],
        num_classes=int(arch["num_classes"]),
        input_shape=tuple(arch["input_shape"]),
        options=arch.get("model_options") or None,
    )
    found = dict(model.named_modules())
    for name, sizes in arch["modules"].items():
        if name not in found:
            raise SpecError(f"compact architecture names module {name!r}, which {arch['model']} does not have")
        _resize(found[name], sizes, name)
    if weights is not None:
        model.load_state_dict(weights, strict=True)
    return model.eval()


def write(directory, compact: Compact) -> list[str]:
    """compact.safetensors and compact.json in `directory` (created); the file names."""
    from safetensors.torch import save

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / names.COMPACT_WEIGHTS_FILE).write_bytes(
        save({name: t.detach().cpu().contiguous() for name, t in compact.weights.items()})
    )
    (out / names.COMPACT_ARCH_FILE).write_text(json.dumps(compact.arch, indent=1, sort_keys=True))
    return [names.COMPACT_WEIGHTS_FILE, names.COMPACT_ARCH_FILE]


def load(directory) -> nn.Module:
    """The compact network in `directory` (written by `mlprune export RUN_ID DIR --compact`), eval mode."""
    from safetensors.torch import load_file

    folder = Path(directory)
    arch_file, weights_file = folder / names.COMPACT_ARCH_FILE, folder / names.COMPACT_WEIGHTS_FILE
    for file in (arch_file, weights_file):
        if not file.is_file():
            raise SpecError(f"{file} is missing; allowed: a directory written by mlprune export RUN_ID DIR --compact")
    try:
        arch = json.loads(arch_file.read_text())
    except json.JSONDecodeError as error:
        raise SpecError(f"{arch_file} is not JSON: {error}") from None
    model = rebuild(arch)
    try:
        weights = load_file(str(weights_file))
    except Exception as error:  # noqa: BLE001 -- safetensors' own errors: a broken file, in one line
        raise SpecError(f"{weights_file} is not a safetensors file: {str(error).splitlines()[0]}") from None
    model.load_state_dict(weights, strict=True)
    return model.eval()


# --------------------------------------------------------------------------- measuring


def parameter_count(model: nn.Module) -> int:
    return sum(int(p.numel()) for p in model.parameters())


@torch.no_grad()
def max_abs_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference of the two networks' outputs on `x` (both in eval mode)."""
    return float((a.eval()(x).float() - b.eval()(x).float()).abs().max())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def latency_ms(
    models: dict,
    input_shape,
    device,
    *,
    batch_sizes=(1, 64),
    warmup: int = 3,
    repeats: int = 15,
    budget_s: float = 2.0,
    min_repeats: int = 3,
) -> dict:
    """{label: {batch size: median milliseconds of one forward pass}} of each network (eval mode).

    The networks are timed in turn, up to `repeats` rounds (after `warmup` untimed ones), alternating
    their order each round, so a change of load on the machine affects them alike. A batch size stops
    after `min_repeats` timed rounds once `budget_s` seconds went into it, and a network whose first
    pass takes over a quarter of the budget is warmed up once: a large network on a CPU (AlexNet's
    27 M parameters: ~1 s a pass at batch 64) costs seconds per state, not a minute. Latency is a
    measurement, never part of a key; fewer rounds only widen its noise.
    """
    device = torch.device(device)
    result = {label: {} for label in models}
    for model in models.values():
        model.eval()
    for batch in batch_sizes:
        x = torch.randn((batch, *tuple(input_shape)), generator=torch.Generator().manual_seed(0)).to(device)
        times = {label: [] for label in models}
        order = list(models)
        spent, warm, timed = 0.0, warmup, 0
        round_ = 0
        while round_ < warm + repeats:
            for label in order if round_ % 2 == 0 else order[::-1]:
                _sync(device)
                started = time.perf_counter()
                models[label](x)
                _sync(device)
                elapsed = time.perf_counter() - started
                spent += elapsed
                if round_ >= warm:
                    times[label].append(1000.0 * elapsed)
            if round_ >= warm:
                timed += 1
            elif round_ == 0 and spent > budget_s / 4:
                warm = 1
            round_ += 1
            if timed >= min_repeats and spent > budget_s:
                break
        for label in models:
            result[label][batch] = statistics.median(times[label])
    return result
