"""The prune step spec: `resolve_prune_step` makes a recipe's prune step canonical (what keys hash),
`layer_plan` says what each layer of a model gets from it. Pure Python, no torch (see `mlprune.pruning`)."""

from __future__ import annotations

import fnmatch
import numbers
from collections.abc import Mapping
from typing import NamedTuple

from ..errors import SpecError, choice_error
from ..plugins import PLUGINS_KEY, code_identities
from ..spec.options import REQUIRED, Option, Schema, any_value, choice, optional, seed_value, with_doc
from .catalog import AMOUNT_ALLOWED, DISTRIBUTIONS, METHODS, SELECTOR_TOKENS, check_amount, methods_with_option

_DISTRIBUTION = "distribution"


def _check_selector(sel, what):
    if not isinstance(sel, str) or not sel:
        raise SpecError(
            f"invalid selector {sel!r} in {what}; allowed: a glob on parameter names "
            f"or one of {', '.join(SELECTOR_TOKENS)}"
        )
    if sel.startswith("@") and sel not in SELECTOR_TOKENS:
        raise choice_error(f"selector token in {what}", sel, SELECTOR_TOKENS)
    return sel


def _selector_list(value, what):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise SpecError(f"invalid {what} {value!r}; allowed: a list of selectors")
    return sorted({_check_selector(s, what) for s in value})


def _check_method(method, name="pruning method"):
    if not isinstance(method, str) or method not in METHODS:
        raise choice_error("pruning method", method, list(METHODS))
    return method


def _no_bias(bias, name):
    if bias is not False:
        raise SpecError(f"bias pruning not supported yet (bias={bias!r}); allowed: false")
    return bias


def _flag(what):
    """true | false, refused in the prune step's own words ("invalid coupled 'yes'; allowed: true or false")."""

    def check(value, name):
        if not isinstance(value, bool):
            raise SpecError(f"invalid {name} {value!r}{what}; allowed: true or false")
        return value

    return with_doc(check, "true | false")


def _seed(seed, name):
    try:
        return seed_value(seed, name)
    except SpecError:
        raise SpecError(f"invalid seed {seed!r}; allowed: an int in [0, 2^63)") from None


def _method_option_docs(methods) -> tuple[Option, ...]:
    """Every method's options, each once, its help naming the methods that take it (one name may mean
    different things to different methods: n is a norm to ln_structured and the N of N:M to nm; each
    method's options are checked with its own declaration)."""
    union = Schema.union("method option", (m.options for m in methods))
    out = []
    for option in union:
        declared: dict = {}
        for method in methods:
            if option.name in method.options:
                own = method.options[option.name]
                declared.setdefault((own.help, repr(own.default)), []).append(method.name)
        helps = [
            f"{text} ({', '.join(users)}{'' if default == repr(option.default) else f'; default {default}'})"
            for (text, default), users in declared.items()
        ]
        out.append(Option(option.name, option.default, option.check, "; ".join(helps)))
    return tuple(out)


class PruneSchemas(NamedTuple):
    """The prune step's options for one set of registered methods."""

    step: Schema  # method, amount, scope, the methods' options, selection, seed, coupled
    method_options: tuple[str, ...]  # the names of the methods' options (the union)
    override: Schema  # what an entry of `layers` may set


def _build(methods) -> PruneSchemas:
    options = _method_option_docs(methods)
    step = Schema(
        "prune option",
        (
            Option("method", REQUIRED, _check_method, "pruning method: " + ", ".join(m.name for m in methods)),
            Option(
                "amount",
                None,
                optional(with_doc(check_amount, "fraction in (0, 1) | int >= 1")),
                "a fraction in (0, 1) of what remains, or an int count (required but for nm, whose amount is 1 - n/m)",
            ),
            Option(
                "scope",
                "layer",
                choice("layer", "global"),
                "layer (each layer alone) or global (one "
                "threshold); score methods (snip, grasp, synflow, mag_grad) and lamp default to global",
            ),
            Option(
                _DISTRIBUTION,
                None,
                optional(choice(*DISTRIBUTIONS)),
                "how the layers share the amount: " + "; ".join(f"{d.name}: {d.help}" for d in DISTRIBUTIONS.values()),
                key="unless_default",
            ),
            *options,
            Option(
                "include", ["*"], any_value, "layers to prune: globs over parameter names or @conv, @linear, @output"
            ),
            Option("exclude", [], any_value, "layers to leave alone (same selectors)"),
            Option("layers", {}, any_value, "per-layer overrides {selector: {method, amount, ..., skip}}", cli=False),
            Option(
                "seed",
                None,
                optional(with_doc(_seed, seed_value.doc)),
                "seed of random methods (default: derived from the state's key)",
            ),
            Option("bias", False, _no_bias, "bias pruning (not supported)", cli=False),
            Option(
                "coupled",
                False,
                _flag(""),
                "structured methods: remove whole channels with their biases, "
                "BatchNorm entries and the next layers' inputs; residual groups together (docs/structured.md)",
                key="unless_default",
            ),
        ),
    )
    override = Schema(
        "layers override option",
        (
            step["method"],
            step["amount"],
            *options,
            Option("skip", False, any_value, "leave the layer alone this round"),
        ),
    )
    return PruneSchemas(step, tuple(o.name for o in options), override)


_BUILT: dict = {}


def prune_schemas() -> PruneSchemas:
    """The prune step's schemas for the methods registered now (built-ins and plugins), built once per set
    of methods (every planned prune state asks)."""
    methods = tuple(METHODS.values())
    marker = tuple(map(id, methods))
    if marker not in _BUILT:
        _BUILT.clear()
        _BUILT[marker] = (methods, _build(methods))  # the methods kept: their ids stay theirs
    return _BUILT[marker][1]


def prune_schema() -> Schema:
    """The prune step's options: method, amount, scope, the union of the methods' options, the layer
    selection, overrides, seed, coupled (`prune_schemas`)."""
    return prune_schemas().step


def _not_applicable(option, value, where, method):
    users = methods_with_option(option)
    what = users[0] if len(users) == 1 else ("structured methods" if option == "dim" else ", ".join(users))
    return SpecError(f"option {option!r} ({value!r}) in {where} applies only to {what}, not {method}")


def _method_config(method, amount, given: dict, where, explicit=False):
    """Canonical {"method", "amount", <the method's options>} for one (effective) method."""
    entry = METHODS[method]
    for option, value in given.items():
        if option not in entry.options:
            raise _not_applicable(option, value, where, method)
    options = entry.options.checked({k: v for k, v in given.items()})
    if entry.pattern:  # its amount follows from its options (N:M: 1 - n/m); another one given is refused
        implied = entry.implied_amount(options)
        if explicit and amount != implied:
            raise SpecError(
                f"{where} gives amount {amount!r} to {method}, whose amount follows from its pattern "
                f"(1 - n/m = {implied:g}); allowed: no amount"
            )
        amount = implied
    return {"method": method, "amount": check_amount(amount, f"amount in {where}"), **options}


def _scope_and_distribution(scope, distribution, entry) -> tuple[str, str | None]:
    """(scope, budget distribution or None) of a step: ``distribution`` uniform / global is the scope
    layer / global; erk / uniform_plus share the step's amount between its layers by a budget."""
    if distribution is None:
        return scope or entry.default_scope, None
    chosen = DISTRIBUTIONS[distribution]
    if chosen.scope:
        if scope is not None and scope != chosen.scope:
            raise SpecError(
                f"distribution {distribution!r} is scope {chosen.scope!r}, but the step says scope "
                f"{scope!r}; allowed: one of them, or both agreeing"
            )
        return chosen.scope, None
    if scope == "global":  # scope layer is the resolved form: each layer pruned alone, to its budget
        raise SpecError(
            f"distribution {distribution!r} shares the amount between the layers by its own budget; "
            f"scope {scope!r} says otherwise; allowed: no scope with it"
        )
    if entry.structured or entry.pattern:
        raise SpecError(
            f"distribution {distribution!r} needs a single-weight method, got {entry.name!r}; allowed: "
            f"{', '.join(METHODS.where(granularity='weight'))}"
        )
    return "layer", distribution


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


def _override(sel, ov, step, top_options, schemas: PruneSchemas) -> dict:
    """One entry of ``layers`` as its full effective config (a skip: ``{"select", "skip": True}``)."""
    sel = _check_selector(sel, "layers")
    where = f"layers[{sel!r}]"
    if not isinstance(ov, Mapping):
        raise SpecError(f"{where} must be a mapping, got {ov!r}")
    for key in ov:
        if key not in schemas.override:
            raise SpecError(f"unknown key {key!r} in {where}; allowed: {', '.join(schemas.override.names)}")
    skip = _flag(f" in {where}")(ov.get("skip", False), "skip")
    if skip or _is_zero_amount(ov.get("amount")):
        extra = [k for k in ov if k not in ("skip", "amount")] + (
            ["amount"] if "amount" in ov and not _is_zero_amount(ov["amount"]) else []
        )
        if extra:
            raise SpecError(f"{where} skips the layer but also sets {extra[0]!r}; allowed with skip: nothing else")
        return {"select": sel, "skip": True}
    method = _check_method(ov.get("method", step["method"]))
    if METHODS[method].scores_network:
        # one score method prunes its layers together (one pass through the network per iteration)
        others = [m for m, e in METHODS.items() if not e.scores_network]
        raise SpecError(
            f"{where} uses score method {method!r}; a score method prunes all its layers "
            f"together (the step's scope says how), so an override may skip a layer or use "
            f"another method: {', '.join(others)}"
        )
    own = {name: ov[name] for name in schemas.method_options if name in ov}
    if "amount" not in ov and "amount" not in step and not METHODS[method].pattern:
        raise SpecError(
            f"{where} uses {method!r}, which needs an amount; the step's method {step['method']!r} has "
            f"none to inherit; allowed: an amount in {where}"
        )
    inherited = {name: value for name, value in top_options.items() if name in METHODS[method].options}
    return {
        "select": sel,
        **_method_config(
            method, ov.get("amount", step.get("amount")), {**inherited, **own}, where, explicit="amount" in ov
        ),
    }


def resolve_prune_step(step: dict) -> dict:
    """Validated, canonical prune step (`prune_schema`): defaults filled, inapplicable options removed.

    Idempotent: ``resolve_prune_step(resolve_prune_step(s)) == resolve_prune_step(s)``. What is
    prune's own beyond the schema: the scope a method allows, overrides (each its full effective
    config), method options that must apply to a method used, and a seed kept only for random methods.
    """
    if not isinstance(step, Mapping):
        raise SpecError(f"prune step must be a mapping, got {step!r}")
    # a resolved step's plugin identities are derived again from the methods (never taken as given)
    step = {k: v for k, v in step.items() if k != PLUGINS_KEY}
    if "method" not in step:
        raise SpecError("prune step has no 'method'; allowed: " + ", ".join(METHODS))
    entry = METHODS[_check_method(step["method"])]
    schemas = prune_schemas()
    given = schemas.step.canonical_names(step)
    if "amount" not in given and not entry.pattern:
        raise SpecError(f"prune step has no 'amount'; allowed: {AMOUNT_ALLOWED}")
    # a method option is checked by the step's method's own declaration when it has one (n: a norm or N of N:M)
    top_options = {
        name: (entry.options[name] if name in entry.options else schemas.step[name]).check(given[name], name)
        for name in schemas.method_options
        if name in given
    }
    values = schemas.step.checked({k: v for k, v in given.items() if k not in schemas.method_options})
    scope, distribution = _scope_and_distribution(
        values["scope"] if "scope" in given else None, values[_DISTRIBUTION], entry
    )
    if scope == "global" and (entry.structured or entry.pattern):
        raise SpecError(
            f"scope 'global' needs an unstructured method, got {entry.name!r}; "
            f"allowed: {', '.join(METHODS.where(granularity='weight'))}"
        )
    overrides = [_override(sel, ov, given, top_options, schemas) for sel, ov in _raw_layers(values["layers"])]
    methods_used = {entry.name} | {o["method"] for o in overrides if "method" in o}
    for name, value in top_options.items():
        if not any(name in METHODS[m].options for m in methods_used):
            users = methods_with_option(name)
            what = users[0] if len(users) == 1 else ("structured methods" if name == "dim" else ", ".join(users))
            raise SpecError(f"option {name!r} ({value!r}) applies only to {what}, not {entry.name}")
    top = _method_config(
        entry.name,
        given.get("amount"),
        {k: v for k, v in top_options.items() if k in entry.options},
        "prune step",
        explicit="amount" in given,
    )
    out = {
        **top,
        "scope": scope,
        **({_DISTRIBUTION: distribution} if distribution else {}),
        "include": _selector_list(values["include"], "include"),
        "exclude": _selector_list(values["exclude"], "exclude"),
        "bias": False,
        "layers": overrides,
    }
    if "*" in out["exclude"] or not out["include"]:
        raise SpecError(
            f"prune step excludes every layer (include {out['include']}, exclude {out['exclude']}): "
            f"it would prune nothing; allowed: exclude selectors that leave a layer to prune"
        )
    if values["coupled"]:  # in the key only when true: every existing prune step keeps its key
        unstructured = sorted(m for m in methods_used if not METHODS[m].structured)
        if unstructured:
            raise SpecError(
                f"coupled pruning removes whole channels; method {unstructured[0]!r} prunes single "
                f"weights (allowed with coupled: {', '.join(METHODS.where(granularity='slice'))})"
            )
        out["coupled"] = True
    # No default seed: absent, the executor derives one from the child's key (each branch its own draw).
    if values["seed"] is not None and any(METHODS[m].random for m in methods_used):
        out["seed"] = values["seed"]
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
    = part of the global pool); others ``{"skip": True}``.
    """
    step = resolve_prune_step(step)
    if not kinds:
        return {}
    names = list(kinds)
    output = names[-1]
    sels = [("include", s) for s in step["include"]] + [("exclude", s) for s in step["exclude"]]
    sels += [("layers", o["select"]) for o in step["layers"]]
    for what, sel in sels:
        if sel != "*" and not sel.startswith("@") and not any(fnmatch.fnmatchcase(name, sel) for name in names):
            raise SpecError(
                f"selector {sel!r} in {what} matches no prunable parameter; "
                f"allowed: globs over {', '.join(names)} or {', '.join(SELECTOR_TOKENS)}"
            )
    top = {k: step[k] for k in ("method", "amount", *METHODS[step["method"]].option_names)}
    plan = {}
    for name in names:
        selected = any(_matches(s, name, kinds, output) for s in step["include"]) and not any(
            _matches(s, name, kinds, output) for s in step["exclude"]
        )
        if not selected:
            plan[name] = {"skip": True}
            continue
        chosen = None
        for ov in step["layers"]:
            if _matches(ov["select"], name, kinds, output):
                chosen = ov
        if chosen is None:
            plan[name] = {
                **top,
                "scope": step["scope"],
                **({_DISTRIBUTION: step[_DISTRIBUTION]} if _DISTRIBUTION in step else {}),
            }
        elif chosen.get("skip"):
            plan[name] = {"skip": True}
        else:
            plan[name] = {**{k: v for k, v in chosen.items() if k != "select"}, "scope": "layer"}
    if all(config.get("skip") for config in plan.values()):
        raise SpecError(
            f"prune step selects no layer to prune (include {step['include']}, exclude "
            f"{step['exclude']}{', layer overrides that skip' if step['layers'] else ''}): it would "
            f"prune nothing; layers: {', '.join(names)}"
        )
    return plan
