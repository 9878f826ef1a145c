"""Processor for HYDRA: one call turns text with `<image>` placeholders and images into model inputs."""

import re

import numpy as np
import PIL.Image
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import ImageInput
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack
from transformers.tokenization_utils_base import TextInput
from transformers.utils import logging

from .image_processing_hydra import HydraImageProcessor


logger = logging.get_logger(__name__)

IMAGE_TOKEN = "<image>"
BOI_TOKEN = "<begin_of_image>"
EOI_TOKEN = "<end_of_image>"

# Qwen-style turns. `image_token` comes from the tokenizer's named special tokens when it has them; the default is the
# processor's own placeholder, so the template and `HydraProcessor.image_token` always agree.
DEFAULT_CHAT_TEMPLATE = r"""{% for message in messages %}
{{- '<|im_start|>' + message['role'] + '\n' }}
{%- if message['content'] is string %}
{{- message['content'] }}
{%- else %}
{%- for item in message['content'] %}
{%- if item['type'] == 'image' %}
{{- image_token | default('<image>') }}
{%- elif item['type'] == 'text' %}
{{- item['text'] }}
{%- endif %}
{%- endfor %}
{%- endif %}
{{- '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\n' }}
{%- endif %}"""


class HydraProcessorKwargs(ProcessingKwargs, total=False):
    r"""
    generation_mode (`str`, *optional*, defaults to `"text"`):
        `"text"` prepares inputs for understanding (the model answers in text). `"image"` prepares text-to-image
        prompts by appending the begin-of-image token to each text, after which the model generates the image tokens.
    """

    generation_mode: str


class HydraProcessor(ProcessorMixin):
    r"""
    Wraps a [`HydraImageProcessor`] and a tokenizer. Each `<image>` placeholder in the text becomes
    `<begin_of_image>` + `<image>` * N + `<end_of_image>`, where N = (H / patch_size) * (W / patch_size) for that
    image's processed size, so the model can scatter HYDRA-TOK's visual tokens into the `<image>` positions.

    Texts are padded on the left by default, as batched generation needs. If the tokenizer lacks the three image
    tokens they are added to it as special tokens (resize the model's embeddings afterwards); a tokenizer that names
    them (`extra_special_tokens={"image_token": ..., "boi_token": ..., "eoi_token": ...}`) keeps its own strings.

    Text-to-image prompts: `build_generation_prompt(prompt)` renders the chat template for a user turn, opens the
    assistant turn and appends `<begin_of_image>`; `processor(text=templated_texts, generation_mode="image")` does the
    last step for texts that are already formatted.

    Args:
        image_processor ([`HydraImageProcessor`], *optional*):
            Image processor; a default [`HydraImageProcessor`] if not given.
        tokenizer ([`PreTrainedTokenizerBase`]):
            Text tokenizer.
        chat_template (`str`, *optional*):
            Jinja chat template; defaults to a Qwen-style template whose message contents may hold
            `{"type": "image"}` and `{"type": "text", "text": ...}` items.
    """

    valid_processor_kwargs = HydraProcessorKwargs
    text_kwargs = {"padding": True, "padding_side": "left", "return_tensors": "pt"}
    images_kwargs = {"return_tensors": "pt"}
    generation_mode = "text"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        if tokenizer is None:
            raise ValueError("HydraProcessor needs a `tokenizer`.")
        image_processor = image_processor if image_processor is not None else HydraImageProcessor()
        self.image_token = getattr(tokenizer, "image_token", None) or IMAGE_TOKEN
        self.boi_token = getattr(tokenizer, "boi_token", None) or BOI_TOKEN
        self.eoi_token = getattr(tokenizer, "eoi_token", None) or EOI_TOKEN
        tokens = (self.image_token, self.boi_token, self.eoi_token)
        missing = [token for token in tokens if token not in tokenizer.all_special_tokens]
        added = missing and tokenizer.add_special_tokens(
            {"extra_special_tokens": missing}, replace_extra_special_tokens=False
        )
        if added:
            logger.warning(
                f"Added {missing} to the tokenizer as special tokens; resize the model's token embeddings to "
                f"len(tokenizer) = {len(tokenizer)}."
            )
        self.image_token_id, self.boi_token_id, self.eoi_token_id = tokenizer.convert_tokens_to_ids(list(tokens))
        chat_template = chat_template if chat_template is not None else DEFAULT_CHAT_TEMPLATE
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def __call__(
        self,
        text: TextInput | list[TextInput] | None = None,
        images: ImageInput | None = None,
        **kwargs: Unpack[HydraProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Args:
            text (`str` or `list[str]`, *optional*):
                Texts holding one `<image>` placeholder per image, in the order the images are given.
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a (nested) list of them, *optional*):
                Images, assigned to the placeholders in order across the whole batch.

        Returns:
            [`BatchFeature`] with `input_ids` and `attention_mask` (when `text` is given) and `pixel_values`
            `[B, 3, H, W]` in [-1, 1] (when `images` are given).
        """
        if text is None and images is None:
            raise ValueError("HydraProcessor needs `text`, `images` or both.")
        # Generation needs the left padding of `text_kwargs`, but a tokenizer's own default would override it: a
        # fast tokenizer saved on its own after a right-padded call keeps that padding (`save_pretrained` below).
        kwargs.setdefault("padding_side", "left")
        output_kwargs = self._merge_kwargs(
            HydraProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )
        generation_mode = output_kwargs["generation_mode"]
        if generation_mode not in ("text", "image"):
            raise ValueError(f"`generation_mode` must be 'text' or 'image', got {generation_mode!r}.")
        # Converted once, by the BatchFeature at the end.
        return_tensors = output_kwargs["text_kwargs"].pop("return_tensors", None)

        data = {}
        num_image_tokens = []
        if images is not None:
            image_inputs = self.image_processor(images, **output_kwargs["images_kwargs"])
            num_image_tokens = [
                self.image_processor.num_image_tokens(*image.shape[-2:]) for image in image_inputs["pixel_values"]
            ]
            data.update(image_inputs)

        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            num_placeholders = sum(sample.count(self.image_token) for sample in texts)
            if num_placeholders != len(num_image_tokens):
                raise ValueError(
                    f"Found {num_placeholders} {self.image_token} placeholder(s) in the text but "
                    f"{len(num_image_tokens)} image(s); each image needs exactly one placeholder."
                )
            sequences = iter(self.boi_token + self.image_token * n + self.eoi_token for n in num_image_tokens)
            pattern = re.compile(re.escape(self.image_token))
            texts = [pattern.sub(lambda _: next(sequences), sample) for sample in texts]
            if generation_mode == "image":
                texts = [sample + self.boi_token for sample in texts]
            data.update(self.tokenizer(texts, **output_kwargs["text_kwargs"]))

        return BatchFeature(data=data, tensor_type=return_tensors)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As `ProcessorMixin.save_pretrained`, but the tokenizer.json written carries no padding or truncation: a fast
        tokenizer keeps its last call's (training pads right) and would save them as its own defaults. Every call sets
        the ones it asks for again, so nothing is lost."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            backend.no_padding()
            backend.no_truncation()
        return super().save_pretrained(save_directory, *args, **kwargs)

    def build_generation_prompt(self, prompt: str | list[str], target_image: bool = False) -> str | list[str]:
        """
        Text-to-image prompt(s): the chat template applied to a user turn holding `prompt`, the assistant turn opened,
        then `<begin_of_image>`; the model generates the image tokens from there. Pass the result as `text=` to the
        processor. An empty prompt gives the unconditional prompt of classifier-free guidance.

        With `target_image=True` the prompt ends in an `<image>` placeholder instead, for training: pass the target
        image with it and the processor expands it to `<begin_of_image>` + image tokens + `<end_of_image>`.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        conversations = [[{"role": "user", "content": [{"type": "text", "text": p}]}] for p in prompts]
        texts = self.apply_chat_template(conversations, add_generation_prompt=True)
        ending = self.image_token if target_image else self.boi_token
        texts = [sample + ending for sample in texts]
        return texts[0] if isinstance(prompt, str) else texts

    def postprocess(
        self, images: torch.Tensor | np.ndarray, output_type: str = "pil"
    ) -> list[PIL.Image.Image] | np.ndarray:
        """Forwards to [`HydraImageProcessor.postprocess`]: model images in [-1, 1] to PIL images or `uint8` arrays."""
        return self.image_processor.postprocess(images, output_type=output_type)

    def post_process_multimodal_output(
        self, generated_outputs, skip_special_tokens=True, generation_mode=None, **kwargs
    ):
        """Decodes generated text, or, with `generation_mode="image"`, turns generated images into PIL images."""
        if generation_mode == "image":
            return self.postprocess(generated_outputs)
        return super().post_process_multimodal_output(
            generated_outputs, skip_special_tokens=skip_special_tokens, generation_mode=generation_mode, **kwargs
        )


__all__ = ["BOI_TOKEN", "DEFAULT_CHAT_TEMPLATE", "EOI_TOKEN", "IMAGE_TOKEN", "HydraProcessor", "HydraProcessorKwargs"]
