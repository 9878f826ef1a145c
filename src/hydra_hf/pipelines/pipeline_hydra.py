"""Text-to-image with HYDRA as a diffusers pipeline: the flow head's velocity integrated by a flow-match Euler
scheduler over the normalised GSB latent, then the pixel flow decoder."""

import os
from collections.abc import Callable
from pathlib import Path

import PIL.Image
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import snapshot_download

from .. import flow_matching, lora
from ..models.hydra import HydraForConditionalGeneration, HydraProcessor
from .answer_guidance import AnswerGuidance, QuestionAnswer

__all__ = ["HydraPipeline"]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
StepCallback = Callable[[DiffusionPipeline, int, torch.Tensor, dict[str, torch.Tensor]], dict[str, torch.Tensor]]
# Sampling defaults when the model's `generation_config.text_to_image` does not set them (see `guidance_settings`).
DEFAULT_GUIDANCE_SCALE = 5.0
DEFAULT_PAG_SCALE = 0.0
DEFAULT_GUIDANCE_INTERVAL = (0.0, 1.0)  # flow times (low, high) where CFG applies: throughout
# Answer guidance (runs only with `guidance_questions`): the setting measured best on hydra-tiny-shapes (thirty-first
# round of docs/experiments.md): steps of 0.03 latent RMS after the steps ending at t >= 0.3, the gradient averaged
# over 4 reads of the clean estimate with noise of std 0.5.
DEFAULT_ANSWER_GUIDANCE_SCALE = 0.03
DEFAULT_ANSWER_GUIDANCE_MIN_TIME = 0.3
DEFAULT_ANSWER_GUIDANCE_SMOOTHING = (4, 0.5)
# Hub arguments `snapshot_download` takes; the rest of `from_pretrained`'s keyword arguments go to the loaders.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "revision", "token")


class HydraPipeline(DiffusionPipeline):
    r"""
    Text-to-image with HYDRA: `HydraPipeline.from_pretrained(path)(prompt).images[0]`; with `image` and `strength`,
    image-to-image (SDEdit): the image's latent is noised to where the schedule's last `strength` share begins and
    denoised from there.

    The prompt runs through the LLM once; its KV cache is then reused at every step, where only the image tokens
    (`noisy latent -> Sem-ViT -> projector + time embedding`) pass through the LLM and the flow head predicts the
    latent's velocity. Classifier-free guidance runs the unconditional and conditional rows as one batch (at the flow
    times of `guidance_interval`), and perturbed-attention guidance (PAG, diffusers' `pag_scale` /
    `pag_applied_layers`) adds a third block of rows whose tokens attend only to themselves in the chosen LLM layers.
    With `guidance_questions` (question, answer) pairs per prompt, answer guidance moves the latents after each step
    down the gradient of the answers' loss, as the model's understanding path reads the step's clean estimate
    ([`~pipelines.answer_guidance.AnswerGuidance`]). A model can ship its own defaults for these in
    `model.generation_config.text_to_image` (see `guidance_settings`).

    Args:
        model ([`HydraForConditionalGeneration`]): the unified model (LLM, HYDRA-TOK, flow head).
        processor ([`HydraProcessor`]): chat template and tokenizer for the prompts; turns pixels into PIL images.
        scheduler ([`FlowMatchEulerDiscreteScheduler`], *optional*): defaults to the schedule the model samples
            with, `shift=model.config.timestep_shift`. Diffusers' `sigma` is our flow time `t` (1 = noise,
            0 = clean) and its Euler step `x + (sigma_next - sigma) * v` is ours, for the velocity `eps - x`.
    """

    model_cpu_offload_seq = "model"
    _optional_components = ["scheduler"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        model: HydraForConditionalGeneration,
        processor: HydraProcessor,
        scheduler: FlowMatchEulerDiscreteScheduler | None = None,
    ):
        super().__init__()
        if scheduler is None:
            scheduler = FlowMatchEulerDiscreteScheduler(shift=model.config.timestep_shift)
        self.register_modules(model=model, processor=processor, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "HydraPipeline":
        """
        Loads a pipeline folder (`model_index.json`) or a folder that `HydraForConditionalGeneration.save_pretrained`
        and `HydraProcessor.save_pretrained` wrote (one checkpoint, every front door). Hub ids are downloaded first:
        diffusers' own download rejects components whose library is not diffusers or transformers.
        """
        path = Path(pretrained_model_name_or_path)
        if not path.is_dir():
            hub_kwargs = {name: kwargs.pop(name) for name in _HUB_KWARGS if name in kwargs}
            path = Path(snapshot_download(str(pretrained_model_name_or_path), **hub_kwargs))
        if (path / "model_index.json").is_file() or not (path / "config.json").is_file():
            return super().from_pretrained(path, **kwargs)

        components = {name: kwargs.pop(name) for name in ("model", "processor", "scheduler") if name in kwargs}
        if "torch_dtype" in kwargs:  # diffusers' older name for `dtype`
            kwargs.setdefault("dtype", kwargs.pop("torch_dtype"))
        if "model" not in components:
            components["model"] = HydraForConditionalGeneration.from_pretrained(path, **kwargs)
        if "processor" not in components:
            components["processor"] = HydraProcessor.from_pretrained(path)
        return cls(**components)

    # -------------------------------------------------------------------------------------------- properties
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """`v = v_uncond + g (v_cond - v_uncond)` equals the conditional velocity exactly when g = 1."""
        return self._guidance_scale != 1.0

    @property
    def pag_scale(self) -> float:
        return self._pag_scale

    @property
    def do_perturbed_attention_guidance(self) -> bool:
        return self._pag_scale > 0

    def guides_at(self, flow_time: float) -> bool:
        """Whether classifier-free guidance (the unconditional rows) runs at this flow time: `guidance_interval`."""
        low, high = self._guidance_interval
        return self.do_classifier_free_guidance and low <= flow_time <= high

    def guidance_settings(
        self,
        guidance_scale: float | None = None,
        pag_scale: float | None = None,
        pag_applied_layers: list[int] | tuple[int, ...] | None = None,
        guidance_interval: list[float] | tuple[float, float] | None = None,
        answer_guidance_scale: float | None = None,
        answer_guidance_min_time: float | None = None,
        answer_guidance_smoothing: list | tuple[int, float] | None = None,
    ) -> dict:
        """The guidance settings as a call uses them: those given, else the model's own
        (`model.generation_config.text_to_image`, a dict the checkpoint ships, as Janus keeps its image guidance in
        its generation config), else CFG 5 throughout, no PAG, the middle LLM layer and the answer guidance
        defaults, except `answer_guidance_scale`, which stays None unless given or the model's: callers that can ask
        questions of their own (the shapes evaluation) guide only when it is set, and a call with
        `guidance_questions` takes `DEFAULT_ANSWER_GUIDANCE_SCALE` for None."""
        own = getattr(self.model.generation_config, "text_to_image", None) or {}
        settings = {
            "guidance_scale": own.get("guidance_scale", DEFAULT_GUIDANCE_SCALE),
            "pag_scale": own.get("pag_scale", DEFAULT_PAG_SCALE),
            "pag_applied_layers": own.get("pag_applied_layers", [self.model.config.text_config.num_hidden_layers // 2]),
            "guidance_interval": own.get("guidance_interval", DEFAULT_GUIDANCE_INTERVAL),
            "answer_guidance_scale": own.get("answer_guidance_scale"),
            "answer_guidance_min_time": own.get("answer_guidance_min_time", DEFAULT_ANSWER_GUIDANCE_MIN_TIME),
            "answer_guidance_smoothing": own.get("answer_guidance_smoothing", DEFAULT_ANSWER_GUIDANCE_SMOOTHING),
        }
        given = {
            "guidance_scale": guidance_scale, "pag_scale": pag_scale, "pag_applied_layers": pag_applied_layers,
            "guidance_interval": guidance_interval, "answer_guidance_scale": answer_guidance_scale,
            "answer_guidance_min_time": answer_guidance_min_time,
            "answer_guidance_smoothing": answer_guidance_smoothing,
        }
        settings.update({name: value for name, value in given.items() if value is not None})
        for name in ("pag_applied_layers", "guidance_interval", "answer_guidance_smoothing"):
            if isinstance(settings[name], tuple):
                settings[name] = list(settings[name])
        return settings

    @staticmethod
    def guidance_in_effect(settings: dict) -> dict:
        """`guidance_settings` without the settings that change nothing: the PAG layers when PAG is off, the
        classifier-free guidance interval at scale 1 and answer guidance's when its scale is 0 or None. What a
        record of a run (an evaluation's settings, a demo's printout) should say it used."""
        settings = dict(settings)
        if not settings.get("pag_scale"):
            settings.pop("pag_applied_layers", None)
        if settings.get("guidance_scale") == 1.0:
            settings.pop("guidance_interval", None)
        if not settings.get("answer_guidance_scale"):
            for name in ("answer_guidance_scale", "answer_guidance_min_time", "answer_guidance_smoothing"):
                settings.pop(name, None)
        return settings

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def patch_size(self) -> int:
        return self.model.vision_model.config.patch_size

    # ----------------------------------------------------------------------------------------------- helpers
    def check_inputs(
        self,
        prompt,
        negative_prompt,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        num_images_per_prompt: int,
        generator,
        latents: torch.Tensor | None,
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str] | None,
        decoder_num_inference_steps: int | None,
        image=None,
        strength: float = 1.0,
        pag_scale: float = 0.0,
        pag_applied_layers: list[int] = (),
        guidance_interval: list[float] | tuple[float, float] = DEFAULT_GUIDANCE_INTERVAL,
        answer_guidance_scale: float = DEFAULT_ANSWER_GUIDANCE_SCALE,
        answer_guidance_min_time: float = DEFAULT_ANSWER_GUIDANCE_MIN_TIME,
        answer_guidance_smoothing: list | tuple[int, float] = DEFAULT_ANSWER_GUIDANCE_SMOOTHING,
    ) -> None:
        """Every bad argument is a `ValueError` that says what was expected, before any model work is done."""
        if isinstance(prompt, str):
            batch_size = 1
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            batch_size = len(prompt)
        else:
            raise ValueError(f"`prompt` must be a string or a non-empty list of strings, got {prompt!r}")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            if not isinstance(negative_prompt, list) or len(negative_prompt) != batch_size:
                raise ValueError(
                    f"`negative_prompt` must be a string or a list of {batch_size} string(s), one per prompt; got "
                    f"{negative_prompt!r}"
                )
        patch = self.patch_size
        if height < patch or width < patch or height % patch or width % patch:
            raise ValueError(
                f"`height` and `width` must be positive multiples of the patch size {patch} (e.g. "
                f"{max(height // patch, 1) * patch}x{max(width // patch, 1) * patch}); got {height}x{width}"
            )
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}")
        if decoder_num_inference_steps is not None and (
            not isinstance(decoder_num_inference_steps, int) or decoder_num_inference_steps < 1
        ):
            raise ValueError(
                f"`decoder_num_inference_steps` must be an integer >= 1 or None (the decoder's default "
                f"{self.model.vision_model.config.decoder_num_inference_steps}), got {decoder_num_inference_steps!r}"
            )
        if guidance_scale < 0:
            raise ValueError(
                f"`guidance_scale` must be >= 0 (1 = the conditional model alone, 0 = the unconditional one, > 1 = "
                f"classifier-free guidance), got {guidance_scale}"
            )
        if not (
            isinstance(guidance_interval, (list, tuple))
            and len(guidance_interval) == 2
            and all(isinstance(time, (int, float)) for time in guidance_interval)
            and 0.0 <= guidance_interval[0] <= guidance_interval[1] <= 1.0
        ):
            raise ValueError(
                f"`guidance_interval` must be a pair of flow times (low, high) with 0 <= low <= high <= 1 (1 = noise), "
                f"where classifier-free guidance applies; got {guidance_interval!r}"
            )
        num_layers = self.model.config.text_config.num_hidden_layers
        if pag_scale < 0:
            raise ValueError(f"`pag_scale` must be >= 0 (0 = no perturbed-attention guidance), got {pag_scale}")
        if pag_scale > 0 and (
            not isinstance(pag_applied_layers, list)
            or not pag_applied_layers
            or not all(isinstance(layer, int) and -num_layers <= layer < num_layers for layer in pag_applied_layers)
        ):
            raise ValueError(
                f"`pag_applied_layers` must be a non-empty list of LLM decoder layer indices in [-{num_layers}, "
                f"{num_layers}) when `pag_scale` > 0, got {pag_applied_layers!r}"
            )
        if answer_guidance_scale < 0:
            raise ValueError(
                f"`answer_guidance_scale` must be >= 0 (0 = no answer guidance), got {answer_guidance_scale}"
            )
        if not 0.0 <= answer_guidance_min_time <= 1.0:
            raise ValueError(
                f"`answer_guidance_min_time` must be a flow time in [0, 1] (answer guidance follows the steps that end "
                f"at or above it), got {answer_guidance_min_time}"
            )
        smoothing = answer_guidance_smoothing
        if not (
            isinstance(smoothing, (list, tuple)) and len(smoothing) == 2
            and isinstance(smoothing[0], int) and smoothing[0] >= 1
            and isinstance(smoothing[1], (int, float)) and smoothing[1] >= 0
        ):
            raise ValueError(
                f"`answer_guidance_smoothing` must be (draws >= 1, noise std >= 0), got {answer_guidance_smoothing!r}"
            )
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be an integer >= 1, got {num_images_per_prompt!r}")
        num_images = batch_size * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != num_images:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generator(s) but {num_images} image(s) are made "
                f"({batch_size} prompt(s) x num_images_per_prompt={num_images_per_prompt}); pass one per image"
            )
        expected = (num_images, self.model.vision_model.config.latent_channels, height // patch, width // patch)
        if latents is not None and tuple(latents.shape) != expected:
            raise ValueError(
                f"`latents` must have shape {list(expected)} ({batch_size} prompt(s) x num_images_per_prompt, "
                f"latent_channels, height / {patch}, width / {patch}); got {list(latents.shape)}"
            )
        if image is not None:
            if not isinstance(image, list) or len(image) != batch_size or not all(
                isinstance(i, PIL.Image.Image) for i in image
            ):
                given = (
                    f"a list of {len(image)} ({', '.join(type(i).__name__ for i in image)})"
                    if isinstance(image, list) else type(image).__name__
                )
                raise ValueError(f"`image` must be one PIL image per prompt ({batch_size}), got {given}")
            if latents is not None:
                raise ValueError("pass `image` (to start from its noised latent) or `latents`, not both")
        if not 0.0 < strength <= 1.0 or (image is None and strength != 1.0):
            raise ValueError(
                f"`strength` must be in (0, 1] and is the flow time an `image` is noised to (1 = pure noise, the "
                f"default for text-to-image); got {strength} with {'an' if image is not None else 'no'} `image`"
            )
        if round(num_inference_steps * strength) < 1:
            raise ValueError(
                f"`strength` * `num_inference_steps` must round to at least one step, got {strength} * "
                f"{num_inference_steps}"
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if callback_on_step_end_tensor_inputs is not None:
            unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if unknown:
                raise ValueError(
                    f"`callback_on_step_end_tensor_inputs` must be among {self._callback_tensor_inputs}, got {unknown}"
                )

    @staticmethod
    def questions_per_prompt(
        prompt: str | list[str], guidance_questions: list[QuestionAnswer] | list[list[QuestionAnswer]] | None
    ) -> list[list[QuestionAnswer]] | None:
        """`guidance_questions` as one list of (question, answer) pairs per prompt (a single prompt may take its list
        directly); a `ValueError` that shows the expected form otherwise."""
        if guidance_questions is None:
            return None
        prompts = [prompt] if isinstance(prompt, str) else prompt

        def is_pair(item) -> bool:
            return isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(text, str) for text in item)

        if isinstance(prompt, str) and isinstance(guidance_questions, list) and all(map(is_pair, guidance_questions)):
            guidance_questions = [guidance_questions]
        if not (
            isinstance(guidance_questions, list) and len(guidance_questions) == len(prompts)
            and all(isinstance(pairs, list) and all(map(is_pair, pairs)) for pairs in guidance_questions)
        ):
            raise ValueError(
                f"`guidance_questions` must be one list of (question, answer) string pairs per prompt ({len(prompts)}),"
                f" e.g. [[('is there a red circle?', 'yes')]]; got {guidance_questions!r}"
            )
        return [[tuple(pair) for pair in pairs] for pairs in guidance_questions]

    def encode_prompt(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_images_per_prompt: int = 1,
        device: torch.device | None = None,
        do_perturbed_attention_guidance: bool = False,
    ) -> tuple[torch.LongTensor, torch.Tensor]:
        """
        Token ids and attention mask of the chat-templated prompts, each repeated `num_images_per_prompt` times. With
        guidance the rows are `[negative; prompt]` (an empty negative prompt is the unconditional prompt the model was
        trained with), and with perturbed-attention guidance the prompts again after them, tokenised in one call so
        every block shares one left-padded length and one prompt cache.
        """
        device = device or self._execution_device
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        texts = list(prompts)
        if do_classifier_free_guidance:
            negative_prompt = negative_prompt or ""
            negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
            texts = negatives + texts
        if do_perturbed_attention_guidance:
            texts += prompts
        inputs = self.processor(text=self.processor.build_generation_prompt(texts))
        input_ids = inputs["input_ids"].repeat_interleave(num_images_per_prompt, dim=0).to(device)
        attention_mask = inputs["attention_mask"].repeat_interleave(num_images_per_prompt, dim=0).to(device)
        return input_ids, attention_mask

    def prepare_latents(
        self,
        batch_size: int,
        num_channels_latents: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pure noise (t = 1) on the latent grid, one position per patch; `latents` are taken as given."""
        if latents is not None:
            return latents.to(device=device, dtype=dtype)
        shape = (batch_size, num_channels_latents, height // self.patch_size, width // self.patch_size)
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    def noised_image_latents(
        self, images: list[PIL.Image.Image], num_images_per_prompt: int, height: int, width: int, noise: torch.Tensor
    ) -> torch.Tensor:
        """The images' normalised GSB means moved along the flow to the first sigma of the scheduler's schedule."""
        pixels = self.processor.image_processor(
            [i.convert("RGB") for i in images], size={"height": height, "width": width}, return_tensors="pt"
        )["pixel_values"]
        vision = self.model.vision_model
        clean = vision.normalize_latents(self.model.model.image_latents(pixels.to(noise.device, noise.dtype)))
        clean = clean.repeat_interleave(num_images_per_prompt, dim=0)
        return flow_matching.interpolate(clean, noise, self.scheduler.sigmas[:1].expand(len(noise)))

    def combine_guidance(self, velocities: tuple[torch.Tensor, ...], with_unconditional: bool) -> torch.Tensor:
        """The guided velocity from the row blocks `[uncond,] cond[, perturbed]` (`with_unconditional`: whether the
        first block is there): `v_uncond + g (v_cond - v_uncond) + pag_scale (v_cond - v_perturbed)`, with the terms
        whose blocks are absent left out (diffusers' PAG formula)."""
        velocities = list(velocities)
        unconditional = velocities.pop(0) if with_unconditional else None
        conditional = velocities.pop(0)
        velocity = conditional
        if unconditional is not None:
            velocity = unconditional + self.guidance_scale * (conditional - unconditional)
        if self.do_perturbed_attention_guidance:
            velocity = velocity + self.pag_scale * (conditional - velocities.pop(0))
        return velocity

    def _postprocess(self, sample: torch.Tensor, output_type: str):
        """`pil` through the processor; `np` (`[B, H, W, 3]`) and `pt` (`[B, 3, H, W]`) as floats in [0, 1], the
        diffusers convention."""
        if output_type == "pil":
            return self.processor.postprocess(sample, output_type="pil")
        images = (sample.float() / 2 + 0.5).clamp(0, 1)
        return images if output_type == "pt" else images.permute(0, 2, 3, 1).cpu().numpy()

    # -------------------------------------------------------------------------------------------------- call
    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 30,
        guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        decoder_num_inference_steps: int | None = None,
        use_prompt_cache: bool = True,
        image: PIL.Image.Image | list[PIL.Image.Image] | None = None,
        strength: float = 1.0,
        pag_scale: float | None = None,
        pag_applied_layers: list[int] | None = None,
        guidance_interval: tuple[float, float] | None = None,
        guidance_questions: list[QuestionAnswer] | list[list[QuestionAnswer]] | None = None,
        answer_guidance_scale: float | None = None,
        answer_guidance_min_time: float | None = None,
        answer_guidance_smoothing: tuple[int, float] | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Args:
            prompt (`str` or `list[str]`): what to draw.
            negative_prompt (`str` or `list[str]`, *optional*): the guidance's unconditional rows; default the empty
                prompt (the model's unconditional training prompt). Unused when `guidance_scale == 1`.
            height, width (`int`, *optional*): multiples of the patch size; default `vision_config.image_size`.
            num_inference_steps (`int`): Euler steps of the latent flow.
            guidance_scale (`float`, *optional*): `v = v_uncond + g (v_cond - v_uncond)`, exactly, for any `g >= 0`: 1
                skips the unconditional pass (it would not change v), 0 samples the unconditional model, > 1 guides.
                Default: the model's (`guidance_settings`), else 5.
            num_images_per_prompt (`int`): images per prompt.
            generator (`torch.Generator` or a list, one per image): seeds the latent noise and the decoder's noise.
            latents (`[B * num_images_per_prompt, C, H / p, W / p]`, *optional*): starting noise in the normalised
                latent space, instead of drawing it.
            output_type (`str`): `"pil"`, `"np"` / `"pt"` (floats in [0, 1]) or `"latent"` (the normalised latents;
                `vision_model.decode(vision_model.denormalize_latents(z))` turns them into pixels in [-1, 1]).
            return_dict (`bool`): an [`ImagePipelineOutput`] rather than a tuple.
            callback_on_step_end (`Callable`, *optional*): `callback(pipe, step, timestep, tensors) -> dict` after each
                step; returned `latents` replace the current ones, and setting `pipe._interrupt = True` stops the
                loop (the latents reached so far are decoded).
            callback_on_step_end_tensor_inputs (`list[str]`): tensors passed to the callback (`"latents"`).
            decoder_num_inference_steps (`int`, *optional*): pixel decoder steps; default its config's.
            use_prompt_cache (`bool`): reuse the prompt's KV cache at every step; `False` re-runs the prompt each step
                (same images, slower; kept for benchmarks and debugging).
            image (`PIL.Image.Image` or a list, one per prompt, *optional*): image-to-image: start from this image's
                latent noised to time `strength` instead of from pure noise.
            strength (`float`): with `image`, in (0, 1]: the last `round(strength * num_inference_steps)` steps of
                the schedule run, from the image's latent noised to the schedule's time there (`strength` itself
                with no shift and a whole number of steps), as diffusers' img2img pipelines do.
            pag_scale (`float`, *optional*): perturbed-attention guidance, as diffusers' PAG pipelines:
                `v += pag_scale * (v_cond - v_perturbed)`, where the perturbed velocity is the conditional one with
                every token attending only to itself in `pag_applied_layers`. 0 turns it off (no extra rows).
                Default: the model's (`guidance_settings`), else 0.
            pag_applied_layers (`list[int]`, *optional*): LLM decoder layers PAG perturbs. Default: the model's, else
                the middle layer.
            guidance_interval (`(float, float)`, *optional*): flow times `(low, high)` (1 = noise, 0 = clean) of the
                steps that use classifier-free guidance, as in "guidance in a limited interval" (Kynkaanniemi et al.
                2024); the other steps skip the unconditional rows and take the conditional velocity (with PAG, if
                on). Default: the model's, else `(0, 1)`, every step.
            guidance_questions (`list[(str, str)]`, or one such list per prompt, *optional*): (question, answer)
                pairs the prompt fixes, in the model's question templates (e.g. `[("is there a red circle?", "yes")]`),
                for answer guidance; an empty list leaves that prompt's images unguided. For the shapes world,
                `hydra_hf.data.shapes.binding_questions(prompt_spec_from_text(prompt))` writes them.
            answer_guidance_scale (`float`, *optional*): with `guidance_questions`, the RMS of the latent step taken
                down the answers' loss gradient after each step; 0 turns answer guidance off. Default: the model's,
                else 0.03. Each guided step costs `draws` understanding passes with a backward pass.
            answer_guidance_min_time (`float`, *optional*): answer guidance follows the steps that end at flow time
                >= this (the layout is settled early; late steps only sharpen). Default: the model's, else 0.3.
            answer_guidance_smoothing (`(int, float)`, *optional*): `(draws, std)`: the gradient is averaged over
                `draws` reads of the clean estimate plus noise of this std. Default: the model's, else `(4, 0.5)`.

        Returns:
            [`ImagePipelineOutput`] with `images`, or `(images,)` when `return_dict=False`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        vision_config = self.model.vision_model.config
        height = height or vision_config.image_size
        width = width or vision_config.image_size
        guidance = self.guidance_settings(
            guidance_scale, pag_scale, pag_applied_layers, guidance_interval, answer_guidance_scale,
            answer_guidance_min_time, answer_guidance_smoothing,
        )
        guidance_scale, pag_scale = guidance["guidance_scale"], guidance["pag_scale"]
        pag_applied_layers, guidance_interval = guidance["pag_applied_layers"], guidance["guidance_interval"]
        if guidance["answer_guidance_scale"] is None:
            guidance["answer_guidance_scale"] = DEFAULT_ANSWER_GUIDANCE_SCALE

        # 1. Check inputs
        if isinstance(image, PIL.Image.Image):
            image = [image]
        self.check_inputs(
            prompt,
            negative_prompt,
            height,
            width,
            num_inference_steps,
            guidance_scale,
            num_images_per_prompt,
            generator,
            latents,
            output_type,
            callback_on_step_end_tensor_inputs,
            decoder_num_inference_steps,
            image,
            strength,
            pag_scale,
            pag_applied_layers,
            guidance_interval,
            guidance["answer_guidance_scale"],
            guidance["answer_guidance_min_time"],
            guidance["answer_guidance_smoothing"],
        )
        questions = self.questions_per_prompt(prompt, guidance_questions)
        self._guidance_scale = guidance_scale
        self._pag_scale = pag_scale
        self._guidance_interval = guidance_interval
        self._interrupt = False
        batch_size = 1 if isinstance(prompt, str) else len(prompt)
        device = self._execution_device

        # 2. Prompts: tokenised once, run through the LLM once
        input_ids, attention_mask = self.encode_prompt(
            prompt, negative_prompt, self.do_classifier_free_guidance, num_images_per_prompt, device,
            self.do_perturbed_attention_guidance,
        )
        # Row blocks of every model call: [unconditional;] conditional[; perturbed conditional]. Steps outside the
        # guidance interval start at the conditional block, with a prompt cache of their own.
        num_blocks = 1 + self.do_classifier_free_guidance + self.do_perturbed_attention_guidance
        block_rows = len(input_ids) // num_blocks
        perturbed_rows = torch.zeros(len(input_ids), dtype=torch.bool, device=device)
        perturbed_layers = pag_applied_layers if self.do_perturbed_attention_guidance else []  # [] hooks nothing
        if self.do_perturbed_attention_guidance:
            perturbed_rows[len(input_ids) - block_rows :] = True
        prompt_caches = {}

        def prompt_rows(first_row: int) -> dict:
            """The `flow_velocity` arguments for the rows from `first_row` on."""
            if use_prompt_cache and first_row not in prompt_caches:
                prompt_caches[first_row] = self.model.prepare_prompt_cache(
                    input_ids[first_row:], attention_mask[first_row:], perturbed_rows[first_row:], perturbed_layers
                )
            return dict(
                prompt_cache=prompt_caches.get(first_row), input_ids=input_ids[first_row:],
                attention_mask=attention_mask[first_row:], perturbed_rows=perturbed_rows[first_row:],
            )

        # 3. Timesteps: the model's schedule, times 1 ... 1/N before the shift, which the scheduler applies; an image
        # to edit starts at the schedule's last `strength` share
        sigmas = flow_matching.sampling_timesteps(num_inference_steps)[:-1]
        sigmas = sigmas[num_inference_steps - round(num_inference_steps * strength) :]
        self.scheduler.set_timesteps(sigmas=sigmas.tolist(), device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)

        # 4. Latents
        latents = self.prepare_latents(
            batch_size * num_images_per_prompt,
            vision_config.latent_channels,
            height,
            width,
            self.model.dtype,
            device,
            generator,
            latents,
        )
        if image is not None:
            latents = self.noised_image_latents(image, num_images_per_prompt, height, width, latents)
        answer_guidance = None
        if questions is not None:
            answer_guidance = AnswerGuidance(
                self.model, self.processor, [pairs for pairs in questions for _ in range(num_images_per_prompt)],
                guidance["answer_guidance_scale"], guidance["answer_guidance_min_time"],
                tuple(guidance["answer_guidance_smoothing"]),
            )

        # 5. Denoising loop: t = 1 (noise) -> 0 (clean)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    break
                flow_time = t / self.scheduler.config.num_train_timesteps
                guided = self.guides_at(float(flow_time))
                skip_unconditional = self.do_classifier_free_guidance and not guided
                blocks = num_blocks - skip_unconditional
                velocity = self.model.flow_velocity(
                    latents.repeat(blocks, 1, 1, 1),
                    flow_time,
                    perturbed_layers=perturbed_layers,
                    **prompt_rows(block_rows if skip_unconditional else 0),
                )
                velocity = self.combine_guidance(velocity.chunk(blocks), with_unconditional=guided)
                latents = self.scheduler.step(velocity, t, latents, generator=generator, return_dict=False)[0]
                if answer_guidance is not None:
                    next_time = float(self.scheduler.sigmas[i + 1])
                    latents = answer_guidance.step(latents, velocity, next_time, generator)

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for k in callback_on_step_end_tensor_inputs:  # a comprehension has its own locals() before 3.12
                        callback_kwargs[k] = locals()[k]
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                progress_bar.update()

        # 6. Pixels
        if output_type == "latent":
            images = latents
        else:
            vision = self.model.vision_model
            sample = vision.decode(
                vision.denormalize_latents(latents),
                generator=generator,
                num_inference_steps=decoder_num_inference_steps,
            ).sample
            images = self._postprocess(sample, output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    # ------------------------------------------------------------------------------------------- LoRA adapters
    # diffusers' names and meanings, on the transformers/peft adapter machinery of the model (which is a
    # transformers model, so diffusers' own LoRA loaders, written for a `transformer` component, do not apply).
    def load_lora_weights(
        self, pretrained_model_name_or_path: str | os.PathLike, adapter_name: str | None = None, **kwargs
    ) -> str:
        """
        Loads a peft LoRA adapter (a folder or Hub repo with `adapter_config.json` and `adapter_model.safetensors`,
        as `examples/finetune_lora.py` writes) into `model` and makes it the active adapter; adapters loaded before
        stay available through `pipe.model` and peft. Unnamed adapters are called `default_0`, `default_1`, ...
        Download arguments (`token`, `revision`, `cache_dir`, ...) and other `model.load_adapter` arguments are
        passed on. Returns the adapter's name.
        """
        return lora.load_lora_adapter(self.model, pretrained_model_name_or_path, adapter_name=adapter_name, **kwargs)

    def unload_lora_weights(self) -> None:
        """Removes every adapter, restoring the model loaded before them (fused adapters stay in the weights)."""
        lora.unload_lora(self.model)

    def fuse_lora(
        self, lora_scale: float = 1.0, safe_fusing: bool = False, adapter_names: list[str] | None = None
    ) -> None:
        """Merges the active adapters, times `lora_scale`, into the base weights: same images, no adapter overhead."""
        lora.fuse_lora(self.model, lora_scale=lora_scale, safe_fusing=safe_fusing, adapter_names=adapter_names)

    def unfuse_lora(self) -> None:
        """Undoes `fuse_lora`."""
        lora.unfuse_lora(self.model)
