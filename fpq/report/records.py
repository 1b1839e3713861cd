"""What ``fpq.sweep`` writes and reads back: the record of one point (its columns, the checks a
record read from a file must pass), the resumable cache (``cache.jsonl``, one JSON line per
finished point), the result tables (results.csv / results.json) and loading them for
``fpq.report``. A record that fpq.sweep could not have written is refused naming its field.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from .grid import describe


CACHE = "cache.jsonl"
PROGRESS = "progress.json"  # the running sweep's state: done / failed / running, its context and pid


COST_FIELDS = ("lut", "ff", "dsp", "bram18", "latency_cycles", "latency_ns", "ii", "bops", "ebops")


COLUMNS = ("id", "weights", "activations", "first_last", "method", "qat_epochs", "seed", "family",
           "w_kind", "w_bits", "a_kind", "a_bits", "accuracy", *COST_FIELDS, "datapath", "exact",
           "verify_samples", "verify_paths", "mismatch", "profile_device", "float_inf_per_s",
           "fake_quant_inf_per_s", "status", "error", "seconds", "command", "python")


# what the HLS build of a point adds (``fpq.sweep(..., hls=...)``, see builds.py): stored as records
# of their own (``{"key": ..., "hls": {...}}`` lines of the same store), joined to the point's row
# in results.csv / results.json
HLS_COLUMNS = ("hls_exact", "hls_samples", "hls_mismatch", "hls_status", "hls_error", "hls_seconds", "hls_where")
TABLE_COLUMNS = COLUMNS + HLS_COLUMNS


def point_id(cfg: dict) -> str:
    """Short stable id of one configuration (formats, method, QAT epochs, seed).

    Args:
        cfg: the point's configuration.

    Returns:
        str: its id.

    Example:
        >>> from fpq.report import point_id
        >>> point_id({"weights": "int8", "activations": "int8"})
        '84cb9e1ac592'
    """
    keys = ("weights", "activations", "first_last", "method", "qat_epochs", "seed")
    blob = json.dumps({k: cfg.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _family(cfg: dict) -> dict:
    wk, wb = describe(cfg["weights"])
    ak, ab = describe(cfg["activations"])
    return {"w_kind": wk, "w_bits": wb, "a_kind": ak, "a_bits": ab, "family": wk if wk == ak else "mixed"}


STATUSES = ("ok", "partial", "error")


VERIFY_PATHS = ("emulator", "torch", "qonnx", "hls")


_INTS = ("qat_epochs", "seed", "verify_samples")


_NONNEG = (*COST_FIELDS, "float_inf_per_s", "fake_quant_inf_per_s", "seconds")


_TEXT = ("mismatch", "profile_device", "error", "command", "python")


class BadRecord(ValueError):
    """A sweep record read back from a file that fpq.sweep could not have written."""

    def __init__(self, field: str, why: str):
        super().__init__(f"field {field!r}: {why}")
        self.field = field


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def check_record(rec, strict: bool = False) -> None:
    """Raise BadRecord naming the first field of ``rec`` that fpq.sweep could not have written:
    unknown or missing fields, wrong types, negative costs, non-finite numbers, format strings
    that do not parse (or are not canonical), kind/bits/family that do not match the formats, and
    an ``exact`` that is not None or a bool from a verify that ran (samples > 0, paths named,
    status not "error"). ``strict`` (the sweep's own cache): every column present and the id is
    the hash of the record's configuration."""
    from ..formats import parse_format
    from ..nn.calibration_stats import METHODS

    if not isinstance(rec, dict):
        raise BadRecord("record", f"expected a JSON object, got {type(rec).__name__}")
    unknown = sorted(set(rec) - set(TABLE_COLUMNS))
    if unknown:
        raise BadRecord(str(unknown[0]), f"unknown field; allowed: {', '.join(TABLE_COLUMNS)}")
    need = COLUMNS if strict else ("id", "weights", "activations", "method", "status")
    for k in need:
        if k not in rec:
            raise BadRecord(k, "missing")
    get = rec.get
    if not isinstance(get("id"), str) or not (0 < len(rec["id"]) <= 64) or not all(
            c.isascii() and (c.isalnum() or c in "_-.") for c in rec["id"]):
        raise BadRecord("id", f"expected up to 64 letters, digits, '_', '-', '.', got {get('id')!r}")
    for k in ("weights", "activations", "first_last"):
        v = get(k)
        if v is None and k == "first_last":
            continue
        if not isinstance(v, str):
            raise BadRecord(k, f"expected a format string, got {type(v).__name__}")
        try:
            canon = str(parse_format(v))
        except (ValueError, TypeError) as e:
            raise BadRecord(k, f"{v!r} is not a format ({str(e).split('. Accepted forms')[0]})") from None
        if canon != v:
            raise BadRecord(k, f"{v!r} is not canonical (fpq.sweep writes {canon!r})")
    if get("method") not in METHODS:
        raise BadRecord("method", f"{get('method')!r} is not one of {', '.join(METHODS)}")
    if get("status") not in STATUSES:
        raise BadRecord("status", f"{get('status')!r} is not one of {', '.join(STATUSES)}")
    for k in _INTS:
        v = get(k)
        if (v is None and strict) or (v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0)):
            raise BadRecord(k, f"expected an integer >= 0, got {v!r}")
    for k in ("accuracy", *_NONNEG):
        v = get(k)
        if k == "accuracy" and isinstance(v, float) and np.isnan(v):
            continue  # a user metric may give NaN; fpq.sweep records it as it is
        if v is not None and (not _real(v) or (k in _NONNEG and v < 0)):
            raise BadRecord(k, f"expected None or a finite number{' >= 0' if k in _NONNEG else ''}, got {v!r}")
    for k in (*_TEXT, "datapath"):
        if get(k) is not None and not isinstance(rec[k], str):
            raise BadRecord(k, f"expected None or a string, got {type(rec[k]).__name__}")
    fam = _family(rec)  # kinds, bits and family follow from the formats
    for k, v in fam.items():
        if k in rec and rec[k] != v:
            raise BadRecord(k, f"{rec[k]!r} does not match the formats ({v!r})")
    paths = get("verify_paths")
    if paths not in (None, "") and (not isinstance(paths, str)
                                    or any(p not in VERIFY_PATHS for p in paths.split("+"))):
        raise BadRecord("verify_paths", f"{paths!r} is not '+'-joined names of {', '.join(VERIFY_PATHS)}")
    exact = get("exact")
    if exact is not None:
        if not isinstance(exact, bool):
            raise BadRecord("exact", f"expected None, true or false, got {exact!r}")
        if get("status") == "error" or get("verify_samples", 1) == 0 or not paths:
            raise BadRecord("exact", "set although no verify ran (status error, verify_samples 0 or no "
                                     "verify_paths)")
    if get("status") == "error" and get("accuracy") is not None:
        raise BadRecord("accuracy", "set on a point whose build failed")
    check_hls_fields(rec)
    if strict:
        cfg = {k: rec[k] for k in ("weights", "activations", "first_last", "method", "qat_epochs", "seed")}
        if rec["id"] != point_id(cfg):
            raise BadRecord("id", f"{rec['id']!r} is not the id of this configuration ({point_id(cfg)!r})")


HLS_STATUSES = ("ok", "error")


def check_hls_fields(rec: dict, need: bool = False) -> None:
    """The HLS fields of a record (all of them with ``need``, an HLS record of the store): an
    ``hls_exact`` only from a C-sim that ran (status ok, samples > 0)."""
    get = rec.get
    if need:
        for k in ("id", *HLS_COLUMNS):
            if k not in rec:
                raise BadRecord(k, "missing")
    if get("hls_status") is not None and get("hls_status") not in HLS_STATUSES:
        raise BadRecord("hls_status", f"{get('hls_status')!r} is not one of {', '.join(HLS_STATUSES)}")
    v = get("hls_samples")
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
        raise BadRecord("hls_samples", f"expected None or an integer >= 1, got {v!r}")
    v = get("hls_seconds")
    if v is not None and (not _real(v) or v < 0):
        raise BadRecord("hls_seconds", f"expected None or a finite number >= 0, got {v!r}")
    for k in ("hls_mismatch", "hls_error", "hls_where"):
        if get(k) is not None and not isinstance(rec[k], str):
            raise BadRecord(k, f"expected None or a string, got {type(rec[k]).__name__}")
    ex = get("hls_exact")
    if ex is not None and (not isinstance(ex, bool) or get("hls_status") != "ok" or not get("hls_samples")):
        raise BadRecord("hls_exact", f"expected None, or true / false from a C-sim that ran (hls_status ok, "
                                     f"hls_samples >= 1), got {ex!r}")


class _Locked:
    """An fcntl lock on an open store file: exclusive to append, shared to read. Writers append one
    whole line under the lock, so a reader (another driver, a live report) sees each record whole
    or not at all; only a kill during a write leaves a torn last line, which readers skip. (POSIX
    locks hold on local disks and on NFS with lockd; only drivers write, see engines.py.)"""

    def __init__(self, f, exclusive: bool):
        self.f, self.mode = f, exclusive

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # not POSIX: one driver per store
            return self.f
        fcntl.flock(self.f.fileno(), fcntl.LOCK_EX if self.mode else fcntl.LOCK_SH)
        return self.f

    def __exit__(self, *exc):
        try:
            import fcntl
        except ImportError:
            return False
        fcntl.flock(self.f.fileno(), fcntl.LOCK_UN)
        return False


def read_cache(path: str, context: str | None = None, kind: str = "record") -> dict:
    """{cache key: record} (the last line of a key wins; with ``context`` only keys of that sweep
    context). A line that is not a record fpq.sweep wrote (cut short by a kill, or edited) is
    skipped with a warning naming its line and field; its point is recomputed. ``kind``:
    "record" (points) or "hls" (HLS builds); lines of the other kind are passed over."""
    import warnings

    if kind not in ("record", "hls"):
        raise ValueError(f"read_cache: kind must be 'record' or 'hls', got {kind!r}")
    out = {}
    if not os.path.exists(path):
        return out
    with open(path) as f, _Locked(f, exclusive=False):
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict) or set(entry) not in ({"key", "record"}, {"key", "hls"}):
                    raise BadRecord("line", "expected {\"key\": ..., \"record\": {...}} or {\"key\": ..., \"hls\": {...}}")
                if kind not in entry:
                    continue
                key, rec = entry["key"], entry[kind]
                if kind == "hls":
                    if not isinstance(rec, dict):
                        raise BadRecord("hls", f"expected a JSON object, got {type(rec).__name__}")
                    unknown = sorted(set(rec) - {"id", *HLS_COLUMNS})
                    if unknown:
                        raise BadRecord(unknown[0], f"unknown field; allowed: id, {', '.join(HLS_COLUMNS)}")
                    check_hls_fields(rec, need=True)
                else:
                    check_record(rec, strict=True)
                if not isinstance(key, str) or key.split("-", 1)[0] != rec["id"]:
                    raise BadRecord("key", f"{key!r} does not start with the record's id {rec['id']!r}")
            except json.JSONDecodeError:
                warnings.warn(f"fpq.sweep: {path} line {n} is not a complete JSON line (cut short by a kill?): "
                              "skipped, its point is recomputed", stacklevel=2)
                continue
            except BadRecord as e:
                warnings.warn(f"fpq.sweep: {path} line {n} is not a record fpq.sweep wrote ({e}): skipped, "
                              "its point is recomputed", stacklevel=2)
                continue
            if context is None or key.split("-")[1:2] == [context]:
                out[key] = rec
    return out


def _end_partial_line(path: str) -> None:
    """A kill during a write leaves a line without its newline; end it so the next record starts
    on a line of its own (the partial line itself is skipped by ``read_cache``)."""
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, "rb+") as f, _Locked(f, exclusive=True):
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def _append_cache(path: str, key: str, rec: dict, kind: str = "record") -> None:
    line = (json.dumps({"key": key, kind: rec}, default=str) + "\n").encode()
    with open(path, "ab") as f, _Locked(f, exclusive=True):  # one write per line, flushed: a kill loses at most this line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def write_progress(path: str, state: dict) -> None:
    """Replace ``progress.json`` atomically (a temporary file renamed over it): a reader sees the
    old state or the new one, never half of one."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, default=str)
    os.replace(tmp, path)


def read_progress(folder: str) -> dict | None:
    """The state ``fpq.sweep`` last wrote into ``folder`` (None: no sweep ran there). A sweep that
    says "running" but whose driver is gone from this host is reported as "interrupted"."""
    path = os.path.join(folder, PROGRESS)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            st = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(st, dict) or not isinstance(st.get("context"), str):
        return None
    if st.get("state") == "running" and st.get("host") == os.uname().nodename and isinstance(st.get("pid"), int):
        try:
            os.kill(st["pid"], 0)
        except ProcessLookupError:
            st["state"] = "interrupted"
        except PermissionError:
            pass  # alive, another user's
    return st


def write_tables(records: list, meta: dict, out: str) -> tuple[str, str]:
    os.makedirs(out, exist_ok=True)
    jpath, cpath = os.path.join(out, "results.json"), os.path.join(out, "results.csv")
    with open(jpath, "w") as f:
        json.dump({"meta": meta, "records": records}, f, indent=1, default=str)
    with open(cpath, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(TABLE_COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({k: "" if r.get(k) is None else r.get(k) for k in TABLE_COLUMNS})
    return cpath, jpath


@dataclass
class SweepResult:
    """What ``fpq.sweep`` returned: one record per point, the sweep's facts and where the tables are.

    ``fpq.report`` takes it (or the results.json / results.csv it names).

    Args:
        records (list[dict]): one row per point (id, weights, activations, method, accuracy, exact,
            the cost fields, status, error, command, ...; ``COLUMNS`` lists them).
        meta (dict): the sweep's facts (float accuracy, seed, workers, timing, ...).
        out (str): the sweep's folder.
        csv_path (str): results.csv.
        json_path (str): results.json.
        computed (int): points evaluated in this call (the rest came from the cache).

    Example:
        >>> import os, tempfile, torch, fpq
        >>> _ = torch.manual_seed(0)
        >>> data = (torch.randn(64, 4), torch.randint(0, 3, (64,)), torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     res = fpq.sweep(torch.nn.Sequential(torch.nn.Linear(4, 3)), data, formats=["int4"], methods="max",
        ...                     out=d, workers=1, verify_samples=4, verify_qonnx=0, calib_samples=32, progress=False)
        >>> len(res.records), len(res.ok()), os.path.basename(res.json_path)
        (1, 1, 'results.json')
    """
    records: list
    meta: dict
    out: str
    csv_path: str
    json_path: str
    computed: int     # points evaluated in this call (the rest came from the cache)

    def ok(self) -> list:
        """The records of the points that did not fail.

        Returns:
            list[dict]: records whose status is not "error".
        """
        return [r for r in self.records if r["status"] != "error"]


def load_results(results) -> tuple[list, dict]:
    """(records, meta) from a SweepResult, a list of records, or a results.json / results.csv path.

    Args:
        results: a SweepResult, a list of records or a results file path.

    Returns:
        tuple[list, dict]: the records and the sweep's metadata.

    Raises:
        ValueError: no results at the path, or a record ``fpq.sweep`` could not have written (named).
        TypeError: ``results`` is none of these.

    Example:
        >>> from fpq.report import load_results
        >>> load_results([{"weights": "int8", "activations": "int8"}])
        ([{'weights': 'int8', 'activations': 'int8'}], {})
    """
    if isinstance(results, SweepResult):
        return list(results.records), dict(results.meta)
    if isinstance(results, (str, os.PathLike)):
        path = str(results)
        if os.path.isdir(path):
            live = _live_results(path)
            if live is not None:
                return live
            path = os.path.join(path, "results.json")
        if not os.path.exists(path):
            raise ValueError(f"no sweep results at {path!r}")
        if path.endswith(".json"):
            with open(path) as f:
                try:
                    obj = json.load(f)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: not a JSON file ({e})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("records"), list):
                raise ValueError(f"{path}: expected {{\"meta\": {{...}}, \"records\": [...]}} as fpq.sweep writes")
            meta = obj.get("meta", {})
            _check_meta(meta, path)
            for i, r in enumerate(obj["records"]):
                try:
                    check_record(r)
                except BadRecord as e:
                    raise ValueError(f"{path}: records[{i}] is not a record fpq.sweep writes: {e}") from None
            return list(obj["records"]), dict(meta)
        if path.endswith(".csv"):
            records = []
            with open(path, newline="") as f:
                for n, row in enumerate(csv.DictReader(f), 2):  # line 1 is the header
                    try:
                        r = _parse_csv_row(row)
                        check_record(r)
                    except BadRecord as e:
                        raise ValueError(f"{path} line {n} is not a record fpq.sweep writes: {e}") from None
                    records.append(r)
            return records, {}
        raise ValueError(f"sweep results must be results.json or results.csv, got {path!r}")
    if isinstance(results, (list, tuple)):
        return [dict(r) for r in results], {}
    raise TypeError(f"expected sweep results (SweepResult, list of records, or a path), got {type(results).__name__}")


def _live_results(folder: str):
    """(records, meta) of a sweep that is running (or was stopped) in ``folder``: the points its
    store holds so far, meta["progress"] its done / failed / running counts. None when the sweep
    there finished (its results.json is complete) or none ran."""
    prog = read_progress(folder)
    if prog is None or prog.get("state") == "finished":
        return None
    records = list(read_cache(os.path.join(folder, CACHE), context=prog["context"]).values())
    meta = dict(prog.get("meta") or {}) if isinstance(prog.get("meta"), dict) else {}
    meta.update(context=prog["context"], points=len(records), progress={
        k: prog.get(k) for k in ("state", "engine", "total", "done", "failed", "running", "updated")})
    return records, meta


_META_NUMBERS = ("float_accuracy", "seconds", "points", "computed", "cached", "workers", "seed", "n_test")


def _check_meta(meta, path: str) -> None:
    """The meta fields the report prints must have the types fpq.sweep writes (they are escaped too)."""
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: 'meta' must be a JSON object, got {type(meta).__name__}")
    for k in _META_NUMBERS:
        if meta.get(k) is not None and not _real(meta[k]):
            raise ValueError(f"{path}: meta field {k!r}: expected a finite number, got {meta[k]!r}")
    for k in ("metric", "model_spec", "data_spec", "first_layer", "last_layer", "context"):
        if meta.get(k) is not None and not isinstance(meta[k], str):
            raise ValueError(f"{path}: meta field {k!r}: expected a string, got {type(meta[k]).__name__}")


def _parse_csv_row(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if k is None or v is None:  # more or fewer cells than the header has
            raise BadRecord(str(k), "the row's cells do not match the header")
        if v == "":
            out[k] = None
        elif k in ("exact", "hls_exact"):
            if v not in ("True", "False"):
                raise BadRecord(k, f"expected True, False or empty, got {v!r}")
            out[k] = v == "True"
        elif k in ("accuracy", "seconds", *COST_FIELDS, "w_bits", "a_bits", "qat_epochs", "seed", "verify_samples",
                   "float_inf_per_s", "fake_quant_inf_per_s", "hls_samples", "hls_seconds"):
            try:
                out[k] = float(v) if any(c in v for c in ".eEnN") else int(v)
            except ValueError:
                raise BadRecord(k, f"expected a number, got {v!r}") from None
        else:
            out[k] = v
    return out


__all__ = ["COLUMNS", "HLS_COLUMNS", "TABLE_COLUMNS", "COST_FIELDS", "CACHE", "PROGRESS", "BadRecord", "read_progress", "write_progress", "SweepResult", "check_record", "load_results",
           "point_id", "read_cache", "write_tables"]
