"""Arguments shared by the training scripts (`examples/train_tokenizer.py`, `examples/train_hydra.py`,
`examples/finetune_lora.py`), parsed by `HfArgumentParser` from the command line or from one YAML/JSON file, and
the scripts' shared start and end (`prepare_dataset`, `end_processes`)."""

import sys
import time
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from .data import load_training_dataset

__all__ = ["DataArguments", "StageArguments", "end_processes", "parse_arguments", "prepare_dataset", "resume_argument"]

GLOO_WORKER_SETTLE_SECONDS = 1.0  # see end_processes


@dataclass
class DataArguments:
    dataset: str = field(metadata={"help": "image folder, data file(s) (parquet/arrow/json/csv), save_to_disk folder, or Hub id"})
    split: str = field(default="train")
    streaming: bool = field(default=False, metadata={"help": "stream the data (IterableDataset); needs --max_steps"})
    image_column: str = field(default="image")
    caption_column: str | None = field(default="caption")
    question_column: str | None = field(default="question")
    answer_column: str | None = field(default="answer")
    image_size: int | None = field(default=None, metadata={"help": "training resolution; default: the model's"})
    max_train_samples: int | None = field(default=None)
    generation_ratio: float = field(default=0.5, metadata={"help": "share of rows used for text-to-image"})
    cfg_dropout_prob: float | None = field(default=None, metadata={"help": "prompt dropout; default: the model config's"})
    caption_prompt: str = field(default="describe the image .", metadata={"help": "question for caption-only rows"})
    caption_ratio: float = field(
        default=0.0, metadata={"help": "share of understanding rows with a caption trained to describe the image instead of answering"}
    )


@dataclass
class StageArguments:
    """What both trainers' scripts let a run change about a stage's parameters."""

    trainable: list[str] | None = field(default=None, metadata={"help": "override the stage's trainable regexes"})
    ema_decay: float | None = field(
        default=None, metadata={"help": "keep an EMA of the trained weights (e.g. 0.9995) and save it as the model"}
    )


def parse_arguments(dataclass_types: tuple, args: list[str] | None = None) -> tuple:
    """`script.py config.yaml` / `script.py config.json` or plain `--flags`."""
    parser = HfArgumentParser(dataclass_types)
    args = sys.argv[1:] if args is None else args
    if len(args) == 1 and args[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(args[0])
    if len(args) == 1 and args[0].endswith(".json"):
        return parser.parse_json_file(args[0])
    return parser.parse_args_into_dataclasses(args)


def prepare_dataset(data_args: DataArguments):
    dataset = load_training_dataset(data_args.dataset, data_args.split, data_args.image_column, data_args.streaming)
    if data_args.max_train_samples is not None:
        if data_args.streaming:
            dataset = dataset.take(data_args.max_train_samples)
        else:
            dataset = dataset.select(range(min(data_args.max_train_samples, len(dataset))))
    return dataset


def resume_argument(value: str | None) -> str | bool | None:
    """`--resume_from_checkpoint last` resumes from the newest complete checkpoint in `output_dir`."""
    return True if value == "last" else value


def end_processes(trainer) -> None:
    """Wait for every process, then shut the process group down before the script returns.

    A rank that reaches interpreter exit with its process group still alive (here: rank 1, while rank 0 still wrote
    the final model) can abort in gloo's thread teardown with "terminate called without an active exception"
    (pytorch/pytorch#190489). Call it only after a successful run: a rank that failed must not wait for the others.

    After the barrier, a gloo worker thread still has to free the barrier's work (which holds the last reference to
    the final all-gather and its Python-owned tensors), and that needs the GIL. If the DDP reducer then drops the
    process group while the main thread holds the GIL, `~ProcessGroupGloo` joins that thread and both wait forever
    (a hang at the end of a 2-process CPU run: 2 of 49 runs under load, 0 of 105 with the sleep, measured by
    scripts/stress_ddp_teardown.sh; py-spy showed exactly these two stacks). Sleeping, which frees the GIL, lets the
    worker finish first. Only gloo needs it; NCCL's teardown does not take this path.
    """
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.num_processes > 1 and torch.distributed.get_backend() == "gloo":
        time.sleep(GLOO_WORKER_SETTLE_SECONDS)
    trainer.accelerator.end_training()
