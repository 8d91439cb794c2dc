"""`graphprune analyze MODEL --html report.html`: one self-contained page (inline CSS, JS and SVG; it loads
nothing from anywhere).

- The table lists every channel group: id, key, kind, channels, status, the parameters and MACs at stake
  (what cutting the whole group would touch), the member nodes and the frozen reason.
- The chart has one bar per layer that produces channels (the output channels of a Conv, Gemm or MatMul
  weight): kept and removed channels with a plan (`--ratio`), prunable and frozen channels without.
- With calibration samples (`--calib`), small multiples show the sensitivity of the largest groups: the
  outputs' relative error against the original when only that group is cut at 25, 50 and 75 %.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np

from .analysis.costs import group_costs
from .render import human
from .version import __version__


# ---- numbers ----------------------------------------------------------------------------------------------
def layer_rows(analysis, removed_roots=None) -> list[dict]:
    """One row per node whose weight produces channels: its channels, and how many are removed (plan) or
    frozen."""
    view = analysis.view
    frozen_roots = np.zeros(analysis.id_count, dtype=bool)
    for g in analysis.groups:
        if g.frozen:
            frozen_roots[g.units] = True
    removed = np.zeros(analysis.id_count, dtype=bool)
    if removed_roots is not None and len(removed_roots):
        removed[np.asarray(removed_roots, dtype=np.int64)] = True
    rows, seen = [], set()
    for role in analysis.roles:
        if role.kind != "producer" or not role.weight or role.node in seen:
            continue
        seen.add(role.node)
        sp = analysis.spaces.spaces[role.space]
        r = analysis.units_of(sp)
        rows.append({"node": view.names[role.node], "op": view.nodes[role.node].op_type, "channels": sp.size,
                     "removed": int(removed[r].sum()), "frozen": int(frozen_roots[r].sum())})
    return rows


def page_data(analysis, plan=None, sensitivity_rows=None) -> dict:
    """Everything the page shows, as plain data (also handy for tests)."""
    removed_roots = plan.removed_roots(analysis) if plan is not None else None
    params, macs = group_costs(analysis)
    cuts = plan.cuts if plan is not None else {}
    groups = []
    for i, g in enumerate(analysis.channel_groups):
        cut = cuts.get(g.key)
        groups.append({"id": i, "key": g.key, "kind": g.kind, "channels": g.size, "prunable": not g.frozen,
                       "removed": len(cut.removed) if cut else 0, "params": int(round(params[i])),
                       "macs": int(round(macs[i])), "nodes": list(g.nodes), "reasons": list(g.reasons)})
    return {"groups": groups, "layers": layer_rows(analysis, removed_roots), "plan": plan is not None,
            "ratio": (plan.options or {}).get("ratio") if plan is not None else None,
            "sensitivity": sensitivity_rows or []}


# ---- sensitivity ------------------------------------------------------------------------------------------
SENSITIVITY_RATIOS = (0.25, 0.5, 0.75)
SENSITIVITY_GROUPS = 12  # the largest prunable groups get a curve
CALIB_SAMPLES = 32


def read_calibration(source, model, images=None, preprocess=None):
    """`--calib SOURCE` (any form passes/calib_sources.py reads) and/or `--calib-images DIR` for the
    sensitivity curves: the first CALIB_SAMPLES samples, as a Calibration (inputs fed unchanged to every batch
    kept apart). Anything that does not fit the model's inputs is a UsageError."""
    from .passes import calibration

    calib = calibration.load(source, model, images=images, preprocess=preprocess, read_at_most=CALIB_SAMPLES)
    return calibration.prepare(calib, model)


def sensitivity(analysis, calib, ratios=SENSITIVITY_RATIOS, max_groups=SENSITIVITY_GROUPS) -> list[dict]:
    """Per group (the `max_groups` largest): the outputs' relative error and cosine against the original when
    only that group loses the fraction r of its channels (lowest L2 magnitude first), on the given samples (a
    Calibration from read_calibration, or a dict of arrays keyed by input name, samples on axis 0). Measured
    by the sensitivity pass (passes/sensitivity.py) on the oracle's masked model, which equals the pruned one
    (the tests prove it), so nothing is rewritten."""
    from graphprune.passes import calibration, scoring
    from graphprune.passes import sensitivity as cost_curves

    model = analysis.view.model
    if isinstance(calib, dict):
        calib = calibration.prepare(calibration.load(calib, model, read_at_most=CALIB_SAMPLES), model)
    groups = sorted(analysis.prunable, key=lambda g: -g.size)[:max_groups]
    scores = scoring.score(analysis, "l2", 0).value
    curves = cost_curves.measure(analysis, scores, calib, samples=CALIB_SAMPLES, fractions=ratios, groups=groups).value
    rows = []
    for g in groups:
        c = curves.get(g.key)
        if c is None:
            continue
        points = [{"ratio": round(float(k) / g.size, 4), "removed": int(k), "relative_error": float(e),
                   "cosine": float(cos)} for k, e, cos in zip(c.counts, c.relative_errors, c.cosines)]
        rows.append({"key": g.key, "size": g.size, "points": points})
    return rows


def _curves(rows: list[dict]) -> str:
    if not rows:
        return ""
    w, h, pad = 220, 130, 30
    top = max([p["relative_error"] for r in rows for p in r["points"]] + [1e-9])
    cells = []
    for i, r in enumerate(rows):
        pts = " ".join(f"{pad + (w - pad - 8) * p['ratio']:.1f},{h - pad - (h - pad - 10) * p['relative_error'] / top:.1f}"
                       for p in r["points"])
        dots = "".join(f'<circle cx="{pad + (w - pad - 8) * p["ratio"]:.1f}" '
                       f'cy="{h - pad - (h - pad - 10) * p["relative_error"] / top:.1f}" r="2.5" fill="#2563eb">'
                       f'<title>ratio {p["ratio"]}: {p["removed"]} channels, relative error '
                       f'{p["relative_error"]:.3g}, cosine {p["cosine"]:.4f}</title></circle>' for p in r["points"])
        key = html.escape(r["key"] if len(r["key"]) <= 32 else "…" + r["key"][-31:])
        cells.append(f'<svg class="curve" data-group="{html.escape(r["key"])}" width="{w}" height="{h}" role="img">'
                     f'<text x="{pad}" y="12">{key} ({r["size"]})</text>'
                     f'<line x1="{pad}" y1="{h - pad}" x2="{w - 8}" y2="{h - pad}" stroke="#9ca3af"/>'
                     f'<line x1="{pad}" y1="16" x2="{pad}" y2="{h - pad}" stroke="#9ca3af"/>'
                     f'<text x="{pad}" y="{h - pad + 14}">0</text><text x="{w - 14}" y="{h - pad + 14}">1</text>'
                     f'<text x="{w // 2}" y="{h - pad + 14}">ratio</text>'
                     f'<text x="2" y="24">{top:.2g}</text>'
                     f'<polyline points="{pts}" fill="none" stroke="#2563eb" stroke-width="1.5"/>{dots}</svg>')
    return ('<h2>Sensitivity: output relative error when one group is cut</h2>'
            '<div class="sub">Each curve cuts only that group (lowest L2 magnitude first) and compares the outputs '
            'with the original on the calibration samples; the shared y axis is the relative error.</div>'
            f'<div class="curves">{"".join(cells)}</div>')


# ---- the page ---------------------------------------------------------------------------------------------
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d232b;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px}
.sub{color:#5b6470;margin-bottom:16px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{border:1px solid #d7dce2;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:18px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #e3e7ec;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f6f8;cursor:pointer;user-select:none;position:sticky;top:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.frozen td{color:#6b7280} .tag{border-radius:4px;padding:1px 6px;font-size:12px}
.tag.prunable{background:#dcfce7;color:#166534} .tag.frozen{background:#e5e7eb;color:#374151}
.nodes{max-width:320px;word-break:break-all} .why{max-width:420px}
#filter{margin:6px 0 10px;padding:4px 8px;width:260px}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
svg text{font-size:11px;fill:#1d232b}
.curves{display:flex;flex-wrap:wrap;gap:8px} svg.curve{border:1px solid #e3e7ec;border-radius:4px}
"""

_JS = """
(function(){
  var table=document.getElementById('groups');
  var rows=[].slice.call(table.tBodies[0].rows);
  [].forEach.call(table.tHead.rows[0].cells,function(th,col){
    th.addEventListener('click',function(){
      var num=th.classList.contains('num'), asc=th.dataset.dir!=='asc';
      th.dataset.dir=asc?'asc':'desc';
      rows.sort(function(a,b){
        var x=a.cells[col].dataset.v||a.cells[col].textContent, y=b.cells[col].dataset.v||b.cells[col].textContent;
        if(num){x=parseFloat(x);y=parseFloat(y);} return (x<y?-1:x>y?1:0)*(asc?1:-1);});
      rows.forEach(function(r){table.tBodies[0].appendChild(r);});
    });
  });
  var f=document.getElementById('filter');
  f.addEventListener('input',function(){
    var q=f.value.toLowerCase();
    rows.forEach(function(r){r.style.display=r.textContent.toLowerCase().indexOf(q)<0?'none':'';});
  });
  var shown=rows.filter(function(r){return r.classList.contains('prunable');}).length;
  var s=document.getElementById('js-status');
  s.textContent='ready: '+rows.length+' groups, '+shown+' prunable';
  document.body.setAttribute('data-ready','1');
})();
"""


def _chart(layers: list[dict], plan: bool) -> str:
    if not layers:
        return "<p>No layer produces channels from a weight.</p>"
    a_color, b_color = ("#2563eb", "#ef4444") if plan else ("#16a34a", "#9ca3af")
    a_name, b_name = ("kept", "removed") if plan else ("prunable", "frozen")
    label_w, bar_w, row_h = 220, 560, 18
    widest = max(r["channels"] for r in layers) or 1
    height = row_h * len(layers) + 30
    parts = [f'<svg id="layer-chart" width="{label_w + bar_w + 120}" height="{height}" role="img" '
             f'aria-label="channels per layer: {a_name} and {b_name}">']
    for i, r in enumerate(layers):
        y = 10 + i * row_h
        b = r["removed"] if plan else r["frozen"]
        a = r["channels"] - b
        wa = bar_w * a / widest
        wb = bar_w * b / widest
        name = html.escape(r["node"] if len(r["node"]) <= 34 else "…" + r["node"][-33:])
        tip = html.escape(f'{r["node"]} ({r["op"]}): {a} {a_name}, {b} {b_name} of {r["channels"]}')
        parts.append(f'<g class="layer" data-node="{html.escape(r["node"])}" data-{a_name}="{a}" data-{b_name}="{b}">'
                     f'<title>{tip}</title>'
                     f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{name}</text>'
                     f'<rect class="{a_name}" x="{label_w}" y="{y + 2}" width="{wa:.1f}" height="{row_h - 5}" '
                     f'fill="{a_color}"/>'
                     f'<rect class="{b_name}" x="{label_w + wa:.1f}" y="{y + 2}" width="{wb:.1f}" '
                     f'height="{row_h - 5}" fill="{b_color}"/>'
                     f'<text x="{label_w + wa + wb + 6:.1f}" y="{y + 12}">{a}/{r["channels"]}</text></g>')
    parts.append("</svg>")
    legend = (f'<div class="legend"><span style="background:{a_color}"></span>{a_name}'
              f'<span style="background:{b_color}"></span>{b_name}</div>')
    return legend + "".join(parts)


def render_html(analysis, plan=None, title: str = "model", sensitivity_rows=None) -> str:
    d = page_data(analysis, plan, sensitivity_rows)
    groups = d["groups"]
    n_prunable = sum(g["prunable"] for g in groups)
    chans = sum(g["channels"] for g in groups if g["prunable"])
    cards = [("channel groups", len(groups)), ("prunable", n_prunable), ("frozen", len(groups) - n_prunable),
             ("prunable channels", chans)]
    if plan is not None:
        cards += [("ratio", d["ratio"]), ("channels removed", sum(g["removed"] for g in groups))]
    cards_html = "".join(f'<div class="card">{html.escape(str(k))}<b>{html.escape(str(v))}</b></div>'
                         for k, v in cards)
    head = ["id", "group", "kind", "channels"] + (["removed"] if plan is not None else []) + \
           ["status", "params at stake", "MACs at stake", "member nodes", "frozen reason"]
    num = {"id", "channels", "removed", "params at stake", "MACs at stake"}
    th = "".join(f'<th class="{"num" if h in num else ""}">{h}</th>' for h in head)
    body = []
    for g in groups:
        status = "prunable" if g["prunable"] else "frozen"
        nodes = ", ".join(g["nodes"][:6]) + (f" (+{len(g['nodes']) - 6})" if len(g["nodes"]) > 6 else "")
        cells = [f'<td class="num">{g["id"]}</td>', f"<td>{html.escape(g['key'])}</td>",
                 f"<td>{g['kind']}</td>", f'<td class="num">{g["channels"]}</td>']
        if plan is not None:
            cells.append(f'<td class="num">{g["removed"]}</td>')
        cells += [f'<td><span class="tag {status}">{status}</span></td>',
                  f'<td class="num" data-v="{g["params"]}">{human(g["params"], 3)}</td>',
                  f'<td class="num" data-v="{g["macs"]}">{human(g["macs"], 3)}</td>',
                  f'<td class="nodes">{html.escape(nodes)}</td>',
                  f'<td class="why">{html.escape("; ".join(g["reasons"]))}</td>']
        body.append(f'<tr class="{status}" data-group="{html.escape(g["key"])}">{"".join(cells)}</tr>')
    chart_title = "Channels per layer: kept and removed" if plan is not None else \
        "Channels per layer: prunable and frozen"
    data = json.dumps(d).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>graphprune: {html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>graphprune analysis: {html.escape(title)}</h1>
<div class="sub">graphprune {__version__} · <span id="js-status">static</span></div>
<div class="cards">{cards_html}</div>
<h2>{chart_title}</h2>
{_chart(d["layers"], plan is not None)}
{_curves(d["sensitivity"])}
<h2>Channel groups</h2>
<input id="filter" type="search" placeholder="filter groups (node, reason, kind...)">
<table id="groups"><thead><tr>{th}</tr></thead><tbody>
{"".join(body)}
</tbody></table>
<script type="application/json" id="graphprune-data">{data}</script>
<script>{_JS}</script>
</body></html>
"""


def write_html(analysis, path, plan=None, title: str | None = None, sensitivity_rows=None) -> None:
    """Write the page atomically (a temporary file in the target folder, then rename)."""
    from .core.io import write_text_atomic

    path = Path(os.fspath(path))
    write_text_atomic(path, render_html(analysis, plan, title or path.stem, sensitivity_rows))
