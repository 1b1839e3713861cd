"""Matplotlib figures of a sweep (PNG and SVG): Pareto scatter per cost, integer vs minifloat by
bit width (as in the minifloat-vs-integer PTQ study), and accuracy over W bits x A bits.

The Pareto scatters are interactive without any JavaScript library: every marker of a point is a
link (matplotlib's per-marker URLs, ``PathCollection.set_urls``) to that point's row of the
report's "All points" table (``#pt-<id>``, see ``anchor``), and carries an SVG ``<title>``
(weights, activations, method, accuracy, cost, exactness and the command that rebuilds it), which
a browser shows on hover. The SVG file keeps them; ``inline_svg`` puts one into the HTML page.
"""
from __future__ import annotations

import hashlib
import os
import re
import xml.etree.ElementTree as ET
from collections import defaultdict

from .pareto import COSTS, pareto_front

COLORS = {"int": "#1f77b4", "minifloat": "#ff7f0e", "fixed": "#2ca02c", "mixed": "#9a9a9a",
          "binary": "#8c564b"}
MARKERS = {"max": "o", "mse": "s", "percentile": "^"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")  # headless; never opens a window
    import matplotlib.pyplot as plt
    plt.rcParams["svg.hashsalt"] = "fpq"  # stable SVG ids
    return plt


def _save(fig, out_dir: str, stem: str) -> dict:
    paths = {}
    for ext in ("png", "svg"):
        p = os.path.join(out_dir, f"{stem}.{ext}")
        fig.savefig(p, dpi=120, bbox_inches="tight", metadata={"Date": None} if ext == "svg" else None)
        paths[ext] = p
    _plt().close(fig)
    return paths


SVG_NS, XLINK_NS = "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"
_HREF = f"{{{XLINK_NS}}}href"
_SAFE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def anchor(rec: dict) -> str:
    """The HTML id of a point's row (``pt-<id>``); an id fpq.sweep could not have written (other
    characters, too long) becomes a hash of it, so the anchor is always a plain token."""
    pid = str(rec.get("id"))
    if _SAFE_ID.fullmatch(pid):
        return f"pt-{pid}"
    return "pt-h" + hashlib.sha256(pid.encode()).hexdigest()[:16]


def _num_text(v, digits: int = 0) -> str:
    return "-" if v is None else f"{float(v):.{digits}f}"


def tooltip(rec: dict, exact_label: str = "torch == emulator == qonnx") -> str:
    """What hovering a point shows (plain text; the SVG writer escapes it)."""
    fl = rec.get("first_last")
    ex = rec.get("exact")
    lines = [f"W {rec.get('weights')}  A {rec.get('activations')}" + (f"  first/last {fl}" if fl else "")
             + f"  ({rec.get('method')})",
             f"accuracy {_num_text(rec.get('accuracy'), 2)}%",
             f"LUT {_num_text(rec.get('lut'))}  DSP {_num_text(rec.get('dsp'))}  "
             f"latency {_num_text(rec.get('latency_ns'))} ns",
             f"exact ({exact_label}): {'yes' if ex is True else 'NO' if ex is False else 'not verified'}"]
    if rec.get("hls_status"):  # its HLS project was built: the C-sim too
        hx = rec.get("hls_exact")
        lines.append(f"== C-sim ({rec.get('hls_samples')} inputs): " + (
            "build failed" if rec["hls_status"] == "error" else "yes" if hx is True else "NO" if hx is False else "-"))
    lines.append(f"point {rec.get('id')}")
    cmd = rec.get("command") or rec.get("python")
    if cmd:
        lines.append(f"rebuild: {cmd}")
    return "\n".join(lines)


def _register_namespaces() -> None:
    # plain "svg" / "xlink:" prefixes when written back (an HTML parser reads "xlink:href" only so)
    ET.register_namespace("", SVG_NS)
    ET.register_namespace("xlink", XLINK_NS)


def _add_titles(svg_path: str, tips: dict) -> int:
    """Give every point link of a saved SVG its ``<title>`` (tips: {"#anchor": text}) and make the
    link jump within the page (matplotlib writes ``target="_blank"``). Returns the links found.
    Written here because matplotlib has per-marker URLs but no per-marker tooltips."""
    _register_namespaces()
    tree = ET.parse(svg_path)
    n = 0
    for a in tree.getroot().iter(f"{{{SVG_NS}}}a"):
        href = a.get(_HREF)
        if href not in tips:
            continue
        a.attrib.pop("target", None)
        title = ET.Element(f"{{{SVG_NS}}}title")
        title.text = tips[href]
        a.insert(0, title)
        n += 1
    tree.write(svg_path, encoding="utf-8", xml_declaration=True)
    return n


def inline_svg(svg_path: str, prefix: str) -> str:
    """An SVG file as markup for an HTML page: its ids (and the references to them) get
    ``prefix`` so that several figures on one page do not share a clip path or marker id; the
    point links (``#pt-...``) are left as they are; the RDF metadata is dropped."""
    _register_namespaces()
    root = ET.parse(svg_path).getroot()
    for md in root.findall(f"{{{SVG_NS}}}metadata"):
        root.remove(md)
    own = {el.get("id") for el in root.iter() if el.get("id")}
    for el in root.iter():
        if el.get("id"):
            el.set("id", f"{prefix}-{el.get('id')}")
        href = el.get(_HREF)
        if href and href.startswith("#") and href[1:] in own:
            el.set(_HREF, f"#{prefix}-{href[1:]}")
        for k, v in el.attrib.items():
            if "url(#" in v:
                el.set(k, re.sub(r"url\(#([^)]+)\)",
                                 lambda m: f"url(#{prefix}-{m.group(1)})" if m.group(1) in own else m.group(0), v))
    return ET.tostring(root, encoding="unicode")


def _ok(records, *fields):
    return [r for r in records if r.get("status") != "error" and all(r.get(f) is not None for f in fields)]


def pareto_plot(records, cost: str, out_dir: str, float_accuracy=None,
                exact_label: str = "torch == emulator == qonnx") -> dict:
    """Accuracy vs ``cost`` of every point, its Pareto front, and the float model's accuracy; each
    marker links to ``#pt-<id>`` with a tooltip (see the module docstring)."""
    plt = _plt()
    pts = _ok(records, "accuracy", cost)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    by_family = defaultdict(list)
    for r in pts:
        by_family[r["family"]].append(r)
    for fam, rs in sorted(by_family.items()):
        for method in sorted({r["method"] for r in rs}):
            sel = [r for r in rs if r["method"] == method]
            sc = ax.scatter([r[cost] for r in sel], [r["accuracy"] for r in sel], s=18, alpha=0.65,
                            color=COLORS.get(fam, "#444"), marker=MARKERS.get(method, "o"),
                            label=f"{fam} ({method})", edgecolors="none", zorder=3)
            sc.set_urls([f"#{anchor(r)}" for r in sel])
    front = pareto_front(pts, cost)
    if front:
        ax.step([r[cost] for r in front], [r["accuracy"] for r in front], where="post", color="black", lw=1.2,
                label="Pareto front")
        ax.scatter([r[cost] for r in front], [r["accuracy"] for r in front], s=40, facecolors="none",
                   edgecolors="black", lw=1.0, zorder=2)  # under the linked markers
    if float_accuracy is not None:
        ax.axhline(float_accuracy, color="#555", ls="--", lw=0.8, label="float")
    vals = [r[cost] for r in pts if r[cost] > 0]
    if vals and max(vals) / min(vals) > 30:
        ax.set_xscale("symlog" if any(r[cost] == 0 for r in pts) else "log", **(
            {"linthresh": max(min(vals), 1)} if any(r[cost] == 0 for r in pts) else {}))
    ax.set_xlabel(COSTS.get(cost, cost))
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"accuracy vs {COSTS.get(cost, cost)}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    paths = _save(fig, out_dir, f"pareto_{cost}")
    paths["links"] = _add_titles(paths["svg"], {f"#{anchor(r)}": tooltip(r, exact_label) for r in pts})
    return paths


def _same_width(records):
    """Points with one format kind and one width for weights and activations (the paper's axis)."""
    return [r for r in _ok(records, "accuracy") if r["w_kind"] == r["a_kind"] and r["w_bits"] == r["a_bits"]
            and r.get("first_last") in (None, "")]


def by_width_plot(records, out_dir: str, float_accuracy=None) -> dict | None:
    """Integer vs minifloat by bit width: best accuracy, and LUT / DSP of every W=A point."""
    pts = _same_width(records)
    if not pts:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9))
    for fam in sorted({r["family"] for r in pts}):
        rs = [r for r in pts if r["family"] == fam]
        widths = sorted({r["w_bits"] for r in rs})
        best = [max(rs_w, key=lambda r: r["accuracy"]) for rs_w in
                ([r for r in rs if r["w_bits"] == b] for b in widths)]
        c = COLORS.get(fam, "#444")
        axes[0].scatter([r["w_bits"] for r in rs], [r["accuracy"] for r in rs], s=12, color=c, alpha=0.35)
        axes[0].plot(widths, [r["accuracy"] for r in best], "-o", color=c, label=f"{fam} (best)")
        for ax, cost in ((axes[1], "lut"), (axes[2], "dsp")):
            sel = [r for r in rs if r.get(cost) is not None]
            ax.scatter([r["w_bits"] for r in sel], [r[cost] for r in sel], s=14, color=c, alpha=0.5, label=fam)
            ax.plot([r["w_bits"] for r in best if r.get(cost) is not None],
                    [r[cost] for r in best if r.get(cost) is not None], "-", color=c, lw=1)
    for r in pts:  # name the minifloat splits next to their accuracy
        if r["family"] == "minifloat":
            axes[0].annotate(r["weights"], (r["w_bits"], r["accuracy"]), fontsize=5, alpha=0.6,
                             xytext=(3, 0), textcoords="offset points")
    if float_accuracy is not None:
        axes[0].axhline(float_accuracy, color="#555", ls="--", lw=0.8, label="float")
    for ax, lab in zip(axes, ("accuracy (%)", "LUTs", "DSPs")):
        ax.set_xlabel("bit width (weights = activations)")
        ax.set_ylabel(lab)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title("accuracy by bit width (lines: best split / method)")
    axes[1].set_title("LUTs by bit width (lines: the best-accuracy point)")
    axes[2].set_title("DSPs by bit width")
    fig.tight_layout()
    return _save(fig, out_dir, "int_vs_minifloat")


def heatmap_plot(records, family: str, out_dir: str) -> dict | None:
    """Best accuracy for each (weight bits, activation bits) of one format kind."""
    pts = [r for r in _ok(records, "accuracy") if r["w_kind"] == family and r["a_kind"] == family]
    if not pts:
        return None
    wb = sorted({r["w_bits"] for r in pts})
    ab = sorted({r["a_bits"] for r in pts})
    if len(wb) < 2 and len(ab) < 2:
        return None
    import numpy as np
    grid = np.full((len(wb), len(ab)), np.nan)
    for r in pts:
        i, j = wb.index(r["w_bits"]), ab.index(r["a_bits"])
        grid[i, j] = r["accuracy"] if np.isnan(grid[i, j]) else max(grid[i, j], r["accuracy"])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(ab), 1.0 + 0.6 * len(wb)))
    im = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
    for i in range(len(wb)):
        for j in range(len(ab)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if grid[i, j] < np.nanmax(grid) - 0.5 * np.nanstd(grid) - 1e-9 else "black")
    ax.set_xticks(range(len(ab)), [str(b) for b in ab])
    ax.set_yticks(range(len(wb)), [str(b) for b in wb])
    ax.set_xlabel("activation bits")
    ax.set_ylabel("weight bits")
    ax.set_title(f"{family}: best accuracy (%)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, out_dir, f"heatmap_{family}")


def all_plots(records, out_dir: str, float_accuracy=None, costs=tuple(COSTS),
              exact_label: str = "torch == emulator == qonnx") -> dict:
    """{name: {"png": path, "svg": path}} of every figure that the data supports (Pareto plots
    also give "links": the number of point links in their SVG)."""
    os.makedirs(out_dir, exist_ok=True)
    out = {}
    for c in costs:
        if _ok(records, "accuracy", c):
            out[f"pareto_{c}"] = pareto_plot(records, c, out_dir, float_accuracy, exact_label)
    p = by_width_plot(records, out_dir, float_accuracy)
    if p:
        out["int_vs_minifloat"] = p
    for fam in ("int", "minifloat", "fixed"):
        p = heatmap_plot(records, fam, out_dir)
        if p:
            out[f"heatmap_{fam}"] = p
    return out
