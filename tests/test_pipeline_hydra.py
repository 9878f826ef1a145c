import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

from hydra_hf import HydraForConditionalGeneration, HydraPipeline, HydraProcessor, flow_matching
from hydra_hf.models.hydra_tok.modeling_hydra_tok import ZeroInitLinear
from hydra_hf.pipelines import pipeline_hydra
from hydra_hf.pipelines.answer_guidance import AnswerGuidance, answer_batch, summed_answer_log_probs

from .utils import tiny_hydra, tiny_processor

STEPS = 3
PROMPT = "a red square"


def tiny_pipeline(**config_overrides) -> HydraPipeline:
    """The tiny model with its zero-initialised (adaLN-Zero, decoder output) layers given random weights: untrained,
    they make the decoder draw flat grey whatever the latents, and every pixel test would pass vacuously."""
    model = tiny_hydra(**config_overrides)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ZeroInitLinear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.2)
    pipe = HydraPipeline(model=model, processor=tiny_processor())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "pt")
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **kwargs).images


def count_velocity_calls(pipe, monkeypatch) -> list[int]:
    """Batch size of every `flow_velocity` call the pipeline makes."""
    batches, velocity = [], pipe.model.flow_velocity

    def counting(latents, *args, **kwargs):
        batches.append(latents.shape[0])
        return velocity(latents, *args, **kwargs)

    monkeypatch.setattr(pipe.model, "flow_velocity", counting)
    return batches


@pytest.fixture
def pipe():
    return tiny_pipeline()


# -------------------------------------------------------------------------------------------- determinism, shapes
def test_a_seed_gives_identical_pixels_and_other_seeds_differ(pipe):
    first, again, other = run(pipe, seed=0), run(pipe, seed=0), run(pipe, seed=1)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other, atol=1e-3)
    assert np.array_equal(np.asarray(run(pipe, output_type="pil")[0]), np.asarray(run(pipe, output_type="pil")[0]))


@pytest.mark.parametrize(
    "output_type, shape",
    [("pil", (24, 16)), ("np", (6, 16, 24, 3)), ("pt", (6, 3, 16, 24)), ("latent", (6, 8, 2, 3))],
)
def test_every_output_type_for_prompt_lists_and_several_images_per_prompt(pipe, output_type, shape):
    images = run(pipe, [PROMPT, "a blue circle"], num_images_per_prompt=3, height=16, width=24, output_type=output_type)
    if output_type == "pil":
        assert len(images) == 6 and all(isinstance(image, PIL.Image.Image) and image.size == shape for image in images)
        return
    assert tuple(images.shape) == shape
    if output_type != "latent":
        assert images.dtype in (np.float32, torch.float32) and 0 <= images.min() <= images.max() <= 1


def test_output_types_agree_and_the_default_size_comes_from_the_config(pipe):
    pt, np_images, pil = (run(pipe, output_type=kind) for kind in ("pt", "np", "pil"))
    assert pt.shape == (1, 3, 32, 32)  # vision_config.image_size
    assert np.array_equal(np_images, pt.permute(0, 2, 3, 1).numpy())
    assert np.array_equal(np.asarray(pil[0]), np.round(np_images[0] * 255).astype(np.uint8))
    (images,) = pipe(PROMPT, num_inference_steps=STEPS, output_type="pt", return_dict=False)
    assert images.shape == (1, 3, 32, 32)


def test_a_list_of_generators_gives_each_image_its_own_seed(pipe):
    together = pipe(
        [PROMPT, "a blue circle"],
        generator=[torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)],
        num_inference_steps=STEPS,
        output_type="pt",
    ).images
    assert torch.allclose(together[0], run(pipe, PROMPT, seed=3)[0], atol=1e-4)
    assert torch.allclose(together[1], run(pipe, "a blue circle", seed=4)[0], atol=1e-4)


# ---------------------------------------------------------------------------------------------- sampler, guidance
def test_the_scheduler_integrates_the_models_flow_with_its_shift():
    """The pipeline equals a hand-written sampler over `flow_velocity` with the package's own Euler maths."""
    pipe, shift, scale = tiny_pipeline(timestep_shift=3.0), 3.0, 4.0
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == shift
    noise = torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    seen = []
    latents = pipe(
        PROMPT,
        latents=noise,
        num_inference_steps=STEPS,
        guidance_scale=scale,
        output_type="latent",
        callback_on_step_end=lambda p, i, t, tensors: seen.append(float(t)) or {},
    ).images

    times = flow_matching.sampling_timesteps(STEPS, shift)
    assert torch.allclose(torch.tensor(seen) / 1000, times[:-1])
    assert torch.allclose(pipe.scheduler.sigmas, times)
    model, processor = pipe.model, pipe.processor
    prompts = processor(text=processor.build_generation_prompt(["", PROMPT]))
    expected = noise
    with torch.no_grad():
        cache = model.prepare_prompt_cache(prompts["input_ids"], prompts["attention_mask"])
        for t, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
            uncond, cond = model.flow_velocity(torch.cat([expected, expected]), t, prompt_cache=cache).chunk(2)
            expected = flow_matching.euler_step(expected, uncond + scale * (cond - uncond), t, t_next)
    assert torch.allclose(latents, expected, atol=1e-5)


def test_image_to_image_noises_the_images_latent_and_runs_the_schedules_tail():
    """`image` + `strength` equals a hand-written SDEdit: the image's latent moved to the shifted time of step
    N - round(strength N) along the flow, then the remaining Euler steps; strength 1 is text-to-image."""
    pipe, shift, steps = tiny_pipeline(timestep_shift=2.0), 2.0, 4
    image = PIL.Image.new("RGB", (32, 32), (0, 0, 255))
    noise = torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    seen = []
    edited = pipe(PROMPT, image=image, strength=0.5, num_inference_steps=steps, guidance_scale=1.0, output_type="latent",
                  generator=torch.Generator().manual_seed(0),
                  callback_on_step_end=lambda p, i, t, tensors: seen.append(float(t)) or {}).images

    times = flow_matching.sampling_timesteps(steps, shift)[2:]
    assert torch.allclose(torch.tensor(seen) / 1000, times[:-1])
    model, processor = pipe.model, pipe.processor
    with torch.no_grad():
        pixels = processor.image_processor([image], return_tensors="pt")["pixel_values"]
        clean = model.vision_model.normalize_latents(model.model.image_latents(pixels))
        expected = flow_matching.interpolate(clean, noise, times[:1])
        prompt = processor(text=processor.build_generation_prompt([PROMPT]))
        cache = model.prepare_prompt_cache(prompt["input_ids"], prompt["attention_mask"])
        for t, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
            expected = flow_matching.euler_step(expected, model.flow_velocity(expected, t, prompt_cache=cache), t, t_next)
    assert torch.allclose(edited, expected, atol=1e-5)
    full = run(pipe, image=image, strength=1.0, num_inference_steps=steps, output_type="latent")
    assert torch.allclose(full, run(pipe, num_inference_steps=steps, output_type="latent"), atol=1e-6)


def test_guidance_runs_one_doubled_batch_per_step_and_one_skips_the_unconditional_pass(pipe, monkeypatch):
    batches = count_velocity_calls(pipe, monkeypatch)
    guided = run(pipe, [PROMPT, "a blue circle"], guidance_scale=5.0, output_type="latent")
    assert batches == [4] * STEPS
    batches.clear()
    plain = run(pipe, [PROMPT, "a blue circle"], guidance_scale=1.0, output_type="latent")
    assert batches == [2] * STEPS
    assert not torch.allclose(guided, plain, atol=1e-3)
    # 1.0 ignores the negative prompt; with guidance it takes the unconditional rows' place.
    with_negative = dict(negative_prompt="a green circle", output_type="latent")
    assert torch.equal(plain, run(pipe, [PROMPT, "a blue circle"], guidance_scale=1.0, **with_negative))
    negative = run(pipe, [PROMPT, "a blue circle"], guidance_scale=5.0, **with_negative)
    assert not torch.allclose(guided, negative, atol=1e-3)


def test_guidance_zero_samples_the_unconditional_model(pipe):
    unconditional = run(pipe, PROMPT, guidance_scale=0.0, output_type="latent")
    assert torch.allclose(unconditional, run(pipe, "", guidance_scale=1.0, output_type="latent"), atol=1e-5)


def test_perturbed_attention_guidance_adds_a_block_of_rows_and_follows_diffusers_formula(pipe, monkeypatch):
    prompts = [PROMPT, "a blue circle"]
    batches = count_velocity_calls(pipe, monkeypatch)
    pag = dict(pag_scale=3.0, pag_applied_layers=[0], output_type="latent")
    run(pipe, prompts, guidance_scale=5.0, **pag)
    run(pipe, prompts, guidance_scale=1.0, **pag)
    assert batches == [6] * STEPS + [4] * STEPS
    batches.clear()
    assert torch.equal(run(pipe, prompts, pag_scale=0.0, output_type="latent"), run(pipe, prompts, output_type="latent"))
    assert batches == [4] * STEPS * 2  # pag_scale 0 adds no rows

    # One Euler step from t = 1 to 0 moves the noise by -v: v must be v_u + g (v_c - v_u) + s (v_c - v_perturbed).
    noise = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(3))
    one_step = dict(num_inference_steps=1, latents=noise, output_type="latent")
    guided = run(pipe, prompts, guidance_scale=5.0, pag_scale=3.0, pag_applied_layers=[0], **one_step)
    velocity = lambda images: noise - images  # noqa: E731
    unconditional = velocity(run(pipe, ["", ""], guidance_scale=1.0, **one_step))
    conditional = velocity(run(pipe, prompts, guidance_scale=1.0, **one_step))
    ids = pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
    with torch.no_grad():
        perturbed = pipe.model.flow_velocity(
            noise, 1.0, input_ids=ids[0], attention_mask=ids[1], perturbed_rows=torch.ones(2, dtype=torch.bool),
            perturbed_layers=[0],
        )
    expected = unconditional + 5.0 * (conditional - unconditional) + 3.0 * (conditional - perturbed)
    assert not torch.allclose(perturbed, conditional, atol=1e-3)
    assert torch.allclose(velocity(guided), expected, atol=1e-4)
    uncached = run(pipe, prompts, guidance_scale=5.0, pag_scale=3.0, pag_applied_layers=[0], use_prompt_cache=False, **one_step)
    assert torch.allclose(guided, uncached, atol=1e-5)


def test_guidance_defaults_come_from_the_models_generation_config_and_survive_saving(pipe, tmp_path):
    prompts = [PROMPT, "a blue circle"]
    answer_defaults = {"answer_guidance_scale": None, "answer_guidance_min_time": 0.3, "answer_guidance_smoothing": [4, 0.5]}
    assert pipe.guidance_settings() == {
        "guidance_scale": 5.0, "pag_scale": 0.0, "pag_applied_layers": [1], "guidance_interval": [0.0, 1.0],
        **answer_defaults,
    }
    own = {"guidance_scale": 2.0, "pag_scale": 4.0, "pag_applied_layers": [0], "guidance_interval": [0.5, 1.0],
           "answer_guidance_scale": 0.1, "answer_guidance_min_time": 0.5, "answer_guidance_smoothing": [2, 0.25]}
    pipe.model.generation_config.text_to_image = own
    explicit = run(pipe, prompts, output_type="latent", **own)
    assert torch.equal(run(pipe, prompts, output_type="latent"), explicit)
    assert not torch.allclose(run(pipe, prompts, output_type="latent", pag_scale=0.0), explicit, atol=1e-3)
    pipe.model.save_pretrained(tmp_path)
    pipe.processor.save_pretrained(tmp_path)
    reloaded = HydraPipeline.from_pretrained(tmp_path)
    assert reloaded.guidance_settings() == own
    assert reloaded.guidance_settings(pag_scale=0.0, pag_applied_layers=(1,), guidance_interval=(0.0, 1.0)) == {
        **own, "pag_scale": 0.0, "pag_applied_layers": [1], "guidance_interval": [0.0, 1.0],
    }
    assert HydraPipeline.guidance_in_effect(own) == own  # every one of them changes the sampling
    assert HydraPipeline.guidance_in_effect({**own, "guidance_scale": 1.0, "pag_scale": 0.0, "answer_guidance_scale": 0}) == {
        "guidance_scale": 1.0, "pag_scale": 0.0}
    # the model's answer guidance applies to calls that ask questions, and only to them
    questions = [[("is there a red square?", "yes")], []]
    reloaded.set_progress_bar_config(disable=True)
    assert torch.equal(run(reloaded, prompts, output_type="latent"), explicit)
    guided = run(reloaded, prompts, output_type="latent", guidance_questions=questions)
    assert torch.equal(guided, run(reloaded, prompts, output_type="latent", guidance_questions=questions,
                                   **{name: own[name] for name in own if name.startswith("answer")}))
    assert not torch.allclose(guided, run(reloaded, prompts, output_type="latent", guidance_questions=questions,
                                          answer_guidance_scale=0.03), atol=1e-4)


def test_guidance_interval_skips_the_unconditional_rows_outside_it(pipe, monkeypatch):
    prompts = [PROMPT, "a blue circle"]
    pipe.scheduler.set_timesteps(sigmas=flow_matching.sampling_timesteps(STEPS)[:-1].tolist())
    flow_times = (pipe.scheduler.timesteps / pipe.scheduler.config.num_train_timesteps).tolist()
    low = (flow_times[0] + flow_times[1]) / 2  # guidance at the first (noisiest) step only
    batches = count_velocity_calls(pipe, monkeypatch)
    interval = dict(guidance_scale=5.0, guidance_interval=(low, 1.0), output_type="latent")
    partly = run(pipe, prompts, **interval)
    assert batches == [4] + [2] * (STEPS - 1)
    batches.clear()
    run(pipe, prompts, pag_scale=3.0, pag_applied_layers=[0], **interval)
    assert batches == [6] + [4] * (STEPS - 1)
    throughout = run(pipe, prompts, guidance_scale=5.0, output_type="latent")
    assert torch.equal(run(pipe, prompts, guidance_scale=5.0, guidance_interval=(0.0, 1.0), output_type="latent"), throughout)
    assert not torch.allclose(partly, throughout, atol=1e-3)
    assert torch.allclose(run(pipe, prompts, use_prompt_cache=False, **interval), partly, atol=1e-5)

    # Outside the interval a step takes the conditional velocity, with PAG when it is on, exactly as guidance 1 does.
    noise = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(3))
    one_step = dict(num_inference_steps=1, latents=noise, output_type="latent")
    for pag in ({}, dict(pag_scale=3.0, pag_applied_layers=[0])):
        skipped = run(pipe, prompts, guidance_scale=5.0, guidance_interval=(0.0, 0.5), **pag, **one_step)
        assert torch.allclose(skipped, run(pipe, prompts, guidance_scale=1.0, **pag, **one_step), atol=1e-5)
        assert not torch.allclose(skipped, run(pipe, prompts, guidance_scale=5.0, **pag, **one_step), atol=1e-3)


def test_the_prompt_runs_once_and_is_tokenised_once(pipe, monkeypatch):
    lengths, calls = [], []

    def record_length(module, args, kwargs, output):
        lengths.append(kwargs.get("inputs_embeds", kwargs.get("input_ids")).shape[1])

    pipe.model.model.language_model.register_forward_hook(record_length, with_kwargs=True)
    processor_call = HydraProcessor.__call__
    counting_call = lambda self, *args, **kwargs: calls.append(1) or processor_call(self, *args, **kwargs)  # noqa: E731
    monkeypatch.setattr(HydraProcessor, "__call__", counting_call)
    cached = run(pipe, [PROMPT, "a blue circle"])
    prompt_length = lengths[0]
    assert lengths == [prompt_length] + [16] * STEPS and len(calls) == 1
    lengths.clear()
    uncached = run(pipe, [PROMPT, "a blue circle"], use_prompt_cache=False)
    assert lengths == [prompt_length + 16] * STEPS
    assert torch.allclose(cached, uncached, atol=1e-5)


# ---------------------------------------------------------------------------------------------- answer guidance
def answer_loss(pipe, x0: torch.Tensor, pairs) -> float:
    """-sum log p(answer) of the pairs asked of the clean latent estimate `x0` (one image) by the understanding."""
    vision = pipe.model.model.vision_model
    size = vision.config.image_size
    batch, spans = answer_batch(pipe.processor, [PIL.Image.new("RGB", (size, size))] * len(pairs), pairs)
    with torch.no_grad():
        latents = vision.denormalize_latents(x0).expand(len(pairs), -1, -1, -1)
        logits = pipe.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            image_latents=latents).logits
    return -float(summed_answer_log_probs(logits, batch["input_ids"], spans).sum())


def test_an_answer_guidance_step_lowers_the_answer_loss_of_the_clean_estimate(pipe):
    questions = [[("is there a red square?", "yes"), ("how many circles are there?", "2")], []]  # image 1: none
    latents = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    velocity = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    guidance = AnswerGuidance(pipe.model, pipe.processor, questions, scale=0.05, min_time=0.5, smoothing=(1, 0.0))
    moved = guidance.step(latents, velocity, next_time=0.75)
    before, after = (answer_loss(pipe, (x - 0.75 * velocity)[:1], questions[0]) for x in (latents, moved))
    assert after < before  # the same velocity, a better-answering clean estimate
    assert torch.equal(moved[1], latents[1])  # nothing asked, nothing moved
    assert float((moved[0] - latents[0]).pow(2).mean().sqrt()) == pytest.approx(0.05, rel=1e-4)  # scale x RMS
    smoothed = AnswerGuidance(pipe.model, pipe.processor, questions, scale=0.05, min_time=0.5, smoothing=(3, 0.5))
    generators = [torch.Generator().manual_seed(i) for i in (0, 1)]
    moved_smoothed = smoothed.step(latents, velocity, 0.75, generators)
    assert not torch.allclose(moved_smoothed[0], moved[0]) and torch.equal(moved_smoothed[1], latents[1])
    assert torch.equal(generators[1].get_state(), torch.Generator().manual_seed(1).get_state())  # no draws for it
    # a step ending below min_time moves nothing
    assert torch.equal(guidance.step(latents, velocity, next_time=0.25), latents)


def test_answer_guidance_in_the_pipeline_moves_only_asked_images_whatever_their_batch(pipe):
    prompts = [PROMPT, "a blue circle", "a circle"]
    questions = [[("is there a red square?", "yes")], [("is there a blue circle?", "yes")], []]
    generators = lambda seeds: [torch.Generator().manual_seed(seed) for seed in seeds]  # noqa: E731

    def call(prompts, seeds, **kwargs):
        return pipe(prompts, generator=generators(seeds), num_inference_steps=STEPS, output_type="latent",
                    num_images_per_prompt=2, **kwargs).images

    seeds = range(6)
    plain = call(prompts, seeds)
    guided = call(prompts, seeds, guidance_questions=questions, answer_guidance_scale=0.2, answer_guidance_min_time=0.0)
    assert torch.equal(guided[4:], plain[4:])  # the third prompt asks nothing: its two images are the plain ones
    assert all(not torch.allclose(guided[i], plain[i], atol=1e-3) for i in range(4))
    alone = call(prompts[1:2], seeds[2:4], guidance_questions=questions[1:2], answer_guidance_scale=0.2,
                 answer_guidance_min_time=0.0)
    torch.testing.assert_close(alone, guided[2:4], atol=1e-4, rtol=1e-4)  # the smoothing noise is each image's own
    for off in (dict(answer_guidance_scale=0.0), dict(answer_guidance_min_time=1.0)):
        assert torch.equal(call(prompts, seeds, guidance_questions=questions, **off), plain)
    one_prompt = pipe(PROMPT, generator=generators([0]), num_inference_steps=STEPS, output_type="latent",
                      guidance_questions=questions[0], answer_guidance_scale=0.2, answer_guidance_min_time=0.0).images
    torch.testing.assert_close(one_prompt, guided[:1], atol=1e-4, rtol=1e-4)  # a single prompt takes its list directly


# ---------------------------------------------------------------------------------------------------- callbacks
def test_a_callback_edits_the_latents(pipe):
    def zero_last(pipe, step, timestep, tensors):
        assert set(tensors) == {"latents"}
        return {"latents": torch.zeros_like(tensors["latents"])} if step == STEPS - 1 else {}

    assert torch.equal(run(pipe, callback_on_step_end=zero_last, output_type="latent"), torch.zeros(1, 8, 4, 4))
    assert not torch.allclose(run(pipe, callback_on_step_end=zero_last), run(pipe), atol=1e-3)


def test_a_callback_stops_the_loop_early(pipe, monkeypatch):
    batches = count_velocity_calls(pipe, monkeypatch)

    def stop_after_two(pipe, step, timestep, tensors):
        if step == 1:
            pipe._interrupt = True
        return {}

    images = run(pipe, num_inference_steps=5, callback_on_step_end=stop_after_two)
    assert len(batches) == 2 and pipe.interrupt and images.shape == (1, 3, 32, 32)
    batches.clear()
    run(pipe, num_inference_steps=5)
    assert len(batches) == 5 and not pipe.interrupt


# -------------------------------------------------------------------------------------------------- save / load
def test_save_and_load_give_identical_images(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "HydraPipeline"
    assert index["model"] == ["hydra_hf.models.hydra.modeling_hydra", "HydraForConditionalGeneration"]
    assert index["processor"] == ["hydra_hf.models.hydra.processing_hydra", "HydraProcessor"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    loaded = HydraPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.model) is HydraForConditionalGeneration and type(loaded.processor) is HydraProcessor
    assert torch.equal(run(pipe), run(loaded))
    # diffusers looks the class name up inside diffusers itself; the failure names the class to use.
    with pytest.raises(AttributeError, match="HydraPipeline"):
        DiffusionPipeline.from_pretrained(tmp_path)


def test_load_from_a_model_and_processor_folder(tmp_path):
    pipe = tiny_pipeline(timestep_shift=2.0)
    pipe.model.save_pretrained(tmp_path)
    pipe.processor.save_pretrained(tmp_path)
    loaded = HydraPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.scheduler.config.shift == 2.0
    assert torch.equal(run(pipe), run(loaded))
    assert HydraPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16).model.dtype == torch.bfloat16


def test_a_hub_id_is_downloaded_before_loading(pipe, tmp_path, monkeypatch):
    pipe.save_pretrained(tmp_path)
    requests = []
    fake_download = lambda repo, **kwargs: requests.append((repo, kwargs)) or str(tmp_path)  # noqa: E731
    monkeypatch.setattr(pipeline_hydra, "snapshot_download", fake_download)
    HydraPipeline.from_pretrained("someone/hydra-tiny", revision="v1")
    assert requests == [("someone/hydra-tiny", {"revision": "v1"})]


# ----------------------------------------------------------------------------------------------- device, dtype
def test_to_moves_every_component_and_bfloat16_runs(pipe):
    pipe.to("cpu")
    assert pipe.device.type == "cpu" and pipe.model.device.type == "cpu"
    pipe.to(torch.bfloat16)
    assert pipe.model.dtype == torch.bfloat16
    plain = run(pipe, output_type="latent")
    assert plain.dtype == torch.bfloat16
    assert run(pipe).shape == (1, 3, 32, 32)
    guided = run(pipe, output_type="latent", guidance_questions=[("is there a red square?", "yes")],
                 answer_guidance_scale=0.2, answer_guidance_min_time=0.0)
    assert guided.dtype == torch.bfloat16 and torch.isfinite(guided).all() and not torch.equal(guided, plain)


def test_offload_declarations_and_inapplicable_helpers_are_harmless(pipe):
    assert pipe.model_cpu_offload_seq == "model"
    reference = run(pipe)
    pipe.enable_attention_slicing()
    assert torch.equal(run(pipe), reference)
    pipe.disable_attention_slicing()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="model CPU offload needs an accelerator")
def test_model_cpu_offload_matches_the_model_on_the_accelerator(pipe):
    on_device = run(pipe.to("cuda"), output_type="latent").cpu()
    pipe.enable_model_cpu_offload()
    offloaded = run(pipe, output_type="latent")
    assert offloaded.device.type == "cuda" and pipe.model.device.type == "cpu"  # back on the CPU after the call
    assert torch.allclose(offloaded.cpu(), on_device, atol=1e-4)


# --------------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=30), r"multiples of the patch size 8 \(e\.g\. 24x32\); got 30x32"),
        (dict(width=4), r"multiples of the patch size 8 .*got 32x4"),
        (dict(guidance_scale=-1.0), r"guidance_scale` must be >= 0 .*got -1\.0"),
        (dict(num_inference_steps=0), r"num_inference_steps` must be an integer >= 1, got 0"),
        (dict(pag_scale=-1.0), r"`pag_scale` must be >= 0 \(0 = no perturbed-attention guidance\), got -1\.0"),
        (dict(pag_scale=1.0, pag_applied_layers=[2]), r"decoder layer indices in \[-2, 2\) when `pag_scale` > 0, got \[2\]"),
        (dict(pag_scale=1.0, pag_applied_layers=[]), r"`pag_applied_layers` must be a non-empty list"),
        (dict(pag_scale=1.0, pag_applied_layers=1), r"`pag_applied_layers` must be a non-empty list .*got 1"),
        (dict(guidance_interval=(0.8, 0.2)), r"`guidance_interval` must be a pair of flow times \(low, high\) with 0 <= low"),
        (dict(guidance_interval=(0.5, 1.5)), r"`guidance_interval` .*got \[0\.5, 1\.5\]"),
        (dict(guidance_interval=[0.5]), r"`guidance_interval` .*got \[0\.5\]"),
        (dict(decoder_num_inference_steps=0), r"decoder_num_inference_steps` must be an integer >= 1"),
        (dict(num_images_per_prompt=0), r"num_images_per_prompt` must be an integer >= 1"),
        (dict(negative_prompt=["x", "y", "z"]), r"list of 2 string\(s\), one per prompt"),
        (dict(latents=torch.zeros(2, 8, 2, 2)), r"must have shape \[2, 8, 4, 4\] .*got \[2, 8, 2, 2\]"),
        (dict(generator=[torch.Generator()]), r"list of 1 generator\(s\) but 2 image\(s\)"),
        (dict(output_type="jpeg"), r"one of \('pil', 'np', 'pt', 'latent'\)"),
        (dict(callback_on_step_end_tensor_inputs=["noise"]), r"among \['latents'\], got \['noise'\]"),
        (dict(prompt=[]), r"`prompt` must be a string or a non-empty list of strings"),
        (dict(strength=0.5), r"`strength` must be in \(0, 1\] .*got 0\.5 with no `image`"),
        (dict(image=[PIL.Image.new("RGB", (32, 32))] * 2, strength=0.0), r"`strength` must be in \(0, 1\]"),
        (dict(image=[PIL.Image.new("RGB", (32, 32))] * 2, strength=0.1), r"round to at least one step, got 0\.1 \* 3"),
        (dict(image=PIL.Image.new("RGB", (32, 32))), r"one PIL image per prompt \(2\), got a list of 1 \(Image\)"),
        (dict(image=[PIL.Image.new("RGB", (32, 32)), "x.png"]), r"one PIL image per prompt \(2\), got a list of 2 \(Image, str\)"),
        (dict(image=[PIL.Image.new("RGB", (32, 32))] * 2, latents=torch.zeros(2, 8, 4, 4)), r"`image` .* or `latents`, not both"),
        (dict(guidance_questions=[("is there a red square?", "yes")]), r"one list of \(question, answer\) string pairs per prompt \(2\)"),
        (dict(guidance_questions=[[("is there a red square?",)], []]), r"`guidance_questions` must be one list"),
        (dict(guidance_questions=[[], []], answer_guidance_scale=-0.1), r"`answer_guidance_scale` must be >= 0 .*got -0\.1"),
        (dict(answer_guidance_min_time=1.5), r"`answer_guidance_min_time` must be a flow time in \[0, 1\] .*got 1\.5"),
        (dict(answer_guidance_smoothing=(0, 0.5)), r"`answer_guidance_smoothing` must be \(draws >= 1, noise std >= 0\), got \[0, 0\.5\]"),
        (dict(answer_guidance_smoothing=(2, -1.0)), r"`answer_guidance_smoothing` must be .*got \[2, -1\.0\]"),
    ],
)
def test_bad_inputs_say_what_was_expected(pipe, kwargs, message):
    kwargs = {"prompt": [PROMPT, "a blue circle"], "num_inference_steps": STEPS, **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)
