"""Run options: how states are computed (device, threads, determinism, memory format, compile, checkpoint
cadence, sibling batches), none of it part of a key (recorded as params and tags)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecError
from .threads import pinned_threads


@dataclass
class RunOptions:
    """How states are computed; none of it is part of a key (recorded as tags / params).

    ``deterministic``, ``channels_last`` and ``compile`` change results by floating-point noise at
    most (on the CPU every state is bitwise reproducible without them): torch's deterministic
    algorithms and the cuBLAS workspace config (GPU runs repeat bitwise), the channels_last memory
    format and torch.compile for training (speed on GPUs).
    """

    device: str | None = None       # auto, cpu, cuda, cuda:N, mps (None: MLPRUNE_DEVICE, else auto)
    threads: int | None = None      # torch threads per state (None: MLPRUNE_THREADS, else compute_threads)
    data_dir: str | None = None     # where datasets are read (None: the root's recorded data_dir, else the default)
    deterministic: bool = False     # torch.use_deterministic_algorithms + CUBLAS_WORKSPACE_CONFIG
    channels_last: bool = False     # train in the channels_last memory format
    compile: bool = False           # train through torch.compile
    checkpoint_every: str | None = None  # resumable checkpoints: "<N>ep" / "<N>it" / "off" (None: "1ep")
    batch: int = 1                  # sibling trainings trained together as one batch, at most (`batching`)

    def resolved(self) -> "RunOptions":
        from ..spec.times import checkpoint_cadence
        from ..training.devices import check_device_name
        from ..spec.limits import latency_budget
        from .resume import checkpoint_budget

        for name in ("deterministic", "channels_last", "compile"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise SpecError(f"run option {name} must be true or false, got {value!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise SpecError(f"run option threads must be an integer >= 1, got {self.threads!r}")
        checkpoint_budget()  # the environment's, checked before any run is created
        latency_budget()
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise SpecError(f"run option batch must be an integer >= 1, got {self.batch!r}")
        # threads left None are resolved when something is computed (Execution.run): counting the
        # cores imports torch, which a fully cached run never needs
        return RunOptions(check_device_name(self.device), self.threads or pinned_threads(),
                          str(self.data_dir) if self.data_dir else None, self.deterministic, self.channels_last,
                          self.compile, checkpoint_cadence(self.checkpoint_every), self.batch)


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
