"""How many CPU threads a kernel computation uses, and setting them without clobbering the caller's.

Why this matters: torch's CPU kernels synchronise their OpenMP threads at the end of every
parallel op. When other processes keep the cores busy, a thread that has been descheduled
holds up the others at that barrier, so a computation made of many small ops (per-class
backward passes through narrow convolutions) collapses: on the 2-core development machine, at
load 8, the narrow benchmark CNN took 2.8-6.8 s with 2 threads and 0.61 s with 1 thread (and
``vmap(jacrev)`` 2.5-7.9 s against 1.2 s). One thread per *free* core avoids this.

The rules (:func:`resolve_threads`):

* ``threads=None`` (the default): ``torch.get_num_threads()`` (the caller's setting, or
  torch's default, the number of physical cores) capped by the CPUs this job was allocated:
  the process's CPU affinity mask (a cluster's cpuset) and ``SLURM_CPUS_PER_TASK`` when set.
  This depends only on the job, never on the machine's momentary load, because the thread
  count can change the last bits of a float32 GEMM: a resumed or repeated job must give the
  same numbers. The workflow's kernel jobs run with their rule's ``threads:``.
* ``threads="free"`` (opt-in, for interactive use on a shared machine): additionally, when
  the process may run on every CPU of the machine (no cpuset), cap by the CPUs not kept busy
  by other processes: the machine's number of runnable tasks (``/proc/loadavg``, sampled 3
  times over ~2 ms, minimum taken, this process's own running thread subtracted). Fast under
  contention, but the numbers may then differ in the last bits from run to run.
* An explicit ``threads=T`` is used as given (capped by nothing). :func:`thread_budget` applies
the choice for the duration of a ``with`` block and restores the caller's setting afterwards.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator

import torch

__all__ = ["allocated_cpus", "busy_cpus", "resolve_threads", "thread_budget"]


def allocated_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by ``SLURM_CPUS_PER_TASK``."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        cpus = min(cpus, int(slurm))
    return max(1, cpus)


def busy_cpus(samples: int = 3, interval: float = 0.001) -> int:
    """Runnable tasks of *other* processes (0 where /proc/loadavg cannot be read).

    The 4th field of /proc/loadavg is the number of currently runnable scheduling entities,
    including this process's calling thread; the minimum over a few samples ignores
    short-lived blips.
    """
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as fh:
                counts.append(int(fh.read().split()[3].split("/")[0]))
        except (OSError, IndexError, ValueError):
            return 0
        if i + 1 < samples:
            time.sleep(interval)
    return max(0, min(counts) - 1)


def resolve_threads(threads: int | str | None = None) -> int:
    """The intra-op thread count to use (see the module docstring for the rules).

    Args:
        threads: a positive int to use as given; None for the job's allocation (deterministic);
            ``"free"`` for the allocation capped by the cores other processes leave free.
    """
    if threads is not None and threads != "free":
        if isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0:
            raise ValueError(f"threads must be a positive integer, None or 'free', got {threads!r}")
        return threads
    n = min(torch.get_num_threads(), allocated_cpus())
    whole_machine = allocated_cpus() >= (os.cpu_count() or 1) and "SLURM_CPUS_PER_TASK" not in os.environ
    if threads == "free" and whole_machine and n > 1:
        n = min(n, max(1, (os.cpu_count() or 1) - busy_cpus()))
    return max(1, n)


@contextlib.contextmanager
def thread_budget(threads: int | str | None = None) -> Iterator[int]:
    """Run the block with :func:`resolve_threads` ``(threads)`` intra-op threads; the caller's
    ``torch.get_num_threads()`` is restored afterwards (also on error). Yields the count."""
    before = torch.get_num_threads()
    n = resolve_threads(threads)
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
