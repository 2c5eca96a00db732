"""
Timing, memory and machine primitives of the benchmarks.

Each time is one whole call with the device synchronised at both ends; the figures are medians of
wall-clock time and of the process's CPU time. On a GPU wall time is the measure. On a CPU shared with
other jobs wall time mostly measures the other jobs, while CPU time (with one thread, so that no thread
waits for another) still measures the call's own work.
"""

import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device):
    """Run ``function`` once; return its (wall-clock, process CPU) seconds, the device synchronised."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def medians(times):
    """{"wall_s", "cpu_s"}: the medians of (wall, cpu) pairs."""
    return {"wall_s": statistics.median(t[0] for t in times), "cpu_s": statistics.median(t[1] for t in times)}


def median_time(function, repeats, device):
    return medians([timed(function, device) for _ in range(repeats)])


def peak_resident_mb():
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak if sys.platform == "darwin" else peak * 1024) / 2**20


class StepMemory:
    """
    On a CUDA device, the peak memory of one step and its peak above what was allocated when it started.
    On a CPU there is no such figure: the allocator keeps freed memory, and a step that reuses it does not
    grow the resident set (None; the process-wide peak is reported instead).
    """

    def __init__(self, device):
        self.device = device

    def start(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)

    def stop(self):
        """(peak above the start, peak) in bytes, or None on a CPU."""
        if self.device.type != "cuda":
            return None
        peak = torch.cuda.max_memory_allocated(self.device)
        return peak - self._start, peak


def state_bytes(model, optimizer):
    """Bytes a path keeps between steps: weights, gradients, buffers (the queue), optimizer state."""
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)



def _git(*command):
    return subprocess.run(["git", *command], capture_output=True, text=True, check=True).stdout.strip()


def environment():
    """The machine and the code the numbers come from."""
    try:
        commit, dirty = _git("rev-parse", "HEAD"), bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    cpu_model = platform.processor() or None
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu_model)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model,
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "git_commit": commit,
        "git_dirty": dirty,
    }


def load_average():
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None

