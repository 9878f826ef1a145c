"""LoRA fine-tuning of HYDRA, for generation and/or understanding, through the same HydraTrainer path as the stages.

    python examples/finetune_lora.py --model_name_or_path MODEL --dataset DATA --output_dir out/lora --max_steps 300
    python examples/finetune_lora.py config.yaml

MODEL is any folder (or Hub id) holding a HYDRA model and its processor: `hydra-tiny-shapes`, a stage output of
train_hydra.py, a conversion. DATA is anything train_hydra.py's --dataset takes (image folder, parquet/json/csv,
a `save_to_disk` folder, a Hub id) with an image and a caption and/or question/answer per row; --generation_ratio
splits rows between text-to-image (1 = generation only) and understanding (0 = understanding only).

Peft adapts the LLM's attention and MLP projections (hydra_hf.lora.hydra_lora_config; --include_vision adds the
Sem-ViT) and trains the flow head, projector and time embedding in full (--train_heads); --train_tokens also trains
the embedding rows of given words. --output_dir receives the adapter only: adapter_model.safetensors,
adapter_config.json and a model card (library_name: peft, base_model: --base_model_id). Use it with
`HydraPipeline.load_lora_weights(output_dir)` or `model.load_adapter(output_dir)`; --push_to_hub uploads it with
its card at the end, in one commit.

Teaching a new concept, e.g. the shapes world's held-out colour pink, starting from hydra-tiny-shapes:

    python -c "from hydra_hf.data import make_shapes_dataset; \\
        make_shapes_dataset(2000, seed=7, featured_color='pink').save_to_disk('data/pink')"
    python examples/finetune_lora.py --model_name_or_path hydra-tiny-shapes --dataset data/pink \\
        --output_dir out/pink-lora --max_steps 300 --learning_rate 1e-3 --train_tokens pink

then score "pink" prompts with and without the adapter (hydra_hf.evaluation). examples/lora_pink_demo.py does all of
this, and also refines HYDRA-TOK's decoder, which never saw pink (an adapter on the LLM cannot draw a colour that the
decoder turns into another).
"""

import sys
from argparse import RawDescriptionHelpFormatter
from dataclasses import dataclass, field
from pathlib import Path

from peft import get_peft_model
from transformers import HfArgumentParser, TrainingArguments, set_seed

from hydra_hf import HydraForConditionalGeneration, HydraProcessor
from hydra_hf.hub import adapter_card, push_to_hub, save_for_hub
from hydra_hf.lora import LORA_TARGETS, hydra_lora_config, lora_stage
from hydra_hf.training import HydraCollator, HydraTrainer
from hydra_hf.training.arguments import (
    DataArguments,
    end_processes,
    parse_arguments,
    prepare_dataset,
    resume_argument,
)


@dataclass
class LoraArguments:
    model_name_or_path: str = field(metadata={"help": "folder or Hub id with a HYDRA model and its processor"})
    base_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id of the base model, for the card and adapter_config.json; default: the model path"},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha; default: the rank (scaling 1)"})
    lora_dropout: float = field(default=0.0)
    lora_target: str = field(
        default="llm", metadata={"help": "LLM projections to adapt", "choices": sorted(LORA_TARGETS)}
    )
    include_vision: bool = field(default=False, metadata={"help": "also adapt the Sem-ViT blocks"})
    train_heads: bool = field(default=True, metadata={"help": "train flow head, projector and time embedding in full"})
    train_tokens: list[str] | None = field(
        default=None, metadata={"help": "words whose embedding rows train too (e.g. a new concept's name)"}
    )


def token_indices(processor: HydraProcessor, words: list[str]) -> list[int]:
    """Vocabulary ids of whole words; a word the tokenizer splits or does not know cannot get its own row."""
    tokenizer, ids = processor.tokenizer, []
    for word in words:
        pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1 or pieces[0] == tokenizer.unk_token_id:
            raise ValueError(f"--train_tokens {word!r} is not one known token of the tokenizer ({pieces})")
        ids.append(pieces[0])
    return ids


def main(args: list[str] | None = None) -> None:
    dataclass_types = (LoraArguments, DataArguments, TrainingArguments)
    args = sys.argv[1:] if args is None else args
    if {"-h", "--help"} & set(args):  # parse_arguments' parser has no description: show this module's docstring
        parser = HfArgumentParser(dataclass_types, description=__doc__, formatter_class=RawDescriptionHelpFormatter)
        parser.parse_args(args)
    lora_args, data_args, training_args = parse_arguments(dataclass_types, args)
    set_seed(training_args.seed)

    model = HydraForConditionalGeneration.from_pretrained(lora_args.model_name_or_path)
    processor = HydraProcessor.from_pretrained(lora_args.model_name_or_path)
    if data_args.image_size is not None:
        processor.image_processor.size = {"height": data_args.image_size, "width": data_args.image_size}
    base_model_id = lora_args.base_model_id or lora_args.model_name_or_path
    token_rows = token_indices(processor, lora_args.train_tokens) if lora_args.train_tokens else None
    lora_config = hydra_lora_config(
        r=lora_args.lora_r,
        alpha=lora_args.lora_alpha,
        dropout=lora_args.lora_dropout,
        include_vision=lora_args.include_vision,
        train_heads=lora_args.train_heads,
        target=lora_args.lora_target,
        trainable_token_indices={"embed_tokens": token_rows} if token_rows else None,
    )
    cfg_dropout_prob = (
        model.config.cfg_dropout_prob if data_args.cfg_dropout_prob is None else data_args.cfg_dropout_prob
    )
    model = get_peft_model(model, lora_config)
    model.peft_config["default"].base_model_name_or_path = base_model_id

    collator = HydraCollator(
        processor,
        generation_ratio=data_args.generation_ratio,
        cfg_dropout_prob=cfg_dropout_prob,
        image_column=data_args.image_column,
        caption_column=data_args.caption_column,
        question_column=data_args.question_column,
        answer_column=data_args.answer_column,
        caption_prompt=data_args.caption_prompt,
        seed=training_args.seed + training_args.process_index,
    )
    # The adapter and its card are pushed once, at the end, not with the Trainer's checkpoint pushes and card.
    push, training_args.push_to_hub = training_args.push_to_hub, False
    training_args.remove_unused_columns = False
    trainer = HydraTrainer(
        model,
        training_args,
        stage=lora_stage(),  # trains exactly the adapter's parameters, as peft set them up
        train_dataset=prepare_dataset(data_args),
        data_collator=collator,
    )
    trainer.train(resume_from_checkpoint=resume_argument(training_args.resume_from_checkpoint))
    end_processes(trainer)  # the adapter is written by the main process alone, without collectives

    if not training_args.should_save:
        return
    repo_id = (training_args.hub_model_id or Path(training_args.output_dir).name) if push else None
    batch_size = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    card = adapter_card(
        repo_id,
        base_model=base_model_id,
        lora_config=lora_config,
        training_details={
            "dataset": data_args.dataset,
            "steps": trainer.state.global_step,
            "learning rate": training_args.learning_rate,
            "batch size": batch_size * training_args.world_size,
            "generation ratio": data_args.generation_ratio,
            "trained embedding rows": ", ".join(lora_args.train_tokens or []) or "none",
        },
    )
    save_for_hub(training_args.output_dir, model=trainer.model, card=card)
    if push:
        push_to_hub(
            repo_id,
            model=trainer.model,
            card=card,
            token=training_args.hub_token,
            private=training_args.hub_private_repo,
        )


if __name__ == "__main__":
    main()
