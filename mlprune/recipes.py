"""Recipe files: schema, validation with file/key errors, parameters, and the plan they compile to.

A recipe file is YAML data, read with `yaml.safe_load`: nothing in it runs.
A value that is exactly ``$name`` is replaced by the parameter ``name`` (typed:
an int stays an int); no other substitution exists.

    name: lt_structuredL1
    description: Lottery ticket, L1-structured pruning of input channels.
    params: {rounds: 2, amount: 0.2, epochs: 2, seed: 0, dataset: digits, model: lenet,
             lr: 0.01, batch_size: 32}
    protocols: {paper: {dataset: mnist, rounds: 20, epochs: 30}}   # -P protocol=paper
    root: {model: $model, dataset: $dataset, seed: $seed}
    train: {epochs: $epochs, lr: $lr, batch_size: $batch_size}
    rounds: $rounds
    prune: {method: ln_structured, n: 1, dim: 1, amount: $amount}
    reinit: {strategy: rewind, to: root}

compiles to the plan root -> train -> (prune -> reinit+train) x rounds.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import SpecError

TOP_LEVEL_KEYS = {
    "name": "the recipe's name (defaults to the file name)",
    "description": "what the experiment is, for people",
    "extends": "another recipe file (relative path) whose keys this one overrides",
    "params": "parameters and their defaults; override with -P name=value",
    "protocols": "named parameter sets, chosen with -P protocol=<name>",
    "root": "the initialized network: model, dataset, init, seed, data options",
    "train": "the first training (train step options)",
    "rounds": "how many prune -> reinit -> retrain rounds",
    "prune": "the prune step of every round",
    "schedule": "per-round overrides of the prune step: a list of {rounds: 'A-B', prune: {...}}",
    "reinit": "the reinit step of every round (null: none, the pruned weights are retrained)",
    "retrain": "train step options for the rounds (defaults to train)",
    "mask_epoch": "prune from the state after this many epochs of each training (an early mask; the full training is a side branch)",
    "controls": "sibling branches off every pruned state: a list of {name, reinit, retrain?}",
}
COMMON_PARAMS = ("dataset", "model", "rounds", "epochs", "amount", "seed", "lr", "batch_size", "data_dir")
_PARAM_REF = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")


@dataclass
class PlanNode:
    """One state to reach: a root spec, or a parent node plus recipe steps."""

    name: str
    parent: str | None
    steps: list = field(default_factory=list)
    root: dict | None = None
    label: str = ""
    round: int = 0
    branch: str = "main"


@dataclass
class Plan:
    recipe: str
    params: dict
    nodes: list[PlanNode]
    data_dir: str | None = None

    def node(self, name: str) -> PlanNode:
        return next(n for n in self.nodes if n.name == name)


def parse_value(text: str):
    """A -P value: YAML scalar syntax (3 -> int, 0.2 -> float, true, null, text)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise SpecError(f"cannot parse parameter value {text!r}") from None
    if isinstance(value, (dict, list)):
        raise SpecError(f"parameter value {text!r} must be a scalar, not a {type(value).__name__}")
    return value


def parse_assignments(pairs) -> dict:
    """['rounds=3', 'amount=0.1'] -> {'rounds': 3, 'amount': 0.1}."""
    return {name: parse_value(text) for name, text in _name_value_pairs(pairs, "parameter")}


def _name_value_pairs(pairs, what: str):
    """('name', 'text') of each 'name=text'; a one-line SpecError for anything else."""
    for pair in pairs or ():
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise SpecError(f"{what} {pair!r} must look like name=value")
        yield name.strip(), text


def parse_options(pairs) -> dict:
    """Step options ['amount=0.2', 'include=[@conv]'] -> typed dict; empty values are dropped (= default)."""
    options = {}
    for name, text in _name_value_pairs(pairs, "option"):
        if text.strip() == "":
            continue
        try:
            options[name] = yaml.safe_load(text)
        except yaml.YAMLError:  # e.g. '@conv' or '[@conv, fc1.weight]': YAML reserves '@'
            stripped = text.strip()
            if stripped.startswith("[") and stripped.endswith("]"):
                options[name] = [item.strip() for item in stripped[1:-1].split(",") if item.strip()]
            else:
                options[name] = stripped
    return options


def read_recipe(path: str | Path, _seen: tuple = ()) -> dict:
    """The recipe file's mapping, `extends` merged in, top-level keys checked."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"recipe file {str(path)!r} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}:{where} is not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a recipe is a mapping of keys ({', '.join(TOP_LEVEL_KEYS)})")
    unknown = set(raw) - set(TOP_LEVEL_KEYS)
    if unknown:
        raise SpecError(f"{path}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(TOP_LEVEL_KEYS)}")
    raw.setdefault("name", path.stem)
    if "extends" in raw:
        base_path = (path.parent / raw["extends"]).resolve()
        if base_path in _seen:
            raise SpecError(f"{path}: 'extends' makes a cycle through {base_path}")
        base = read_recipe(base_path, _seen + (path.resolve(),))
        merged = _merge(base, {k: v for k, v in raw.items() if k != "extends"})
        merged["name"] = raw["name"]
        merged.setdefault("description", base.get("description", ""))
        return merged
    return raw


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key in ("params", "protocols"):
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_params(raw: dict, overrides: dict, where: str) -> dict:
    declared = dict(raw.get("params") or {})
    protocols = raw.get("protocols") or {}
    # an empty value means "the recipe's default" (MLproject passes every parameter, '' when unset)
    overrides = {k: v for k, v in overrides.items() if v is not None and v != ""}
    protocol = overrides.pop("protocol", None)
    params = dict(declared)
    if protocol not in (None, "", "default"):
        if protocol not in protocols:
            allowed = ", ".join(["default", *protocols])
            raise SpecError(f"{where}: unknown protocol {protocol!r}; allowed: {allowed}")
        params.update(protocols[protocol])
    unknown = set(overrides) - set(declared)
    if unknown:
        allowed = ", ".join(sorted(set(declared) | {"protocol"}))
        raise SpecError(f"{where}: unknown parameter {sorted(unknown)[0]!r}; allowed: {allowed}")
    params.update(overrides)
    return params


def _substitute(value, params: dict, where: str):
    if isinstance(value, str):
        match = _PARAM_REF.match(value)
        if match:
            if match.group(1) not in params:
                raise SpecError(f"{where}: unknown parameter {value!r}; declared: {', '.join(sorted(params))}")
            return params[match.group(1)]
        return value
    if isinstance(value, dict):
        return {k: _substitute(v, params, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, params, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _check(condition: bool, message: str):
    if not condition:
        raise SpecError(message)


def _round_ranges(text, rounds: int, where: str) -> range:
    if isinstance(text, int) and not isinstance(text, bool):
        return range(text, text + 1)
    half = (rounds + 1) // 2  # the first half gets the odd round
    if text == "first_half":
        return range(1, half + 1)
    if text == "second_half":
        return range(half + 1, rounds + 1)
    match = re.match(r"^\s*(\d+)\s*-\s*(\d+|end)\s*$", str(text))
    _check(match is not None,
           f"{where}: rounds must be 3, '1-10', '11-end', first_half or second_half; got {text!r}")
    start = int(match.group(1))
    stop = rounds if match.group(2) == "end" else int(match.group(2))
    return range(start, stop + 1)


def compile_recipe(path: str | Path, overrides: dict | None = None) -> Plan:
    """Validate a recipe file with parameters and compile it to a plan.

    Every step is resolved here (so a bad value fails before anything runs),
    with the file and key in the message.
    """
    from .dag import resolve_root, resolve_step  # late import: dag imports torch and mlflow

    raw = read_recipe(path)
    where = str(path)
    params = resolve_params(raw, overrides or {}, where)
    spec = _substitute({k: v for k, v in raw.items() if k not in ("params", "protocols")}, params, where)

    def checked(fn, value, key):
        try:
            return fn(value)
        except SpecError as error:
            raise SpecError(f"{where}: {key}: {error}") from None

    _check(isinstance(spec.get("root"), dict), f"{where}: root: required mapping (model, dataset, seed, ...)")
    root = dict(spec["root"])
    data_dir = root.pop("data_dir", None) or params.get("data_dir")
    checked(lambda r: resolve_root(r), root, "root")
    rounds = spec.get("rounds", 0)
    _check(isinstance(rounds, int) and not isinstance(rounds, bool) and rounds >= 0,
           f"{where}: rounds: must be an integer >= 0, got {rounds!r}")
    _check(isinstance(spec.get("train"), dict), f"{where}: train: required mapping of train options")
    train = {"train": spec["train"]}
    checked(resolve_step, train, "train")
    retrain = {"train": spec.get("retrain") or spec["train"]}
    checked(resolve_step, retrain, "retrain")
    reinit = spec.get("reinit")
    reinit_step = [{"reinit": reinit}] if reinit else []
    if reinit_step:
        checked(resolve_step, reinit_step[0], "reinit")
    if rounds:
        _check(isinstance(spec.get("prune"), dict) or spec.get("schedule"),
               f"{where}: prune: required when rounds > 0")

    prune_of_round = {}
    for r in range(1, rounds + 1):
        prune_of_round[r] = copy.deepcopy(spec.get("prune") or {})
    for i, entry in enumerate(spec.get("schedule") or []):
        key = f"schedule[{i}]"
        _check(isinstance(entry, dict) and set(entry) <= {"rounds", "prune"} and "prune" in entry,
               f"{where}: {key}: must be a mapping with 'rounds' and 'prune'")
        for r in _round_ranges(entry.get("rounds", f"1-{rounds}"), rounds, f"{where}: {key}.rounds"):
            if r in prune_of_round:
                prune_of_round[r] = {**prune_of_round[r], **entry["prune"]}
    for r, prune in prune_of_round.items():
        checked(resolve_step, {"prune": prune}, f"prune (round {r})")

    mask_epoch = spec.get("mask_epoch")
    if mask_epoch is not None:
        for key, step in (("train", train), ("retrain", retrain)):
            epochs = step["train"].get("epochs", 1)
            _check(isinstance(mask_epoch, int) and not isinstance(mask_epoch, bool) and 1 <= mask_epoch <= epochs,
                   f"{where}: mask_epoch: must be an int in 1..{key} epochs ({epochs}), got {mask_epoch!r}")

    def early(step):
        """The train step, emitting the early-mask state as a checkpoint (see dag.train_checkpoints)."""
        if mask_epoch is None or mask_epoch == step["train"].get("epochs", 1):
            return step
        return {"train": {**step["train"], "checkpoints": [mask_epoch]}}

    def at_mask_epoch(steps):
        *head, last = steps
        return head + [{"train": {**last["train"], "epochs": mask_epoch}}]

    controls = spec.get("controls") or []
    _check(isinstance(controls, list), f"{where}: controls: must be a list of {{name, reinit, retrain?}}")
    for i, control in enumerate(controls):
        _check(isinstance(control, dict) and "name" in control and "reinit" in control
               and set(control) <= {"name", "reinit", "retrain"},
               f"{where}: controls[{i}]: must be a mapping with name, reinit and optionally retrain")
        checked(resolve_step, {"reinit": control["reinit"]}, f"controls[{i}].reinit")

    name = raw["name"]
    nodes = [PlanNode("root", None, root=root, label=f"{name}: init"),
             PlanNode("train", "root", [early(train)], label=f"{name}: train")]
    previous = "train"
    if mask_epoch is not None:
        nodes.append(PlanNode(f"train@{mask_epoch}", "root", at_mask_epoch([train]),
                              label=f"{name}: train, epoch {mask_epoch} (mask)"))
        previous = f"train@{mask_epoch}"
    for r in range(1, rounds + 1):
        pruned = f"prune{r}"
        nodes.append(PlanNode(pruned, previous, [{"prune": prune_of_round[r]}],
                              label=f"{name}: round {r} prune", round=r))
        retrained = f"round{r}"
        nodes.append(PlanNode(retrained, pruned, reinit_step + [early(retrain)],
                              label=f"{name}: round {r} {'reinit+' if reinit_step else ''}train", round=r))
        for control in controls:
            control_retrain = {"train": control.get("retrain") or retrain["train"]}
            nodes.append(PlanNode(f"{retrained}.{control['name']}", pruned,
                                  [{"reinit": control["reinit"]}, control_retrain],
                                  label=f"{name}: round {r} control {control['name']}", round=r,
                                  branch=control["name"]))
        previous = retrained
        if mask_epoch is not None:
            previous = f"{retrained}@{mask_epoch}"
            nodes.append(PlanNode(previous, pruned, at_mask_epoch(reinit_step + [retrain]),
                                  label=f"{name}: round {r} train, epoch {mask_epoch} (mask)", round=r))
    earlier: list[str] = []
    for node in nodes:  # 'state:<ref>' names an earlier node of this plan, or a run id
        for step in node.steps:
            (kind, options), = step.items()
            for key in ("to", "from"):
                ref = node_reference((options or {}).get(key))
                if ref is not None and not re.fullmatch(r"[0-9a-f]{32}", ref) and ref not in earlier:
                    raise SpecError(f"{where}: {node.name}: {kind}.{key}: 'state:{ref}' is neither a run id nor an "
                                    f"earlier state of this recipe ({', '.join(earlier)})")
        earlier.append(node.name)
    return Plan(name, params, nodes, data_dir=data_dir)


def node_reference(value) -> str | None:
    """'state:<plan node>' -> the node name; None for anything else."""
    if isinstance(value, str) and value.startswith("state:"):
        return value[len("state:"):]
    return None


def bind_node_references(step: dict, states: dict) -> dict:
    """Replace 'state:<plan node>' in a step's `to` / `from` by that node's reached state."""
    (kind, options), = step.items()
    bound = dict(options or {})
    for key in ("to", "from"):
        name = node_reference(bound.get(key))
        if name is not None and name in states:
            bound[key] = states[name]
    return {kind: bound}


def run_plan(plan: Plan, experiment, *, on_state=None) -> dict:
    """Reach every node of the plan in order; returns {node name: ExperimentState}."""
    from .dag import Recipe

    states = {}
    for node in plan.nodes:
        if node.root is not None:
            state = experiment.init(**node.root, **({"data_dir": plan.data_dir} if plan.data_dir else {}))
        else:
            steps = [bind_node_references(step, states) for step in node.steps]
            state = experiment.apply(states[node.parent], Recipe(steps, name=node.label))
        states[node.name] = state
        if on_state is not None:
            on_state(node, state)
    return states
