"""LoRA with peft: the default config's scope, adapter size, merge equivalence, loading into models and pipelines,
training through HydraTrainer, and the fine-tuning example."""

import json
import re

import PIL.Image
import pytest
import torch
from packaging import version
from peft import PeftModel, get_peft_model, inject_adapter_in_model
from peft import __version__ as peft_version
from peft.tuners.lora import LoraLayer
from peft.utils.other import ModulesToSaveWrapper
from safetensors.torch import load_file
from transformers import TrainingArguments
from transformers.integrations.peft import MIN_PEFT_VERSION

from hydra_hf import HydraConfig, HydraForConditionalGeneration, HydraPipeline
from hydra_hf.data import make_shapes_dataset
from hydra_hf.lora import (
    HEAD_MODULES, hydra_lora_config, load_lora_adapter, lora_stage, lora_target_regex, lora_trainable_patterns,
)
from hydra_hf.training import HydraCollator, HydraTrainer

from .utils import flat_shape_image, load_script, tiny_hydra, tiny_processor

PROMPT = "a red square"
LLM_PROJECTION = re.compile(r"model\.language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)")


def randomize_adapter(model, seed: int = 0) -> None:
    """Give a fresh adapter an effect: random LoRA B matrices and trainable token rows (peft starts both at zero) and
    perturbed head copies."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or ".modules_to_save." in name or "trainable_tokens_delta" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)


def lora_model(seed: int = 0, **config) -> PeftModel:
    model = get_peft_model(tiny_hydra(), hydra_lora_config(**config))
    randomize_adapter(model, seed)
    return model.eval()


def pil(colour=(220, 40, 40), shape="square") -> PIL.Image.Image:
    pixels = ((flat_shape_image(colour, shape) + 1) * 127.5).round().byte()
    return PIL.Image.fromarray(pixels.permute(1, 2, 0).numpy())


def understanding_inputs():
    processor = tiny_processor()
    messages = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is the shape ?"}]}]
    ]
    return processor(text=processor.apply_chat_template(messages, add_generation_prompt=True), images=[pil()])


def outputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of an understanding prompt and the flow velocity of a generation step: every part LoRA touches."""
    processor = tiny_processor()
    prompt = processor(text=processor.build_generation_prompt(PROMPT))
    latents = torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(**understanding_inputs()).logits
        velocity = model.flow_velocity(
            latents, 0.7, input_ids=prompt["input_ids"], attention_mask=prompt["attention_mask"]
        )
    return logits, velocity


def assert_close(a, b, atol=1e-5):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


def pipeline_latents(pipe) -> torch.Tensor:
    return pipe(PROMPT, num_inference_steps=2, output_type="latent", generator=torch.Generator().manual_seed(0)).images


# ------------------------------------------------------------------------------------------------ the config
def test_target_regex_matches_exactly_the_llm_projections_on_real_module_names():
    names = [name for name, _ in tiny_hydra().named_modules()]
    llm = {name for name in names if LLM_PROJECTION.fullmatch(name)}
    assert len(llm) == 2 * 7  # two layers of q/k/v/o + gate/up/down
    assert {n for n in names if re.fullmatch(lora_target_regex(), n)} == llm
    assert {n for n in names if re.fullmatch(lora_target_regex("attention"), n)} == {n for n in llm if "self_attn" in n}
    assert {n for n in names if re.fullmatch(lora_target_regex("mlp"), n)} == {n for n in llm if ".mlp." in n}
    with_vision = {n for n in names if re.fullmatch(lora_target_regex(include_vision=True), n)} - llm
    assert with_vision and all(n.startswith("model.vision_model.sem_vit.layers.") for n in with_vision)
    with pytest.raises(ValueError, match="target"):
        lora_target_regex("everything")


def test_get_peft_model_adapts_the_llm_only_and_trains_the_heads_in_full():
    model = get_peft_model(tiny_hydra(), hydra_lora_config())
    base = model.get_base_model()
    adapted = {name for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    assert adapted and all(LLM_PROJECTION.fullmatch(name) for name in adapted)
    assert not any(isinstance(module, LoraLayer) for module in base.model.vision_model.modules())  # no vision LoRA
    wrapped = {
        name.rsplit(".", 1)[-1] for name, module in base.named_modules() if isinstance(module, ModulesToSaveWrapper)
    }
    assert wrapped == set(HEAD_MODULES) - {"repa_head"}  # this model has no REPA head
    with_repa = get_peft_model(tiny_hydra(repa_weight=0.5), hydra_lora_config()).get_base_model()
    assert isinstance(with_repa.repa_head, ModulesToSaveWrapper)
    # The stage patterns select exactly what peft made trainable (so HydraTrainer's stage and peft agree).
    patterns = [re.compile(p) for p in lora_trainable_patterns()]
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in model.named_parameters() if any(p.search(name) for p in patterns)}

    heads_frozen = get_peft_model(tiny_hydra(), hydra_lora_config(train_heads=False, include_vision=True))
    assert not any(isinstance(m, ModulesToSaveWrapper) for m in heads_frozen.modules())
    assert any(isinstance(m, LoraLayer) for m in heads_frozen.get_base_model().model.vision_model.sem_vit.modules())
    assert not any(isinstance(m, LoraLayer) for m in heads_frozen.get_base_model().model.vision_model.gen_vit.modules())


def test_adapter_size_against_the_full_model(tmp_path):
    full = tiny_hydra()
    full.save_pretrained(tmp_path / "full")
    full_size = (tmp_path / "full" / "model.safetensors").stat().st_size
    for train_heads in (True, False):
        model = get_peft_model(tiny_hydra(), hydra_lora_config(train_heads=train_heads))
        model.save_pretrained(tmp_path / f"heads_{train_heads}")
        size = (tmp_path / f"heads_{train_heads}" / "adapter_model.safetensors").stat().st_size
        print(f"tiny, r=16, train_heads={train_heads}: adapter {size / 1e3:.0f} kB", end=" ")
        print(f"/ full {full_size / 1e3:.0f} kB = {size / full_size:.3f}")
        assert size < full_size
    # At the paper's 1.5B scale (built on the meta device: shapes only), the default adapter is a few percent.
    with torch.device("meta"):
        big = HydraForConditionalGeneration(HydraConfig.from_preset("hydra-1.5b"))
    total = sum(p.numel() for p in big.parameters())
    big = get_peft_model(big, hydra_lora_config(), low_cpu_mem_usage=True)
    lora = sum(p.numel() for n, p in big.named_parameters() if ".lora_" in n)
    trained = sum(p.numel() for p in big.parameters() if p.requires_grad)
    print(f"hydra-1.5b, r=16: LoRA {lora / 1e6:.1f}M ({lora / total:.2%}),", end=" ")
    print(f"with heads {trained / 1e6:.1f}M ({trained / total:.2%}) of {total / 1e9:.2f}B")
    assert lora / total < 0.01 and trained / total < 0.05


# -------------------------------------------------------------------------------------------- merge, load
def test_merged_and_unmerged_outputs_agree_in_fp32():
    model = lora_model()
    unmerged = outputs(model)
    assert not torch.allclose(unmerged[1], outputs(tiny_hydra())[1], atol=1e-3)  # the adapter does something
    merged = model.merge_and_unload()
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    assert_close(outputs(merged), unmerged)


def test_adapter_loads_into_a_fresh_model_and_into_a_pipeline(tmp_path):
    trained = lora_model()
    expected = outputs(trained)
    trained.save_pretrained(tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in key for key in saved) and not any("vision_model" in key for key in saved)

    fresh = tiny_hydra()
    fresh.load_adapter(str(tmp_path / "adapter"))
    assert_close(outputs(fresh), expected)
    assert_close(outputs(PeftModel.from_pretrained(tiny_hydra(), tmp_path / "adapter")), expected)

    pipe = HydraPipeline(model=tiny_hydra(), processor=tiny_processor())
    pipe.set_progress_bar_config(disable=True)
    base, base_latents = outputs(pipe.model), pipeline_latents(pipe)
    assert pipe.load_lora_weights(tmp_path / "adapter") == "default_0"
    assert_close(outputs(pipe.model), expected)
    adapted_latents = pipeline_latents(pipe)
    assert (adapted_latents - base_latents).abs().max() > 1e-3

    pipe.unload_lora_weights()
    assert not any(isinstance(m, (LoraLayer, ModulesToSaveWrapper)) for m in pipe.model.modules())
    assert torch.equal(pipeline_latents(pipe), base_latents)  # the original model again, exactly
    assert_close(outputs(pipe.model), base, atol=0)

    pipe.load_lora_weights(tmp_path / "adapter")
    pipe.fuse_lora()
    assert_close(outputs(pipe.model), expected)
    torch.testing.assert_close(pipeline_latents(pipe), adapted_latents, atol=1e-5, rtol=0)
    pipe.unfuse_lora()
    assert_close(outputs(pipe.model), expected)
    pipe.unload_lora_weights()
    assert_close(outputs(pipe.model), base)  # fuse + unfuse leave float rounding in the weights

    # Fused, then unloaded: the diffusers idiom for keeping the adapted weights without adapter layers.
    pipe.load_lora_weights(tmp_path / "adapter", adapter_name="kept")
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    assert not any(isinstance(m, (LoraLayer, ModulesToSaveWrapper)) for m in pipe.model.modules())
    assert_close(outputs(pipe.model), expected)


def test_a_trained_token_row_reaches_the_tied_lm_head_when_loaded(tmp_path):
    """The adapter file holds the embedding's delta only (transformers' load report calls the LM head's MISSING):
    with tied embeddings the loaded LM head must still score the new token with the trained row."""
    rows = [5]
    trained = get_peft_model(tiny_hydra(text_config={"tie_word_embeddings": True}),
                             hydra_lora_config(trainable_token_indices={"embed_tokens": rows}))
    randomize_adapter(trained)
    trained.save_pretrained(tmp_path / "adapter")
    assert not any("lm_head" in key for key in load_file(tmp_path / "adapter" / "adapter_model.safetensors"))

    fresh = tiny_hydra(text_config={"tie_word_embeddings": True})
    base_row = fresh.get_output_embeddings().weight[rows].detach().clone()
    load_lora_adapter(fresh, tmp_path / "adapter")
    hidden = torch.randn(1, 3, fresh.config.text_config.hidden_size, generator=torch.Generator().manual_seed(1))
    expected = hidden @ fresh.get_input_embeddings()(torch.tensor(rows)).T  # the trained row, through the embedding
    assert not torch.allclose(expected, hidden @ base_row.T)
    assert_close(fresh.get_output_embeddings()(hidden)[..., rows], expected)


def test_pipeline_switches_between_loaded_adapters(tmp_path):
    for seed in (0, 1):
        lora_model(seed).save_pretrained(tmp_path / f"adapter_{seed}")
    pipe = HydraPipeline(model=tiny_hydra(), processor=tiny_processor())
    first = pipe.load_lora_weights(tmp_path / "adapter_0")
    second = pipe.load_lora_weights(tmp_path / "adapter_1")
    assert (first, second) == ("default_0", "default_1")
    assert_close(outputs(pipe.model), outputs(lora_model(1)))  # the newest adapter is the active one
    with pytest.raises(ValueError, match="already loaded"):
        pipe.load_lora_weights(tmp_path / "adapter_0", adapter_name=first)


def test_fuse_lora_scale_applies_while_fused_only(tmp_path):
    lora_model(train_heads=False).save_pretrained(tmp_path / "adapter")
    pipe = HydraPipeline(model=tiny_hydra(), processor=tiny_processor())
    base = outputs(pipe.model)
    pipe.load_lora_weights(tmp_path / "adapter")
    adapted = outputs(pipe.model)
    pipe.fuse_lora(lora_scale=0.0)
    assert_close(outputs(pipe.model), base)
    pipe.unfuse_lora()
    assert_close(outputs(pipe.model), adapted)


def test_config_works_with_adapter_injection():
    """What transformers' `add_adapter` does (`inject_adapter_in_model`), on a plain HYDRA model."""
    model = inject_adapter_in_model(hydra_lora_config(), tiny_hydra())
    adapted = {name for name, module in model.named_modules() if isinstance(module, LoraLayer)}
    assert len(adapted) == 14 and all(LLM_PROJECTION.fullmatch(name) for name in adapted)
    assert isinstance(model.flow_head, ModulesToSaveWrapper)


@pytest.mark.xfail(
    version.parse(peft_version) < version.parse(MIN_PEFT_VERSION),
    reason=f"transformers' add_adapter requires peft >= {MIN_PEFT_VERSION}, installed {peft_version}",
    raises=ValueError,
    strict=True,
)
def test_transformers_add_adapter():
    model = tiny_hydra()
    model.add_adapter(hydra_lora_config())
    adapted = {name for name, module in model.named_modules() if isinstance(module, LoraLayer)}
    assert len(adapted) == 14 and model.active_adapters() == ["default"]


# ------------------------------------------------------------------------------------------------ training
def test_hydra_trainer_lora_stage_trains_exactly_the_adapter(tmp_path):
    model = get_peft_model(tiny_hydra(), hydra_lora_config())
    peft_trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    rows = [
        {
            "image": pil(colour, shape),
            "caption": f"a {word} {shape}",
            "question": "what color is the shape ?",
            "answer": word,
        }
        for colour, word in (((220, 40, 40), "red"), ((40, 80, 220), "blue"))
        for shape in ("square", "circle")
    ]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
        logging_steps=1,
    )
    trainer = HydraTrainer(
        model, args, stage=lora_stage(), train_dataset=rows, data_collator=HydraCollator(tiny_processor())
    )
    assert set(trainer.trainable_parameter_names) == peft_trainable
    trainer.train()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed <= peft_trainable
    assert any(".lora_B." in name for name in changed) and any(".modules_to_save." in name for name in changed)


def test_finetune_lora_example_writes_an_adapter_with_its_card(tmp_path):
    model_dir, data_dir, out_dir = tmp_path / "model", tmp_path / "data", tmp_path / "out"
    tiny_hydra().save_pretrained(model_dir)
    tiny_processor().save_pretrained(model_dir)
    make_shapes_dataset(4, seed=3, featured_color="pink").save_to_disk(str(data_dir))
    example = load_script("examples/finetune_lora.py")
    example.main(
        [
            "--model_name_or_path",
            str(model_dir),
            "--base_model_id",
            "user/hydra-tiny",
            "--dataset",
            str(data_dir),
            "--output_dir",
            str(out_dir),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--lora_r",
            "4",
            "--train_tokens",
            "red",
            "--learning_rate",
            "1e-2",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--use_cpu",
            "--disable_tqdm",
            "true",
        ]
    )
    assert {p.name for p in out_dir.iterdir()} == {"adapter_model.safetensors", "adapter_config.json", "README.md"}
    config = json.loads((out_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "user/hydra-tiny" and config["r"] == 4
    card = (out_dir / "README.md").read_text()
    assert "library_name: peft" in card and "base_model: user/hydra-tiny" in card and "- **steps**: 2" in card
    assert any("trainable_tokens_delta" in key for key in load_file(out_dir / "adapter_model.safetensors"))

    pipe = HydraPipeline(model=tiny_hydra(), processor=tiny_processor())
    pipe.set_progress_bar_config(disable=True)
    before = pipeline_latents(pipe)
    pipe.load_lora_weights(out_dir)
    assert (pipeline_latents(pipe) - before).abs().max() > 0
