"""The processes a sweep started, found through Linux's /proc, and killing them.

Why by hand: an HLS build runs hls4ml's ``build_lib.sh`` through ``subprocess.run(shell=True)``,
and the shell starts g++. When the process that asked for the build is stopped (SIGTERM of the
driver, a pool worker or Ray task killed), Python kills at most the shell; g++ is re-parented and
keeps compiling. Neither the standard library nor psutil (an optional dependency, shipped only
with Ray) is needed for the few lines that walk the parent links in /proc. Elsewhere than Linux
the functions find nothing and kill nothing.

Run as a script (``python proctree.py DRIVER_PID``) it is the reaper of a sweep: it notes the
driver's descendants every second and SIGKILLs them once the driver is gone (even SIGKILLed,
when the driver itself has no say), so a started Ray's agents or a build's g++ do not outlive it.
It imports nothing of fpq, so it starts in a tenth of a second whatever the driver imported.
"""
from __future__ import annotations

import os
import signal
import sys
import time


def table() -> dict:
    """Every process: pid -> (parent pid, start time in clock ticks); {} without /proc."""
    out = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for d in names:
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
                out[int(d)] = (int(st[1]), st[19])
            except (OSError, ValueError, IndexError):
                pass  # it ended while we read
    return out


def descendants(roots, tab: dict | None = None, exclude=()) -> dict:
    """The processes below ``roots`` (not the roots): pid -> start time (to tell a reused pid)."""
    tab = table() if tab is None else tab
    children = {}
    for pid, (parent, _) in tab.items():
        children.setdefault(parent, []).append(pid)
    found, stack = {}, list(roots)
    while stack:
        for c in children.get(stack.pop(), ()):
            if c not in found and c not in exclude:
                found[c] = tab[c][1]
                stack.append(c)
    return found


def kill(procs: dict) -> int:
    """SIGKILL each process of ``procs`` (pid -> start time) that is still that same process;
    returns how many were signalled."""
    tab, n = table(), 0
    for pid, start in procs.items():
        if tab.get(pid, (None, None))[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
                n += 1
            except OSError:
                pass  # gone meanwhile
    return n


def kill_below(roots, exclude=()) -> int:
    """Kill every process below ``roots``, deepest links included (one snapshot of /proc)."""
    return kill(descendants(roots, exclude=exclude))


def reap(driver: int, period: float = 1.0) -> None:
    """Kill the driver's descendants once it is gone (see the module docstring)."""
    me, seen = os.getpid(), {}
    while os.getppid() == driver:
        seen.update(descendants([driver], exclude=(me,)))
        time.sleep(period)
    tab = table()
    seen.update(descendants(list(seen), tab, exclude=(me,)))  # what the noted ones started since
    kill(seen)


if __name__ == "__main__":
    reap(int(sys.argv[1]))
