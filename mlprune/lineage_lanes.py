"""The lineage of a study as lanes: one lane per root (a seed), a column per round, controls folded.

`lineage.dag_svg` draws a tree, one column per leaf: fine for a few states, unreadable for a study of
20 rounds x 5 seeds x 3 branches. Here every root starts a lane (titled with its seed, model and
dataset); a state's column is its recipe round (``round`` param; a state without one sits right of its
primary parent), so a round's prune and its retrained state stack in one column and the main branch
zigzags along the lane. A control branch (``branch`` param other than its parent's) is folded under
the pruned state it branches off: that state carries a badge with the number of folded states, and a
click on it unfolds them (`SCRIPT`). Extra-parent arcs (a rewind's weights source, ...) are drawn but
hidden until the pointer is on one of their ends (or "all extra-parent arcs" is ticked); arcs between
lanes are not drawn (the table lists every parent).

Pure standard library, like `lineage` (the tracking server serves these pages).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from html import escape
from xml.sax.saxutils import quoteattr

COL_W, ROW_H = 70, 50  # pixels per column and per row of a lane
BOX_W, BOX_H = 64, 44
TITLE_H, LANE_GAP, MARGIN = 20, 14, 12
LANES_FROM = 40  # states from which a lineage is drawn as lanes (fewer: the tree of `lineage`)


def _sort_key(value):
    text = str(value)
    return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


def _round(node: Mapping):
    value = node.get("round")
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def usable(nodes: Sequence[Mapping]) -> bool:
    """Whether lanes read better than the tree: a study (many states, recipe rounds recorded)."""
    states = [n for n in nodes if not n.get("missing")]
    return len(states) >= LANES_FROM and any(_round(n) is not None for n in states)


class Lanes:
    """Positions of every node: ``lane[id]``, ``col[id]``, ``row[id]``; ``group[id]``: the pruned state a folded
    control hangs under (absent: always shown); per lane its title, base (folded) and open row counts."""

    def __init__(self, nodes: Sequence[Mapping], edges: Sequence[Sequence]):
        self.nodes = {n["id"]: n for n in nodes}
        order = {n["id"]: k for k, n in enumerate(nodes)}
        self.parent: dict = {}
        for edge in edges:
            if (edge[2] if len(edge) > 2 else "primary") == "primary" and edge[1] not in self.parent:
                self.parent[edge[1]] = edge[0]
        self.top, self.depth = {}, {}
        for node_id in self.nodes:
            self._place(node_id)
        roots = sorted(
            {self.top[i] for i in self.nodes}, key=lambda r: (_sort_key(self.nodes[r].get("seed")), order[r])
        )
        self.lane_of_root = {root: k for k, root in enumerate(roots)}
        self.lane = {i: self.lane_of_root[self.top[i]] for i in self.nodes}
        self.col = {}
        for node_id in sorted(self.nodes, key=lambda i: self.depth[i]):
            self.col[node_id] = self._column(node_id)
        self.group = self._folds()
        self.row, self.rows = {}, {}  # rows: lane -> [folded rows, open rows]
        cells: dict = {}
        for node_id in self.nodes:
            cells.setdefault((self.lane[node_id], self.col[node_id]), []).append(node_id)
        for (lane, _), members in cells.items():
            members.sort(
                key=lambda i: (i in self.group, self.depth[i], str(self.nodes[i].get("branch") or ""), order[i])
            )
            shown = sum(1 for i in members if i not in self.group)
            for index, node_id in enumerate(members):
                self.row[node_id] = index
            counts = self.rows.setdefault(lane, [1, 1])
            counts[0], counts[1] = max(counts[0], shown), max(counts[1], len(members))
        self.n_cols = max(self.col.values(), default=0) + 1

    def _place(self, node_id):
        """The lane root and depth of `node_id` (walking up primary parents; a cycle stops the walk)."""
        path, seen, current = [], set(), node_id
        while current not in self.top and current in self.parent and current not in seen:
            seen.add(current)
            path.append(current)
            current = self.parent[current]
        if current not in self.top:
            self.top[current], self.depth[current] = current, 0
        for child in reversed(path):
            parent = self.parent[child]
            self.top[child], self.depth[child] = self.top[parent], self.depth[parent] + 1

    def _column(self, node_id) -> int:
        parent = self.parent.get(node_id)
        base = self.col.get(parent, -1) if parent is not None and self.top[node_id] != node_id else -1
        rnd = _round(self.nodes[node_id])
        if rnd is not None and parent is not None:
            return max(rnd + 1, base)
        return base + 1

    def _folds(self) -> dict:
        """{folded node: the main-branch state its control branch hangs under}."""
        group = {}
        for node_id in sorted(self.nodes, key=lambda i: self.depth[i]):
            parent = self.parent.get(node_id)
            branch = self.nodes[node_id].get("branch")
            if parent is None or branch in (None, "", "main") or self.top[node_id] == node_id:
                continue
            if parent in group:
                group[node_id] = group[parent]
            elif self.nodes.get(parent, {}).get("branch") != branch:
                group[node_id] = parent
        return group

    def title(self, lane: int) -> str:
        root = next(r for r, k in self.lane_of_root.items() if k == lane)
        node = self.nodes[root]
        members = [n for i, n in self.nodes.items() if self.lane[i] == lane]
        recipes = sorted({str(n["recipe"]) for n in members if n.get("recipe")})
        seed = node.get("seed")
        parts = [
            f"seed {seed}" if seed is not None else f"root {root[:8]}",
            node.get("model"),
            node.get("dataset"),
            ", ".join(recipes) or None,
        ]
        return " · ".join(str(p) for p in parts if p)


def node_text(node: Mapping) -> list[str]:
    """The lines in a node's box: seed and round, branch (or kind), test accuracy."""
    rnd = _round(node)
    seed = node.get("seed")
    first = " ".join(p for p in (f"s{seed}" if seed is not None else "", f"r{rnd}" if rnd is not None else "") if p)
    branch = node.get("branch")
    second = str(branch) if branch not in (None, "", "main") else str(node.get("label", ""))
    accuracy = node.get("accuracy")
    third = f"{100 * accuracy:.1f}%" if accuracy is not None else ""
    return [line[:13] for line in (first or str(node.get("label", "")), second, third) if line]


def tooltip(node: Mapping) -> str:
    parts = [str(node.get("name") or node.get("label", "")), f"run {node['id']}"]
    for key in ("seed", "round", "branch", "recipe"):
        if node.get(key) is not None:
            parts.append(f"{key} {node[key]}")
    if node.get("accuracy") is not None:
        parts.append(f"test accuracy {100 * node['accuracy']:.2f}%")
    if node.get("sparsity") is not None:
        parts.append(f"sparsity {100 * node['sparsity']:.2f}%")
    return " · ".join(parts)


CSS = (
    ".lane-title{font-size:12px;font-weight:bold;fill:#37474f}"
    ".edge{fill:none;stroke-width:1.3}.edge-primary{stroke:#455a64}"
    ".edge-extra{stroke:#8e24aa;stroke-dasharray:5 3;stroke-width:1.1;display:none}"
    "svg.all-extra .edge-extra,.edge-extra.hot{display:inline}"
    ".folded{display:none}.folded.shown{display:inline}"
    ".node rect{stroke:#37474f;stroke-width:1}.node text{font-size:9.5px;fill:#212121}"
    ".node .first{font-weight:bold}a:hover rect{stroke-width:2.5;stroke:#0d47a1}"
    ".node.current rect{stroke-width:4;stroke:#d50000}"
    ".fold{cursor:pointer}.fold circle{fill:#1565c0}.fold text{font-size:9px;fill:#fff;font-weight:bold}"
    ".fold.open circle{fill:#90a4ae}"
)


def _center(lanes: Lanes, node_id) -> tuple[float, float]:
    """A node's centre in its lane's coordinates."""
    return (MARGIN + lanes.col[node_id] * COL_W + COL_W / 2, TITLE_H + lanes.row[node_id] * ROW_H + ROW_H / 2)


def _edge_svg(lanes: Lanes, p, c, role: str) -> str:
    """One edge inside a lane: primary edges from box to box (down within a column, else a curve to the right),
    extra-parent arcs over the lane from top to top (hidden until hovered); folded with their child."""
    (x0, y0), (x1, y1) = _center(lanes, p), _center(lanes, c)
    if role == "primary" and x0 == x1:
        d = f"M{x0:.0f},{y0 + BOX_H / 2:.0f} L{x1:.0f},{y1 - BOX_H / 2:.0f}"
    elif role == "primary":
        d = (
            f"M{x0 + BOX_W / 2:.0f},{y0:.0f} C{x0 + COL_W / 2 + 4:.0f},{y0:.0f} "
            f"{x1 - COL_W / 2 - 4:.0f},{y1:.0f} {x1 - BOX_W / 2:.0f},{y1:.0f}"
        )
    else:
        lift = TITLE_H * 0.6 + 6 * (abs(x1 - x0) / COL_W) ** 0.5
        d = (
            f"M{x0:.0f},{y0 - BOX_H / 2:.0f} C{x0:.0f},{y0 - BOX_H / 2 - lift:.0f} "
            f"{x1:.0f},{y1 - BOX_H / 2 - lift:.0f} {x1:.0f},{y1 - BOX_H / 2:.0f}"
        )
    role_cls = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in role)
    folded = lanes.group.get(c)
    cls = f"edge edge-{'primary' if role == 'primary' else 'extra'} edge-{role_cls}" + (" folded" if folded else "")
    group_attr = f" data-group={quoteattr(folded)}" if folded else ""
    return (
        f'<path class="{cls}" d="{d}" data-from={quoteattr(p)} data-to={quoteattr(c)}{group_attr}>'
        f"<title>{escape(f'{role}: {p} -> {c}')}</title></path>"
    )


def _node_svg(lanes: Lanes, node_id, link, color, highlight, folds: int) -> str:
    """One node (a link to its run when `link`), and its badge when `folds` control states hang under it."""
    node = lanes.nodes[node_id]
    cx, cy = _center(lanes, node_id)
    folded = lanes.group.get(node_id)
    group_attr = f" data-group={quoteattr(folded)}" if folded else ""
    cls = "node" + (" current" if node_id == highlight else "") + (" folded" if folded else "")
    lines = node_text(node)
    text_y = cy - (len(lines) - 1) * 6.5 + 3.5
    body = (
        f'<g class="{cls}" data-id={quoteattr(node_id)}{group_attr}><title>{escape(tooltip(node))}</title>'
        f'<rect x="{cx - BOX_W / 2:.0f}" y="{cy - BOX_H / 2:.0f}" width="{BOX_W}" height="{BOX_H}" rx="6" '
        f'fill="{color(node)}"/>'
        + "".join(
            f'<text{" class=" + chr(34) + "first" + chr(34) if k == 0 else ""} x="{cx:.0f}" '
            f'y="{text_y + 13 * k:.0f}" text-anchor="middle">{escape(line)}</text>'
            for k, line in enumerate(lines)
        )
        + "</g>"
    )
    if link is not None:
        body = (
            f'<a href={quoteattr(str(link(node_id)))} target="_top"'
            + (f' class="folded"{group_attr}' if folded else "")
            + f">{body}</a>"
        )
    if folds:
        bx, by = cx + BOX_W / 2 - 2, cy - BOX_H / 2 + 2
        body += (
            f'<g class="fold" data-group={quoteattr(node_id)}><title>{folds} control state(s) branch off here: '
            f'click to show them</title><circle cx="{bx:.0f}" cy="{by:.0f}" r="8"/>'
            f'<text x="{bx:.0f}" y="{by + 3:.0f}" text-anchor="middle">+{folds}</text></g>'
        )
    return body


def lanes_svg(
    nodes: Sequence[Mapping],
    edges: Sequence[Sequence],
    *,
    link: Callable[[str], str] | None = None,
    color: Callable[[Mapping], str],
    title: str | None = None,
    highlight: str | None = None,
) -> str:
    """Standalone SVG of the lanes (controls folded; `SCRIPT` unfolds them and shows arcs on hover)."""
    lanes = Lanes(nodes, edges)
    top = MARGIN + (26 if title else 0)
    offsets, y = {}, top
    for lane in sorted(lanes.rows):
        offsets[lane] = y
        y += TITLE_H + lanes.rows[lane][0] * ROW_H + LANE_GAP
    width, height = 2 * MARGIN + lanes.n_cols * COL_W, int(y + MARGIN)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage lanes" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" data-top="{top}" '
        f'data-gap="{LANE_GAP + TITLE_H}" data-row="{ROW_H}" data-margin="{MARGIN}">',
        f"<style>{CSS}</style>",
        f'<rect class="background" width="{width}" height="{height}" fill="white"/>',
    ]
    if title:
        out.append(f'<text x="{MARGIN}" y="{MARGIN + 10}" font-size="15" font-weight="bold">{escape(title)}</text>')
    folds: dict = {}
    for parent in lanes.group.values():
        folds[parent] = folds.get(parent, 0) + 1
    per_lane: dict = {lane: ([], []) for lane in lanes.rows}
    between = [e for e in edges if lanes.lane[e[0]] != lanes.lane[e[1]]]
    for edge in edges:
        if lanes.lane[edge[0]] == lanes.lane[edge[1]]:
            per_lane[lanes.lane[edge[1]]][0].append(
                _edge_svg(lanes, edge[0], edge[1], edge[2] if len(edge) > 2 else "primary")
            )
    for node_id in lanes.nodes:
        per_lane[lanes.lane[node_id]][1].append(
            _node_svg(lanes, node_id, link, color, highlight, folds.get(node_id, 0))
        )
    if between:
        out.append(f"<desc>{len(between)} extra-parent arcs between lanes are not drawn</desc>")
    for lane in sorted(lanes.rows):
        folded_rows, open_rows = lanes.rows[lane]
        out.append(
            f'<g class="lane" data-lane="{lane}" data-rows="{folded_rows}" data-open-rows="{open_rows}" '
            f'transform="translate(0,{offsets[lane]})">'
            f'<text class="lane-title" x="{MARGIN}" y="{TITLE_H - 6}">{escape(lanes.title(lane))}</text>'
            + "".join(per_lane[lane][0])
            + "".join(per_lane[lane][1])
            + "</g>"
        )
    out.append("</svg>")
    return "\n".join(out)


# arcs of the node under the pointer. Works on every svg.lineage in the page.
SCRIPT = """
(function(){
  document.querySelectorAll('.lineage-view').forEach(function(view){
    var svg = view.querySelector('svg.lineage'); if (!svg) return;
    var W = +svg.getAttribute('width'), H = +svg.getAttribute('height');
    var box = view.querySelector('.lineage-canvas');
    var s = 1, x = 0, y = 0;
    function apply(){ svg.setAttribute('viewBox', x + ' ' + y + ' ' + (box.clientWidth / s) + ' ' +
                                        (box.clientHeight / s));
      svg.setAttribute('width', box.clientWidth); svg.setAttribute('height', box.clientHeight);
      var z = view.querySelector('.zoom-level'); if (z) z.textContent = Math.round(100 * s) + '%'; }
    function fit(){ s = Math.min(1, box.clientWidth / W, box.clientHeight / H); x = 0; y = 0; apply(); }
    function start(){ s = Math.max(Math.min(1, box.clientWidth / W), 0.75);  // the width, while labels stay readable
      box.style.height = Math.min(H * s + 6, Math.max(260, window.innerHeight * 0.8)) + 'px'; x = 0; y = 0; apply(); }
    start();
    function zoom(f, cx, cy){ var r = box.getBoundingClientRect(); cx = cx === undefined ? r.width / 2 : cx - r.left;
      cy = cy === undefined ? r.height / 2 : cy - r.top; var px = x + cx / s, py = y + cy / s;
      s = Math.max(0.1, Math.min(4, s * f)); x = px - cx / s; y = py - cy / s; apply(); }
    box.addEventListener('wheel', function(e){ e.preventDefault(); zoom(e.deltaY < 0 ? 1.15 : 1 / 1.15, e.clientX, e.clientY); },
                         {passive: false});
    var drag = null, moved = false;
    box.addEventListener('mousedown', function(e){ if (e.button !== 0) return; drag = [e.clientX, e.clientY, x, y]; moved = false; });
    window.addEventListener('mousemove', function(e){ if (!drag) return;
      var dx = e.clientX - drag[0], dy = e.clientY - drag[1]; if (Math.abs(dx) + Math.abs(dy) > 4) moved = true;
      x = drag[2] - dx / s; y = drag[3] - dy / s; apply(); });
    window.addEventListener('mouseup', function(){ drag = null; });
    box.addEventListener('click', function(e){ if (moved) { e.preventDefault(); e.stopPropagation(); moved = false; } }, true);
    view.querySelectorAll('[data-zoom]').forEach(function(b){ b.addEventListener('click', function(){
      var z = b.getAttribute('data-zoom'); if (z === 'fit') fit(); else if (z === '1') { s = 1; apply(); }
      else zoom(+z); }); });
    var all = view.querySelector('.all-extra'); if (all) all.addEventListener('change', function(){
      svg.classList.toggle('all-extra', all.checked); });
    svg.querySelectorAll('g.node').forEach(function(g){
      var id = g.getAttribute('data-id');
      function hot(on){ svg.querySelectorAll('.edge-extra[data-from="' + id + '"],.edge-extra[data-to="' + id + '"]')
        .forEach(function(p){ p.classList.toggle('hot', on); }); }
      g.addEventListener('mouseenter', function(){ hot(true); }); g.addEventListener('mouseleave', function(){ hot(false); });
    });
    function relayout(){ if (!svg.classList.contains('lanes')) return;
      var top = +svg.dataset.top, gap = +svg.dataset.gap, row = +svg.dataset.row, yy = top;
      svg.querySelectorAll('g.lane').forEach(function(lane){ lane.setAttribute('transform', 'translate(0,' + yy + ')');
        var open = lane.querySelector('.folded.shown') !== null;
        yy += gap + row * (+(open ? lane.dataset.openRows : lane.dataset.rows)); });
      H = yy + (+svg.dataset.margin); var bg = svg.querySelector('rect.background'); if (bg) bg.setAttribute('height', H);
      box.style.height = Math.min(H * s + 6, Math.max(260, window.innerHeight * 0.8, box.clientHeight)) + 'px'; apply(); }
    svg.querySelectorAll('g.fold').forEach(function(f){ f.addEventListener('click', function(e){
      e.preventDefault(); e.stopPropagation(); var open = !f.classList.contains('open'); f.classList.toggle('open', open);
      svg.querySelectorAll('.folded[data-group="' + f.getAttribute('data-group') + '"]').forEach(function(n){
        n.classList.toggle('shown', open); });
      relayout(); }); });
  });
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('th').forEach(function(th, col){ th.style.cursor = 'pointer';
      th.addEventListener('click', function(){ var body = table.tBodies[0], rows = [].slice.call(body.rows);
        var asc = th.dataset.sort !== 'asc'; table.querySelectorAll('th').forEach(function(h){ delete h.dataset.sort; });
        th.dataset.sort = asc ? 'asc' : 'desc';
        function key(r){ var c = r.cells[col]; var v = c.dataset.value !== undefined ? c.dataset.value : c.textContent;
          var n = parseFloat(v); return isNaN(n) ? v : n; }
        rows.sort(function(a, b){ var p = key(a), q = key(b);
          var o = (typeof p === typeof q) ? (p < q ? -1 : p > q ? 1 : 0) : (typeof p === 'number' ? -1 : 1);
          return asc ? o : -o; });
        rows.forEach(function(r){ body.appendChild(r); }); }); }); });
})();
"""


def viewer(svg: str) -> str:
    """The zoomable frame around a lineage SVG (with `SCRIPT` in the page)."""
    return (
        '<div class="lineage-view"><div class="lineage-tools">'
        '<button type="button" data-zoom="fit">fit</button><button type="button" data-zoom="1">100%</button>'
        '<button type="button" data-zoom="1.25">+</button><button type="button" data-zoom="0.8">−</button> '
        '<span class="zoom-level"></span> · wheel: zoom, drag: pan · a blue badge unfolds the controls '
        'branching off a state · <label><input type="checkbox" class="all-extra"> all extra-parent arcs</label> '
        "(else: those of the state under the pointer)</div>"
        f'<div class="lineage-canvas">{svg}</div></div>'
    )


VIEW_CSS = (
    ".lineage-canvas{overflow:hidden;border:1px solid #ddd;border-radius:6px;background:#fff;cursor:grab}"
    ".lineage-tools{font-size:12px;color:#555;margin:4px 0}.lineage-tools button{font-size:12px;margin-right:2px}"
    "table.sortable th{cursor:pointer}table.sortable th[data-sort=asc]::after{content:' ▲'}"
    "table.sortable th[data-sort=desc]::after{content:' ▼'}"
)
