"""What the benchmarks ran on: one description, printed in every benchmark's JSON."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(*modules: str) -> dict[str, Any]:
    """The CPU, cores, memory, Python and the versions of ``modules`` (None when one is
    not installed), plus whether SerPyTor's kernels are compiled."""
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "python": platform.python_version(), "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg())}
    try:
        import psutil
        info["memory_gb"] = round(psutil.virtual_memory().total / 2 ** 30, 1)
    except ImportError:
        pass
    for name in ("serpytor", "numpy", *modules):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    if "zmq" in modules:
        import zmq
        info["libzmq"] = zmq.zmq_version()
    from serpytor import _core
    info["kernels_compiled"] = getattr(_core, "COMPILED", None)
    return info


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False
