"""Format grids for sweeps: every integer / fixed-point width and every minifloat ExMy split.

A sweep point is a (weights, activations, first_last, method) tuple of canonical format
strings; ``grid`` lists the formats of one axis, ``points`` crosses the axes.
"""
from __future__ import annotations

import itertools

from ..formats import parse_format
from ..formats.parse import ACCEPTED_FORMS

KINDS = ("int", "minifloat", "fixed")


def minifloat_splits(bits: int, min_exp: int = 1, min_man: int = 1) -> list[str]:
    """Every signed ExMy with 1 + E + M == bits (E >= min_exp, M >= min_man), fewest exponent bits first.

    Args:
        bits: the width, sign included.
        min_exp: the fewest exponent bits.
        min_man: the fewest mantissa bits.

    Returns:
        list[str]: format strings.

    Example:
        >>> from fpq.report import minifloat_splits
        >>> minifloat_splits(5)
        ['e1m3', 'e2m2', 'e3m1']
    """
    return [f"e{e}m{bits - 1 - e}" for e in range(min_exp, bits) if bits - 1 - e >= min_man]


def grid(bits=range(3, 9), kinds=("int", "minifloat"), *, fixed_int_bits: int = 3, min_exp: int = 1,
         min_man: int = 1) -> list[str]:
    """Canonical format strings of one grid axis.

    ``bits``: widths (sign included). ``kinds``: any of "int" (intN, scaled), "minifloat" (every
    ExMy split of each width, E >= min_exp, M >= min_man; E = 0 would be an integer), "fixed"
    (fixed<N, fixed_int_bits>: carries its own scaling, no calibrated scale).

    Args:
        bits: the widths.
        kinds: the format kinds.
        fixed_int_bits: integer bits of the "fixed" kind.
        min_exp: the fewest exponent bits of a minifloat.
        min_man: the fewest mantissa bits of a minifloat.

    Returns:
        list[str]: canonical format strings.

    Raises:
        ValueError: an unknown kind, or a width outside 2..16.

    Example:
        >>> from fpq.report import grid
        >>> grid(bits=[4])
        ['int4', 'e1m2', 'e2m1']
    """
    bits = list(bits)
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"grid: unknown kind(s) {bad}; allowed: {', '.join(KINDS)}")
    bad = [b for b in bits if not isinstance(b, int) or b < 2 or b > 16]
    if bad:
        raise ValueError(f"grid: bit widths must be integers in 2..16, got {bad}")
    out = []
    for kind in kinds:
        for b in bits:
            if kind == "int":
                out.append(f"int{b}")
            elif kind == "fixed":
                out.append(f"fixed<{b},{fixed_int_bits}>")
            else:
                out += minifloat_splits(b, min_exp, min_man)
    return canonical_list(out, "grid")


def canonical_list(entries, what: str) -> list[str]:
    """Canonical strings of a list of formats; every invalid entry is named in one ValueError."""
    if entries is None:
        return []
    if isinstance(entries, str) or not hasattr(entries, "__iter__"):
        entries = [entries]
    out, bad = [], []
    for i, e in enumerate(entries):
        try:
            s = str(parse_format(e))
        except (ValueError, TypeError) as err:
            bad.append(f"[{i}] {e!r}: {str(err).split('. Accepted forms')[0]}")
            continue
        if s not in out:
            out.append(s)
    if bad:
        raise ValueError(f"fpq.sweep: invalid format entr{'y' if len(bad) == 1 else 'ies'} in {what}: "
                         f"{'; '.join(bad)}. Accepted forms: {ACCEPTED_FORMS}")
    return out


def describe(fmt: str) -> tuple[str, int]:
    """(kind, bits) of a canonical format string."""
    from ..formats import finfo
    f = parse_format(fmt)
    return f.kind, finfo(f).bits


def points(weights, activations, methods, first_last=(None,)) -> list[dict]:
    """The cross product of the axes, in a fixed order."""
    return [{"weights": w, "activations": a, "first_last": fl, "method": m}
            for w, a, fl, m in itertools.product(weights, activations, first_last, methods)]
