"""Run options: how states are computed (device, threads, determinism, memory format, compile, checkpoint
cadence, sibling batches), none of it part of a key (recorded as params and tags).

`RUN_OPTIONS` declares each one once (a `spec.options.Schema`); everything else is generated from it:
the command-line flags of ``mlprune run`` / ``sweep`` / ``step`` (`cli.run_options`), the MLproject
parameters (`mlproject`), the keyword arguments of `api.Experiment`, the params ``run.<name>`` logged
on every state (`run_params`) and the table in docs/training.md (`docs_table`, tested). Adding a run
option is one `Option` here plus the code that uses it (``options.<name>``).
"""

from __future__ import annotations

from ..errors import SpecError
from ..names import RUN_PARAM_PREFIX
from ..spec.options import Option, Schema, boolean, integer, with_doc


def parse_switch(text, name: str) -> bool | None:
    """A run option's switch from the command line or an MLproject parameter: '' / None = not given."""
    if text is None or isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value == "":
        return None
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise SpecError(f"{name} must be true or false, got {text!r}")


def _count_text(text: str, name: str):
    """An integer given as text (a flag, an MLproject parameter)."""
    value = text.strip()
    if not (value.isascii() and value.isdigit()):  # '١٢' and '１２' are digits to str.isdigit, not to us
        raise SpecError(f"{name} must be an integer >= 1, got {text!r}")
    return int(value)


def _device(value, name):
    from ..training.devices import DEVICE_NAMES, check_device_name

    if value is not None and not isinstance(value, str):
        raise SpecError(f"{name} must be one of {DEVICE_NAMES}, got {value!r}")
    return check_device_name(value)


def _threads(value, name):
    """None: MLPRUNE_THREADS, else chosen when something is computed (counting cores imports torch)."""
    from .threads import pinned_threads

    return pinned_threads() if value is None else integer(1)(value, name)


def _data_dir(value, name):
    return str(value) if value else None


def _cadence(value, name):
    from ..spec.times import checkpoint_cadence

    return checkpoint_cadence(value)


_SWITCH = dict(parse=parse_switch, metavar="[true|false]", flag_value="true")

RUN_OPTIONS = Schema(
    "run option",
    (
        Option(
            "device",
            None,
            with_doc(_device, "auto | cpu | cuda | cuda:N | mps"),
            "Where states are computed (not part of any key). Default: MLPRUNE_DEVICE, else auto (CUDA if "
            "available, else MPS, else the CPU).",
            key="never",
            metavar="auto|cpu|cuda|cuda:N|mps",
            param=False,
        ),  # recorded as the tag mlprune.device (the device it ran on)
        Option(
            "threads",
            None,
            with_doc(_threads, "int >= 1"),
            "torch threads per state (default: MLPRUNE_THREADS, else one per core this process may use).",
            key="never",
            cli=False,
            api=False,
        ),
        Option(
            "data_dir",
            None,
            with_doc(_data_dir, "path"),
            "where datasets are read (default: the root's recorded data_dir, else the default).",
            key="never",
            cli=False,
            param=False,
        ),
        Option(
            "deterministic",
            False,
            boolean,
            "torch's deterministic algorithms and the cuBLAS workspace config, so "
            "a GPU run repeats bitwise (slower; recorded as the param run.deterministic). CPU runs are bitwise "
            "reproducible anyway.",
            key="never",
            **_SWITCH,
        ),
        Option(
            "channels_last",
            False,
            boolean,
            "Train in the channels_last memory format (faster convolutions on "
            "GPUs; floating-point noise; recorded as run.channels_last, not part of any key).",
            key="never",
            **_SWITCH,
        ),
        Option(
            "compile",
            False,
            boolean,
            "Train through torch.compile (a one-off compile time per process, then "
            "faster steps; floating-point noise; recorded as run.compile, not part of any key).",
            key="never",
            **_SWITCH,
        ),
        Option(
            "checkpoint_every",
            None,
            with_doc(_cadence, "<N>ep | <N>it | off"),
            "How often a training stores a "
            "resumable checkpoint on its running run (default 1ep; off or 0: only when asked to stop by "
            "SIGTERM/SIGUSR1). A killed run resumes from it when run again. Recorded as run.checkpoint_every, "
            "not part of any key.",
            key="never",
            metavar="<N>ep|<N>it|off",
        ),
        Option(
            "batch",
            1,
            integer(1),
            "Train up to N sibling states (seeds, controls, spawned copies that share one "
            "architecture and one train step but for the data order) together as one batched computation: the "
            "same keys and results up to floating-point summation order (docs/performance.md); recorded as "
            "run.batch. Default 1.",
            key="never",
            parse=_count_text,
            metavar="N",
            steps=False,
        ),
    ),
)


class RunOptions:
    """How states are computed (`RUN_OPTIONS`: one attribute per option); none of it is part of a key.

    ``deterministic``, ``channels_last`` and ``compile`` change results by floating-point noise at
    most (on the CPU every state is bitwise reproducible without them): torch's deterministic
    algorithms and the cuBLAS workspace config (GPU runs repeat bitwise), the channels_last memory
    format and torch.compile for training (speed on GPUs).
    """

    def __init__(self, **values):
        for name in values:
            if name not in RUN_OPTIONS:
                raise TypeError(
                    f"RunOptions() got an unexpected keyword argument {name!r}; run options: "
                    f"{', '.join(RUN_OPTIONS.names)}"
                )
        for option in RUN_OPTIONS:
            setattr(self, option.name, values.get(option.name, option.default))

    def as_dict(self) -> dict:
        """Plain values by name (they travel to workers as JSON)."""
        return {option.name: getattr(self, option.name) for option in RUN_OPTIONS}

    def __eq__(self, other) -> bool:
        return isinstance(other, RunOptions) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        return "RunOptions(" + ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items()) + ")"

    @classmethod
    def from_text(cls, values: dict) -> RunOptions:
        """The options given as text by their flags (command line, MLproject parameters; '' / None: the
        default), checked before the store is opened (the environment's MLPRUNE_* budgets too)."""
        given = {o.name: o.parse_text(values.get(o.name), o.flag) for o in RUN_OPTIONS if o.cli and o.name in values}
        return cls(**given).resolved()

    def resolved(self) -> RunOptions:
        """Every option checked and made canonical (`RUN_OPTIONS`; a one-line SpecError naming it)."""
        from ..spec.limits import latency_budget
        from .resume import checkpoint_budget

        values = {o.name: o.check(getattr(self, o.name), f"run option {o.name}") for o in RUN_OPTIONS}
        checkpoint_budget()  # the environment's, checked before any run is created
        latency_budget()
        return RunOptions(**values)


def run_params(options: RunOptions, **recorded) -> dict:
    """The params ``run.<name>`` of a state computed with `options` (`recorded`: values that differ from
    the options asked for, e.g. ``batch``: the sibling trainings it actually ran with)."""
    values = {**options.as_dict(), **recorded}
    return {RUN_PARAM_PREFIX + o.name: values[o.name] for o in RUN_OPTIONS if o.param}


def cli_options(*, steps: bool = False) -> list[Option]:
    """The run options a command takes as flags (``steps``: the one-step command and entry points)."""
    return [o for o in RUN_OPTIONS if o.cli and (o.steps or not steps)]


def api_options() -> list[Option]:
    """The run options `api.Experiment` takes as keyword arguments."""
    return [o for o in RUN_OPTIONS if o.api]


def docs_table() -> str:
    """The run options as a Markdown table (docs/training.md holds it; a test keeps them equal)."""
    rows = [
        "| option | flag | MLproject / Python | default | takes | param | what it does |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in RUN_OPTIONS:
        flag = f"`{o.flag}`" + ("" if o.steps else " (run, sweep)") if o.cli else "–"
        where = " / ".join(w for w, on in (("parameter", o.cli), ("keyword", o.api)) if on) or "–"
        param = f"`{RUN_PARAM_PREFIX}{o.name}`" if o.param else "–"
        default = "–" if o.default is None else f"`{o.default}`"
        cells = [f"`{o.name}`", flag, where, default, o.doc() or "–", param, o.help]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(docs_table(), end="")
