"""The recipe key ``one_shot``: one state pruned once per method and sparsity, each trained."""

from __future__ import annotations

from ..errors import require
from ..plan import Naming
from .controls import add_control, resolve_control
from .files import parse_number
from .sections import RecipeContext

_ONE_SHOT_KEYS = ("from", "sparsities", "methods", "controls", "reinit", "train")


def _sparsities(value, where: str) -> list[float]:
    """[0.5, 0.9] or "0.5,0.9" (so that -P sparsities=0.5,0.9 works) -> sorted fractions in (0, 1)."""
    if isinstance(value, str):
        value = [
            parse_number(part.strip()) if parse_number(part.strip()) is not None else part.strip()
            for part in value.split(",")
        ]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    require(
        isinstance(value, list) and bool(value),
        f"{where}: sparsities must be a list of fractions in (0, 1) or a text like '0.5,0.9', got {value!r}",
    )
    for item in value:
        require(
            isinstance(item, (int, float)) and not isinstance(item, bool) and 0 < item < 1,
            f"{where}: sparsity {item!r} is not a fraction in (0, 1) (the share of the weights pruned)",
        )
    require(len(set(value)) == len(value), f"{where}: sparsities {value!r} repeat a value")
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
            rigl: {prune: {method: random_unstructured}, train: {sparse_training: rigl}}  # its own train
                                     #   options, merged over the section's
          controls: [layer_shuffle, reinit, invert]   # for every method without its own list
          reinit: null               # before each training (default: none, the pruned weights train)
          train: {...}               # default: the recipe's retrain (or train)

    A method's own ``train`` (``{prune, train}``) is merged over the section's (dynamic sparse training
    for one branch). Each method is a branch (``<method>``), each control one more (``<method>/<control>``); the rounds
    of a branch are its sparsities in increasing order (round 0 is the recipe's first training), so the
    report draws one accuracy-vs-remaining curve per method and control.
    """
    where = f"{recipe.where}: one_shot"
    require(isinstance(value, dict), f"{where}: must be a mapping with sparsities and methods")
    unknown = sorted(set(value) - set(_ONE_SHOT_KEYS))
    require(
        not unknown, f"{where}: unknown key {unknown[0] if unknown else ''!r}; allowed: {', '.join(_ONE_SHOT_KEYS)}"
    )
    sparsities = _sparsities(value.get("sparsities"), where)
    source = value.get("from", "root")
    if source == "root":
        pruned_from = recipe.root
    elif source == "train":
        pruned_from = recipe.trained[0]
    else:
        pruned_from = recipe.checked("one_shot.from", recipe.builder.node, str(source))
    methods = value.get("methods")
    require(
        isinstance(methods, dict) and bool(methods),
        f"{where}: methods must be a mapping {{branch name: prune step}}, got {methods!r}",
    )
    default_controls = value.get("controls") or []
    require(isinstance(default_controls, list), f"{where}: controls must be a list")
    reinit = value.get("reinit")
    require(reinit is None or isinstance(reinit, dict), f"{where}: reinit must be a mapping or null")
    train = dict(value.get("train") or recipe.retrain)
    taken = {node.branch for node in recipe.builder.plan.nodes}
    for name, entry in methods.items():
        at = f"{where}: methods.{name}"
        require(
            isinstance(name, str) and bool(name) and "/" not in name and "." not in name,
            f"{at}: a branch name is a non-empty string without '/' or '.'",
        )
        require(name not in taken, f"{at}: the branch name {name!r} is taken by another part of the recipe")
        require(isinstance(entry, dict), f"{at}: must be a prune step or {{prune, controls?, train?}}")
        own_train = train
        if "prune" in entry:
            require(
                set(entry) <= {"prune", "controls", "train"} and isinstance(entry["prune"], dict),
                f"{at}: with 'prune', only 'controls' and 'train' may be given besides",
            )
            require(isinstance(entry.get("train") or {}, dict), f"{at}: train must be a mapping of train options")
            prune, controls = dict(entry["prune"]), entry.get("controls", default_controls)
            own_train = {**train, **(entry.get("train") or {})}
        else:
            prune, controls = dict(entry), default_controls
        require("amount" not in prune, f"{at}: the amount comes from sparsities; leave it out")
        require(isinstance(controls, list), f"{at}: controls must be a list")
        for index, sparsity in enumerate(sparsities, start=1):
            step = {**prune, "amount": sparsity}
            node = f"{name}.{_percent_name(sparsity)}"
            percent = f"{_percent_name(sparsity)}%"
            pruned = recipe.checked(
                f"one_shot.methods.{name}",
                recipe.builder.child,
                f"prune.{node}",
                pruned_from,
                [{"prune": step}],
                round=index,
                branch=name,
                role="pruned",
                label=f"{name} {percent}",
            )
            steps = ([{"reinit": reinit}] if reinit else []) + [{"train": own_train}]
            recipe.checked(
                f"one_shot.methods.{name}",
                recipe.builder.child,
                node,
                pruned,
                steps,
                round=index,
                branch=name,
                role="trained",
                label=f"{name} {percent} +train",
            )
            for i, entry_control in enumerate(controls):
                control = resolve_control(entry_control, step, reinit, pruned_from.name, f"{at}: controls[{i}]")
                add_control(
                    recipe.builder,
                    control,
                    {"prune": step, "reinit": reinit, "train": own_train},
                    pruned=pruned,
                    pruned_from=pruned_from,
                    naming=Naming(
                        f"{node}.{control['name']}",
                        f"{name} {percent} ctrl:{control['name']}",
                        index,
                        f"{name}/{control['name']}",
                    ),
                    checked=lambda key, fn, *a, _name=name, _i=i, **k: recipe.checked(
                        f"one_shot.methods.{_name}.controls[{_i}]: {key}", fn, *a, **k
                    ),
                )
