"""Reinitialization: the strategy catalog and the reinit step spec (pure Python).

A reinit step sets the weights of a pruned state before it is retrained: rewind
them to an earlier state (lottery tickets), draw them anew (the random-reinit
control), take their signs (``sign``, ``zhou``), shuffle the mask (``shuffle``),
or keep them (fine-tuning). The tensor maths are in ``reinit.strategies``
(``reinit_weights``, reachable here too); this module imports no torch.

Reinit step spec (``resolve_reinit_step`` makes it canonical)::

    {"strategy": "rewind",      # required: an entry of STRATEGIES
     "to": "root",              # strategies that read a weights source: "root" | "parent" |
                                #   "state:<plan node or run id>"
     "at": "500it",             # ... and a point of the first training to take it at (with to: root):
                                #   "<N>it" / "<N>ep" / an int (epochs); `epoch: k` is `at: k`
     "seed": <int>,             # random strategies only, kept only when given; absent, the executor
                                #   derives one from the state's key
     "reset_optimizer": True}   # every train step starts a fresh optimizer; false is refused

Options given for a strategy that does not use them are a ``SpecError``; the
resolved dict holds exactly the keys that apply, defaults filled.
"""

from __future__ import annotations

from .catalog import STRATEGIES, Strategy, resolve_reinit_step


def __getattr__(name):
    if name == "reinit_weights":
        from .strategies import reinit_weights

        return reinit_weights
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
