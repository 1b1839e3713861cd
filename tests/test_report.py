"""Pareto fronts on synthetic points, the report's files, and the page in headless Chromium."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from fpq.report import dominated, grid, load_results, pareto_front, report
from fpq.report.grid import describe
from fpq.report.plots import SVG_NS, XLINK_NS, anchor


def _records(n: int, seed: int = 0) -> list:
    """Synthetic sweep records with the fields fpq.sweep writes (values on a coarse grid: ties)."""
    rng = np.random.default_rng(seed)
    fmts = grid(range(4, 7), ("int", "minifloat"))
    out = []
    for i in range(n):
        w, a = fmts[rng.integers(len(fmts))], fmts[rng.integers(len(fmts))]
        (wk, wb), (ak, ab) = describe(w), describe(a)
        out.append({"id": f"p{i:03d}", "weights": w, "activations": a, "first_last": None,
                    "method": ["max", "mse"][i % 2], "family": wk if wk == ak else "mixed", "w_kind": wk,
                    "w_bits": wb, "a_kind": ak, "a_bits": ab, "accuracy": float(rng.integers(80, 100)),
                    "lut": float(rng.integers(1, 40) * 1000), "dsp": int(rng.integers(0, 4)),
                    "latency_ns": float(rng.integers(3, 8) * 5), "exact": bool(i % 7), "verify_samples": 8,
                    "verify_paths": "emulator+torch+qonnx", "status": "ok",
                    "error": "", "command": f"fpq sweep --model m.py:f --only p{i:03d}", "python": ""})
    return out


def _brute_front(records, cost):
    pts = [r for r in records if r["status"] != "error" and r["accuracy"] is not None and r[cost] is not None]
    return {r["id"] for r in pts if not any(dominated(r, o, cost) for o in pts)}


def test_pareto_front_small_known_case():
    pts = [dict(id=i, accuracy=a, lut=c, status="ok") for i, (a, c) in
           enumerate([(90, 10), (95, 20), (93, 20), (95, 30), (99, 50), (80, 5), (99, 50), (70, 60)])]
    front = pareto_front(pts, "lut")
    assert [p["id"] for p in front] == [5, 0, 1, 4, 6]  # by cost; the two identical (99, 50) both kept
    pts.append(dict(id=9, accuracy=100.0, lut=1, status="error"))
    pts.append(dict(id=10, accuracy=None, lut=1, status="ok"))
    assert [p["id"] for p in pareto_front(pts, "lut")] == [5, 0, 1, 4, 6]  # failed / missing left out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("cost", ["lut", "dsp", "latency_ns"])
def test_pareto_front_matches_brute_force(seed, cost):
    recs = _records(60, seed)
    recs[3]["status"] = "error"
    recs[4][cost] = None
    front = pareto_front(recs, cost)
    assert {r["id"] for r in front} == _brute_front(recs, cost)
    costs = [r[cost] for r in front]
    accs = [r["accuracy"] for r in front]
    assert costs == sorted(costs) and all(b >= a for a, b in zip(accs, accs[1:]))


def test_report_writes_plots_tables_and_commands(tmp_path):
    recs = _records(40)
    recs[5].update(status="error", error="build: ValueError: boom", accuracy=None, exact=None)
    page = report(recs, str(tmp_path), title="synthetic <sweep>")
    text = open(page, encoding="utf-8").read()
    for stem in ("pareto_lut", "pareto_dsp", "pareto_latency_ns", "int_vs_minifloat", "heatmap_int",
                 "heatmap_minifloat"):
        for ext in ("png", "svg"):
            p = tmp_path / f"{stem}.{ext}"
            assert p.stat().st_size > 1000, p
        assert f"'{stem}.png'" in text and f"href='{stem}.svg'" in text
    srcs = re.findall(r"(?:src|href)='([^']+)'", text)
    assert srcs and all(not os.path.isabs(s) and (tmp_path / s).exists() for s in srcs)  # relative, present
    assert "synthetic &lt;sweep&gt;" in text  # escaped
    for r in pareto_front(recs, "lut"):
        assert f"fpq sweep --model m.py:f --only {r['id']}" in text
    assert "build: ValueError: boom" in text
    assert json.load(open(tmp_path / "results.json"))["records"][0]["id"] == "p000"
    # the CSV round-trips (what `fpq report results.csv` reads)
    back, _ = load_results(str(tmp_path / "results.csv"))
    keys = ("id", "weights", "activations", "accuracy", "lut", "dsp", "latency_ns", "exact", "w_bits")
    assert [{k: r[k] for k in keys} for r in back] == [{k: r[k] for k in keys} for r in recs]
    with pytest.raises(ValueError, match="no sweep points"):
        report([], str(tmp_path / "empty"))


def _svg_links(path) -> dict:
    """{href: title text} of the point links of a saved SVG (with a check that none opens a new tab)."""
    import xml.etree.ElementTree as ET
    out = {}
    for a in ET.parse(path).getroot().iter(f"{{{SVG_NS}}}a"):
        assert "target" not in a.attrib, a.attrib  # a click jumps within the page
        title = a.find(f"{{{SVG_NS}}}title")
        out[a.get(f"{{{XLINK_NS}}}href")] = None if title is None else title.text
    return out


def test_pareto_svg_links_and_tooltips_name_every_point(tmp_path):
    recs = _records(24)
    recs[1].update(status="error", error="build: boom", accuracy=None, exact=None)  # not plotted, no link
    recs[2]["lut"] = None  # not on the LUT plot, on the others
    recs[3]["command"] = "fpq sweep --x '</title><script>alert(1)</script>' -- --> & \"q\""
    recs[4]["id"] = "weird id<>"  # a list passed by hand may hold any id: its anchor is still a plain token
    page = report(recs, str(tmp_path))
    text = open(page, encoding="utf-8").read()
    for cost in ("lut", "dsp", "latency_ns"):
        plotted = [r for r in recs if r["status"] != "error" and r[cost] is not None]
        links = _svg_links(tmp_path / f"pareto_{cost}.svg")
        assert sorted(links) == sorted(f"#{anchor(r)}" for r in plotted)  # one link per plotted point
        for r in plotted:
            tip = links[f"#{anchor(r)}"]
            assert f"W {r['weights']}  A {r['activations']}  ({r['method']})" in tip
            assert f"accuracy {r['accuracy']:.2f}%" in tip and f"LUT {_n(r['lut'])}  DSP {r['dsp']}" in tip
            assert ("exact (torch == emulator == qonnx): " + ("yes" if r["exact"] else "NO")) in tip
            assert f"rebuild: {r['command']}" in tip and f"point {r['id']}" in tip
        for href in links:  # every link's row is in the page
            assert f'<tr id="{href[1:]}"' in text
    assert anchor(recs[4]) != "pt-weird id<>" and anchor(recs[4]).replace("-", "").isalnum()
    assert anchor(recs[0]) == "pt-p000"
    # the page inlines the three Pareto plots; what a record holds arrives escaped
    assert text.count("<figure class='fpq-plot'") == 3
    assert "<script>alert" not in text and "</title><script>" not in text
    assert text.count("&lt;/title&gt;&lt;script&gt;alert(1)&lt;/script&gt;") >= 4  # 3 tooltips + the table
    assert text.count("<script>") == 1  # the page's own


def _n(v):
    return "-" if v is None else f"{float(v):.0f}"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium(page, tmp_path, *extra):
    profile = tmp_path / f"profile{len(list(tmp_path.iterdir()))}"
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", *extra, f"file://{os.path.abspath(page)}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def _page_problems(page, tmp_path, url_suffix=""):
    """(images loaded / total, console lines, DOM) from a DOM dump of ``page``."""
    run = _chromium(str(page) + url_suffix, tmp_path, "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    m = re.search(r'id="fpq-image-status" data-loaded="(\d+)/(\d+)"', run.stdout)
    console = [l for l in run.stderr.splitlines() if ":CONSOLE" in l or "Uncaught" in l]
    return (m and (int(m.group(1)), int(m.group(2)))), console, run.stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium; "
                                             "make deps installs it); the browser check needs it")
def test_report_renders_in_headless_chromium(tmp_path):
    out = tmp_path / "rep"
    page = report(_records(30), str(out))
    loaded, console, dom = _page_problems(page, tmp_path)
    n_img = open(page).read().count("<img ")
    assert n_img >= 3 and loaded == (n_img, n_img), (loaded, dom[-1500:])
    # every plotted point (30 on each of the 3 Pareto plots) is a link whose target row exists
    assert re.search(r'id="fpq-link-status" data-links="90/90"', dom), dom[-800:]
    assert len(re.findall(r"<a xlink:href=\"#pt-", dom)) == 90
    assert all(json.loads(l)["naturalWidth"] > 0 for l in
               re.search(r'id="fpq-image-status"[^>]*>([^<]*)<', dom).group(1).strip().splitlines())
    assert console == []
    shot = tmp_path / "shot.png"
    run = _chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600")
    assert run.returncode == 0 and shot.stat().st_size > 10000
    import matplotlib.image as mpimg
    assert mpimg.imread(str(shot)).std() > 0.01  # not a blank page
    # a click on a point opens #pt-<id>: that row is highlighted (CSS :target)
    _, console, dom = _page_problems(page, tmp_path, "#pt-p007")
    assert 'data-target-bg="rgb(255, 224, 138)"' in dom and console == []
    # the checks can fail: a missing image, a link without its row and a script error are caught
    os.remove(out / "heatmap_int.png")
    text = open(page).read()
    with open(page, "w") as f:
        f.write(text.replace('<tr id="pt-p003"', '<tr id="gone"'))
    with open(page, "a") as f:
        f.write("<script>undefinedFunction();</script>")
    loaded, console, dom = _page_problems(page, tmp_path)
    assert loaded == (n_img - 1, n_img) and any("Uncaught" in l for l in console)
    assert 'data-links="87/90"' in dom  # p003's three links lead nowhere now
