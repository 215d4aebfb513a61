"""Peak memory of the running process, measured so that a child does not report its parent's."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM) in MiB.

    Not `ru_maxrss`: Linux carries that across exec, so a process spawned by a big parent (a
    benchmark that produced its data first, a consumer starting its decoder worker) reports
    the parent's peak as its own. VmHWM belongs to the process's own address space.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
