"""Content keys: the one function that turns what determines a state into its key.

A root's key hashes its resolved spec; a child's key hashes its parent's key,
its resolved steps and the keys of its other inputs (by role), plus the
semantics version. No paths, run ids or timestamps: the same inputs give the
same key on every machine, so a finished state is found again by key.
The planner (`plan.PlanBuilder`), the executor, sweeps and the Python API all
reach a key through `root_key` / `state_key` and nothing else.
"""

from __future__ import annotations

import hashlib
import json

# Bump when the maths of a step changes: old keys then no longer hit (a test pins keys).
SEMANTICS_VERSION = 1


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_key(material: dict) -> str:
    return hashlib.sha256(canonical_json(material).encode()).hexdigest()[:32]


def root_key(resolved_root: dict) -> str:
    """A root state's key from its resolved spec (`spec.steps.resolve_root`)."""
    return content_key({"semantics": SEMANTICS_VERSION, "root": resolved_root})


def state_key(parent_key: str, steps: list, input_keys: dict[str, str]) -> str:
    """A child state's key from its parent's key, its resolved steps and its other inputs' keys."""
    return content_key(
        {
            "semantics": SEMANTICS_VERSION,
            "parent": parent_key,
            "steps": steps,
            "inputs": dict(sorted(input_keys.items())),
        }
    )


def derived_seed(key: str, index: int) -> int:
    """A step's seed derived from its state's key: stable across machines, distinct per branch."""
    return int(hashlib.sha256(f"{key}:{index}".encode()).hexdigest()[:15], 16)
