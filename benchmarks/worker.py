"""Runs one benchmark case in its own process, so its peak RSS is its own (ru_maxrss only grows within a process).

    python -m benchmarks.worker SPEC.json RESULT.json

SPEC holds `section`, `case` and the options; RESULT receives the case's figures plus its memory.
"""

import json
import os
import sys
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from .common import DTYPES, peak_rss_mb, rss_mb
from .sections import section_module


def run(section: str, case: str, opts: dict) -> dict:
    """The case's figures plus `memory`: peak RSS, the RSS before any model was built, and on CUDA the peak
    allocated device memory."""
    opts = {**opts, "dtype": DTYPES[opts["dtype"]]}
    if opts.get("threads"):
        torch.set_num_threads(opts["threads"])
    transformers_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error()
    device = torch.device(opts["device"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    module = section_module(section)
    baseline = rss_mb()
    result = module.run_case(case, opts)
    result["memory"] = {"peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": baseline}
    if device.type == "cuda":
        result["memory"]["peak_cuda_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def main() -> None:
    spec_path, result_path = sys.argv[1:3]
    with open(spec_path) as handle:
        spec = json.load(handle)
    try:
        result = run(spec["section"], spec["case"], spec["options"])
    except Exception as error:  # reported in the results table, the other cases still run
        traceback.print_exc()
        result = {"error": f"{type(error).__name__}: {error}"[:300]}
    with open(result_path, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
