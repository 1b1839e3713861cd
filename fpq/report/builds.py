"""HLS builds of a sweep's points: ``fpq.sweep(..., hls="front" | "all", hls_samples=16)``.

After the points are computed, the selected ones (``"front"``: every point on the Pareto front
of accuracy vs LUTs, DSPs or latency; ``"all"``: every point that built) are rebuilt exactly as
their point was (same configuration and seed), written as an hls4ml project with ``fpq.to_hls``
(in a temporary folder of the worker, removed afterwards) and C-simulated on the point's first
``hls_samples`` verify inputs, compared with torch and the emulator (``fpq.verify(...,
project=...)``). The outcome is a record of its own in the sweep's store (``{"key": ..., "hls":
{...}}``) keyed by the point's key plus a hash of the HLS settings, hls4ml's version and fpq's C++
headers, so a build is never done twice and a killed sweep resumes its builds too. A build that
fails is recorded (``hls_status="error"``, ``hls_error``), not raised; one its engine lost (the
worker died) is tried again on the next run. results.csv / results.json carry the fields next to
the point (``hls_exact``: torch == emulator == C-sim on those inputs; with the point's ``exact``,
torch == emulator == qonnx == C-sim).

Compiles are memory-heavy (g++ on the generated C++), so they run in a pool of their own:
``compile_workers`` processes on the local engine (default 1: in the driver's process), and on
Ray tasks that need the custom resource ``fpq_compile`` (one unit each) and ``COMPILE_MEMORY``
bytes of Ray's memory resource besides one CPU. A Ray that ``fpq.sweep`` starts advertises
``compile_workers`` units; on a cluster, each node that may compile says how many at once with
``ray start ... --resources='{"fpq_compile": 2}'``. A cluster where no node advertises it (or
none has the memory) is refused before any point runs, naming the resource, instead of leaving
the builds pending forever.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field

from .pareto import COSTS, pareto_front
from .records import HLS_COLUMNS, point_id

HLS_SELECT = ("front", "all")
HLS_OPTIONS = ("backend", "io_type", "part", "clock_period", "reuse_factor", "strategy")
COMPILE_RESOURCE = "fpq_compile"
COMPILE_MEMORY = 2 * 1024 ** 3  # bytes a build asks of Ray's memory resource (g++ of a small design: < 1 GiB)
ENGINE_ERROR = "engine:"  # a build its engine lost (not its own failure): tried again on resume


@dataclass(frozen=True)
class HlsPlan:
    """What ``fpq.sweep``'s HLS phase builds and how (checked by ``check_hls``)."""

    select: str
    samples: int
    options: dict = field(default_factory=dict)
    compile_workers: int = 1

    def digest(self) -> str:
        """Hash of what a build's result depends on besides its point: the samples, the ``to_hls``
        options, hls4ml's version and fpq's C++ headers (fpq's Python is in the point's key)."""
        from importlib.metadata import PackageNotFoundError, version
        from pathlib import Path
        try:
            hls4ml = version("hls4ml")
        except PackageNotFoundError:
            hls4ml = "absent"
        h = hashlib.sha256(json.dumps({"samples": self.samples, "options": self.options, "hls4ml": hls4ml},
                                      sort_keys=True, default=str).encode())
        inc = Path(__file__).resolve().parents[1] / "hls" / "include"
        for p in sorted(inc.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(inc)).encode())
                h.update(p.read_bytes())
        return h.hexdigest()[:12]


def check_hls(hls, hls_samples, hls_options, compile_workers, verify_samples: int) -> HlsPlan | None:
    """The HLS plan of a sweep, or None (``hls=None``); a bad argument raises one ValueError that
    names it and what is allowed, before any point runs."""
    if hls is None:
        if hls_options:
            raise ValueError("fpq.sweep: hls_options is for hls='front' or 'all' (hls is None)")
        return None
    if hls not in HLS_SELECT:
        raise ValueError(f"fpq.sweep: hls={hls!r} is not a selection; allowed: None, {', '.join(map(repr, HLS_SELECT))}")
    for name, v in (("hls_samples", hls_samples), ("compile_workers", compile_workers)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"fpq.sweep: {name} must be an integer >= 1, got {v!r}")
    if hls_samples > verify_samples:
        raise ValueError(f"fpq.sweep: hls_samples={hls_samples} must be <= verify_samples={verify_samples} "
                         "(the C-sim runs the first of the point's verify inputs)")
    opts = dict(hls_options or {})
    bad = sorted(set(opts) - set(HLS_OPTIONS))
    if bad:
        raise ValueError(f"fpq.sweep: hls_options {bad} are not fpq.to_hls options a sweep passes; allowed: "
                         f"{', '.join(HLS_OPTIONS)}")
    from ..hls.options import check_args
    try:
        check_args(opts.get("backend", "Vitis"), opts.get("io_type", "io_parallel"), opts.get("strategy", "Latency"),
                   opts.get("reuse_factor", 1), opts.get("clock_period", 5))
    except ValueError as e:
        raise ValueError(f"fpq.sweep: hls_options: {e}") from None
    if "part" in opts and not isinstance(opts["part"], str):
        raise ValueError(f"fpq.sweep: hls_options part must be a string (an FPGA part), got {opts['part']!r}")
    return HlsPlan(hls, hls_samples, opts, compile_workers)


def select(records: list, plan: HlsPlan) -> list:
    """The points to build: the union of the Pareto fronts ("front") or every point that built
    ("all"), in the sweep's order."""
    ok = [r for r in records if r.get("status") != "error"]
    if plan.select == "all":
        return ok
    on = {r["id"] for c in COSTS for r in pareto_front(ok, c)}
    return [r for r in ok if r["id"] in on]


def job(rec: dict, plan: HlsPlan) -> dict:
    """What a build task gets: the point's configuration and the HLS settings."""
    cfg = {k: rec[k] for k in ("weights", "activations", "first_last", "method", "qat_epochs", "seed")}
    return {"cfg": cfg, "samples": plan.samples, "options": dict(plan.options)}


def _where() -> str:
    """Where a build ran: the host, and on Ray the resources its task holds (shows the compile tag)."""
    host = os.uname().nodename
    try:
        import sys
        if "ray" in sys.modules:
            import ray
            if ray.is_initialized():
                res = ray.get_runtime_context().get_assigned_resources()
                if res:
                    return f"ray on {host}: " + ", ".join(f"{k}={v:g}" for k, v in sorted(res.items()))
    except Exception:  # noqa: BLE001 - not in a Ray task: a local build
        pass
    return f"local on {host} (pid {os.getpid()})"


def run_build(model, data, st, jb: dict) -> dict:
    """Build, compile and C-simulate one point (in a worker); failures are recorded, not raised."""
    import tempfile

    import torch

    from ..hls import to_hls
    from ..verification import verify
    from .sweeping import build_point, verify_inputs  # deferred: sweeping imports this module

    t0 = time.time()
    cfg = jb["cfg"]
    rec = {"id": point_id(cfg), "hls_exact": None, "hls_samples": int(jb["samples"]), "hls_mismatch": "",
           "hls_status": "ok", "hls_error": "", "hls_seconds": None, "hls_where": _where()}
    try:
        q = build_point(model, cfg, st, data)
        x = verify_inputs(data.x_test, st.verify_samples, cfg["seed"])[:jb["samples"]]  # the point's first inputs
        with tempfile.TemporaryDirectory(prefix="fpq-sweep-hls-") as d:
            proj = to_hls(q, os.path.join(d, "prj"), torch.as_tensor(x[:1]), **jb["options"])
            rep = verify(q, x, project=proj, qonnx_subset=0)
        rec.update(hls_exact=bool(rep.exact) if "hls" in rep.paths else None,
                   hls_mismatch="" if rep.first_mismatch is None else str(rep.first_mismatch))
    except Exception as e:  # this point's design cannot be built or compiled: record why, go on
        rec.update(hls_status="error", hls_error=f"{type(e).__name__}: {str(e).strip()[-2000:]}")
    rec["hls_seconds"] = round(time.time() - t0, 3)
    return rec


def rebuild_commands(command: str, python: str, plan: HlsPlan) -> dict:
    """A point's ``fpq sweep ... --only ID`` command and ``fpq.sweep(..., only=[ID])`` call, made
    to rebuild and C-simulate its HLS project as well ("all" of one point is that point). The
    command line has no flags for ``hls_options``: with options only the Python call can say it."""
    kw = f", hls='all', hls_samples={plan.samples}" + (f", hls_options={plan.options!r}" if plan.options else "")
    python = python[:-1] + kw + ")" if python.endswith(")") else python
    flags = f" --hls all --hls-samples {plan.samples}"
    return {"command": command + flags if command and not plan.options else "", "python": python}


def lost_record(jb: dict, why: BaseException) -> dict:
    """The record of a build its engine lost (worker died on every retry, or the task raised)."""
    return {"id": point_id(jb["cfg"]), "hls_exact": None, "hls_samples": int(jb["samples"]), "hls_mismatch": "",
            "hls_status": "error", "hls_error": f"{ENGINE_ERROR} {type(why).__name__}: {str(why).strip()[-2000:]}",
            "hls_seconds": 0.0, "hls_where": ""}


class HlsPhase:
    """The driver's side of the builds: which to run (selected, not yet stored), storing each."""

    def __init__(self, plan: HlsPlan, cache_path: str, point_keys: dict, records, fresh: bool):
        from .records import read_cache
        self.plan, self.cache_path, self.records = plan, cache_path, records
        digest = plan.digest()
        self.keys = {pid: f"{k}-hls-{digest}" for pid, k in point_keys.items()}
        stored = {} if fresh else read_cache(cache_path, kind="hls")
        self.done = {pid: stored[k] for pid, k in self.keys.items() if k in stored
                     and not str(stored[k].get("hls_error") or "").startswith(ENGINE_ERROR)}
        self.computed = 0

    def jobs(self) -> list:
        """Builds still to do (call once the points are done)."""
        return [job(r, self.plan) for r in select(self.records(), self.plan) if r["id"] not in self.done]

    def finish(self, jb: dict, rec) -> None:
        from .records import _append_cache
        if isinstance(rec, BaseException):
            rec = lost_record(jb, rec)
        pid = point_id(jb["cfg"])
        _append_cache(self.cache_path, self.keys[pid], rec, kind="hls")
        self.done[pid] = rec
        self.computed += 1

    def run_here(self, model, data, st) -> None:
        """compile_workers=1 on the local engine: the builds run one after another in this process."""
        for jb in self.jobs():
            self.finish(jb, run_build(model, data, st, jb))

    def merge(self, records: list) -> list:
        """The records with their HLS fields (None where not built); a built point's command and
        Python call rebuild its HLS project too."""
        out = []
        for r in records:
            built = self.done.get(r["id"])
            r = dict(r, **{k: (built or {}).get(k) for k in HLS_COLUMNS})
            if built is not None:
                r.update(rebuild_commands(r.get("command") or "", r.get("python") or "", self.plan))
            out.append(r)
        return out

    def meta(self) -> dict:
        sel = select(self.records(), self.plan)
        return {"select": self.plan.select, "samples": self.plan.samples, "options": self.plan.options,
                "selected": len(sel), "built": self.computed, "cached": len(sel) - self.computed,
                "compile_workers": self.plan.compile_workers}


def check_compile_nodes(nodes: list, resource: str | None = None, memory: int = COMPILE_MEMORY) -> None:
    """Refuse a Ray cluster none of whose live nodes can take a build (``ray.nodes()``): no node
    advertises ``resource``, or none of those has ``memory`` bytes of Ray memory."""
    resource = resource or COMPILE_RESOURCE
    alive = [n for n in nodes if n.get("Alive")]
    tagged = [n for n in alive if n.get("Resources", {}).get(resource, 0) >= 1]
    if not tagged:
        raise ValueError(
            f"fpq.sweep: hls=... on Ray needs a node that advertises the custom resource {resource!r} (the HLS "
            f"compiles run only there, so that few run at once per node); none of the cluster's {len(alive)} "
            f"node(s) does. Start the nodes that may compile with `ray start ... --resources='{{\"{resource}\": 2}}'` "
            "(2 compiles at once), or leave address=None (the Ray fpq.sweep starts advertises compile_workers)")
    if not any(n["Resources"].get("memory", 0) >= memory for n in tagged):
        raise ValueError(f"fpq.sweep: the nodes advertising {resource!r} have less than {memory / 2 ** 30:.1f} GiB of "
                         "Ray memory, which one HLS build asks for (start them with more memory)")


def task_options(max_retries: int) -> dict:
    """The Ray options of a build task: one CPU, one unit of the compile resource, its memory."""
    return dict(num_cpus=1, resources={COMPILE_RESOURCE: 1}, memory=COMPILE_MEMORY, max_retries=max_retries,
                retry_exceptions=False)


__all__ = ["COMPILE_MEMORY", "COMPILE_RESOURCE", "HLS_OPTIONS", "HLS_SELECT", "HlsPhase", "HlsPlan", "check_hls",
           "check_compile_nodes", "rebuild_commands", "run_build", "select", "task_options"]
