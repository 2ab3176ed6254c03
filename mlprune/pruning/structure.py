"""Channel structure: which tensors' slices belong to one channel, traced with Torch-Pruning's DepGraph.

A *channel group* is a set of channels that must be removed together for the network to keep
its shapes: the output channels of a conv / linear layer, the matching entries of its bias and
of the BatchNorm after it, the input slices of every layer that reads them, and, across a
residual connection, every layer that adds into the same sum. Its *units* are the channels
that are removed or kept as one: unit ``u`` of a group touches, in each member tensor, the
positions ``member.positions[u]`` along ``member.dim`` (one position for a channel, several
for the features a flatten makes of one channel, none where the unit does not reach that
tensor).

Members and their roles:

* ``"out"``: a conv / linear weight, dim 0: the unit's filters (what writes the channel);
* ``"in"``: a conv / linear weight, dim 1: the unit's input slice (what reads the channel);
* ``"extra"``: a bias, a BatchNorm weight, bias, running mean or running variance, dim 0;
* ``"pad_in"`` / ``"pad_out"``: a parameter-free `models.nets.ZeroPadShortcut` (ResNet
  option A): it carries input channel ``index[o]`` to output channel ``o``. The two channels
  are one unit (a channel passed through a shortcut is removed on both sides or on neither),
  so a ResNet's residual streams of all stages joined by option-A shortcuts form one group.

A group that reaches the network's output (the classes) or holds a tensor this module does
not know how to slice is ``fixed``: never removed.

Two rules on masks (weight masks: one per conv / linear weight, True = kept):

* a unit is **removed** when every weight slice of it is masked (``"out"`` and ``"in"``):
  nothing writes it and nothing reads it. Its ``"extra"`` entries are then masked too
  (`extra_masks`): they can change nothing, so masking them changes no output, and the
  prune, reinit and train steps keep them at exactly zero;
* a unit is **unread** when every ``"in"`` slice of it is masked: no weight reads it, so
  the compact network (`mlprune.compact`) drops it, and its filters with it.

``coupled`` pruning (`prune_coupled`) removes whole units: it masks every weight slice of the
chosen units, so removed and unread units coincide and the compact network holds exactly the
unmasked weights plus the surviving biases and BatchNorm entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import SpecError

__all__ = [
    "Member",
    "ChannelGroup",
    "channel_groups",
    "removed_units",
    "unread_units",
    "extra_masks",
    "has_removable",
    "has_unread",
    "apply_extra_masks",
    "prune_coupled",
]


@dataclass
class Member:
    """One tensor's (or one option-A shortcut's) share of a group."""

    tensor: str  # state_dict name; for "pad_in" / "pad_out": the shortcut module's name
    dim: int
    role: str  # "out", "in", "extra", "pad_in", "pad_out"
    positions: list  # per unit: the indices along dim it covers (a list, maybe empty)


@dataclass
class ChannelGroup:
    name: str  # the module whose output channels started the group
    units: int
    members: list = field(default_factory=list)
    fixed: str | None = None  # why the group is never removed (None: it can be)

    def weights(self, role: str) -> list[Member]:
        return [m for m in self.members if m.role == role]


# --------------------------------------------------------------------------- tracing


def _pad_pruner():
    """A Torch-Pruning pruner for `ZeroPadShortcut`: input and output channels are separate
    (a conv-like layer to DepGraph); the groups on both sides are joined afterwards by its index."""
    import torch_pruning as tp

    class ZeroPadPruner(tp.pruner.function.BasePruningFunc):
        TARGET_MODULES = None

        def prune_out_channels(self, layer, idxs):
            gone = set(int(i) for i in idxs)
            layer.index = [i for o, i in enumerate(layer.index) if o not in gone]
            return layer

        def prune_in_channels(self, layer, idxs):
            gone = sorted(int(i) for i in idxs)
            keep = [i for i in range(layer.in_channels) if i not in set(gone)]
            new = {old: new for new, old in enumerate(keep)}
            layer.index = [new.get(i, -1) if i >= 0 else -1 for i in layer.index]
            layer.in_channels = len(keep)
            return layer

        def get_out_channels(self, layer):
            return len(layer.index)

        def get_in_channels(self, layer):
            return layer.in_channels

    return ZeroPadPruner()


_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _is_out(dg, handler) -> bool:
    return dg.is_out_channel_pruning_fn(handler)


def channel_groups(model: nn.Module, input_shape) -> list[ChannelGroup]:
    """The channel groups of `model` for inputs of shape (C, H, W), in module order.

    Traced on a copy of the model in eval mode on the CPU with one all-zeros input; the model
    itself is not touched. Raises `SpecError` (one line) when Torch-Pruning cannot trace it.
    """
    import copy

    import torch_pruning as tp

    from ..models.nets import ZeroPadShortcut

    probe = copy.deepcopy(model).cpu().eval()
    names = {module: name for name, module in probe.named_modules()}
    try:
        dg = tp.DependencyGraph().build_dependency(
            probe,
            example_inputs=torch.zeros((1, *tuple(int(s) for s in input_shape))),
            customized_pruners={ZeroPadShortcut: _pad_pruner()},
        )
        raw_groups = list(dg.get_all_groups(root_module_types=_LAYERS))
    except Exception as exc:  # noqa: BLE001 -- anything the tracer cannot follow
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SpecError(f"cannot trace the channel dependencies of {type(model).__name__}: {first}") from None

    traced = []
    for raw in raw_groups:
        root = raw[0].dep.target.module
        units = dg.get_out_channels(root)
        group = ChannelGroup(names.get(root, "?"), int(units))
        slots: dict[tuple, Member] = {}
        for item in raw:
            module, handler = item.dep.target.module, item.dep.handler
            pairs = list(zip(item.root_idxs, item.idxs))
            if not isinstance(module, nn.Module) or isinstance(module, (tp.ops._ElementWiseOp,)):
                continue
            name = names.get(module)
            if name is None:  # Torch-Pruning's own graph ops (reshape, concat, ...): no tensors
                continue
            prefix = f"{name}." if name else ""
            targets = []
            if isinstance(module, _LAYERS):
                if getattr(module, "groups", 1) != 1:
                    group.fixed = f"{name} is a grouped convolution"
                    continue
                if _is_out(dg, handler):
                    targets.append((f"{prefix}weight", 0, "out"))
                    if module.bias is not None:
                        targets.append((f"{prefix}bias", 0, "extra"))
                else:
                    targets.append((f"{prefix}weight", 1, "in"))
            elif isinstance(module, _BN):
                for tensor in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(module, tensor, None) is not None:
                        targets.append((f"{prefix}{tensor}", 0, "extra"))
            elif isinstance(module, ZeroPadShortcut):
                targets.append((name, 0, "pad_out" if _is_out(dg, handler) else "pad_in"))
            elif any(True for _ in module.parameters(recurse=False)) or any(
                True for _ in module.buffers(recurse=False)
            ):
                group.fixed = f"{name} ({type(module).__name__}) holds per-channel tensors mlprune cannot slice"
                continue
            for tensor, dim, role in targets:
                slot = _member(group, slots, (tensor, dim, role))
                for root_index, index in pairs:
                    slot.positions[int(root_index)].append(int(index))
        for slot in group.members:
            slot.positions = [sorted(set(positions)) for positions in slot.positions]
        if not group.fixed and not any(m.role in ("in", "pad_in") for m in group.members):
            group.fixed = "nothing in the network reads it (the network's output)"
        traced.append(group)
    return _join_through_shortcuts(traced, probe)


def _member(group: ChannelGroup, slots: dict[tuple, Member], key: tuple) -> Member:
    """The group's member for (tensor, dim, role), added to the group on first use."""
    if key not in slots:
        slots[key] = Member(*key, [[] for _ in range(group.units)])
        group.members.append(slots[key])
    return slots[key]


def _join_through_shortcuts(groups: list[ChannelGroup], model: nn.Module) -> list[ChannelGroup]:
    """Merge groups joined by option-A shortcuts: input channel index[o] and output channel o are one unit."""
    from ..models.nets import ZeroPadShortcut

    parent: dict[tuple, tuple] = {}

    def find(node):
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    def unit_at(role, module_name):
        for g, group in enumerate(groups):
            for slot in group.members:
                if slot.role == role and slot.tensor == module_name:
                    return g, {pos: u for u, positions in enumerate(slot.positions) for pos in positions}
        return None, {}

    joined = False
    for name, module in model.named_modules():
        if not isinstance(module, ZeroPadShortcut):
            continue
        g_in, in_unit = unit_at("pad_in", name)
        g_out, out_unit = unit_at("pad_out", name)
        if g_in is None or g_out is None:
            continue
        for o, i in enumerate(module.index):
            if i >= 0 and i in in_unit and o in out_unit:
                parent[find((g_in, in_unit[i]))] = find((g_out, out_unit[o]))
                joined = True
    if not joined:
        return groups

    for g, group in enumerate(groups):
        for u in range(group.units):
            find((g, u))
    components: dict[tuple, list[tuple]] = {}
    for node in sorted(parent):
        components.setdefault(find(node), []).append(node)
    # groups that share a component are one group; its units are the components
    group_of = {g: g for g in range(len(groups))}

    def gfind(g):
        while group_of[g] != g:
            g = group_of[g]
        return g

    for nodes in components.values():
        first = gfind(nodes[0][0])
        for g, _ in nodes[1:]:
            group_of[gfind(g)] = first
    merged = []
    for leader in sorted({gfind(g) for g in range(len(groups))}):
        members_of = [g for g in range(len(groups)) if gfind(g) == leader]
        if len(members_of) == 1:
            merged.append(groups[leader])
            continue
        units = [nodes for nodes in components.values() if gfind(nodes[0][0]) == leader]
        units.sort(key=lambda nodes: min(nodes))
        out = ChannelGroup(groups[leader].name, len(units))
        out.fixed = next((groups[g].fixed for g in members_of if groups[g].fixed), None)
        slots: dict[tuple, Member] = {}
        for u, nodes in enumerate(units):
            for g, old in nodes:
                for slot in groups[g].members:
                    key = (slot.tensor, slot.dim, slot.role)
                    if key not in slots:
                        slots[key] = Member(*key, [[] for _ in range(len(units))])
                        out.members.append(slots[key])
                    slots[key].positions[u].extend(slot.positions[old])
        for slot in out.members:
            for positions in slot.positions:
                positions.sort()
        merged.append(out)
    return merged


# --------------------------------------------------------------------------- rules on masks


def _slice_masked(mask: torch.Tensor, dim: int, positions: list) -> bool:
    if not positions:
        return True
    return not bool(mask.index_select(dim, torch.tensor(positions, dtype=torch.long)).any())


def _units_where(group: ChannelGroup, masks: dict, roles: tuple[str, ...]) -> list[int]:
    slots = [m for m in group.members if m.role in roles and m.tensor in masks]
    found = []
    for u in range(group.units):
        if not any(slot.positions[u] for slot in slots):
            continue  # no weight slice of this role: nothing to decide it by
        if all(_slice_masked(masks[slot.tensor], slot.dim, slot.positions[u]) for slot in slots):
            found.append(u)
    return found


def removed_units(group: ChannelGroup, masks: dict) -> list[int]:
    """Units of `group` whose every weight slice ("out" and "in") is masked (none for a fixed group)."""
    if group.fixed:
        return []
    return [
        u for u in _units_where(group, masks, ("out", "in")) if any(slot.positions[u] for slot in group.weights("out"))
    ]


def unread_units(group: ChannelGroup, masks: dict) -> list[int]:
    """Units of `group` no weight reads (every "in" slice masked); a fixed group has none, and one
    unit always stays (a layer without inputs is not a network)."""
    if group.fixed:
        return []
    found = _units_where(group, masks, ("in",))
    if len(found) >= group.units:
        found = found[1:]
    return found


def has_removable(masks: dict) -> bool:
    """Cheap check before tracing: can any unit be removed? Only if some weight has a fully masked
    output slice (a unit's filters are all masked)."""
    for mask in masks.values():
        if mask.dim() >= 2 and not bool(mask.reshape(mask.shape[0], -1).any(dim=1).all()):
            return True
    return False


def has_unread(masks: dict) -> bool:
    """Cheap check before tracing: can any unit be unread? Only if some weight has a fully masked
    input slice."""
    for mask in masks.values():
        if mask.dim() >= 2 and not bool(mask.transpose(0, 1).reshape(mask.shape[1], -1).any(dim=1).all()):
            return True
    return False


def extra_masks(groups: list[ChannelGroup], masks: dict, shapes: dict) -> dict[str, torch.Tensor]:
    """{tensor name: bool mask} for the biases and BatchNorm entries of removed units (True = kept);
    only tensors with something masked. `shapes`: {tensor name: shape} (a state_dict's)."""
    out: dict[str, torch.Tensor] = {}
    for group in groups:
        gone = removed_units(group, masks)
        if not gone:
            continue
        for slot in group.weights("extra"):
            if slot.tensor not in shapes:
                continue
            positions = sorted({p for u in gone for p in slot.positions[u]})
            if not positions:
                continue
            mask = out.setdefault(slot.tensor, torch.ones(shapes[slot.tensor], dtype=torch.bool))
            mask.index_fill_(slot.dim, torch.tensor(positions, dtype=torch.long), False)
    return out


def apply_extra_masks(weights: dict, extras: dict) -> dict:
    """Weights with the masked bias / BatchNorm entries set to exactly 0.0 (a new dict)."""
    return {name: (t.masked_fill(~extras[name], 0.0) if name in extras else t) for name, t in weights.items()}


# --------------------------------------------------------------------------- coupled pruning


def _group_hits(groups, plan, masks):
    """{group index: [(layer, config, member)]}: the selected layers' slices along their dim in each group."""
    from .catalog import METHODS

    hits: dict[int, list] = {}
    for layer, cfg in plan.items():
        if cfg.get("skip"):
            continue
        if not METHODS[cfg["method"]].structured:
            raise SpecError(
                f"layer {layer!r}: coupled pruning removes whole channels; method {cfg['method']!r} "
                f"prunes single weights (allowed: structured methods)"
            )
        role = "out" if cfg["dim"] == 0 else "in"
        for g, group in enumerate(groups):
            for slot in group.members:
                if slot.tensor == layer and slot.role == role and slot.dim == cfg["dim"]:
                    hits.setdefault(g, []).append((layer, cfg, slot))
    return hits


def _same_choice(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k != "dim"} == {k: v for k, v in b.items() if k != "dim"}


def prune_coupled(weights, masks, kinds, step, groups, *, generator, report=None, values=None):
    """One coupled prune step: whole units of channel groups, every weight slice of each removed unit masked.

    Each group that a selected layer's slices (dim 0: its output channels, dim 1: its inputs) fall
    in is pruned once, by the layers' common method and amount (a SpecError when layers of one
    group disagree): the amount is a fraction of the group's remaining units (or a count), the
    candidates are the remaining units these layers' slices touch, and a unit's values are the
    effective weights of all those slices together (the Ln norm of that vector; one random draw
    per unit). Keep-at-least-one and the rounding are those of layer-wise pruning (`mlprune.pruning`).
    Groups are pruned in module order; the generator is consumed only by groups that prune.
    `values` ({layer: tensor}): what a method with a scorer ranks instead of the weights (Taylor's
    w·∂L/∂w, BN-scale's |γ|; `pruning.scores`).
    """
    from .catalog import METHODS, prune_count
    from .masks import checked_weight_and_mask, require_generator
    from .prune_step import layer_plan, resolve_prune_step

    step = resolve_prune_step(step)
    plan = layer_plan(kinds, step)
    new = {name: m.detach().to(torch.bool).clone() for name, m in masks.items()}
    rep = {
        name: (
            {"skip": True, "pruned": 0}
            if cfg.get("skip")
            else {**cfg, "pruned": 0, "unit": "channels", "note": "no channel group to prune"}
        )
        for name, cfg in plan.items()
    }
    for g, hits in sorted(_group_hits(groups, plan, masks).items()):
        group = groups[g]
        layer, cfg, _ = hits[0]
        for other, other_cfg, _ in hits[1:]:
            if not _same_choice(cfg, other_cfg):
                raise SpecError(
                    f"layers {layer!r} and {other!r} remove channels of one group ({group.name}) with "
                    f"different settings; allowed: the same method and amount for every layer of a group"
                )
        if group.fixed:
            for name, _, _ in hits:
                rep[name]["note"] = f"channels of group {group.name} are kept: {group.fixed}"
            continue
        gone = set(removed_units(group, masks))
        candidates = [u for u in range(group.units) if u not in gone and any(slot.positions[u] for _, _, slot in hits)]
        k, note = prune_count(cfg["amount"], len(candidates), f"channels of group {group.name}")
        for name, _, _ in hits:
            rep[name].update(remaining=len(candidates), pruned=k, note=note, group=group.name)
        if k == 0:
            continue
        entry = METHODS[cfg["method"]]
        if entry.random:
            require_generator(cfg["method"], generator)
        if values is not None and any(name not in values for name, _, _ in hits):
            name = next(name for name, _, _ in hits if name not in values)
            raise SpecError(f"layer {name!r}: method {entry.name!r} cannot score it: {entry.unscored or 'no scores'}")
        source = weights if values is None else values
        effective = {name: checked_weight_and_mask(source[name], masks[name])[0] for name, _, _ in hits}
        vectors = []
        for u in candidates:
            parts = [
                effective[name].index_select(slot.dim, torch.tensor(slot.positions[u])).reshape(-1)
                for name, _, slot in hits
                if slot.positions[u]
            ]
            vectors.append(torch.cat(parts))
        options = {o.name: cfg[o.name] for o in entry.options}
        keep = set(int(i) for i in entry.load_units()(vectors, k, generator, options))
        for index, u in enumerate(candidates):
            if index in keep:
                continue
            for slot in group.members:
                if slot.role in ("out", "in") and slot.tensor in new and slot.positions[u]:
                    new[slot.tensor].index_fill_(slot.dim, torch.tensor(slot.positions[u]), False)
    if report is not None:
        report.update({name: {k: v for k, v in entry.items() if v is not None} for name, entry in rep.items()})
    return new
