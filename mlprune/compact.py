"""The documented import path of compact networks: ``mlprune.compact.load(DIRECTORY)`` (what
``mlprune export --compact`` writes). The code lives in `mlprune.pruning.compact`."""

from __future__ import annotations

from .pruning.compact import FORMAT, Compact, load, rebuild

__all__ = ["FORMAT", "Compact", "load", "rebuild"]
