"""``fpq.report``: Pareto tables, plots and one self-contained HTML page of a sweep.

The page uses only relative links to the images written next to it (PNG shown, SVG linked), has
no external resources, and a small script that writes the load state of every image into the
page (``#fpq-image-status``), so a headless browser's DOM dump shows whether they rendered.
The Pareto plots are inlined as SVG: hovering a point shows its formats, method, accuracy, cost,
exactness and command (an SVG ``<title>``), clicking it jumps to its row of "All points"
(``id="pt-<id>"``), which CSS ``:target`` highlights; no JavaScript is needed for either. The
script also counts the point links whose row exists (``#fpq-link-status``).
"""
from __future__ import annotations

import html
import json
import os
from collections import Counter

from .pareto import COSTS, fronts
from .plots import all_plots, anchor, inline_svg
from .records import load_results, write_tables

FRONT_COLUMNS = ("weights", "activations", "first_last", "method", "accuracy", "lut", "ff", "dsp", "latency_ns",
                 "exact", "id")
POINT_COLUMNS = ("id", "weights", "activations", "first_last", "method", "accuracy", "lut", "dsp", "latency_ns",
                 "exact", "status")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right} th{background:#f3f3f3}
td.l,th.l{text-align:left} code{font-size:11px;white-space:pre-wrap;word-break:break-all}
figure{display:inline-block;margin:8px;vertical-align:top;max-width:100%} figure img{max-width:100%;border:1px solid #eee}
.int{color:#1f77b4} .minifloat{color:#ff7f0e} .bad{color:#b00020;font-weight:bold}
figure.fpq-plot svg{max-width:100%;height:auto} .fpq-plot a{cursor:pointer}
.fpq-plot a:hover use,.fpq-plot a:hover path{stroke:#000 !important;stroke-width:2px !important}
tr:target td{background:#ffe08a} tr:target{outline:2px solid #d08000}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var lines = imgs.map(function (im) {
    return JSON.stringify({src: im.getAttribute('src'), complete: im.complete, naturalWidth: im.naturalWidth});
  });
  var ok = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  var st = document.getElementById('fpq-image-status');
  st.textContent = lines.join('\\n');
  st.setAttribute('data-loaded', ok + '/' + imgs.length);
  // every point link of the inlined plots must lead to a row of the points table
  var links = Array.prototype.slice.call(document.querySelectorAll('figure.fpq-plot svg a'));
  var good = links.filter(function (a) {
    var h = a.getAttributeNS('http://www.w3.org/1999/xlink', 'href') || a.getAttribute('href') || '';
    var row = h.charAt(0) === '#' ? document.getElementById(h.slice(1)) : null;
    return row !== null && row.tagName === 'TR' && a.querySelector('title') !== null;
  }).length;
  var ls = document.getElementById('fpq-link-status');
  ls.setAttribute('data-links', good + '/' + links.length);
  var target = location.hash ? document.getElementById(location.hash.slice(1)) : null;
  if (target) {  // the highlight a click on a point gives its row (CSS :target)
    ls.setAttribute('data-target-bg', getComputedStyle(target.cells[0]).backgroundColor);
  }
});
"""


def _fmt(v, col: str) -> str:
    if v is None or v == "":
        return "-"
    if col == "accuracy":
        return f"{float(v):.2f}"
    if col == "seconds":
        return f"{float(v):.1f}"
    if col in ("exact", "hls_exact"):
        return "yes" if v is True else ("NO" if v is False else str(v))
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 10 else f"{v:.3g}"
    return str(v)


# column headers that say more than the field's name (with HLS builds: which paths each compares)
_HEADS = {"exact": "torch == emulator == qonnx", "hls_exact": "== C-sim"}


def _with_hls(cols, records) -> tuple:
    """The columns plus the C-sim one when some point was built (its exact column then reads
    torch == emulator == qonnx == C-sim across the two)."""
    if not any(r.get("hls_status") for r in records):
        return cols
    i = cols.index("exact") + 1
    return cols[:i] + ("hls_exact",) + cols[i:]


def _cell(r: dict, c: str) -> tuple[str, str]:
    """(text, extra class) of one cell."""
    if c == "hls_exact" and r.get("hls_status") == "error":
        return "build failed", " bad"
    if c == "hls_exact" and not r.get("hls_status"):
        return "not built", ""
    return _fmt(r.get(c), c), " bad" if c in ("exact", "hls_exact") and r.get(c) is False else ""


def _table(rows, cols, extra=None, anchors: bool = False) -> str:
    e = html.escape
    heads = _HEADS if "hls_exact" in cols else {}
    head = "".join(f'<th class="{"l" if c in ("weights", "activations", "first_last", "method", "id", "status") else ""}">'
                   f"{e(heads.get(c, c))}</th>" for c in cols) + ("<th class='l'>regenerate</th>" if extra else "")
    body = []
    for r in rows:
        cells = []
        for c in cols:
            cls = "l" if c in ("weights", "activations", "first_last", "method", "id", "status") else ""
            text, bad = _cell(r, c)
            cells.append(f'<td class="{cls}{bad}">{e(text)}</td>')
        if extra:
            cells.append(f'<td class="l"><code>{e(extra(r))}</code></td>')
        rid = f' id="{e(anchor(r))}"' if anchors else ""
        body.append(f'<tr{rid} class="{e(str(r.get("family", "")))}">' + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _command(r: dict) -> str:
    return r.get("command") or r.get("python") or ""


def summary_lines(records, meta, front_by_cost) -> list:
    """Plain-text findings computed from the data (which kinds are on each front)."""
    lines = []
    ok = [r for r in records if r.get("status") != "error"]
    fam = Counter(r["family"] for r in ok)
    lines.append(f"{len(records)} points ({', '.join(f'{n} {k}' for k, n in sorted(fam.items()))}); "
                 f"{sum(r.get('status') == 'error' for r in records)} failed; "
                 f"bit-exact (torch == emulator == qonnx) on {sum(r.get('exact') is True for r in ok)}, "
                 f"not exact on {sum(r.get('exact') is False for r in ok)}, not verified on "
                 f"{sum(r.get('exact') is None for r in ok)}.")
    built = [r for r in ok if r.get("hls_status")]
    if built:
        h = meta.get("hls") if isinstance(meta.get("hls"), dict) else {}
        lines.append(f"HLS C-sim of {len(built)} points" + (f" (hls={h.get('select')!r}, {h.get('samples')} inputs each)"
                                                             if h else "") +
                     f": torch == emulator == C-sim on {sum(r.get('hls_exact') is True for r in built)}, not on "
                     f"{sum(r.get('hls_exact') is False for r in built)}, build failed on "
                     f"{sum(r.get('hls_status') == 'error' for r in built)}; torch == emulator == qonnx == C-sim on "
                     f"{sum(r.get('hls_exact') is True and r.get('exact') is True for r in built)}.")
    for cost, front in front_by_cost.items():
        if not front:
            continue
        c = Counter(r["family"] for r in front)
        best = max(front, key=lambda r: r["accuracy"])
        cheapest = front[0]
        lines.append(f"Pareto front vs {COSTS.get(cost, cost)}: {len(front)} points "
                     f"({', '.join(f'{n} {k}' for k, n in sorted(c.items()))}); cheapest "
                     f"{cheapest['weights']}/{cheapest['activations']} at {_fmt(cheapest['accuracy'], 'accuracy')}%, "
                     f"most accurate {best['weights']}/{best['activations']} at {_fmt(best['accuracy'], 'accuracy')}% "
                     f"for {_fmt(best[cost], cost)} {COSTS.get(cost, cost)}.")
    return lines


def report(results, out_dir: str = "out/report", title: str = "fpq sweep report", costs=tuple(COSTS)) -> str:
    """Write an HTML report of a sweep: plots, Pareto fronts, every point and its command.

    Writes into ``out_dir``: the plots (PNG and SVG; the Pareto plots are interactive SVG inlined
    in the page: hover a point for its details, click it for its row), ``results.csv`` /
    ``results.json`` and ``index.html``. Every value read from the results is HTML-escaped. A
    sweep still running is reported with the points stored so far.

    Args:
        results (SweepResult | list[dict] | str | os.PathLike): what ``fpq.sweep`` returned, a list
            of its records, or a results.json / results.csv path (or a sweep's ``out`` folder).
        out_dir (str): the folder to write (created if missing).
        title (str): the page title.
        costs (Sequence[str]): the cost axes of the Pareto fronts, among "lut", "dsp", "latency_ns".

    Returns:
        str: the path of ``index.html``.

    Raises:
        ValueError: no points to report, records that lack the fields ``fpq.sweep`` writes, or a
            results path that does not exist or is not a results file.

    Example:
        >>> import os, tempfile, torch, fpq
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3))
        >>> data = (torch.randn(64, 4), torch.randint(0, 3, (64,)), torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     res = fpq.sweep(model, data, formats=["int4"], methods="max", out=os.path.join(d, "sweep"),
        ...                     workers=1, verify_samples=8, verify_qonnx=0, calib_samples=32, progress=False)
        ...     page = fpq.report(res, os.path.join(d, "report"), costs=("lut",))
        ...     os.path.basename(page), "results.csv" in os.listdir(os.path.dirname(page))
        ('index.html', True)
        >>> fpq.report([], "unused")
        Traceback (most recent call last):
        ...
        ValueError: fpq.report: no sweep points to report
    """
    records, meta = load_results(results)
    prog = meta.get("progress") if isinstance(meta.get("progress"), dict) else None
    if not records:
        raise ValueError("fpq.report: no sweep points to report" + (
            f" yet (the sweep is {prog.get('state')}: 0 of {prog.get('total')} done, {prog.get('running')} running)"
            if prog else ""))
    missing = [k for k in ("weights", "activations", "accuracy", "family", "w_bits", "a_bits") if k not in records[0]]
    if missing:
        raise ValueError(f"fpq.report: records lack {missing}; pass what fpq.sweep wrote")
    os.makedirs(out_dir, exist_ok=True)
    write_tables(records, meta, out_dir)
    hls = any(r.get("hls_status") for r in records)
    plots = all_plots(records, out_dir, meta.get("float_accuracy"), costs)
    front_by_cost = fronts(records, costs)
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    facts = []  # every value is escaped: results.json is a file anyone may have edited
    if prog:  # a report of a sweep still running (or stopped): the points stored so far
        facts.append(f"sweep {prog.get('state')} ({prog.get('engine')} engine): {prog.get('done')} done, "
                     f"{prog.get('failed')} failed, {prog.get('running')} running of {prog.get('total')} points; "
                     f"this page shows the {len(records)} stored so far")
    if meta.get("float_accuracy") is not None:
        facts.append(f"float model: {_fmt(meta['float_accuracy'], 'accuracy')}% ({meta.get('metric', 'accuracy')} on "
                     f"{meta.get('n_test', '?')} held-out samples)")
    if meta.get("seconds") is not None:
        facts.append(f"sweep time: {_fmt(meta['seconds'], 'seconds')} s with {meta.get('workers')} worker(s); "
                     f"{meta.get('computed')} points computed, {meta.get('cached')} from the cache; seed {meta.get('seed')}")
    if meta.get("first_layer"):
        facts.append(f"first / last layer: {meta['first_layer']} / {meta.get('last_layer')}")
    parts.append("<ul>" + "".join(f"<li>{e(f)}</li>" for f in facts) +
                 "".join(f"<li>{e(s)}</li>" for s in summary_lines(records, meta, front_by_cost)) + "</ul>")
    parts.append("<p>Data: <a href='results.csv'>results.csv</a>, <a href='results.json'>results.json</a>. "
                 "Cost: <code>fpq.estimate_cost</code> (a model, see its notes); exactness: <code>fpq.verify</code> "
                 "on off-grid inputs" + (", and for the points built (hls_exact) the HLS project's C-sim on the first "
                                         "of them." if hls else ", without HLS.") + "</p>")
    parts.append("<h2>Plots</h2>")
    for name, p in plots.items():
        png, svg = os.path.basename(p["png"]), os.path.basename(p["svg"])
        links = f"(<a href='{e(svg)}'>SVG</a>, <a href='{e(png)}'>PNG</a>)"
        if "links" in p:  # interactive: inlined (escaped by the XML writer), hover and click work
            parts.append(f"<figure class='fpq-plot' id='fig-{e(name)}'>{inline_svg(p['svg'], name)}"
                         f"<figcaption>{e(name)}: hover a point for its details, click it for its row "
                         f"{links}</figcaption></figure>")
        else:
            parts.append(f"<figure><img src='{e(png)}' alt='{e(name)}'><figcaption>{e(name)} {links}"
                         "</figcaption></figure>")
    for cost, front in front_by_cost.items():
        parts.append(f"<h2>Pareto front: accuracy vs {e(COSTS.get(cost, cost))}</h2>")
        parts.append(_table(front, _with_hls(FRONT_COLUMNS, records), _command) if front else "<p>no usable points</p>")
    parts.append("<h2>All points</h2><p>Each row's command rebuilds that point (add <code>--fresh</code> "
                 "to recompute instead of reading the cache).</p>")
    parts.append(_table(records, _with_hls(POINT_COLUMNS, records), _command, anchors=True))
    errs = [r for r in records if r.get("error")]
    if errs:
        parts.append("<h2>Errors</h2>" + _table(errs, ("id", "weights", "activations", "method", "error")))
    herrs = [r for r in records if r.get("hls_error")]
    if herrs:
        parts.append("<h2>HLS build errors</h2>" + _table(herrs, ("id", "weights", "activations", "method", "hls_error")))
    parts.append("<h2>Image check</h2><pre id='fpq-image-status' data-loaded='pending'>pending</pre>"
                 "<p id='fpq-link-status' data-links='pending'></p>")
    parts.append(f"<script>{_SCRIPT}</script>")
    parts.append(f"<!-- fpq-meta {e(json.dumps({k: meta.get(k) for k in ('points', 'seed', 'context')}))} -->")
    parts.append("</body></html>")
    path = os.path.join(out_dir, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return path
