"""Measurement helpers shared by the benchmark sections: wall-clock timing, FLOP counting, the machine's matmul
peak, memory and the machine description."""

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def synchronize(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_runs(fn: Callable[[], object], warmup: int, runs: int, device: torch.device | str = "cpu") -> list[float]:
    """Seconds of each of `runs` calls of `fn`, after `warmup` untimed calls (device work included)."""
    seconds = []
    for index in range(warmup + runs):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        if index >= warmup:
            seconds.append(time.perf_counter() - start)
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values)


# CPU scaled-dot-product attention dispatches to kernels FlopCounterMode does not know; count them like the GPU
# kernels (QK^T and AV in full, causal masks not discounted), so attention is not silently left out of MFU.
def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_EXTRA_FLOP_RULES = {}
for _name, _rule in (
    ("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_flops),
    ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward_flops),
):
    if hasattr(torch.ops.aten, _name):
        _EXTRA_FLOP_RULES[getattr(torch.ops.aten, _name)] = _rule


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (multiply-add = 2) of one call of `fn`, forward and any backward it runs, by FlopCounterMode."""
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_RULES) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak_gflops(device: str, dtype: torch.dtype, size: int = 2048, runs: int = 10) -> dict:
    """Best-of-`runs` GFLOP/s of a `size`^3 matmul: this machine's practical dense peak, the MFU denominator."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = time_runs(lambda: a @ b, warmup=2, runs=runs, device=device)
    rates = [2 * size**3 / s / 1e9 for s in seconds]
    return {"size": size, "dtype": str(dtype).removeprefix("torch."), "gflops": max(rates), "median_gflops": median(rates)}


def rss_mb() -> float:
    """Current resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if platform.system() == "Darwin" else peak / 1024


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def machine_description(device: str, threads: int) -> dict:
    import diffusers
    import transformers

    info = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
        "device": device,
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
