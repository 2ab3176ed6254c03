"""What a state is, before anything runs (pure Python: no torch, no mlflow).

- ``times``: ``"<N>ep"`` / ``"<N>it"`` parsing (`Time`);
- ``options``: `Option` / `Schema`, the declaration of every step option;
- ``limits``: upper bounds on counts, lengths and sizes, and numbers read from the environment;
- ``keys``: canonical JSON, `root_key`, `state_key`, `derived_seed`;
- ``steps``: the step kinds (`STEP_KINDS`) and the resolution of recipe steps.

Import the modules themselves (``from mlprune.spec.keys import state_key``): this package re-exports
nothing, so importing one of them loads no other.
"""
