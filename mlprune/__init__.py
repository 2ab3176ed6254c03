"""mlprune: careful, reproducible neural-network pruning experiments on MLflow."""

__version__ = "0.1.0"
