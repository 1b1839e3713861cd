"""Matplotlib figures of a sweep (PNG and SVG): Pareto scatter per cost, integer vs minifloat by
bit width (as in the minifloat-vs-integer PTQ study), and accuracy over W bits x A bits."""
from __future__ import annotations

import os
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


def _ok(records, *fields):
    return [r for r in records if r.get("status") != "error" and all(r.get(f) is not None for f in fields)]


def pareto_plot(records, cost: str, out_dir: str, float_accuracy=None) -> dict:
    plt = _plt()
    pts = _ok(records, "accuracy", cost)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    by_family = defaultdict(list)
    for r in pts:
        by_family[r["family"]].append(r)
    for fam, rs in sorted(by_family.items()):
        for method in sorted({r["method"] for r in rs}):
            sel = [r for r in rs if r["method"] == method]
            ax.scatter([r[cost] for r in sel], [r["accuracy"] for r in sel], s=18, alpha=0.65,
                       color=COLORS.get(fam, "#444"), marker=MARKERS.get(method, "o"),
                       label=f"{fam} ({method})", edgecolors="none")
    front = pareto_front(pts, cost)
    if front:
        ax.step([r[cost] for r in front], [r["accuracy"] for r in front], where="post", color="black", lw=1.2,
                label="Pareto front")
        ax.scatter([r[cost] for r in front], [r["accuracy"] for r in front], s=40, facecolors="none",
                   edgecolors="black", lw=1.0)
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
    return _save(fig, out_dir, f"pareto_{cost}")


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


def all_plots(records, out_dir: str, float_accuracy=None, costs=tuple(COSTS)) -> dict:
    """{name: {"png": path, "svg": path}} of every figure that the data supports."""
    os.makedirs(out_dir, exist_ok=True)
    out = {}
    for c in costs:
        if _ok(records, "accuracy", c):
            out[f"pareto_{c}"] = pareto_plot(records, c, out_dir, float_accuracy)
    p = by_width_plot(records, out_dir, float_accuracy)
    if p:
        out["int_vs_minifloat"] = p
    for fam in ("int", "minifloat", "fixed"):
        p = heatmap_plot(records, fam, out_dir)
        if p:
            out[f"heatmap_{fam}"] = p
    return out
