"""Where ``fpq.sweep``'s points run: ``engine="local"`` (spawned processes of this machine, no Ray)
or ``engine="ray"`` (tasks of a Ray cluster: one started here, or one at ``address``).

Both engines take the points still to do, the pickled (model, data, settings, metric) and two
callbacks of the driver: ``finish(cfg, result)`` with the record a point returned, or the
exception that ended it (the driver records that point as failed and goes on), and
``running(n)`` with the number of points in flight. Only ``finish`` writes the store, in the
driver, so the engines never touch files. In-flight points are capped at the number of CPUs
that run them, so "running" counts points being computed, not queued ones. Every worker uses one
torch thread: a point's result depends on its configuration and seed only, whichever engine,
process or machine ran it.

SIGTERM or Ctrl-C of the driver stops its workers before it exits (SIGTERM exits 143): the local
pool's workers also die with a SIGKILLed driver (``_die_with_parent``); a Ray cluster this
driver started is shut down with it (Ray's own processes share the driver's fate), and on a
cluster it only joined, its running tasks are cancelled (a SIGKILLed driver's tasks are ended
by Ray when its job ends).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys
import time
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from ..userfiles import SPEC_FILES, load_file_module
from . import builds, proctree

ENGINES = ("local", "ray")

# Ray retries a task whose worker process died (SIGKILL, OOM killer, a lost node) this many times
# before the point is recorded as failed; a point that raises is not retried (run_point records
# its own errors, so an exception here is a bug or a broken payload, and would raise again).
RAY_MAX_RETRIES = 3


class _Terminated(BaseException):
    """SIGTERM arrived while points ran (a BaseException so that no ``except Exception`` eats it)."""


class _SigtermRaises:
    """Within the block SIGTERM raises _Terminated (a handler the caller installed is left alone);
    leaving the block by it exits with SystemExit(143), after the engine's ``finally`` ran.
    ``own``: whether the handler is ours to set, decided before a library (Ray) installed its own."""

    def __init__(self, own: bool | None = None, defer: bool = False):
        self.own, self.defer, self.hit = own, defer, False

    def check(self) -> None:
        """With ``defer`` the handler only notes the signal (raising inside Ray's Cython calls turns
        into a SystemError); the engine's loop calls this between its waits."""
        if self.hit:
            raise _Terminated()

    @staticmethod
    def ours() -> bool:
        import signal
        import threading
        return (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None))

    def __enter__(self):
        import signal

        if self.own is None:
            self.own = self.ours()
        if self.own:
            signal.signal(signal.SIGTERM, self._raise)
        return self

    def _raise(self, signum, frame):
        self.hit = True
        if not self.defer:
            raise _Terminated()

    def __exit__(self, kind, value, tb):
        import signal
        if self.own:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if kind is _Terminated:
            raise SystemExit(128 + int(signal.SIGTERM)) from None
        return False


@contextmanager
def in_process():
    """Points or builds run in this process (the local engine with one worker): SIGTERM stops
    them (exit 143 after the caller's cleanup), and whatever they started (a build's shell and
    g++) is killed on the way out instead of compiling on as an orphan."""
    with _SigtermRaises():
        try:
            yield
        except BaseException:
            proctree.kill_below([os.getpid()])
            raise


def _one_thread() -> None:
    import torch
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # interop threads already started in this process: they do not change a point's sums


def _load_payload(spec_files: dict, payload: bytes) -> dict:
    import warnings
    warnings.filterwarnings("ignore")
    for path in spec_files.values():  # model classes defined in a user's FILE.py unpickle
        load_file_module(path)
    return pickle.loads(payload)


def _point(w: dict, cfg: dict) -> dict:
    from .sweeping import run_point  # deferred: sweeping imports this module
    return run_point(w["model"], w["data"], cfg, w["settings"], w["metric"])


# ----------------------------------------------------------------------------- local processes
_WORKER = {}


def _die_with_parent(parent_pid: int) -> None:
    """End this worker when the sweep process dies, even by SIGKILL (which runs no cleanup in the
    parent): on Linux the kernel sends SIGKILL to the worker (prctl PR_SET_PDEATHSIG); everywhere a
    daemon thread polls the parent's pid (an orphan is re-parented, so getppid changes)."""
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # no usable libc: the watchdog below still ends the worker
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="fpq-sweep-parent-watchdog", daemon=True).start()


def _init_worker(spec_files: dict, payload: bytes, parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        _die_with_parent(parent_pid)  # first: importing torch takes seconds
    _one_thread()
    _WORKER.update(_load_payload(spec_files, payload))


def _worker_point(cfg: dict) -> dict:
    return _point(_WORKER, cfg)


def _build(w: dict, jb: dict) -> dict:
    return builds.run_build(w["model"], w["data"], w["settings"], jb)


def _worker_build(jb: dict) -> dict:
    return _build(_WORKER, jb)


def _stop_pool(pool) -> None:
    """Kill the pool's workers now (a point may run for minutes; shutdown would wait for it), and
    what they started (a build's shell and g++, which would outlive them)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    below = proctree.descendants([p.pid for p in procs if p.pid])
    for proc in procs:
        try:
            proc.kill()
        except (OSError, ValueError):
            pass  # already gone
    proctree.kill(below)
    pool.shutdown(wait=False, cancel_futures=True)


def run_local(todo: list, workers: int, payload: bytes, finish, running, fn=None) -> None:
    """Run the points on ``workers`` spawned processes of this machine. A point whose worker
    raised is handed to ``finish`` as the exception; a worker killed from outside breaks the
    pool (``BrokenProcessPool`` ends the sweep; what finished is stored, a rerun resumes).
    ``fn``: what a worker runs on each item (default: a point; ``_worker_build``: an HLS build)."""
    fn = fn or _worker_point
    import multiprocessing as mp
    from concurrent.futures.process import BrokenProcessPool

    workers = max(1, min(workers, len(todo)))
    queue = list(todo)
    with _SigtermRaises(), ProcessPoolExecutor(
            max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
            initargs=(dict(SPEC_FILES), payload, os.getpid())) as pool:
        try:
            pending = {}
            while queue or pending:
                while queue and len(pending) < workers:
                    cfg = queue.pop(0)
                    pending[pool.submit(fn, cfg)] = cfg
                running(len(pending))
                ready, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in ready:
                    cfg = pending.pop(fut)
                    try:
                        rec = fut.result()
                    except BrokenProcessPool:
                        raise
                    except Exception as e:  # the point raised in its worker: recorded, the sweep goes on
                        rec = e
                    finish(cfg, rec)
            running(0)
        except BaseException:
            _stop_pool(pool)
            raise


# ----------------------------------------------------------------------------- Ray
_RAY_WORKER = {}


def _ray_payload(payload: bytes, key: str, spec_files: dict) -> dict:
    """The sweep's payload in this Ray worker, unpickled once per worker process (by its hash)."""
    if _RAY_WORKER.get("key") != key:
        _one_thread()
        _RAY_WORKER.clear()
        _RAY_WORKER.update(w=_load_payload(spec_files, payload), key=key)
    return _RAY_WORKER["w"]


def _ray_point(payload: bytes, key: str, spec_files: dict, cfg: dict) -> dict:
    """One point in a Ray worker."""
    return _point(_ray_payload(payload, key, spec_files), cfg)


def _ray_build(payload: bytes, key: str, spec_files: dict, jb: dict) -> dict:
    """One HLS build in a Ray worker (a task that holds one unit of ``builds.COMPILE_RESOURCE``)."""
    return _build(_ray_payload(payload, key, spec_files), jb)


def ray_module():
    """``ray``, or a ValueError saying how to install it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
    try:
        import ray
    except ImportError as e:
        raise ValueError(f"fpq.sweep: engine='ray' needs Ray ({e}); install it with pip install 'fpq[ray]' "
                         "or use engine='local'") from None
    return ray


def check_address(address) -> None:
    if address is None:
        return
    ok = isinstance(address, str) and (address == "auto" or address.startswith("ray://") or (
        ":" in address and address.rsplit(":", 1)[1].isdigit()))
    if not ok:
        raise ValueError(f"fpq.sweep: address {address!r} is not a Ray cluster address; allowed: 'auto' (the "
                         "cluster `ray start` runs on this machine), 'ray://HOST:PORT' (Ray Client) or "
                         "'HOST:PORT' (the head node's GCS); None starts a local Ray")


# The reaper of a Ray this driver started: SIGKILL of the driver takes down GCS, raylet and
# workers (Ray fate-shares them), but leaves Ray's dashboard and runtime-env agents running as
# orphans (measured with Ray 2.60), and a build task's g++. proctree's reaper kills the driver's
# descendants once it is gone; a driver that ends normally stops it after ray.shutdown.
def _start_reaper():
    if not sys.platform.startswith("linux"):
        return None
    import subprocess
    # -I: the script's folder (fpq/report, with a html.py) must not shadow the standard library
    return subprocess.Popen([sys.executable, "-I", proctree.__file__, str(os.getpid())], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _ray_loop(ray, task, args, items, capacity, finish, running, sigterm, pending) -> None:
    """Submit ``items`` as ``task(*args, item)`` keeping ``capacity`` in flight; each result (or
    the RayError that ended it) goes to ``finish``. ``pending`` is the caller's, to cancel."""
    queue = list(items)
    while queue or pending:
        while queue and len(pending) < capacity:
            item = queue.pop(0)
            pending[task.remote(*args, item)] = item
        running(len(pending))
        ready = []
        while not ready:
            sigterm.check()
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
        for r in ready:
            item = pending.pop(r)
            try:
                rec = ray.get(r)
            except ray.exceptions.RayError as e:  # raised in the task, or its worker died max_retries + 1 times
                rec = e
            finish(item, rec)
    running(0)


def run_ray(todo: list, workers: int, payload: bytes, finish, running, address=None,
            max_retries: int = RAY_MAX_RETRIES, phase=None) -> None:
    """Run the points as Ray tasks (one CPU each). Without ``address`` (and no Ray already
    initialised in this process) a local Ray with ``workers`` CPUs is started here and shut down at
    the end; with one this driver joins that cluster. A task whose worker died is retried by Ray
    (``max_retries``); a task that still fails reaches ``finish`` as its exception.
    ``phase`` (``builds.HlsPhase``): afterwards its HLS builds run as tasks that need the compile
    resource (a Ray started here advertises ``compile_workers`` of it; a cluster without it is
    refused before any point runs)."""
    ray = ray_module()
    own = not ray.is_initialized()
    # Ray's core worker puts a crash handler on SIGTERM that aborts the driver (exit -6, no
    # cleanup, its tasks left to Ray); ours replaces it while the points run when SIGTERM was ours
    sigterm = _SigtermRaises(own=_SigtermRaises.ours(), defer=True)
    pending, reaper = {}, None
    try:
        if own:
            kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
            if address is None:
                reaper = _start_reaper()
                extra = {} if phase is None else {"resources": {builds.COMPILE_RESOURCE: phase.plan.compile_workers}}
                ray.init(num_cpus=max(1, workers), **extra, **kw)
            else:
                ray.init(address=address, **kw)
        if phase is not None:  # up front: a cluster that cannot compile would leave the builds pending forever
            builds.check_compile_nodes(ray.nodes())
        with sigterm:  # set after ray.init, which must not replace it
            capacity = max(1, int(ray.cluster_resources().get("CPU", workers)))
            task = ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=False)(_ray_point)
            ref = ray.put(payload)
            args = (ref, hashlib.sha256(payload).hexdigest(), dict(SPEC_FILES))
            _ray_loop(ray, task, args, todo, capacity, finish, running, sigterm, pending)
            if phase is not None:
                jobs = phase.jobs()
                if jobs:
                    build = ray.remote(**builds.task_options(max_retries))(_ray_build)
                    compiles = max(1, int(ray.cluster_resources().get(builds.COMPILE_RESOURCE, 1)))
                    _ray_loop(ray, build, args, jobs, compiles, phase.finish, running, sigterm, pending)
    finally:
        for r in pending:  # Ctrl-C, SIGTERM or an error in the driver: nothing keeps computing
            try:
                ray.cancel(r, force=True)
            except Exception:  # noqa: BLE001 - already finished or the cluster is gone
                pass
        # what the Ray started here runs now (Ray's processes, a force-cancelled build's g++)
        below = {} if reaper is None else proctree.descendants([os.getpid()], exclude=(reaper.pid,))
        if own and ray.is_initialized():
            ray.shutdown()  # stops the Ray this driver started; only disconnects from a cluster it joined
        if reaper is not None:
            reaper.kill()
            reaper.wait()
            proctree.kill(below)  # what outlived ray.shutdown (a g++ is re-parented when its task is killed)


def run_points(engine: str, todo: list, workers: int, payload: bytes, finish, running, address=None,
               phase=None) -> None:
    """The points, then (``phase``) their HLS builds: on Ray in the same session; on the local
    engine in a pool of ``compile_workers`` processes (with 1, in this process)."""
    if engine == "ray":
        run_ray(todo, workers, payload, finish, running, address, phase=phase)
        return
    if todo:
        run_local(todo, workers, payload, finish, running)
    if phase is not None and phase.plan.compile_workers > 1:
        jobs = phase.jobs()
        if jobs:
            run_local(jobs, phase.plan.compile_workers, payload, phase.finish, running, fn=_worker_build)


__all__ = ["ENGINES", "RAY_MAX_RETRIES", "check_address", "ray_module", "run_local", "run_points", "run_ray"]
