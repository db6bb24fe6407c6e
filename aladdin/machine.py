"""What this machine is, in words, for the provenance of profiles and benchmark results."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_description() -> str:
    """``CPU: <model name> (<n> cores)`` from /proc/cpuinfo, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
