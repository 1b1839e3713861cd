"""The compiled C simulation of an fpq HLS project, called in process through ctypes: one
row at a time into the library's ``fpq_predict`` / trace entry points, on a thread whose stack
the project needs (``csim_stack_bytes``). Split from ``project`` (which writes and compiles).
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

PROJECT_NAME = "fpq_model"   # hls4ml project name: the library is fpq_model-<stamp>.so

# The C-sim keeps every layer's arrays (and hls4ml's per-layer temporaries, e.g. a Dense layer's
# n_in x n_out products) on the stack of the calling thread: a ResNet-18-size project needs far
# more than the main thread's 8 MB and would kill Python with a segfault. fpq calls the library
# from a thread of its own whose stack is sized from the project (``csim_stack_bytes``): bytes per
# value of an ap_fixed object in C-sim (up to 128 bits in two 8-byte words, with room for the
# copies hls4ml makes), over every layer output and twice every weight, plus a fixed margin. The
# stack is reserved address space, touched only as deep as the C-sim goes.
STACK_BYTES_PER_VALUE = 64
STACK_MARGIN = 64 << 20
STACK_DEFAULT = 1 << 30      # a project stamped before the size was recorded


def csim_stack_bytes(hls_model) -> int:
    """Stack for the C-sim of ``hls_model`` (see STACK_BYTES_PER_VALUE), rounded up to 1 MiB."""
    values = 0
    for layer in hls_model.get_layers():
        values += int(np.prod(layer.get_output_variable().shape))
        for w in layer.weights.values():
            values += 2 * int(np.size(w.data))
    need = STACK_MARGIN + STACK_BYTES_PER_VALUE * values
    return -(-need // (1 << 20)) << 20


class _CSim:
    """The compiled C-sim library of a project, called through ctypes (the double entry point:
    inputs reach ap_fixed's constructor with every bit they have), from a thread with a stack of
    ``stack_bytes``."""

    def __init__(self, so_path: Path, n_in: int, n_out: int, traced: dict, stack_bytes: int = STACK_DEFAULT):
        self.stack_bytes = int(stack_bytes)
        if not so_path.is_file():
            raise FileNotFoundError(f"the project's compiled C-sim library {so_path} is missing; rerun fpq.to_hls "
                                    "(with overwrite=True) to rebuild the project")
        try:
            self.lib = ctypes.CDLL(str(so_path))
        except OSError as e:
            raise RuntimeError(f"the project's C-sim library {so_path} cannot be loaded ({e}); rerun fpq.to_hls "
                               "(with overwrite=True) to rebuild it on this machine") from None
        self.n_in, self.n_out, self.traced = n_in, n_out, dict(traced)
        self.top = getattr(self.lib, f"{PROJECT_NAME}_double")
        self.top.argtypes = [ctypes.c_void_p, ctypes.c_void_p]  # raw row pointers: no per-call checks
        self.top.restype = None

    def _rows(self, flat: np.ndarray, out: np.ndarray):
        assert flat.dtype == out.dtype == np.float64 and flat.flags.c_contiguous and out.flags.c_contiguous
        assert flat.shape[1] == self.n_in and out.shape[1] == self.n_out
        a, b = flat.ctypes.data, out.ctypes.data
        sa, sb = flat.strides[0], out.strides[0]
        return ((a + i * sa, b + i * sb) for i in range(flat.shape[0]))

    def _on_big_stack(self, fn):
        """fn() on a new thread whose stack is ``stack_bytes`` (the C-sim's arrays live there)."""
        import threading

        box = {}

        def target():
            try:
                box["value"] = fn()
            except BaseException as e:  # handed to the caller's thread
                box["error"] = e

        old = threading.stack_size()
        try:
            threading.stack_size(self.stack_bytes)
            thread = threading.Thread(target=target, name="fpq-csim", daemon=True)
            thread.start()
        except (ValueError, RuntimeError, MemoryError) as e:
            raise RuntimeError(
                f"the C-sim of this project needs a {self.stack_bytes >> 20} MiB stack, and no thread with such a "
                f"stack could be started ({e}); raise the address-space limit (ulimit -v) or simulate a smaller "
                "model") from None
        finally:
            threading.stack_size(old)
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def run(self, flat: np.ndarray) -> np.ndarray:
        out = np.zeros((flat.shape[0], self.n_out), dtype=np.float64)
        top = self.top

        def rows():
            for pa, pb in self._rows(flat, out):  # the top function takes one sample
                top(pa, pb)
        self._on_big_stack(rows)
        return out

    def trace(self, flat: np.ndarray) -> dict:
        return self._on_big_stack(lambda: self._trace(flat))

    def _trace(self, flat: np.ndarray) -> dict:
        class _Slot(ctypes.Structure):
            _fields_ = [("name", ctypes.c_char_p), ("data", ctypes.c_void_p)]

        lib = self.lib
        lib.allocate_trace_storage.argtypes = [ctypes.c_size_t]
        lib.collect_trace_output.argtypes = [ctypes.POINTER(_Slot)]
        slots = (_Slot * len(self.traced))()
        per_layer = {name: np.zeros((flat.shape[0], size)) for name, size in self.traced.items()}
        out = np.zeros((flat.shape[0], self.n_out), dtype=np.float64)
        lib.allocate_trace_storage(ctypes.sizeof(ctypes.c_double))
        try:
            for i, (pa, pb) in enumerate(self._rows(flat, out)):
                self.top(pa, pb)
                lib.collect_trace_output(slots)
                for slot in slots:
                    name = slot.name.decode()
                    ptr = ctypes.cast(slot.data, ctypes.POINTER(ctypes.c_double))
                    per_layer[name][i] = np.ctypeslib.as_array(ptr, shape=(self.traced[name],))
        finally:
            lib.free_trace_storage()
        return per_layer
