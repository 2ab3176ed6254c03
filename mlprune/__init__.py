"""mlprune: careful, reproducible neural-network pruning experiments on MLflow.

from mlprune import Experiment, Recipe
root = Experiment("my-study").init(model="lenet", dataset="digits", seed=0)
trained = root.apply(Recipe.train(epochs=5))
"""

import os as _os

from .version import __version__

# States are computed with several torch threads by default (executor.compute_threads). OpenMP's
# threads spin while they wait for work (GNU OpenMP's default policy): on a machine whose cores
# other processes also use, one descheduled thread then stalls every parallel region, and a
# LeNet-300-100 training took 68 s at 2 threads vs 8 s at 1 on a busy 2-core machine; waiting
# passively: 11.5 s. OpenMP reads this when torch loads it, so it counts where mlprune is imported
# before torch (the command line, dask workers); it changes scheduling only, never results.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_LAZY = {
    "Experiment": "api",
    "ExperimentState": "api",
    "Recipe": "api",
    "SpecError": "errors",
    "compile_recipe": "recipes",
    "run_plan": "executor",
    "Execution": "executor",
    # plugins (docs/plugins.md): mlprune.register(Model(...)) in a user's module; the entry kinds
    "register": "plugins",
    "plugin": "plugins",
    "Model": "models.catalog",
    "Dataset": "data.catalog",
    "Method": "pruning.catalog",
    "Strategy": "reinit.catalog",
    # their options: one vocabulary (spec.options)
    "Option": "spec.options",
    "Schema": "spec.options",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    # torch and mlflow take seconds to import: load them when first used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mlprune' has no attribute {name!r}")
