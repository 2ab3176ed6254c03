"""mlprune: careful, reproducible neural-network pruning experiments on MLflow.

from mlprune import Experiment, Recipe
root = Experiment("my-study").init(model="lenet", dataset="digits", seed=0)
trained = root.apply(Recipe.train(epochs=5))
"""

from .version import __version__

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
