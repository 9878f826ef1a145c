"""Build an initial HYDRA from a pretrained InternViT and a pretrained decoder LLM, the paper's starting point.

HYDRA-TOK's blocks are InternViT's blocks: the first `num_gen_layers` become Gen-ViT and the rest Sem-ViT, so with
the bottleneck bypassed the new tokenizer computes exactly the source ViT. A copy of the tokenizer, taken before any
training, is saved in `teacher/`: it is the frozen self-distillation teacher. The LLM's base model and LM head are
copied unchanged; the three image tokens are added to its tokenizer, when the LLM folder has one, or appended after its
vocabulary otherwise, and the embeddings grow only if the ids fall beyond them. The new modules (GSB, pixel decoder,
projector, time embedding, flow head) keep their fresh initialisation.

The ViT is read from a folder (`config.json` + safetensors) or from one safetensors file, in either naming:

- OpenGVLab's InternViT (`model_type: intern_vit_6b`, e.g. InternViT-300M-448px-V2_5):
  `embeddings.class_embedding`, `encoder.layers.i.attn.qkv`, `ls1`, `norm1`, ...
- transformers' InternVL vision model (`model_type: internvl_vision`):
  `embeddings.cls_token`, `encoder.layer.i.attention.{q,k,v}_proj`, `lambda_1`, `layernorm_before`, ...

Inside a full InternVL checkpoint (`vision_model.`, `vision_tower.` or `model.vision_tower.` prefixes) only the
vision tower is read. Shapes (width, MLP, patch, image size, depth, qkv bias) come from the weights; heads, activation
and LayerNorm eps come from the config (or the arguments, for a bare file).

Usage (from the repository root):

    python -m conversion.init_from_pretrained --vit InternViT-300M-448px-V2_5 --llm Qwen2.5-1.5B-Instruct \
        --output hydra-1.5b-init [--num-gen-layers 12] [--vision-overrides '{"latent_channels": 64}']
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from hydra_hf import (
    HydraConfig,
    HydraForConditionalGeneration,
    HydraImageProcessor,
    HydraProcessor,
    HydraTokConfig,
    HydraTokModel,
)
from hydra_hf.hub import model_card

__all__ = [
    "INTERNVIT_FORMATS",
    "InitialHydra",
    "VitFormat",
    "build_initial_hydra",
    "check_output_path",
    "convert_vit_state_dict",
    "copy_checked",
    "detect_vit_format",
    "init_from_pretrained",
    "load_vit_source",
    "main",
    "state_problems",
    "vision_config_from_weights",
    "write_model_card",
]

# Prefixes of the vision tower inside full InternVL checkpoints (OpenGVLab chat models, transformers' InternVL).
VISION_TOWER_PREFIXES = ("model.vision_tower.", "vision_tower.", "vision_model.")

# Source-config settings that HYDRA-TOK's blocks cannot express (InternViT-6B's QK-norm and RMSNorm; a final
# LayerNorm, which InternVL's vision model has when it does not mean-pool).
UNSUPPORTED_SETTINGS = {
    "use_qk_norm": True,
    "qk_normalization": True,
    "norm_type": "rms_norm",
    "use_mean_pooling": False,
}


@dataclass(frozen=True)
class VitFormat:
    """One InternViT naming: its embedding names, its per-block names and how its attention input is stored."""

    name: str
    marker: str  # a key only this naming has
    layer_prefix: str
    embeddings: dict[str, str]
    layer: dict[str, str]
    split_qkv: tuple[str, str, str] | None = None  # q, k, v projections concatenated into HYDRA-TOK's `attn.qkv`


_LINEAR = ("weight", "bias")

INTERNVIT_FORMATS: dict[str, VitFormat] = {
    "internvit": VitFormat(
        name="internvit",
        marker="embeddings.class_embedding",
        layer_prefix="encoder.layers.",
        embeddings={
            "embeddings.class_embedding": "embeddings.class_embedding",
            "embeddings.patch_embedding.weight": "embeddings.patch_embedding.weight",
            "embeddings.patch_embedding.bias": "embeddings.patch_embedding.bias",
            "embeddings.position_embedding": "embeddings.position_embedding",
        },
        # HYDRA-TOK's blocks use InternViT's own names.
        layer={
            **{
                f"{module}.{p}": f"{module}.{p}"
                for module in ("attn.qkv", "attn.proj", "norm1", "norm2", "mlp.fc1", "mlp.fc2")
                for p in _LINEAR
            },
            "ls1": "ls1",
            "ls2": "ls2",
        },
    ),
    "internvl_vision": VitFormat(
        name="internvl_vision",
        marker="embeddings.cls_token",
        layer_prefix="encoder.layer.",
        embeddings={
            "embeddings.cls_token": "embeddings.class_embedding",
            "embeddings.patch_embeddings.projection.weight": "embeddings.patch_embedding.weight",
            "embeddings.patch_embeddings.projection.bias": "embeddings.patch_embedding.bias",
            "embeddings.position_embeddings": "embeddings.position_embedding",
        },
        layer={
            **{f"attention.projection_layer.{p}": f"attn.proj.{p}" for p in _LINEAR},
            **{f"layernorm_before.{p}": f"norm1.{p}" for p in _LINEAR},
            **{f"layernorm_after.{p}": f"norm2.{p}" for p in _LINEAR},
            **{f"mlp.{fc}.{p}": f"mlp.{fc}.{p}" for fc in ("fc1", "fc2") for p in _LINEAR},
            "lambda_1": "ls1",
            "lambda_2": "ls2",
        },
        split_qkv=("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    ),
}


@dataclass
class InitialHydra:
    """The model, its frozen teacher and, when the LLM folder has a tokenizer, a processor."""

    model: HydraForConditionalGeneration
    teacher: HydraTokModel
    processor: HydraProcessor | None


# ------------------------------------------------------------------------------------------------- shared helpers
def check_output_path(output: str | Path, sources: Iterable[str | Path]) -> Path:
    """The resolved `output`, refusing a source path, a folder holding one, and any existing non-empty path.

    Nothing is created here: `save_pretrained` makes the folder once the weights are ready.
    """
    output = Path(output).resolve()
    for source in sources:
        source = Path(source).resolve()
        if output == source or output in source.parents:
            raise ValueError(f"Refusing to write to {output}: it is or contains the source {source}")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"Refusing to write to {output}: it already exists and is not an empty folder")
    return output


def state_problems(
    module: nn.Module, tensors: dict[str, torch.Tensor], required: Iterable[str] | None = None
) -> list[str]:
    """Every key of `tensors` unknown to `module`, every `required` target key left unfilled, every shape mismatch.

    `required` defaults to all of the module's keys.
    """
    target = module.state_dict()
    required = set(target) if required is None else set(required)
    problems = []
    unknown = sorted(set(tensors) - set(target))
    if unknown:
        problems.append(f"{len(unknown)} key(s) with no place in {type(module).__name__}: {unknown}")
    unfilled = sorted(required - set(tensors))
    if unfilled:
        problems.append(f"{len(unfilled)} target key(s) left unfilled: {unfilled}")
    mismatched = [
        f"{key}: source {tuple(value.shape)} vs target {tuple(target[key].shape)}"
        for key, value in tensors.items()
        if key in target and value.shape != target[key].shape
    ]
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {mismatched}")
    return problems


def copy_checked(module: nn.Module, tensors: dict[str, torch.Tensor], required: Iterable[str] | None = None) -> None:
    """Load `tensors` into `module`, failing with all of `state_problems` at once rather than the first."""
    problems = state_problems(module, tensors, required)
    if problems:
        raise ValueError("Cannot load the weights:\n- " + "\n- ".join(problems))
    module.load_state_dict(tensors, strict=False)


def write_model_card(output: Path, base_models: Sequence[str], summary: str) -> None:
    """A README.md card from `hydra_hf.hub`'s template, with the sources as base models."""
    model_card(model_name=output.name, base_model=list(base_models), description=summary).save(output / "README.md")


# ------------------------------------------------------------------------------------------------------ the ViT
def load_vit_source(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The vision tower's weights (prefix stripped) and its config dict (empty without a `config.json`)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"No safetensors weights at {path} (give a folder holding *.safetensors or one file)")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    for prefix in VISION_TOWER_PREFIXES:
        if any(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
            break
    config_file = (path.parent if path.is_file() else path) / "config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    return state, config.get("vision_config", config)


def detect_vit_format(state_dict: dict[str, torch.Tensor]) -> VitFormat:
    for fmt in INTERNVIT_FORMATS.values():
        if fmt.marker in state_dict:
            return fmt
    markers = [fmt.marker for fmt in INTERNVIT_FORMATS.values()]
    raise ValueError(f"Not an InternViT checkpoint: none of {markers} found; first keys: {sorted(state_dict)[:8]}")


def _num_layers(state_dict: dict[str, torch.Tensor], fmt: VitFormat) -> int:
    prefix = fmt.layer_prefix
    indices = {int(key[len(prefix) :].split(".")[0]) for key in state_dict if key.startswith(prefix)}
    if indices != set(range(len(indices))):
        raise ValueError(f"ViT block indices are not contiguous from 0: {sorted(indices)}")
    return len(indices)


def _block_prefix(index: int, num_gen_layers: int) -> str:
    """Global block index -> its HYDRA-TOK home: Gen-ViT first, then Sem-ViT."""
    if index < num_gen_layers:
        return f"gen_vit.layers.{index}."
    return f"sem_vit.layers.{index - num_gen_layers}."


def convert_vit_state_dict(
    state_dict: dict[str, torch.Tensor], fmt: VitFormat, num_gen_layers: int
) -> dict[str, torch.Tensor]:
    """Source ViT keys -> HYDRA-TOK keys; fails naming every source key the tables do not consume."""
    converted, consumed = {}, set()

    def take(source: str, target: str) -> None:
        if source in state_dict:
            converted[target] = state_dict[source]
            consumed.add(source)

    for source, target in fmt.embeddings.items():
        take(source, target)
    for index in range(_num_layers(state_dict, fmt)):
        source_prefix, target_prefix = f"{fmt.layer_prefix}{index}.", _block_prefix(index, num_gen_layers)
        for source, target in fmt.layer.items():
            take(source_prefix + source, target_prefix + target)
        if fmt.split_qkv is None:
            continue
        for param in _LINEAR:
            parts = [f"{source_prefix}{projection}.{param}" for projection in fmt.split_qkv]
            if all(part in state_dict for part in parts):
                converted[f"{target_prefix}attn.qkv.{param}"] = torch.cat([state_dict[part] for part in parts])
                consumed.update(parts)
    unconsumed = sorted(set(state_dict) - consumed)
    if unconsumed:
        raise ValueError(
            f"{len(unconsumed)} source ViT key(s) have no place in HYDRA-TOK ({fmt.name} naming): {unconsumed}"
        )
    return converted


def vision_config_from_weights(
    vit_tensors: dict[str, torch.Tensor],
    source_config: dict,
    num_gen_layers: int,
    num_attention_heads: int | None = None,
    **overrides,
) -> HydraTokConfig:
    """HYDRA-TOK's config: ViT shapes read off the converted weights, heads/act/eps from the source config.

    `overrides` set the new modules (latent width, decoder, distillation layers...), never the ViT's own shape.
    """
    bad = {key: value for key, value in UNSUPPORTED_SETTINGS.items() if source_config.get(key) == value}
    if bad:
        raise ValueError(f"The source ViT uses settings HYDRA-TOK's blocks cannot express: {bad}")
    heads = num_attention_heads or source_config.get("num_attention_heads")
    if heads is None:
        raise ValueError("The source has no config.json: pass num_attention_heads (--vit-num-attention-heads)")
    patch = vit_tensors["embeddings.patch_embedding.weight"]
    num_positions = vit_tensors["embeddings.position_embedding"].shape[1] - 1
    side = round(num_positions**0.5)
    if side * side != num_positions:
        raise ValueError(f"{num_positions} patch positions do not form a square grid")
    num_layers = sum(1 for key in vit_tensors if key.endswith("mlp.fc1.weight"))
    vit_fields = dict(
        hidden_size=patch.shape[0],
        num_channels=patch.shape[1],
        patch_size=patch.shape[-1],
        image_size=side * patch.shape[-1],
        num_attention_heads=heads,
        intermediate_size=vit_tensors["gen_vit.layers.0.mlp.fc1.weight"].shape[0],
        hidden_act=source_config.get("hidden_act", "gelu"),
        layer_norm_eps=source_config.get("layer_norm_eps", 1e-6),
        qkv_bias="gen_vit.layers.0.attn.qkv.bias" in vit_tensors,
        use_cls_token=True,
        layerscale_init=source_config.get("layer_scale_init_value", source_config.get("initializer_factor", 0.1)),
        num_gen_layers=num_gen_layers,
        num_sem_layers=num_layers - num_gen_layers,
    )
    clash = sorted(set(overrides) & set(vit_fields))
    if clash:
        raise ValueError(f"{clash} follow from the source ViT and cannot be overridden")
    return HydraTokConfig(**vit_fields, **overrides)


# ------------------------------------------------------------------------------------------------ the whole model
def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").exists() or (folder / "tokenizer.json").exists()


def build_initial_hydra(
    vit_path: str | Path,
    llm_path: str | Path,
    num_gen_layers: int | None = None,
    num_attention_heads: int | None = None,
    vision_overrides: dict | None = None,
    config_overrides: dict | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> InitialHydra:
    """HYDRA with the ViT and LLM weights copied in, its frozen teacher, and a processor when the LLM has a tokenizer.

    num_gen_layers: the Gen-ViT depth (default: half the ViT, the paper's 12 + 12).
    vision_overrides / config_overrides: `HydraTokConfig` / `HydraConfig` fields of the new modules.
    seed: seeds the fresh initialisation of the new modules and of any new embedding rows.
    """
    vit_path, llm_path = Path(vit_path), Path(llm_path)
    for path in (vit_path, llm_path):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist (the converter reads local folders only)")
    vit_state, vit_config = load_vit_source(vit_path)
    fmt = detect_vit_format(vit_state)
    num_layers = _num_layers(vit_state, fmt)
    num_gen_layers = num_layers // 2 if num_gen_layers is None else num_gen_layers
    if not 0 < num_gen_layers < num_layers:
        raise ValueError(
            f"num_gen_layers must lie in 1..{num_layers - 1} for a {num_layers}-block ViT, got {num_gen_layers}"
        )
    vit_tensors = convert_vit_state_dict(vit_state, fmt, num_gen_layers)
    vision_config = vision_config_from_weights(
        vit_tensors, vit_config, num_gen_layers, num_attention_heads, **(vision_overrides or {})
    )

    llm = AutoModelForCausalLM.from_pretrained(llm_path, dtype=dtype)
    processor = None
    if _has_tokenizer(llm_path):
        image_processor = HydraImageProcessor(
            size={"height": vision_config.image_size, "width": vision_config.image_size},
            patch_size=vision_config.patch_size,
        )
        processor = HydraProcessor(image_processor=image_processor, tokenizer=AutoTokenizer.from_pretrained(llm_path))
        token_ids = (processor.image_token_id, processor.boi_token_id, processor.eoi_token_id)
    else:
        vocab = llm.config.get_text_config().vocab_size
        token_ids = (vocab, vocab + 1, vocab + 2)
    torch.manual_seed(seed)
    if max(token_ids) >= llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(max(token_ids) + 1)
    if getattr(llm.get_output_embeddings(), "bias", None) is not None:
        raise ValueError("The LLM's LM head has a bias; HYDRA's LM head has none")

    config = HydraConfig(
        text_config=llm.config.get_text_config().to_dict(),
        vision_config=vision_config,
        image_token_id=token_ids[0],
        boi_token_id=token_ids[1],
        eoi_token_id=token_ids[2],
        **(config_overrides or {}),
    )
    model = HydraForConditionalGeneration._from_config(config, dtype=dtype).eval()
    vision = model.model.vision_model
    vit_keys = [key for key in vision.state_dict() if key.startswith(("embeddings.", "gen_vit.", "sem_vit."))]
    copy_checked(vision, vit_tensors, required=vit_keys)
    copy_checked(model.model.language_model, llm.base_model.state_dict())
    copy_checked(model.lm_head, {"weight": llm.get_output_embeddings().weight})
    teacher = copy.deepcopy(vision).requires_grad_(False)
    return InitialHydra(model=model, teacher=teacher, processor=processor)


def init_from_pretrained(
    vit_path: str | Path,
    llm_path: str | Path,
    output: str | Path,
    save_teacher: bool = True,
    vit_name: str | None = None,
    llm_name: str | None = None,
    **build_kwargs,
) -> Path:
    """Build the initial HYDRA (see `build_initial_hydra`) and save it, the teacher and the processor in `output`.

    vit_name / llm_name: the sources' Hub ids for the model card's `base_model` (default: their folder names).
    """
    output = check_output_path(output, [vit_path, llm_path])
    initial = build_initial_hydra(vit_path, llm_path, **build_kwargs)
    initial.model.save_pretrained(output)
    if initial.processor is not None:
        initial.processor.save_pretrained(output)
    if save_teacher:
        initial.teacher.save_pretrained(output / "teacher")
    summary = (
        "An untrained HYDRA (arXiv 2603.15228) for `hydra_hf`: HYDRA-TOK's ViT blocks come from "
        f"`{vit_name or Path(vit_path).name}` (Gen-ViT + Sem-ViT), the LLM from `{llm_name or Path(llm_path).name}`; "
        "the bottleneck, pixel decoder, projector, time embedding and flow head are freshly initialised."
        + (
            " `teacher/` holds the frozen copy of the ViT used for self-distillation: "
            '`HydraTokModel.from_pretrained(path, subfolder="teacher")`.'
            if save_teacher
            else ""
        )
    )
    write_model_card(
        output,
        [vit_name or Path(vit_path).name, llm_name or Path(llm_path).name],
        summary,
    )
    return output


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vit", required=True, help="InternViT folder (config.json + safetensors) or one safetensors")
    parser.add_argument("--llm", required=True, help="folder of an AutoModelForCausalLM (and its tokenizer)")
    parser.add_argument("--output", required=True, help="new (or empty) folder to write")
    parser.add_argument("--num-gen-layers", type=int, help="Gen-ViT depth (default: half the ViT)")
    parser.add_argument("--vit-num-attention-heads", type=int, help="ViT heads, needed when the ViT has no config.json")
    parser.add_argument(
        "--vision-overrides", type=json.loads, default={}, help="JSON dict of HydraTokConfig fields of the new modules"
    )
    parser.add_argument("--config-overrides", type=json.loads, default={}, help="JSON dict of HydraConfig fields")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new modules' initialisation")
    parser.add_argument("--no-teacher", action="store_true", help="do not save the frozen teacher in teacher/")
    parser.add_argument("--vit-name", help="Hub id of the ViT for the model card (default: folder name)")
    parser.add_argument("--llm-name", help="Hub id of the LLM for the model card (default: folder name)")
    args = parser.parse_args(argv)
    output = init_from_pretrained(
        args.vit,
        args.llm,
        args.output,
        save_teacher=not args.no_teacher,
        vit_name=args.vit_name,
        llm_name=args.llm_name,
        num_gen_layers=args.num_gen_layers,
        num_attention_heads=args.vit_num_attention_heads,
        vision_overrides=args.vision_overrides,
        config_overrides=args.config_overrides,
        dtype=getattr(torch, args.dtype),
        seed=args.seed,
    )
    print(f"Wrote the initial HYDRA to {output}")


if __name__ == "__main__":
    main()
