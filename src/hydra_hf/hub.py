"""Model cards and Hub uploads for HYDRA repos.

Three kinds of repo, each with its card (`huggingface_hub.ModelCard` rendered from `CARD_TEMPLATE`):

- `"model"`: `HydraForConditionalGeneration.save_pretrained` + `HydraProcessor.save_pretrained` in one folder, which
  every front door loads (transformers Auto classes, `HydraPipeline.from_pretrained`); `library_name: transformers`.
- `"pipeline"`: `HydraPipeline.save_pretrained` (`model_index.json`, `model/`, `processor/`, `scheduler/`);
  `library_name: diffusers`.
- `"adapter"`: a peft LoRA adapter (`adapter_config.json`, `adapter_model.safetensors`); `library_name: peft` and
  `base_model`, as the Hub expects of adapters.

`push_to_hub` writes the files and the card into one folder and uploads it as one commit, so a repo is never
left half written (`staged_folder` does the same for a local folder). The objects' own `push_to_hub` methods work
too, but each writes its own stub card (and a `PeftModel`'s card is replaced by transformers' one), so push the card
last if you use them.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData
from transformers.utils import logging

__all__ = ["CARD_TEMPLATE", "adapter_card", "model_card", "push_to_hub", "save_for_hub", "staged_folder"]

logger = logging.get_logger(__name__)

PAPER = "https://arxiv.org/abs/2603.15228"
DEFAULT_TAGS = ("hydra", "hydra_hf", "unified-multimodal", "text-to-image", "image-text-to-text")
_KINDS = {
    # kind: (library_name, pipeline_tag, extra tags)
    "model": ("transformers", "any-to-any", ()),
    "pipeline": ("diffusers", "text-to-image", ("diffusers",)),
    "adapter": ("peft", "any-to-any", ("lora", "peft")),
}

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{% if description %}{{ description }}

{% endif %}{% if kind == "adapter" -%}
A LoRA adapter for [{{ base_model }}]({{ base_model_url }}), trained with `hydra_hf` and peft.
{%- else -%}
[HYDRA]({{ paper }}) is a unified multimodal model: one decoder LLM both answers questions about images (its LM
head) and generates images (a flow head that predicts the velocity of the HYDRA-TOK latent), with a single ViT
tokenizer, HYDRA-TOK, for both.
{%- endif %}

## Usage

Needs the `hydra_hf` package; importing it registers HYDRA with the transformers Auto classes.

```python
import hydra_hf
{% if kind == "adapter" %}from hydra_hf import HydraForConditionalGeneration, HydraPipeline

# text-to-image with the adapter (diffusers-style LoRA methods)
pipe = HydraPipeline.from_pretrained("{{ base_model }}")
pipe.load_lora_weights("{{ repo_id }}")
image = pipe("{{ prompt }}", num_inference_steps={{ num_inference_steps }}{% if guidance_scale is not none %}, guidance_scale={{ guidance_scale }}{% endif %}{% if guidance_questions %},
              guidance_questions={{ guidance_questions }}{% endif %}).images[0]
pipe.fuse_lora()            # optional: merge into the weights; pipe.unload_lora_weights() removes the adapter

# transformers / peft
model = HydraForConditionalGeneration.from_pretrained("{{ base_model }}")
model.load_adapter("{{ repo_id }}")
# or: peft.PeftModel.from_pretrained(model, "{{ repo_id }}")
{% else %}from hydra_hf import HydraPipeline
from transformers import AutoModelForImageTextToText, AutoProcessor

# text-to-image (diffusers)
pipe = HydraPipeline.from_pretrained("{{ repo_id }}")
image = pipe("{{ prompt }}", num_inference_steps={{ num_inference_steps }}{% if guidance_scale is not none %}, guidance_scale={{ guidance_scale }}{% endif %}{% if guidance_questions %},
              guidance_questions={{ guidance_questions }}{% endif %}).images[0]

# image understanding (transformers: stock generate)
model = AutoModelForImageTextToText.from_pretrained("{{ repo_id }}"{{ subfolder_model }})
processor = AutoProcessor.from_pretrained("{{ repo_id }}"{{ subfolder_processor }})
messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "{{ question }}"}]}]]
inputs = processor(text=processor.apply_chat_template(messages, add_generation_prompt=True), images=[image])
output = model.generate(**inputs, max_new_tokens=16)
print(processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
{% endif %}```

## Training details

{{ training_details }}
{% if eval_rows %}
## Evaluation

| Metric | Value |
|---|---|
{% for name, value in eval_rows %}| {{ name }} | {{ value }} |
{% endfor %}{% endif %}
## Citation

```bibtex
@article{hydra2026,
  title   = {HYDRA: Unifying Multi-modal Generation and Understanding via Representation-Harmonized Tokenization},
  eprint  = {2603.15228},
  archivePrefix = {arXiv},
  year    = {2026}
}
```
"""


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not os.path.exists(name) and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None


def _format_value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _training_markdown(details: str | Mapping | None) -> str:
    if details is None:
        return "[More Information Needed]"
    if isinstance(details, str):
        return details
    return "\n".join(f"- **{key}**: {_format_value(value)}" for key, value in details.items())


def model_card(
    repo_id: str | None = None,
    *,
    kind: str = "model",
    base_model: str | Sequence[str] | None = None,
    license: str = "apache-2.0",
    datasets: Sequence[str] | None = None,
    tags: Sequence[str] = (),
    pipeline_tag: str | None = None,
    library_name: str | None = None,
    model_name: str | None = None,
    description: str = "",
    training_details: str | Mapping | None = None,
    eval_results: Mapping[str, float] | None = None,
    prompt: str = "a red circle to the left of a blue square",
    question: str = "what color is the circle ?",
    num_inference_steps: int = 30,
    guidance_scale: float | None = 5.0,
    guidance_questions: Sequence[tuple[str, str]] | None = None,
    **card_data_kwargs,
) -> ModelCard:
    """
    The card of a HYDRA repo of `kind` `"model"`, `"pipeline"` or `"adapter"` (see the module docstring).

    `library_name`/`pipeline_tag` default by kind; `tags` are added to the HYDRA tags; `training_details` is
    Markdown or a mapping (rendered as a list); `eval_results` (metric -> value) becomes a table. Other keyword
    arguments become YAML metadata (e.g. `language`, `base_model_relation`). `prompt`/`question` go into the usage
    snippet, and so does `guidance_scale` unless it is None (the model's own default,
    `HydraPipeline.guidance_settings`), and `guidance_questions` (the prompt's (question, answer) pairs) for a model that samples with answer guidance.
    """
    if kind not in _KINDS:
        raise ValueError(f"Unknown card kind {kind!r}; expected one of {sorted(_KINDS)}")
    default_library, default_pipeline_tag, kind_tags = _KINDS[kind]
    if kind == "adapter" and not base_model:
        raise ValueError("An adapter card needs `base_model` (the Hub id of the model the adapter was trained on)")
    for name in [base_model] if isinstance(base_model, str) else list(base_model or []):
        if not _is_hub_id(name):
            logger.warning(
                f"base_model {name!r} is not a Hub repo id; the Hub expects one (e.g. `user/hydra-tiny-shapes`)"
            )
    all_tags = list(dict.fromkeys([*DEFAULT_TAGS, *kind_tags, *tags]))
    card_data = ModelCardData(
        license=license,
        library_name=library_name or default_library,
        pipeline_tag=pipeline_tag or default_pipeline_tag,
        tags=all_tags,
        base_model=base_model,
        datasets=list(datasets) if datasets else None,
        **card_data_kwargs,
    )
    in_pipeline_layout = kind == "pipeline"
    return ModelCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE,
        kind=kind,
        repo_id=repo_id or "path/to/repo",
        model_name=model_name or (repo_id.split("/")[-1] if repo_id else "HYDRA"),
        description=description,
        paper=PAPER,
        base_model_url=f"https://huggingface.co/{base_model}"
        if isinstance(base_model, str) and _is_hub_id(base_model)
        else base_model,
        subfolder_model=', subfolder="model"' if in_pipeline_layout else "",
        subfolder_processor=', subfolder="processor"' if in_pipeline_layout else "",
        prompt=prompt,
        question=question,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        guidance_questions=[tuple(pair) for pair in guidance_questions or ()],
        training_details=_training_markdown(training_details),
        eval_rows=[(name, _format_value(value)) for name, value in (eval_results or {}).items()],
    )


def adapter_card(
    repo_id: str | None = None,
    *,
    base_model: str,
    lora_config=None,
    training_details: str | Mapping | None = None,
    **kwargs,
) -> ModelCard:
    """The card of a LoRA adapter repo (`library_name: peft`, `base_model`); a peft `LoraConfig` given as
    `lora_config` is summarised under the training details. Other arguments: see `model_card`."""
    details = dict(training_details) if isinstance(training_details, Mapping) else {}
    if lora_config is not None:
        targets = lora_config.target_modules
        details = {
            "method": "LoRA" + (" (DoRA)" if getattr(lora_config, "use_dora", False) else ""),
            "rank": lora_config.r,
            "alpha": lora_config.lora_alpha,
            "dropout": lora_config.lora_dropout,
            "target modules": f"`{targets}`" if isinstance(targets, str) else ", ".join(sorted(targets or [])),
            "modules trained in full": ", ".join(lora_config.modules_to_save or []) or "none",
            **details,
        }
    if isinstance(training_details, str):
        body = training_details if not details else _training_markdown(details) + "\n\n" + training_details
    else:
        body = details or None
    kwargs.setdefault("base_model_relation", "adapter")
    return model_card(repo_id, kind="adapter", base_model=base_model, training_details=body, **kwargs)


# ------------------------------------------------------------------------------------------------- uploads
def _is_peft_model(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _default_card(repo_id: str | None, model, pipeline) -> ModelCard:
    if pipeline is not None:
        return model_card(repo_id, kind="pipeline")
    if model is not None and _is_peft_model(model):
        config = model.peft_config[model.active_adapter]
        return adapter_card(repo_id, base_model=config.base_model_name_or_path, lora_config=config)
    return model_card(repo_id, kind="model")


def save_for_hub(
    folder: str | os.PathLike,
    *,
    model=None,
    processor=None,
    pipeline=None,
    card: ModelCard | None = None,
    repo_id: str | None = None,
) -> Path:
    """
    Write a complete repo into `folder`: the pipeline (`model_index.json` + component folders), or the model (a
    `PeftModel` writes its adapter only) and processor side by side, and `README.md` (`card`, or a default card of
    the right kind). Returns the folder.
    """
    if pipeline is None and model is None and processor is None:
        raise ValueError("Nothing to save: pass a pipeline, a model and/or a processor")
    if pipeline is not None and (model is not None or processor is not None):
        raise ValueError("Pass either a pipeline or a model/processor: a pipeline repo holds its own components")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if pipeline is not None:
        pipeline.save_pretrained(folder)
    if model is not None:
        model.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    (card or _default_card(repo_id, model, pipeline)).save(folder / "README.md")
    return folder


def push_to_hub(
    repo_id: str,
    *,
    model=None,
    processor=None,
    pipeline=None,
    card: ModelCard | None = None,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> CommitInfo:
    """Create `repo_id` if needed and upload a complete repo (see `save_for_hub`) as one commit."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        save_for_hub(folder, model=model, processor=processor, pipeline=pipeline, card=card, repo_id=repo_id)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or "Upload HYDRA with hydra_hf",
            revision=revision,
            create_pr=create_pr,
        )


@contextmanager
def staged_folder(target: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield an empty sibling `<target>.partial` to write a model folder into; when the block ends without an error it
    becomes `target`, replacing an existing one only if `replace`. A reader never finds a half-written folder, and a
    failure leaves `target` as it was (and the partial folder, to look at). A replaced folder is moved aside to
    `<target>.replaced` and deleted only once the new one is in place, so no moment holds neither whole; one found
    there without `target` (a crash between the two renames) is put back first."""
    target = Path(target)
    replaced = target.with_name(target.name + ".replaced")
    if replaced.exists() and not target.exists():
        replaced.rename(target)
    if target.exists() and not replace:
        raise ValueError(f"{target} exists; pass a new folder")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    yield staging
    if not target.exists():
        staging.rename(target)
        return
    shutil.rmtree(replaced, ignore_errors=True)
    target.rename(replaced)
    staging.rename(target)
    shutil.rmtree(replaced)
