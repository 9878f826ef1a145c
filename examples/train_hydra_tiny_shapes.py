"""Train `hydra-tiny-shapes`, the package's embedded default, on the synthetic shapes world, every stage through the
same Trainer code as real training.

    python examples/train_hydra_tiny_shapes.py --work_dir outputs/tiny-shapes [--scale 1.0]

The recipe mirrors the paper's starting points, which are pretrained models, at shapes-world scale:
  0. a word-level text tokenizer trained on the world's captions and questions;
  1. a small semantic ViT trained to read the scene's attributes (counts of each coloured shape, where each colour
     and shape lies): HYDRA-TOK's initialisation and its frozen self-distillation teacher;
  2. a small Qwen2 LLM pre-trained on the world's text;
  3. HYDRA-TOK stage 1 (end to end, with distillation) and stage 2 (decoder refinement on posterior means, no GAN);
  4. the unified model assembled from them, latent statistics measured, then stages I, II and III.
Each stage writes its result under --work_dir and is skipped when rerun, so an interrupted run continues from the
last finished stage (and from its last complete checkpoint inside a stage). `--scale` multiplies every stage's
step count (`--scale 0.01 --num_scenes 300 --num_pretrain_scenes 300` is a smoke run of about 1.5 minutes). The final
model is written to `--work_dir/final`, sampling by default as `SAMPLING` says. `--start_from MODEL` trains a finished
model further instead: more stage II cycles, then stage III. The rounds that the flags' help cites are sections of
docs/experiments.md.
"""

import argparse
import copy
import json
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import (
    DataCollatorForLanguageModeling,
    Qwen2Config,
    Qwen2ForCausalLM,
    Trainer,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

from hydra_hf import (
    HydraConfig,
    HydraForConditionalGeneration,
    HydraImageProcessor,
    HydraProcessor,
    HydraTokConfig,
    HydraTokModel,
)
from hydra_hf.data import HELD_OUT_COLORS, PALETTE, SHAPES, make_shapes_dataset, rotate_shape_words
from hydra_hf.data.shapes import DATASET_CATEGORIES
from hydra_hf.data.text_tokenizer import train_word_tokenizer
from hydra_hf.training import (
    HydraCollator,
    HydraTokTrainer,
    HydraTrainer,
    TokenizerCollator,
)
from hydra_hf.training.trainers import last_complete_checkpoint

logger = logging.getLogger("train_hydra_tiny_shapes")

# The pretraining stages (text tokenizer, semantic ViT, LLM, HYDRA-TOK) see the first NUM_PRETRAIN_SCENES scenes; the
# unified stages see NUM_TRAIN_SCENES (the same seed, so a superset): with only 8000 question-answer pairs the unified
# model memorised them (VQA 0.78 on training scenes, 0.66 on held-out ones).
TRAIN_SEED, NUM_PRETRAIN_SCENES, NUM_TRAIN_SCENES = 0, 8000, 40000
IMAGE_SIZE = 64
CAPTION_PROMPT = "describe the image ."

VISION = dict(
    image_size=IMAGE_SIZE, patch_size=8, hidden_size=128, num_attention_heads=4, intermediate_size=512,
    num_gen_layers=4, num_sem_layers=4, use_cls_token=False, layerscale_init=None, latent_channels=16,
    decoder_hidden_size=128, decoder_num_layers=4, decoder_num_attention_heads=4, decoder_intermediate_size=512,
    decoder_num_inference_steps=10, distillation_layers=[2, 4, 6, 8], perceptual_weight=0.0,
)
LLM = dict(hidden_size=192, num_hidden_layers=4, num_key_value_heads=2, max_position_embeddings=256,
           tie_word_embeddings=True)
LLM_HEAD_DIM = 32  # heads and MLP follow the width: hidden_size / 32 heads, a 3x MLP
# (steps, batch size, learning rate) per stage at --scale 1.
STAGES = {
    "semantic_vit": (800, 64, 1e-3),
    "llm": (1000, 64, 2e-3),
    "tokenizer_1": (3000, 32, 5e-4),
    "tokenizer_2": (6000, 32, 5e-4),
    "unified_I": (800, 32, 1e-3),
    "unified_II": (6000, 32, 1e-3),
    "unified_III": (600, 32, 1e-4),
}
GRID = 4  # the semantic ViT learns where each colour and shape lies on a GRID x GRID layout
# The final model's own text-to-image defaults (its generation config's `text_to_image`, read by HydraPipeline), the
# shipped model's: perturbed-attention guidance at the LLM's first layer, no CFG (on the 480 development prompts it beat
# PAG at layer 1 for five of six plain draws of this recipe: nineteenth round), and answer guidance at 0.03 with the
# pipeline's default times and smoothing (held-out +0.036, thirty-second round; it needs `guidance_questions`).
SAMPLING = dict(guidance_scale=1.0, pag_scale=3.0, pag_applied_layers=[0], answer_guidance_scale=0.03)
# The flags that a model trained further with --start_from already has fixed (its architecture and first stages).
START_FIXES = ("num_pretrain_scenes", "repa_weight", "timestep_logit_mean", "timestep_logit_std", "llm_hidden_size",
               "llm_num_layers", "latent_channels", "patch_size", "flow_head_hidden_size", "llm_seed")


def shapes_image_processor(patch_size: int) -> HydraImageProcessor:
    return HydraImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, patch_size=patch_size)


def training_args(work_dir: Path, stage: str, scale: float, **overrides) -> TrainingArguments:
    steps, batch, lr = STAGES[stage]
    steps = max(2, int(steps * scale))
    values = dict(
        output_dir=str(work_dir / stage), max_steps=steps, per_device_train_batch_size=batch, learning_rate=lr,
        lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20), weight_decay=0.01, logging_steps=max(1, steps // 20),
        save_steps=max(1, steps // 4), save_total_limit=1, report_to=[], use_cpu=True, seed=TRAIN_SEED,
        remove_unused_columns=False, dataloader_num_workers=0, max_grad_norm=1.0,
    )
    return TrainingArguments(**{**values, **overrides})


def resume_point(trainer: Trainer) -> str | None:
    """The stage's last checkpoint: complete ones for hydra_hf's trainers (they mark them), the newest otherwise."""
    if isinstance(trainer, (HydraTokTrainer, HydraTrainer)):
        return last_complete_checkpoint(trainer.args.output_dir)
    return get_last_checkpoint(trainer.args.output_dir) if Path(trainer.args.output_dir).is_dir() else None


def run_trainer(trainer: Trainer, output: Path) -> None:
    """Train (resuming from the stage's last checkpoint, if any) and save the result."""
    trainer.train(resume_from_checkpoint=resume_point(trainer))
    trainer.save_model(str(output))


# ------------------------------------------------------------------------------------------- 1. semantic ViT
def attribute_targets(objects: list[dict]) -> torch.Tensor:
    """Counts of each (shape, colour) and the coarse layout of each colour and shape: what a scene 'means'."""
    colours, shapes = list(PALETTE), list(SHAPES)
    counts = torch.zeros(len(shapes), len(colours))
    layout = torch.zeros(len(colours) + len(shapes), GRID, GRID)
    for obj in objects:
        shape, colour = shapes.index(obj["shape"]), colours.index(obj["color"])
        counts[shape, colour] += 1
        row, col = min(int(obj["y"] * GRID / IMAGE_SIZE), GRID - 1), min(int(obj["x"] * GRID / IMAGE_SIZE), GRID - 1)
        layout[colour, row, col] = 1
        layout[len(colours) + shape, row, col] = 1
    return torch.cat([counts.flatten() / 4, layout.flatten()])


class AttributeProbe(nn.Module):
    """A ViT (HYDRA-TOK's blocks, run as a plain ViT) with a linear read-out of the scene's attributes."""

    def __init__(self, vit: HydraTokModel, num_targets: int):
        super().__init__()
        self.vit = vit
        self.head = nn.Linear(vit.config.hidden_size, num_targets)

    def forward(self, pixel_values, labels):
        features = self.vit(pixel_values, bypass_bottleneck=True).semantic_features.mean(dim=1)
        return {"loss": nn.functional.binary_cross_entropy_with_logits(self.head(features), labels)}


def pretrain_semantic_vit(work_dir: Path, dataset, scale: float, vision: dict) -> Path:
    output = work_dir / "semantic_vit" / "final"
    if output.exists():
        return output
    torch.manual_seed(TRAIN_SEED)
    vit = HydraTokModel(HydraTokConfig(**vision))
    probe = AttributeProbe(vit, attribute_targets([]).numel())
    tokenizer_collator = TokenizerCollator(shapes_image_processor(vision["patch_size"]))

    def collate(rows):
        batch = tokenizer_collator(rows)
        batch["labels"] = torch.stack([attribute_targets(row["objects"]) for row in rows])
        return batch

    trainer = Trainer(probe, training_args(work_dir, "semantic_vit", scale), train_dataset=dataset, data_collator=collate)
    trainer.train(resume_from_checkpoint=resume_point(trainer))
    vit.save_pretrained(output)
    return output


# ----------------------------------------------------------------------------------------------------- 2. LLM
def world_texts(dataset) -> list[str]:
    rows = dataset.select_columns(["caption", "question", "answer"])
    chats = [
        f"<|im_start|>user\n{row['question']}<|im_end|>\n<|im_start|>assistant\n{row['answer']}<|im_end|>" for row in rows
    ]
    return chats + [f"<|im_start|>user\n{row['caption']}<|im_end|>" for row in rows]


def pretrain_llm(work_dir: Path, dataset, tokenizer, scale: float, size: dict, seed: int = TRAIN_SEED) -> Path:
    output = work_dir / "llm" / "final"
    if output.exists():
        return output
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), **size,
                         num_attention_heads=size["hidden_size"] // LLM_HEAD_DIM,
                         intermediate_size=3 * size["hidden_size"])
    model = Qwen2ForCausalLM(config)
    texts = world_texts(dataset)
    encoded = [tokenizer(text)["input_ids"] for text in texts]
    trainer = Trainer(
        model, training_args(work_dir, "llm", scale, seed=seed), train_dataset=[{"input_ids": ids} for ids in encoded],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    run_trainer(trainer, output)
    return output


# ----------------------------------------------------------------------------------------------- 3. HYDRA-TOK
def train_tokenizer(work_dir: Path, dataset, semantic_vit: Path, scale: float) -> Path:
    teacher = HydraTokModel.from_pretrained(semantic_vit)
    image_processor = shapes_image_processor(teacher.config.patch_size)
    stage_one = work_dir / "tokenizer_1" / "final"
    if not stage_one.exists():
        model = HydraTokModel.from_pretrained(semantic_vit)
        trainer = HydraTokTrainer(
            model, training_args(work_dir, "tokenizer_1", scale), stage="1", teacher=copy.deepcopy(teacher),
            train_dataset=dataset, data_collator=TokenizerCollator(image_processor),
        )
        run_trainer(trainer, stage_one)
    stage_two = work_dir / "tokenizer_2" / "final"
    if not stage_two.exists():
        # Decoder refinement without the GAN term: shapes-world images have no texture for it to sharpen, and it
        # cost reconstruction PSNR here (3000 further decoder steps on 300 held-out scenes: 25.4 dB with the GAN at
        # lr 2e-4, 29.6 dB without it at lr 5e-4; the first recipe's 600 GAN steps ended at 26.7 dB).
        # The decoder refines on the posterior mean, the latent `decode` is given: the sample's noise (0.05-0.7 of a
        # channel's spread here) only blurs what it learns. On 500 held-out scenes, 3000 steps on samples gave 29.44 dB,
        # on means 30.09; 6000 steps on means give 31.66.
        model = HydraTokModel.from_pretrained(stage_one, adversarial_weight=0.0, decoder_training_latents="mean")
        trainer = HydraTokTrainer(
            model, training_args(work_dir, "tokenizer_2", scale), stage="2", teacher=teacher,
            train_dataset=dataset, data_collator=TokenizerCollator(image_processor),
        )
        run_trainer(trainer, stage_two)
    return stage_two


# --------------------------------------------------------------------------------------------- 4. unified model
@torch.no_grad()
def latent_statistics(tokenizer_model: HydraTokModel, dataset, image_processor, count: int = 512):
    rows = dataset.select(range(min(count, len(dataset))))
    pixels = TokenizerCollator(image_processor)(list(rows))["pixel_values"]
    means = torch.cat([tokenizer_model.encode(chunk).latent_dist.mean for chunk in pixels.split(64)])
    return means.mean(dim=(0, 2, 3)).tolist(), means.std(dim=(0, 2, 3)).tolist()


def assemble(
    work_dir: Path, dataset, tokenizer, tokenizer_path: Path, llm_path: Path, *, repa_weight: float,
    timestep_logit_mean: float, timestep_logit_std: float, flow_head_hidden_size: int, seed: int,
) -> Path:
    output = work_dir / "assembled"
    if output.exists():
        return output
    vision = HydraTokModel.from_pretrained(tokenizer_path)
    image_processor = shapes_image_processor(vision.config.patch_size)
    mean, std = latent_statistics(vision, dataset, image_processor)
    llm = Qwen2ForCausalLM.from_pretrained(llm_path)
    config = HydraConfig(
        text_config=llm.config.to_dict(), vision_config={**vision.config.to_dict(), "latents_mean": mean, "latents_std": std},
        image_token_id=tokenizer.image_token_id, boi_token_id=tokenizer.boi_token_id, eoi_token_id=tokenizer.eoi_token_id,
        flow_head_hidden_size=flow_head_hidden_size, flow_head_num_layers=3, repa_weight=repa_weight,
        timestep_logit_mean=timestep_logit_mean, timestep_logit_std=timestep_logit_std,
    )
    torch.manual_seed(seed)
    model = HydraForConditionalGeneration(config)
    model.model.vision_model.load_state_dict(vision.state_dict())
    model.model.language_model.load_state_dict(llm.model.state_dict())
    model.lm_head.load_state_dict(llm.lm_head.state_dict())
    model.save_pretrained(output)
    HydraProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(output)
    return output


def train_unified(
    work_dir: Path, dataset, start: Path, stage: str, scale: float, generation_ratio: float, cycle: int = 1,
    ema_decay: float | None = None, seed: int = TRAIN_SEED, prompt_contrast_weight: float = 0.0,
    prompt_contrast_min_time: float = 0.6, image_position_scale: float | None = None, caption_ratio: float = 0.0,
    flow_head_latent_input: bool = False,
) -> Path:
    """One unified stage from `start`; cycle 2, 3, ... repeat a stage from the previous cycle's result. With
    `prompt_contrast_weight` > 0, half the generation rows also get a pair: their scene under its caption and under
    the caption with its shape words rotated (`HydraConfig.prompt_contrast_weight`). `image_position_scale` (None:
    the start's) sets `HydraConfig.image_position_scale`; `caption_ratio` is `HydraCollator.caption_ratio`;
    `flow_head_latent_input` switches the flow head's zero-initialised skip on (otherwise the start's setting stays)."""
    name = f"unified_{stage}" if cycle == 1 else f"unified_{stage}_cycle{cycle}"
    output = work_dir / name / "final"
    if output.exists():
        return output
    skip = {"flow_head_latent_input": True} if flow_head_latent_input else {}
    model = HydraForConditionalGeneration.from_pretrained(start, **skip)
    model.config.prompt_contrast_weight = prompt_contrast_weight
    model.config.prompt_contrast_min_time = prompt_contrast_min_time
    if image_position_scale is not None:
        model.config.image_position_scale = image_position_scale
    processor = HydraProcessor.from_pretrained(start)
    collator = HydraCollator(processor, generation_ratio=generation_ratio, cfg_dropout_prob=model.config.cfg_dropout_prob,
                             caption_prompt=CAPTION_PROMPT, caption_ratio=caption_ratio, seed=seed,
                             negative_caption=rotate_shape_words if prompt_contrast_weight > 0 else None)
    args = training_args(work_dir, f"unified_{stage}", scale, output_dir=str(work_dir / name), seed=seed)
    trainer = HydraTrainer(model, args, stage=stage, train_dataset=dataset,
                           data_collator=collator, processing_class=processor, ema_decay=ema_decay)
    run_trainer(trainer, output)
    return output


def check_reused_stage(parser: argparse.ArgumentParser, stage: Path, config_class, expected: dict) -> None:
    """A stage found in the work dir is reused as it is: refuse it if it was made with other flags (`expected`)."""
    config = config_class.from_pretrained(stage)
    differing = {key: getattr(config, key) for key, value in expected.items() if getattr(config, key) != value}
    if differing:
        parser.error(f"{stage} was made with {differing}, not {expected}; use another --work_dir or those flags")


def first_stages(parser: argparse.ArgumentParser, args: argparse.Namespace, pretrain_dataset, llm_size: dict) -> Path:
    """Text tokenizer, semantic ViT, LLM and HYDRA-TOK, assembled into an untrained unified model."""
    # The held-out colours' names are in the vocabulary (as in any real LLM's), never in the training data: their
    # embedding rows stay untrained until a fine-tune (e.g. examples/finetune_lora.py) teaches them.
    texts = [CAPTION_PROMPT, *HELD_OUT_COLORS] + [
        text for column in ("caption", "question", "answer") for text in pretrain_dataset[column]
    ]
    tokenizer = train_word_tokenizer(texts)

    logger.info("1. semantic ViT")
    vision = {**VISION, "latent_channels": args.latent_channels, "patch_size": args.patch_size}
    semantic_vit = pretrain_semantic_vit(args.work_dir, pretrain_dataset, args.scale, vision)
    tokenizer_shape = {key: vision[key] for key in ("latent_channels", "patch_size")}
    check_reused_stage(parser, semantic_vit, HydraTokConfig, tokenizer_shape)
    logger.info("2. LLM")
    llm = pretrain_llm(args.work_dir, pretrain_dataset, tokenizer, args.scale, llm_size, args.llm_seed)
    check_reused_stage(parser, llm, Qwen2Config, {key: llm_size[key] for key in ("hidden_size", "num_hidden_layers")})
    logger.info("3. HYDRA-TOK stages 1-2")
    tokenizer_path = train_tokenizer(args.work_dir, pretrain_dataset, semantic_vit, args.scale)
    check_reused_stage(parser, tokenizer_path, HydraTokConfig, tokenizer_shape)  # a linked tokenizer may come from elsewhere
    logger.info("4. unified stages I-III")
    assembled = assemble(args.work_dir, pretrain_dataset, tokenizer, tokenizer_path, llm, repa_weight=args.repa_weight,
                         timestep_logit_mean=args.timestep_logit_mean, timestep_logit_std=args.timestep_logit_std,
                         flow_head_hidden_size=args.flow_head_hidden_size, seed=args.unified_seed)
    check_reused_stage(parser, assembled, HydraConfig, {
        "repa_weight": args.repa_weight, "timestep_logit_mean": args.timestep_logit_mean,
        "timestep_logit_std": args.timestep_logit_std, "flow_head_hidden_size": args.flow_head_hidden_size,
    })
    return assembled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", type=Path, required=True, help="where every stage writes its result")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every stage's number of steps")
    parser.add_argument("--num_scenes", type=int, default=NUM_TRAIN_SCENES, help="training scenes of the unified stages (seed 0)")
    parser.add_argument(
        "--num_pretrain_scenes", type=int, default=NUM_PRETRAIN_SCENES,
        help="the first this many scenes train the text tokenizer, semantic ViT, LLM and HYDRA-TOK",
    )
    parser.add_argument(
        "--stage_ii_cycles", type=int, default=1,
        help="run unified stage II this many times, each with a fresh cosine schedule (2, about 33 more minutes: "
             "the shipped checkpoint, held-out GenEval-style 0.323 -> 0.379 and VQA 0.750 -> 0.840 under PAG at "
             "layer 0: nineteenth round; a third and a fourth: VQA 0.882 and 0.904, GenEval-style 0.343 and 0.293: "
             "twentieth round)",
    )
    parser.add_argument(
        "--generation_ratio", type=float, default=0.5,
        help="share of stage II rows that are text-to-image examples, the rest understanding (stage I keeps 0.5, "
             "stage III 0.3; a third cycle on the two-cycle model at 0.8: held-out GenEval-style 0.403 and 0.325 for "
             "two seeds, against 0.343 at 0.5: twenty-first and twenty-second rounds; at 1.0, one draw: generation does not "
             "gain though its shapes fit best, VQA 0.81 against 0.85: twenty-third and twenty-fourth rounds)",
    )
    parser.add_argument(
        "--data_seed", type=int, default=TRAIN_SEED,
        help="seed of the shapes-world scenes every stage trains on (the pretraining stages take the first "
             "--num_pretrain_scenes of them); with --start_from, another seed gives the further cycles scenes the start "
             "never saw (evaluation uses seeds 777 and 12345; a third cycle on the shipped model on seed 1's scenes: "
             "development GenEval-style 0.365 against 0.342 on seed 0's, the same stage II losses: twenty-first round)",
    )
    parser.add_argument(
        "--train_categories", nargs="+", choices=DATASET_CATEGORIES, default=None, metavar="CATEGORY",
        help=f"with --start_from: train the further cycles on scenes of these categories only "
             f"({', '.join(DATASET_CATEGORIES)}; default: every category in turn), to see what the model learns "
             "given one kind of scene (single_object colors at generation ratio 1.0, scale 0.5: cleaner shapes, but "
             "development single object 0.61 / 0.63 against 0.71: twenty-fifth round)",
    )
    parser.add_argument(
        "--prompt_contrast_weight", type=float, default=0.0,
        help="weight of the prompt-contrastive flow term in the unified stages (HydraConfig.prompt_contrast_weight): "
             "half the generation rows also train the model, as a diffusion classifier at flow times in "
             "[--prompt_contrast_min_time, 1], to fit its scene's caption better than the caption with the shape words "
             "rotated",
    )
    parser.add_argument(
        "--prompt_contrast_min_time", type=float, default=0.6,
        help="the prompt-contrast pairs' flow times are uniform in [this, 1] (HydraConfig.prompt_contrast_min_time)",
    )
    parser.add_argument(
        "--caption_ratio", type=float, default=0.0,
        help="share of the unified stages' understanding rows trained to describe their scene (its caption) instead of "
             "answering its question (HydraCollator.caption_ratio): captions state the relations that yes/no relation "
             "questions only test (0.3: relation questions still at chance, development GenEval-style +0.04 over the control, "
             "held-out 0.357: twenty-seventh round)",
    )
    parser.add_argument(
        "--relation_word_share", type=float, default=0.0,
        help="share of the training scenes with two objects in a clear relation that ask for the relation word "
             "(\"what is the red circle to the blue square?\" -> \"left\"; make_shapes_dataset(relation_word_share=...)) "
             "instead of their question (yes/no relation questions stay), since a yes/no relation answer follows from "
             "the picture and the asked word together only (twenty-eighth round: the axis learnt, the direction only with "
             "--image_position_scale and a second cycle; yes/no answers unchanged; other questions and drawing worse)",
    )
    parser.add_argument(
        "--relation_question_share", type=float, default=0.0,
        help="share of the same scenes (those --relation_word_share does not take) that ask a yes/no relation question "
             "instead (make_shapes_dataset(relation_question_share=...)); a tenth of the default rows are such questions",
    )
    parser.add_argument(
        "--one_sided_relation_share", type=float, default=0.0,
        help="share of the yes/no relation questions that ask only about pairs whose subject lies left of or above its "
             "reference (make_shapes_dataset(one_sided_relation_share=...)), so that the asked word alone gives the answer "
             "(0.5: balanced development relation questions 0.90-0.96 right against 0.46 without; held-out VQA 0.946 "
             "after a further cycle, held-out GenEval-style 0.365: twenty-ninth round)",
    )
    parser.add_argument(
        "--image_position_scale", type=float, default=None,
        help="add fixed 2-D sin-cos positions of this scale to the visual tokens the LLM reads, from the first unified "
             "stage trained here (HydraConfig.image_position_scale; default: the start's, none for a new model), so "
             "attention can carry where a token lies, which relation questions ask (5: relation questions still at "
             "chance: twenty-seventh round)",
    )
    parser.add_argument(
        "--flow_head_latent_input", action="store_true",
        help="from the first unified stage trained here, the flow head also reads each token's noisy latent (a "
             "zero-initialised skip around Sem-ViT and the LLM; HydraConfig.flow_head_latent_input); without it the "
             "start's setting stays (one further cycle of the shipped model: development GenEval-style +0.017 +- "
             "0.027 over its control, flow loss the same: thirty-fourth round)",
    )
    parser.add_argument(
        "--repa_weight", type=float, default=0.0,
        help="REPA in the unified stages (HydraConfig.repa_weight; 0.5 raised held-out GenEval-style from 0.236 to "
             "0.288 but left about 19 specks per image: sixth to eighth rounds)",
    )
    parser.add_argument(
        "--ema_decay", type=float, default=None,
        help="keep an EMA of the weights in the unified stages (0.9995 with --repa_weight 0.5: GenEval-style 0.168)",
    )
    parser.add_argument(
        "--timestep_logit_mean", type=float, default=0.0,
        help="centre of the unified stages' logit-normal flow times (HydraConfig.timestep_logit_mean); > 0 trains the "
             "noisy times, where the prompt decides the layout, more often (0.8: GenEval-style 0.212 at guidance 5, "
             "27 specks per image: ninth round)",
    )
    parser.add_argument(
        "--timestep_logit_std", type=float, default=1.0,
        help="spread of the unified stages' logit-normal flow times (HydraConfig.timestep_logit_std); > 1 trains both "
             "ends more often, the noisy times where the prompt decides the layout and the clean ones that keep "
             "specks away, at the expense of the middle (1.6, 14%% of times above 0.85 instead of 5%%: development "
             "GenEval-style 0.046 / 0.075 for two seeds under PAG, 0.208 / 0.175 unguided: eighteenth round)",
    )
    parser.add_argument(
        "--llm_hidden_size", type=int, default=LLM["hidden_size"],
        help="width of the LLM, a multiple of 32 (256 wide, 6 deep, stage II at 5e-4: it ended at a flow loss of 0.313 "
             "against 0.216, GenEval-style 0.236 with 20 specks per image, VQA 0.736: tenth round)",
    )
    parser.add_argument(
        "--llm_num_layers", type=int, default=LLM["num_hidden_layers"], help="decoder layers of the LLM"
    )
    parser.add_argument(
        "--latent_channels", type=int, default=VISION["latent_channels"],
        help="channels of HYDRA-TOK's latent per patch: what the flow head generates and the pixel decoder reads "
             "(8: PSNR 29.82 dB, held-out GenEval-style 0.252 against 0.291, VQA 0.758: eleventh round)",
    )
    parser.add_argument(
        "--patch_size", type=int, default=VISION["patch_size"],
        help="side of HYDRA-TOK's square patches in pixels, a divisor of 64: the latent grid is 64 / patch_size on a "
             "side (16, with 32 latent channels: 16 image tokens, the recipe in 30 minutes, but PSNR 25.42 dB, "
             "held-out GenEval-style 0.183, VQA 0.700: thirteenth round)",
    )
    parser.add_argument(
        "--flow_head_hidden_size", type=int, default=256,
        help="width of the flow head's residual MLP blocks (512: held-out GenEval-style mean 0.284 over three unified "
             "seeds with 8 latent channels, 0.237 over two with 16, against 0.212 over three for 256 with 16; none of "
             "it significant, and 8 channels miss the PSNR target: eleventh, fourteenth, fifteenth rounds)",
    )
    parser.add_argument(
        "--unified_seed", type=int, default=TRAIN_SEED,
        help="seed of the unified stages alone (the heads' initialisation, data order, prompt dropout, flow noise and "
             "times; the data stay those of seed 0). To compare seeds on the same first stages, link semantic_vit, "
             "llm, tokenizer_1 and tokenizer_2 into a fresh --work_dir: a finished assembled or unified stage found "
             "there is reused whatever its seed (seeds 0, 1, 2 on one set of first stages: held-out GenEval-style "
             "0.114, 0.285, 0.236: thirteenth round)",
    )
    parser.add_argument(
        "--llm_seed", type=int, default=TRAIN_SEED,
        help="seed of the LLM's pretraining alone (initialisation and data order), to tell the LLM's share of the "
             "run-to-run spread from the tokenizer's: link semantic_vit, tokenizer_1 and tokenizer_2 into a fresh "
             "--work_dir; a finished llm stage found there is reused whatever its seed (1: held-out GenEval-style "
             "0.096 against 0.114 for seed 0, both with unified seed 0: thirteenth round)",
    )
    parser.add_argument(
        "--start_from", type=Path, default=None,
        help="a finished HYDRA checkpoint to train further (a --work_dir's final, or the embedded model in "
             "src/hydra_hf/assets/hydra-tiny-shapes): the first stages and stage I are skipped, --stage_ii_cycles more "
             "stage II cycles and stage III run on it; the flags that shape the model or its first stages are refused",
    )
    args = parser.parse_args()
    if args.start_from is not None:
        if not (args.start_from / "config.json").is_file():
            parser.error(f"--start_from must be a saved HYDRA checkpoint folder with a config.json, got {args.start_from}")
        fixed_by_start = [f"--{flag}" for flag in START_FIXES if getattr(args, flag) != parser.get_default(flag)]
        if fixed_by_start:
            parser.error(f"{', '.join(fixed_by_start)} shape the model or its first stages, which --start_from takes as they are")
    # Checked here, not when a stage builds its config: the flow head's is built after about 40 minutes of training.
    for flag in ("stage_ii_cycles", "latent_channels", "patch_size", "flow_head_hidden_size", "llm_hidden_size", "llm_num_layers"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if IMAGE_SIZE % args.patch_size:
        parser.error(f"--patch_size must divide the {IMAGE_SIZE} px canvas, got {args.patch_size}")
    if args.train_categories is not None and args.start_from is None:
        parser.error("--train_categories needs --start_from: the first stages train on every category")
    for flag in ("generation_ratio", "caption_ratio", "relation_word_share", "relation_question_share",
                 "one_sided_relation_share"):
        if not 0.0 <= getattr(args, flag) <= 1.0:
            parser.error(f"--{flag} must be in [0, 1], got {getattr(args, flag)}")
    if args.relation_word_share + args.relation_question_share > 1.0:
        parser.error("--relation_word_share + --relation_question_share must be at most 1")
    if args.llm_hidden_size % LLM_HEAD_DIM:
        parser.error(f"--llm_hidden_size must be a multiple of {LLM_HEAD_DIM}, got {args.llm_hidden_size}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    pretrain_scenes = args.num_pretrain_scenes if args.start_from is None else 0
    dataset = make_shapes_dataset(max(args.num_scenes, pretrain_scenes), seed=args.data_seed,
                                  categories=args.train_categories, relation_word_share=args.relation_word_share,
                                  relation_question_share=args.relation_question_share,
                                  one_sided_relation_share=args.one_sided_relation_share)
    pretrain_dataset = dataset.select(range(pretrain_scenes))
    dataset = dataset.select(range(args.num_scenes))
    llm_size = {**LLM, "hidden_size": args.llm_hidden_size, "num_hidden_layers": args.llm_num_layers}
    if args.prompt_contrast_weight < 0 or not 0.0 <= args.prompt_contrast_min_time < 1.0:
        parser.error("--prompt_contrast_weight must be >= 0 and --prompt_contrast_min_time in [0, 1), got "
                     f"{args.prompt_contrast_weight} and {args.prompt_contrast_min_time}")
    if args.image_position_scale is not None and args.image_position_scale < 0:
        parser.error(f"--image_position_scale must be >= 0, got {args.image_position_scale}")
    unified = dict(ema_decay=args.ema_decay, seed=args.unified_seed, prompt_contrast_weight=args.prompt_contrast_weight,
                   prompt_contrast_min_time=args.prompt_contrast_min_time, image_position_scale=args.image_position_scale,
                   caption_ratio=args.caption_ratio, flow_head_latent_input=args.flow_head_latent_input)
    if args.start_from is None:
        current = first_stages(parser, args, pretrain_dataset, llm_size)
        current = train_unified(args.work_dir, dataset, current, "I", args.scale, 0.5, **unified)
    else:
        current = args.start_from
        logger.info(f"4. unified stages II-III, continuing from {current}")
    for cycle in range(1, args.stage_ii_cycles + 1):
        current = train_unified(args.work_dir, dataset, current, "II", args.scale, args.generation_ratio, cycle, **unified)
    current = train_unified(args.work_dir, dataset, current, "III", args.scale, 0.3, **unified)
    final = args.work_dir / "final"
    model = HydraForConditionalGeneration.from_pretrained(current)
    model.generation_config.text_to_image = SAMPLING
    model.save_pretrained(final)
    HydraProcessor.from_pretrained(current).save_pretrained(final)
    recipe = {"stages": STAGES, "scale": args.scale, "scenes": args.num_scenes, "pretrain_scenes": args.num_pretrain_scenes,
              "stage_ii_cycles": args.stage_ii_cycles, "generation_ratio": args.generation_ratio,
              "repa_weight": args.repa_weight, "ema_decay": args.ema_decay,
              "timestep_logit_mean": args.timestep_logit_mean, "timestep_logit_std": args.timestep_logit_std,
              "llm": llm_size, "latent_channels": args.latent_channels, "patch_size": args.patch_size,
              "flow_head_hidden_size": args.flow_head_hidden_size, "seed": TRAIN_SEED, "data_seed": args.data_seed,
              "llm_seed": args.llm_seed, "unified_seed": args.unified_seed,
              "prompt_contrast_weight": args.prompt_contrast_weight, "prompt_contrast_min_time": args.prompt_contrast_min_time,
              "image_position_scale": model.config.image_position_scale, "caption_ratio": args.caption_ratio,
              "flow_head_latent_input": model.config.flow_head_latent_input,
              "relation_word_share": args.relation_word_share, "relation_question_share": args.relation_question_share,
              "one_sided_relation_share": args.one_sided_relation_share}
    if args.start_from is not None:  # the model's shape and first stages are the start's: keep its own recipe
        earlier = args.start_from / "training_recipe.json"
        kept = ("stages", "scale", "scenes", "stage_ii_cycles", "generation_ratio", "ema_decay", "seed", "data_seed",
                "unified_seed", "prompt_contrast_weight", "prompt_contrast_min_time", "image_position_scale", "caption_ratio",
                "flow_head_latent_input",
                "relation_word_share", "relation_question_share", "one_sided_relation_share")
        recipe = {"start_from": str(args.start_from), "start_recipe": json.loads(earlier.read_text()) if earlier.is_file() else None,
                  **{key: recipe[key] for key in kept}}
        if args.train_categories is not None:
            recipe["train_categories"] = args.train_categories
    (final / "training_recipe.json").write_text(json.dumps(recipe, indent=2))
    logger.info(f"done: {final}")


if __name__ == "__main__":
    main()
