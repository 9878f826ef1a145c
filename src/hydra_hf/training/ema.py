"""An exponential moving average (EMA) of the trained weights, as diffusers' training scripts keep one (`--use_ema`),
for `HydraTrainer`/`HydraTokTrainer` (`ema_decay=`): a `TrainerCallback` around diffusers' `EMAModel`."""

from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import TrainerCallback

__all__ = ["EMA_WEIGHTS", "EMACallback"]

EMA_WEIGHTS = "ema.safetensors"


class EMACallback(TrainerCallback):
    """Averages the parameters that train (those with `requires_grad` when training begins) after every optimizer
    step, and copies the average into the model when training ends, so that `save_model` writes the averaged weights.

    `decay` caps the decay; the warm-up `1 - (1 + step) ** -power` makes a short run average over fewer steps than a
    long one (power 3/4: 0.992 after 600 steps, 0.9985 after 6000). The trainers save the average in every checkpoint
    (`save`) and restore it on resume (`resume_from`).
    """

    def __init__(self, decay: float = 0.9995, power: float = 0.75):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {decay}")
        self.decay, self.power = decay, power
        self.ema: EMAModel | None = None
        self.trained: dict[str, torch.nn.Parameter] = {}
        self.resume_from: str | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.trained = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
        parameters = list(self.trained.values())
        self.ema = EMAModel(parameters, decay=self.decay, use_ema_warmup=True, power=self.power, foreach=True)
        if self.resume_from is not None:
            path = Path(self.resume_from) / EMA_WEIGHTS
            if not path.exists():
                raise ValueError(f"{self.resume_from} holds no {EMA_WEIGHTS}: it was saved by a run without ema_decay")
            with safe_open(str(path), framework="pt") as saved:
                if set(saved.keys()) != set(self.trained):
                    raise ValueError(f"{path} averages other parameters than this stage trains")
                self.ema.shadow_params = [saved.get_tensor(name).to(p.device) for name, p in self.trained.items()]
                self.ema.optimization_step = int(saved.metadata()["optimization_step"])
            self.resume_from = None  # a later train() without resume starts a fresh average

    def on_step_end(self, args, state, control, **kwargs):
        self.ema.step(self.trained.values())

    def on_train_end(self, args, state, control, **kwargs):
        self.ema.copy_to(self.trained.values())

    def save(self, folder: str | Path) -> None:
        tensors = {name: shadow.detach().contiguous() for name, shadow in zip(self.trained, self.ema.shadow_params)}
        metadata = {"optimization_step": str(self.ema.optimization_step)}
        save_file(tensors, str(Path(folder) / EMA_WEIGHTS), metadata=metadata)
