"""Where states are computed: device names, checks and labels.

``device`` is a run option, never part of a key: ``auto`` (CUDA if available,
else MPS, else the CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``; from
``mlprune run --device``, the entry points' ``device`` parameter or
``MLPRUNE_DEVICE``. Asking for one that is not there is a one-line error naming
it and what is available. Weights and masks are always saved from the CPU, so a
state computed anywhere loads anywhere.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path

from .. import names
from ..errors import SpecError
from ..names import ENV_DEVICE

DEVICE_NAMES = "auto, cpu, cuda, cuda:N, mps"
_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(?::\d+)?)$")


def check_device_name(name: str | None) -> str:
    """The device option's text (``MLPRUNE_DEVICE`` when not given), syntax checked without torch."""
    name = (name or os.environ.get(ENV_DEVICE, "") or "auto").strip()
    if not _PATTERN.match(name):
        raise SpecError(f"unknown device {name!r}; allowed: {DEVICE_NAMES}")
    return name


def maybe_accelerator() -> bool:
    """Whether ``auto`` may find a GPU here, told without importing torch: a GPU driver's device files
    (NVIDIA, AMD), or macOS (MPS). A guess that only decides what is prepared early: `resolve_device`
    decides."""
    import sys

    if sys.platform == "darwin":
        return True
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(os.path.exists(path) for path in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg"))


def available() -> list[str]:
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(name: str | None = None):
    """A torch.device for the device option; a one-line SpecError if it is not there."""
    import torch

    name = check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index if device.index is not None else 0
        if index >= count:
            raise SpecError(
                f"device {name!r} is not available here (CUDA devices: {count}); available: {', '.join(available())}"
            )
        return torch.device("cuda", index)
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise SpecError(f"device 'mps' is not available here; available: {', '.join(available())}")
    return device


def device_label(device) -> str:
    """What the state records in ``mlprune.device``: 'cpu', the GPU's model name, 'mps'."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's "model name" on Linux), else platform's processor or machine."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.lower().startswith(("model name", "hardware")) and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.cache
def installed_version(package: str) -> str:
    """A package's ``__version__`` ("none" when it is not installed), read from its ``version.py``
    without importing it when that file sets it as a plain string (torchvision's does: importing
    torchvision costs a second; its distribution's metadata lacks the ``+cu...`` suffix)."""
    import ast
    import importlib
    import importlib.util

    module = sys.modules.get(package)
    if module is not None:
        return module.__version__
    spec = importlib.util.find_spec(package)
    if spec is None:
        return "none"
    for folder in spec.submodule_search_locations or ():
        try:
            tree = ast.parse(Path(folder, "version.py").read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue
        for statement in tree.body:
            if (
                isinstance(statement, ast.Assign)
                and [getattr(t, "id", None) for t in statement.targets] == ["__version__"]
                and isinstance(statement.value, ast.Constant)
                and isinstance(statement.value.value, str)
            ):
                return statement.value.value
    try:
        return importlib.import_module(package).__version__
    except ImportError:
        return "none"


def environment_tags(device) -> dict[str, str]:
    """The ``mlprune.env.*`` tags of a state computed on ``device``: torch, torchvision, Python, CUDA and
    cuDNN versions, the device's name (GPU name or CPU model). Never keyed: a cache hit across versions
    is allowed, and a series that mixes them is warned about by `mlprune compare` and the report."""
    import platform

    import torch

    vision = installed_version("torchvision")
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else ("Apple MPS" if device.type == "mps" else cpu_model())
    )
    return {
        names.TAG_ENV_TORCH: torch.__version__,
        names.TAG_ENV_TORCHVISION: vision,
        names.TAG_ENV_PYTHON: platform.python_version(),
        names.TAG_ENV_CUDA: torch.version.cuda or "none",
        names.TAG_ENV_CUDNN: str(cudnn) if cudnn else "none",
        names.TAG_ENV_DEVICE_NAME: name,
    }
