"""``fpq formats``: the named formats and their aliases (numpy only, no torch)."""
from __future__ import annotations

from ..formats import finfo, parse_format
from ..formats.parse import ALIASES

# named formats listed by `fpq formats` besides the alias targets
NAMED = ("e2m1", "e2m3", "e3m2", "e4m3", "e4m3_none", "e5m2", "e5m10", "e8m7", "int2", "int4",
         "int4_narrow", "int8", "int8_narrow", "uint4", "uint8", "fixed<8,3>", "ufixed<6,2>",
         "ap_fixed<16,6>", "binary")


def _num(v: float) -> str:
    return f"{v:.7g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def formats_table() -> str:
    """Named formats and their aliases: bits, max, smallest normal and subnormal, inf / NaN."""
    names: dict[str, list[str]] = {}
    for text in (*NAMED, *ALIASES.values()):
        names.setdefault(str(parse_format(text)), [])
    for alias in ALIASES:
        names[str(parse_format(alias))].append(alias)
    for text in NAMED:  # spellings that differ from the canonical string
        canon = str(parse_format(text))
        if text != canon and text not in names[canon]:
            names[canon].append(text)
    rows = []
    for canon, aliases in names.items():
        fmt, info = parse_format(canon), finfo(canon)
        rows.append([canon, ", ".join(aliases), fmt.kind, str(info.bits), _num(info.max), _num(info.min),
                     _num(info.smallest_normal), _num(info.smallest_subnormal),
                     "yes" if info.has_inf else "-", "yes" if info.has_nan else "-"])
    return _table(["FORMAT", "ALIASES", "KIND", "BITS", "MAX", "MIN", "MIN NORMAL", "MIN SUBNORMAL",
                   "INF", "NAN"], rows)


def cli_register(subparsers) -> None:
    p = subparsers.add_parser("formats", help="list the named formats and aliases")
    p.set_defaults(func=run)


def run(args) -> int:
    print(formats_table())
    return 0
