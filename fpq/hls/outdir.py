"""The project folder of ``fpq.to_hls``: where it may be, what fpq may replace there, and the
edits that make a project independent of its path (the trust rules of ``project.py``'s docstring)."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path, PurePosixPath

from .csim import PROJECT_NAME

STAMP = "fpq_project.json"
# Characters an output path may hold: none can end a quoted shell word, a Tcl word or a C++
# string literal (the vendor flow passes the folder to all three). Letters and digits may be
# any script's (str.isalnum).
PATH_PUNCTUATION = "/._-+@,=~:"


def check_outdir_path(outdir) -> Path:
    """The absolute output folder, refusing a path character that could end a quoted shell, Tcl or
    C++ string (the vendor flow and hls4ml's scripts hand the folder to all three)."""
    given = os.fspath(outdir)
    if not isinstance(given, str):
        raise ValueError(f"outdir must be a str or os.PathLike of a str, got {type(outdir).__name__}")
    resolved = Path(given).resolve()
    for text, what in ((given, "outdir"), (str(resolved), f"outdir (resolved to {str(resolved)!r})")):
        for c in text:
            if not (c.isalnum() or c in PATH_PUNCTUATION):
                raise ValueError(
                    f"{what} {text!r} holds the character {c!r}, which fpq refuses in an HLS project path (it could "
                    "break out of the shell, Tcl or C++ strings the path reaches; a space also breaks the vendor "
                    f"tools); allowed: letters, digits and {' '.join(PATH_PUNCTUATION)}")
    return resolved


def _manifest(outdir: Path) -> tuple[set, set]:
    """(files, dirs) an earlier to_hls wrote in ``outdir``, from its stamp: relative POSIX paths,
    each checked to stay inside ``outdir``. No stamp, or a stamp without a manifest: nothing."""
    stamp = outdir / STAMP
    if not stamp.is_file():
        return set(), set()
    try:
        info = json.loads(stamp.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return set(), set()  # not fpq's stamp: nothing here is fpq's, fpq_project.json included
    if not isinstance(info, dict) or not isinstance(info.get("files"), list):
        return set(), set()
    base = outdir.resolve()
    out = []
    for key in ("files", "dirs"):
        entries = info.get(key, [])
        if not isinstance(entries, list):
            raise ValueError(f"{stamp}: its manifest {key!r} is not a list; refusing to delete anything")
        good = set()
        for rel in entries:
            pure = PurePosixPath(rel) if isinstance(rel, str) else None
            if (pure is None or not rel or pure.is_absolute() or any(p in ("..", ".") for p in pure.parts)
                    or "\\" in rel or "\0" in rel or str(pure) != rel
                    or not (base / rel).parent.resolve().is_relative_to(base)):
                raise ValueError(f"{stamp}: manifest entry {rel!r} is not a plain path inside {outdir}; refusing to "
                                 "delete anything (remove the folder by hand if it is yours)")
            good.add(rel)
        out.append(good)
    files, dirs = out
    return files | {STAMP}, dirs


def _check_target(outdir: Path, overwrite: bool) -> None:
    """Before any work: ``outdir`` is absent, empty, or overwrite=True was given."""
    if not isinstance(overwrite, bool):
        raise ValueError(f"overwrite must be True or False, got {overwrite!r}")
    if outdir.is_symlink() or (outdir.exists() and not outdir.is_dir()):
        raise FileExistsError(f"{outdir} exists and is not a folder; choose another outdir")
    if outdir.is_dir() and any(outdir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{outdir} is not empty; pass overwrite=True to replace the files of the fpq project there (only the "
                f"files its {STAMP} lists are removed; vendor reports and your own files stay), or choose a new folder")
        _manifest(outdir)  # a forged manifest is refused now, before any work


def _tree(root: Path) -> tuple[list, list]:
    """(files, dirs) under ``root``, relative POSIX paths, sorted."""
    files, dirs = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        dirs += [(rel / d).as_posix() for d in dirnames]
        files += [(rel / f).as_posix() for f in filenames]
    return sorted(files), sorted(dirs)


def _conflicts(outdir: Path, files: list, ours: set) -> list:
    """Paths in ``outdir`` that the new project would replace but no fpq manifest lists."""
    bad = []
    for rel in files + [STAMP]:
        target = outdir / rel
        for parent in reversed(PurePosixPath(rel).parents[:-1]):  # a file where fpq needs a folder
            p = outdir / parent
            if p.is_symlink() or (p.exists() and not p.is_dir()):
                bad.append(parent.as_posix())
        if (target.exists() or target.is_symlink()) and (rel not in ours or target.is_dir()):
            bad.append(rel)
    return sorted(set(bad))


def _install(tmp: Path, outdir: Path, files: list, dirs: list, old_files: set, old_dirs: set) -> list:
    """Move the built project from ``tmp`` into ``outdir``: the files of the earlier manifest go
    first (the stamp before all), nothing else is touched. Returns the folders fpq created."""
    if not outdir.exists():
        os.replace(tmp, outdir)  # a new folder: fpq wrote all of it
        return dirs
    (outdir / STAMP).unlink(missing_ok=True)  # an interrupted install never looks complete
    for rel in sorted(old_files):
        p = outdir / rel
        if p.is_symlink() or p.is_file():
            p.unlink()
    for rel in sorted(old_dirs, key=lambda d: -d.count("/")):  # deepest first; only emptied ones
        p = outdir / rel
        if p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
            p.rmdir()
    created = [d for d in dirs if not (outdir / d).exists()] + [d for d in dirs if d in old_dirs]
    for d in dirs:
        (outdir / d).mkdir(exist_ok=True)
    for rel in files:
        os.replace(tmp / rel, outdir / rel)
    shutil.rmtree(tmp)
    return sorted(set(created))


def _fresh_failed(outdir: Path) -> Path:
    """``<outdir>.failed``, or ``.failed-2``, ``-3``... : a name nothing holds yet."""
    cand, n = outdir.with_name(outdir.name + ".failed"), 1
    while cand.exists() or cand.is_symlink():
        n += 1
        cand = outdir.with_name(f"{outdir.name}.failed-{n}")
    return cand


def _strip_build_paths(root: Path) -> None:
    """hls4ml writes the project folder into two files: build_lib.sh passes it to g++ as
    WEIGHTS_DIR (unused with the weights compiled in, and a path with a quote would be C++ code),
    hls4ml_config.yml records it as OutputDir. Neither is kept."""
    lib = root / "build_lib.sh"
    lines = lib.read_text().splitlines(keepends=True)
    kept = [ln.replace(' -D WEIGHTS_DIR="${WEIGHTS_DIR}"', "") for ln in lines if not ln.startswith("WEIGHTS_DIR=")]
    text = "".join(kept)
    if "WEIGHTS_DIR" in text:
        raise RuntimeError(f"hls4ml's build_lib.sh changed: it still passes WEIGHTS_DIR ({lib}); fpq cannot make "
                           "the build independent of its path")
    lib.write_text(text)
    cfg = root / "hls4ml_config.yml"
    lines = cfg.read_text().splitlines(keepends=True)
    hits = [i for i, ln in enumerate(lines) if ln.startswith("OutputDir:")]
    if len(hits) != 1:
        raise RuntimeError(f"hls4ml_config.yml has {len(hits)} OutputDir lines, expected one")
    lines[hits[0]] = "OutputDir: .\n"
    cfg.write_text("".join(lines))


_LOAD_TXT = re.compile(r'nnet::load_weights_from_txt<([^;<>]+), (\d+)>\((\w+), "(\w+)\.txt"\);')


def _embed_weights(root: Path) -> None:
    """Replace hls4ml's C-sim weight loading (text files read at run time from the absolute build
    folder, exit(1) when one is missing) by a copy from a constant double table that each weight
    header gets next to its C-sim declaration. The values are hls4ml's own decimal strings, the
    ones its text files and its synthesis initializers hold, and they reach ap_fixed through a
    double as the text loader's ``stream >> double`` did. A constant POD table compiles as fast as
    the text loader (an initialized ap_fixed array would run every conversion inline)."""
    top = root / "firmware" / f"{PROJECT_NAME}.cpp"
    text = top.read_text()
    if "load_compressed_weights_from_txt" in text or "load_exponent_weights_from_txt" in text:
        raise RuntimeError(f"{top}: hls4ml wrote compressed / exponent weights, which fpq cannot embed")

    def embed(m):
        _, n, var, fname = m.groups()
        header = root / "firmware" / "weights" / f"{var}.h"
        pat = re.compile(r"#ifndef __SYNTHESIS__\n(?P<decl>[^\n]*\b" + var + r"\[" + n +
                         r"\]);\n#else\n(?P=decl) = \{(?P<vals>[^}]*)\};\n")
        src = header.read_text()
        found = list(pat.finditer(src))
        if var != fname or len(found) != 1:
            raise RuntimeError(f"{header}: not the weight header fpq expects from hls4ml (one C-sim declaration of "
                               f"{var}[{n}] and its initialized synthesis twin)")
        h = found[0]
        table = f"static const double {var}_fpq_init[{n}] = {{{h['vals']}}};\n"
        header.write_text(src[:h.start()] + f"#ifndef __SYNTHESIS__\n{h['decl']};\n{table}#else\n"
                          f"{h['decl']} = {{{h['vals']}}};\n" + src[h.end():])
        (root / "firmware" / "weights" / f"{var}.txt").unlink()
        return f"for (unsigned fpq_i = 0; fpq_i < {n}; fpq_i++) {var}[fpq_i] = {var}_fpq_init[fpq_i];"

    text = _LOAD_TXT.sub(embed, text)
    if "_from_txt" in text or list((root / "firmware" / "weights").glob("*.txt")):
        raise RuntimeError(f"{top}: a weight load from a text file is left that fpq could not embed")
    top.write_text(text)


def _check_no_paths(root: Path, files: list, paths: list) -> None:
    """No file of the project (the compiled library included) names the folders it was built in."""
    needles = [p.encode() for p in paths]
    for rel in files:
        data = (root / rel).read_bytes()
        for n in needles:
            if n in data:
                raise RuntimeError(f"the generated file {rel} holds the build path {n.decode()!r}; fpq refuses to "
                                   "write a project that depends on where it was built")
