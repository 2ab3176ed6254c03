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
    ("controls", "sibling branches off every pruned state: a list of sanity checks by name (layer_shuffle, "
                 "reinit, invert) or of {name, reinit?, prune?, retrain?}"),
):
    SECTIONS.add(Section(_name, _help))
SECTIONS.add(Section("cka", "linear CKA of every round's trained network vs the dense one (round 0), layer by layer: "
                            "true, or cka options {probe_size, batch_size, seed}", "mlprune.recipes:plan_cka"))


def plan_cka(value, recipe: RecipeContext) -> None:
    """`cka:` one analysis state per round: the round's trained state (a) vs the first training (b).

    Round 0 is the dense network against itself (CKA 1 by definition, a check of the estimator).
    """
    if value is False:
        return
    options = {} if value is True else value
    if not isinstance(options, dict) or "b" in options or "with" in options:
        raise SpecError(f"{recipe.where}: cka: must be true or a mapping of cka options (probe_size, batch_size, "
                        f"seed); the reference is always round 0, got {value!r}")
    dense = recipe.trained[0]
    for rnd, trained in sorted(recipe.trained.items()):
        recipe.checked("cka", recipe.builder.child, f"cka{rnd}", trained,
                       [{"cka": {**options, "b": f"state:{dense.name}"}}], round=rnd, role="cka",
                       label=f"r{rnd} cka vs dense" if rnd else "cka dense vs itself")


SECTIONS.add(Section("one_shot", "prune one state (root: pruning at initialization) once per method and sparsity "
                                 "and train each: {from?, sparsities, methods, controls?, reinit?, train?}",
                     impl="mlprune.recipes:one_shot_section"))


# ---- controls: sibling branches off a pruned state ----------------------------------------------

@dataclass(frozen=True)
class Control:
    """A named sanity check (``controls: [layer_shuffle]``): ``impl(prune, reinit, pruned_from)`` returns
    the control's ``{reinit?, prune?}`` for a branch whose own prune step is `prune`, whose reinit is
    `reinit` (None: it trains the pruned weights) and whose pruned state was pruned from the plan node
    named `pruned_from`. ``prune`` in the result is merged over the branch's prune step (a sibling
    pruned state from the same parent); ``reinit`` replaces the branch's."""

    name: str
    impl: str
    help: str = ""

    def load(self):
        from .registry import load_impl

        return load_impl(self.impl)


CONTROLS: Registry[Control] = Registry("control")
CONTROLS.add(Control("layer_shuffle", "mlprune.recipes:layer_shuffle_control",
                     "each layer's mask permuted at random: the same per-layer sparsity, no position; the weights "
                     "the branch would start from (Frankle et al. 2021, Su et al. 2020)"))
CONTROLS.add(Control("reinit", "mlprune.recipes:reinit_control",
                     "the same mask, a fresh initialization (the random-reinit control)"))
CONTROLS.add(Control("invert", "mlprune.recipes:invert_control",
                     "score methods: the mask of the inverted scores (keep the lowest), pruned from the same parent"))


def _weights_source(reinit: dict | None, pruned_from: str) -> dict:
    """Where the branch's weights come from: its reinit's source, else the state that was pruned."""
    from .reinit import STRATEGIES

    if reinit and reinit.get("strategy") in STRATEGIES and STRATEGIES[reinit["strategy"]].reads_source:
        return {k: reinit[k] for k in ("to", "at", "epoch") if reinit.get(k) is not None}
    return {"to": "root" if pruned_from == "root" else f"state:{pruned_from}"}


def layer_shuffle_control(prune: dict, reinit: dict | None, pruned_from: str) -> dict:
    # the pruned state's own weights are zero where the new mask may keep: shuffle from the dense source
    return {"reinit": {"strategy": "shuffle", **_weights_source(reinit, pruned_from)}}


def reinit_control(prune: dict, reinit: dict | None, pruned_from: str) -> dict:
    return {"reinit": {"strategy": "random"}}


def invert_control(prune: dict, reinit: dict | None, pruned_from: str) -> dict:
    from .pruning import METHODS

    method = prune.get("method")
    if method not in METHODS or "invert" not in METHODS[method].option_names:
        users = [m for m, e in METHODS.items() if "invert" in e.option_names]
        raise SpecError(f"control 'invert' needs a score method ({', '.join(users)}); the branch prunes with "
                        f"{method!r}")
    return {"prune": {"invert": not prune.get("invert", False)}}


_CONTROL_KEYS = ("name", "reinit", "prune", "retrain")


def resolve_control(control, prune: dict, reinit: dict | None, pruned_from: str, where: str) -> dict:
    """A control as ``{name, reinit?, prune?, retrain?}``: a named one expanded, a mapping checked."""
    if isinstance(control, str):
        if control not in CONTROLS:
            raise SpecError(f"{where}: unknown control {control!r}; allowed: {', '.join(CONTROLS)} or a mapping "
                            f"{{name, reinit?, prune?, retrain?}}")
        try:
            return {"name": control, **CONTROLS[control].load()(prune, reinit, pruned_from)}
        except SpecError as error:
            raise SpecError(f"{where}: {error}") from None
    _check(isinstance(control, dict) and "name" in control and set(control) <= set(_CONTROL_KEYS)
           and ("reinit" in control or "prune" in control),
           f"{where}: must be a control name ({', '.join(CONTROLS)}) or a mapping with name and reinit and/or "
           f"prune (optionally retrain)")
    _check(isinstance(control["name"], str) and bool(control["name"]) and "/" not in control["name"],
           f"{where}: name must be a non-empty string without '/', got {control['name']!r}")
    _check(control.get("reinit") is None or isinstance(control["reinit"], dict),
           f"{where}: reinit must be a mapping or null")
    _check(control.get("prune") is None or isinstance(control["prune"], dict),
           f"{where}: prune must be a mapping of prune options merged over the branch's")
    return dict(control)


def add_control(builder: PlanBuilder, control: dict, *, pruned: Node, pruned_from: Node, prune: dict,
                reinit: dict | None, train: dict, name: str, round: int, branch: str, checked,
                label: str | None = None) -> Node:
    """The control's trained state (and its own pruned state when it changes the prune step); its nodes
    name the branch they check (``control_of``: the pruned state's branch)."""
    base = pruned
    if control.get("prune"):
        base = checked("prune", builder.child, f"prune.{name}", pruned_from, [{"prune": {**prune, **control["prune"]}}],
                       round=round, branch=branch, role="pruned", control_of=pruned.branch)
    own_reinit = control["reinit"] if "reinit" in control else reinit
    steps = ([{"reinit": own_reinit}] if own_reinit else []) + [{"train": dict(control.get("retrain") or train)}]
    return checked("reinit / retrain", builder.child, name, base, steps, round=round, branch=branch, role="trained",
                   label=label, control_of=pruned.branch)


SECTIONS.add(Section("spawn", "instability analysis: copies of spawn points that differ only in data_order_seed, "
                              "and the interpolation between every pair: {copies, at, levels, seeds, train, "
                              "interpolate}", impl="mlprune.spawn:spawn_section"))

COMMON_PARAMS = ("dataset", "model", "rounds", "epochs", "amount", "seed", "lr", "batch_size", "data_dir")
_PARAM_REF = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")


MAX_RECIPE_BYTES = 1 << 20
MAX_ALIASES = 100
MAX_DEPTH = 40
MAX_NODES = 100_000  # after expanding aliases: a few aliases of aliases are a "billion laughs"


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


def _expanded_size(node, memo: dict) -> int:
    """How many nodes `node` stands for once every alias is expanded (shared nodes counted each time)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a node that contains itself counts once (recursive aliases)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = size
    return size


def _safe_load(text: str, where: str):
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            size = _expanded_size(node, {})
            if size > MAX_NODES:
                raise SpecError(f"expands to {size} YAML nodes through its aliases (at most {MAX_NODES}): refused")
        return loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{where}:{line} is not valid YAML ({getattr(error, 'problem', None) or error})") from None
    except RecursionError:
        raise SpecError(f"{where}: nesting too deep: refused") from None
    finally:
        loader.dispose()


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
    _check(isinstance(controls, list), f"{where}: controls: must be a list of control names or "
                                       f"{{name, reinit?, prune?, retrain?}}")

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
        for i, entry in enumerate(controls):
            control = resolve_control(entry, prune_of_round[r], reinit, previous.name, f"{where}: controls[{i}]")
            add_control(builder, control, pruned=pruned, pruned_from=previous, prune=prune_of_round[r], reinit=reinit,
                        train=retrain, name=f"round{r}.{control['name']}", round=r, branch=control["name"],
                        checked=lambda key, fn, *a, _i=i, **k: checked(f"controls[{_i}]: {key}", fn, *a, **k))
        previous = mask_source(retrained)
    context = RecipeContext(where, spec, params, builder, root, trained_by_round, pruned_by_round, retrain)
    for section in SECTIONS.values():
        if section.impl and spec.get(section.name) is not None:
            section.load()(spec[section.name], context)
    return builder.build()


# ---- one_shot: one prune per method and sparsity ---------------------------------------------

_ONE_SHOT_KEYS = ("from", "sparsities", "methods", "controls", "reinit", "train")


def _sparsities(value, where: str) -> list[float]:
    """[0.5, 0.9] or "0.5,0.9" (so that -P sparsities=0.5,0.9 works) -> sorted fractions in (0, 1)."""
    if isinstance(value, str):
        value = [_number(part.strip()) if _number(part.strip()) is not None else part.strip()
                 for part in value.split(",")]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    _check(isinstance(value, list) and bool(value),
           f"{where}: sparsities must be a list of fractions in (0, 1) or a text like '0.5,0.9', got {value!r}")
    for item in value:
        _check(isinstance(item, (int, float)) and not isinstance(item, bool) and 0 < item < 1,
               f"{where}: sparsity {item!r} is not a fraction in (0, 1) (the share of the weights pruned)")
    _check(len(set(value)) == len(value), f"{where}: sparsities {value!r} repeat a value")
    return sorted(float(v) for v in value)


def _percent_name(sparsity: float) -> str:
    return f"{100 * sparsity:.10g}"


def one_shot_section(value, recipe: RecipeContext) -> None:
    """``one_shot``: every method prunes the same state once at every sparsity, and each is trained.

    ::

        one_shot:
          from: root                 # root (pruning at initialization), train (the first trained state)
                                     #   or any earlier node of the plan
          sparsities: [0.5, 0.9]     # also "0.5,0.9"; the prune amount: the share of the remaining weights
          methods:                   # branch name -> prune step (its amount is the sparsity)
            snip: {method: snip}
            magnitude: {prune: {method: l1_unstructured, scope: global}, controls: [layer_shuffle]}
          controls: [layer_shuffle, reinit, invert]   # for every method without its own list
          reinit: null               # before each training (default: none, the pruned weights train)
          train: {...}               # default: the recipe's retrain (or train)

    Each method is a branch (``<method>``), each control one more (``<method>/<control>``); the rounds
    of a branch are its sparsities in increasing order (round 0 is the recipe's first training), so the
    report draws one accuracy-vs-remaining curve per method and control.
    """
    where = f"{recipe.where}: one_shot"
    _check(isinstance(value, dict), f"{where}: must be a mapping with sparsities and methods")
    unknown = sorted(set(value) - set(_ONE_SHOT_KEYS))
    _check(not unknown, f"{where}: unknown key {unknown[0] if unknown else ''!r}; allowed: {', '.join(_ONE_SHOT_KEYS)}")
    sparsities = _sparsities(value.get("sparsities"), where)
    source = value.get("from", "root")
    if source == "root":
        pruned_from = recipe.root
    elif source == "train":
        pruned_from = recipe.trained[0]
    else:
        pruned_from = recipe.checked("one_shot.from", recipe.builder.node, str(source))
    methods = value.get("methods")
    _check(isinstance(methods, dict) and bool(methods),
           f"{where}: methods must be a mapping {{branch name: prune step}}, got {methods!r}")
    default_controls = value.get("controls") or []
    _check(isinstance(default_controls, list), f"{where}: controls must be a list")
    reinit = value.get("reinit")
    _check(reinit is None or isinstance(reinit, dict), f"{where}: reinit must be a mapping or null")
    train = dict(value.get("train") or recipe.retrain)
    taken = {node.branch for node in recipe.builder.plan.nodes}
    for name, entry in methods.items():
        at = f"{where}: methods.{name}"
        _check(isinstance(name, str) and bool(name) and "/" not in name and "." not in name,
               f"{at}: a branch name is a non-empty string without '/' or '.'")
        _check(name not in taken, f"{at}: the branch name {name!r} is taken by another part of the recipe")
        _check(isinstance(entry, dict), f"{at}: must be a prune step or {{prune, controls?}}")
        if "prune" in entry:
            _check(set(entry) <= {"prune", "controls"} and isinstance(entry["prune"], dict),
                   f"{at}: with 'prune', only 'controls' may be given besides")
            prune, controls = dict(entry["prune"]), entry.get("controls", default_controls)
        else:
            prune, controls = dict(entry), default_controls
        _check("amount" not in prune, f"{at}: the amount comes from sparsities; leave it out")
        _check(isinstance(controls, list), f"{at}: controls must be a list")
        for index, sparsity in enumerate(sparsities, start=1):
            step = {**prune, "amount": sparsity}
            node = f"{name}.{_percent_name(sparsity)}"
            percent = f"{_percent_name(sparsity)}%"
            pruned = recipe.checked(f"one_shot.methods.{name}", recipe.builder.child, f"prune.{node}", pruned_from,
                                    [{"prune": step}], round=index, branch=name, role="pruned",
                                    label=f"{name} {percent}")
            steps = ([{"reinit": reinit}] if reinit else []) + [{"train": train}]
            recipe.checked(f"one_shot.methods.{name}", recipe.builder.child, node, pruned, steps, round=index,
                           branch=name, role="trained", label=f"{name} {percent} +train")
            for i, entry_control in enumerate(controls):
                control = resolve_control(entry_control, step, reinit, pruned_from.name, f"{at}: controls[{i}]")
                add_control(recipe.builder, control, pruned=pruned, pruned_from=pruned_from, prune=step, reinit=reinit,
                            train=train, name=f"{node}.{control['name']}", round=index,
                            branch=f"{name}/{control['name']}", label=f"{name} {percent} ctrl:{control['name']}",
                            checked=lambda key, fn, *a, _at=at, _i=i, **k: recipe.checked(
                                f"one_shot.methods.{name}.controls[{_i}]: {key}", fn, *a, **k))


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
