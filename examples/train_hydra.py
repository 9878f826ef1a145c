"""Train the unified model: stage I (alignment), II (joint pre-training) or III (instruction tuning).

    python examples/train_hydra.py --dataset DATA --model_name_or_path INIT --stage I --output_dir out/s1 --max_steps 1000
    python examples/train_hydra.py config.yaml
    torchrun --nproc_per_node 2 examples/train_hydra.py ...           # or: accelerate launch --config_file ...

INIT is a folder holding a HydraForConditionalGeneration and its processor (e.g. from conversion/ or a previous
stage). Rows need an image and a caption and/or question/answer (column names are arguments); each row becomes an
understanding or a generation example (--generation_ratio). The final model and processor are saved with
`save_pretrained` in --output_dir, loadable by every front door (transformers Auto classes, HydraPipeline).
"""

from dataclasses import dataclass, field

from transformers import TrainingArguments, set_seed

from hydra_hf import HydraForConditionalGeneration, HydraProcessor
from hydra_hf.training import HydraCollator, HydraTrainer
from hydra_hf.training.arguments import (
    DataArguments,
    StageArguments,
    end_processes,
    parse_arguments,
    prepare_dataset,
    resume_argument,
)


@dataclass
class HydraArguments:
    model_name_or_path: str = field(metadata={"help": "folder with a HYDRA model and its processor"})
    stage: str = field(default="I", metadata={"help": "I: heads only, LLM frozen; II: joint; III: instructions"})


def main(args: list[str] | None = None) -> None:
    model_args, stage_args, data_args, training_args = parse_arguments(
        (HydraArguments, StageArguments, DataArguments, TrainingArguments), args
    )
    set_seed(training_args.seed)
    model = HydraForConditionalGeneration.from_pretrained(model_args.model_name_or_path)
    processor = HydraProcessor.from_pretrained(model_args.model_name_or_path)
    if data_args.image_size is not None:
        processor.image_processor.size = {"height": data_args.image_size, "width": data_args.image_size}
    collator = HydraCollator(
        processor,
        generation_ratio=data_args.generation_ratio,
        cfg_dropout_prob=model.config.cfg_dropout_prob if data_args.cfg_dropout_prob is None else data_args.cfg_dropout_prob,
        image_column=data_args.image_column,
        caption_column=data_args.caption_column,
        question_column=data_args.question_column,
        answer_column=data_args.answer_column,
        caption_prompt=data_args.caption_prompt,
        caption_ratio=data_args.caption_ratio,
        seed=training_args.seed + training_args.process_index,
    )
    training_args.remove_unused_columns = False
    trainer = HydraTrainer(
        model,
        training_args,
        stage=model_args.stage,
        trainable=stage_args.trainable,
        ema_decay=stage_args.ema_decay,
        train_dataset=prepare_dataset(data_args),
        data_collator=collator,
        processing_class=processor,
    )
    trainer.train(resume_from_checkpoint=resume_argument(training_args.resume_from_checkpoint))
    trainer.save_model()
    end_processes(trainer)


if __name__ == "__main__":
    main()
