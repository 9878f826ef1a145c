import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
    AutoProcessor,
    TextIteratorStreamer,
)

import hydra_hf  # noqa: F401  (registers the Auto classes)
from hydra_hf import HydraConfig, HydraForConditionalGeneration, HydraModel, HydraProcessor, HydraTokConfig
from hydra_hf.models.hydra.modeling_hydra import identity_attention
from hydra_hf.models.hydra_tok.modeling_hydra_tok import grid_positions

from .utils import random_pixels, tiny_config, tiny_hydra, tiny_processor

N = 16  # image tokens of a 32 px image with 8 px patches


def understanding_inputs(processor: HydraProcessor, questions: list[str], colours: list[tuple[int, int, int]]):
    conversations = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}] for question in questions
    ]
    texts = processor.apply_chat_template(conversations, add_generation_prompt=True)
    images = [Image.new("RGB", (32, 32), colour) for colour in colours]
    return processor(text=texts, images=images)


def generation_ids(processor: HydraProcessor, prompts: list[str]):
    return processor(text=processor.build_generation_prompt(prompts))


def perturb_token_hook(token_index: int, scale: float = 5.0):
    """A projector hook that changes the visual token `token_index` of every image, and nothing else."""

    def hook(module, inputs, output):
        changed = output.clone()
        changed[:, token_index] += scale
        return changed

    return hook


# ------------------------------------------------------------------------------------------------- config / auto
def test_presets_compose_an_llm_and_hydra_tok():
    big = HydraConfig.from_preset("hydra-1.5b")
    assert big.text_config.model_type == "qwen2" and big.text_config.hidden_size == 1536
    assert isinstance(big.vision_config, HydraTokConfig) and big.vision_config.latent_channels == 64
    assert big.tie_word_embeddings and big.num_image_tokens == 1024
    seven = HydraConfig.from_preset("hydra-7b")
    assert seven.text_config.hidden_size == 3584 and not seven.tie_word_embeddings
    assert (seven.ntp_weight, seven.flow_weight, seven.llm_vision_input) == (1.0, 1.0, "semantic")
    with pytest.raises(Exception, match="outside the LLM vocabulary"):
        HydraConfig.from_preset("tiny", image_token_id=10_000)
    with pytest.raises(Exception, match="llm_vision_input"):
        HydraConfig.from_preset("tiny", llm_vision_input="pixels")
    with pytest.raises(Exception, match="flow_head_hidden_size must be at least 1"):
        HydraConfig.from_preset("tiny", flow_head_hidden_size=0)


def test_model_and_processor_round_trip_through_the_auto_classes(tmp_path):
    model, processor = tiny_hydra(), tiny_processor()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert "model.safetensors" in {p.name for p in tmp_path.iterdir()}
    assert isinstance(AutoConfig.from_pretrained(tmp_path), HydraConfig)
    assert type(AutoModel.from_pretrained(tmp_path)) is HydraModel
    for auto_class in (AutoModelForImageTextToText, AutoModelForMultimodalLM):
        assert type(auto_class.from_pretrained(tmp_path)) is HydraForConditionalGeneration
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded_processor) is HydraProcessor
    loaded = HydraForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))

    inputs = understanding_inputs(processor, ["what color is the shape ?"], [(255, 0, 0)])
    reloaded_inputs = understanding_inputs(loaded_processor, ["what color is the shape ?"], [(255, 0, 0)])
    assert torch.equal(inputs["input_ids"], reloaded_inputs["input_ids"])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**reloaded_inputs).logits)


# -------------------------------------------------------------------------------------------- attention pattern
def test_image_tokens_attend_bidirectionally_and_text_causally():
    model, processor = tiny_hydra(), tiny_processor()
    inputs = understanding_inputs(processor, ["what color is the shape ?"], [(255, 0, 0)])
    image_positions = torch.nonzero(inputs["input_ids"][0] == processor.image_token_id).flatten()
    first_image, last_image = int(image_positions[0]), int(image_positions[-1])
    with torch.no_grad():
        base = model.model(**inputs).last_hidden_state[0]
        handle = model.model.projector.register_forward_hook(perturb_token_hook(N - 1))
        changed = model.model(**inputs).last_hidden_state[0]
        handle.remove()
    difference = (changed - base).abs().amax(-1)
    # A later image token changes earlier tokens of the same image ...
    assert difference[first_image : last_image].min() > 1e-4
    # ... but never the text before the image, while the text after it does see the change.
    assert difference[:first_image].max() == 0
    assert difference[last_image + 1 :].min() > 1e-4


def test_the_images_of_a_sequence_are_separate_blocks():
    model, processor = tiny_hydra(), tiny_processor()
    conversation = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a red square"}, {"type": "image"}]}]]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(text=text, images=[Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))])
    image_positions = torch.nonzero(inputs["input_ids"][0] == processor.image_token_id).flatten()
    first_block, second_block = image_positions[:N], image_positions[N:]

    def hook(module, args, output):  # change the last token of the second image only
        changed = output.clone()
        changed[1, N - 1] += 5.0
        return changed

    with torch.no_grad():
        base = model.model(**inputs).last_hidden_state[0]
        handle = model.model.projector.register_forward_hook(hook)
        changed = model.model(**inputs).last_hidden_state[0]
        handle.remove()
    difference = (changed - base).abs().amax(-1)
    assert difference[first_block].max() == 0
    assert difference[second_block[:-1]].min() > 1e-4


# --------------------------------------------------------------------------------------------------- understanding
def test_left_padded_batch_generates_the_same_tokens_as_one_by_one():
    model, processor = tiny_hydra(seed=1), tiny_processor()
    questions = ["what color is the shape ?", "describe the image . what shape is it ? yes no"]
    colours = [(220, 40, 40), (40, 80, 220)]
    batch = understanding_inputs(processor, questions, colours)
    assert (batch["attention_mask"] == 0).any()  # the shorter prompt really is left-padded
    batched = model.generate(**batch, max_new_tokens=6, do_sample=False)[:, batch["input_ids"].shape[1] :]
    for row, (question, colour) in enumerate(zip(questions, colours)):
        single = understanding_inputs(processor, [question], [colour])
        alone = model.generate(**single, max_new_tokens=6, do_sample=False)[:, single["input_ids"].shape[1] :]
        assert torch.equal(batched[row], alone[0])


def test_generate_uses_the_kv_cache_and_streams():
    config = tiny_config()
    config.use_cache = config.text_config.use_cache = False  # as `Trainer` leaves the configs it trained
    torch.manual_seed(2)
    model, processor = HydraForConditionalGeneration(config).eval(), tiny_processor()
    inputs = understanding_inputs(processor, ["what color is the shape ?"], [(40, 170, 60)])
    lengths = []
    model.model.language_model.register_forward_hook(
        lambda module, args, kwargs, output: lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    with_cache = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert lengths == [inputs["input_ids"].shape[1]] + [1] * 4  # the prompt once, then one new token per step
    without_cache = model.generate(**inputs, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without_cache)
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True)
    streamed = model.generate(**inputs, max_new_tokens=5, do_sample=False, streamer=streamer)
    text = "".join(streamer)
    expected = processor.tokenizer.decode(streamed[0, inputs["input_ids"].shape[1] :])
    assert text.split() == expected.split() and len(text.split()) > 0


def test_the_image_changes_the_answer_distribution():
    model, processor = tiny_hydra(), tiny_processor()
    red = understanding_inputs(processor, ["what color is the shape ?"], [(255, 0, 0)])
    blue = understanding_inputs(processor, ["what color is the shape ?"], [(0, 0, 255)])
    with torch.no_grad():
        assert not torch.allclose(model(**red).logits[:, -1], model(**blue).logits[:, -1])


# ------------------------------------------------------------------------------------------------------ generation
def test_cached_and_uncached_velocity_agree_and_the_cache_is_reused():
    model, processor = tiny_hydra(), tiny_processor()
    prompts = generation_ids(processor, ["a red square", "a blue circle and a green square"])
    latents = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = model.prepare_prompt_cache(prompts["input_ids"], prompts["attention_mask"])
        prompt_length = cache.cache.get_seq_length()
        cached = model.flow_velocity(latents, 0.7, prompt_cache=cache)
        assert cache.cache.get_seq_length() == prompt_length  # cropped back: ready for the next step
        again = model.flow_velocity(latents, 0.7, prompt_cache=cache)
        uncached = model.flow_velocity(latents, 0.7, input_ids=prompts["input_ids"], attention_mask=prompts["attention_mask"])
        other_time = model.flow_velocity(latents, 0.2, prompt_cache=cache)
    assert cached.shape == (2, 8, 4, 4)
    assert torch.allclose(cached, uncached, atol=1e-5)
    assert torch.equal(cached, again)
    assert not torch.allclose(cached, other_time)


def test_velocity_of_a_batch_equals_each_prompt_alone():
    model, processor = tiny_hydra(), tiny_processor()
    prompts = ["a red square", "a blue circle and a green square"]
    batch = generation_ids(processor, prompts)
    latents = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        together = model.flow_velocity(latents, 0.5, prompt_cache=model.prepare_prompt_cache(**batch))
        for row, prompt in enumerate(prompts):
            single = generation_ids(processor, [prompt])
            alone = model.flow_velocity(latents[row : row + 1], 0.5, prompt_cache=model.prepare_prompt_cache(**single))
            assert torch.allclose(together[row], alone[0], atol=1e-5)


def test_identity_attention_cuts_the_perturbed_rows_tokens_off_each_other_and_only_inside_the_context():
    language_model = tiny_hydra().model.language_model
    num_layers = len(language_model.layers)
    embeds = torch.randn(2, 6, language_model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    changed = embeds.clone()
    changed[:, 0] += 1.0
    perturbed = torch.tensor([True, False])
    hidden = lambda inputs: language_model(inputs_embeds=inputs).last_hidden_state  # noqa: E731
    with torch.no_grad():
        plain = hidden(embeds)
        with identity_attention(language_model, range(num_layers), perturbed):
            isolated, isolated_changed = hidden(embeds), hidden(changed)
        assert torch.equal(hidden(embeds), plain)  # the hooks are gone
    # Row 0 attends nowhere but to itself in every layer: the first token's change stays with it.
    assert torch.allclose(isolated[0, 1:], isolated_changed[0, 1:], atol=1e-6)
    assert not torch.allclose(isolated[0, 0], isolated_changed[0, 0], atol=1e-3)
    assert not torch.allclose(isolated[0], plain[0], atol=1e-3)
    # Row 1 is not perturbed: unchanged, and its later tokens still read the first one.
    assert torch.allclose(isolated[1], plain[1], atol=1e-6)
    assert not torch.allclose(isolated[1, 1:], isolated_changed[1, 1:], atol=1e-3)
    with pytest.raises(ValueError, match=rf"has {num_layers} decoder layers; cannot perturb layers \[{num_layers}\]"):
        with identity_attention(language_model, [num_layers], perturbed):
            pass


def test_perturbed_velocity_agrees_with_and_without_the_prompt_cache_and_leaves_other_rows_alone():
    model, processor = tiny_hydra(), tiny_processor()
    prompts = generation_ids(processor, ["a red square", "a blue circle and a green square"])
    latents = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(2))
    perturbed = dict(perturbed_rows=torch.tensor([False, True]), perturbed_layers=[0])
    with torch.no_grad():
        plain = model.flow_velocity(latents, 0.6, prompt_cache=model.prepare_prompt_cache(**prompts))
        cache = model.prepare_prompt_cache(**prompts, **perturbed)
        cached = model.flow_velocity(latents, 0.6, prompt_cache=cache, **perturbed)
        uncached = model.flow_velocity(latents, 0.6, **prompts, **perturbed)
    assert torch.allclose(cached, uncached, atol=1e-5)
    assert torch.allclose(cached[0], plain[0], atol=1e-5)
    assert not torch.allclose(cached[1], plain[1], atol=1e-3)


def test_generation_training_builds_noisy_tokens_and_a_flow_loss():
    model, processor = tiny_hydra(), tiny_processor()
    text = processor.build_generation_prompt("a red square", target_image=True)
    inputs = processor(text=[text], images=[Image.new("RGB", (32, 32), (255, 0, 0))])
    sampling_prompt = generation_ids(processor, ["a red square"])["input_ids"][0]
    # Training sees exactly the sampling prompt (ending in begin-of-image), then the image tokens, then end-of-image.
    assert torch.equal(inputs["input_ids"][0, : len(sampling_prompt)], sampling_prompt)
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == N
    assert inputs["input_ids"][0, -1] == processor.eoi_token_id
    noise = torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    flags = torch.tensor([True])
    with torch.no_grad():
        early = model(**inputs, image_generation_mask=flags, timesteps=torch.tensor([0.1]), noise=noise)
        late = model(**inputs, image_generation_mask=flags, timesteps=torch.tensor([0.9]), noise=noise)
        clean_latent = model.vision_model.normalize_latents(model.model.image_latents(inputs["pixel_values"]))
    expected_target = (noise - clean_latent).flatten(2).transpose(1, 2)
    assert early.flow_prediction.shape == (1, N, 8) and early.loss_ntp is None
    assert torch.allclose(early.loss_flow, torch.nn.functional.mse_loss(early.flow_prediction, expected_target), atol=1e-6)
    assert not torch.allclose(early.flow_prediction, late.flow_prediction)  # time reaches the head


def mixed_batch(processor: HydraProcessor):
    """Row 0 answers about an image (labels on the answer); row 1 generates an image from a caption."""
    understanding = processor.apply_chat_template(
        [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is the shape ?"}]},
          {"role": "assistant", "content": "red"}]]
    )[0]
    generation = processor.build_generation_prompt("a blue circle", target_image=True)
    images = [Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))]
    inputs = processor(text=[understanding, generation], images=images)
    labels = torch.full_like(inputs["input_ids"], -100)
    answer = processor.tokenizer.convert_tokens_to_ids("red")
    labels[0][inputs["input_ids"][0] == answer] = answer
    return inputs, labels, torch.tensor([False, True])


def test_a_mixed_batch_returns_both_losses_from_one_forward():
    model, processor = tiny_hydra(), tiny_processor()
    inputs, labels, flags = mixed_batch(processor)
    out = model(**inputs, labels=labels, image_generation_mask=flags)
    assert out.loss_ntp is not None and out.loss_flow is not None
    assert torch.allclose(out.loss, out.loss_ntp + out.loss_flow)
    weighted = tiny_hydra(ntp_weight=0.5, flow_weight=2.0)
    out = weighted(**inputs, labels=labels, image_generation_mask=flags, timesteps=torch.tensor([0.5]), noise=torch.zeros(1, 8, 4, 4))
    assert torch.allclose(out.loss, 0.5 * out.loss_ntp + 2.0 * out.loss_flow)


def test_gradients_reach_flow_head_projector_time_embedding_and_llm():
    model, processor = tiny_hydra().train(), tiny_processor()
    inputs, labels, flags = mixed_batch(processor)
    model(**inputs, labels=labels, image_generation_mask=flags).loss.backward()
    for name in ("flow_head.output_proj.weight", "flow_head.blocks.0.modulation.weight", "model.projector.linear_1.weight",
                 "model.time_embedding.linear_1.weight", "model.language_model.layers.0.self_attn.q_proj.weight",
                 "lm_head.weight", "model.vision_model.sem_vit.layers.0.mlp.fc1.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_repa_aligns_a_middle_llm_layer_to_the_clean_images_sem_vit_features():
    model, processor = tiny_hydra(repa_weight=0.5, repa_layer=1).train(), tiny_processor()
    inputs, labels, flags = mixed_batch(processor)
    flow = {"image_generation_mask": flags, "timesteps": torch.tensor([0.5]), "noise": torch.randn(1, 8, 4, 4)}
    out = model(**inputs, labels=labels, **flow)
    with torch.no_grad():
        clean = model.model.image_latents(inputs["pixel_values"][1:])
        target = model.vision_model.semantic_features_from_latents(clean)
        hidden = model.model(**inputs, **flow, output_hidden_states=True).hidden_states[1]
        aligned = model.repa_head(hidden[1][inputs["input_ids"][1] == processor.image_token_id])
    expected = 1 - torch.nn.functional.cosine_similarity(aligned, target[0], dim=-1).mean()
    assert torch.allclose(out.loss_repa, expected, atol=1e-5)
    assert torch.allclose(out.loss, out.loss_ntp + out.loss_flow + 0.5 * out.loss_repa)
    out.loss_repa.backward()
    # The alignment gradient reaches the head and the LLM layers up to the aligned one, not those after it.
    grads = {name: model.get_parameter(name).grad for name in (
        "repa_head.0.weight", "model.language_model.layers.0.mlp.up_proj.weight", "model.language_model.layers.1.mlp.up_proj.weight")}
    assert grads["repa_head.0.weight"].abs().sum() > 0
    assert grads["model.language_model.layers.0.mlp.up_proj.weight"].abs().sum() > 0
    assert grads["model.language_model.layers.1.mlp.up_proj.weight"] is None
    assert "repa_head.0.weight" not in tiny_hydra().state_dict()  # off by default: no extra weights
    with pytest.raises(Exception, match="repa_layer"):  # huggingface_hub wraps the ValueError
        tiny_config(repa_weight=0.5, repa_layer=7)


def contrast_batch(processor: HydraProcessor, prompts: list[str]):
    """One image per prompt, all of the same blue square, every one generated."""
    texts = processor.build_generation_prompt(prompts, target_image=True)
    inputs = processor(text=texts, images=[Image.new("RGB", (32, 32), (0, 0, 255))] * len(prompts))
    return inputs, torch.ones(len(prompts), dtype=torch.bool)


def test_a_prompt_contrast_pair_shares_noise_and_time_and_feeds_only_the_contrast_term():
    model, processor = tiny_hydra(prompt_contrast_weight=0.5, prompt_contrast_min_time=0.7), tiny_processor()
    # The same prompt twice: with shared noise and time the pair's two velocities, so its losses, are equal.
    inputs, flags = contrast_batch(processor, ["a blue square", "a blue square"])
    with torch.no_grad():
        same = model(**inputs, image_generation_mask=flags, prompt_contrast_pairs=torch.tensor([[0, 1]]))
    assert torch.equal(same.flow_prediction[0], same.flow_prediction[1]) and same.loss_flow is None
    assert torch.allclose(same.loss_prompt_contrast, torch.log(torch.tensor(2.0)))
    # A plain generated image keeps the flow loss to itself; the pair gives softplus(scale * log-loss gap).
    inputs, flags = contrast_batch(processor, ["a red circle", "a blue square", "a blue circle"])
    noise = torch.randn(3, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(**inputs, image_generation_mask=flags, prompt_contrast_pairs=torch.tensor([[1, 2]]),
                    timesteps=torch.tensor([0.3, 0.8, 0.1]), noise=noise)
        clean = model.vision_model.normalize_latents(model.model.image_latents(inputs["pixel_values"][:1]))
    target = (noise[:2] - clean).flatten(2).transpose(1, 2)  # the second image of the pair takes the first's noise
    errors = (out.flow_prediction - target[[0, 1, 1]]).square().mean(dim=(1, 2))
    assert torch.allclose(out.loss_flow, errors[0], atol=1e-6)
    expected = torch.nn.functional.softplus(20.0 * (errors[1].log() - errors[2].log()))
    assert torch.allclose(out.loss_prompt_contrast, expected, atol=1e-4)
    assert torch.allclose(out.loss, out.loss_flow + 0.5 * out.loss_prompt_contrast)


def test_prompt_contrast_training_teaches_the_velocity_which_prompt_is_true():
    model, processor = tiny_hydra(flow_weight=0.0, prompt_contrast_weight=1.0).train(), tiny_processor()
    inputs, flags = contrast_batch(processor, ["a blue square", "a red circle"] * 2)
    pairs = torch.tensor([[0, 1], [2, 3]])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = model(**inputs, image_generation_mask=flags, prompt_contrast_pairs=pairs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3


def test_malformed_prompt_contrast_pairs_are_clear_errors():
    model, processor = tiny_hydra(), tiny_processor()
    inputs, flags = contrast_batch(processor, ["a blue square", "a red circle"])
    for pairs in (torch.tensor([[0, 2]]), torch.tensor([[0, 0]]), torch.tensor([0, 1]), torch.tensor([[0.0, 1.0]])):
        with pytest.raises(ValueError, match="prompt_contrast_pairs"):
            model(**inputs, image_generation_mask=flags, prompt_contrast_pairs=pairs)
    with pytest.raises(Exception, match="prompt_contrast_min_time"):  # huggingface_hub wraps the ValueError
        tiny_config(prompt_contrast_min_time=1.0)


def test_flow_head_latent_input_is_a_skip_that_training_and_sampling_feed_alike():
    model, processor = tiny_hydra(flow_head_latent_input=True), tiny_processor()
    inputs = processor(text=[processor.build_generation_prompt("a red square", target_image=True)],
                       images=[Image.new("RGB", (32, 32), (255, 0, 0))])
    noise, t = torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0.6])
    generate = dict(image_generation_mask=torch.tensor([True]), timesteps=t, noise=noise)
    with torch.no_grad():
        zero_skip = model(**inputs, **generate).flow_prediction
        torch.nn.init.normal_(model.flow_head.latent_proj.weight)
        trained = model(**inputs, **generate).flow_prediction
        clean = model.vision_model.normalize_latents(model.model.image_latents(inputs["pixel_values"]))
        sampled = model.flow_velocity((1 - t) * clean + t * noise, t, **generation_ids(processor, ["a red square"]))
    assert not torch.allclose(zero_skip, trained, atol=1e-3)  # the head reads z_t once its projection is non-zero
    assert torch.allclose(sampled.flatten(2).transpose(1, 2), trained, atol=1e-5)  # sampling feeds it the same z_t
    width = model.config.text_config.hidden_size
    with pytest.raises(ValueError, match="noisy latents"):
        model.flow_head(torch.zeros(1, N, width), torch.zeros(1, width))
    assert "flow_head.latent_proj.weight" not in tiny_hydra().state_dict()  # off by default


def test_switching_the_latent_skip_on_for_a_trained_model_changes_no_velocity(tmp_path):
    tiny_hydra().save_pretrained(tmp_path)
    without = HydraForConditionalGeneration.from_pretrained(tmp_path)
    with_skip = HydraForConditionalGeneration.from_pretrained(tmp_path, flow_head_latent_input=True)
    assert with_skip.config.flow_head_latent_input and not with_skip.flow_head.latent_proj.weight.any()
    prompts = generation_ids(tiny_processor(), ["a red square"])
    latents = torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(with_skip.flow_velocity(latents, 0.5, **prompts), without.flow_velocity(latents, 0.5, **prompts))


def test_eager_and_sdpa_agree(tmp_path):
    tiny_hydra().save_pretrained(tmp_path)
    eager = HydraForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager").eval()
    sdpa = HydraForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert eager.model.language_model.config._attn_implementation == "eager"
    assert eager.vision_model.config._attn_implementation == "eager"
    assert sdpa.model.language_model.config._attn_implementation == "sdpa"
    processor = tiny_processor()
    inputs, labels, flags = mixed_batch(processor)
    noise, t = torch.randn(1, 8, 4, 4), torch.tensor([0.4])
    prompts = generation_ids(processor, ["a red square", "a blue circle and a green square"])
    latents = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        a = eager(**inputs, labels=labels, image_generation_mask=flags, timesteps=t, noise=noise)
        b = sdpa(**inputs, labels=labels, image_generation_mask=flags, timesteps=t, noise=noise)
        va = eager.flow_velocity(latents, 0.3, prompt_cache=eager.prepare_prompt_cache(**prompts))
        vb = sdpa.flow_velocity(latents, 0.3, prompt_cache=sdpa.prepare_prompt_cache(**prompts))
    valid = inputs["attention_mask"].bool()
    assert torch.allclose(a.logits[valid], b.logits[valid], atol=1e-5)
    assert torch.allclose(a.flow_prediction, b.flow_prediction, atol=1e-5)
    assert torch.allclose(va, vb, atol=1e-5)


def test_llama_backbone_through_config_alone():
    model, processor = tiny_hydra(text_model_type="llama"), tiny_processor()
    assert model.model.language_model.config.model_type == "llama"
    inputs, labels, flags = mixed_batch(processor)
    out = model(**inputs, labels=labels, image_generation_mask=flags)
    assert torch.isfinite(out.loss)
    single = understanding_inputs(processor, ["what color is the shape ?"], [(255, 0, 0)])
    assert model.generate(**single, max_new_tokens=3, do_sample=False).shape[1] == single["input_ids"].shape[1] + 3
    prompts = generation_ids(processor, ["a red square"])
    latents = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        cached = model.flow_velocity(latents, 0.5, prompt_cache=model.prepare_prompt_cache(**prompts))
        uncached = model.flow_velocity(latents, 0.5, **prompts)
    assert torch.allclose(cached, uncached, atol=1e-5)


def test_bottleneck_input_switch_skips_sem_vit():
    model, processor = tiny_hydra(llm_vision_input="bottleneck"), tiny_processor()
    inputs = understanding_inputs(processor, ["what color is the shape ?"], [(255, 0, 0)])
    with torch.no_grad():
        base = model(**inputs).logits
        for parameter in model.vision_model.sem_vit.parameters():
            parameter.add_(1.0)
        assert torch.equal(model(**inputs).logits, base)


def test_image_positions_tell_apart_the_visual_tokens_of_a_uniform_latent():
    model = tiny_hydra()
    channels = model.config.vision_config.latent_channels
    uniform = torch.randn(1, channels, 1, 1).expand(1, channels, 4, 4)  # every patch holds the same latent
    with torch.no_grad():
        plain = model.model.visual_tokens(uniform)[0]
        model.config.image_position_scale = 2.0
        placed = model.model.visual_tokens(uniform)[0]
    # Without positions nothing before the LLM knows where a token lies: all 16 tokens are the same vector.
    torch.testing.assert_close(plain, plain[:1].expand_as(plain), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(placed - plain, 2.0 * grid_positions(plain.shape[-1], (4, 4)).float())
    assert torch.cdist(placed, placed).fill_diagonal_(float("inf")).min() > 0.5
    with pytest.raises(Exception, match="image_position_scale"):  # huggingface_hub wraps the ValueError
        tiny_config(image_position_scale=-1.0)


# ---------------------------------------------------------------------------------------------------------- errors
def test_placeholder_count_mismatch_is_a_clear_error():
    model, processor = tiny_hydra(), tiny_processor()
    inputs = understanding_inputs(processor, ["what color is the shape ?"], [(255, 0, 0)])
    with pytest.raises(ValueError, match=r"has 16 image tokens but 2 image\(s\) of 16 tokens each need 32"):
        model(input_ids=inputs["input_ids"], pixel_values=random_pixels(2, 32))
    with pytest.raises(ValueError, match="neither pixel_values nor image_latents"):
        model(input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match=r"image_generation_mask must have shape \[1\]"):
        model(**inputs, image_generation_mask=torch.tensor([True, False]))


def test_parameter_counts_of_presets_on_meta_device():
    with torch.device("meta"):
        model = HydraForConditionalGeneration(HydraConfig.from_preset("hydra-1.5b"))
    llm = sum(p.numel() for p in model.model.language_model.parameters())
    assert 1.3e9 < llm < 1.6e9  # Qwen2.5-1.5B without its (tied) LM head
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight


def test_tiny_config_is_consistent_with_the_processor():
    config, processor = tiny_config(), tiny_processor()
    assert (config.image_token_id, config.boi_token_id, config.eoi_token_id) == (
        processor.image_token_id, processor.boi_token_id, processor.eoi_token_id)
    assert processor.image_processor.num_image_tokens(32, 32) == config.num_image_tokens


# -------------------------------------------------------------------------------------------------- learning check
def shapes_batch(processor):
    """Eight flat shapes; each appears once as a colour question (understanding) and once as a caption to draw."""
    from .utils import COLOURS, SHAPES, flat_shape_image

    rgb = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 200, 30)}
    combos = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    images = [flat_shape_image(rgb[colour], shape) for colour, shape in combos]
    questions = processor.apply_chat_template(
        [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is the shape ?"}]},
          {"role": "assistant", "content": colour}] for colour, _ in combos]
    )
    captions = [processor.build_generation_prompt(f"a {colour} {shape}", target_image=True) for colour, shape in combos]
    uint8 = [image.add(1).mul(127.5).round().byte().permute(1, 2, 0).numpy() for image in images]
    inputs = processor(text=questions + captions, images=uint8 * 2)
    labels = torch.full_like(inputs["input_ids"], -100)
    for row, (colour, _) in enumerate(combos):
        answer = processor.tokenizer.convert_tokens_to_ids(colour)
        labels[row][inputs["input_ids"][row] == answer] = answer
    return inputs, labels, torch.tensor([False] * 8 + [True] * 8)


def test_a_few_hundred_steps_clearly_lower_both_losses():
    model, processor = tiny_hydra().train(), tiny_processor()
    inputs, labels, flags = shapes_batch(processor)
    vision = model.vision_model
    with torch.no_grad():  # per-channel latent statistics, as a trained tokenizer's config carries them
        latents = model.model.image_latents(inputs["pixel_values"][:8])
    vision.config.latents_mean = latents.mean(dim=(0, 2, 3)).tolist()
    vision.config.latents_std = latents.std(dim=(0, 2, 3)).tolist()
    # As in the unified stages, the generative half of the tokenizer stays frozen; Sem-ViT, projector, time
    # embedding, flow head and LLM train.
    for module in (vision.embeddings, vision.gen_vit, vision.bottleneck.proj, vision.decoder):
        module.requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    fixed = dict(timesteps=torch.rand(8, generator=generator), noise=torch.randn(8, 8, 4, 4, generator=generator))

    def evaluate():
        with torch.no_grad():
            out = model(**inputs, labels=labels, image_generation_mask=flags, **fixed)
        return out.loss_ntp.item(), out.loss_flow.item()

    ntp_start, flow_start = evaluate()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(300):
        loss = model(**inputs, labels=labels, image_generation_mask=flags).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ntp_end, flow_end = evaluate()
    print(f"tiny HYDRA losses: ntp {ntp_start:.3f} -> {ntp_end:.3f}, flow {flow_start:.3f} -> {flow_end:.3f}")
    assert ntp_end < 0.5 * ntp_start
    assert flow_end < 0.75 * flow_start
