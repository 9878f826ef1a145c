"""Converters: a pretrained InternViT + LLM -> an initial HYDRA that computes exactly the sources, and the assumed
original-release layout -> hydra_hf and back, with loud failures instead of silent partial loads."""

import hashlib
import json

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import save_file
from transformers import (
    InternVLVisionConfig,
    InternVLVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from conversion import convert_original_hydra as original
from conversion import init_from_pretrained as init
from hydra_hf import HydraForConditionalGeneration, HydraProcessor, HydraTokModel

from .utils import random_pixels, tiny_hydra, tiny_processor

TOLERANCE = 1e-5
NUM_LAYERS, NUM_GEN_LAYERS, HEADS = 4, 2, 4
# Small new modules so the tests stay fast; the ViT's own shape comes from the source.
TINY_NEW_MODULES = dict(
    latent_channels=8,
    decoder_hidden_size=32,
    decoder_num_layers=1,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=64,
)
IMAGENET_MEAN, IMAGENET_STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


# --------------------------------------------------------------------------------------------------- sources
@pytest.fixture(scope="module")
def internvl_vit() -> InternVLVisionModel:
    """InternViT-300M's structure (LayerScale, qkv bias, no QK-norm, mean pooling so no final norm), tiny, with
    every weight randomised so that a swapped or dropped tensor shows."""
    config = InternVLVisionConfig(
        hidden_size=32,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        attention_bias=True,
    )
    torch.manual_seed(0)
    model = InternVLVisionModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model


def to_original_internvit_naming(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' InternVL vision names -> OpenGVLab's InternViT names, written independently of the converter."""
    renames = {
        "embeddings.cls_token": "embeddings.class_embedding",
        "embeddings.patch_embeddings.projection": "embeddings.patch_embedding",
        "embeddings.position_embeddings": "embeddings.position_embedding",
        "encoder.layer.": "encoder.layers.",
        "attention.projection_layer": "attn.proj",
        "layernorm_before": "norm1",
        "layernorm_after": "norm2",
        "lambda_1": "ls1",
        "lambda_2": "ls2",
    }
    converted = {}
    for key, value in state.items():
        if ".attention.q_proj." in key:
            prefix, param = key.split(".attention.q_proj.")
            parts = [state[f"{prefix}.attention.{name}_proj.{param}"] for name in "qkv"]
            key, value = f"{prefix}.attn.qkv.{param}", torch.cat(parts)
        elif ".attention.k_proj." in key or ".attention.v_proj." in key:
            continue
        for old, new in renames.items():
            key = key.replace(old, new)
        converted[key] = value
    return converted


def write_vit_source(model: InternVLVisionModel, naming: str, folder):
    """The ViT as published: transformers' folder, OpenGVLab's folder, or a bare file of a full checkpoint."""
    if naming == "internvl_vision":
        model.save_pretrained(folder)
        return folder, {}
    state = to_original_internvit_naming(model.state_dict())
    folder.mkdir()
    if naming == "internvit":
        save_file(state, folder / "model.safetensors")
        config = dict(
            model_type="intern_vit_6b", architectures=["InternVisionModel"], hidden_size=32,
            num_attention_heads=HEADS, intermediate_size=64, num_hidden_layers=NUM_LAYERS, image_size=32, patch_size=8,
            qkv_bias=True, qk_normalization=False, norm_type="layer_norm", layer_norm_eps=1e-6, hidden_act="gelu",
            initializer_factor=0.1,
        )  # fmt: skip
        (folder / "config.json").write_text(json.dumps(config))
        return folder, {}
    # A full InternVL chat checkpoint holds the ViT under `vision_model.` next to other parts; no config here.
    state = {f"vision_model.{key}": value for key, value in state.items()} | {"mlp1.1.weight": torch.zeros(4, 4)}
    save_file(state, folder / "internvl.safetensors")
    return folder / "internvl.safetensors", {"num_attention_heads": HEADS}


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """A tiny Qwen2 with a tokenizer that already knows the image tokens (no resize needed)."""
    tokenizer = tiny_processor().tokenizer
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("qwen2")
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny Llama with tied embeddings and no tokenizer: the image tokens are appended and the vocabulary grows."""
    config = LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(2)
    folder = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------- init_from_pretrained
@pytest.mark.parametrize("naming", ["internvl_vision", "internvit", "internvit_in_full_checkpoint"])
def test_hydra_tok_blocks_reproduce_the_source_vit(internvl_vit, qwen_dir, tmp_path, naming):
    source, extra = write_vit_source(internvl_vit, naming, tmp_path / "vit")
    initial = init.build_initial_hydra(
        source, qwen_dir, num_gen_layers=NUM_GEN_LAYERS, vision_overrides=TINY_NEW_MODULES, **extra
    )
    vision = initial.model.model.vision_model
    config = vision.config
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == (32, HEADS, 64)
    assert (config.image_size, config.patch_size, config.num_layers, config.qkv_bias) == (32, 8, NUM_LAYERS, True)
    assert config.distillation_layers == list(range(1, NUM_LAYERS + 1))

    pixels = random_pixels(2, 32)
    normalised = ((pixels + 1) / 2 - IMAGENET_MEAN.view(1, 3, 1, 1)) / IMAGENET_STD.view(1, 3, 1, 1)
    with torch.no_grad():
        expected = internvl_vit(normalised, output_hidden_states=True).hidden_states[1:]
        for tokenizer_model in (vision, initial.teacher):
            out = tokenizer_model(pixels, bypass_bottleneck=True, output_distillation_states=True)
            # Every block (patch tokens), plus the full sequence (CLS included) after Gen-ViT and after Sem-ViT.
            diffs = [(got - want[:, 1:]).abs().max() for got, want in zip(out.distillation_hidden_states, expected)]
            diffs += [(out.hidden_mid - expected[NUM_GEN_LAYERS - 1]).abs().max()]
            diffs += [(out.semantic_features - expected[-1]).abs().max()]
            assert len(diffs) == NUM_LAYERS + 2
            assert max(diffs) <= TOLERANCE, diffs
    assert not any(param.requires_grad for param in initial.teacher.parameters())


def test_vit_conversion_names_keys_it_cannot_place(internvl_vit):
    state = dict(internvl_vit.state_dict())
    state["encoder.layer.0.attention.q_norm.weight"] = torch.ones(32)
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.attention\.q_norm\.weight"):
        init.convert_vit_state_dict(state, init.detect_vit_format(state), NUM_GEN_LAYERS)


@pytest.mark.parametrize("llm", ["qwen2", "llama"])
def test_converted_llm_reproduces_the_source_logits(internvl_vit, qwen_dir, llama_dir, tmp_path, llm):
    folder, source_class = (qwen_dir, Qwen2ForCausalLM) if llm == "qwen2" else (llama_dir, LlamaForCausalLM)
    source = source_class.from_pretrained(folder).eval()
    vocab = source.config.vocab_size
    internvl_vit.save_pretrained(tmp_path / "vit")
    initial = init.build_initial_hydra(tmp_path / "vit", folder, vision_overrides=TINY_NEW_MODULES)
    model, config = initial.model, initial.model.config
    token_ids = [config.image_token_id, config.boi_token_id, config.eoi_token_id]
    if llm == "qwen2":  # the tokenizer's own image tokens: no new rows
        processor = initial.processor
        assert token_ids == [processor.image_token_id, processor.boi_token_id, processor.eoi_token_id]
        assert config.text_config.vocab_size == vocab
    else:  # no tokenizer: appended after the vocabulary, embeddings (tied) grown to fit
        assert initial.processor is None and token_ids == [vocab, vocab + 1, vocab + 2]
        assert config.text_config.vocab_size == vocab + 3 and config.tie_word_embeddings
    assert type(model.model.language_model).__name__ == type(source.model).__name__

    input_ids = torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    input_ids[input_ids == config.image_token_id] = 0
    with torch.no_grad():
        expected = source(input_ids).logits
        got = model(input_ids=input_ids).logits
    assert (got[..., :vocab] - expected).abs().max() <= TOLERANCE


def test_init_cli_writes_a_loadable_folder_with_card_and_teacher(internvl_vit, qwen_dir, tmp_path):
    internvl_vit.save_pretrained(tmp_path / "vit")
    output = tmp_path / "hydra-init"
    init.main([
        "--vit", str(tmp_path / "vit"), "--llm", str(qwen_dir), "--output", str(output), "--num-gen-layers", "1",
        "--vision-overrides", json.dumps(TINY_NEW_MODULES), "--vit-name", "OpenGVLab/InternViT-300M-448px-V2_5",
    ])  # fmt: skip
    model = HydraForConditionalGeneration.from_pretrained(output)
    teacher = HydraTokModel.from_pretrained(output, subfolder="teacher")
    assert (model.config.vision_config.num_gen_layers, model.config.vision_config.num_sem_layers) == (1, 3)
    student = model.model.vision_model.state_dict()
    for key, value in teacher.state_dict().items():
        if key.startswith(("embeddings.", "gen_vit.", "sem_vit.")):
            assert torch.equal(value, student[key]), key
    processor = HydraProcessor.from_pretrained(output)
    assert processor.image_token_id == model.config.image_token_id
    card = ModelCard.load(output / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.base_model == ["OpenGVLab/InternViT-300M-448px-V2_5", qwen_dir.name]
    assert "from_pretrained" in card.text

    with pytest.raises(ValueError, match="not an empty folder"):
        init.init_from_pretrained(tmp_path / "vit", qwen_dir, output)
    with pytest.raises(ValueError, match="is or contains the source"):
        init.init_from_pretrained(tmp_path / "vit", qwen_dir, tmp_path / "vit")


# ---------------------------------------------------------------------------------------- original release
@pytest.fixture
def release(tmp_path):
    """A synthetic release in the documented layout, plus the hydra_hf model it came from and its config.json."""
    model = tiny_hydra(seed=3)
    with torch.no_grad():  # zero-initialised layers would hide a swap between two of them
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    state = original.export_original_state_dict(model)
    checkpoint = tmp_path / "hydra_tiny" / "pytorch_model.bin"
    checkpoint.parent.mkdir()
    torch.save(state, checkpoint)
    model.config.save_pretrained(tmp_path / "config")
    return model, state, checkpoint, tmp_path / "config" / "config.json"


def test_original_release_round_trips_exactly(release, tmp_path):
    model, state, checkpoint, config = release
    assert any(key.startswith(original.VIT_LAYERS_PREFIX) for key in state) and "gsb.proj.weight" in state
    original.main([str(checkpoint), "--config", str(config), "--output", str(tmp_path / "converted")])
    assert (tmp_path / "converted" / "model.safetensors").exists()
    assert not list((tmp_path / "converted").glob("*.bin"))
    converted = HydraForConditionalGeneration.from_pretrained(tmp_path / "converted")
    expected, got = model.state_dict(), converted.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[key], expected[key]) for key in expected)


def test_original_release_with_tied_head_needs_no_lm_head(tmp_path):
    model = tiny_hydra(seed=4, text_config={"tie_word_embeddings": True})
    state = original.export_original_state_dict(model)
    del state["language_model.lm_head.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    output = original.convert_original_hydra(tmp_path / "pytorch_model.bin", tmp_path / "out", model.config)
    converted = HydraForConditionalGeneration.from_pretrained(output)
    assert torch.equal(converted.lm_head.weight, model.model.language_model.embed_tokens.weight)


def test_original_release_errors_name_every_bad_key(release, tmp_path):
    model, state, _, _ = release
    state = dict(state)
    state["mystery_branch.weight"] = torch.zeros(3)
    del state["gsb.unproj.bias"]
    state["mlp1.0.weight"] = torch.zeros(5, 5)
    torch.save(state, tmp_path / "broken.bin")
    with pytest.raises(ValueError) as error:
        original.convert_original_hydra(tmp_path / "broken.bin", tmp_path / "out", model.config)
    message = str(error.value)
    assert "mystery_branch.weight" in message
    assert "model.vision_model.bottleneck.unproj.bias" in message
    assert "model.projector.linear_1.weight: source (5, 5)" in message
    assert not (tmp_path / "out").exists()


def test_original_converter_never_overwrites_its_input(release):
    model, _, checkpoint, _ = release
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    for output in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        with pytest.raises(ValueError, match="Refusing"):
            original.convert_original_hydra(checkpoint, output, model.config)
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == digest


def test_inspect_lists_groups_and_their_targets(release, capsys):
    _, state, checkpoint, _ = release
    torch.save(state | {"mystery_branch.weight": torch.zeros(3)}, checkpoint)
    original.main([str(checkpoint), "--inspect"])
    printed = capsys.readouterr().out
    assert f"{len(state) + 1} tensors" in printed
    for line in (
        "vision_model.encoder.layers: 56 tensors",
        "-> model.vision_model.{gen_vit,sem_vit}.layers.",
        "language_model.model.layers:",
        "gsb.proj: 2 tensors",
        "-> model.vision_model.bottleneck.",
        "mystery_branch: 1 tensors",
        "UNMAPPED",
    ):
        assert line in printed, line


@pytest.mark.parametrize("script", [init, original])
def test_scripts_have_help(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out
