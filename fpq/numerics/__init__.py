"""Bit-exact numerics: the numpy reference and its torch twin (imported lazily)."""
from .reference import quantize, quantize_unscaled, round_fixed, overflow_fixed
from .scaled import apply_scaled

__all__ = ["quantize", "quantize_unscaled", "round_fixed", "overflow_fixed", "apply_scaled", "quantize_torch"]


def __getattr__(name):
    if name in ("quantize_torch", "ste_quantize_unscaled", "quantize_unscaled_torch", "ste_apply_scaled",
                "apply_scaled_torch"):
        from . import torch_ops
        return getattr(torch_ops, name)
    raise AttributeError(name)
