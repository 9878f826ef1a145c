import math

import pytest
import torch
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from transformers import AutoConfig, AutoModel

import hydra_hf  # noqa: F401  (registers the Auto classes)
from hydra_hf import HydraTokConfig, HydraTokModel
from hydra_hf.models.hydra_tok.modeling_hydra_tok import grid_to_tokens
from hydra_hf.training.losses import cosine_distillation_loss

from .utils import random_pixels


def tiny_model(**overrides) -> HydraTokModel:
    torch.manual_seed(0)
    return HydraTokModel(HydraTokConfig.from_preset("tiny", **overrides)).eval()


# ----------------------------------------------------------------------------------------------------- config
def test_presets_and_config_round_trip(tmp_path):
    big = HydraTokConfig.from_preset("hydra-tok-300m")
    assert (big.num_gen_layers, big.num_sem_layers, big.hidden_size, big.patch_size, big.image_size) == (12, 12, 1024, 14, 448)
    assert big.latent_channels == 64 and big.use_cls_token and big.qkv_bias and big.layerscale_init is not None
    assert (big.kl_weight, big.cosine_weight, big.flow_weight) == (1e-4, 1.0, 1.0)
    assert (big.perceptual_weight, big.adversarial_weight, big.distillation_weight) == (0.1, 0.075, 1.0)

    config = HydraTokConfig.from_preset("tiny", latents_mean=[0.1] * 8, latents_std=[2.0] * 8)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, HydraTokConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()
    with pytest.raises(ValueError, match="Unknown HYDRA-TOK preset"):
        HydraTokConfig.from_preset("huge")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_size=33), "divisible by num_attention_heads"),
        (dict(image_size=30), "multiple of patch_size"),
        (dict(distillation_layers=[0, 5]), r"distillation_layers must lie in 1..4"),
        (dict(latents_mean=[0.0] * 3, latents_std=[1.0] * 3), "latents_mean needs 8 values"),
        (dict(latents_mean=[0.0] * 8), "must be given together"),
        (dict(decoder_prediction_type="epsilon"), "decoder_prediction_type"),
        (dict(decoder_noise_augmentation=-0.1), "decoder_noise_augmentation must be >= 0"),
        (dict(latent_channels=0), r"sizes must be at least 1: \{'latent_channels': 0\}"),
        (dict(num_attention_heads=0, decoder_num_layers=0), "'num_attention_heads': 0, 'decoder_num_layers': 0"),
    ],
)
def test_inconsistent_configs_are_rejected(overrides, message):
    with pytest.raises(Exception, match=message):
        HydraTokConfig.from_preset("tiny", **overrides)


# ---------------------------------------------------------------------------------------------- forward / shapes
def test_forward_exposes_training_tensors_with_documented_shapes():
    model = tiny_model()
    out = model(random_pixels(2, 32), generator=torch.Generator().manual_seed(0), output_distillation_states=True)
    assert out.latent_mean.shape == out.latent_logvar.shape == out.latents.shape == (2, 8, 4, 4)
    assert out.hidden_mid.shape == (2, 17, 32)  # CLS + 16 patches
    assert out.hidden_bottleneck.shape == out.semantic_features.shape == (2, 16, 32)  # CLS dropped at the GSB
    assert len(out.distillation_hidden_states) == 4
    assert all(state.shape == (2, 16, 32) for state in out.distillation_hidden_states)
    assert torch.equal(out.distillation_hidden_states[-1], out.semantic_features)
    assert out.kl_loss.ndim == 0 and out.cosine_loss.ndim == 0


def test_regularisers_match_the_paper_equations():
    model = tiny_model()
    out = model(random_pixels(2, 32))
    mean = out.latent_mean.flatten(2).transpose(1, 2)
    logvar = out.latent_logvar.flatten(2).transpose(1, 2)
    kl = (-0.5 * (1 + logvar - mean**2 - logvar.exp()).sum(-1)).mean()
    assert torch.allclose(out.kl_loss, kl)
    patch_mid = out.hidden_mid[:, 1:]
    cosine = 1 - (patch_mid * out.hidden_bottleneck).sum(-1) / (patch_mid.norm(dim=-1) * out.hidden_bottleneck.norm(dim=-1))
    assert torch.allclose(out.cosine_loss, cosine.mean(), atol=1e-6)
    assert torch.allclose(out.hidden_bottleneck, model.bottleneck.unproj(mean))  # H_bn comes from mu, not z


def test_latent_sample_is_reparameterised_and_seeded():
    model = tiny_model()
    pixels = random_pixels(1, 32)
    a = model(pixels, generator=torch.Generator().manual_seed(1)).latents
    b = model(pixels, generator=torch.Generator().manual_seed(1)).latents
    c = model(pixels, generator=torch.Generator().manual_seed(2)).latents
    assert torch.equal(a, b) and not torch.equal(a, c)
    out = model(pixels)
    noise = (a - out.latent_mean) / torch.exp(0.5 * out.latent_logvar)
    assert abs(noise.std().item() - 1) < 0.35


def test_any_multiple_of_the_patch_size_works_and_native_size_skips_interpolation():
    model = tiny_model()
    out = model(random_pixels(1, (48, 24)))
    assert out.latents.shape == (1, 8, 6, 3) and out.semantic_features.shape == (1, 18, 32)
    # At the native size, the learned table is used as is.
    table = model.embeddings.position_embedding[:, 1:]
    assert torch.equal(model.embeddings._patch_position_embedding((4, 4)), table)
    resized = model.embeddings._patch_position_embedding((8, 8))
    assert resized.shape == (1, 64, 32)


def test_one_pass_gives_latent_and_semantics_consistent_with_the_separate_paths():
    model = tiny_model()
    pixels = random_pixels(2, 32)
    out = model(pixels)
    posterior = model.encode(pixels).latent_dist
    assert torch.allclose(posterior.mean, out.latent_mean) and torch.allclose(posterior.logvar, out.latent_logvar)
    # The generation path fed with the clean mean reproduces the understanding features.
    assert torch.allclose(model.semantic_features_from_latents(out.latent_mean), out.semantic_features, atol=1e-6)


def test_bypassing_the_bottleneck_runs_the_plain_vit():
    model = tiny_model()
    pixels = random_pixels(1, 32)
    out = model(pixels, bypass_bottleneck=True, output_distillation_states=True)
    hidden = model.embeddings(model._normalize_for_encoder(pixels))
    for layer in list(model.gen_vit.layers) + list(model.sem_vit.layers):
        hidden = layer(hidden)
    assert torch.allclose(out.semantic_features, hidden, atol=1e-6)
    assert out.semantic_features.shape == (1, 17, 32)  # CLS kept, as in the source ViT
    assert out.latents is None and len(out.distillation_hidden_states) == 4


# ------------------------------------------------------------------------------------------------ VAE contract
def test_vae_contract_types_and_shapes():
    model = tiny_model()
    encoded = model.encode(random_pixels(2, 32))
    assert isinstance(encoded, AutoencoderKLOutput)
    assert isinstance(encoded.latent_dist, DiagonalGaussianDistribution)
    latents = encoded.latent_dist.sample(generator=torch.Generator().manual_seed(0))
    assert latents.shape == (2, 8, 4, 4)
    decoded = model.decode(latents, generator=torch.Generator().manual_seed(0))
    assert isinstance(decoded, DecoderOutput) and decoded.sample.shape == (2, 3, 32, 32)
    assert decoded.sample.min() >= -1 and decoded.sample.max() <= 1
    (posterior,) = model.encode(random_pixels(1, 32), return_dict=False)
    (sample,) = model.decode(posterior.mode(), return_dict=False)
    assert sample.shape == (1, 3, 32, 32)


def test_seeded_decode_is_deterministic_and_seed_and_steps_matter():
    model = tiny_model()
    # Make the decoder non-trivial (it starts as adaLN-Zero, i.e. ignoring its inputs).
    with torch.no_grad():
        for parameter in model.decoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    latents = model.encode(random_pixels(1, 32)).latent_dist.mode()
    first = model.decode(latents, generator=torch.Generator().manual_seed(3)).sample
    again = model.decode(latents, generator=torch.Generator().manual_seed(3)).sample
    other = model.decode(latents, generator=torch.Generator().manual_seed(4)).sample
    fewer_steps = model.decode(latents, generator=torch.Generator().manual_seed(3), num_inference_steps=1).sample
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first, fewer_steps)


def test_diffusers_style_scaling_snippet(tmp_path):
    """The README's diffusers-style snippet, verbatim in spirit: scale after sampling, unscale before decoding."""
    vae = tiny_model(scaling_factor=0.5)
    x = random_pixels(1, 32)
    z = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(0)) * vae.config.scaling_factor
    image = vae.decode(z / vae.config.scaling_factor, generator=torch.Generator().manual_seed(0)).sample
    unscaled = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(0))
    assert torch.allclose(z, 0.5 * unscaled)
    assert torch.equal(image, vae.decode(unscaled, generator=torch.Generator().manual_seed(0)).sample)


def test_latent_normalisation_round_trips_and_uses_the_configured_statistics():
    mean, std = [float(i) for i in range(8)], [1.0 + i for i in range(8)]
    model = tiny_model(latents_mean=mean, latents_std=std, scaling_factor=2.0)
    latents = torch.randn(2, 8, 3, 3)
    normalized = model.normalize_latents(latents)
    expected = (latents - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1) * 2.0
    assert torch.allclose(normalized, expected)
    assert torch.allclose(model.denormalize_latents(normalized), latents, atol=1e-5)
    shifted = tiny_model(shift_factor=0.25, scaling_factor=4.0)
    assert torch.allclose(shifted.normalize_latents(latents), (latents - 0.25) * 4.0)


# ------------------------------------------------------------------------------------------ backends / training
def test_eager_and_sdpa_agree(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    eager = HydraTokModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    sdpa = HydraTokModel.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert eager.gen_vit.layers[0].attn.config._attn_implementation == "eager"
    assert sdpa.decoder.layers[0].attn.config._attn_implementation == "sdpa"
    with torch.no_grad():
        for model in (eager, sdpa):  # a non-trivial decoder so that its attention matters
            for parameter in model.decoder.parameters():
                parameter.copy_(torch.sin(torch.arange(parameter.numel(), dtype=torch.float32)).view_as(parameter) * 0.05)
    pixels = random_pixels(2, 32)
    a, b = eager(pixels), sdpa(pixels)
    assert torch.allclose(a.semantic_features, b.semantic_features, atol=1e-5)
    assert torch.allclose(a.latent_mean, b.latent_mean, atol=1e-5)
    decoded_a = eager.decode(a.latent_mean, generator=torch.Generator().manual_seed(0)).sample
    decoded_b = sdpa.decode(b.latent_mean, generator=torch.Generator().manual_seed(0)).sample
    assert torch.allclose(decoded_a, decoded_b, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            assert model.gen_vit.layers[0].gradient_checkpointing
        model(random_pixels(2, 32), return_loss=True, generator=torch.Generator().manual_seed(0)).loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_tokenizer_loss_combines_the_paper_terms_and_reaches_every_part():
    model = tiny_model().train()
    teacher = tiny_model()
    pixels = random_pixels(2, 32)
    with torch.no_grad():
        teacher_states = teacher(pixels, output_distillation_states=True).distillation_hidden_states
    out = model(pixels, return_loss=True, output_distillation_states=True, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out.loss, out.loss_flow + 1e-4 * out.kl_loss + 1.0 * out.cosine_loss)
    assert out.clean_estimate.shape == pixels.shape
    distillation = cosine_distillation_loss(out.distillation_hidden_states, teacher_states)
    (out.loss + distillation).backward()
    for name in ("embeddings.patch_embedding.weight", "gen_vit.layers.0.attn.qkv.weight", "bottleneck.proj.weight",
                 "bottleneck.unproj.weight", "sem_vit.layers.1.mlp.fc2.weight", "decoder.final_layer.linear.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    again = model(pixels, return_loss=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.loss_flow, out.loss_flow)  # the decoder's noise and time follow the generator


def decoder_training_input(model: HydraTokModel, pixels: torch.Tensor, seed: int = 0):
    """A training forward's output and the latent tokens its decoder was conditioned on."""
    read = []
    hook = model.decoder.register_forward_pre_hook(lambda module, args: read.append(args[2].detach()))
    out = model(pixels, return_loss=True, generator=torch.Generator().manual_seed(seed))
    hook.remove()
    return out, read[0]


def test_decoder_noise_augmentation_perturbs_only_what_the_decoder_trains_on():
    def run(model, seed=0):
        out, read = decoder_training_input(model, pixels, seed)
        return out, read - grid_to_tokens(out.latents)

    plain, augmented = tiny_model().train(), tiny_model(decoder_noise_augmentation=0.5).train()
    pixels = random_pixels(4, 32)
    (out_plain, plain_extra), (out_augmented, extra) = run(plain), run(augmented)
    assert torch.equal(out_plain.latents, out_augmented.latents)  # the encoder's outputs are untouched
    assert torch.equal(out_plain.semantic_features, out_augmented.semantic_features)
    assert torch.count_nonzero(plain_extra) == 0  # off by default
    channel_std = out_augmented.latents.std(dim=(0, 2, 3))
    per_image = (extra / channel_std).flatten(1).std(dim=1)  # each image's noise, in channel stds
    assert (per_image > 0).all() and (per_image < 0.5 * 1.3).all() and per_image.unique().numel() == 4
    assert torch.equal(run(augmented)[1], extra) and not torch.equal(run(augmented, seed=1)[1], extra)  # seeded
    latents = plain.encode(pixels).latent_dist.mean
    with torch.no_grad():  # inference is unaffected: decoding is the same function of the latents
        decoded = [model.eval().decode(latents, generator=torch.Generator().manual_seed(1)).sample for model in (plain, augmented)]
    assert torch.equal(*decoded)


def test_decoder_can_train_on_the_posterior_mean_it_is_given_at_inference():
    pixels = random_pixels(2, 32)
    sampled, sampled_input = decoder_training_input(tiny_model().train(), pixels)
    mean, mean_input = decoder_training_input(tiny_model(decoder_training_latents="mean").train(), pixels)
    assert torch.equal(sampled_input, grid_to_tokens(sampled.latents))
    assert torch.equal(mean_input, grid_to_tokens(mean.latent_mean))
    assert not torch.allclose(mean.latents, mean.latent_mean)  # the posterior sample still differs from its mean
    with pytest.raises(Exception, match="decoder_training_latents must be 'sample' or 'mean'"):
        tiny_model(decoder_training_latents="mode")


def test_decoder_refinement_can_skip_sem_vit_without_changing_the_loss():
    model, pixels = tiny_model().train(), random_pixels(2, 32)
    calls = []
    model.sem_vit.register_forward_hook(lambda module, args, output: calls.append(1))
    full = model(pixels, return_loss=True, generator=torch.Generator().manual_seed(0))
    skipped = model(pixels, return_loss=True, generator=torch.Generator().manual_seed(0), output_semantic_features=False)
    assert len(calls) == 1 and skipped.semantic_features is None
    assert torch.equal(skipped.loss, full.loss) and torch.equal(skipped.latents, full.latents)
    with pytest.raises(ValueError, match="output_distillation_states needs Sem-ViT"):
        model(pixels, output_distillation_states=True, output_semantic_features=False)


def test_bfloat16_path_runs_at_tiny_size():
    model = tiny_model().to(torch.bfloat16)
    out = model(random_pixels(1, 32))
    assert out.semantic_features.dtype == torch.bfloat16 and torch.isfinite(out.semantic_features.float()).all()
    image = model.decode(out.latent_mean, num_inference_steps=2).sample
    assert image.dtype == torch.bfloat16 and image.shape == (1, 3, 32, 32)


# --------------------------------------------------------------------------------------------- files and auto
def test_save_load_is_bit_exact_safetensors_and_resolves_through_auto(tmp_path):
    model = tiny_model(scaling_factor=0.3)
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["config.json", "model.safetensors"]
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is HydraTokModel and loaded.config.scaling_factor == 0.3
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[key], reloaded[key]) for key in original)


# ------------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "pixels, message",
    [
        (torch.zeros(1, 4, 32, 32), r"must have 3 channels: \[batch, 3, H, W\]"),
        (torch.zeros(1, 3, 30, 32), r"multiples of the patch size 8 .*got \(1, 3, 30, 32\)"),
        (torch.zeros(3, 32, 32), r"4-D tensor \[batch, 3, H, W\].*got \(3, 32, 32\)"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "floating-point tensor in \\[-1, 1\\]"),
    ],
)
def test_bad_pixels_raise_value_errors_naming_the_expected_shape(pixels, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model(pixels)
    with pytest.raises(ValueError, match=message):
        model.encode(pixels)


def test_bad_latents_raise_value_errors_naming_the_expected_shape():
    model = tiny_model()
    for bad in (torch.zeros(1, 4, 4, 4), torch.zeros(1, 16, 8)):
        with pytest.raises(ValueError, match=r"latents must have shape \[batch, 8, h, w\]"):
            model.decode(bad)
        with pytest.raises(ValueError, match=r"latents must have shape \[batch, 8, h, w\]"):
            model.semantic_features_from_latents(bad)


# ---------------------------------------------------------------------------------------------- learning check
def coloured_shapes(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """White canvases with two flat-coloured squares or discs each: enough structure to learn on a CPU."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.ones(count, 3, size, size)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for image in images:
        for _ in range(2):
            colour = torch.rand(3, generator=generator) * 2 - 1
            cx, cy = torch.randint(6, size - 6, (2,), generator=generator)
            radius = torch.randint(3, 7, (1,), generator=generator)
            if torch.rand(1, generator=generator) < 0.5:
                mask = (cols - cx) ** 2 + (rows - cy) ** 2 <= radius**2
            else:
                mask = ((cols - cx).abs() <= radius) & ((rows - cy).abs() <= radius)
            image[:, mask] = colour[:, None]
    return images


def reconstruction_psnr(model: HydraTokModel, images: torch.Tensor) -> float:
    with torch.no_grad():
        latents = model.encode(images).latent_dist.mode()
        decoded = model.decode(latents, generator=torch.Generator().manual_seed(0)).sample
    return 10 * math.log10(4.0 / (decoded - images).pow(2).mean().item())  # data range 2 for [-1, 1]


def test_a_few_hundred_steps_clearly_raise_reconstruction_psnr():
    model = tiny_model()
    images = coloured_shapes(8)
    start = reconstruction_psnr(model, images)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(400):
        loss = model(images, return_loss=True, generator=generator).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    end = reconstruction_psnr(model, images)
    print(f"tiny HYDRA-TOK reconstruction PSNR: {start:.2f} dB -> {end:.2f} dB")
    assert end > start + 5.0
