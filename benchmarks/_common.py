"""Shared pieces of the benchmark suite: synthetic MNIST-shaped data, fresh stores, timing.

Data: ``write_mnist(root, n_train, n_test)`` writes real MNIST IDX files (the format
``load_data("mnist", data_dir=root)`` reads) holding seeded synthetic 28x28 uint8 images
with learnable structure: each class has a smooth random prototype, each sample is its
class's prototype, randomly shifted by up to 2 px, plus noise. A network learns it to
high accuracy in an epoch or two, so pruning and retraining behave as on real data,
and nothing is downloaded. The benchmarks use the real ``mnist`` reader (no test hook
in ``mlprune.data``): the data path is the one users run.

Stores: ``fresh_store(tmp)`` gives a new, empty sqlite store in ``tmp`` (``mlflow.db``,
artifacts in ``tmp/mlruns``). Creating a sqlite store runs MLflow's schema migrations
(about a second, once per store in a user's life); like the test suite, we migrate one
template per process and copy its file, so what is timed is the work of the experiment,
not the migrations. ``migration_s`` reports what the migration costs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import struct
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402

IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _write_idx(path: Path, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    path.write_bytes(head + arr.tobytes())


def synthetic_mnist(n: int, *, seed: int = 0, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 images and (n,) uint8 labels with learnable class structure."""
    proto_rng = np.random.default_rng(12345)  # the same prototypes for every split
    coarse = proto_rng.random((classes, 7, 7))
    protos = np.kron(coarse, np.ones((4, 4)))  # (classes, 28, 28) blocky patterns in [0, 1]
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    shifts = rng.integers(-2, 3, (n, 2))
    images = np.empty((n, 28, 28), dtype=np.float64)
    for c in range(classes):
        idx = np.nonzero(labels == c)[0]
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                sel = idx[(shifts[idx, 0] == dy) & (shifts[idx, 1] == dx)]
                images[sel] = np.roll(protos[c], (dy, dx), axis=(0, 1))
    images = images * 200 + rng.normal(0, 40, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_mnist(root: str | os.PathLike, n_train: int, n_test: int = 2000) -> Path:
    """MNIST IDX files of synthetic data under ``root/MNIST/raw``; returns ``root``."""
    root = Path(root)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    x, y = synthetic_mnist(n_train, seed=1)
    _write_idx(raw / IDX[0], x)
    _write_idx(raw / IDX[1], y)
    x, y = synthetic_mnist(n_test, seed=2)
    _write_idx(raw / IDX[2], x)
    _write_idx(raw / IDX[3], y)
    return root


_TEMPLATE: dict[str, object] = {}


def _template_db() -> Path:
    if "path" not in _TEMPLATE:
        from mlflow.tracking import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="mlprune-bench-template-"))
        started = time.perf_counter()
        MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db").search_experiments()  # migrates
        _TEMPLATE["migration_s"] = time.perf_counter() - started
        _TEMPLATE["path"] = folder / "mlflow.db"
    return _TEMPLATE["path"]


def migration_s() -> float:
    _template_db()
    return float(_TEMPLATE["migration_s"])


def fresh_store(
    folder: str | os.PathLike, experiment: str = "bench", artifacts: str | os.PathLike | None = None
) -> tuple[str, str]:
    """(tracking URI, experiment id) of a new empty sqlite store in ``folder`` (the experiment's
    artifacts in ``artifacts``, default ``folder/mlruns``)."""
    from mlflow.tracking import MlflowClient

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(_template_db(), folder / "mlflow.db")
    uri = f"sqlite:///{folder}/mlflow.db"
    exp_id = MlflowClient(tracking_uri=uri).create_experiment(
        experiment, artifact_location=Path(artifacts or folder / "mlruns").resolve().as_uri()
    )
    return uri, exp_id


BARE_SCRIPT = Path(__file__).resolve().parent / "bare_lottery.py"


def user_env(extra: dict | None = None) -> dict:
    """The environment of a user's shell for a benchmark's processes: this one without mlprune's, MLflow's
    run or OpenMP's variables (a bare baseline sets nothing a user would not; mlprune sets its own), then
    `extra` (its OpenMP variables dropped too)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("MLFLOW_TRACKING", "MLFLOW_EXPERIMENT", "MLFLOW_RUN", "MLPRUNE_", "PYTEST_", "OMP_", "GOMP_", "KMP_")
        )
    }
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env.update({k: v for k, v in (extra or {}).items() if not k.startswith(("OMP_", "GOMP_", "KMP_"))})
    return env


def bare_env(env: dict | None = None) -> dict:
    """A bare baseline's environment: `env` (default: this process's) as `user_env` leaves it, and none of
    mlprune's variables, even those its other side sets (a cache dir, figures off)."""
    return {k: v for k, v in user_env(env).items() if not k.startswith("MLPRUNE_")}


def run_bare(data_dir: str | os.PathLike, *args: str, env: dict | None = None, cwd=None) -> dict:
    """Run ``bare_lottery.py`` as its own process in a user's environment (`env` without its MLPRUNE_* and
    OpenMP variables); its JSON line."""
    import json
    import subprocess
    import sys

    env = bare_env(env)
    proc = subprocess.run(
        [sys.executable, str(BARE_SCRIPT), str(data_dir), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bare script failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def dir_bytes(folder: str | os.PathLike) -> dict[str, int]:
    """{file name: total bytes} of every file under ``folder`` (grouped by base name)."""
    out: dict[str, int] = {}
    for path in Path(folder).rglob("*"):
        if path.is_file():
            out[path.name] = out.get(path.name, 0) + path.stat().st_size
    return out


def median(values) -> float:
    return float(statistics.median(values))


@contextlib.contextmanager
def timer(out: list):
    started = time.perf_counter()
    try:
        yield
    finally:
        out.append(time.perf_counter() - started)


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None
