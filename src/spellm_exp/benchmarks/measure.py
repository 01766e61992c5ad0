"""What the benchmarks share: the device to run on, a device-synchronising clock, peak memory, and the
parameter count a decode step reads."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from spellm_exp.errors import SpellmError

DEVICES = ("auto", "cpu", "cuda")


class BenchConfigError(SpellmError, ValueError):
    """A bench config that cannot run; raised before any model loads."""


def resolve_device(requested: str) -> torch.device:
    if requested not in DEVICES:
        raise BenchConfigError(f"device={requested} is unknown; use one of {DEVICES}.")
    if requested == "cuda" and not torch.cuda.is_available():
        raise BenchConfigError("device=cuda, but no CUDA GPU is visible here; use device=cpu (or auto).")
    return torch.device("cuda" if requested == "auto" and torch.cuda.is_available() else
                        "cpu" if requested == "auto" else requested)


def device_clock(device: torch.device) -> Callable[[], float]:
    """time.perf_counter, after waiting for the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        def clock() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return clock
    return time.perf_counter


def _memory_mb() -> dict[str, float]:
    with open("/proc/self/status") as status_file:
        status = dict(line.split(":", 1) for line in status_file)
    return {key: int(status[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def peak_rise_mb(fn: Callable[[], object], device: torch.device = torch.device("cpu")) -> float:
    """How far peak memory rises above its resting level while `fn` runs.

    CPU: the process's peak RSS (Linux; /proc/self/clear_refs resets it). CUDA: the allocator's peak.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resting = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - resting) / 2**20
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current RSS
    resting = _memory_mb()["VmRSS"]
    fn()
    return _memory_mb()["VmHWM"] - resting


def available_memory_gb(device: torch.device) -> float:
    """Memory a new model could take: MemAvailable on the host, free memory on a GPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**30
    with open("/proc/meminfo") as meminfo:
        fields = dict(line.split(":", 1) for line in meminfo)
    return int(fields["MemAvailable"].split()[0]) / 2**20


def nonembedding_params(model: torch.nn.Module) -> int:
    """Parameters read by a decode step's backbone: all but the input embedding and the unembedding."""
    embeddings, unembedding = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())  # a tied unembedding is counted once
    return total - embeddings.numel() - (0 if unembedding is embeddings else unembedding.numel())


def copy_bandwidth_gb_s(device: torch.device, megabytes: int | None = None, repeats: int = 5) -> float:
    """Memory bandwidth in GB/s (1e9 bytes) measured by copying one large buffer into another: bytes read plus
    bytes written per second, the best of `repeats` (what a step that streams its weights can reach at most)."""
    megabytes = megabytes or (2048 if device.type == "cuda" else 256)
    numel = megabytes * 2**20 // 4
    source = torch.ones(numel, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    clock = device_clock(device)
    target.copy_(source)  # warm-up: first-touch page faults, allocator
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        target.copy_(source)
        best = min(best, clock() - start)
    return 2 * source.numel() * source.element_size() / best / 1e9
