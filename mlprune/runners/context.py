"""What a step runner receives: the network's tensors (`Tensors`) and everything else it may use
(`StepContext`: the state's key for derived seeds, the root spec, the data, the workspace, the
loaded inputs, the node's history, heartbeats, emitted checkpoints, progress)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..spec.keys import derived_seed
from ..workspace import Workspace


@dataclass
class Tensors:
    weights: dict
    masks: dict


@dataclass(frozen=True)
class NodeHooks:
    """What the executor gives a node's computation besides its inputs: a heartbeat for its claim, the
    checkpoints its last train step emits, progress lines and resumable checkpoints (`compute_node`)."""

    heartbeat: Callable[[], None] = lambda: None
    emit: dict = field(default_factory=dict)  # time text -> fn(model, history, masks)
    progress: Callable[[str], None] | None = None
    checkpointing: object = None  # training.checkpoint.Checkpointing: resumable checkpoints of the node


@dataclass
class StepContext:
    """What a step runner may use besides the current tensors."""

    key: str  # the state's key (derived seeds)
    index: int  # the step's position in the node
    root: dict  # the lineage's resolved root spec
    data: object
    workspace: Workspace
    inputs: dict  # role -> loaded parent state (StoredState)
    history: dict  # per-epoch metrics {name: [(epoch, value)]}, filled by train steps
    heartbeat: Callable[[], None] = lambda: None
    emit: dict = field(
        default_factory=dict
    )  # time text -> fn(model, history, masks): checkpoints of the last train step
    progress: Callable[[str], None] | None = None
    last: bool = False  # the node's last step
    checkpointing: object = None  # training.checkpoint.Checkpointing: resumable checkpoints of the node

    def generator(self, seed: int | None = None) -> torch.Generator:
        return torch.Generator().manual_seed(derived_seed(self.key, self.index) if seed is None else seed)
