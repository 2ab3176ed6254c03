"""Recipe files: schema, validation with file/key errors, parameters, and the plan they compile to.

A recipe file is YAML data, read with a safe YAML loader: nothing in it runs.
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

compiles to the plan root -> train -> (prune -> reinit+train) x rounds
(`compile_recipe`, a `plan.Plan` of keyed nodes built with `plan.PlanBuilder`).

Reading is bounded: a file over 1 MiB, more than 100 YAML aliases, nesting deeper
than 40 levels or bytes that are not UTF-8 are one-line errors, before anything
is built (a "billion laughs" alias bomb cannot eat the machine).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import SpecError
from .plan import Node, Plan, PlanBuilder, StateInfo
from .registry import Registry
from .spec.times import parse_time

@dataclass(frozen=True)
class Section:
    """One top-level key of a recipe file.

    ``impl`` (``"module:function"``), for keys that add states to the plan on their own:
    ``fn(value, recipe: RecipeContext)`` is called after the rounds are planned, in the order
    of the entries. Keys without one are read by `compile_recipe` itself.
    """

    name: str
    help: str
    impl: str = ""

    def load(self):
        from .registry import load_impl

        return load_impl(self.impl)


@dataclass
class RecipeContext:
    """What a recipe section sees: the plan so far and the recipe's resolved values."""

    where: str                  # the file, for messages
    spec: dict                  # the recipe's keys, parameters substituted
    params: dict
    builder: PlanBuilder
    root: Node
    trained: dict               # round -> the round's trained node (0: the first training)
    pruned: dict                # round -> the round's prune node
    retrain: dict               # the rounds' train options

    def checked(self, key: str, fn, *args, **kwargs):
        """fn(*args, **kwargs), its SpecError prefixed with the file and `key`."""
        try:
            return fn(*args, **kwargs)
        except SpecError as error:
            raise SpecError(f"{self.where}: {key}: {error}") from None


SECTIONS: Registry[Section] = Registry("recipe key")
for _name, _help in (
    ("name", "the recipe's name (defaults to the file name)"),
    ("description", "what the experiment is, for people"),
    ("extends", "another recipe file (relative path) whose keys this one overrides"),
    ("params", "parameters and their defaults; override with -P name=value"),
    ("protocols", "named parameter sets, chosen with -P protocol=<name>"),
    ("root", "the initialized network: model, dataset, init, seed, data options"),
    ("train", "the first training (train step options)"),
    ("rounds", "how many prune -> reinit -> retrain rounds"),
    ("prune", "the prune step of every round"),
    ("schedule", "per-round overrides of the prune step: a list of {rounds: 'A-B', prune: {...}}"),
    ("reinit", "the reinit step of every round (null: none, the pruned weights are retrained)"),
    ("retrain", "train step options for the rounds (defaults to train)"),
    ("mask_epoch", "prune from the state after this many epochs of each training (an early mask; the full "
                   "training is a side branch)"),
    ("controls", "sibling branches off every pruned state: a list of {name, reinit, retrain?}"),
):
    SECTIONS.add(Section(_name, _help))
SECTIONS.add(Section("spawn", "instability analysis: copies of spawn points that differ only in data_order_seed, "
                              "and the interpolation between every pair: {copies, at, levels, seeds, train, "
                              "interpolate}", impl="mlprune.spawn:spawn_section"))

COMMON_PARAMS = ("dataset", "model", "rounds", "epochs", "amount", "seed", "lr", "batch_size", "data_dir")
_PARAM_REF = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")


MAX_RECIPE_BYTES = 1 << 20
MAX_ALIASES = 100
MAX_DEPTH = 40


def _number(text: str):
    """'1e-3' -> 0.001: YAML 1.1 reads a float without a dot as a string; users write numbers so."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if text.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity") else None


def parse_value(text: str):
    """A -P value: YAML scalar syntax (3 -> int, 0.2 and 1e-3 -> float, true, null, text)."""
    try:
        value = _safe_load(text, "parameter value")
    except SpecError:
        raise SpecError(f"cannot parse parameter value {text!r}") from None
    if isinstance(value, str):
        number = _number(value.strip())
        if number is not None:
            return number
    if isinstance(value, (dict, list)):
        raise SpecError(f"parameter value {text!r} must be a scalar, not a {type(value).__name__}")
    return value


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses alias bombs and deep nesting while composing."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise SpecError(f"more than {MAX_ALIASES} YAML aliases (*name): refused")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise SpecError(f"nesting deeper than {MAX_DEPTH} levels: refused")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _safe_load(text: str, where: str):
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{where}:{line} is not valid YAML ({getattr(error, 'problem', None) or error})") from None
    except RecursionError:
        raise SpecError(f"{where}: nesting too deep: refused") from None


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
            value = _safe_load(text, f"option {name}")
        except SpecError:  # e.g. '@conv' or '[@conv, fc1.weight]': YAML reserves '@'
            stripped = text.strip()
            if stripped.startswith("[") and stripped.endswith("]"):
                value = [item.strip() for item in stripped[1:-1].split(",") if item.strip()]
            else:
                value = stripped
        if isinstance(value, str) and _number(value.strip()) is not None:
            value = _number(value.strip())
        options[name] = value
    return options


def read_recipe(path: str | Path, _seen: tuple = ()) -> dict:
    """The recipe file's mapping, `extends` merged in, top-level keys checked."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"recipe file {str(path)!r} not found")
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise SpecError(f"{path}: {size} bytes; a recipe file is at most {MAX_RECIPE_BYTES} bytes")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(f"{path}: not UTF-8 text (byte {error.start}): a recipe is a YAML text file") from None
    try:
        raw = _safe_load(text, str(path))
    except SpecError as error:
        message = str(error)
        raise SpecError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a recipe is a mapping of keys ({', '.join(SECTIONS)})")
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise SpecError(f"{path}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(SECTIONS)}")
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
    """`extends`: the child's keys replace the base's; params merge, and each protocol merges."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key == "params" and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        elif key == "protocols" and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {name: {**out[key].get(name, {}), **(protocol or {})} for name, protocol in
                        {**out[key], **value}.items()}
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




def _int_param(value, where: str, minimum: int = 0) -> int:
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
           f"{where}: must be an integer >= {minimum}, got {value!r}")
    return value


def compile_recipe(path: str | Path, overrides: dict | None = None, *,
                   load_state=None) -> Plan:
    """Validate a recipe file with parameters and compile it to a plan of keyed nodes.

    Every step is resolved here (so a bad value fails before anything runs), with the
    file and key in the message. ``load_state(run_id) -> plan.StateInfo`` resolves
    ``state:<run id>`` references (the store's); without it only plan nodes can be named.

    Node names: ``root``, ``train``, ``prune<r>``, ``round<r>`` (the round's retrained
    state), ``round<r>.<control>``, ``<node>@<time>`` (checkpoints: ``mask_epoch`` masks,
    rewind points). Nodes carry their round, branch and role (``trained``, ``pruned``,
    ``control``, ``checkpoint``), which the report reads.
    """
    raw = read_recipe(path)
    where = str(path)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None and v != ""}
    params = resolve_params(raw, overrides, where)
    spec = _substitute({k: v for k, v in raw.items() if k not in ("params", "protocols")}, params, where)
    name = raw["name"]
    builder = PlanBuilder(name, load_state=load_state, params=params, overrides=overrides)

    def checked(key, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SpecError as error:
            raise SpecError(f"{where}: {key}: {error}") from None

    _check(isinstance(spec.get("root"), dict), f"{where}: root: required mapping (model, dataset, seed, ...)")
    root_spec = dict(spec["root"])
    data_dir = root_spec.pop("data_dir", None) or params.get("data_dir")
    rounds = _int_param(spec.get("rounds", 0), f"{where}: rounds")
    _check(isinstance(spec.get("train"), dict), f"{where}: train: required mapping of train options")
    train = dict(spec["train"])
    retrain = dict(spec.get("retrain") or train)
    reinit = spec.get("reinit")
    _check(reinit is None or isinstance(reinit, dict), f"{where}: reinit: must be a mapping or null")
    if rounds:
        _check(isinstance(spec.get("prune"), dict) or spec.get("schedule"), f"{where}: prune: required when rounds > 0")

    prune_of_round = {r: copy.deepcopy(spec.get("prune") or {}) for r in range(1, rounds + 1)}
    for i, entry in enumerate(spec.get("schedule") or []):
        key = f"schedule[{i}]"
        _check(isinstance(entry, dict) and set(entry) <= {"rounds", "prune"} and "prune" in entry,
               f"{where}: {key}: must be a mapping with 'rounds' and 'prune'")
        for r in _round_ranges(entry.get("rounds", f"1-{rounds}"), rounds, f"{where}: {key}.rounds"):
            if r in prune_of_round:
                prune_of_round[r] = {**prune_of_round[r], **entry["prune"]}

    mask_epoch = spec.get("mask_epoch")
    mask_at = None
    if mask_epoch is not None:
        for key, options in (("train", train), ("retrain", retrain)):
            epochs = options.get("epochs", options.get("steps", 1))
            _check(isinstance(mask_epoch, int) and not isinstance(mask_epoch, bool) and isinstance(epochs, int)
                   and 1 <= mask_epoch <= epochs,
                   f"{where}: mask_epoch: must be an int in 1..{key} epochs ({epochs}), got {mask_epoch!r}")
        mask_at = str(parse_time(mask_epoch))

    def with_mask_checkpoint(options):
        """The train step, emitting the early-mask state (mask_epoch) as a checkpoint."""
        epochs = options.get("epochs", options.get("steps", 1))
        if mask_epoch is None or mask_epoch == epochs:
            return {"train": options}
        return {"train": {**options, "checkpoints": [mask_epoch]}}

    def mask_source(node):
        """Where the next round's mask comes from: the trained node, or its mask_epoch checkpoint."""
        if mask_at is None or mask_at not in (n.at for n in builder.plan.nodes if n.emitted_by == node.name):
            return node
        return next(n for n in builder.plan.nodes if n.emitted_by == node.name and n.at == mask_at)

    controls = spec.get("controls") or []
    _check(isinstance(controls, list), f"{where}: controls: must be a list of {{name, reinit, retrain?}}")
    for i, control in enumerate(controls):
        _check(isinstance(control, dict) and "name" in control and "reinit" in control
               and set(control) <= {"name", "reinit", "retrain"},
               f"{where}: controls[{i}]: must be a mapping with name, reinit and optionally retrain")

    root = checked("root", builder.root, "root", root_spec, data_dir=data_dir, role="root")
    trained = checked("train", builder.child, "train", root, [with_mask_checkpoint(train)], round=0,
                      role="trained", label="train")
    trained_by_round, pruned_by_round = {0: trained}, {}
    previous = mask_source(trained)
    reinit_steps = [{"reinit": reinit}] if reinit else []
    for r in range(1, rounds + 1):
        pruned = checked(f"prune (round {r})", builder.child, f"prune{r}", previous,
                         [{"prune": prune_of_round[r]}], round=r, role="pruned")
        retrained = checked("reinit / retrain" if reinit_steps else "retrain", builder.child, f"round{r}", pruned,
                            reinit_steps + [with_mask_checkpoint(retrain)], round=r, role="trained")
        trained_by_round[r], pruned_by_round[r] = retrained, pruned
        for i, control in enumerate(controls):
            control_train = dict(control.get("retrain") or retrain)
            checked(f"controls[{i}]", builder.child, f"round{r}.{control['name']}", pruned,
                    [{"reinit": control["reinit"]}, {"train": control_train}], round=r,
                    branch=str(control["name"]), role="trained")
        previous = mask_source(retrained)
    context = RecipeContext(where, spec, params, builder, root, trained_by_round, pruned_by_round, retrain)
    for section in SECTIONS.values():
        if section.impl and spec.get(section.name) is not None:
            section.load()(spec[section.name], context)
    return builder.build()


# ---- sweeps --------------------------------------------------------------------------
def parse_seeds(text: str | None) -> list[int]:
    """'0-9' -> [0..9]; '0,3,7' -> [0, 3, 7]; '1-3,8' -> [1, 2, 3, 8]."""
    import re

    if text is None:
        return []
    seeds: list[int] = []
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
            raise SpecError(f"--seeds must look like 0-9, 0,3,7 or 1-3,8 (integers >= 0, ranges low-high); "
                            f"got {text!r}")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        seeds += [seed for seed in range(low, high + 1) if seed not in seeds]
    return seeds


def parse_grid(pairs) -> list[dict]:
    """['amount=0.1,0.2', 'epochs=5'] -> the cartesian product [{amount: 0.1, epochs: 5}, {amount: 0.2, ...}]."""
    import itertools

    axes: dict[str, list] = {}
    for pair in pairs or ():
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SpecError(f"sweep parameter {pair!r} must look like name=value or name=v1,v2,...")
        values = []
        for item in text.split(","):
            if not item.strip():
                raise SpecError(f"sweep parameter {pair!r} has an empty value; write name=v1,v2,...")
            try:
                values.append(parse_value(item.strip()))
            except SpecError as error:
                raise SpecError(f"sweep parameter {name!r}: {error}") from None
        if name in axes:
            raise SpecError(f"sweep parameter {name!r} is given twice; list its values once: {name}=v1,v2")
        axes[name] = values
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def sweep_plans(recipes, seeds: list[int], grid: list[dict], *, load_state=None) -> list[tuple[str, Plan]]:
    """[(label, plan)] for every recipe x seed x grid point; every one validated before anything runs."""
    plans = []
    for recipe in recipes:
        for seed in seeds or [None]:
            for point in grid or [{}]:
                overrides = {**point, **({"seed": seed} if seed is not None else {})}
                plan = compile_recipe(recipe, overrides, load_state=load_state)
                label = " ".join([plan.recipe] + [f"{k}={v}" for k, v in overrides.items()])
                plans.append((label, plan))
    return plans
