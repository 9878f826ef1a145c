"""Convert the authors' single-file release (`Xuerui123/HYdra`: `hydra_1.5b/pytorch_model.bin`, `hydra_7b/...`) into
a hydra_hf folder (safetensors, `HydraForConditionalGeneration.from_pretrained`-ready).

The release's key names could not be checked (its code is unpublished), so the converter commits to an explicit,
assumed layout and fails loudly, listing every key, wherever a checkpoint departs from it. Run `--inspect` on the real
file first, then adjust `ORIGINAL_LAYOUT`. The assumed layout, by prefix (what follows the prefix is kept as is):

    source prefix                      hydra_hf prefix                               what
    vision_model.embeddings.           model.vision_model.embeddings.                InternViT embeddings (OpenGVLab)
    vision_model.encoder.layers.{i}.   model.vision_model.gen_vit.layers.{i}.        InternViT blocks i < L_gen,
                                       model.vision_model.sem_vit.layers.{i-L_gen}.  and the rest
    gsb.                               model.vision_model.bottleneck.                GSB: proj D->2C, unproj C->D
    pixel_decoder.                     model.vision_model.decoder.                   pixel flow decoder
    mlp1.0. / mlp1.2.                  model.projector.linear_1. / linear_2.         Linear, GELU, Linear
    time_embedder.mlp.0. / mlp.2.      model.time_embedding.linear_1. / linear_2.    DiT-style timestep MLP
    flow_head.                         flow_head.                                    adaLN MLP blocks
    language_model.model.              model.language_model.                         Qwen2 base model
    language_model.lm_head.            lm_head.                                      absent if tied

InternViT blocks keep OpenGVLab's inner names (`attn.qkv`, `attn.proj`, `ls1`, `norm1`, `mlp.fc1`, ...), which are
HYDRA-TOK's; the pixel decoder and flow head are assumed to use hydra_hf's inner names. Every tensor's shape is checked
against the target config (`--preset hydra-1.5b|hydra-7b` or `--config config.json`), so a layout that only looks
right by name still fails. The file is read with `torch.load(weights_only=True, mmap=True)` and never written to.

Usage (from the repository root):

    python -m conversion.convert_original_hydra hydra_1.5b/pytorch_model.bin --inspect
    python -m conversion.convert_original_hydra hydra_1.5b/pytorch_model.bin --preset hydra-1.5b --output hydra-1.5b-hf
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch

from hydra_hf import HYDRA_PRESETS, HydraConfig, HydraForConditionalGeneration

from .init_from_pretrained import check_output_path, state_problems, write_model_card

__all__ = [
    "ORIGINAL_LAYOUT",
    "VIT_LAYERS_PREFIX",
    "convert_original_hydra",
    "export_original_state_dict",
    "inventory",
    "layout_table",
    "load_original",
    "main",
    "map_keys",
]

VIT_LAYERS_PREFIX = "vision_model.encoder.layers."

# The assumed layout, source prefix -> hydra_hf prefix. The ViT blocks are split by index in `layout_table`.
ORIGINAL_LAYOUT: dict[str, str] = {
    "vision_model.embeddings.": "model.vision_model.embeddings.",
    "gsb.": "model.vision_model.bottleneck.",
    "pixel_decoder.": "model.vision_model.decoder.",
    "mlp1.0.": "model.projector.linear_1.",
    "mlp1.2.": "model.projector.linear_2.",
    "time_embedder.mlp.0.": "model.time_embedding.linear_1.",
    "time_embedder.mlp.2.": "model.time_embedding.linear_2.",
    "flow_head.": "flow_head.",
    "language_model.model.": "model.language_model.",
    "language_model.lm_head.": "lm_head.",
}

# Training frameworks often nest the weights one level down (DeepSpeed: "module").
_WRAPPER_KEYS = ("state_dict", "model", "module")


def load_original(path: str | Path) -> dict[str, torch.Tensor]:
    """The release's tensors, memory-mapped; pickles are read with `weights_only=True` only."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    for key in _WRAPPER_KEYS:
        if isinstance(checkpoint.get(key), dict) and len(checkpoint) == 1:
            checkpoint = checkpoint[key]
    not_tensors = [key for key, value in checkpoint.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{path} is not a flat state dict; non-tensor entries: {not_tensors[:8]}")
    return checkpoint


def layout_table(config: HydraConfig) -> dict[str, str]:
    """`ORIGINAL_LAYOUT` with the InternViT blocks assigned to Gen-ViT / Sem-ViT by the config's split."""
    vision = config.vision_config
    blocks = {
        f"{VIT_LAYERS_PREFIX}{index}.": (
            f"model.vision_model.gen_vit.layers.{index}."
            if index < vision.num_gen_layers
            else f"model.vision_model.sem_vit.layers.{index - vision.num_gen_layers}."
        )
        for index in range(vision.num_layers)
    }
    return {**ORIGINAL_LAYOUT, **blocks}


def _match(key: str, prefixes: Sequence[str]) -> str | None:
    """The longest prefix of `key` among `prefixes` (sorted longest first)."""
    return next((prefix for prefix in prefixes if key.startswith(prefix)), None)


def map_keys(state_dict: dict[str, torch.Tensor], table: dict[str, str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename by longest matching prefix; returns the renamed tensors and the source keys no prefix matched."""
    prefixes = sorted(table, key=len, reverse=True)
    mapped, unmatched = {}, []
    for key, value in state_dict.items():
        prefix = _match(key, prefixes)
        if prefix is None:
            unmatched.append(key)
        else:
            mapped[table[prefix] + key[len(prefix) :]] = value
    return mapped, sorted(unmatched)


def export_original_state_dict(model: HydraForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The inverse mapping: a hydra_hf model's weights in the assumed original layout (for fixtures and checks)."""
    inverse = {target: source for source, target in layout_table(model.config).items()}
    exported, unmatched = map_keys(model.state_dict(), inverse)
    if unmatched:
        raise ValueError(f"hydra_hf keys outside the assumed layout: {unmatched}")
    return exported


def inventory(state_dict: dict[str, torch.Tensor], depth: int = 3) -> str:
    """Keys grouped by their first `depth` segments (block numbers folded to `*`): counts, sizes, dtypes, examples,
    and where the assumed layout sends each group."""
    groups: dict[str, list[str]] = defaultdict(list)
    for key in state_dict:
        segments = ["*" if segment.isdigit() else segment for segment in key.split(".")[:-1]]
        groups[".".join(segments[:depth]) or key].append(key)
    targets = {**ORIGINAL_LAYOUT, VIT_LAYERS_PREFIX: "model.vision_model.{gen_vit,sem_vit}.layers."}
    prefixes = sorted(targets, key=len, reverse=True)
    lines = [f"{len(state_dict)} tensors, {sum(t.numel() for t in state_dict.values()):,} parameters"]
    for group, keys in sorted(groups.items()):
        dtypes = sorted({str(state_dict[key].dtype).removeprefix("torch.") for key in keys})
        examples, seen = [], set()
        for key in keys:
            suffix = re.sub(r"\.\d+\.", ".*.", key)
            if suffix not in seen and len(examples) < 3:
                seen.add(suffix)
                examples.append(f"{key} {list(state_dict[key].shape)}")
        matched = {_match(key, prefixes) for key in keys}
        destinations = sorted(targets[prefix] + "*" if prefix else "UNMAPPED" for prefix in matched)
        lines.append(
            f"{group}: {len(keys)} tensors, {sum(state_dict[key].numel() for key in keys):,} params, "
            f"{'/'.join(dtypes)} -> {', '.join(destinations)}"
        )
        lines.extend(f"    {example}" for example in examples)
    return "\n".join(lines)


def _dominant_float_dtype(state_dict: dict[str, torch.Tensor]) -> torch.dtype:
    counts: dict[torch.dtype, int] = defaultdict(int)
    for value in state_dict.values():
        if value.is_floating_point():
            counts[value.dtype] += value.numel()
    return max(counts, key=counts.get)





def convert_original_hydra(
    checkpoint: str | Path,
    output: str | Path,
    config: HydraConfig,
    dtype: torch.dtype | None = None,
    base_model: str = "Xuerui123/HYdra",
) -> Path:
    """Map the release onto `config`'s HydraForConditionalGeneration and `save_pretrained` it into `output`.

    Fails, before writing anything, with every source key the layout cannot place, every target key left unfilled
    and every shape mismatch. `dtype` defaults to the checkpoint's own (its most common floating dtype).
    """
    checkpoint = Path(checkpoint)
    output = check_output_path(output, [checkpoint])
    state_dict = load_original(checkpoint)
    mapped, unmatched = map_keys(state_dict, layout_table(config))
    model = HydraForConditionalGeneration._from_config(config, dtype=dtype or _dominant_float_dtype(state_dict))
    required = set(model.state_dict())
    if config.tie_word_embeddings:
        required.discard("lm_head.weight")
        head, embeddings = mapped.get("lm_head.weight"), mapped.get("model.language_model.embed_tokens.weight")
        if head is not None and embeddings is not None and not torch.equal(head, embeddings):
            raise ValueError("The config ties the LM head to the embeddings but the checkpoint's two differ")
    problems = state_problems(model, mapped, required)
    if unmatched:
        problems.insert(0, f"{len(unmatched)} source key(s) outside the assumed layout: {unmatched}")
    if problems:
        raise ValueError(f"Cannot convert {checkpoint}:\n- " + "\n- ".join(problems))

    model.load_state_dict(mapped, strict=False)
    model.save_pretrained(output)
    write_model_card(
        output,
        [base_model],
        f"HYDRA (arXiv 2603.15228) converted from `{base_model}` ({checkpoint.name}) to `hydra_hf`.",
    )
    return output


def _load_config(args: argparse.Namespace) -> HydraConfig:
    if args.preset:
        return HydraConfig.from_preset(args.preset)
    path = Path(args.config)
    return HydraConfig.from_json_file(path) if path.is_file() else HydraConfig.from_pretrained(path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="the release's pytorch_model.bin")
    parser.add_argument("--inspect", action="store_true", help="print a grouped key/shape inventory and exit")
    parser.add_argument("--depth", type=int, default=3, help="--inspect: key segments that name a group")
    parser.add_argument("--output", help="new (or empty) folder to write")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--preset", choices=sorted(HYDRA_PRESETS), help="target HydraConfig preset")
    target.add_argument("--config", help="target HydraConfig: a config.json or a folder holding one")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: the checkpoint's")
    args = parser.parse_args(argv)
    if args.inspect:
        print(inventory(load_original(args.checkpoint), depth=args.depth))
        return
    if not args.output or not (args.preset or args.config):
        parser.error("converting needs --output and one of --preset / --config")
    output = convert_original_hydra(
        args.checkpoint, args.output, _load_config(args), dtype=getattr(torch, args.dtype) if args.dtype else None
    )
    print(f"Wrote {output}")


if __name__ == "__main__":
    main()
