"""Computing one state: the step runners and the state's measurements (torch).

- `network`: the network steps' runners (one per step kind, ``STEP_KINDS[kind].runner``) and
  `compute_node`, which runs a node's steps, evaluates the result and returns what the store saves;
- `evaluations`: `EVALUATIONS`, what every stored network state is measured with;
- `analyses`: the runners of analysis steps (compare, cka, interpolate);
- `compact`: a state's compact network, measured and exported.

The executor (`mlprune.executor`) schedules the states; this package computes one of them.
"""

from __future__ import annotations

from .context import NodeHooks, StepContext, Tensors
from .evaluations import EVALUATIONS, evaluate_state
from .network import Computed, compute_node, run_steps

__all__ = [
    "Computed",
    "NodeHooks",
    "StepContext",
    "Tensors",
    "compute_node",
    "run_steps",
    "EVALUATIONS",
    "evaluate_state",
]
