"""The prune step spec: `resolve_prune_step` makes a recipe's prune step canonical (what keys hash),
`layer_plan` says what each layer of a model gets from it. Pure Python, no torch (see `mlprune.pruning`)."""

from __future__ import annotations

import fnmatch
import numbers
from collections.abc import Mapping

from ..errors import SpecError, choice_error
from ..plugins import PLUGINS_KEY, code_identities
from .catalog import AMOUNT_ALLOWED, METHODS, SELECTOR_TOKENS, check_amount, method_options, methods_with_option

_COMMON_KEYS = ("method", "amount", "scope", "include", "exclude", "bias", "coupled", "layers", "seed")
_FROM_STATE_KEYS = ("method", "state", "seed")


def _step_keys() -> tuple[str, ...]:
    return (*_COMMON_KEYS[:3], *method_options(), *_COMMON_KEYS[3:])


def _override_keys() -> tuple[str, ...]:
    return ("method", "amount", *method_options(), "skip")


def _check_keys(d, allowed, what):
    if not isinstance(d, Mapping):
        raise SpecError(f"{what} must be a mapping, got {d!r}")
    for key in d:
        if key not in allowed:
            raise SpecError(f"unknown key {key!r} in {what}; allowed: {', '.join(allowed)}")


def _check_selector(sel, what):
    if not isinstance(sel, str) or not sel:
        raise SpecError(f"invalid selector {sel!r} in {what}; allowed: a glob on parameter names "
                        f"or one of {', '.join(SELECTOR_TOKENS)}")
    if sel.startswith("@") and sel not in SELECTOR_TOKENS:
        raise choice_error(f"selector token in {what}", sel, SELECTOR_TOKENS)
    return sel


def _selector_list(value, what):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise SpecError(f"invalid {what} {value!r}; allowed: a list of selectors")
    return sorted({_check_selector(s, what) for s in value})


def _check_method(method, layerwise=False):
    if not isinstance(method, str) or method not in METHODS or (
            layerwise and METHODS[method].granularity == "transplant"):
        allowed = [m for m in METHODS if not (layerwise and METHODS[m].granularity == "transplant")]
        raise choice_error("pruning method", method, allowed)
    return method


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2 ** 63:
        raise SpecError(f"invalid seed {seed!r}; allowed: an int in [0, 2^63)")
    return int(seed)


def _not_applicable(option, value, where, method):
    users = methods_with_option(option)
    what = users[0] if len(users) == 1 else ("structured methods" if option == "dim" else ", ".join(users))
    return SpecError(f"option {option!r} ({value!r}) in {where} applies only to {what}, not {method}")


def _method_config(method, amount, given: dict, where):
    """Canonical {"method", "amount", <the method's options>} for one (effective) method."""
    entry = METHODS[method]
    for option, value in given.items():
        if option not in entry.option_names:
            raise _not_applicable(option, value, where, method)
    cfg = {"method": method, "amount": check_amount(amount, f"amount in {where}")}
    for option in entry.options:
        cfg[option.name] = option.check(given.get(option.name, option.default), option.name)
    return cfg


def _raw_layers(layers):
    """[(selector, override dict)] from the dict form or the resolved list form."""
    if isinstance(layers, Mapping):
        return list(layers.items())
    if isinstance(layers, (list, tuple)):
        out = []
        for entry in layers:
            if not isinstance(entry, Mapping) or "select" not in entry:
                raise SpecError(f"invalid layers entry {entry!r}; allowed: a mapping with 'select'")
            out.append((entry["select"], {k: v for k, v in entry.items() if k != "select"}))
        return out
    raise SpecError(f"invalid layers {layers!r}; allowed: a mapping {{selector: override}}")


def _is_zero_amount(a):
    return isinstance(a, numbers.Real) and not isinstance(a, bool) and a == 0


def resolve_prune_step(step: dict) -> dict:
    """Validated, canonical prune step: defaults filled, inapplicable options removed.

    Idempotent: ``resolve_prune_step(resolve_prune_step(s)) == resolve_prune_step(s)``.
    """
    if not isinstance(step, Mapping):
        raise SpecError(f"prune step must be a mapping, got {step!r}")
    # a resolved step's plugin identities are derived again from the methods (never taken as given)
    step = {k: v for k, v in step.items() if k != PLUGINS_KEY}
    if "method" not in step:
        raise SpecError("prune step has no 'method'; allowed: " + ", ".join(METHODS))
    method = _check_method(step["method"])
    entry = METHODS[method]

    if entry.granularity == "transplant":
        _check_keys(step, _FROM_STATE_KEYS, f"prune step ({method})")
        ref = step.get("state")
        if not isinstance(ref, str) or not ref:
            raise SpecError(f"{method} needs 'state': a state reference string, got {ref!r}")
        return {"method": method, "state": ref}

    _check_keys(step, _step_keys(), "prune step")
    if "amount" not in step:
        raise SpecError(f"prune step has no 'amount'; allowed: {AMOUNT_ALLOWED}")
    scope = step.get("scope", entry.default_scope)
    if scope not in ("layer", "global"):
        raise choice_error("scope", scope, ("layer", "global"))
    if scope == "global" and entry.granularity != "weight":
        raise SpecError(f"scope 'global' needs an unstructured method, got {method!r}; "
                        f"allowed: {', '.join(METHODS.where(granularity='weight'))}")
    bias = step.get("bias", False)
    if bias is not False:
        raise SpecError(f"bias pruning not supported yet (bias={bias!r}); allowed: false")
    coupled = step.get("coupled", False)
    if not isinstance(coupled, bool):
        raise SpecError(f"invalid coupled {coupled!r}; allowed: true or false")

    # method options given at the top level apply to the step's method and are inherited by
    # overrides; each is checked where it is given, and must apply to some method used
    top_options = {name: step[name] for name in method_options() if name in step}
    for name, value in top_options.items():
        method_options()[name].check(value, name)

    # overrides: each becomes its full effective config
    overrides, methods_used = [], {method}
    for sel, ov in _raw_layers(step.get("layers", {})):
        sel = _check_selector(sel, "layers")
        where = f"layers[{sel!r}]"
        _check_keys(ov, _override_keys(), where)
        skip = ov.get("skip", False)
        if not isinstance(skip, bool):
            raise SpecError(f"invalid skip {skip!r} in {where}; allowed: true or false")
        if skip or _is_zero_amount(ov.get("amount")):
            extra = [k for k in ov if k not in ("skip", "amount")] + (
                ["amount"] if "amount" in ov and not _is_zero_amount(ov["amount"]) else [])
            if extra:
                raise SpecError(f"{where} skips the layer but also sets {extra[0]!r}; "
                                f"allowed with skip: nothing else")
            overrides.append({"select": sel, "skip": True})
            continue
        ov_method = _check_method(ov.get("method", method), layerwise=True)
        if METHODS[ov_method].scores_network:
            # one score method prunes its layers together (one pass through the network per iteration)
            others = [m for m, e in METHODS.items() if e.granularity != "transplant" and not e.scores_network]
            raise SpecError(f"{where} uses score method {ov_method!r}; a score method prunes all its layers "
                            f"together (the step's scope says how), so an override may skip a layer or use "
                            f"another method: {', '.join(others)}")
        own = {name: ov[name] for name in method_options() if name in ov}
        for name, value in own.items():
            if name not in METHODS[ov_method].option_names:
                raise _not_applicable(name, value, where, ov_method)
        inherited = {name: value for name, value in top_options.items()
                     if name in METHODS[ov_method].option_names}
        cfg = _method_config(ov_method, ov.get("amount", step["amount"]), {**inherited, **own}, where)
        overrides.append({"select": sel, **cfg})
        methods_used.add(ov_method)

    for name, value in top_options.items():
        if not any(name in METHODS[m].option_names for m in methods_used):
            users = methods_with_option(name)
            what = users[0] if len(users) == 1 else ("structured methods" if name == "dim" else ", ".join(users))
            raise SpecError(f"option {name!r} ({value!r}) applies only to {what}, not {method}")

    top = _method_config(method, step["amount"],
                         {k: v for k, v in top_options.items() if k in entry.option_names}, "prune step")
    out = {**top, "scope": scope,
           "include": _selector_list(step.get("include", ["*"]), "include"),
           "exclude": _selector_list(step.get("exclude", []), "exclude"),
           "bias": False, "layers": overrides}
    if "*" in out["exclude"] or not out["include"]:
        raise SpecError(f"prune step excludes every layer (include {out['include']}, exclude {out['exclude']}): "
                        f"it would prune nothing; allowed: exclude selectors that leave a layer to prune")
    if coupled:  # in the key only when true: every existing prune step keeps its key
        unstructured = sorted(m for m in methods_used if not METHODS[m].structured)
        if unstructured:
            raise SpecError(f"coupled pruning removes whole channels; method {unstructured[0]!r} prunes single "
                            f"weights (allowed with coupled: {', '.join(METHODS.where(granularity='slice'))})")
        out["coupled"] = True
    # No default seed: absent, the executor derives one from the child's key (each branch its own draw).
    if step.get("seed") is not None:
        seed = _check_seed(step["seed"])
        if any(METHODS[m].random for m in methods_used):
            out["seed"] = seed
    plugins = code_identities((METHODS, m) for m in sorted(methods_used))
    if plugins:  # only for plugin methods: built-in keys stay as they were
        out[PLUGINS_KEY] = plugins
    return out


def _matches(sel, name, kinds, output):
    if sel == "@conv":
        return kinds[name] == "conv"
    if sel == "@linear":
        return kinds[name] == "linear"
    if sel == "@output":
        return name == output
    return fnmatch.fnmatchcase(name, sel)


def layer_plan(kinds, step) -> dict:
    """{name: config} for every layer in `kinds`: what this step does to it.

    Pruned layers: ``{"method", "amount", "scope", <method options>}`` (scope "global"
    = part of the global pool); others ``{"skip": True}``. Transplant steps give
    ``{"method": "from_state", "state": ref}`` for every layer.
    """
    step = resolve_prune_step(step)
    if not kinds:
        return {}
    names = list(kinds)
    if METHODS[step["method"]].granularity == "transplant":
        return {name: {"method": step["method"], "state": step["state"]} for name in names}
    output = names[-1]
    sels = [("include", s) for s in step["include"]] + [("exclude", s) for s in step["exclude"]]
    sels += [("layers", o["select"]) for o in step["layers"]]
    for what, sel in sels:
        if sel != "*" and not sel.startswith("@") and not any(
                fnmatch.fnmatchcase(name, sel) for name in names):
            raise SpecError(f"selector {sel!r} in {what} matches no prunable parameter; "
                            f"allowed: globs over {', '.join(names)} or {', '.join(SELECTOR_TOKENS)}")
    top = {k: step[k] for k in ("method", "amount", *METHODS[step["method"]].option_names)}
    plan = {}
    for name in names:
        selected = any(_matches(s, name, kinds, output) for s in step["include"]) and not any(
            _matches(s, name, kinds, output) for s in step["exclude"])
        if not selected:
            plan[name] = {"skip": True}
            continue
        chosen = None
        for ov in step["layers"]:
            if _matches(ov["select"], name, kinds, output):
                chosen = ov
        if chosen is None:
            plan[name] = {**top, "scope": step["scope"]}
        elif chosen.get("skip"):
            plan[name] = {"skip": True}
        else:
            plan[name] = {**{k: v for k, v in chosen.items() if k != "select"}, "scope": "layer"}
    if all(config.get("skip") for config in plan.values()):
        raise SpecError(f"prune step selects no layer to prune (include {step['include']}, exclude "
                        f"{step['exclude']}{', layer overrides that skip' if step['layers'] else ''}): it would "
                        f"prune nothing; layers: {', '.join(names)}")
    return plan
