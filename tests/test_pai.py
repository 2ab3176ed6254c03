"""Pruning at initialization: SNIP, GraSP and SynFlow scores against their papers' formulas, exact counts,
layer collapse, and the sanity-check controls.

The oracles here are written from the papers, not from mlprune.pruning.scores: finite differences for
gradients and Hessian-gradient products, SynFlow's closed-form path sums for a two-layer network, and
Tanaka et al.'s Algorithm 1 for the iterative schedule.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mlprune import SpecError
from mlprune.pruning import METHODS, n_to_prune, resolve_prune_step
from mlprune.pruning.masks import prune_masks, schedule_counts
from mlprune.pruning.scores import ScoringData, network_scores

REPO = Path(__file__).resolve().parents[1]
NAMES = ("0.weight", "2.weight")
KINDS = {"0.weight": "linear", "2.weight": "linear"}


def tiny_mlp(seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).to(dtype)


def tiny_batches(seed: int = 1, count: int = 2, size: int = 6, dtype=torch.float64) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 5, generator=gen, dtype=dtype), torch.randint(0, 3, (size,), generator=gen))
        for _ in range(count)
    ]


def data_of(batches) -> ScoringData:
    return ScoringData((5,), lambda count, size: batches[:count])


def some_masks(model, seed: int = 3, keep: float = 0.7) -> dict:
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {name: torch.rand(params[name].shape, generator=gen) < keep for name in NAMES}


def effective(model, masks) -> nn.Module:
    """The masked network the papers score: pruned weights are exactly zero."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in masks:
                p.mul_(masks[name].to(p.dtype))
    return model


def total_loss(model, batches, temperature=1.0) -> torch.Tensor:
    return sum(nn.functional.cross_entropy(model(x) / temperature, y) for x, y in batches)


def fd_gradient(model, batches, name, eps=1e-6) -> torch.Tensor:
    """Central finite differences of the summed batch losses with respect to each entry of one weight."""
    param = dict(model.named_parameters())[name]
    out = torch.zeros_like(param)
    with torch.no_grad():
        for index in range(param.numel()):
            flat = param.view(-1)
            original = flat[index].item()
            flat[index] = original + eps
            up = float(total_loss(model, batches))
            flat[index] = original - eps
            down = float(total_loss(model, batches))
            flat[index] = original
            out.view(-1)[index] = (up - down) / (2 * eps)
    return out


# ---- SNIP -------------------------------------------------------------------------------------


def test_snip_score_is_abs_gradient_times_weight_by_finite_differences():
    model = tiny_mlp()
    masks = some_masks(model)
    batches = tiny_batches()
    options = resolve_prune_step({"method": "snip", "amount": 0.5, "batches": 2})
    got = network_scores("snip", model, data_of(batches), options)(masks)
    reference = effective(tiny_mlp(), masks)
    params = dict(reference.named_parameters())
    for name in NAMES:
        expected = (fd_gradient(reference, batches, name) * params[name]).abs()
        kept = masks[name]
        assert torch.allclose(got[name][kept], expected[kept], rtol=1e-6, atol=1e-9), name
    # scoring left the model as it was (it works on a copy)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), tiny_mlp().state_dict().values()))


def test_snip_uses_only_the_requested_batches():
    model = tiny_mlp()
    masks = some_masks(model)
    batches = tiny_batches(count=3)
    one = network_scores("snip", model, data_of(batches), {"batches": 1, "batch_size": 6})(masks)
    reference = effective(tiny_mlp(), masks)
    w = dict(reference.named_parameters())["0.weight"]
    expected = (fd_gradient(reference, batches[:1], "0.weight") * w).abs()
    assert torch.allclose(one["0.weight"], expected, rtol=1e-6, atol=1e-9)


def test_mag_grad_is_weight_times_the_gradient_summed_over_its_batches_by_finite_differences():
    """ShrinkBench's gradient-magnitude baseline: |w · ∂L/∂w|, L the summed losses of the scoring batches."""
    model = tiny_mlp(seed=4)
    masks = some_masks(model, seed=5)
    batches = tiny_batches(count=3)
    options = resolve_prune_step({"method": "mag_grad", "amount": 0.5, "batches": 3})
    assert options["scope"] == "global"
    got = network_scores("mag_grad", model, data_of(batches), options)(masks)
    reference = effective(tiny_mlp(seed=4), masks)
    params = dict(reference.named_parameters())
    for name in NAMES:
        expected = (fd_gradient(reference, batches, name) * params[name]).abs()
        assert torch.allclose(got[name][masks[name]], expected[masks[name]], rtol=1e-6, atol=1e-9), name


# ---- GraSP ------------------------------------------------------------------------------------


def test_grasp_keep_score_is_hessian_gradient_product_times_weight_by_finite_differences():
    temperature = 2.0
    model = tiny_mlp()
    masks = some_masks(model)
    batches = tiny_batches()
    options = resolve_prune_step({"method": "grasp", "amount": 0.5, "batches": 2, "temperature": temperature})
    got = network_scores("grasp", model, data_of(batches), options)(masks)

    # the oracle: L = sum of the batch losses of the masked network at temperature T;
    # g = ∇L over the remaining weights, H g = (∇L(w + εg) - ∇L(w - εg)) / 2ε
    reference = effective(tiny_mlp(), masks)
    params = dict(reference.named_parameters())
    weights = [params[n] for n in NAMES]
    keep = [masks[n].double() for n in NAMES]

    def grad_at(shift):
        with torch.no_grad():
            for w, s in zip(weights, shift):
                w.add_(s)
        grads = torch.autograd.grad(total_loss(reference, batches, temperature), weights)
        with torch.no_grad():
            for w, s in zip(weights, shift):
                w.sub_(s)
        return [g * m for g, m in zip(grads, keep)]

    g = grad_at([torch.zeros_like(w) for w in weights])
    eps = 1e-5
    up = grad_at([eps * d for d in g])
    down = grad_at([-eps * d for d in g])
    for name, w, a, b in zip(NAMES, weights, up, down):
        hg = (a - b) / (2 * eps)
        paper_score = -(hg * w.detach())  # Wang et al.'s S = -(H g) ⊙ w
        kept = masks[name]
        assert torch.allclose(got[name][kept], -paper_score[kept], rtol=1e-5, atol=1e-10), name


def test_grasp_removes_the_weights_with_the_largest_paper_score():
    model = tiny_mlp(seed=4)
    batches = tiny_batches(seed=5)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n in NAMES}
    step = {"method": "grasp", "amount": 7, "batches": 2, "temperature": 1.0}
    scores = network_scores("grasp", model, data_of(batches), resolve_prune_step(step))
    keep_scores = scores(masks)
    paper = torch.cat([-keep_scores[n].reshape(-1) for n in NAMES])
    new = prune_masks(dict(model.named_parameters()), masks, KINDS, step, generator=None, scores=scores)
    removed = ~torch.cat([new[n].reshape(-1) for n in NAMES])
    assert int(removed.sum()) == 7
    assert torch.equal(torch.sort(paper[removed]).values, torch.sort(torch.topk(paper, 7).values).values)
    assert float(paper[removed].min()) >= float(paper[~removed].max())


# ---- SynFlow ----------------------------------------------------------------------------------


def synflow_closed_form(model, masks) -> dict:
    """R = 1ᵀ(|W2| (|W1| 1 + |b1|) + |b2|) for the all-ones input (everything positive: ReLU passes it);
    the score of a weight is |∂R/∂w ⊙ w| (Tanaka et al. 2020, with the biases Synaptic-Flow's code keeps)."""
    p = dict(model.named_parameters())
    w1 = (p["0.weight"] * masks["0.weight"]).abs().detach()
    w2 = (p["2.weight"] * masks["2.weight"]).abs().detach()
    b1 = p["0.bias"].abs().detach()
    hidden = w1 @ torch.ones(w1.shape[1], dtype=w1.dtype) + b1  # |W1| 1 + |b1|
    upstream = w2.T @ torch.ones(w2.shape[0], dtype=w2.dtype)  # 1ᵀ |W2|
    return {"0.weight": w1 * upstream[:, None], "2.weight": w2 * hidden[None, :]}


def test_synflow_score_matches_the_closed_form_path_sums():
    model = tiny_mlp(dtype=torch.float32)
    masks = some_masks(model)
    got = network_scores("synflow", model, data_of([]), {"iterations": 1})(masks)
    expected = synflow_closed_form(tiny_mlp(dtype=torch.float64), masks)
    for name in NAMES:
        assert got[name].dtype == torch.float64  # scored in double precision
        assert torch.allclose(got[name], expected[name], rtol=1e-6), name


def test_synflow_iterations_follow_tanaka_algorithm_1():
    """n iterations: score under the current mask, prune to (final/start)^(j/n) of the start, exactly."""
    iterations, amount = 4, 0.8
    model = tiny_mlp(seed=7, dtype=torch.float32)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n in NAMES}
    step = {"method": "synflow", "amount": amount, "iterations": iterations}
    got = prune_masks(
        dict(model.named_parameters()),
        masks,
        KINDS,
        step,
        generator=None,
        scores=network_scores("synflow", model, data_of([]), resolve_prune_step(step)),
    )

    oracle = {n: m.clone() for n, m in masks.items()}
    start = sum(int(m.sum()) for m in masks.values())
    final = start - round(amount * start)
    for j in range(1, iterations + 1):
        target = final if j == iterations else round(start * (final / start) ** (j / iterations))
        scores = synflow_closed_form(tiny_mlp(seed=7, dtype=torch.float64), oracle)
        flat_scores = torch.cat([scores[n].reshape(-1) for n in NAMES])
        flat_mask = torch.cat([oracle[n].reshape(-1) for n in NAMES])
        alive = flat_mask.nonzero().squeeze(1)
        k = int(flat_mask.sum()) - target
        gone = alive[torch.argsort(flat_scores[alive])[:k]]
        flat_mask[gone] = False
        sizes = [oracle[n].numel() for n in NAMES]
        for n, part in zip(NAMES, flat_mask.split(sizes)):
            oracle[n] = part.reshape(oracle[n].shape)
    for name in NAMES:
        assert torch.equal(got[name], oracle[name]), name
    assert sum(int(m.sum()) for m in got.values()) == final


def test_schedule_counts_are_exponential_and_end_exactly():
    counts = schedule_counts(50200, 50, 100)
    assert len(counts) == 100 and counts[-1] == 50
    assert all(a >= b for a, b in zip([50200] + counts, counts))
    for j in (1, 25, 50, 99):
        assert counts[j - 1] == round(50200 * (50 / 50200) ** (j / 100))


# ---- invert, exact counts, pruned weights stay pruned -----------------------------------------


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
def test_invert_keeps_the_lowest_scores(method):
    model = tiny_mlp(seed=2, dtype=torch.float32)
    batches = tiny_batches(dtype=torch.float32)
    masks = some_masks(model, keep=0.8)
    base = {"method": method, "amount": 0.5}
    if "iterations" in METHODS[method].option_names:
        base["iterations"] = 1
    plain = prune_masks(
        dict(model.named_parameters()),
        masks,
        KINDS,
        base,
        generator=None,
        scores=network_scores(method, model, data_of(batches), resolve_prune_step(base)),
    )
    inverted_step = {**base, "invert": True}
    scores = network_scores(method, model, data_of(batches), resolve_prune_step(inverted_step))
    inverted = prune_masks(dict(model.named_parameters()), masks, KINDS, inverted_step, generator=None, scores=scores)
    keep_scores = scores(masks)
    flat = torch.cat([keep_scores[n].reshape(-1) for n in NAMES])
    alive = torch.cat([masks[n].reshape(-1) for n in NAMES]).nonzero().squeeze(1)
    kept = torch.cat([inverted[n].reshape(-1) for n in NAMES]).nonzero().squeeze(1)
    lowest = torch.sort(flat[alive]).values[: len(kept)]
    assert torch.equal(torch.sort(flat[kept]).values, lowest)  # as scores: equal scores may trade places
    assert sum(int(m.sum()) for m in plain.values()) == sum(int(m.sum()) for m in inverted.values())


@settings(max_examples=40, deadline=None)
@given(
    method=st.sampled_from(["snip", "grasp", "synflow"]),
    scope=st.sampled_from(["global", "layer"]),
    fraction=st.floats(0.01, 0.99),
    count=st.integers(1, 20),
    as_count=st.booleans(),
    keep=st.floats(0.3, 1.0),
    seed=st.integers(0, 1000),
    invert=st.booleans(),
)
def test_property_requested_sparsity_is_met_exactly_in_count(
    method, scope, fraction, count, as_count, keep, seed, invert
):
    model = tiny_mlp(seed=seed, dtype=torch.float32)
    masks = some_masks(model, seed=seed, keep=keep)
    masks = {n: m if m.any() else torch.ones_like(m) for n, m in masks.items()}
    remaining = {n: int(m.sum()) for n, m in masks.items()}
    smallest = min(remaining.values()) if scope == "layer" else sum(remaining.values())
    amount = min(count, smallest) if as_count else fraction
    step = {"method": method, "amount": amount, "scope": scope, "invert": invert}
    if "iterations" in METHODS[method].option_names:
        step["iterations"] = 3
    scores = network_scores(method, model, data_of(tiny_batches(dtype=torch.float32)), resolve_prune_step(step))
    new = prune_masks(dict(model.named_parameters()), masks, KINDS, step, generator=None, scores=scores)
    for name in NAMES:
        assert not bool((new[name] & ~masks[name]).any())  # a pruned weight never comes back
    if scope == "global":
        total = sum(remaining.values())
        assert sum(int(m.sum()) for m in new.values()) == total - n_to_prune(amount, total)
    else:
        for name in NAMES:
            assert int(new[name].sum()) == remaining[name] - n_to_prune(amount, remaining[name]), name


def test_score_methods_default_to_global_scope_and_refuse_score_overrides():
    assert resolve_prune_step({"method": "snip", "amount": 0.5})["scope"] == "global"
    assert resolve_prune_step({"method": "l1_unstructured", "amount": 0.5})["scope"] == "layer"
    resolved = resolve_prune_step({"method": "synflow", "amount": 0.5})
    assert resolved["iterations"] == 100 and resolved["invert"] is False
    with pytest.raises(SpecError, match="override may skip a layer or use another method"):
        resolve_prune_step({"method": "snip", "amount": 0.5, "layers": {"@output": {"amount": 0.1}}})
    with pytest.raises(SpecError, match="invert"):
        resolve_prune_step({"method": "l1_unstructured", "amount": 0.5, "invert": True})
    with pytest.raises(SpecError, match="iterations"):
        resolve_prune_step({"method": "synflow", "amount": 0.5, "iterations": 0})
    # an output layer left alone or pruned by magnitude beside a score method is fine
    step = resolve_prune_step(
        {"method": "snip", "amount": 0.5, "layers": {"@output": {"method": "l1_unstructured", "amount": 0.1}}}
    )
    model = tiny_mlp(dtype=torch.float32)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n in NAMES}
    scores = network_scores("snip", model, data_of(tiny_batches(dtype=torch.float32)), step)
    new = prune_masks(dict(model.named_parameters()), masks, KINDS, step, generator=None, scores=scores)
    assert int((~new["2.weight"]).sum()) == 1 and int((~new["0.weight"]).sum()) == 10
    with pytest.raises(SpecError, match="scores="):
        prune_masks(dict(model.named_parameters()), masks, KINDS, step, generator=None)


# ---- on real states: lenet_300_100 on digits ------------------------------------------------------

PRESET = REPO / "recipes" / "pai_sanity_lenet_300_100.yaml"


def kept_per_layer(masks) -> dict:
    return {name: int(m.sum()) for name, m in masks.items()}


def docs_block(language: str, containing: str) -> str:
    """The code block of docs/pruning.md in `language` that contains `containing` (the docs run as written)."""
    import re

    text = (REPO / "docs" / "pruning.md").read_text()
    (block,) = [b for b in re.findall(rf"```{language}\n(.*?)```", text, re.S) if containing in b]
    return block


def test_synflow_at_99_9_keeps_every_layer_where_magnitude_collapses(tracking):
    """PyTorch's default init draws from U(±1/sqrt(fan_in)): the 64-input first layer holds all of the 50
    largest weights, so global magnitude pruning at initialization empties the other two layers."""
    from mlprune.models import prunable

    namespace: dict = {}
    exec(docs_block("python", "synflow = root.apply"), namespace)  # noqa: S102 - the user docs' example, as written
    root, synflow, magnitude = namespace["root"], namespace["synflow"], namespace["magnitude"]
    total = sum(m.numel() for m in root.masks.values())
    kept = kept_per_layer(synflow.masks)
    assert sum(kept.values()) == total - round(0.999 * total)  # exactly 50 of 50,200
    assert all(count >= 1 for count in kept.values()), kept  # no layer collapse
    # the state records per-layer sparsity, so a user sees it in the MLflow UI
    for name, mask in synflow.masks.items():
        assert synflow.metrics[f"sparsity.{name}"] == pytest.approx(1 - kept[name] / mask.numel())
    assert synflow.metrics["sparsity"] == pytest.approx(0.999, abs=1e-3)
    # magnitude at initialization empties layers: only mlprune's keep-at-least-one rule leaves one weight in them
    kept_magnitude = kept_per_layer(magnitude.masks)
    collapsed = [name for name, count in kept_magnitude.items() if count == 1]
    assert collapsed, kept_magnitude
    report = {}
    prune_masks(
        root.weights,
        root.masks,
        prunable(root.model()),
        {"method": "l1_unstructured", "amount": 0.999, "scope": "global"},
        generator=None,
        report=report,
    )
    assert all(report[name]["note"] == "keep-at-least-one: spared the layer's last weight" for name in collapsed)
    # on the presets' Glorot root too, SynFlow leaves no layer empty
    from mlprune import Recipe

    glorot = namespace["experiment"].init(
        model="lenet_300_100", dataset="digits", seed=0, init="glorot", train_size=128, test_size=64
    )
    kept_glorot = kept_per_layer(glorot.apply(Recipe.prune(method="synflow", amount=0.999)).masks)
    assert sum(kept_glorot.values()) == 50 and min(kept_glorot.values()) >= 1, kept_glorot
    print(f"\nkept per layer at 99.9 %: synflow {kept}, magnitude {kept_magnitude}, synflow (glorot) {kept_glorot}")


MUST_SHOW = docs_block("yaml", "name: pai_must_show")


@pytest.mark.slow
def test_must_show_prune_the_root_with_synflow_snip_grasp_to_90_percent_and_train(tracking, tmp_path):
    from click.testing import CliRunner

    from mlprune import Experiment
    from mlprune.cli import main
    from mlprune.recipes import compile_recipe

    recipe = tmp_path / "pai_must_show.yaml"
    recipe.write_text(MUST_SHOW)
    result = CliRunner().invoke(main, ["run", str(recipe), "-e", "pai"])
    assert result.exit_code == 0, result.output
    plan = compile_recipe(recipe)
    states = {state.key: state for state in Experiment("pai").states()}
    layers = None
    seen = []
    for node in plan.nodes:
        if node.branch == "main":
            continue
        state = states[node.key]  # the planned key is the stored key
        layers = layers or sorted(state.masks)
        assert len(layers) == 3
        sparsity = state.metrics["sparsity"]
        assert abs(sparsity - 0.9) <= 1e-3, (node.name, sparsity)
        assert all(f"sparsity.{name}" in state.metrics for name in layers), node.name
        if node.role == "trained":  # training keeps the mask: the pruned weights are still exactly zero
            pruned = states[plan.node(node.parent).key]
            assert all(torch.equal(state.masks[n], pruned.masks[n]) for n in layers)
            assert all(bool((state.weights[n][~state.masks[n]] == 0).all()) for n in layers)
        seen.append(
            (
                node.name,
                round(sparsity, 4),
                {n: round(state.metrics[f"sparsity.{n}"], 3) for n in layers},
                round(state.metrics["test_accuracy"], 3),
            )
        )
    assert {name for name, *_ in seen} == {f"{p}{m}.90" for m in ("synflow", "snip", "grasp") for p in ("", "prune.")}
    print("\n" + "\n".join(map(str, seen)))


# ---- sanity-check controls -------------------------------------------------------------------------


def test_preset_plans_every_method_and_control_off_the_same_pruned_state():
    from mlprune.recipes import compile_recipe

    plan = compile_recipe(PRESET, {"sparsities": "0.9,0.99"})
    nodes = {n.name: n for n in plan.nodes}
    scored, others = ("snip", "grasp", "synflow"), ("magnitude", "random")
    expected = (
        {"main"}
        | {*scored, *others}
        | {f"{m}/{c}" for m in (*scored, *others) for c in ("layer_shuffle", "reinit")}
        | {f"{m}/invert" for m in scored}
    )
    assert {n.branch for n in plan.nodes} == expected
    for method in (*scored, *others):
        for rnd, pct in ((1, "90"), (2, "99")):
            pruned = nodes[f"prune.{method}.{pct}"]
            assert pruned.parent == "root" and pruned.round == rnd and pruned.role == "pruned"
            (prune,) = [s["prune"] for s in pruned.steps]
            assert prune["amount"] == float(f"0.{pct}")
            assert nodes[f"{method}.{pct}"].parent == pruned.name and nodes[f"{method}.{pct}"].steps == [
                {"train": plan.node("train").steps[0]["train"]}
            ]  # trained like the dense network
            shuffle = nodes[f"{method}.{pct}.layer_shuffle"]
            assert shuffle.parent == pruned.name and shuffle.inputs == {"weights": "root"}
            assert shuffle.steps[0]["reinit"]["strategy"] == "shuffle"
            fresh = nodes[f"{method}.{pct}.reinit"]
            assert fresh.parent == pruned.name and fresh.steps[0]["reinit"]["strategy"] == "random"
            assert pruned.control_of is None and shuffle.control_of == fresh.control_of == method
            if method in scored:
                inverted = nodes[f"prune.{method}.{pct}.invert"]
                assert inverted.parent == "root" and inverted.branch == f"{method}/invert"
                assert inverted.steps[0]["prune"] == {**prune, "invert": True}
                assert nodes[f"{method}.{pct}.invert"].parent == inverted.name
            else:
                assert f"prune.{method}.{pct}.invert" not in nodes
    # the dense baseline is lth_lenet_300_100's first training: one root, one training for both presets
    lth = compile_recipe(REPO / "recipes" / "lth_lenet_300_100.yaml")
    assert plan.keys["root"] == lth.keys["root"] and plan.keys["train"] == lth.keys["train"]


def _recipe(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


ROUNDS = """\
name: r
root: {model: lenet_300_100, dataset: digits}
train: {epochs: 1}
rounds: 2
prune: {method: %s, amount: 0.5}
reinit: {strategy: rewind, to: root, at: 1it}
controls: %s
"""


def test_named_controls_in_rounds_follow_the_rounds_reinit(tmp_path):
    from mlprune.recipes import compile_recipe

    plan = compile_recipe(_recipe(tmp_path, ROUNDS % ("snip", "[layer_shuffle, reinit, invert]")))
    nodes = {n.name: n for n in plan.nodes}
    for r in (1, 2):
        shuffle = nodes[f"round{r}.layer_shuffle"]
        # the round rewinds to 1 iteration of the first training: the shuffled control starts there too
        assert shuffle.parent == f"prune{r}" and shuffle.inputs == {"weights": "train@1it"}
        assert nodes[f"round{r}.reinit"].steps[0]["reinit"]["strategy"] == "random"
        inverted = nodes[f"prune.round{r}.invert"]
        assert inverted.parent == nodes[f"prune{r}"].parent and inverted.steps[0]["prune"]["invert"] is True
        assert nodes[f"round{r}.invert"].steps[0]["reinit"] == nodes[f"round{r}"].steps[0]["reinit"]
        assert {nodes[f"round{r}.{c}"].control_of for c in ("layer_shuffle", "reinit", "invert")} == {"main"}
    # the old form keeps its keys: {name, reinit} is the same state as before
    old = compile_recipe(
        _recipe(tmp_path, ROUNDS % ("l1_unstructured", "[{name: random, reinit: {strategy: random}}]"))
    )
    named = compile_recipe(_recipe(tmp_path, ROUNDS % ("l1_unstructured", "[reinit]")))
    assert old.keys["round1.random"] == named.keys["round1.reinit"]


@pytest.mark.parametrize(
    "controls, fragment",
    [
        (
            "[invert]",
            "control 'invert' needs a method that ranks by a score it can invert (snip, mag_grad, grasp, "
            "synflow, lamp, nm, fpgm, taylor, bn_scale); the branch prunes with 'l1_unstructured'",
        ),
        ("[shuffle]", "unknown control 'shuffle'; allowed: layer_shuffle, reinit, invert"),
        ("[{name: x}]", "controls[0]: must be a control name"),
        ("[{name: a/b, reinit: {strategy: random}}]", "without '/'"),
    ],
)
def test_bad_controls_are_one_line_errors(tmp_path, controls, fragment):
    from mlprune.recipes import compile_recipe

    with pytest.raises(SpecError) as error:
        compile_recipe(_recipe(tmp_path, ROUNDS % ("l1_unstructured", controls)))
    assert fragment in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "section, fragment",
    [
        ("{sparsities: [0.9, 1.5], methods: {a: {method: snip}}}", "sparsity 1.5 is not a fraction in (0, 1)"),
        ("{sparsities: '0.9,0.9', methods: {a: {method: snip}}}", "repeat a value"),
        ("{sparsities: [0.9], methods: {a: {method: snip, amount: 0.2}}}", "the amount comes from sparsities"),
        ("{sparsities: [0.9], methods: {main: {method: snip}}}", "the branch name 'main' is taken"),
        ("{sparsities: [0.9], methods: {a: {method: snipp}}}", "unknown pruning method 'snipp'"),
        ("{sparsities: [0.9], methods: {a: {method: snip}}, from: nowhere}", "has no state 'nowhere'"),
        ("{sparsities: [0.9], methods: {a: {method: snip}}, colour: red}", "unknown key 'colour'"),
    ],
)
def test_bad_one_shot_sections_are_one_line_errors(tmp_path, section, fragment):
    from mlprune.recipes import compile_recipe

    text = f"name: r\nroot: {{model: lenet_300_100}}\ntrain: {{epochs: 1}}\none_shot: {section}\n"
    with pytest.raises(SpecError) as error:
        compile_recipe(_recipe(tmp_path, text))
    assert fragment in str(error.value) and "\n" not in str(error.value), str(error.value)


@pytest.mark.slow
def test_sanity_preset_runs_and_its_report_draws_one_curve_per_method_and_control(tracking, tmp_path, monkeypatch):
    """The preset at one sparsity on 64 digits: 28 states; controls keep what they promise; the report's
    accuracy-vs-remaining figure has one series per method and control, each starting at the dense network."""
    from click.testing import CliRunner

    from mlprune import Experiment, analysis
    from mlprune.cli import main
    from mlprune.recipes import compile_recipe
    from mlprune.registry import Registry
    from mlprune.report import sections
    from mlprune.report.accuracy import accuracy_section
    from mlprune.report.common import Page, StateLoader
    from mlprune.report.sanity import sanity_section
    from mlprune.report.sections import SectionContext
    from mlprune.report.series import collect

    # the workflow run draws the two sections this test reads; all of them, for every one of the 19 series,
    # would be a minute of matplotlib (every section on a workflow run: tests/test_lineage.py)
    drawn = Registry("report section")
    for name in ("accuracy", "sanity"):
        drawn.add(sections.SECTIONS[name])
    monkeypatch.setattr(sections, "SECTIONS", drawn)
    params = ["-P", "sparsities=0.9", "-P", "epochs=1", "-P", "train_size=64", "-P", "test_size=64"]
    result = CliRunner().invoke(main, ["run", str(PRESET), "-e", "sanity", *params])
    assert result.exit_code == 0, result.output
    store = Experiment("sanity").store
    (workflow,) = store.client.search_runs([store.experiment_id], "tags.`mlprune.recipe` = 'pai_sanity_lenet_300_100'")
    logged = {f.path for f in store.client.list_artifacts(workflow.info.run_id, "figures")}
    assert {"figures/accuracy_vs_remaining.png", "figures/sanity_checks.png"} <= logged  # where people look
    plan = compile_recipe(PRESET, {"sparsities": 0.9, "epochs": 1, "train_size": 64, "test_size": 64})
    states = {s.key: s for s in Experiment("sanity").states()}
    state = {n.name: states[n.key] for n in plan.nodes}
    for method in ("snip", "grasp", "synflow", "magnitude", "random"):
        pruned, shuffled, fresh = (
            state[f"prune.{method}.90"],
            state[f"{method}.90.layer_shuffle"],
            state[f"{method}.90.reinit"],
        )
        assert kept_per_layer(shuffled.masks) == kept_per_layer(pruned.masks)  # same per-layer sparsity
        assert analysis.jaccard(shuffled.masks, pruned.masks)["overall"] < 0.5  # other positions
        assert all(torch.equal(fresh.masks[n], pruned.masks[n]) for n in pruned.masks)  # same mask
    for method in ("snip", "grasp", "synflow"):
        pruned, inverted = state[f"prune.{method}.90"], state[f"prune.{method}.90.invert"]
        assert sum(kept_per_layer(inverted.masks).values()) == sum(kept_per_layer(pruned.masks).values())
        overlap = analysis.jaccard(inverted.masks, pruned.masks)["overall"]
        # one shot: the two ends of one ranking share nothing; SynFlow re-scores between its 100 steps, so its
        # inverted run follows another path (6 % overlap here), still far from the 0.05 of two random 10 % masks
        assert overlap == 0.0 if method != "synflow" else overlap < 0.1, (method, overlap)

    # the report's accuracy section on this experiment's series (the whole report also draws weights and
    # stability figures for every one of the 19 series: minutes of matplotlib, not what this test is about)
    builder = Page(tmp_path / "report")
    collection = collect(Experiment("sanity").store)
    context = SectionContext(collection, StateLoader(collection.store, collection.runs, print), print)
    rows = accuracy_section(builder, context)
    labels = {row["recipe"] for row in rows}
    name = "pai_sanity_lenet_300_100"
    expected = (
        {name}
        | {f"{name} / {m}" for m in ("snip", "grasp", "synflow", "magnitude", "random")}
        | {
            f"{name} / {m}/{c}"
            for m in ("snip", "grasp", "synflow", "magnitude", "random")
            for c in ("layer_shuffle", "reinit")
        }
        | {f"{name} / {m}/invert" for m in ("snip", "grasp", "synflow")}
    )
    assert labels == expected and len(labels) == 19
    dense = next(r for r in rows if r["recipe"] == name)
    for label in expected - {name}:
        points = sorted((r["round"], r["remaining"]) for r in rows if r["recipe"] == label)
        assert [p[0] for p in points] == [0, 1]  # the dense network, then 90 %
        assert points[0][1] == dense["remaining"] == 1.0 and points[1][1] == pytest.approx(0.1, abs=1e-3)
    (figure,) = [f for f in builder.figures if f["kind"] == "accuracy_vs_remaining"]
    assert figure["png"].startswith(b"\x89PNG") and (tmp_path / "report" / "figures" / figure["file"]).exists()
    # and the sanity-check section: one panel per method, its controls beside it
    sanity_section(builder, context)
    panels = builder.numbers["sanity_checks"]
    assert set(panels) == {f"{name} / {m}" for m in ("snip", "grasp", "synflow", "magnitude", "random")}
    for panel, members in panels.items():
        assert members[0] == panel and set(members[1:]) == {
            label for label in expected if label.startswith(panel + "/")
        }
    assert [f["kind"] for f in builder.figures].count("sanity_checks") == 1
