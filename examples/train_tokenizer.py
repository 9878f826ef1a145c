"""Train HYDRA-TOK: stage 1 (end to end) or stage 2 (decoder refinement with the GAN).

    python examples/train_tokenizer.py --dataset DATA --preset tiny --stage 1 --output_dir out/tok-s1 --max_steps 1000
    python examples/train_tokenizer.py --dataset DATA --model_name_or_path out/tok-s1 --stage 2 --output_dir out/tok-s2
    python examples/train_tokenizer.py config.yaml
    torchrun --nproc_per_node 2 examples/train_tokenizer.py ...      # or: accelerate launch --config_file ...

The self-distillation teacher is a frozen copy of the initial model unless --teacher_name_or_path is given. The
final model (and its image processor) is saved with `save_pretrained` in --output_dir.
"""

import copy
import json
from dataclasses import dataclass, field

from transformers import TrainingArguments, set_seed

from hydra_hf import HydraImageProcessor, HydraTokConfig, HydraTokModel
from hydra_hf.training import HydraTokTrainer, PatchDiscriminator, TokenizerCollator
from hydra_hf.training.arguments import (
    DataArguments,
    StageArguments,
    end_processes,
    parse_arguments,
    prepare_dataset,
    resume_argument,
)


@dataclass
class TokenizerArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "a HydraTokModel folder to start from"})
    preset: str | None = field(default=None, metadata={"help": "or a fresh model: tiny | hydra-tok-300m"})
    config_overrides: str | None = field(default=None, metadata={"help": "JSON of config fields for --preset"})
    teacher_name_or_path: str | None = field(default=None, metadata={"help": "default: a frozen copy of the start"})
    stage: str = field(default="1", metadata={"help": "1: end to end; 2: decoder + GAN"})
    perceptual_backend: str = field(default="auto", metadata={"help": "auto | lpips | teacher"})
    discriminator_learning_rate: float | None = field(default=None)


def main(args: list[str] | None = None) -> None:
    model_args, stage_args, data_args, training_args = parse_arguments(
        (TokenizerArguments, StageArguments, DataArguments, TrainingArguments), args
    )
    set_seed(training_args.seed)
    if model_args.model_name_or_path:
        model = HydraTokModel.from_pretrained(model_args.model_name_or_path)
    elif model_args.preset:
        overrides = json.loads(model_args.config_overrides) if model_args.config_overrides else {}
        model = HydraTokModel(HydraTokConfig.from_preset(model_args.preset, **overrides))
    else:
        raise ValueError("give --model_name_or_path or --preset")
    teacher = (
        HydraTokModel.from_pretrained(model_args.teacher_name_or_path)
        if model_args.teacher_name_or_path
        else copy.deepcopy(model)
    )
    size = data_args.image_size or model.config.image_size
    image_processor = HydraImageProcessor(size={"height": size, "width": size}, patch_size=model.config.patch_size)
    training_args.remove_unused_columns = False
    trainer = HydraTokTrainer(
        model,
        training_args,
        stage=model_args.stage,
        teacher=teacher,
        discriminator=PatchDiscriminator() if model_args.stage == "2" else None,
        discriminator_learning_rate=model_args.discriminator_learning_rate,
        perceptual_backend=model_args.perceptual_backend,
        trainable=stage_args.trainable,
        ema_decay=stage_args.ema_decay,
        train_dataset=prepare_dataset(data_args),
        data_collator=TokenizerCollator(image_processor, image_column=data_args.image_column),
        processing_class=image_processor,
    )
    trainer.train(resume_from_checkpoint=resume_argument(training_args.resume_from_checkpoint))
    trainer.save_model()
    end_processes(trainer)


if __name__ == "__main__":
    main()
