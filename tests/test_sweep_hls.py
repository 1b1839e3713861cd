"""Issue 21, item 2: HLS builds as sweep tasks. Fast checks of the selection, the store keys, the
resume logic, the refusals, the Ray task's resource tag and the report's C-sim column; the real
builds on both engines are in tests/test_sweep_ray.py (slow)."""
from __future__ import annotations

import json
import warnings

import pytest

from fpq.report import builds, report
from fpq.report.builds import HlsPhase, HlsPlan, check_compile_nodes, check_hls, select, task_options
from fpq.report.grid import describe
from fpq.report.records import TABLE_COLUMNS, load_results, point_id, read_cache


def _rec(w, a, acc, lut, dsp=1, lat=10.0, status="ok"):
    cfg = dict(weights=w, activations=a, first_last=None, method="max", qat_epochs=0, seed=0)
    (wk, wb), (ak, ab) = describe(w), describe(a)
    return dict(cfg, id=point_id(cfg), family=wk if wk == ak else "mixed", w_kind=wk, w_bits=wb, a_kind=ak, a_bits=ab,
                accuracy=None if status == "error" else acc, lut=lut, dsp=dsp, latency_ns=lat, exact=None if status == "error" else True,
                verify_samples=8, verify_paths="emulator+torch", status=status, error="", command="")


RECS = [_rec("int4", "int8", 90.0, 1000), _rec("int6", "int8", 95.0, 3000), _rec("int8", "int8", 94.0, 5000),
        _rec("e2m1", "int8", 80.0, 500, dsp=0), _rec("e3m2", "int8", 99.0, 9000, status="error")]


def test_check_hls_refuses_bad_arguments_naming_them():
    assert check_hls(None, 16, None, 1, 64) is None
    plan = check_hls("front", 4, {"io_type": "io_parallel", "part": "xcu250-figd2104-2L-e"}, 2, 8)
    assert (plan.select, plan.samples, plan.compile_workers) == ("front", 4, 2)
    for args, msg in [(("best", 4, None, 1, 8), "hls='best' is not a selection; allowed: None, 'front', 'all'"),
                      (("front", 0, None, 1, 8), "hls_samples must be an integer >= 1, got 0"),
                      (("front", 4, None, True, 8), "compile_workers must be an integer >= 1, got True"),
                      (("all", 9, None, 1, 8), "hls_samples=9 must be <= verify_samples=8"),
                      (("all", 4, {"outdir": "x"}, 1, 8), r"hls_options \['outdir'\] are not fpq.to_hls options"),
                      (("all", 4, {"io_type": "io_bogus"}, 1, 8), "hls_options: io_type 'io_bogus' is not supported"),
                      (("all", 4, {"part": 7}, 1, 8), "part must be a string"),
                      ((None, 4, {"part": "x"}, 1, 8), "hls_options is for hls='front' or 'all'")]:
        with pytest.raises(ValueError, match=msg):
            check_hls(*args)


def test_select_front_is_the_union_of_the_pareto_fronts():
    front = select(RECS, HlsPlan("front", 4))
    # LUT front: e2m1 (500, 80), int4 (1000, 90), int6 (3000, 95); DSP front: e2m1 (0 DSP), int6 (95 at 1 DSP);
    # latency (all 10 ns): int6. int8 is beaten by int6 everywhere; the failed point is never built
    assert [r["weights"] for r in front] == ["int4", "int6", "e2m1"]
    assert [r["weights"] for r in select(RECS, HlsPlan("all", 4))] == ["int4", "int6", "int8", "e2m1"]


def _phase(tmp_path, plan, fresh=False):
    keys = {r["id"]: f"{r['id']}-ctx0123456789ab" for r in RECS}
    return HlsPhase(plan, str(tmp_path / "cache.jsonl"), keys, lambda: RECS, fresh)


def _built(jb, exact=True):
    return {"id": point_id(jb["cfg"]), "hls_exact": exact, "hls_samples": jb["samples"], "hls_mismatch": "",
            "hls_status": "ok", "hls_error": "", "hls_seconds": 1.5, "hls_where": "test"}


def test_builds_are_stored_under_their_own_keys_and_never_done_twice(tmp_path):
    plan = HlsPlan("front", 4)
    ph = _phase(tmp_path, plan)
    jobs = ph.jobs()
    assert [j["cfg"]["weights"] for j in jobs] == ["int4", "int6", "e2m1"] and jobs[0]["samples"] == 4
    ph.finish(jobs[0], _built(jobs[0]))
    ph.finish(jobs[1], RuntimeError("worker died"))  # the engine lost it: recorded, tried again next time
    lines = [json.loads(s) for s in (tmp_path / "cache.jsonl").read_text().splitlines()]
    assert [set(e) for e in lines] == [{"key", "hls"}] * 2
    assert lines[0]["key"] == f"{RECS[0]['id']}-ctx0123456789ab-hls-{plan.digest()}"
    assert lines[1]["hls"]["hls_status"] == "error" and lines[1]["hls"]["hls_error"].startswith("engine: RuntimeError")
    again = _phase(tmp_path, plan)  # a resumed sweep: only what is not stored (or was lost) is built
    assert [j["cfg"]["weights"] for j in again.jobs()] == ["int6", "e2m1"]
    assert [j["cfg"]["weights"] for j in _phase(tmp_path, plan, fresh=True).jobs()] == ["int4", "int6", "e2m1"]
    other = HlsPlan("front", 5)  # other settings are other builds
    assert other.digest() != plan.digest() and HlsPlan("front", 4, {"io_type": "io_stream"}).digest() != plan.digest()
    assert len(_phase(tmp_path, other).jobs()) == 3
    merged = again.merge(RECS)
    assert merged[0]["hls_exact"] is True and merged[0]["hls_seconds"] == 1.5
    assert all(merged[i][k] is None for i in (1, 2, 3) for k in ("hls_exact", "hls_status"))
    # the point store reads past the build lines without a word, and the other way round
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_cache(str(tmp_path / "cache.jsonl")) == {}
        assert len(read_cache(str(tmp_path / "cache.jsonl"), kind="hls")) == 2


def test_a_tampered_build_record_is_skipped_with_a_warning(tmp_path):
    plan = HlsPlan("all", 4)
    ph = _phase(tmp_path, plan)
    jb = ph.jobs()[0]
    bad = dict(_built(jb), hls_exact="yes")
    (tmp_path / "cache.jsonl").write_text(json.dumps({"key": ph.keys[bad["id"]], "hls": bad}) + "\n")
    with pytest.warns(UserWarning, match="field 'hls_exact': expected None, or true / false from a C-sim"):
        assert len(_phase(tmp_path, plan).jobs()) == 4  # not trusted: built again
    with pytest.raises(ValueError, match="kind must be 'record' or 'hls'"):
        read_cache(str(tmp_path / "cache.jsonl"), kind="both")


def test_ray_build_tasks_carry_the_compile_resource_and_memory():
    opts = task_options(3)
    assert opts["resources"] == {"fpq_compile": 1} and opts["memory"] == builds.COMPILE_MEMORY >= 2 ** 30
    assert opts["num_cpus"] == 1 and opts["max_retries"] == 3
    node = {"Alive": True, "Resources": {"CPU": 4.0, "memory": 8.0 * 2 ** 30}}
    with pytest.raises(ValueError, match=r"custom resource 'fpq_compile'.*none of the cluster's 1 node\(s\).*"
                                         r"ray start \.\.\. --resources='\{\"fpq_compile\": 2\}'"):
        check_compile_nodes([node, {"Alive": False, "Resources": {"fpq_compile": 2.0, "memory": 8.0 * 2 ** 30}}])
    tagged = {"Alive": True, "Resources": {"CPU": 4.0, "fpq_compile": 2.0, "memory": 1.0 * 2 ** 30}}
    with pytest.raises(ValueError, match="less than 2.0 GiB of Ray memory"):
        check_compile_nodes([node, tagged])
    check_compile_nodes([node, dict(tagged, Resources=dict(tagged["Resources"], memory=4.0 * 2 ** 30))])


def test_report_shows_the_c_sim_column_and_build_errors(tmp_path):
    recs = [dict(r) for r in RECS]
    recs[0].update(hls_exact=True, hls_samples=4, hls_status="ok", hls_error="", hls_seconds=9.5, hls_mismatch="",
                   hls_where="local")
    recs[1].update(hls_exact=None, hls_samples=4, hls_status="error", hls_error="CalledProcessError: <g++> failed",
                   hls_seconds=1.0, hls_mismatch="", hls_where="local")
    page = open(report(recs, str(tmp_path)), encoding="utf-8").read()
    assert "<th class=\"\">torch == emulator == qonnx</th><th class=\"\">== C-sim</th>" in page
    assert "build failed" in page and "not built" in page and "CalledProcessError: &lt;g++&gt; failed" in page
    assert "<g++>" not in page
    assert "HLS C-sim of 2 points: torch == emulator == C-sim on 1, not on 0, build failed on 1; " \
           "torch == emulator == qonnx == C-sim on 1." in page
    assert "== C-sim (4 inputs): yes" in open(tmp_path / "pareto_lut.svg", encoding="utf-8").read()
    back, _ = load_results(str(tmp_path / "results.csv"))  # the fields round-trip through the CSV
    assert [(r["hls_exact"], r["hls_status"], r["hls_samples"]) for r in back[:3]] == [
        (True, "ok", 4), (None, "error", 4), (None, None, None)]
    assert list(json.load(open(tmp_path / "results.json"))["records"][0]) == list(recs[0])
    assert open(tmp_path / "results.csv").readline().strip().split(",") == list(TABLE_COLUMNS)
