"""The inputs rule of every fpq path (emulate, verify, HLS predict): what a user's ``x`` may be.

The value the user gave is what is quantized: float64 stays float64, integers become float64,
other floats float32; NaN / +-inf and complex values are refused; an input quantizer with a
float (non-power-of-two) scale divides in float32, so float64 values that are not float32
numbers are refused there. ``check_input`` (numpy) and ``check_input_tensor`` (torch, kept on its
device) apply it.
"""
from __future__ import annotations

import numpy as np


def _not_float32(who: str, count: int, first: str) -> ValueError:
    return ValueError(f"{who}: {count} float64 value(s) are not float32 numbers (the first at index {first}); "
                      "this model's input quantizer has a float (non-power-of-two) scale and divides in float32, "
                      "as its exported file and HLS port do: pass float32 inputs (x.astype(np.float32))")


def _is_tensor(x) -> bool:
    try:
        import torch
        return isinstance(x, torch.Tensor)
    except ImportError:  # pragma: no cover
        return False


NONFINITE_RULE = ("fixed-point hardware has neither NaN nor infinity, so every fpq path (emulate, verify, "
                  "HLS predict) refuses them: replace or drop those values first")


def refuse_nonfinite(x: np.ndarray, who: str = "input") -> None:
    """One ValueError naming how many values of ``x`` are NaN / +-inf and the first one's index.

    Args:
        x: the array to check.
        who: the name used in the message.

    Raises:
        ValueError: ``x`` holds NaN or +-inf.

    Example:
        >>> import numpy as np
        >>> from fpq.emulate.inputs import refuse_nonfinite
        >>> refuse_nonfinite(np.array([1.0, np.nan]))
        Traceback (most recent call last):
        ...
        ValueError: input: 1 input value(s) are NaN or infinite (the first at index (1,): nan); ...
    """
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.sum(x, dtype=np.float64)   # NaN / inf propagate; no extra array the size of x
    if np.isfinite(total):
        return
    flat = x.reshape(-1)
    count, first, step = 0, None, 1 << 20
    for i in range(0, flat.size, step):   # a finite float64 sum may still overflow: scan exactly
        bad = ~np.isfinite(flat[i:i + step])
        k = int(bad.sum())
        if k and first is None:
            first = i + int(np.argmax(bad))
        count += k
    if count:
        idx = tuple(int(j) for j in np.unravel_index(first, x.shape))
        raise ValueError(f"{who}: {count} input value(s) are NaN or infinite (the first at index {idx}: "
                         f"{flat[first]}); {NONFINITE_RULE}")


def check_input(x, float32_only: bool = False, who: str = "input") -> np.ndarray:
    """Check an input by the inputs rule of every fpq path and return it as a numpy array.

    The array holds the value the user gave (see the module docstring) -- float64 kept, integers as float64, other floats as float32 -- refusing NaN / inf,
    complex values, and (``float32_only``: a float-scaled input quantizer, which divides in float32)
    float64 values that are not float32 numbers.

    Args:
        x: the input (array-like).
        float32_only: refuse float64 values that are not float32 numbers.
        who: the name used in error messages.

    Returns:
        np.ndarray: float64 or float32 values.

    Raises:
        ValueError: NaN / inf, complex values, or (float32_only) a double float32 cannot hold.

    Example:
        >>> import numpy as np
        >>> from fpq.emulate.inputs import check_input
        >>> check_input([1, 2]).dtype, check_input(np.ones(2, np.float32)).dtype
        (dtype('float64'), dtype('float32'))
    """
    if _is_tensor(x):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise ValueError(f"{who}: inputs must be real numbers (float or integer arrays), got dtype {x.dtype}")
    x = x.astype(np.float64 if x.dtype == np.float64 or x.dtype.kind in "iub" else np.float32, copy=False)
    refuse_nonfinite(x, who)
    if float32_only and x.dtype == np.float64:
        x32 = x.astype(np.float32)
        bad = x32 != x
        if bad.any():
            first = tuple(int(j) for j in np.argwhere(bad)[0])
            raise _not_float32(who, int(bad.sum()), f"{first}: {x[first]!r}")
        x = x32
    return x


def check_input_tensor(x, float32_only: bool = False, who: str = "input"):
    """``check_input`` for a torch tensor kept on its device (the torch backend)."""
    import torch
    if x.is_complex():
        raise ValueError(f"{who}: inputs must be real numbers (float or integer tensors), got dtype {x.dtype}")
    x = x.detach()
    x = x.to(torch.float64 if x.dtype == torch.float64 or not x.is_floating_point() else torch.float32)
    fin = torch.isfinite(x)
    if not bool(fin.all()):
        bad = ~fin
        first = tuple(int(j) for j in torch.nonzero(bad)[0])
        raise ValueError(f"{who}: {int(bad.sum())} input value(s) are NaN or infinite (the first at index {first}: "
                         f"{float(x[first])}); {NONFINITE_RULE}")
    if float32_only and x.dtype == torch.float64:
        x32 = x.to(torch.float32)
        bad = x32.to(torch.float64) != x
        if bool(bad.any()):
            first = tuple(int(j) for j in torch.nonzero(bad)[0])
            raise _not_float32(who, int(bad.sum()), str(first))
        x = x32
    return x
