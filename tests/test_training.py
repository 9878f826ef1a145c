import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback, TrainingArguments

from hydra_hf import HydraForConditionalGeneration, HydraImageProcessor, HydraTokConfig, HydraTokModel
from hydra_hf.data import make_shapes_dataset
from hydra_hf.training import (
    HydraCollator,
    HydraTokTrainer,
    HydraTrainer,
    PatchDiscriminator,
    PerceptualLoss,
    TokenizerCollator,
    apply_stage,
    discriminator_hinge_loss,
    generator_adversarial_loss,
    last_complete_checkpoint,
    load_training_dataset,
    resolve_stage,
)
from hydra_hf.training.ema import EMA_WEIGHTS
from hydra_hf.training.stages import TOKENIZER_STAGES, UNIFIED_STAGES

from .utils import random_pixels, tiny_hydra, tiny_processor

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes_dataset():
    return make_shapes_dataset(24, seed=0)


def tiny_tokenizer_model(seed: int = 0) -> HydraTokModel:
    torch.manual_seed(seed)
    return HydraTokModel(HydraTokConfig.from_preset("tiny"))


def image_processor() -> HydraImageProcessor:
    return HydraImageProcessor(size={"height": 32, "width": 32}, patch_size=8)


def training_args(output_dir, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(output_dir), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-3, save_steps=3,
        logging_steps=1, remove_unused_columns=False, report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
        dataloader_num_workers=0,
    )
    return TrainingArguments(**{**values, **overrides})


class StopAt(TrainerCallback):
    """Simulates an interruption right after a checkpoint."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def step_losses(trainer) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}


# ---------------------------------------------------------------------------------------------------------- stages
def test_each_stage_trains_exactly_what_its_config_says():
    tokenizer = tiny_tokenizer_model()
    assert len(apply_stage(tokenizer, TOKENIZER_STAGES["1"])) == len(list(tokenizer.parameters()))
    decoder_only = apply_stage(tokenizer, TOKENIZER_STAGES["2"])
    assert decoder_only and all(name.startswith("decoder.") for name in decoder_only)
    assert sum(1 for name, _ in tokenizer.named_parameters() if name.startswith("decoder.")) == len(decoder_only)

    model = tiny_hydra(repa_weight=0.5)
    stage_one = set(apply_stage(model, UNIFIED_STAGES["I"]))
    assert stage_one and all(name.split(".")[0] in ("flow_head", "repa_head") or name.startswith(("model.projector.", "model.time_embedding.")) for name in stage_one)
    assert any(name.startswith("repa_head.") for name in stage_one)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == stage_one
    assert not any(p.requires_grad for p in model.model.language_model.parameters())

    stage_two = set(apply_stage(model, UNIFIED_STAGES["II"]))
    assert stage_one < stage_two
    assert {n for n, _ in model.model.language_model.named_parameters()} <= {n.removeprefix("model.language_model.") for n in stage_two if n.startswith("model.language_model.")}
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith("model.vision_model.") for name in frozen)
    assert any(".gen_vit." in name for name in frozen) and any(".decoder." in name for name in frozen)
    assert not any(".sem_vit." in name for name in frozen)
    assert set(apply_stage(model, UNIFIED_STAGES["III"])) == stage_two

    custom = resolve_stage("I", UNIFIED_STAGES, trainable=[r"^lm_head\."])
    assert apply_stage(model, custom) == ["lm_head.weight"]
    with pytest.raises(ValueError, match="trains nothing"):
        apply_stage(model, resolve_stage("I", UNIFIED_STAGES, trainable=["^nothing"]))
    with pytest.raises(ValueError, match="Unknown stage 'IV'"):
        resolve_stage("IV", UNIFIED_STAGES)


def test_trainer_audit_matches_the_stage(tmp_path, shapes_dataset):
    processor = tiny_processor()
    trainer = HydraTrainer(tiny_hydra(), training_args(tmp_path), stage="I", train_dataset=shapes_dataset,
                           data_collator=HydraCollator(processor))
    trained = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained == set(trainer.trainable_parameter_names) == set(apply_stage(tiny_hydra(), UNIFIED_STAGES["I"]))


def test_a_prompt_contrast_weight_without_pairs_is_reported(tmp_path, shapes_dataset, caplog):
    processor = tiny_processor()
    for collator, warned in ((HydraCollator(processor), True), (HydraCollator(processor, negative_caption=str.upper), False)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="hydra_hf"):
            HydraTrainer(tiny_hydra(prompt_contrast_weight=0.1), training_args(tmp_path), stage="II",
                         train_dataset=shapes_dataset, data_collator=collator)
        assert ("makes no prompt-contrast pairs" in caplog.text) == warned


def test_decoder_stage_without_adversarial_weight_builds_no_discriminator(tmp_path, shapes_dataset):
    def trainer_for(model):
        return HydraTokTrainer(model, training_args(tmp_path), stage="2", teacher=copy.deepcopy(model),
                               train_dataset=shapes_dataset, data_collator=TokenizerCollator(image_processor()))

    assert isinstance(trainer_for(tiny_tokenizer_model()).discriminator, PatchDiscriminator)
    model = tiny_tokenizer_model()
    model.config.adversarial_weight = 0.0
    trainer = trainer_for(model)
    assert trainer.discriminator is None
    sem_vit_calls = []
    model.sem_vit.register_forward_hook(lambda module, args, output: sem_vit_calls.append(1))
    trainer.train()
    assert "loss_adversarial" not in trainer.state.log_history[0]
    assert not sem_vit_calls  # the frozen encoder's semantic half has nothing to give the decoder's loss


# ----------------------------------------------------------------------------------------------- losses and parts
def test_adversarial_losses_and_discriminator_round_trip(tmp_path):
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert torch.isclose(discriminator_hinge_loss(real, fake), torch.tensor(0.5 * (0.25 + 0.75)))
    assert torch.isclose(generator_adversarial_loss(fake), torch.tensor(0.75))
    discriminator = PatchDiscriminator(base_channels=8, num_layers=2)
    logits = discriminator(random_pixels(2, 32))
    assert logits.shape[:2] == (2, 1) and logits.shape[-1] > 1  # one logit per patch
    discriminator.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = PatchDiscriminator.from_pretrained(tmp_path)
    assert torch.equal(loaded(random_pixels(2, 32)), discriminator(random_pixels(2, 32)))


def test_perceptual_loss_falls_back_to_teacher_features_and_says_so(caplog):
    teacher = tiny_tokenizer_model()
    loss = PerceptualLoss(teacher)
    assert loss.backend == "teacher"  # lpips is not installed here
    target = random_pixels(2, 32)
    estimate = target.clone().requires_grad_(True)
    assert loss(estimate, target).abs() < 1e-5
    far = loss(random_pixels(2, 32, seed=1).requires_grad_(True), target)
    assert far > 1e-3
    with torch.no_grad():  # the trainer passes the teacher states it computed for distillation
        known = teacher(target, bypass_bottleneck=True, output_distillation_states=True).distillation_hidden_states
    assert torch.equal(loss(random_pixels(2, 32, seed=1), target, target_features=known), far.detach())
    far.backward()
    with pytest.raises(ValueError, match="needs LPIPS or a teacher"):
        PerceptualLoss(None)
    with pytest.raises(ValueError, match="needs the `lpips` package"):
        PerceptualLoss(teacher, backend="lpips")


# ------------------------------------------------------------------------------------------------------- collators
def png_bytes(colour) -> dict:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def test_collators_skip_and_count_unreadable_images_and_empty_text():
    processor = tiny_processor()
    rows = [
        {"image": png_bytes((255, 0, 0)), "caption": "a red square", "question": "what color is the shape ?", "answer": "red"},
        {"image": {"bytes": b"not an image", "path": None}, "caption": "a blue circle", "question": "", "answer": ""},
        {"image": png_bytes((0, 0, 255)), "caption": "  ", "question": "", "answer": ""},
        {"image": png_bytes((0, 255, 0)), "caption": "a green circle", "question": "", "answer": ""},
    ]
    collator = HydraCollator(processor, generation_ratio=0.0)
    batch = collator(rows)
    assert batch["pixel_values"].shape[0] == 2 and collator.skipped == {"unreadable image": 1, "empty text": 1}
    tokenizer_collator = TokenizerCollator(image_processor())
    assert tokenizer_collator(rows)["pixel_values"].shape == (3, 3, 32, 32)
    assert tokenizer_collator.skipped == {"unreadable image": 1}


def test_understanding_labels_cover_only_the_answer_and_end_of_turn():
    processor = tiny_processor()
    rows = [{"image": png_bytes((255, 0, 0)), "caption": "a red square", "question": "what color is the shape ?", "answer": "red"},
            {"image": png_bytes((0, 255, 0)), "caption": "a green circle", "question": None, "answer": None}]
    batch = HydraCollator(processor, generation_ratio=0.0)(rows)
    tokenizer = processor.tokenizer
    assert not batch["image_generation_mask"].any()
    first = [tokenizer.convert_ids_to_tokens(int(t)) for t in batch["labels"][0] if t != -100]
    second = [tokenizer.convert_ids_to_tokens(int(t)) for t in batch["labels"][1] if t != -100]
    assert first == ["red", "<|im_end|>"]
    assert second == ["a", "green", "circle", "<|im_end|>"]  # caption-only row: captioning with the caption prompt
    assert batch["attention_mask"][:, 0].all()  # right padding for training


def test_generation_rows_ratio_and_prompt_dropout():
    processor = tiny_processor()
    rows = [{"image": png_bytes((255, 0, 0)), "caption": "a red square", "question": "what color is the shape ?", "answer": "red"}] * 8
    all_generation = HydraCollator(processor, generation_ratio=1.0, cfg_dropout_prob=0.0)(rows)
    assert all_generation["image_generation_mask"].all() and (all_generation["labels"] == -100).all()
    dropped = HydraCollator(processor, generation_ratio=1.0, cfg_dropout_prob=0.999)(rows)
    unconditional = processor(text=[processor.build_generation_prompt("", target_image=True)], images=[Image.new("RGB", (32, 32))])
    assert torch.equal(dropped["input_ids"][0], unconditional["input_ids"][0])
    mixed = HydraCollator(processor, generation_ratio=0.5, seed=3)(rows * 4)
    assert 0 < int(mixed["image_generation_mask"].sum()) < 32
    again = HydraCollator(processor, generation_ratio=0.5, seed=3)(rows * 4)
    assert torch.equal(mixed["image_generation_mask"], again["image_generation_mask"])


def test_caption_ratio_trains_a_share_of_understanding_rows_to_describe_the_scene():
    processor = tiny_processor()
    rows = [{"image": png_bytes((255, 0, 0)), "caption": "a red square", "question": "what color is the shape ?", "answer": "red"},
            {"image": png_bytes((0, 255, 0)), "caption": "", "question": "what color is the shape ?", "answer": "green"}] * 16
    settings = dict(generation_ratio=0.5, seed=2)
    plain = HydraCollator(processor, **settings)(rows)
    mixed = HydraCollator(processor, **settings, caption_ratio=0.5)(rows)
    tokenizer = processor.tokenizer
    targets = [tokenizer.decode(row[row != -100]) for row in mixed["labels"]]
    # The split between generation and understanding rows is drawn as before; only understanding rows change.
    assert torch.equal(mixed["image_generation_mask"], plain["image_generation_mask"])
    understanding = [row for row in range(len(rows)) if not plain["image_generation_mask"][row]]
    described = [row for row in understanding if targets[row].startswith("a red square")]
    assert all(row % 2 == 0 for row in described)  # a row without a caption keeps its question
    assert 0 < len(described) < sum(row % 2 == 0 for row in understanding)
    assert all("describe the image ." in tokenizer.decode(mixed["input_ids"][row]) for row in described)
    assert all(targets[row].startswith(("red", "green")) for row in understanding if row not in described)
    every = HydraCollator(processor, generation_ratio=0.0, caption_ratio=1.0)(rows[:2])
    assert [tokenizer.decode(row[row != -100]) for row in every["labels"]] == ["a red square <|im_end|>", "green <|im_end|>"]
    with pytest.raises(ValueError, match="caption_ratio"):
        HydraCollator(processor, caption_ratio=1.5)


def test_prompt_contrast_pairs_append_each_scene_under_a_contradicting_caption():
    processor = tiny_processor()
    rows = [{"image": png_bytes((255, 0, 0)), "caption": "a red square", "question": "what color is the shape ?", "answer": "red"},
            {"image": png_bytes((0, 0, 255)), "caption": "a blue circle", "question": "", "answer": ""},
            {"image": png_bytes((0, 255, 0)), "caption": "describe the image .", "question": "", "answer": ""}] * 4
    settings = dict(generation_ratio=0.5, cfg_dropout_prob=0.2, seed=1)
    plain = HydraCollator(processor, **settings)(rows)
    swapped = {"a red square": "a red circle", "a blue circle": "a blue square"}
    contrast = HydraCollator(processor, **settings, negative_caption=swapped.get, prompt_contrast_ratio=1.0)(rows)
    rows_before = len(plain["input_ids"])
    # The batch without pairs is unchanged; the pairs come after it, one per generation row whose caption was kept
    # and names a shape.
    width = plain["input_ids"].shape[1]
    assert torch.equal(contrast["input_ids"][:rows_before, :width], plain["input_ids"])
    assert torch.equal(contrast["image_generation_mask"][:rows_before], plain["image_generation_mask"])
    assert "prompt_contrast_pairs" not in plain
    decode = lambda ids: processor.tokenizer.decode(ids[ids != processor.tokenizer.pad_token_id])  # noqa: E731
    kept = [row for row in range(rows_before) if plain["image_generation_mask"][row]
            and any(shape in decode(plain["input_ids"][row]) for shape in ("square", "circle"))]
    pairs = contrast["prompt_contrast_pairs"]
    assert 0 < len(kept) < int(plain["image_generation_mask"].sum()) and pairs.shape == (len(kept), 2)
    generated = contrast["image_generation_mask"].nonzero().flatten()
    for source, (true_index, contradicting_index) in zip(kept, pairs.tolist()):
        true_row, contradicting_row = generated[true_index], generated[contradicting_index]
        assert true_row >= rows_before and contradicting_row >= rows_before
        assert decode(contrast["input_ids"][true_row]) == decode(plain["input_ids"][source])
        caption = "a red square" if "square" in decode(plain["input_ids"][source]) else "a blue circle"
        assert swapped[caption] in decode(contrast["input_ids"][contradicting_row])
        assert torch.equal(contrast["pixel_values"][true_row], plain["pixel_values"][source])
        assert torch.equal(contrast["pixel_values"][contradicting_row], plain["pixel_values"][source])
    with pytest.raises(ValueError, match="prompt_contrast_ratio"):
        HydraCollator(processor, negative_caption=swapped.get, prompt_contrast_ratio=1.5)


# ------------------------------------------------------------------------------------------------------------ data
def test_dataset_sources_folder_parquet_disk_and_streaming(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (32, 32), colour).save(folder / f"{index}.png")
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps({"file_name": f"{i}.png", "caption": f"shape {i}"}) for i in range(2)))
    shapes = make_shapes_dataset(4, seed=1)
    shapes.to_parquet(str(tmp_path / "shapes.parquet"))
    shapes.save_to_disk(str(tmp_path / "disk"))
    collator = TokenizerCollator(image_processor())
    sources = {
        "imagefolder": load_training_dataset(str(folder)),
        "parquet": load_training_dataset(str(tmp_path / "shapes.parquet")),
        "save_to_disk": load_training_dataset(str(tmp_path / "disk")),
        "streaming": load_training_dataset(str(tmp_path / "shapes.parquet"), streaming=True),
    }
    assert isinstance(sources["streaming"], datasets.IterableDataset)
    for name, dataset in sources.items():
        rows = list(dataset.take(2)) if name == "streaming" else [dataset[0], dataset[1]]
        assert collator(rows)["pixel_values"].shape == (2, 3, 32, 32), name
    assert sources["imagefolder"][0]["caption"] == "shape 0"
    with pytest.raises(ValueError, match="image column 'picture' not in"):
        load_training_dataset(str(tmp_path / "disk"), image_column="picture")


# ---------------------------------------------------------------------------------------------------------- resume
def test_interrupted_tokenizer_gan_run_resumes_exactly(tmp_path, shapes_dataset):
    def run(output_dir, stop_at=None, resume=False):
        model = tiny_tokenizer_model()
        trainer = HydraTokTrainer(
            model, training_args(output_dir), stage="2", teacher=copy.deepcopy(model),
            discriminator=(torch.manual_seed(1), PatchDiscriminator(base_channels=8, num_layers=2))[1],
            train_dataset=shapes_dataset, data_collator=TokenizerCollator(image_processor()),
            callbacks=[StopAt(stop_at)] if stop_at else None,
        )
        trainer.train(resume_from_checkpoint=True if resume else None)
        return trainer

    full = run(tmp_path / "full")
    run(tmp_path / "split", stop_at=3)
    assert last_complete_checkpoint(tmp_path / "split").endswith("checkpoint-3")
    resumed = run(tmp_path / "split", resume=True)
    expected, actual = step_losses(full), step_losses(resumed)
    assert set(actual) >= {4, 5, 6}
    for step in (4, 5, 6):
        assert abs(expected[step] - actual[step]) <= 1e-5, (step, expected[step], actual[step])
    assert torch.allclose(full.discriminator.layers[0].weight, resumed.discriminator.layers[0].weight, atol=1e-6)


def test_interrupted_unified_run_resumes_exactly(tmp_path, shapes_dataset):
    processor = tiny_processor()

    def run(output_dir, stop_at=None, resume=False):
        trainer = HydraTrainer(
            tiny_hydra(), training_args(output_dir), stage="II", train_dataset=shapes_dataset,
            data_collator=HydraCollator(processor, generation_ratio=0.5), processing_class=processor,
            callbacks=[StopAt(stop_at)] if stop_at else None,
        )
        trainer.train(resume_from_checkpoint=True if resume else None)
        return trainer

    full = run(tmp_path / "full")
    run(tmp_path / "split", stop_at=3)
    resumed = run(tmp_path / "split", resume=True)
    expected, actual = step_losses(full), step_losses(resumed)
    for step in (4, 5, 6):
        assert abs(expected[step] - actual[step]) <= 1e-5, (step, expected[step], actual[step])
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        run(tmp_path / "empty", resume=True)


def test_incomplete_checkpoints_are_never_resumed_from(tmp_path):
    for step, complete in ((2, True), (4, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "checkpoint_complete.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")


# ------------------------------------------------------------------------------------------------ 2-process scripts
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(script: str, *arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               str(REPO / "examples" / script), *arguments, "--max_steps", "3", "--per_device_train_batch_size", "2",
               "--save_steps", "2", "--logging_steps", "1", "--use_cpu", "--ddp_backend", "gloo", "--report_to", "none",
               "--disable_tqdm", "true"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_two_process_scripts_end_with_loadable_checkpoints(tmp_path, shapes_dataset):
    data = tmp_path / "data"
    shapes_dataset.save_to_disk(str(data))
    stage_one = tmp_path / "tok-s1"
    torchrun("train_tokenizer.py", "--dataset", str(data), "--preset", "tiny", "--stage", "1", "--output_dir", str(stage_one))
    stage_two = tmp_path / "tok-s2"
    torchrun("train_tokenizer.py", "--dataset", str(data), "--model_name_or_path", str(stage_one), "--stage", "2",
             "--output_dir", str(stage_two))
    for folder in (stage_one, stage_two):
        assert isinstance(HydraTokModel.from_pretrained(folder), HydraTokModel)
        assert last_complete_checkpoint(folder).endswith("checkpoint-3") and (folder / "checkpoint-2" / "checkpoint_complete.json").exists()
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in Path(last_complete_checkpoint(folder)).iterdir()}
    assert (Path(last_complete_checkpoint(stage_two)) / "discriminator.safetensors").exists()
    trained = HydraTokModel.from_pretrained(stage_two)
    initial = HydraTokModel.from_pretrained(stage_one)
    assert torch.equal(trained.gen_vit.layers[0].attn.qkv.weight, initial.gen_vit.layers[0].attn.qkv.weight)  # frozen
    assert not torch.equal(trained.decoder.final_layer.linear.weight, initial.decoder.final_layer.linear.weight)

    initial_hydra = tmp_path / "hydra-init"
    tiny_hydra().save_pretrained(initial_hydra)
    tiny_processor().save_pretrained(initial_hydra)
    unified = tmp_path / "hydra-s1"
    torchrun("train_hydra.py", "--dataset", str(data), "--model_name_or_path", str(initial_hydra), "--stage", "I",
             "--output_dir", str(unified), "--ema_decay", "0.99")
    assert (Path(last_complete_checkpoint(unified)) / EMA_WEIGHTS).exists()
    model = AutoModelForImageTextToText.from_pretrained(unified)
    assert isinstance(model, HydraForConditionalGeneration)
    assert AutoProcessor.from_pretrained(unified).image_token_id == model.config.image_token_id
    checkpoint = HydraForConditionalGeneration.from_pretrained(last_complete_checkpoint(unified))
    frozen_llm = tiny_hydra().model.language_model.layers[0].mlp.up_proj.weight
    assert torch.equal(checkpoint.model.language_model.layers[0].mlp.up_proj.weight, frozen_llm)  # stage I: LLM frozen


def test_ema_weights_are_what_training_saves_and_resume_exactly(tmp_path, shapes_dataset):
    processor = tiny_processor()

    def run(output_dir, ema_decay, stop_at=None, resume=False):
        trainer = HydraTrainer(
            tiny_hydra(), training_args(output_dir), stage="II", ema_decay=ema_decay, train_dataset=shapes_dataset,
            data_collator=HydraCollator(processor, generation_ratio=0.5), processing_class=processor,
            callbacks=[StopAt(stop_at)] if stop_at else None,
        )
        trainer.train(resume_from_checkpoint=True if resume else None)
        return dict(trainer.model.named_parameters())

    raw = run(tmp_path / "raw", None)
    full = run(tmp_path / "full", 0.9)
    run(tmp_path / "split", 0.9, stop_at=3)
    assert (tmp_path / "split" / "checkpoint-3" / EMA_WEIGHTS).exists()
    resumed = run(tmp_path / "split", 0.9, resume=True)
    initial = dict(tiny_hydra().named_parameters())
    trained = [name for name, parameter in initial.items() if not torch.equal(parameter, raw[name])]
    frozen = [name for name in initial if name not in trained]
    assert trained and frozen  # stage II freezes the vision tower
    for name in trained:
        assert not torch.allclose(full[name], raw[name]), name  # the average, not the last step's weights
        torch.testing.assert_close(resumed[name], full[name], atol=1e-5, rtol=0)  # restored on resume
    for name in frozen:
        assert torch.equal(full[name], initial[name]), name
    with pytest.raises(ValueError, match="run without ema_decay"):
        run(tmp_path / "raw", 0.9, resume=True)
