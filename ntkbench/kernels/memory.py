"""How much memory an in-memory kernel may keep its feature representations in.

Why it matters: when the representations of all N samples do not fit the budget, the
in-memory path recomputes the column blocks' features for every row block (N / batch times
the gradient work). A fixed 2 GiB budget made the ResNet member at N = 1000 (3.1 GB of
materialised conv gradients) 2.3x slower than keeping them, on a machine with 24 GB.

The budget depends on the job's allocation only, never on the memory free at the moment, for
the reason :mod:`.threads` gives for thread counts: the cached and the recomputing paths
contract in different orders, so the choice can change the last bits of a float32 kernel,
and a repeated or resumed job must give the same numbers.
"""
from __future__ import annotations

import os

__all__ = ["allocated_memory", "feature_cache_bytes"]

MIN_CACHE_BYTES = 2 << 30
"""The budget never goes below 2 GiB (the earlier fixed value)."""
CACHE_FRACTION = 4
"""A quarter of the job's memory: the kernel, the per-batch temporaries and whatever else the
process holds need the rest."""


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (cgroup v2, no limit) -> None


def allocated_memory() -> int:
    """Bytes of memory this job may use: the machine's physical memory (MemTotal), capped by
    the cgroup memory limit (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``) and by
    ``SLURM_MEM_PER_NODE`` (MB) when set. 8 GiB where none can be read (not Linux)."""
    limits = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    limits.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        value = _read_int(path)
        if value:
            limits.append(value)
    slurm = os.environ.get("SLURM_MEM_PER_NODE", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        limits.append(int(slurm) << 20)
    return min(limits) if limits else 8 << 30


def feature_cache_bytes() -> int:
    """The in-memory path's budget for the representations of all samples: a quarter of
    :func:`allocated_memory`, at least :data:`MIN_CACHE_BYTES`."""
    return max(MIN_CACHE_BYTES, allocated_memory() // CACHE_FRACTION)
