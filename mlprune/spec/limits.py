"""Upper bounds on counts and lengths: far beyond any real study, checked before anything runs.

A typo (``rounds: 100000``, ``epochs: '1180591620717411303424it'``, ``batch_size: 2**63``)
would otherwise plan for minutes or train until killed. Each bound is a one-line error
naming the value; the option declarations (`spec.steps`) and recipe keys use these
constants, and docs/recipes.md lists them (`LIMITS`), so the errors and the docs come
from one place.
"""

from __future__ import annotations

MAX_EPOCHS = 100_000  # a training's epochs (ImageNet: 90, CIFAR: 160-200)
MAX_ITERATIONS = 100_000_000  # a training's iterations (OpenLTH's longest: 112,000)
MAX_BATCH_SIZE = 1 << 20  # examples per step (large-batch ImageNet: 64k)
MAX_EXAMPLES = 1_000_000_000  # train_size, test_size, val_size (JFT-300M: 3e8)
MAX_IMAGE_SIZE = 8192  # image_size in pixels
MAX_ROUNDS = 1000  # prune -> reinit -> retrain rounds (LTH: 20-30)
MAX_STATES = 20_000  # states in one plan, and in all the plans of a sweep together
MAX_SCORE_BATCHES = 10_000  # batches a score method (SNIP, GraSP) looks at (the papers: 1-10)
MAX_PRUNE_ITERATIONS = 10_000  # SynFlow's score-and-prune iterations (the paper: 100)
MAX_NM_GROUP = 1024  # N:M group size m (hardware: 4, the literature: up to 32)
MAX_COPIES = 100  # spawned copies per spawn point (instability: 2-4)
MAX_SEEDS = 1000  # seeds of a sweep
MAX_THREADS = 4096  # MLPRUNE_THREADS
MAX_LATENCY_BUDGET_S = 3600  # MLPRUNE_LATENCY_BUDGET, seconds of latency timing per batch size
MAX_VALUE_CHARS = 4096  # one -P / -o value (a path is at most 4096 bytes on Linux)

LIMITS = (
    (
        "train `epochs` / `steps` (any time: `at`, `warmup`, milestones, checkpoints)",
        f"{MAX_EPOCHS}ep or {MAX_ITERATIONS}it",
    ),
    ("train `batch_size` (also prune and cka `batch_size`)", str(MAX_BATCH_SIZE)),
    ("root `train_size`, `test_size`, `val_size` (a count)", str(MAX_EXAMPLES)),
    ("root `image_size`", str(MAX_IMAGE_SIZE)),
    ("`rounds`", str(MAX_ROUNDS)),
    ("states in a plan (a recipe; all plans of a sweep together)", str(MAX_STATES)),
    ("prune `batches` (snip, grasp)", str(MAX_SCORE_BATCHES)),
    ("prune `iterations` (synflow)", str(MAX_PRUNE_ITERATIONS)),
    ("prune `m` (nm)", str(MAX_NM_GROUP)),
    ("`spawn.copies`", str(MAX_COPIES)),
    ("seeds of `mlprune sweep --seeds`", str(MAX_SEEDS)),
    ("`MLPRUNE_THREADS`", str(MAX_THREADS)),
    ("characters of a `-P` or `-o` value", str(MAX_VALUE_CHARS)),
)


DEFAULT_LATENCY_BUDGET_S = 2.0


def latency_budget() -> float:
    """Seconds of timing per batch size (`MLPRUNE_LATENCY_BUDGET`, default 2): past it a batch size stops
    after its minimum rounds. 0: the minimum (one warm-up pass, 3 timed rounds), e.g. on a laptop or in tests."""
    import math

    from ..names import ENV_LATENCY_BUDGET

    return env_number(
        ENV_LATENCY_BUDGET,
        DEFAULT_LATENCY_BUDGET_S,
        lambda value: math.isfinite(value) and 0 <= value <= MAX_LATENCY_BUDGET_S,
        f"seconds between 0 and {MAX_LATENCY_BUDGET_S:g}",
    )


def env_number(name: str, default: float, ok, allowed: str) -> float:
    """The number in the environment variable `name` (`default` when it is unset or blank) if `ok(number)`;
    otherwise (not a number, or not ok) a one-line SpecError: "NAME must be <allowed>, got '<text>'"."""
    import math
    import os

    from ..errors import SpecError, shown

    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not ok(value):
        raise SpecError(f"{name} must be {allowed}, got {shown(text)}")
    return value
