"""Resumable checkpoints of a training: what determines the rest of it, captured, written and restored.

A checkpoint is taken right after an optimizer step ``iteration`` of one train step of a node
(the network being trained: one training, one network) and holds everything the rest of that
training depends on:

- the module's ``state_dict`` (weights and buffers: BatchNorm statistics), and the masks training
  enforces (gradual pruning tightens them; removed channels' bias / BatchNorm masks included);
- the optimizer's state (momentum buffers, Adam moments and step counts) and the fp16 GradScaler's;
- the position: ``iteration`` is the whole schedule's position. The LR is a function of it, the
  data order and the augmentation draws are reseeded per (seed, epoch) and skipped to the batch
  (``Data.train_batches(skip=)``), dropout is reseeded per (seed, iteration), gradual pruning's
  steps are iterations: nothing else has a position to save;
- the per-epoch history of this training so far and the partial sums of the epoch in progress
  (train loss and accuracy accumulators, the batch count), so a checkpoint taken mid-epoch
  resumes bitwise;
- the node: which of its steps is training (``step``) and its history before that step (the
  histories and iteration count of earlier train steps: a reinit+train, two trainings).

Format (``format`` 1, per training, one network; batched trainings store one per network):
``checkpoint.safetensors`` holds every tensor, named ``model/<name>``, ``mask/<name>``,
``optimizer/<parameter index>/<state name>`` and ``sums/loss`` (float64) / ``sums/hits``
(int64); ``checkpoint.json`` holds the rest (key, step, iteration, the optimizer's non-tensor
state values, the GradScaler's state, the batch count and LR of the epoch in progress, the
histories, and for people: mlprune version, device, threads). Nothing is pickled.

`Checkpointing` is one node's session: the checkpoint it resumes from (if any), the cadence
(run option ``checkpoint_every``), and `TrainingHooks` for each of its trainings, which
`training.loop.train` calls. Capturing copies the tensors in the training thread (a few
milliseconds); serializing, hashing and committing them (``commit``, the store's) run in a
background thread, one checkpoint at a time. On a stop request (`training.interrupt`) the
checkpoint is committed before `Interrupted` is raised.

The cadence names the points where a checkpoint is due; one is written there unless that
would make checkpoints cost more than their *budget*, a share of the training's time
(``MLPRUNE_CHECKPOINT_BUDGET``, default 0.05: `executor.resume.checkpoint_budget`): a due
checkpoint is skipped while the previous one is still being written, or when less than
cost / budget seconds passed since the previous one (cost: what the previous one took, capture
and write). Epochs of seconds or more are checkpointed every time; epochs of milliseconds
(digits) every few. ``inf`` writes every due checkpoint (waiting for the previous one). A stop
request always writes one.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .. import names
from ..errors import SpecError
from ..spec.times import CHECKPOINTS_OFF, checkpoint_cadence, parse_time
from .interrupt import interrupted, stop_requested

FORMAT = 1
log = logging.getLogger("mlprune.checkpoint")
_LAST_COST = [0.0]  # seconds the last checkpoint of this process cost: a new training's first estimate

_MODEL, _MASK, _OPTIMIZER, _SUMS = "model/", "mask/", "optimizer/", "sums/"


class CheckpointError(SpecError):
    """A checkpoint that cannot be used: unreadable, of another format or of another state."""


@dataclass
class TrainingCheckpoint:
    """One training's resumable state after `iteration` optimizer steps of its schedule (see the module)."""

    key: str  # the key of the state being computed
    step: int  # the train step's index in its node
    iteration: int  # schedule iterations done: the position of LR, data order, dropout, pruning
    model: dict  # state_dict tensors (CPU)
    masks: dict  # the masks training enforces (CPU, bool)
    optimizer: dict  # {parameter index: {state name: tensor or plain value}}
    scaler: dict | None  # GradScaler.state_dict() (fp16), else None
    sums: dict  # the epoch in progress: loss (float64), hits (int64), count, lr
    history: dict  # this training's per-epoch history so far
    node_history: dict  # the node's history before this step
    info: dict = field(default_factory=dict)  # mlprune version, device, threads: for people

    def files(self) -> dict[str, bytes]:
        """{file name: bytes}: the tensors as safetensors, the rest as JSON."""
        from safetensors.torch import save

        tensors = {_MODEL + n: t for n, t in self.model.items()}
        tensors.update({_MASK + n: t for n, t in self.masks.items()})
        values: dict[str, dict] = {}
        for index, state in self.optimizer.items():
            for name, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{_OPTIMIZER}{index}/{name}"] = value
                else:
                    values.setdefault(str(index), {})[name] = value
        tensors[_SUMS + "loss"], tensors[_SUMS + "hits"] = self.sums["loss"], self.sums["hits"]
        meta = {
            "format": FORMAT,
            "key": self.key,
            "step": self.step,
            "iteration": self.iteration,
            "optimizer_values": values,
            "optimizer_indices": sorted(int(i) for i in self.optimizer),
            "scaler": self.scaler,
            "sums": {"count": self.sums["count"], "lr": self.sums["lr"]},
            "history": self.history,
            "node_history": self.node_history,
            "info": self.info,
        }
        # the key in the tensors' own metadata too: tensors of another state's checkpoint are never taken for this one's
        return {
            names.CHECKPOINT_TENSORS_FILE: save(
                {n: t.contiguous() for n, t in tensors.items()},
                metadata={"key": self.key, "iteration": str(self.iteration)},
            ),
            names.CHECKPOINT_META_FILE: json.dumps(meta, sort_keys=True).encode(),
        }

    @classmethod
    def from_files(cls, files: dict[str, bytes], *, key: str) -> TrainingCheckpoint:
        """The checkpoint in `files`; a one-line CheckpointError if it is unreadable or not of `key`."""
        from safetensors.torch import load

        try:
            meta = json.loads(files[names.CHECKPOINT_META_FILE])
        except (KeyError, ValueError, UnicodeDecodeError) as error:
            raise CheckpointError(
                f"{names.CHECKPOINT_META_FILE} is not readable JSON ({type(error).__name__})"
            ) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{names.CHECKPOINT_META_FILE} is not a format-{FORMAT} checkpoint")
        if meta.get("key") != key:
            raise CheckpointError(f"it is a checkpoint of state {meta.get('key')}, not of {key}")
        try:
            tensors = load(files[names.CHECKPOINT_TENSORS_FILE])
        except Exception as error:  # noqa: BLE001 - a truncated or foreign file: one line
            raise CheckpointError(
                f"{names.CHECKPOINT_TENSORS_FILE} is not readable safetensors ({' '.join(str(error).split())[:100]})"
            ) from None
        owner = _tensors_metadata(files[names.CHECKPOINT_TENSORS_FILE])
        if owner.get("key") != key or owner.get("iteration") != str(meta.get("iteration")):
            raise CheckpointError(
                f"its tensors are of state {owner.get('key')} at iteration {owner.get('iteration')}, "
                f"not of {key} at iteration {meta.get('iteration')}"
            )
        if not (
            isinstance(meta.get("iteration"), int)
            and meta["iteration"] >= 0
            and isinstance(meta.get("step"), int)
            and meta["step"] >= 0
        ):
            raise CheckpointError(
                f"its step {meta.get('step')!r} and iteration {meta.get('iteration')!r} are not counts >= 0"
            )
        for name, tensor in tensors.items():
            if name.startswith(_MASK) and tensor.dtype != torch.bool:
                raise CheckpointError(f"its mask {name[len(_MASK) :]!r} is {tensor.dtype}, not bool")
        try:
            optimizer = {int(i): {} for i in meta["optimizer_indices"]}
            for index, state in meta["optimizer_values"].items():
                optimizer[int(index)].update(state)
            for name, tensor in tensors.items():
                if name.startswith(_OPTIMIZER):
                    index, state_name = name[len(_OPTIMIZER) :].split("/", 1)
                    optimizer[int(index)][state_name] = tensor
            return cls(
                key=key,
                step=int(meta["step"]),
                iteration=int(meta["iteration"]),
                model={n[len(_MODEL) :]: t for n, t in tensors.items() if n.startswith(_MODEL)},
                masks={n[len(_MASK) :]: t for n, t in tensors.items() if n.startswith(_MASK)},
                optimizer=optimizer,
                scaler=meta["scaler"],
                sums={
                    "loss": tensors[_SUMS + "loss"],
                    "hits": tensors[_SUMS + "hits"],
                    "count": int(meta["sums"]["count"]),
                    "lr": float(meta["sums"]["lr"]),
                },
                history=_histories(meta["history"]),
                node_history=_histories(meta["node_history"]),
                info=dict(meta.get("info") or {}),
            )
        except (KeyError, ValueError, TypeError, AttributeError) as error:
            raise CheckpointError(
                f"the checkpoint's files do not fit together ({type(error).__name__}: "
                f"{' '.join(str(error).split())[:100]})"
            ) from None


def _tensors_metadata(content: bytes) -> dict:
    """The metadata a safetensors file carries in its header ({} without)."""
    try:
        size = int.from_bytes(content[:8], "little")
        metadata = json.loads(content[8 : 8 + size]).get("__metadata__") or {}
    except (ValueError, UnicodeDecodeError, AttributeError):
        return {}
    return metadata if isinstance(metadata, dict) else {}


def _histories(saved: dict) -> dict:
    """Histories as training keeps them: {name: [(epoch, value)]}; other entries (an iteration count, a
    recorded divergence) as they were."""
    out = {}
    for name, value in saved.items():
        if isinstance(value, list) and all(isinstance(point, list) for point in value):
            out[name] = [tuple(point) for point in value]
        elif isinstance(value, list):
            out[name] = tuple(value)
        else:
            out[name] = value
    return out


def _copied_history(history: dict) -> dict:
    return {name: list(value) if isinstance(value, list) else value for name, value in history.items()}


class TrainingParts(NamedTuple):
    """What a training is made of (`TrainingHooks.begin` receives them once they exist)."""

    model: torch.nn.Module
    masks: dict
    optimizer: object
    scaler: object  # fp16's GradScaler, else None
    history: dict


def capture(
    parts: TrainingParts, *, key: str, step: int, iteration: int, sums, node_history: dict, info: dict
) -> TrainingCheckpoint:
    """A checkpoint of a training right now: every tensor copied to the CPU (the training goes on)."""
    model, masks, optimizer, scaler, history = parts

    def cpu(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", copy=True).contiguous()

    state = {
        int(index): {name: cpu(value) if isinstance(value, torch.Tensor) else value for name, value in values.items()}
        for index, values in optimizer.state_dict()["state"].items()
    }
    total, hits, count, lr = (
        sums if sums is not None else (torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64), 0, 0.0)
    )
    return TrainingCheckpoint(
        key=key,
        step=step,
        iteration=iteration,
        model={name: cpu(t) for name, t in model.state_dict().items()},
        masks={name: cpu(m).to(torch.bool) for name, m in masks.items()},
        optimizer=state,
        scaler=(scaler.state_dict() or None) if scaler is not None else None,
        sums={"loss": cpu(total), "hits": cpu(hits), "count": int(count), "lr": float(lr)},
        history=_copied_history(history),
        node_history=_copied_history(node_history),
        info=dict(info),
    )


def restore_network(checkpoint: TrainingCheckpoint, model: torch.nn.Module, masks: dict) -> None:
    """Put the checkpoint's weights and buffers into `model` and its masks into `masks` (in place, on
    the devices the model and the masks are on)."""
    where = f"checkpoint of state {checkpoint.key} at iteration {checkpoint.iteration}"
    if set(checkpoint.model) != set(model.state_dict()):
        raise CheckpointError(f"{where} does not fit the network: its tensors are not the module's")
    for name, tensor in model.state_dict().items():
        saved = checkpoint.model[name]
        if saved.dtype != tensor.dtype or saved.shape != tensor.shape:
            raise CheckpointError(
                f"{where}: tensor {name!r} is {saved.dtype} {list(saved.shape)}, the network's is "
                f"{tensor.dtype} {list(tensor.shape)}"
            )
    for name, mask in masks.items():
        saved = checkpoint.masks.get(name)
        if saved is None or saved.shape != mask.shape:
            raise CheckpointError(f"{where}: its mask {name!r} is missing or of another shape")
    if set(checkpoint.masks) != set(masks):
        raise CheckpointError(f"{where}: its masks are not the network's")
    model.load_state_dict(checkpoint.model)
    device = next((m.device for m in masks.values()), torch.device("cpu"))
    masks.clear()
    masks.update({name: m.to(device) for name, m in checkpoint.masks.items()})


def restore_optimizer(checkpoint: TrainingCheckpoint, optimizer, scaler) -> None:
    """Put the checkpoint's optimizer (and GradScaler) state into a freshly made optimizer (and scaler)."""
    state = optimizer.state_dict()
    state["state"] = {index: dict(values) for index, values in checkpoint.optimizer.items()}
    optimizer.load_state_dict(state)
    if scaler is not None and checkpoint.scaler:
        scaler.load_state_dict(checkpoint.scaler)


def restored_sums(checkpoint: TrainingCheckpoint, device: torch.device) -> tuple:
    """(loss sum, hits, count, lr) of the epoch in progress at the checkpoint, on `device`."""
    sums = checkpoint.sums
    return sums["loss"].to(device), sums["hits"].to(device), sums["count"], sums["lr"]


class Checkpointing:
    """One node's resumable checkpoints: the one its computation resumes from, and its trainings' hooks.

    ``every``: the cadence (``"1ep"``, ``"500it"``, ``"off"``); ``commit(label, step, iteration, files)``
    stores a checkpoint atomically (the store's; None: nothing is written, stop requests still
    stop); ``resume``: the newest valid checkpoint of the key, if any; ``info``: recorded with every
    checkpoint (mlprune version, device, threads); ``budget``: the share of training time
    checkpoints may cost (the executor's: `executor.resume.checkpoint_budget`; ``inf``: every due one is written).
    """

    def __init__(
        self,
        key: str,
        every: str | None = None,
        *,
        commit: Callable | None = None,
        resume: TrainingCheckpoint | None = None,
        info: dict | None = None,
        warn: Callable[[str], None] | None = None,
        budget: float = math.inf,
    ):
        self.key = key
        self.every = checkpoint_cadence(every)
        self.cadence = None if self.every == CHECKPOINTS_OFF else parse_time(self.every)
        self.commit = commit
        self.resume = resume
        self.info = dict(info or {})
        self.warn = warn or log.warning
        self.budget = budget
        self.cost = _LAST_COST[0]  # seconds the previous checkpoint took (capture and write)
        self.last = time.monotonic()  # when the previous checkpoint was taken (or the training began)
        self.trained = False  # a training of the node ran (its state records resumed_from_iteration)
        self.resumed = False  # a training of the node started from `resume`
        self.attempted = False  # a checkpoint was handed to `commit` (files may exist on the run)
        self.others = False  # set by the executor: other runs of the key hold checkpoints
        self.committed: list[int] = []  # iterations of the checkpoints committed, in order
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._failed = False
        self._lock = threading.Lock()

    def check_resumed(self) -> None:
        """A CheckpointError unless the checkpoint the node resumed from (if any) was a training of it: one whose
        step is not a training would skip steps and train nothing."""
        if self.resume is not None and not self.resumed:
            raise CheckpointError(
                f"checkpoint of state {self.key} at iteration {self.resume.iteration} names step "
                f"{self.resume.step}, which is not a training of this state"
            )

    @property
    def resumed_from(self) -> int:
        """The schedule iteration the node's computation resumed from; 0 when it started from its parent."""
        return self.resume.iteration if self.resume is not None else 0

    def skips(self, index: int) -> bool:
        """Is step `index` of the node done already (the checkpoint is of a later step)?"""
        return self.resume is not None and index < self.resume.step

    def training(self, index: int, node_history: dict) -> TrainingHooks:
        """The hooks of the node's train step `index`; `node_history` (updated in place) is the node's
        history before it, restored from the checkpoint when the node resumes in this step."""
        self.trained = True
        resume = self.resume if self.resume is not None and self.resume.step == index else None
        if resume is not None:
            self.resumed = True
            node_history.clear()
            node_history.update(_copied_history(resume.node_history))
        return TrainingHooks(self, index, node_history, resume)

    # ---- writing -----------------------------------------------------------------------------
    def affordable(self) -> bool:
        """May a due checkpoint be written now without going over the budget?"""
        if self.commit is None:
            return False
        if math.isinf(self.budget):
            return True
        if self._pending is not None and not self._pending.done():
            return False  # the previous one is still being written
        return time.monotonic() - self.last >= self.cost / self.budget

    def submit(self, checkpoint: TrainingCheckpoint, *, wait: bool, capture_s: float = 0.0) -> bool:
        """Write and commit `checkpoint` in the background (one at a time: the previous one is waited
        for first); with `wait`, before returning. False if it could not be committed (warned)."""
        if self.commit is None:
            return False
        self.attempted = True
        with self._lock:
            self.flush()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mlprune-checkpoint-{self.key[:8]}")
            self.last = time.monotonic()
            self._pending = self._pool.submit(self._write, checkpoint, capture_s)
            return self.flush() if wait else True

    def _write(self, checkpoint: TrainingCheckpoint, capture_s: float) -> None:
        started = time.perf_counter()
        label = f"{checkpoint.step}-{checkpoint.iteration}"
        self.commit(label, checkpoint.step, checkpoint.iteration, checkpoint.files())
        self.committed.append(checkpoint.iteration)
        self.cost = _LAST_COST[0] = capture_s + time.perf_counter() - started

    def flush(self) -> bool:
        """Wait for the checkpoint being written; False if it failed (warned once per node)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return True
        try:
            pending.result()
            return True
        except Exception as error:  # noqa: BLE001 - a checkpoint that cannot be stored must not stop the training
            if not self._failed:
                self._failed = True
                self.warn(
                    f"state {self.key[:12]}: a resumable checkpoint could not be stored "
                    f"({type(error).__name__}: {' '.join(str(error).split())[:200]}); training goes on"
                )
            return False

    def close(self) -> None:
        """Wait for the last checkpoint and stop the writer thread."""
        with self._lock:
            self.flush()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


class TrainingHooks:
    """What `training.loop.train` calls for one train step: the checkpoint to resume from, whether one is
    due after an iteration (the cadence, or a stop request), and `save`."""

    def __init__(self, session: Checkpointing, step: int, node_history: dict, resume: TrainingCheckpoint | None):
        self.session, self.step, self.node_history, self.resume = session, step, node_history, resume
        self.every = 0
        self._parts: TrainingParts | None = None

    def begin(self, per_epoch: int, **parts) -> None:
        """Called once the training's parts exist (model, masks, optimizer, scaler, history)."""
        cadence = self.session.cadence
        self.every = cadence.iterations(per_epoch) if cadence is not None else 0
        self._parts = TrainingParts(**parts)
        self.session.last = time.monotonic()

    def due(self, i: int) -> bool:
        """Store a checkpoint after iteration `i`? (polled every iteration: cheap)"""
        return (self.every > 0 and i % self.every == 0) or stop_requested() is not None

    def save(self, i: int, sums) -> None:
        """Checkpoint the training after iteration `i` (`sums`: the epoch in progress, None at an epoch's
        end); on a stop request, once it is committed, raise `Interrupted`."""
        session = self.session
        stop = stop_requested() is not None
        if not stop and not session.affordable():
            return
        started = time.perf_counter()
        checkpoint = capture(
            self._parts,
            key=session.key,
            step=self.step,
            iteration=i,
            sums=sums,
            node_history=self.node_history,
            info=session.info,
        )
        committed = session.submit(checkpoint, wait=stop, capture_s=time.perf_counter() - started)
        if stop:
            raise interrupted(i if committed else None)
