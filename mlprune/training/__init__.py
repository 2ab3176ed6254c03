"""Training: the optimizer and LR-schedule catalogs (pure Python), the loop in ``training.loop``.

A train step trains a network for a length of time (``steps``: ``"<N>ep"`` or
``"<N>it"``) with a fresh optimizer. Its learning rate follows ``lr_schedule``
(after an optional linear ``warmup`` from 0), evaluated per iteration from the
position in the whole training, so a training is *prefix-consistent*: stopped at
iteration t (``stop_at``) it equals the first t iterations of the full training,
and one that starts at t (``schedule_from``) continues the schedule and the data
order from there. Lottery-ticket rewinding to iteration k and learning-rate
rewinding both rest on that.

This module imports no torch: recipes are validated with it. ``training.loop``
(``train``, ``evaluate``) and ``training.optimizers`` build on torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry, load_impl

__all__ = [
    "OPTIMIZERS",
    "Optimizer",
    "SCHEDULES",
    "Schedule",
    "PRECISIONS",
    "UNBATCHABLE_PRECISIONS",
    "UNBATCHED_OPTIONS",
    "SPARSITY_SCHEDULES",
    "SparsitySchedule",
    "SPARSE_TRAININGS",
    "SparseTraining",
]


@dataclass(frozen=True)
class Optimizer:
    """One optimizer: its factory ``impl(params, options) -> torch.optim.Optimizer``, the options it reads."""

    name: str
    impl: str
    takes: tuple[str, ...] = ()  # train options that apply to it only (e.g. momentum for sgd)
    help: str = ""

    def load(self):
        return load_impl(self.impl)


OPTIMIZERS: Registry[Optimizer] = Registry("optimizer")
OPTIMIZERS.add(
    Optimizer(
        "sgd", "mlprune.training.optimizers:sgd", takes=("momentum", "nesterov"), help="SGD (with momentum, nesterov)"
    )
)
OPTIMIZERS.add(Optimizer("adam", "mlprune.training.optimizers:adam", help="Adam (L2 weight decay)"))
OPTIMIZERS.add(Optimizer("adamw", "mlprune.training.optimizers:adamw", help="AdamW (decoupled weight decay)"))


@dataclass(frozen=True)
class Schedule:
    """One LR schedule: ``impl(iteration, total, options) -> factor`` of the base LR (pure Python).

    ``length_dependent``: the factor at iteration i depends on the training's total length
    (cosine, linear decay), so a training stopped early is not a shorter training.
    """

    name: str
    impl: str
    options: dict  # option -> default (None = required)
    length_dependent: bool = False
    help: str = ""

    def load(self):
        return load_impl(self.impl)


SCHEDULES: Registry[Schedule] = Registry("lr_schedule kind")
SCHEDULES.add(Schedule("constant", "mlprune.training.schedules:constant", {}, help="the base LR throughout"))
SCHEDULES.add(
    Schedule(
        "multistep",
        "mlprune.training.schedules:multistep",
        {"milestones": None, "gamma": 0.1},
        help="times gamma at each milestone (times, e.g. ['80ep', '120ep'])",
    )
)
SCHEDULES.add(
    Schedule(
        "cosine",
        "mlprune.training.schedules:cosine",
        {},
        length_dependent=True,
        help="cosine decay to 0 over the training",
    )
)
SCHEDULES.add(
    Schedule(
        "linear",
        "mlprune.training.schedules:linear",
        {},
        length_dependent=True,
        help="linear decay to 0 over the training",
    )
)

# train options whose callbacks (`training.sparse`) act on one network's masks and gradients: a training
# that sets one is trained alone, not batched with its siblings
UNBATCHED_OPTIONS = ("sparse_training", "bn_l1")

PRECISIONS = ("fp32", "bf16", "fp16")
# not trained batched (`training.batched`): one gradient scaler would skip every sibling's step when one overflows
UNBATCHABLE_PRECISIONS = ("fp16",)


@dataclass(frozen=True)
class SparsitySchedule:
    """One shape of gradual pruning (train option ``sparsity_schedule``): ``impl(progress) -> share of the
    way from the initial to the final sparsity`` at ``progress`` in [0, 1] of the pruning window (pure Python,
    ``training.schedules``)."""

    name: str
    impl: str
    help: str = ""

    def load(self):
        return load_impl(self.impl)


SPARSITY_SCHEDULES: Registry[SparsitySchedule] = Registry("sparsity_schedule kind")
SPARSITY_SCHEDULES.add(
    SparsitySchedule(
        "agp",
        "mlprune.training.schedules:agp_shape",
        help="Zhu & Gupta 2017's cubic schedule: fast at first, then slower",
    )
)
SPARSITY_SCHEDULES.add(
    SparsitySchedule(
        "linear", "mlprune.training.schedules:linear_shape", help="the sparsity rises linearly over the window"
    )
)


@dataclass(frozen=True)
class SparseTraining:
    """One kind of dynamic sparse training (train option ``sparse_training``): ``impl(weights, dense
    gradients, generator) -> {layer: growth score}`` (``training.sparse``); the drop is by magnitude."""

    name: str
    impl: str
    help: str = ""

    def load(self):
        return load_impl(self.impl)


SPARSE_TRAININGS: Registry[SparseTraining] = Registry("sparse_training kind")
SPARSE_TRAININGS.add(
    SparseTraining("set", "mlprune.training.sparse:random_growth", help="SET (Mocanu et al. 2018): regrow at random")
)
SPARSE_TRAININGS.add(
    SparseTraining(
        "rigl",
        "mlprune.training.sparse:gradient_growth",
        help="RigL (Evci et al. 2020): regrow where the dense gradient is largest",
    )
)


def schedule_of(value) -> dict:
    """A resolved ``lr_schedule`` (a kind's name, or a mapping with 'kind') as a mapping."""
    return {"kind": value} if isinstance(value, str) else dict(value)
