"""The benchmark harness (`python -m benchmarks`) in its quick mode: it runs, and its JSON has the promised shape."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks.common import count_flops

REPO = Path(__file__).resolve().parent.parent


def run_harness(tmp_path: Path, *arguments: str) -> dict:
    output = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "benchmarks", "--quick", "--json", str(output), *arguments]
    process = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    assert "| model |" in process.stdout or "| pipeline |" in process.stdout or "| trainer |" in process.stdout
    assert output.with_suffix(".md").exists()
    return json.loads(output.read_text())


def positive_numbers(value, path="") -> list[str]:
    """Paths of the numbers in `value` that are not > 0 (memory baselines and ids included: all must be)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        return [] if value > 0 else [path]
    if isinstance(value, dict):
        return [bad for key, item in value.items() for bad in positive_numbers(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [bad for index, item in enumerate(value) for bad in positive_numbers(item, f"{path}[{index}]")]
    return []


def check_report(report: dict, sections: dict[str, list[str]]) -> None:
    assert {"machine", "matmul_peak", "matmul_peak_end", "options", "sections"} <= set(report)
    assert report["machine"]["torch"] == torch.__version__
    assert report["machine"]["cpu"]
    assert report["matmul_peak"]["gflops"] > 0
    assert list(report["sections"]) == list(sections)
    for section, cases in sections.items():
        results = report["sections"][section]
        assert list(results) == cases
        for case, row in results.items():
            assert "error" not in row, f"{section}/{case}: {row.get('error')}"
            assert row["memory"]["peak_rss_mb"] >= row["memory"]["baseline_rss_mb"] > 0
            assert positive_numbers(row) == [], f"{section}/{case} has non-positive figures"


def test_flops_count_cpu_attention():
    """CPU scaled-dot-product attention is counted (FlopCounterMode alone misses its kernel)."""
    query = torch.randn(1, 2, 16, 8)
    assert count_flops(lambda: F.scaled_dot_product_attention(query, query, query)) == 2 * (2 * 2 * 16 * 16 * 8)


def test_quick_tokenizer_section(tmp_path):
    report = run_harness(tmp_path, "--sections", "tokenizer")
    check_report(report, {"tokenizer": ["hydra-tok-tiny", "sd-vae"]})
    row = report["sections"]["tokenizer"]["hydra-tok-tiny"]
    for part in ("encode", "decode"):
        assert 0 < row[part]["mfu"] < 1.5
        assert row[part]["gflops_per_image"] > 0


@pytest.mark.slow
def test_quick_all_sections(tmp_path):
    report = run_harness(tmp_path)
    check_report(
        report,
        {
            "tokenizer": ["hydra-tok-tiny", "sd-vae"],
            "text-to-image": ["hydra-cache-on", "hydra-cache-off", "janus"],
            "understanding": ["hydra", "janus"],
            "training": ["hydra-tok-stage1", "hydra-tok-stage2", "hydra-stage2"],
        },
    )
    training = report["sections"]["training"]
    # Stage 2 trains the decoder only.
    assert training["hydra-tok-stage2"]["trainable_parameters"] < training["hydra-tok-stage1"]["trainable_parameters"]
    t2i = report["sections"]["text-to-image"]
    assert t2i["hydra-cache-off"]["gflops_per_image"] > t2i["hydra-cache-on"]["gflops_per_image"]


def test_answer_guidance_benchmark_counts_the_understanding_passes_it_adds(tmp_path):
    from benchmarks import answer_guidance_speed

    from .utils import save_tiny_hydra

    output = tmp_path / "answer.json"
    report = answer_guidance_speed.main([
        "--model", str(save_tiny_hydra(tmp_path / "model")), "--batch", "2", "--steps", "3", "--warmup", "0",
        "--runs", "1", "--json", str(output),
    ])
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    plain, guided = report["results"]["plain"], report["results"]["answer-guided"]
    assert guided["gflops_per_image"] > plain["gflops_per_image"] > 0  # the guided steps' reads and backward passes
    assert guided["cost_vs_plain"] == pytest.approx(guided["s_per_image"] / plain["s_per_image"])
    assert report["questions"][0][-1] == ("is the red circle left of the blue square?", "yes")
