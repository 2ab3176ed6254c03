"""Plans: the states to reach, each a keyed node, before anything runs.

A `Plan` is a list of `Node`s, parents first. A node is a root (an init spec) or
a parent node plus resolved steps, and the other nodes it reads by role (a
rewind's weights, a transplant's mask). Every node's key is computed here, once,
with `spec.keys` and nothing else: recipes (`recipes.compile_recipe`), sweeps,
the Python API (`api.Experiment.apply`) and the executor all get their keys from
a `PlanBuilder`, so a key planned without a store is the key the executor stores.

Sources resolve here too:
- ``root``: the root of the parent's lineage; ``parent``: the parent;
- ``state:<node>``: an earlier node of the plan, ``state:<run id>`` or a run id:
  an existing state (an *external* node, read from the store through `load_state`);
- a rewind point (``at: "500it"``, ``epoch: 2``): the lineage's first training
  stopped there, a node of its own (``train@500it``). When the first training is
  computed in the same plan, it emits that state on the way (``emitted_by``), so
  nothing is trained twice; otherwise the node trains from the root to that point.
A train step's ``checkpoints`` become such nodes as well.

Plans are plain data (`Plan.to_json`): they travel to dask workers and are
recorded on workflow runs, where the report reads rounds and branches from them.
Pure Python: no torch, no mlflow.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from .errors import SpecError
from .names import PARAM_BRANCH, PARAM_DATASET, PARAM_MODEL, PARAM_RECIPE, PARAM_ROUND, PARAM_SEED
from .plugins import PLUGINS_KEY
from .spec.keys import canonical_json, root_key, state_key
from .spec.limits import MAX_STATES
from .spec.steps import (
    INIT_SCHEMA,
    STEP_KINDS,
    Source,
    describe_step,
    kind_of,
    resolve_root,
    resolve_steps,
    train_length,
    truncated_train,
)
from .spec.times import parse_time

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Node:
    name: str  # unique within the plan
    key: str
    kind: str  # "init", the step kinds joined by "+" ("reinit+train"), or "analysis"
    parent: str | None = None  # node name of the primary parent (None: a root)
    steps: list = field(default_factory=list)  # resolved steps, key form ([] for a root)
    root: dict | None = None  # resolved root spec (roots only)
    inputs: dict = field(default_factory=dict)  # role -> node name
    label: str = ""  # the run name: short, readable when truncated
    round: int | None = None  # recipe round (0 = the first training)
    branch: str = "main"  # recipe branch (main, or a control's name)
    role: str = "state"  # in a recipe: "trained" (a round's result), "pruned", "checkpoint", ...
    control_of: str | None = None  # a control branch: the branch it checks (the report draws them together)
    params: dict = field(default_factory=dict)  # MLflow params: resolved options by dotted name
    data_dir: str | None = None  # roots: where the data is read (not in the key)
    weights_file: str | None = None  # pretrained roots: the file read (its SHA-256 is in the key, not its path)
    run_id: str | None = None  # an existing state (external node): nothing to compute
    emitted_by: str | None = None  # computed on the way by that node's training (a checkpoint of it)
    at: str | None = None  # ... at this time of its last train step
    emits: list = field(default_factory=list)  # names of the nodes this node's training emits
    spec: dict | None = None  # external nodes: the stored spec (state.json)

    @property
    def external(self) -> bool:
        return self.run_id is not None


@dataclass(frozen=True)
class Naming:
    """How a recipe section names the nodes it adds: their node name (or its stem), run-name label,
    round and branch."""

    name: str
    label: str | None = None
    round: int | None = None
    branch: str = "main"


@dataclass
class Plan:
    recipe: str
    nodes: list[Node] = field(default_factory=list)
    params: dict = field(default_factory=dict)  # the recipe's parameters (after -P and protocol)
    overrides: dict = field(default_factory=dict)  # what -P changed

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    @property
    def keys(self) -> dict[str, str]:
        return {n.name: n.key for n in self.nodes}

    def to_json(self) -> dict:
        return {
            "recipe": self.recipe,
            "params": self.params,
            "overrides": self.overrides,
            "nodes": [asdict(n) for n in self.nodes],
        }

    @classmethod
    def from_json(cls, data: dict) -> Plan:
        return cls(
            data["recipe"],
            [Node(**n) for n in data["nodes"]],
            dict(data.get("params") or {}),
            dict(data.get("overrides") or {}),
        )


def _plain_data(value) -> bool:
    """Only dicts, lists, strings, numbers, booleans and None (whose repr says all they are)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_data(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_data(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


def lineage_top(node: Node, parent_of: Callable[[Node], Node | None], memo: dict[str, Node]) -> Node:
    """The top of `node`'s lineage: the first ancestor (or `node`) whose `parent_of` is None.

    `memo` (node name -> top, kept by the caller for one plan and one `parent_of`) remembers the top of
    every node walked through, so asking for every node of a plan takes time linear in its size.
    """
    path, current = [], node
    while current.name not in memo:
        parent = parent_of(current)
        if parent is None:
            memo[current.name] = current
            break
        path.append(current.name)
        current = parent
    top = memo[current.name]
    memo.update(dict.fromkeys(path, top))
    return top


# ---- names and params -----------------------------------------------------------------------


def _param_value(value) -> str:
    if isinstance(value, (dict, list, tuple)):
        return canonical_json(value)
    return str(value)


def node_params(steps: list, sources: dict, root: dict | None = None) -> dict:
    """MLflow params of a state: every resolved option as ``<kind>.<option>`` (public names)."""
    params = {}
    if root is not None:
        for name in ("model", "dataset", "init", "seed", "bn_init", "weights"):
            if name in root:
                params[f"init.{name}"] = _param_value(root[name])
        for name, value in root["data"].items():
            params[f"init.{name}"] = _param_value(value)
        return params
    for step in steps:  # as recorded (`StepKind.recorded_as`): the params of a step keep their names
        ((kind, options),) = step.items()
        for name, value in STEP_KINDS[kind].schema.public(options).items():
            if name == PLUGINS_KEY:  # the plugins' identities are tags (mlprune.plugin.<name>), not params
                continue
            if isinstance(value, str) and value.startswith("input:"):
                source = sources.get(value[len("input:") :])
                value = "?" if source is None else source.describe()
            params[f"{kind}.{name}"] = _param_value(value)
    return params


def study_params(root: dict | None, recipe: str, round: int | None, branch: str) -> dict:
    """The params a researcher filters, groups and compares states by in the UI, on every state of a plan:
    the root's ``seed``, ``model`` and ``dataset``, the ``recipe``, the ``branch`` and the ``round``
    (never part of a key)."""
    root = root or {}
    params = {
        PARAM_SEED: root.get("seed"),
        PARAM_MODEL: root.get("model"),
        PARAM_DATASET: root.get("dataset"),
        PARAM_RECIPE: recipe or None,
        PARAM_BRANCH: branch,
        PARAM_ROUND: round,
    }
    return {name: _param_value(value) for name, value in params.items() if value is not None}


def lead_with_seed(plan: Plan) -> None:
    """Run names that start with the root's seed (``s0 r20 rewind+train``): a study of several seeds."""
    for node in plan.nodes:
        seed = node.params.get(PARAM_SEED)
        if seed is not None and node.root is None and not node.label.startswith(f"s{seed} "):
            node.label = f"s{seed} {node.label}"


@dataclass(frozen=True)
class StateInfo:
    """What the planner needs of an existing state: its run id, key and stored spec."""

    run_id: str
    key: str
    spec: dict


@dataclass(frozen=True)
class _ResolvedSource:
    node: Node
    ref: object
    at: str | None

    def describe(self) -> str:
        ref = self.ref if isinstance(self.ref, str) else self.node.run_id or self.node.name
        return f"{ref}@{self.at}" if self.at else str(ref)


class PlanBuilder:
    """Builds a `Plan` node by node; the only code that turns sources into states and keys.

    ``load_state(run_id) -> StateInfo`` reads an existing state (the store's); without it,
    a plan may only refer to its own nodes.
    """

    def __init__(
        self,
        recipe: str = "",
        *,
        load_state: Callable[[str], StateInfo] | None = None,
        params: dict | None = None,
        overrides: dict | None = None,
    ):
        self.plan = Plan(recipe, [], dict(params or {}), dict(overrides or {}))
        self._by_name: dict[str, Node] = {}
        self._by_key: dict[str, Node] = {}
        self._by_run_id: dict[str, Node] = {}
        # planning stays linear in the number of states: a node's root and first training are
        # remembered (not walked up to on every rewind), and so is which nodes descend from a target
        self._top_memo: dict[str, Node] = {}  # node -> its root, or its first external ancestor
        self._root_memo: dict[str, Node] = {}  # node -> its root, through external states' parents
        self._first_memo: dict[str, Node] = {}  # node -> the root's child it descends from (or the root)
        self._descendants: dict[str, set[str]] = {}
        self._resolutions: dict[str, tuple] = {}  # repr of raw steps -> resolve_steps of them
        self._load_state = load_state

    # ---- adding nodes ------------------------------------------------------------------------
    def _add(self, node: Node) -> Node:
        if node.name in self._by_name:
            raise SpecError(f"plan {self.plan.recipe!r}: two states are named {node.name!r}")
        if len(self.plan.nodes) >= MAX_STATES:
            raise SpecError(
                f"plan {self.plan.recipe!r} has more than {MAX_STATES} states (at {node.name!r}); "
                f"a plan is at most {MAX_STATES} states: fewer rounds, points, copies or methods"
            )
        self.plan.nodes.append(node)
        self._by_name[node.name] = node
        self._by_key.setdefault(node.key, node)
        return node

    def node(self, name: str) -> Node:
        try:
            return self._by_name[name]
        except KeyError:
            raise SpecError(
                f"plan {self.plan.recipe!r} has no state {name!r}; it has: {', '.join(self._by_name) or 'none'}"
            ) from None

    def root(
        self,
        name: str,
        spec: dict,
        *,
        label: str | None = None,
        data_dir: str | None = None,
        round: int | None = None,
        branch: str = "main",
        role: str = "root",
    ) -> Node:
        resolved = resolve_root(spec)
        key = root_key(resolved)
        if key in self._by_key and self._by_key[key].root is not None:
            return self._by_key[key]
        data_dir = data_dir or spec.get("data_dir")
        weights_file = INIT_SCHEMA["weights"].check(spec["weights"], "weights") if spec.get("weights") else None
        return self._add(
            Node(
                name,
                key,
                "init",
                root=resolved,
                data_dir=data_dir,
                weights_file=weights_file,
                label=label or f"init {resolved['model']} s{resolved['seed']}",
                round=round,
                branch=branch,
                role=role,
                params={**node_params([], {}, resolved), **study_params(resolved, self.plan.recipe, round, branch)},
            )
        )

    def external(self, state) -> Node:
        """The node of an existing state (a state object with run_id/key/spec, a StateInfo or a run id)."""
        if isinstance(state, str):
            if self._load_state is None:
                raise SpecError(f"state {state!r} is not a state of this plan (and no store to look it up)")
            state = self._load_state(state)
        if state.run_id in self._by_run_id:
            return self._by_run_id[state.run_id]
        spec = state.spec
        kind = spec.get("kind", "?")
        root = kind in STEP_KINDS and STEP_KINDS[kind].root  # the stored kind of a root is its step kind's
        node = Node(
            f"run:{state.run_id}",
            state.key,
            kind,
            root=spec.get("root") if root else None,
            steps=list(spec.get("steps") or []),
            label=f"{kind} {state.run_id[:8]}",
            run_id=state.run_id,
            spec=spec,
            role="external",
        )
        self.plan.nodes.append(node)
        self._by_name[node.name] = node
        self._by_key.setdefault(node.key, node)
        self._by_run_id[state.run_id] = node
        return node

    def child(
        self,
        name: str,
        parent: str | Node,
        steps,
        *,
        label: str | None = None,
        round: int | None = None,
        branch: str = "main",
        role: str = "state",
        control_of: str | None = None,
    ) -> Node:
        """The node of `parent` under `steps` (raw recipe steps); its checkpoints become nodes too."""
        parent = parent if isinstance(parent, Node) else self.node(parent)
        resolved, sources, extras = self._resolved(list(steps))
        inputs = {role_: self._source(parent, source, role_) for role_, source in sources.items()}
        key = state_key(parent.key, resolved, {r: s.node.key for r, s in inputs.items()})
        kinds = [next(iter(step)) for step in resolved]
        kind = "analysis" if STEP_KINDS[kinds[0]].produces == "analysis" else "+".join(kinds)
        node = self._by_key.get(key)
        if node is None or node.external:
            node = self._add(
                Node(
                    name,
                    key,
                    kind,
                    parent=parent.name,
                    steps=resolved,
                    inputs={r: s.node.name for r, s in inputs.items()},
                    label=label or self._label(round, branch, role, resolved, sources),
                    round=round,
                    branch=branch,
                    role=role,
                    params={**node_params(resolved, inputs), **self._study_params(parent, round, branch)},
                    control_of=control_of,
                )
            )
        for index, extra in enumerate(extras):
            for at in extra.get("checkpoints", ()):
                if index != len(resolved) - 1:
                    raise SpecError("train 'checkpoints' are allowed on the last step of a recipe only")
                self._checkpoint(node, parent, at)
        return node

    def _resolved(self, steps: list):
        """`resolve_steps(steps)`, remembered for steps of plain data (the rounds of a recipe repeat the same
        prune and train steps): a copy of the first resolution of the same steps."""
        if not _plain_data(steps):
            return resolve_steps(steps)
        memo = repr(steps)
        if memo not in self._resolutions:
            self._resolutions[memo] = resolve_steps(copy.deepcopy(steps))
        return copy.deepcopy(self._resolutions[memo])

    # ---- sources ----------------------------------------------------------------------------
    def _parent_of(self, node: Node) -> Node | None:
        """The primary parent of `node` (an external state's read from the store), None for a root."""
        if node.external:
            parent_run = (node.spec or {}).get("parent_run")
            return self.external(parent_run) if parent_run else None
        return self._by_name[node.parent] if node.parent is not None else None

    def _root_and_first(self, node: Node) -> tuple[Node, Node | None]:
        """(the root of `node`'s lineage, the lineage's first state after the root or None), remembered
        per node: every round of a recipe asks, and walking up each time is quadratic."""
        root = lineage_top(node, self._parent_of, self._root_memo)

        def below_root(n: Node) -> Node | None:  # the parent, unless it is the root
            parent = self._parent_of(n)
            return parent if parent is not None and parent is not root else None

        first = lineage_top(node, below_root, self._first_memo)
        return root, (None if first is root else first)

    def _descends_from(self, node: Node, target: Node) -> bool:
        """Is `target` (by key) `node` or one of its primary ancestors? Nodes found to descend from a
        target are remembered, so a recipe that rewinds every round to one state walks each node once."""
        known = self._descendants.setdefault(target.key, set())
        path, current = [], node
        while current is not None:
            if current.key == target.key or current.name in known:
                known.update(path)
                return True
            path.append(current.name)
            current = self._parent_of(current)
        return False

    def _root_of(self, node: Node) -> Node:
        """The root node of `node`'s lineage (an external state's from its spec, without the chain)."""
        top = lineage_top(
            node, lambda n: None if n.external or n.parent is None else self._by_name[n.parent], self._top_memo
        )  # a root, or the first external ancestor
        if top.external and (top.spec or {}).get("root_run") and top.spec["root_run"] != top.run_id:
            return self.external(top.spec["root_run"])
        return top

    def _study_params(self, parent: Node, round: int | None, branch: str) -> dict:
        top = self._root_of(parent)
        return study_params(top.root or (top.spec or {}).get("root"), self.plan.recipe, round, branch)

    def _model(self, node: Node) -> str:
        root_spec = node.root or (node.spec or {}).get("root") or self._root_of(node).root or {}
        return root_spec.get("model", "?")

    def _source(self, parent: Node, source: Source, role: str) -> _ResolvedSource:
        ref = source.ref
        if source.at is not None:
            return _ResolvedSource(self._rewind_point(parent, source.at), "root", source.at)
        if hasattr(ref, "run_id") and hasattr(ref, "key"):  # a state object (Python API)
            node = self.external(StateInfo(ref.run_id, ref.key, ref.spec))
        elif ref == "root":
            node = self._root_of(parent)
        elif ref == "parent":
            node = parent
        elif isinstance(ref, str):
            target = ref[len("state:") :] if ref.startswith("state:") else ref
            if target in self._by_name:
                node = self._by_name[target]
            elif RUN_ID.match(target):
                node = self.external(target)
            else:
                earlier = [n.name for n in self.plan.nodes if not n.external]
                raise SpecError(
                    f"{role} source {ref!r} is neither a run id nor an earlier state of this "
                    f"recipe ({', '.join(earlier)})"
                )
        else:
            raise SpecError(f"{role} source must be 'root', 'parent', 'state:<node>', a run id or a state; got {ref!r}")
        if self._model(node) != self._model(parent):
            raise SpecError(
                f"{role} source {node.run_id or node.name} has another architecture "
                f"({self._model(node)!r}, not {self._model(parent)!r})"
            )
        if role == "weights" and not self._descends_from(parent, node):
            raise SpecError(
                f"rewind target {node.run_id or node.name} is not an ancestor of {parent.run_id or parent.name}"
            )
        return _ResolvedSource(node, ref, None)

    def training_point(self, node: str | Node, at) -> Node:
        """The state after time `at` of the first training of `node`'s lineage (the root at time 0): the
        node a rewind to `at` reads, emitted on the way by that training (spawn points too)."""
        return self._rewind_point(node if isinstance(node, Node) else self.node(node), str(parse_time(at)))

    def _rewind_point(self, parent: Node, at: str) -> Node:
        """The state after time `at` of the first training of parent's lineage (late rewinding)."""
        root, first = self._root_and_first(parent)
        if parse_time(at).is_zero:
            return root
        if first is None or len(first.steps) != 1 or not kind_of(first.steps[0])[0].trains:
            raise SpecError(
                f"rewinding to {at} needs a lineage whose first step after the root is one train "
                f"step; {parent.run_id or parent.name}'s is {first.kind if first else 'missing'!r}"
            )
        return self._checkpoint(first, root, at)

    def _checkpoint(self, node: Node, parent: Node, at) -> Node:
        """The state `node` passes through at time `at` of its last (train) step: a node emitted by it."""
        at = str(parse_time(at))
        *head, last = node.steps
        kind, options = kind_of(last)
        if not kind.trains:
            raise SpecError(f"a checkpoint needs a state whose last step is a train step, not {node.kind!r}")
        end = train_length(options)
        point = parse_time(at)
        if point.unit == end.unit and not 0 < point.amount < end.amount:
            raise SpecError(f"checkpoint / rewind point {at} is outside the training (0..{end})")
        steps = head + [kind.record(truncated_train(options, at))]
        key = state_key(parent.key, steps, {r: self._by_name[n].key for r, n in node.inputs.items()})
        existing = self._by_key.get(key)
        if existing is not None:
            return existing
        emitted = self._add(
            Node(
                f"{node.name}@{at}",
                key,
                node.kind,
                parent=parent.name,
                steps=steps,
                inputs=dict(node.inputs),
                label=f"{node.label} @{at}",
                round=node.round,
                branch=node.branch,
                role="checkpoint",
                params={**node.params, **node_params([steps[-1]], {})},
                emitted_by=None if node.external else node.name,
                at=at,
            )
        )
        if not node.external:
            node.emits.append(emitted.name)
        return emitted

    # ---- labels -------------------------------------------------------------------------------
    @staticmethod
    def _label(round, branch, role, resolved, sources) -> str:
        prefix = f"r{round} " if round else ""
        if branch != "main" and role != "pruned":
            return f"{prefix}ctrl:{branch}"
        kinds = [kind_of(s)[0] for s in resolved]
        named = next((s for s, k in zip(resolved, kinds) if k.retrain_label), None)
        if named is not None and any(k.trains for k in kinds):  # 'rewind@500it+train'
            return f"{prefix}{describe_step(named, sources)}+train"
        return prefix + " + ".join(describe_step(s, sources) for s in resolved)

    def build(self) -> Plan:
        return self.plan
