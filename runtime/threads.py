"""The default thread count: the physical cores this process may run on.

A convolution or GEMM thread that shares a core with its SMT sibling gains little and slows the
other (both compete for the same vector units), so the runtime's default is one thread per
physical core, not per logical CPU. "Available to the process" means three limits, the smallest
wins:

1. the CPU affinity mask (``taskset``, a container's cpuset): ``os.sched_getaffinity``;
2. of those logical CPUs, one per physical core (Linux sysfs ``topology/core_cpus_list``, or
   ``thread_siblings_list`` on older kernels; a CPU without topology counts as its own core);
3. a cgroup CPU quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us / cpu.cfs_period_us`` in
   v1), rounded up: a container given 2.5 CPUs on a 64-core host gets 3 threads, not 64.

Every runner that takes a thread count (ONNX Runtime's ``intra_op_threads``, OpenVINO's
``INFERENCE_NUM_THREADS``) treats 0 as :func:`default_threads`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

SYSFS_CPU = Path("/sys/devices/system/cpu")
CGROUP = Path("/sys/fs/cgroup")


def allowed_cpus() -> set[int]:
    """Logical CPUs this process may run on (its affinity mask; all of ``os.cpu_count()`` where unknown)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def _cpu_list(text: str) -> set[int]:
    """``"0-3,8,10-11"`` -> {0, 1, 2, 3, 8, 10, 11}."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if "-" in part:
            low, high = part.split("-", 1)
            cpus.update(range(int(low), int(high) + 1))
        elif part:
            cpus.add(int(part))
    return cpus


def physical_cores(cpus: set[int], *, sysfs: Path = SYSFS_CPU) -> int:
    """How many physical cores the logical CPUs ``cpus`` span (SMT siblings count once)."""
    cores: set[frozenset[int]] = set()
    for cpu in cpus:
        siblings = None
        for name in ("core_cpus_list", "thread_siblings_list"):
            try:
                siblings = frozenset(_cpu_list((sysfs / f"cpu{cpu}" / "topology" / name).read_text()))
                break
            except (OSError, ValueError):
                continue
        cores.add(siblings if siblings else frozenset({cpu}))
    return max(1, len(cores))


def cgroup_cpu_limit(*, root: Path = CGROUP) -> int | None:
    """The CPU quota of this process's cgroup, in whole CPUs rounded up; None without a quota."""
    try:  # v2: "max 100000" or "250000 100000"
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:  # v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        return None


def default_threads() -> int:
    """Physical cores available to this process: affinity, one per core, under the cgroup quota (>= 1)."""
    cores = physical_cores(allowed_cpus())
    limit = cgroup_cpu_limit()
    return max(1, min(cores, limit) if limit else cores)


def resolve_threads(threads: int) -> int:
    """``threads`` itself when positive, :func:`default_threads` for 0; a negative count is a ValueError."""
    if type(threads) is not int or threads < 0:
        raise ValueError(f"threads must be an integer >= 0 (0: one per physical core available), got {threads!r}")
    return threads or default_threads()
