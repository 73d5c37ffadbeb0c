"""Peak memory of an explainer's work on a batch, comparable between the runs of one process.

On CUDA it is the allocator's peak since the step began (``torch.cuda.reset_peak_memory_stats``).
On a CPU a process's own peak (``ru_maxrss``) only ever rises: in a sweep run in one process every
job after the first would inherit the peak of the one before. So a thread samples the resident set
(``/proc/self/statm``) every few milliseconds while the evaluation runs, and a step's figure is the
largest sample during the step minus the resident set when the evaluation started: the memory the
run itself added. Where ``/proc`` is missing (macOS, Windows) the figure is the process's lifetime
peak, as ``resource`` gives it, and says so in :attr:`PeakMemory.kind`.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path

import torch

STATM = Path("/proc/self/statm")
INTERVAL = 0.005  # seconds between samples of the resident set


def resident_mb() -> float | None:
    """The process's resident set in MB now (None where /proc is missing)."""
    try:
        pages = int(STATM.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def lifetime_peak_mb() -> float:
    """The process's peak resident set since it started (kilobytes on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class PeakMemory:
    """See the module docstring: ``start`` when the evaluation starts, ``reset`` when a step starts, ``peak_mb``
    when it ends, ``stop`` at the end."""

    def __init__(self) -> None:
        self.base: float | None = None
        self.kind = "cuda allocator peak per step"
        self._peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, device: torch.device) -> None:
        if device.type == "cuda" or self._thread is not None:
            return
        self.base = resident_mb()
        if self.base is None:
            self.kind = "process lifetime peak (no /proc on this system)"
            return
        self.kind = "resident set above the run's start, sampled"
        self._peak = self.base
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="cambench-memory", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(INTERVAL):
            now = resident_mb()
            if now is not None and now > self._peak:
                self._peak = now

    def reset(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        else:
            self.start(device)
            self._peak = resident_mb() or 0.0

    def peak_mb(self, device: torch.device) -> float:
        if device.type == "cuda":
            return torch.cuda.max_memory_allocated(device) / 2**20
        if self.base is None:
            return lifetime_peak_mb()
        return max(self._peak, resident_mb() or 0.0) - self.base

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
