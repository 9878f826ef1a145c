"""Parameter counts of the named presets, built on the meta device (no memory, no weights).

    python benchmarks/parameter_counts.py [--json benchmarks/results/parameter_counts.json]

Prints a markdown table (the README's) and writes the same figures as JSON.
"""

import argparse
import json
from pathlib import Path

import torch

from hydra_hf import (
    HYDRA_PRESETS,
    HYDRA_TOK_PRESETS,
    HydraConfig,
    HydraForConditionalGeneration,
    HydraTokConfig,
    HydraTokModel,
)


def count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def hydra_tok_counts(preset: str) -> dict[str, int]:
    with torch.device("meta"):
        model = HydraTokModel(HydraTokConfig.from_preset(preset))
    encoder = count(model.embeddings) + count(model.gen_vit) + count(model.sem_vit)
    return {
        "encoder (ViT: embeddings + Gen-ViT + Sem-ViT)": encoder,
        "Gen-ViT": count(model.gen_vit),
        "Sem-ViT": count(model.sem_vit),
        "GSB": count(model.bottleneck),
        "pixel flow decoder": count(model.decoder),
        "total": count(model),
    }


def hydra_counts(preset: str) -> dict[str, int]:
    with torch.device("meta"):
        model = HydraForConditionalGeneration(HydraConfig.from_preset(preset))
    vision = model.model.vision_model
    lm_head = 0 if model.config.tie_word_embeddings else count(model.lm_head)
    return {
        "LLM (with embeddings)": count(model.model.language_model),
        "LM head (untied)": lm_head,
        "HYDRA-TOK encoder + GSB (used by the LLM)": count(vision) - count(vision.decoder),
        "HYDRA-TOK pixel decoder": count(vision.decoder),
        "projector": count(model.model.projector),
        "time embedding": count(model.model.time_embedding),
        "flow head": count(model.flow_head),
        "total": count(model),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/parameter_counts.json"))
    args = parser.parse_args()
    results = {f"HYDRA-TOK {name}": hydra_tok_counts(name) for name in HYDRA_TOK_PRESETS}
    results.update({f"HYDRA {name}": hydra_counts(name) for name in HYDRA_PRESETS})
    for model_name, parts in results.items():
        print(f"\n| {model_name} | parameters |\n|---|---:|")
        for part, value in parts.items():
            print(f"| {part} | {value / 1e6:,.2f} M |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
