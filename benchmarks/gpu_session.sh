#!/usr/bin/env bash
# The GPU checks of issues #4, #5 and #17 as one prepared run, for a session lent a device machine
# (an NVIDIA H100/H200 with its own Python 3.12 + PyTorch; nothing can be downloaded there).
#
#   here:             benchmarks/gpu_session.sh prepare      # wheels fpq needs that the image lacks -> .whl/
#   on the device:    bash benchmarks/gpu_session.sh run     # (device tool: carry [".whl"])
#
# `run` installs the wheels into /tmp/site, checks the imports (exit 1 at once if one fails), then:
# the CUDA tests (torch twin == reference, emulator's torch backend, profile_torch on cuda), the
# emulator throughput at batch 2^20 (target >= 500 M MLP inferences/s), the cost report's GPU
# timings, every format against fp32 (bench_emulate --matrix) and the QAT step (bench_train_step). Logs go to $OUT
# (or ./gpu_out), one file per step; a failing step does not stop the later ones.
set -u
cd "$(dirname "$0")/.."
# what the GPU image lacks; each is pinned to the version this checkout's .venv resolved (a newer
# `dependencies`, 7.7.1, breaks Brevitas' import), read from the venv, never a hand list of versions
PACKAGES=(brevitas dependencies unfoldNd qonnx onnxoptimizer onnx bitstring tibs clize sigtools toposort od
          docutils importlib-metadata)

case "${1:-}" in
prepare)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    mkdir -p .whl
    VENV_PY="${VENV_PY:-.venv/bin/python}"
    [ -x "$VENV_PY" ] || { echo "prepare: no $VENV_PY (run make install first)" >&2; exit 1; }
    WHEELS=()
    for p in "${PACKAGES[@]}"; do
        v=$("$VENV_PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p") ||
            { echo "prepare: $p is not installed in $VENV_PY" >&2; exit 1; }
        WHEELS+=("$p==$v")
    done
    echo "pinned from the venv: ${WHEELS[*]}"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    du -sh .whl
    ;;
run)
    out="${OUT:-gpu_out}"
    mkdir -p "$out"
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || exit 1
        export PYTHONPATH="/tmp/site:$PWD"
    else
        export PYTHONPATH="$PWD"
    fi
    export PYTHONUNBUFFERED=1
    # fail fast: a missing or incompatible wheel shows here, not as ten failed steps
    python3 -c "import torch, brevitas, qonnx, onnx, fpq, fpq.export, fpq.emulate; print('imports ok')" \
        2>&1 | tee "$out/imports.txt" | tail -3
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "run: an import failed (see $out/imports.txt)" >&2; exit 1; }
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
    python3 -c "import torch, numpy, onnx; print('torch', torch.__version__, 'numpy', numpy.__version__,
'onnx', onnx.__version__)" | tee -a "$out/gpu.txt"
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_torch_twin.py tests/test_profile.py \
        tests/test_emulate.py -k "cuda or torch_backend" 2>&1 | tee "$out/tests.txt" | tail -5
    timeout 120 python3 benchmarks/bench_emulate.py --device cuda --batch 1048576 2>&1 | tee "$out/bench_emulate.txt"
    timeout 240 python3 examples/cost_digits.py --device cuda --threads 8 2>&1 | tee "$out/cost_digits.txt" | tail -40
    timeout 150 python3 benchmarks/bench_emulate.py --device cuda --matrix --batch 1048576 2>&1 |
        tee "$out/bench_matrix.txt" | tail -45
    timeout 90 python3 benchmarks/bench_train_step.py --device cuda 2>&1 | tee "$out/train_step.txt" | tail -12
    ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
