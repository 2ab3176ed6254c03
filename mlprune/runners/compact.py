"""A state's compact network (unread channels physically removed, `pruning.compact`): built from a
stored state, checked against the masked network, measured, exported."""

from __future__ import annotations

import torch

from .. import analysis, names
from ..errors import SpecError
from ..workspace import Workspace


def compact_network(workspace: Workspace, root: dict, data, weights: dict, masks: dict):
    """The state's compact network (`pruning.compact.Compact`): its unread channels physically removed."""
    from ..pruning.compact import compact_state

    return compact_state(
        workspace.blank(root, data),
        weights,
        masks,
        workspace.channel_groups(root, data),
        model_name=root["model"],
        model_options=root.get("model_options"),
        num_classes=data.num_classes,
        input_shape=tuple(data.input_shape),
    )


def check_compact(compact, dense: torch.nn.Module, data, device) -> tuple[torch.nn.Module, dict]:
    """(the rebuilt compact network on `device`, its metrics): parameters, FLOPs and the largest output
    difference to the dense (masked) network on the first test batch (64 examples)."""
    from ..pruning.compact import max_abs_diff, parameter_count, rebuild

    model = rebuild(compact.arch, compact.weights)
    flops = analysis.flops(model, tuple(data.input_shape))[names.M_FLOPS_DENSE]
    model.to(device)
    x, _ = next(iter(data.test_batches(64)))
    metrics = {
        names.M_PARAMS_COMPACT: parameter_count(model),
        names.M_FLOPS_COMPACT: flops,
        names.M_COMPACT_DIFF: max_abs_diff(dense, model, x.to(device)),
    }
    compact.arch["params"], compact.arch["flops"] = metrics[names.M_PARAMS_COMPACT], flops
    compact.arch["check"] = {"max_abs_diff": metrics[names.M_COMPACT_DIFF], "test_examples": int(len(x))}
    return model, metrics


def measure_compact(compact, dense: torch.nn.Module, data, device) -> tuple[torch.nn.Module, dict]:
    """`check_compact`'s network and metrics, and the latencies of both networks on `device`."""
    from ..pruning.compact import latency_ms
    from ..spec.limits import latency_budget

    budget = latency_budget()
    model, metrics = check_compact(compact, dense, data, device)
    times = latency_ms(
        {"dense": dense, "compact": model},
        tuple(data.input_shape),
        device,
        batch_sizes=(1, 64),
        budget_s=budget,
        warmup=3 if budget > 0 else 1,
    )
    metrics.update(
        {
            names.M_LATENCY: times["compact"][64],
            names.M_LATENCY_BATCH1: times["compact"][1],
            names.M_LATENCY_DENSE: times["dense"][64],
            names.M_LATENCY_DENSE_BATCH1: times["dense"][1],
            names.M_SPEEDUP: times["dense"][64] / times["compact"][64],
            names.M_SPEEDUP_BATCH1: times["dense"][1] / times["compact"][1],
        }
    )
    return model, metrics


COMPACT_TOLERANCE = 1e-4  # fp32: a compact network further than this from the masked one is not written


def export_compact(state, directory, *, data_dir: str | None = None) -> dict:
    """Write a stored state's compact network (compact.safetensors, compact.json) to `directory`.

    `state`: a loaded state (weights, masks, spec, run_id). The compact network is checked against
    the masked one on a test batch first; one that differs by more than COMPACT_TOLERANCE is refused
    (SpecError). Returns compact.json's content.
    """
    from ..pruning.compact import write

    workspace = Workspace()
    root = state.spec["root"]
    data = workspace.data(root, data_dir or state.spec.get("data_dir"))
    compact = compact_network(workspace, root, data, state.weights, state.masks)
    dense = workspace.blank(root, data)
    dense.load_state_dict(state.weights)
    dense.eval()
    _, metrics = check_compact(compact, dense, data, workspace.device)
    if not metrics[names.M_COMPACT_DIFF] <= COMPACT_TOLERANCE:
        raise SpecError(
            f"the compact network of {state.run_id[:8]} differs from the masked one by "
            f"{metrics[names.M_COMPACT_DIFF]:.3g} on a test batch; allowed: <= {COMPACT_TOLERANCE:g} "
            f"(an architecture whose channels were not traced right)"
        )
    compact.arch["source"] = {"run_id": state.run_id, "key": state.spec.get("key")}
    compact.arch["removed"] = dict(compact.removed)
    write(directory, compact)
    return compact.arch
