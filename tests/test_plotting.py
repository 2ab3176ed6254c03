"""plotting.py: every figure builds, is labelled, and saves; the DAG SVG is well-formed."""

import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from mlprune import analysis, lineage
from mlprune import plots as plotting
from mlprune.errors import SpecError

PNG = b"\x89PNG\r\n\x1a\n"
SVG = "{http://www.w3.org/2000/svg}"


def save_png(fig, tmp_path, name):
    assert isinstance(fig, Figure)
    path = tmp_path / f"{name}.png"
    fig.savefig(path)
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG)
    return path


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_plot_conv_filters(tmp_path):
    w = torch.randn(6, 3, 5, 5, generator=gen())
    mask = torch.rand(6, 3, 5, 5, generator=gen(1)) > 0.4
    mask[2] = False  # an entirely pruned filter
    fig = plotting.plot_conv_filters(w, mask, title="conv1.weight")
    assert "conv1.weight" in fig._suptitle.get_text()
    assert "1 filter entirely pruned" in fig._suptitle.get_text()
    titles = [ax.get_title() for ax in fig.axes]
    assert "2 (pruned)" in titles
    assert any(ax.get_ylabel() == "weight value" for ax in fig.axes)  # colorbar
    save_png(fig, tmp_path, "filters")
    fig = plotting.plot_conv_filters(w, None, channel="mean", max_filters=4)
    assert "first 4 of 6" in fig._suptitle.get_text()
    save_png(fig, tmp_path, "filters_mean")
    with pytest.raises(SpecError):
        plotting.plot_conv_filters(torch.zeros(3, 3))


def test_plot_fc_weights_and_biases(tmp_path):
    w = torch.randn(10, 84, generator=gen())
    mask = torch.rand(10, 84, generator=gen(1)) > 0.7
    fig = plotting.plot_fc_weights(w, mask, title="fc3.weight")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "input feature" and ax.get_ylabel() == "output neuron"
    assert ax.get_title().startswith("fc3.weight: 10×84")
    # pruned entries are masked (drawn with the colormap's "bad" grey)
    arr = ax.images[0].get_array()
    assert np.array_equal(np.ma.getmaskarray(arr), ~mask.numpy())
    save_png(fig, tmp_path, "fc")
    fig = plotting.plot_biases(torch.randn(10, generator=gen()), title="fc3.bias")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "output unit" and ax.get_ylabel() == "bias value"
    assert "fc3.bias" in ax.get_title()
    save_png(fig, tmp_path, "bias")


def test_plot_weight_evolution(tmp_path):
    ws = [{"p": torch.randn(50, generator=gen(t))} for t in range(4)]
    ms = [{"p": torch.arange(50) >= 10 * t} for t in range(4)]
    tr = analysis.weight_trajectories(ws, ms, "p", k=12)
    fig = plotting.plot_weight_evolution(tr, ["init", "round 1", "round 2", "round 3"])
    ax = fig.axes[0]
    assert ax.get_xlabel() == "round" and ax.get_ylabel() == "weight value"
    assert ax.get_title() == "Evolution of 12 sampled weights"
    assert len(ax.get_legend().get_texts()) == 2
    save_png(fig, tmp_path, "evolution")
    with pytest.raises(SpecError):
        plotting.plot_weight_evolution(tr, ["only", "two"])


def test_plot_jaccard_heatmap(tmp_path):
    mat = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.7], [0.2, 0.7, 1.0]])
    fig = plotting.plot_jaccard_heatmap(mat, ["l1", "l2", "random"])
    ax = fig.axes[0]
    assert ax.get_xlabel() == "state" and ax.get_ylabel() == "state"
    assert "Jaccard" in ax.get_title()
    assert ax.images[0].get_clim() == (0.0, 1.0)
    assert sorted(t.get_text() for t in ax.texts).count("0.50") == 2
    assert fig.axes[1].get_ylabel() == "Jaccard similarity of kept weights"
    save_png(fig, tmp_path, "jaccard")


def test_plot_accuracy_vs_remaining(tmp_path):
    rows = []
    for recipe in ("lt", "random"):
        for rnd in range(6):
            for seed in range(3):
                rows.append(
                    {
                        "recipe": recipe,
                        "round": rnd,
                        "remaining": 0.8**rnd,
                        "seed": seed,
                        "test_accuracy": 0.95 - 0.01 * rnd * (recipe == "random") + 0.003 * seed,
                    }
                )
    fig = plotting.plot_accuracy_vs_remaining(analysis.accuracy_vs_remaining(rows))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "remaining weights (%, log scale)"
    assert ax.get_ylabel() == "test accuracy (%)"
    assert ax.get_xscale() == "log"
    lo, hi = ax.get_xlim()
    assert lo > hi  # reversed: 100% on the left
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "lt (n=3)",
        "random (n=3)",
        "dense (round 0) accuracy",
    ]
    assert len([c for c in ax.collections if c.get_gid() == plotting.style.CI_BAND]) == 2  # one 95% CI band each
    save_png(fig, tmp_path, "accuracy")


def test_plot_structure(tmp_path):
    masks = {
        "conv.weight": torch.rand(6, 3, 3, 3, generator=gen()) > 0.8,
        "fc.weight": torch.rand(10, 20, generator=gen(1)) > 0.5,
    }
    masks["conv.weight"][0] = False
    emergent = analysis.emergent_structure(masks, {"conv.weight": "conv", "fc.weight": "linear"})
    fig = plotting.plot_structure(emergent)
    assert len(fig.axes) == 2
    assert fig.axes[0].get_ylabel() == "units entirely pruned (%)"
    assert all(ax.get_xlabel() == "layer" for ax in fig.axes)
    assert "Emergent structure" in fig._suptitle.get_text()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["conv", "fc"]
    save_png(fig, tmp_path, "structure")


def study_dag(n_recipes=4, rounds=4):
    """A lineage like a real study: init -> train -> per recipe (prune -> rewind+train)*rounds."""
    nodes = [
        {"id": "root", "label": "init", "accuracy": 0.1, "sparsity": 0.0},
        {"id": "t0", "label": "train", "accuracy": 0.97, "sparsity": 0.0},
    ]
    edges = [("root", "t0", "primary")]
    for r in range(n_recipes):
        prev = "t0"
        for k in range(rounds):
            p, t = f"r{r}p{k}", f"r{r}t{k}"
            nodes.append({"id": p, "label": "prune", "accuracy": None, "sparsity": 1 - 0.8 ** (k + 1)})
            nodes.append({"id": t, "label": "reinit+train", "accuracy": 0.96, "sparsity": 1 - 0.8 ** (k + 1)})
            edges += [(prev, p, "primary"), (p, t, "primary"), ("root", t, "weights")]
            prev = t
    nodes.append({"id": "ctl", "label": "prune", "accuracy": 0.5, "sparsity": 0.5})
    edges += [("t0", "ctl", "primary"), ("r0p0", "ctl", "mask")]
    return nodes, edges


def test_dag_layout_layers_and_no_overlap():
    nodes, edges = study_dag(4, 4)  # 35 nodes
    layout = lineage.dag_layout(nodes, edges)
    assert layout["root"] == (layout["t0"][0], 0) and layout["t0"][1] == 1
    assert layout["r2t3"][1] == 2 + 2 * 4 - 1
    by_depth = {}
    for x, d in layout.values():
        by_depth.setdefault(d, []).append(x)
    for xs in by_depth.values():
        xs.sort()
        assert all(b - a >= 1 for a, b in zip(xs, xs[1:]))
    with pytest.raises(SpecError, match="cycle"):
        lineage.dag_layout([{"id": "a"}, {"id": "b"}], [("a", "b", "primary"), ("b", "a", "primary")])
    with pytest.raises(SpecError, match="unknown node"):
        lineage.dag_layout([{"id": "a"}], [("a", "zz", "primary")])


def test_plot_dag(tmp_path):
    nodes, edges = study_dag(3, 3)
    fig = plotting.plot_dag(nodes, edges)
    ax = fig.axes[0]
    assert ax.get_title() == f"Experiment DAG ({len(nodes)} states)"
    dashed = [p for p in ax.patches if p.get_linestyle() not in ("-", "solid")]
    assert len(dashed) == sum(1 for e in edges if e[2] != "primary")
    save_png(fig, tmp_path, "dag")


def test_dag_svg_links_and_edges(tmp_path):
    nodes, edges = study_dag(4, 4)
    svg = lineage.dag_svg(nodes, edges, link=lambda i: f"#/runs/{i}?x=1&y=2", title="Study <lineage>")
    (tmp_path / "lineage.svg").write_text(svg)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    links = root.findall(f".//{SVG}a")
    assert len(links) == len(nodes)
    assert sorted(a.get("href") for a in links) == sorted(f"#/runs/{n['id']}?x=1&y=2" for n in nodes)
    paths = [p for p in root.iter(f"{SVG}path") if "edge" in (p.get("class") or "").split()]
    assert len(paths) == len(edges)
    for p, (_, _, role) in zip(paths, edges):
        assert ("edge-" + role) in p.get("class").split()
        if role == "primary":
            assert p.get("stroke-dasharray") is None
        else:
            assert p.get("stroke-dasharray")
    texts = "".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "acc 97.0%" in texts and "sparsity 20.0%" in texts and "Study <lineage>" in texts
    # width grows with breadth
    small = ET.fromstring(lineage.dag_svg(*study_dag(1, 4)))
    assert int(root.get("width")) > int(small.get("width"))
    # no link: no <a>
    assert ET.fromstring(lineage.dag_svg(nodes, edges)).find(f".//{SVG}a") is None


def test_no_pyplot_state():
    code = (
        "import sys, numpy as np\n"
        "from mlprune import plots as plotting\n"
        "plotting.plot_biases(np.arange(3.0)); plotting.plot_dag([{'id': 'a', 'label': 'init'}], [])\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
