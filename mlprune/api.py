"""The Python API: `Experiment`, `ExperimentState`, `Recipe`.

    from mlprune import Experiment, Recipe
    exp = Experiment("my-study")
    root = exp.init(model="lenet", dataset="digits", seed=0)
    trained = root.apply(Recipe.train(epochs=5, lr=0.01, momentum=0.9))

An `ExperimentState` is a frozen point in a network's life: one FINISHED MLflow
run. A `Recipe` is an ordered list of steps (prune, reinit, train) that turns a
state into a child state. `Experiment.apply` plans the child exactly as a recipe
file does (`plan.PlanBuilder`: the same keys) and runs the plan with the one
executor (`executor.Execution`, synchronous): a child whose key already has a
FINISHED run is that run, nothing is computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .errors import SpecError
from .plan import Naming, PlanBuilder, StateInfo
from .spec.keys import root_key
from .spec.steps import kind_of, resolve_root, resolve_step


@dataclass(frozen=True)
class Recipe:
    """How to go from one state to the next: an ordered list of steps.

    Steps are one-key mappings: ``{"prune": {...}}``, ``{"reinit": {...}}``,
    ``{"train": {...}}``. A reinit's weights source (``to``) and a
    ``from_state`` prune's mask source (``from``) may be "root", "parent", a run
    id, ``state:<run id>`` or an `ExperimentState`.
    """

    steps: tuple = ()
    name: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "steps", tuple(self.steps))
        for step in self.steps:
            resolve_step(step)

    @classmethod
    def train(cls, **options) -> Recipe:
        return cls(({"train": options},))

    @classmethod
    def prune(cls, **options) -> Recipe:
        return cls(({"prune": options},))

    @classmethod
    def reinit(cls, **options) -> Recipe:
        return cls(({"reinit": options},))

    def __add__(self, other: Recipe) -> Recipe:
        return Recipe(self.steps + other.steps, self.name or other.name)

    @property
    def kind(self) -> str:
        return "+".join(next(iter(step)) for step in self.steps) or "noop"


@dataclass(frozen=True, eq=False)
class ExperimentState:
    """A frozen point in a network's life: one FINISHED MLflow run."""

    experiment: Experiment = field(repr=False)
    run_id: str
    key: str
    spec: dict = field(repr=False)

    @property
    def kind(self) -> str:
        return self.spec["kind"]

    @property
    def weights(self) -> dict:
        """The state_dict, masks applied (pruned entries exactly zero)."""
        return self.experiment.store.load(self.run_id).weights

    @property
    def masks(self) -> dict:
        return self.experiment.store.load(self.run_id).masks

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.experiment.store.run(self.run_id).data.metrics)

    def model(self):
        """A fresh module of the state's architecture holding the state's weights (on the CPU)."""
        from .workspace import Workspace

        workspace = Workspace()
        root = self.spec["root"]
        model = workspace.build(root, workspace.data(root, self.spec.get("data_dir") or self.experiment.data_dir))
        model.load_state_dict(self.weights)
        return model

    @property
    def parent(self) -> ExperimentState | None:
        run_id = self.spec.get("parent_run")
        return self.experiment.state(run_id) if run_id else None

    def parents(self) -> dict[str, ExperimentState]:
        """Every input state by role: 'parent' plus e.g. 'weights', 'mask'."""
        found = {"parent": self.parent} if self.parent else {}
        for role, source in self.spec.get("inputs", {}).items():
            found[role] = self.experiment.state(source["run_id"])
        return found

    @property
    def root(self) -> ExperimentState:
        return self.experiment.state(self.spec.get("root_run") or self.run_id)

    def lineage(self) -> list[ExperimentState]:
        """This state and its primary ancestors, root last."""
        chain, state = [self], self
        while state.parent is not None:
            state = state.parent
            chain.append(state)
        return chain

    def apply(self, recipe: Recipe | Iterable[dict], name: str | None = None) -> ExperimentState:
        return self.experiment.apply(self, recipe, name=name)

    def file(self, name: str) -> bytes:
        """One of the state's files (e.g. an interpolation's ``interpolation.json``), checked against its hash."""
        return self.experiment.store.state_file(self.run_id, name)

    def spawn(self, train: Recipe | dict, *, copies: int = 2, seeds=None) -> list[ExperimentState]:
        return self.experiment.spawn(self, train, copies=copies, seeds=seeds)

    def interpolate(self, other: ExperimentState, **options) -> ExperimentState:
        return self.experiment.interpolate(self, other, **options)


class Experiment:
    """One study: an MLflow experiment holding a DAG of states.

    >>> exp = Experiment("my-study")
    >>> root = exp.init(model="lenet", dataset="digits", seed=0)
    >>> trained = root.apply(Recipe.train(epochs=2))
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        tracking_uri: str | None = None,
        experiment_id: str | None = None,
        store=None,
        progress: Callable[[str], None] | None = None,
        **run_options,
    ):
        """`run_options`: the run options of the states this object computes, by name (every one that
        `executor.options.RUN_OPTIONS` offers to Python: ``device``, ``data_dir``, ``deterministic``,
        ``channels_last``, ``compile``, ``checkpoint_every`` (resumable checkpoints of trainings: ``"1ep"``
        by default, ``"<N>ep"``, ``"<N>it"`` or ``"off"``), ``batch`` (train up to that many sibling states
        of one call, e.g. spawned copies, together as one batch); never part of a key)."""
        from .executor.options import api_options
        from .store import Store

        offered = {option.name: option.default for option in api_options()}
        unknown = sorted(set(run_options) - set(offered))
        if unknown:
            raise TypeError(
                f"Experiment() got an unexpected keyword argument {unknown[0]!r}; run options: {', '.join(offered)}"
            )
        self.store = store or Store(name, tracking_uri=tracking_uri, experiment_id=experiment_id)
        self.progress = progress
        for option, value in {**offered, **run_options}.items():
            setattr(self, option, value)
        self._run_option_names = tuple(offered)
        self.computed: list[str] = []  # run ids of the states this object computed (not cache hits)

    def state(self, run_id: str) -> ExperimentState:
        run_id = self.store.resolve_run_id(run_id)
        spec = self.store.spec(run_id)
        return ExperimentState(self, run_id, spec["key"], spec)

    def states(self) -> list[ExperimentState]:
        return [self.state(run.info.run_id) for run in self.store.states()]

    def _info(self, run_id: str) -> StateInfo:
        spec = self.store.spec(run_id)
        return StateInfo(run_id, spec["key"], spec)

    # ---- keys (no computing) -------------------------------------------------------------------
    def root_key(self, **spec) -> tuple[str, dict]:
        resolved = resolve_root(spec)
        return root_key(resolved), resolved

    def child_key(self, parent: ExperimentState, recipe: Recipe | Iterable[dict]) -> tuple[str, list, dict]:
        """(key, resolved steps, input nodes by role) of applying `recipe` to `parent` (nothing runs)."""
        builder, node = self._plan_child(parent, recipe, None)
        plan = builder.build()
        return node.key, node.steps, {role: plan.node(name) for role, name in node.inputs.items()}

    def _plan_child(self, parent: ExperimentState, recipe, name):
        steps = recipe.steps if isinstance(recipe, Recipe) else tuple(recipe)
        builder = PlanBuilder("", load_state=self._info)
        parent_node = builder.external(StateInfo(parent.run_id, parent.key, parent.spec))
        label = name or (recipe.name if isinstance(recipe, Recipe) else None)
        return builder, builder.child("state", parent_node, steps, label=label)

    # ---- computing -----------------------------------------------------------------------------
    def run_options(self):
        from .executor.options import RunOptions

        return RunOptions(**{name: getattr(self, name) for name in self._run_option_names})

    def _run(self, plan) -> dict[str, str]:
        from .executor import Execution

        execution = Execution([plan], self.store, options=self.run_options(), progress=self.progress)
        execution.check()
        result = execution.run()
        missing = set(execution.missing)
        self.computed.extend(result.states[0][n.name] for n in plan.nodes if n.key in missing)
        return result.states[0]

    def init(self, **spec) -> ExperimentState:
        """The root state: a freshly initialized network (model, dataset, init, seed, data options)."""
        data_dir = spec.get("data_dir") or self.data_dir
        if spec.get("data_dir"):
            self.data_dir = spec["data_dir"]
        builder = PlanBuilder("")
        builder.root("root", {k: v for k, v in spec.items() if k != "data_dir"}, data_dir=data_dir)
        return self.state(self._run(builder.build())["root"])

    def spawn(
        self, point: ExperimentState, train: Recipe | dict, *, copies: int = 2, seeds=None
    ) -> list[ExperimentState]:
        """`copies` children of `point` trained with `train` (train options, or a `Recipe.train`) except for
        their ``data_order_seed``: siblings that differ only in SGD noise (`spawn.spawn_copies`).

        ``seeds``: their data_order_seeds (default: the root's seed + 1, + 2, ...). To continue a schedule
        from the time `point` is at, give the train option ``schedule_from``.
        """
        from .recipes.spawn import check_copies, default_seeds, spawn_copies

        if isinstance(train, Recipe):
            kinds = [kind_of(step) for step in train.steps]
            if len(kinds) != 1 or not kinds[0][0].trains:
                raise SpecError(f"spawn trains its copies with one train step, not {train.kind!r}")
            train = kinds[0][1]
        copies, seeds = check_copies(copies, seeds)
        seeds = list(seeds or default_seeds(point.spec["root"]["seed"], copies))
        builder = PlanBuilder("", load_state=self._info)
        node = builder.external(StateInfo(point.run_id, point.key, point.spec))
        nodes = spawn_copies(builder, node, dict(train), seeds, Naming("spawn", "spawn"))
        reached = self._run(builder.build())
        return [self.state(reached[n.name]) for n in nodes]

    def interpolate(self, a: ExperimentState, b: ExperimentState, **options) -> ExperimentState:
        """The analysis state of the linear path from `a` to `b` (step ``interpolate``: options ``alphas``,
        ``bn_reset``, ``train_set``): metrics ``instability``, ``barrier_loss``; files
        ``interpolation.json`` and ``interpolation.png`` (`ExperimentState.file`)."""
        return self.apply(a, Recipe(({"interpolate": {**options, "b": b}},)))

    def apply(
        self, parent: ExperimentState, recipe: Recipe | Iterable[dict], name: str | None = None
    ) -> ExperimentState:
        """The child state of `parent` under `recipe`: found by key, or computed and stored."""
        if not isinstance(parent, ExperimentState):
            raise SpecError(f"apply needs an ExperimentState as parent, got {type(parent).__name__}")
        builder, node = self._plan_child(parent, recipe, name)
        return self.state(self._run(builder.build())[node.name])
