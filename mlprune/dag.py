"""The experiment-state DAG: states, recipes, content keys and cache lookups.

An `ExperimentState` is a frozen point in a network's life, stored as one
MLflow run. A `Recipe` is an ordered list of steps (prune, reinit, train) that
turns a state into a child state. States are content-addressed: a key hashes
everything that determines the state (parent keys, the steps with defaults
resolved, the other input states' keys, a semantics version), so applying a
recipe whose key already has a FINISHED run returns that run and computes
nothing. Keys hold no paths, run ids or timestamps.

Randomness: the root's `seed` seeds the initialization and, by default, the
training data order of every train step (so retrained networks see the same
batches: one nuisance variable less). Steps that need their own randomness
(random pruning, random reinit, mask shuffling) draw it from the step's `seed`
when given, else from a seed derived from the child's key: reproducible, and
different across branches.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from . import __version__, analysis, models, pruning, reinit, training
from .data import load_data
from .errors import SpecError, choice_error
from .store import TAG_ROOT, ClaimLost, Store

# Bump when the maths of a step changes: old keys then no longer hit.
SEMANTICS_VERSION = 1

STEP_KINDS = ("prune", "reinit", "train")
ROOT_DEFAULTS = {"model": "lenet", "dataset": "digits", "init": "default", "seed": 0}
DATA_DEFAULTS = {"val_size": 0, "augment": None, "image_size": None, "channels": None,
                 "train_size": None, "test_size": None}
_ROLE_OF_STEP = {"prune": "mask", "reinit": "weights"}
_NEEDS_SOURCE = {"rewind", "sign", "zhou", "shuffle"}  # reinit strategies that read a weights source


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_key(material: dict) -> str:
    return hashlib.sha256(canonical_json(material).encode()).hexdigest()[:32]


def state_key(parent_key: str, steps: list, input_keys: dict[str, str]) -> str:
    """A child state's key from its parent's key, its resolved steps and its other inputs' keys.

    Pure: no store needed, so a whole plan's keys can be computed before anything runs.
    """
    return content_key({
        "semantics": SEMANTICS_VERSION,
        "parent": parent_key,
        "steps": steps,
        "inputs": dict(sorted(input_keys.items())),
    })


def resolve_steps(steps) -> tuple[list[dict], dict]:
    """(resolved steps, {role: source as given}) of a recipe's steps. Pure: needs no store.

    A step that reads another state (a reinit's weights source ``to``, a
    ``from_state`` prune's ``from``) has it replaced by ``input:<role>`` in its
    resolved options; the source itself ('root', 'parent', a run id or a state)
    comes back by role, for the caller to resolve to a state and its key.
    """
    if not steps:
        raise SpecError("a recipe needs at least one step (prune, reinit or train)")
    resolved, sources = [], {}
    for step in steps:
        kind, options = resolve_step(_without_states(step))
        raw = next(iter(step.values())) or {}
        source = None
        if kind == "reinit" and options["strategy"] in _NEEDS_SOURCE:
            source = raw.get("to", "root")
        elif kind == "prune" and options["method"] == "from_state":
            source = raw.get("from")
            if source is None:
                raise SpecError("prune method 'from_state' needs 'from': the state whose mask to take")
        if source is not None:
            role = _ROLE_OF_STEP[kind]
            if role in sources:
                raise SpecError(f"a recipe can take its {role} source from one state only")
            sources[role] = source
            if kind == "reinit":
                if options.get("epoch") is not None:  # late rewinding: epoch k of the first training
                    sources[role] = {"epoch": options["epoch"], "of": source}
                options = {**options, "to": f"input:{role}"}
                options.pop("epoch", None)
            else:
                options = {**options, "from": f"input:{role}"}
        resolved.append({kind: options})
    return resolved, sources


def root_state_key(resolved_root: dict) -> str:
    """A root state's key from its resolved spec (`resolve_root`). Pure."""
    return content_key({"semantics": SEMANTICS_VERSION, "root": resolved_root})


def derived_seed(key: str, index: int) -> int:
    """A step's seed derived from its state's key: stable across machines and runs."""
    return int(hashlib.sha256(f"{key}:{index}".encode()).hexdigest()[:15], 16)


def resolve_root(spec: dict) -> dict:
    """Validate a root (init) spec and fill defaults canonically."""
    allowed = set(ROOT_DEFAULTS) | set(DATA_DEFAULTS)
    unknown = set(spec) - allowed - {"data_dir"}
    if unknown:
        raise SpecError(f"unknown root option {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(allowed | {'data_dir'}))}")
    resolved = {k: spec.get(k, v) for k, v in ROOT_DEFAULTS.items()}
    # data options at their default are left out: a new no-op option cannot change old keys
    resolved["data"] = {k: spec[k] for k, v in DATA_DEFAULTS.items() if k in spec and spec[k] != v}
    if resolved["model"] not in models.MODELS and not str(resolved["model"]).startswith("tv:"):
        raise choice_error("model", resolved["model"], list(models.MODELS) + ["tv:<torchvision name>"])
    from .data import DATASETS  # late: keeps the import graph one-way
    if resolved["dataset"] not in DATASETS:
        raise choice_error("dataset", resolved["dataset"], DATASETS)
    if resolved["init"] not in models.INITS:
        raise choice_error("init", resolved["init"], models.INITS)
    seed = resolved["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError(f"seed must be an integer >= 0, got {seed!r}")
    return resolved


def resolve_step(step) -> tuple[str, dict]:
    """('prune' | 'reinit' | 'train', resolved options) of one recipe step."""
    if not isinstance(step, dict) or len(step) != 1:
        raise SpecError(f"a step is a mapping with one key out of {', '.join(STEP_KINDS)}; got {step!r}")
    (kind, options), = step.items()
    options = dict(options or {})
    if kind == "prune":
        if options.get("method") == "from_state":
            unknown = set(options) - {"method", "from"}
            if unknown:
                raise SpecError(f"unknown from_state option {sorted(unknown)[0]!r}; allowed: method, from")
            return kind, {"method": "from_state"}
        options.pop("from", None)
        return kind, pruning.resolve_prune_step(options)
    if kind == "reinit":
        resolved = reinit.resolve_reinit_step({k: v for k, v in options.items() if not isinstance(v, ExperimentState)})
        if resolved.get("reset_optimizer") is False:
            # states store weights and masks, not optimizer moments: every train step starts a new optimizer
            raise SpecError("reset_optimizer: false is not supported: each train step starts a fresh optimizer "
                            "(states do not store optimizer moments)")
        return kind, resolved
    if kind == "train":
        options.pop("checkpoints", None)  # where to emit intermediate states: not part of the state
        return kind, training.resolve_train_step(options)
    raise choice_error("step", kind, STEP_KINDS)


def train_checkpoints(steps) -> list[int]:
    """Epochs at which the recipe's final train step emits intermediate states.

    Training is prefix-consistent (constant learning rate, data order seeded by
    (seed, epoch), a new optimizer per step), so the state after epoch k of an
    E-epoch training is bitwise the state of the same recipe with epochs=k, and
    gets that recipe's key: a checkpoint is an ordinary, cached state.
    """
    found = []
    for index, step in enumerate(steps):
        (kind, options), = step.items()
        if kind != "train" or not (options or {}).get("checkpoints"):
            continue
        if index != len(steps) - 1:
            raise SpecError("train 'checkpoints' are allowed on the last step of a recipe only")
        epochs = training.resolve_train_step({k: v for k, v in options.items() if k != "checkpoints"})["epochs"]
        points = options["checkpoints"]
        if not isinstance(points, (list, tuple)) or not all(
                isinstance(k, int) and not isinstance(k, bool) and 1 <= k < epochs for k in points):
            raise SpecError(f"train checkpoints must be a list of epochs in 1..{epochs - 1}, got {points!r}")
        found = sorted(set(points))
    return found


@dataclass(frozen=True)
class Recipe:
    """How to go from one state to the next: an ordered list of steps.

    Steps are one-key mappings: ``{"prune": {...}}``, ``{"reinit": {...}}``,
    ``{"train": {...}}``. A reinit's weights source (``to``) and a
    ``from_state`` prune's mask source (``from``) may be "root", "parent" or an
    `ExperimentState`.
    """

    steps: tuple = ()
    name: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "steps", tuple(self.steps))
        for step in self.steps:
            resolve_step(_without_states(step))

    @classmethod
    def train(cls, **options) -> "Recipe":
        return cls(({"train": options},))

    @classmethod
    def prune(cls, **options) -> "Recipe":
        return cls(({"prune": options},))

    @classmethod
    def reinit(cls, **options) -> "Recipe":
        return cls(({"reinit": options},))

    def __add__(self, other: "Recipe") -> "Recipe":
        return Recipe(self.steps + other.steps, self.name or other.name)

    @property
    def kind(self) -> str:
        return "+".join(next(iter(step)) for step in self.steps) or "noop"


def _without_states(step: dict) -> dict:
    (kind, options), = step.items()
    return {kind: {k: v for k, v in (options or {}).items() if not isinstance(v, ExperimentState)}}


@dataclass(frozen=True, eq=False)
class ExperimentState:
    """A frozen point in a network's life: one FINISHED MLflow run."""

    experiment: "Experiment" = field(repr=False)
    run_id: str
    key: str
    spec: dict = field(repr=False)

    @property
    def kind(self) -> str:
        return self.spec["kind"]

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        """The state_dict, masks applied (pruned entries exactly zero)."""
        return self.experiment.store.load(self.run_id).weights

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return self.experiment.store.load(self.run_id).masks

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.experiment.store.run(self.run_id).data.metrics)

    def model(self) -> torch.nn.Module:
        """A fresh module of the state's architecture holding the state's weights."""
        model = self.experiment.build_model(self.spec["root"])
        model.load_state_dict(self.weights)
        return model

    @property
    def parent(self) -> "ExperimentState | None":
        run_id = self.spec.get("parent_run")
        return self.experiment.state(run_id) if run_id else None

    def parents(self) -> dict[str, "ExperimentState"]:
        """Every input state by role: 'parent' plus e.g. 'weights', 'mask'."""
        found = {"parent": self.parent} if self.parent else {}
        for role, source in self.spec.get("inputs", {}).items():
            found[role] = self.experiment.state(source["run_id"])
        return found

    @property
    def root(self) -> "ExperimentState":
        run_id = self.spec.get("root_run") or self.run_id
        return self.experiment.state(run_id)

    def lineage(self) -> list["ExperimentState"]:
        """This state and its primary ancestors, root last."""
        chain, state = [self], self
        while state.parent is not None:
            state = state.parent
            chain.append(state)
        return chain

    def apply(self, recipe: Recipe | Iterable[dict], name: str | None = None) -> "ExperimentState":
        return self.experiment.apply(self, recipe, name=name)


class Experiment:
    """One study: an MLflow experiment holding a DAG of states.

    >>> exp = Experiment("my-study")
    >>> root = exp.init(model="lenet", dataset="digits", seed=0)
    >>> trained = root.apply(Recipe.train(epochs=2))
    """

    def __init__(self, name: str | None = None, *, tracking_uri: str | None = None,
                 experiment_id: str | None = None, store: Store | None = None,
                 progress: Callable[[str], None] | None = None, data_dir: str | None = None):
        self.store = store or Store(name, tracking_uri=tracking_uri, experiment_id=experiment_id)
        self.progress = progress
        self.data_dir = data_dir
        self._data_cache: dict[str, object] = {}
        self.computed: list[str] = []  # run ids of the states this object computed (not cache hits)
        self._templates: dict[str, torch.nn.Module] = {}  # see _blank_model

    # ---- building blocks ---------------------------------------------------------
    def data(self, root_spec: dict):
        model_channels, model_size = models.model_input(root_spec["model"])
        options = {**DATA_DEFAULTS, **root_spec["data"]}
        options["channels"] = options["channels"] or model_channels
        options["min_image_size"] = model_size  # upsample small images only
        cache_key = canonical_json([root_spec["dataset"], options, self.data_dir])
        if cache_key not in self._data_cache:
            self._data_cache[cache_key] = load_data(root_spec["dataset"], data_dir=self.data_dir, **options)
        return self._data_cache[cache_key]

    def build_model(self, root_spec: dict, seed: int | None = None) -> torch.nn.Module:
        data = self.data(root_spec)
        return models.build_model(root_spec["model"], num_classes=data.num_classes,
                                  input_shape=tuple(data.input_shape), init=root_spec["init"],
                                  seed=root_spec["seed"] if seed is None else seed)

    def state(self, run_id: str) -> ExperimentState:
        spec = self.store.spec(run_id)
        return ExperimentState(self, run_id, spec["key"], spec)

    def states(self) -> list[ExperimentState]:
        return [self.state(run.info.run_id) for run in self.store.states()]

    # ---- roots -------------------------------------------------------------------
    def root_key(self, **spec) -> tuple[str, dict]:
        resolved = resolve_root(spec)
        return root_state_key(resolved), resolved

    def init(self, **spec) -> ExperimentState:
        """The root state: a freshly initialized network (model, dataset, init, seed)."""
        key, resolved = self.root_key(**spec)
        if spec.get("data_dir"):
            self.data_dir = spec["data_dir"]
        # no find() here: _compute's claim looks the key up first (one store search for a hit)

        def compute(run_id):
            model = self.build_model(resolved)
            prunable = models.prunable(model)
            masks = {name: torch.ones_like(p, dtype=torch.bool)
                     for name, p in model.named_parameters() if name in prunable}
            return model, masks, {}, None

        state_spec = {"kind": "init", "root": resolved, "steps": [], "inputs": {}}
        return self._compute(key, state_spec, compute, parent=None, inputs={},
                             name=f"init {resolved['model']} s{resolved['seed']}")

    # ---- children ----------------------------------------------------------------
    def child_key(self, parent: ExperimentState, recipe: Recipe | Iterable[dict]) -> tuple[str, list, dict]:
        """(key, resolved steps, input states by role) of applying `recipe` to `parent`."""
        steps = recipe.steps if isinstance(recipe, Recipe) else tuple(recipe)
        resolved, sources = resolve_steps(steps)
        inputs = {role: self._resolve_source(parent, source, role) for role, source in sources.items()}
        key = state_key(parent.key, resolved, {role: state.key for role, state in inputs.items()})
        return key, resolved, inputs

    def _resolve_source(self, parent: ExperimentState, source, role: str) -> ExperimentState:
        if isinstance(source, dict):
            return self._epoch_of_first_training(parent, source["epoch"], source["of"])
        if isinstance(source, ExperimentState):
            state = source
        elif source == "root":
            state = parent.root
        elif source == "parent":
            state = parent
        elif isinstance(source, str):
            state = self.state(source.removeprefix("state:"))
        else:
            raise SpecError(f"{role} source must be 'root', 'parent', a run id or a state; got {source!r}")
        if state.spec["root"]["model"] != parent.spec["root"]["model"]:
            raise SpecError(f"{role} source {state.run_id} has another architecture "
                            f"({state.spec['root']['model']!r}, not {parent.spec['root']['model']!r})")
        if role == "weights" and state.key not in {s.key for s in parent.lineage()}:
            raise SpecError(f"rewind target {state.run_id} is not an ancestor of {parent.run_id}")
        return state

    def _epoch_of_first_training(self, parent: ExperimentState, epoch: int, of) -> ExperimentState:
        """The state after `epoch` epochs of the first training of parent's lineage (late rewinding).

        Training is prefix-consistent, so this is the root trained for `epoch` epochs with
        the first training's options: a checkpoint that training emitted, or computed now.
        """
        if of not in ("root", None):
            raise SpecError(f"rewind 'epoch' counts epochs of the first training from the root; 'to' must be root, not {of!r}")
        lineage = parent.lineage()
        root = lineage[-1]
        if epoch == 0:
            return root
        first = lineage[-2] if len(lineage) >= 2 else None
        if first is None or len(first.spec["steps"]) != 1 or "train" not in first.spec["steps"][0]:
            raise SpecError(f"rewind to epoch {epoch} needs a lineage whose first step after the root is one "
                            f"train step; {parent.run_id}'s is {first.kind if first else 'missing'!r}")
        options = first.spec["steps"][0]["train"]
        if not 0 < epoch <= options["epochs"]:
            raise SpecError(f"rewind epoch {epoch} is outside the first training (1..{options['epochs']})")
        return self.apply(root, Recipe.train(**{**options, "epochs": epoch}), name=f"train @epoch {epoch}")

    def apply(self, parent: ExperimentState, recipe: Recipe | Iterable[dict], name: str | None = None) -> ExperimentState:
        """The child state of `parent` under `recipe`: found by key, or computed and stored."""
        key, steps, inputs = self.child_key(parent, recipe)
        # no find() here: _compute's claim looks the key up first (one store search for a hit)
        root_spec = parent.spec["root"]
        checkpoints = train_checkpoints(recipe.steps if isinstance(recipe, Recipe) else tuple(recipe))

        def compute(run_id):
            return self._run_steps(parent, steps, inputs, key, run_id, checkpoints)

        kind = "+".join(next(iter(s)) for s in steps)
        state_spec = {"kind": kind, "root": root_spec, "steps": steps,
                      "inputs": {role: {"key": s.key, "run_id": s.run_id} for role, s in inputs.items()}}
        return self._compute(key, state_spec, compute, parent=parent, inputs=inputs,
                             name=name or (recipe.name if isinstance(recipe, Recipe) else None) or kind)

    def _blank_model(self, root_spec: dict) -> torch.nn.Module:
        """A module of the root's architecture whose weights are about to be overwritten.

        A copy of a cached one: deepcopy is ~10x cheaper than a fresh seeded random
        initialization (3 ms per state for lenet_300_100). Models over 64 MB are built anew
        rather than kept twice in memory.
        """
        cache_key = canonical_json(root_spec)
        template = self._templates.get(cache_key)
        if template is None:
            model = self.build_model(root_spec)
            size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
            if size > 64 * 1024 ** 2:
                return model
            self._templates[cache_key] = template = model
        return copy.deepcopy(template)

    def _run_steps(self, parent: ExperimentState, steps: list, inputs: dict, key: str, run_id: str,
                   checkpoints: list[int] = ()):
        root_spec = parent.spec["root"]
        data = self.data(root_spec)
        model = self._blank_model(root_spec)  # every weight is loaded from the parent's below
        kinds = models.prunable(model)
        weights = {k: v.clone() for k, v in parent.weights.items()}
        masks = {k: v.clone() for k, v in parent.masks.items()}
        history: dict[str, list[float]] = {}
        for index, step in enumerate(steps):
            (kind, options), = step.items()
            seed = options.get("seed")
            generator = torch.Generator().manual_seed(derived_seed(key, index) if seed is None else seed)
            if kind == "prune":
                if options["method"] == "from_state":
                    masks = pruning.transplant_mask(masks, inputs["mask"].masks)
                else:
                    effective = {n: weights[n] * masks[n] for n in masks}
                    masks = pruning.prune_masks(effective, masks, kinds, options, generator=generator)
                weights = {n: (t * masks[n] if n in masks else t) for n, t in weights.items()}
            elif kind == "reinit":
                source = inputs["weights"].weights if "weights" in inputs else None
                fresh = None
                if options["strategy"] == "random":
                    fresh_seed = derived_seed(key, index) if seed is None else seed
                    fresh = self.build_model(root_spec, seed=fresh_seed).state_dict()
                weights, masks = reinit.reinit_weights(options["strategy"], current=weights, source=source,
                                                       fresh=fresh, masks=masks, kinds=kinds, generator=generator)
            else:
                model.load_state_dict(weights)
                train_seed = root_spec["seed"] if options["seed"] is None else options["seed"]
                store = self.store

                def on_epoch(epoch, trained_model, history_so_far, _index=index, _masks=masks):
                    store.heartbeat(run_id)
                    if epoch in checkpoints:
                        so_far = {name: history.get(name, []) + list(values) for name, values in history_so_far.items()}
                        self._emit_checkpoint(parent, steps, inputs, _index, epoch, trained_model, _masks, so_far)

                result = training.train(model, masks, data, options, seed=train_seed,
                                        progress=self._epoch_progress(), on_epoch=on_epoch)
                for name, values in result.items():
                    history.setdefault(name, []).extend(values)
                weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(weights)
        prune_only = all(next(iter(s)) == "prune" for s in steps)
        return model, masks, history, parent.run_id if prune_only else None

    def _emit_checkpoint(self, parent, steps, inputs, index, epoch, model, masks, history):
        """Store the state after `epoch` epochs of the final train step (see train_checkpoints)."""
        (_, options), = steps[index].items()
        truncated = steps[:index] + [{"train": {**options, "epochs": epoch}}]
        key = state_key(parent.key, truncated, {role: s.key for role, s in inputs.items()})
        if self.store.find(key):
            return
        snapshot = copy.deepcopy(model)
        kind = "+".join(next(iter(s)) for s in truncated)
        state_spec = {"kind": kind, "root": parent.spec["root"], "steps": truncated,
                      "inputs": {role: {"key": s.key, "run_id": s.run_id} for role, s in inputs.items()}}
        self._compute(key, state_spec, lambda run_id: (snapshot, masks, history, None), parent=parent, inputs=inputs,
                      name=f"{kind} @epoch {epoch}")

    def _epoch_progress(self):
        if self.progress is None:
            return None
        return lambda epoch, total, loss: self.progress(f"epoch {epoch}/{total} train_loss {loss:.4f}")

    def _compute(self, key: str, state_spec: dict, compute, *, parent, inputs, name: str) -> ExperimentState:
        """Claim the key, compute the state, store it, and mark it FINISHED (or FAILED).

        Another process needing the same key meanwhile waits for our claim and reuses
        our state (`Store.claim`); if another process holds the claim, we wait and
        return its state. A heartbeat thread keeps our claim alive while we compute.
        """
        root_run = parent.spec.get("root_run") or parent.run_id if parent else None
        note = _description(self.store, state_spec, parent, inputs)

        def create():
            return self.store.create(key=key, kind=state_spec["kind"], name=name,
                                     parent_run_id=parent.run_id if parent else None, root_run_id=root_run,
                                     extra_parents={role: s.run_id for role, s in inputs.items()}, note=note)

        compute_threads()  # a bad MLPRUNE_THREADS fails before anything is claimed
        run_id, ours = self.store.claim(key, create, progress=self.progress,
                                        parent_run_id=parent.run_id if parent else None)
        if not ours:  # another process computed it
            return self.state(run_id)
        self.computed.append(run_id)
        if parent is None:  # a root is its own root: every state carries mlprune.root (design §3)
            self.store.set_tags(run_id, {TAG_ROOT: run_id})
        alive = self.store.keep_alive(run_id, key)
        threads = _pin_threads()
        final = None
        try:
            if self.progress:
                self.progress(f"computing {name} ({state_spec['kind']})")
            started = time.perf_counter()
            model, masks, history, weights_from = compute(run_id)
            data = self.data(state_spec["root"])
            test_loss, test_accuracy = training.evaluate(model, data.test_batches(256))
            metrics = {"test_loss": test_loss, "test_accuracy": test_accuracy}
            metrics.update(analysis.sparsity(masks))
            metrics["compression_ratio"] = analysis.compression_ratio(masks)
            metrics.update(analysis.flops(model, tuple(data.input_shape), masks))
            if history.get("val_loss"):
                best = min(range(len(history["val_loss"])), key=history["val_loss"].__getitem__)
                metrics["early_stop_epoch"] = best + 1
                batch_size = next(next(iter(st.values()))["batch_size"] for st in reversed(state_spec["steps"])
                                  if "train" in st)
                metrics["early_stop_iteration"] = (best + 1) * -(-data.len_train // batch_size)
            metrics["duration_s"] = time.perf_counter() - started
            spec = {
                **copy.deepcopy(state_spec),
                "key": key,
                "semantics": SEMANTICS_VERSION,
                "mlprune_version": __version__,
                "parent_key": parent.key if parent else None,
                "parent_run": parent.run_id if parent else None,
                "root_run": root_run,
            }
            if weights_from:
                spec["weights_from"] = weights_from
            weights = None if weights_from else model.state_dict()
            final = self.store.finish(run_id, spec=spec, masks=masks, weights=weights, metrics=metrics,
                                      history=history)
        except ClaimLost as lost:  # taken over, or an older claim exists: wait for its state
            self.store.release(run_id, str(lost))
        except BaseException as error:
            self.store.fail(run_id, f"{type(error).__name__}: {error}")
            raise
        finally:
            alive.stop()
            _unpin_threads(threads)
        if final is None:
            return self._compute(key, state_spec, compute, parent=parent, inputs=inputs, name=name)
        return self.state(final)


THREADS_ENV = "MLPRUNE_THREADS"
_threads_lock = threading.Lock()
_threads_users = [0, None]  # states being computed in this process, torch's thread count before


def compute_threads() -> int:
    """Torch threads a state is computed with: MLPRUNE_THREADS, default 1.

    Float sums (matmul, convolutions) are split differently with another thread
    count, so bitwise-reproducible weights need a fixed one: then a state does
    not depend on the machine's cores or on the scheduler that ran it.
    Parallelism comes from computing independent states at once.
    """
    text = os.environ.get(THREADS_ENV, "").strip() or "1"
    if not text.isdigit() or int(text) < 1:
        raise SpecError(f"{THREADS_ENV} must be an integer >= 1, got {text!r}")
    return int(text)


def _pin_threads() -> int:
    threads = compute_threads()
    with _threads_lock:
        if _threads_users[0] == 0:
            _threads_users[1] = torch.get_num_threads()
        _threads_users[0] += 1
        torch.set_num_threads(threads)
    return threads


def _unpin_threads(_threads: int) -> None:
    with _threads_lock:
        _threads_users[0] -= 1
        if _threads_users[0] == 0 and _threads_users[1] is not None:
            torch.set_num_threads(_threads_users[1])


def _description(store: Store, state_spec: dict, parent, inputs: dict) -> str:
    """Markdown for the run's description in the MLflow UI: what the state is, links to its parents."""
    lines = [f"**mlprune state** · kind `{state_spec['kind']}` · model `{state_spec['root']['model']}` · "
             f"dataset `{state_spec['root']['dataset']}` · seed {state_spec['root']['seed']}"]
    if parent is not None:
        lines.append(f"- parent: [{parent.kind} {parent.run_id[:8]}]({store.ui_link(parent.run_id)})")
    for role, source in inputs.items():
        lines.append(f"- {role} from: [{source.kind} {source.run_id[:8]}]({store.ui_link(source.run_id)})")
    for step in state_spec["steps"]:
        lines.append(f"- step `{canonical_json(step)}`")
    return "\n".join(lines)
