"""hls4ml's distributed-arithmetic strategy (da4ml) on fpq's HLS plans.

With ``Strategy: distributed_arithmetic`` hls4ml hands each Dense / Conv1D / Conv2D kernel to
da4ml, which rewrites the constant matrix-vector product as a graph of shift-and-add operations
(no multipliers, hence no DSPs) whose every intermediate is an exact ap_fixed of the minimal
width; the layer's output is then cast to the result type fpq planned, which is that layer's
quantizer (or its exact accumulator). So the arithmetic is exact as long as da4ml sees the exact
input type and the exact kernel, which is what fpq's planned precisions give it.

Why fpq sets the strategy per layer: hls4ml's DA codegen pass raises for *any* layer whose
strategy is distributed_arithmetic but that is not a Dense / Conv ("VitisInput ... is not
supported by DA optimizer" when the strategy is set model-wide), so only the weighted layers
get it; every other layer keeps the Latency strategy (it has no multiplier to remove anyway).

What DA needs, checked here before any file is written (``check``):
* reuse factor 1 (da4ml emits one fully unrolled combinational kernel);
* the Vivado or Vitis backend (fpq's only backends);
* Conv layers in io_parallel: hls4ml's DA conv template is io_parallel with the line-buffer
  implementation only (io_stream Dense works);
* kernels exact in float32: da4ml casts the kernel to float32 before solving;
* da4ml installed (``pip install hls4ml[da]``).

Solve time: hls4ml's own DA pass runs da4ml with ``search_all_decompose_dc=True`` (it solves
every decomposition depth, then the best again) and offers no setting for it. On a 144 x 32
K-hot kernel that took 51.5 s of CPU against 11.8 s for one solve at da4ml's default depth, with
the same adder cost (52311) -- measured on this project's 2-core machine. So fpq generates each
kernel itself, with the same da4ml calls as hls4ml's pass but the solver options of
``to_hls(..., da_options=...)`` (default ``DEFAULT_OPTIONS``), and hands the code to hls4ml
in the layer's ``da_codegen`` attribute, which hls4ml's pass then leaves alone; hls4ml's DA
templates and writer do the rest. da4ml's solver is numba code compiled on first use and
cached on disk; the first DA project in a fresh environment pays that compilation (about
140 s measured). ``warm_up()`` compiles it ahead of time.
"""
from __future__ import annotations

import numpy as np

from .builder import HLSPlan, HLSUnsupportedError

STRATEGY = "distributed_arithmetic"
NAMES = ("distributed_arithmetic", "da")   # the spellings hls4ml accepts
WEIGHTED = ("Dense", "Conv1D", "Conv2D")     # the layer classes hls4ml's DA pass implements
CONV = ("Conv1D", "Conv2D")
# hls4ml's hard depth constraint (DA_HARD_DC, default 2), one decomposition depth (da4ml's default);
# the cost model prices DA layers solved with the same options and the same call (cost_model.da.solve)
from ..cost_model.da import DEFAULT_OPTIONS, solve as _solve  # noqa: E402


def is_da(strategy) -> bool:
    return str(strategy).lower() in NAMES


def _da4ml_available() -> bool:
    try:
        import da4ml.trace  # noqa: F401
    except ImportError:
        return False
    return True


def check(plan: HLSPlan, *, io_type: str, reuse_factor: int) -> None:
    """Raise HLSUnsupportedError (before any file is written) when the DA strategy cannot build
    ``plan`` exactly; the message names what blocks it and what is allowed."""
    if not _da4ml_available():
        raise HLSUnsupportedError("strategy distributed_arithmetic needs da4ml (pip install 'hls4ml[da]')")
    if reuse_factor != 1:
        raise HLSUnsupportedError(f"strategy distributed_arithmetic builds fully unrolled adder graphs: "
                                  f"reuse_factor must be 1, got {reuse_factor}")
    weighted = [L for L in plan.layers if L["class_name"] in WEIGHTED]
    if not weighted:
        raise HLSUnsupportedError("strategy distributed_arithmetic: the network has no Dense / Conv layer")
    for L in weighted:
        acc = plan.precisions.get(L["name"], {}).get("accum")
        if getattr(acc, "overflow", None) == "WRAP":
            raise HLSUnsupportedError(
                f"strategy distributed_arithmetic: layer {L['name']!r} has a narrow wrapping accumulator "
                f"({acc}, from accumulator_bits); da4ml sizes its own exact adders and would not wrap. Use the "
                "Latency or Resource strategy, or leave accumulator_bits unset")
        if L["class_name"] in CONV and io_type != "io_parallel":
            raise HLSUnsupportedError(
                f"strategy distributed_arithmetic: conv layer {L['name']!r} with io_type {io_type!r}; hls4ml's "
                "DA convolution exists for io_parallel only (Dense layers also work with io_stream)")
        for key in ("weight_data", "bias_data"):
            v = np.asarray(L[key], dtype=np.float64)
            if not np.array_equal(v.astype(np.float32).astype(np.float64), v):
                raise HLSUnsupportedError(
                    f"strategy distributed_arithmetic: {key[:-5]} of {L['name']!r} is not exact in float32, "
                    "and da4ml solves on a float32 copy of the kernel")


def layer_strategy(class_name: str) -> str:
    """The hls4ml strategy of one layer of a DA project: DA for Dense / Conv, Latency otherwise."""
    return STRATEGY if class_name in WEIGHTED else "Latency"


def generate(plan: HLSPlan, *, io_type: str, options: dict | None = None) -> dict:
    """Solve every Dense / Conv kernel of ``plan`` with da4ml and put the HLS code into the layer
    dicts (``da_codegen``), as hls4ml's DistributedArithmeticCodegen would but with ``options``.
    Returns {layer name: da4ml adder cost}.

    The code's function is named after the hls4ml layer index, which ``ModelGraph.from_layer_list``
    assigns in list order from 1; ``check_indices`` verifies that after the model is built.
    The kernel input type is uniform (every input of a layer has the planned input precision),
    so im2col / padding (which only lower some inputs' ranges) leave it unchanged."""
    from da4ml.codegen.hls import hls_logic_and_bridge_gen
    from hls4ml.model.types import Source

    opts = dict(DEFAULT_OPTIONS if options is None else options)
    costs = {}
    src_type = {}
    for index, L in enumerate(plan.layers, start=1):
        src_type[L["name"]] = plan.precisions[L["name"]]["result"]
        if L["class_name"] not in WEIGHTED:
            continue
        kernel = np.asarray(L["weight_data"], dtype=np.float64)
        kernel = kernel.reshape(-1, kernel.shape[-1])
        n_in, n_out = kernel.shape
        sol = _solve(src_type[L["inputs"][0]], kernel, L["bias_data"], opts)
        code, _ = hls_logic_and_bridge_gen(sol, f"dense_da_{index}", "vitis", pragmas=["#pragma HLS INLINE"],
                                           print_latency=True)
        if io_type != "io_parallel":
            from hls4ml.backends.vivado.passes.distributed_arithmetic import add_kernel_wrapper

            code += "\n\n" + add_kernel_wrapper(index, n_in, n_out)
        L["da_codegen"] = Source(code)
        L["da_kernel_cost"] = float(sol.cost)
        L["fpq_da_index"] = index
        costs[L["name"]] = float(sol.cost)
    return costs


def check_indices(hls_model) -> None:
    """The kernels were named after the index each layer was expected to get: verify it."""
    for layer in hls_model.get_layers():
        want = layer.get_attr("fpq_da_index", None)
        if want is not None and layer.index != want:
            raise AssertionError(f"layer {layer.name!r}: hls4ml index {layer.index}, DA kernel generated for {want}")


def kernel_costs(hls_model) -> dict:
    """{layer name: da4ml's adder cost estimate} of the DA layers of a built hls4ml model."""
    return {layer.name: float(layer.get_attr("da_kernel_cost")) for layer in hls_model.get_layers()
            if layer.get_attr("da_kernel_cost", None) is not None}


def warm_up() -> float:
    """Compile (or load from numba's cache) da4ml's solver on a tiny kernel; returns seconds."""
    import time

    from da4ml.trace import FixedVariableArray, HWConfig, comb_trace

    t0 = time.perf_counter()
    k = np.ones(2, dtype=np.int8)
    inp = FixedVariableArray.from_kif(k, k * 3, k * 2, HWConfig(1, -1, -1),
                                      solver_options={"hard_dc": 2, "search_all_decompose_dc": True})
    comb_trace(inp, inp @ np.array([[1.5, -0.25], [0.75, 2.0]]))
    return time.perf_counter() - t0
