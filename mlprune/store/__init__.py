"""The state store: the only package that talks to MLflow (with the MLflow plugin).

- ``core``: `Store` (runs, search by key, writing and reading states, integrity);
- ``claims``: who computes a state when several processes need it;
- ``artifacts``: the files of a state (safetensors, state.json) and their hashes;
- ``experiments``: tracking URIs, server checks, creating stores and experiments safely;
- ``workflow``: the run a recipe or sweep works in.
"""

from .artifacts import IntegrityError
from .claims import ClaimLost, claim_timeout
from .core import Record, Store, StoredState, open_experiment
from .experiments import check_tracking, is_server, tracking_uri
from .workflow import WorkflowRun

__all__ = [
    "Record",
    "Store",
    "StoredState",
    "open_experiment",
    "WorkflowRun",
    "ClaimLost",
    "claim_timeout",
    "IntegrityError",
    "check_tracking",
    "is_server",
    "tracking_uri",
]
