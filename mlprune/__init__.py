"""mlprune: careful, reproducible neural-network pruning experiments on MLflow.

    from mlprune import Experiment, Recipe
    root = Experiment("my-study").init(model="lenet", dataset="digits", seed=0)
    trained = root.apply(Recipe.train(epochs=5))
"""

__version__ = "0.2.0"

_LAZY = {
    "Experiment": "api", "ExperimentState": "api", "Recipe": "api",
    "SpecError": "errors", "compile_recipe": "recipes", "run_plan": "execute", "Execution": "execute",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    # torch and mlflow take seconds to import: load them when first used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mlprune' has no attribute {name!r}")
