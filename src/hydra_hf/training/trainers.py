"""`Trainer` subclasses for HYDRA-TOK (stages 1-2) and the unified model (stages I-III).

Both add to the stock Trainer: the stage's trainable-parameter selection, logging of each loss term, the
collator's batch position on resume (its random draws are keyed by it), an optional EMA of the trained weights
(`ema_decay`, saved in each checkpoint), and a completion marker written last, so that resuming never picks a
half-written checkpoint (`last_complete_checkpoint`).
"""

import json
import os
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..models.hydra_tok.modeling_hydra_tok import HydraTokModel
from .discriminator import PatchDiscriminator
from .ema import EMACallback
from .losses import cosine_distillation_loss, discriminator_hinge_loss, generator_adversarial_loss
from .perceptual import PerceptualLoss
from .stages import TOKENIZER_STAGES, UNIFIED_STAGES, Stage, apply_stage, resolve_stage

__all__ = ["HydraTokTrainer", "HydraTrainer", "last_complete_checkpoint"]

logger = logging.get_logger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
DISCRIMINATOR_WEIGHTS = "discriminator.safetensors"
DISCRIMINATOR_OPTIMIZER = "discriminator_optimizer.pt"


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` folder whose completion marker was written, or None."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    complete = []
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.rsplit("-", 1)[-1]
        if step.isdigit() and (path / COMPLETE_MARKER).exists():
            complete.append((int(step), path))
        elif step.isdigit():
            logger.warning(f"ignoring incomplete checkpoint {path} (no {COMPLETE_MARKER})")
    return str(max(complete)[1]) if complete else None


class _HydraTrainerMixin:
    """Behaviour shared by both trainers; see the module docstring."""

    def _init_stage(self, stage: Stage, ema_decay: float | None) -> None:
        self.stage = stage
        self.trainable_parameter_names = apply_stage(self.model, stage)
        total = sum(p.numel() for p in self.model.parameters())
        trained = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        logger.info(f"stage {stage.name} ({stage.description}): training {trained:,} of {total:,} parameters")
        self._loss_parts = defaultdict(list)
        self.ema = EMACallback(ema_decay) if ema_decay is not None else None
        if self.ema is not None:
            self.add_callback(self.ema)

    def _record(self, **parts) -> None:
        for name, value in parts.items():
            if value is not None:
                self._loss_parts[name].append(float(value.detach()))

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs and self._loss_parts:
            logs.update({name: round(sum(values) / len(values), 6) for name, values in self._loss_parts.items()})
            skipped = getattr(self.data_collator, "skipped", None)
            if skipped:
                logs.update({f"skipped_{reason.replace(' ', '_')}": count for reason, count in skipped.items()})
            self._loss_parts.clear()
        super().log(logs, *args, **kwargs)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.ema is not None and self.args.should_save:
            self.ema.save(output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if self.ema is not None:
            self.ema.resume_from = checkpoint

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            staging = folder / (COMPLETE_MARKER + ".tmp")
            staging.write_text(json.dumps({"global_step": self.state.global_step}))
            os.replace(staging, folder / COMPLETE_MARKER)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"resume requested but {self.args.output_dir} holds no complete checkpoint")
        if resume_from_checkpoint and hasattr(self.data_collator, "batches_seen"):
            state = json.loads((Path(resume_from_checkpoint) / "trainer_state.json").read_text())
            self.data_collator.batches_seen = state["global_step"] * self.args.gradient_accumulation_steps
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


class HydraTokTrainer(_HydraTrainerMixin, Trainer):
    """HYDRA-TOK training. Stage "1": everything end to end (flow matching + KL + cosine + self-distillation +
    perceptual); stage "2": the decoder only, with the adversarial loss against a `PatchDiscriminator` that has its
    own optimizer. Discriminator and generator updates alternate every micro-batch; the discriminator's weights and
    optimizer are saved in each checkpoint and restored on resume.

    `teacher`: the frozen self-distillation teacher (a `HydraTokModel`, usually a copy of the initial ViT); it also
    gives the perceptual loss its feature space when LPIPS is not available.
    """

    def __init__(
        self,
        model: HydraTokModel,
        *args,
        stage: str | Stage = "1",
        teacher: HydraTokModel | None = None,
        discriminator: PatchDiscriminator | None = None,
        discriminator_learning_rate: float | None = None,
        perceptual_backend: str = "auto",
        trainable: list[str] | None = None,
        ema_decay: float | None = None,
        **kwargs,
    ):
        super().__init__(model, *args, **kwargs)
        self._init_stage(resolve_stage(stage, TOKENIZER_STAGES, trainable), ema_decay)
        config = model.config
        self.teacher = teacher.eval().requires_grad_(False).to(self.args.device) if teacher is not None else None
        if self.teacher is None and config.distillation_weight > 0:
            logger.warning("no teacher given: training runs without self-distillation")
        self.perceptual = (
            PerceptualLoss(self.teacher, perceptual_backend).to(self.args.device) if config.perceptual_weight > 0 else None
        )
        self.discriminator = None
        if self.stage.adversarial and config.adversarial_weight > 0:
            self.discriminator = (discriminator or PatchDiscriminator()).to(self.args.device)
            self.discriminator_learning_rate = discriminator_learning_rate or self.args.learning_rate
        elif self.stage.adversarial:
            logger.info("adversarial_weight is 0: this stage runs without the GAN term and its discriminator")
        self._fake_images = None
        # Distillation, Sem-ViT's forward (and the constant GSB terms) matter only while the encoder trains.
        self.encoder_trains = any(not name.startswith("decoder.") for name in self.trainable_parameter_names)

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.discriminator is not None and not hasattr(self, "discriminator_optimizer"):
            self.discriminator_optimizer = torch.optim.AdamW(
                self.discriminator.parameters(), lr=self.discriminator_learning_rate, betas=(0.5, 0.9)
            )
            if self.args.world_size > 1:
                self.discriminator_ddp = self.accelerator.prepare_model(self.discriminator)
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pixels = inputs["pixel_values"]
        config = self.model.config
        distill = self.encoder_trains and self.teacher is not None and config.distillation_weight > 0
        outputs = model(
            pixel_values=pixels, return_loss=True, output_distillation_states=distill,
            output_semantic_features=self.encoder_trains,
        )
        loss = outputs.loss
        distillation = perceptual = adversarial = teacher_states = None
        if distill:
            with torch.no_grad():
                teacher_states = self.teacher(pixels, bypass_bottleneck=True, output_distillation_states=True)
            teacher_states = teacher_states.distillation_hidden_states
            distillation = cosine_distillation_loss(outputs.distillation_hidden_states, teacher_states)
            loss = loss + config.distillation_weight * distillation
        if self.perceptual is not None:
            perceptual = self.perceptual(outputs.clean_estimate, pixels, target_features=teacher_states)
            loss = loss + config.perceptual_weight * perceptual
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)
            adversarial = generator_adversarial_loss(self.discriminator(outputs.clean_estimate))
            self.discriminator.requires_grad_(True)
            loss = loss + config.adversarial_weight * adversarial
            self._fake_images = outputs.clean_estimate.detach()
        self._record(
            loss_flow=outputs.loss_flow, loss_kl=outputs.kl_loss, loss_cosine=outputs.cosine_loss,
            loss_distillation=distillation, loss_perceptual=perceptual, loss_adversarial=adversarial,
        )
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.discriminator is not None and self._fake_images is not None:
            self._discriminator_step(inputs["pixel_values"], self._fake_images)
        return loss

    def _discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        discriminator = getattr(self, "discriminator_ddp", self.discriminator)
        discriminator.train()
        logits = discriminator(torch.cat([real, fake]).to(self.args.device))  # one call: DDP-friendly
        loss = discriminator_hinge_loss(*logits.chunk(2))
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.discriminator_optimizer.step()
        self._record(loss_discriminator=loss)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.discriminator is not None and self.args.should_save:
            save_file(self.discriminator.state_dict(), os.path.join(output_dir, DISCRIMINATOR_WEIGHTS))
            torch.save(self.discriminator_optimizer.state_dict(), os.path.join(output_dir, DISCRIMINATOR_OPTIMIZER))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self.discriminator is None:
            return
        weights = os.path.join(checkpoint, DISCRIMINATOR_WEIGHTS)
        if os.path.exists(weights):
            self.discriminator.load_state_dict(load_file(weights, device=str(self.args.device)))
            state = torch.load(os.path.join(checkpoint, DISCRIMINATOR_OPTIMIZER), weights_only=True, map_location=self.args.device)
            self.discriminator_optimizer.load_state_dict(state)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call)
        if not _internal_call and self.discriminator is not None and self.args.should_save:
            self.discriminator.save_pretrained(os.path.join(output_dir or self.args.output_dir, "discriminator"))


class HydraTrainer(_HydraTrainerMixin, Trainer):
    """Unified stages "I", "II", "III" (see `hydra_hf.training.stages`); batches come from `HydraCollator`, which
    mixes understanding and generation rows and drops prompts for classifier-free guidance."""

    def __init__(
        self,
        model: nn.Module,
        *args,
        stage: str | Stage = "I",
        trainable: list[str] | None = None,
        ema_decay: float | None = None,
        **kwargs,
    ):
        super().__init__(model, *args, **kwargs)
        self._init_stage(resolve_stage(stage, UNIFIED_STAGES, trainable), ema_decay)
        if model.config.prompt_contrast_weight > 0 and getattr(self.data_collator, "negative_caption", None) is None:
            logger.warning(
                "prompt_contrast_weight > 0 but the data collator makes no prompt-contrast pairs (give HydraCollator a "
                "negative_caption): the term stays at zero"
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        self._record(loss_ntp=outputs.loss_ntp, loss_flow=outputs.loss_flow, loss_repa=outputs.loss_repa,
                     loss_prompt_contrast=outputs.loss_prompt_contrast)
        return (outputs.loss, outputs) if return_outputs else outputs.loss
