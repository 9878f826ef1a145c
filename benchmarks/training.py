"""Section 4: training samples/s and MFU of HydraTokTrainer steps (stage 1, with the self-distillation teacher and
the teacher-feature perceptual loss; stage 2, the decoder with the GAN term and the discriminator's own update) and
of one HydraTrainer step (stage II, mixed understanding/generation rows), measured inside the real `Trainer.train()`
loop.

Step time: the interval between consecutive `on_step_end` callbacks after a few warm-up steps (data collation,
forward, backward and optimizer step included). FLOPs: FlopCounterMode around `trainer.training_step` (forward +
backward, teacher passes included) on exactly the batches of the timed steps, recorded by wrapping the collator.
"""

import copy
import tempfile
import time

import torch
from transformers import TrainerCallback, TrainingArguments

from hydra_hf import HydraImageProcessor
from hydra_hf.data import make_shapes_dataset
from hydra_hf.training import (
    HydraCollator,
    HydraTokTrainer,
    HydraTrainer,
    TokenizerCollator,
)

from .common import count_flops
from .models import build_hydra, build_hydra_tok, parameter_count

TITLE = "Training"
CASES = {
    "hydra-tok-stage1": "HydraTokTrainer stage 1",
    "hydra-tok-stage2": "HydraTokTrainer stage 2",
    "hydra-stage2": "HydraTrainer stage II",
}


def cases(opts: dict) -> list[str]:
    return list(CASES)


class _StepClock(TrainerCallback):
    def __init__(self):
        self.ends = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


class _RecordingCollator:
    """Keeps every batch the Trainer draws, in order, so the timed steps' FLOPs can be counted afterwards."""

    def __init__(self, collator):
        self.collator = collator
        self.batches = []

    def __call__(self, examples):
        batch = self.collator(examples)
        self.batches.append(batch)
        return batch


def run_case(case: str, opts: dict) -> dict:
    batch, warmup, steps = opts["train_batch"], opts["train_warmup_steps"], opts["train_steps"]
    if warmup < 1:
        raise ValueError("the training benchmark needs at least one warm-up step (the first timed step's start)")
    dataset = make_shapes_dataset(batch * (warmup + steps + 2), seed=0)
    if case.startswith("hydra-tok"):
        size = opts["unified_tokenizer"]
        model = build_hydra_tok(size, opts["image_size"]).train()
        image_size = model.config.image_size
        processor = HydraImageProcessor(
            size={"height": image_size, "width": image_size}, patch_size=model.config.patch_size
        )
        collator = _RecordingCollator(TokenizerCollator(processor))
        trainer_class = HydraTokTrainer
        stage = case.removeprefix("hydra-tok-stage")
        extra = dict(stage=stage, teacher=copy.deepcopy(model), perceptual_backend="teacher")
        described = f"HYDRA-TOK {size}, {image_size} px, batch {batch}" + (", GAN" if stage == "2" else "")
    else:
        model, processor = build_hydra(opts)
        model.train()
        image_size = model.config.vision_config.image_size
        collator = _RecordingCollator(HydraCollator(processor, generation_ratio=0.5, cfg_dropout_prob=0.1))
        trainer_class = HydraTrainer
        extra = dict(stage="II")
        described = f"HYDRA (LLM + HYDRA-TOK {opts['unified_tokenizer']}), {image_size} px, batch {batch}"

    clock = _StepClock()
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            max_steps=warmup + steps,
            per_device_train_batch_size=batch,
            learning_rate=1e-4,
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            remove_unused_columns=False,
            use_cpu=torch.device(opts["device"]).type == "cpu",
            bf16=opts["dtype"] == torch.bfloat16,
            fp16=opts["dtype"] == torch.float16,
            seed=0,
        )
        trainer = trainer_class(
            model, args, train_dataset=dataset, data_collator=collator, callbacks=[clock], **extra
        )
        trainer.train()
        timed_batches = collator.batches[warmup : warmup + steps]
        flops = [count_flops(lambda b=b: trainer.training_step(trainer.model, b)) for b in timed_batches]

    # Timed step k runs from the end of step k - 1 to its own end, so at least one warm-up step is needed.
    intervals = [later - earlier for earlier, later in zip(clock.ends[warmup - 1 : -1], clock.ends[warmup:])]
    seconds = sum(intervals)
    samples = batch * len(intervals)
    achieved = sum(flops) / seconds / 1e9
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "trainer": CASES[case],
        "setup": described,
        "parameters": parameter_count(model),
        "trainable_parameters": trainable,
        "batch": batch,
        "step_seconds": intervals,
        "samples_per_s": samples / seconds,
        "gflops_per_sample": sum(flops) / samples / 1e9,
        "achieved_gflops": achieved,
        "mfu": achieved / opts["peak_gflops"],
    }


def table(results: dict, opts: dict) -> str:
    lines = [
        "| trainer | setup | params (trainable) | s/step | samples/s | GFLOP/sample (fwd+bwd) | MFU |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for case, row in results.items():
        if "error" in row:
            lines.append(f"| {case} | failed: {row['error']} |" + " |" * 5)
            continue
        step = sum(row["step_seconds"]) / len(row["step_seconds"])
        lines.append(
            f"| {row['trainer']} | {row['setup']} | {row['parameters'] / 1e6:.1f} M "
            f"({row['trainable_parameters'] / 1e6:.1f} M) | {step:.2f} | {row['samples_per_s']:.2f} | "
            f"{row['gflops_per_sample']:.4g} | {row['mfu']:.0%} |"
        )
    return "\n".join(lines)
