import json

import numpy as np

import pytest
import torch

from hydra_hf.data.shapes import Scene, ShapeObject, render_scene

from .utils import load_script, save_tiny_hydra, tiny_hydra


@pytest.fixture(scope="module")
def toy():
    return load_script("scripts/latent_flow_toy.py")


def tiny_toy(toy, conditioning: str):
    torch.manual_seed(0)
    return toy.ToyFlowTransformer(channels=4, grid=2, width=16, layers=1, heads=2, conditioning=conditioning)


@pytest.mark.parametrize("conditioning", ["adaln", "token"])
def test_the_label_reaches_the_velocity_only_by_its_arms_path(toy, conditioning):
    # The arms differ only in where the label enters; the other path must not learn from it.
    model = tiny_toy(toy, conditioning)
    torch.nn.init.normal_(model.proj_out.weight)  # zero-initialised: no gradient would reach anything before it
    latents, times = torch.randn(3, 4, 2, 2), torch.full((3,), 0.5)
    labels = torch.tensor([0, 5, 17])
    model(latents, times, labels).square().sum().backward()
    adaln_labels = model.blocks[0].norm1.emb.class_embedder.embedding_table.weight.grad
    label_token = model.label_token.weight.grad
    if conditioning == "adaln":
        assert adaln_labels[labels].abs().sum() > 0 and (label_token is None or not label_token.any())
    else:
        assert label_token[labels].abs().sum() > 0
        assert not adaln_labels[labels].any() and adaln_labels[model.null_label].abs().sum() > 0
    with torch.no_grad():
        assert not torch.allclose(model(latents, times, labels), model(latents, times, labels.flip(0)))


def test_unknown_conditioning_is_refused(toy):
    with pytest.raises(ValueError, match="adaln"):
        tiny_toy(toy, "cross")


def test_semvit_arm_reads_the_latents_through_a_trainable_copy_of_the_unified_models_path(toy):
    hydra = tiny_hydra()
    path = toy.HydraInputPath(hydra)
    grid = hydra.config.vision_config.image_size // hydra.config.vision_config.patch_size
    channels = hydra.config.vision_config.latent_channels
    with pytest.raises(ValueError, match="LLM width"):
        toy.ToyFlowTransformer(channels, grid, path.width + 2, 1, 2, "semvit", path)
    with pytest.raises(ValueError, match="input_path"):
        toy.ToyFlowTransformer(channels, grid, path.width, 1, 2, "token", path)
    model = toy.ToyFlowTransformer(channels, grid, path.width, 1, 2, "semvit", path)
    torch.nn.init.normal_(model.proj_out.weight)
    latents = torch.randn(2, channels, grid, grid)
    model(latents, torch.full((2,), 0.5), torch.tensor([0, 1])).square().sum().backward()
    trained = {name for name, p in path.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    for part in ("bottleneck.unproj", "sem_vit.layers", "projector"):
        assert any(part in name for name in trained), part
    assert not any(name.startswith("model.language_model") for name, _ in path.named_parameters())
    hydra_weight = next(p for name, p in hydra.model.projector.named_parameters())
    assert hydra_weight.grad is None  # the copy trains, not the checkpoint it came from


def test_sampling_follows_the_flow_to_the_point_an_exact_velocity_leads_to(toy):
    # A velocity that points straight from x_t to a fixed clean sample, (x_t - clean) / t, must land on it.
    clean = torch.randn(2, 4, 2, 2)

    class Oracle(torch.nn.Module):
        null_label = 18

        def forward(self, latents, times, labels):
            return (latents - clean) / times.view(-1, 1, 1, 1)

    noise = torch.randn(2, 4, 2, 2)
    for guidance in (1.0, 3.0):  # guidance scales v_cond - v_uncond, which is zero here
        assert torch.allclose(toy.sample(Oracle(), noise, torch.tensor([0, 1]), guidance, steps=5), clean, atol=1e-5)


def test_word_losses_price_each_wrong_word_against_the_right_label(toy):
    # An oracle that knows each label's clean latent is exact for the right label and wrong for any other.
    clean_of_label = torch.randn(len(toy.LABELS) + 1, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(len(toy.LABELS))

    def oracle(noisy, times, asked):
        return (noisy - clean_of_label[asked]) / times.view(-1, 1, 1, 1)

    table = toy.word_losses(oracle, clean_of_label[labels], labels, seed=0, batch_size=7)
    assert set(table) == {f"{t:g}" for t in toy.WORD_LOSS_TIMES}
    for row in table.values():
        assert row["right"] == pytest.approx(0.0, abs=1e-10)
        assert min(row["wrong_shape"], row["wrong_colour"], row["null"]) > 0.1
        assert row["wrong_shape"] != pytest.approx(row["wrong_colour"])


def test_the_unified_models_velocity_takes_the_labels_words(toy, tmp_path):
    from hydra_hf import HydraPipeline

    pipe = HydraPipeline.from_pretrained(save_tiny_hydra(tmp_path / "tiny"))
    velocity = toy.label_velocity(pipe.model, pipe)
    channels = pipe.model.config.vision_config.latent_channels
    grid = pipe.model.config.vision_config.image_size // pipe.model.config.vision_config.patch_size
    noisy, times = torch.randn(2, channels, grid, grid).repeat(3, 1, 1, 1), torch.full((6,), 0.5)
    with torch.no_grad():
        out = velocity(noisy, times, torch.tensor([0, 0, 1, 1, len(toy.LABELS), len(toy.LABELS)]))
    assert out.shape == noisy.shape
    assert not torch.allclose(out[:2], out[2:4]) and not torch.allclose(out[:2], out[4:])


def one_object(shape: str, color: str = "red", x: float = 32, y: float = 32) -> Scene:
    return Scene((ShapeObject(shape, color, x, y, 20),), "colors")


def test_scores_tell_drawn_shapes_from_one_blob_for_every_shape_word(toy):
    prompts = [(0, "red", shape) for shape in ("circle", "square", "triangle")]
    drawn = [render_scene(one_object(shape)) for _, _, shape in prompts]
    right = toy.scores(drawn, prompts)
    assert right["colors_rule"] == right["only_asked"] == right["largest_has_shape"] == 1.0
    assert right["shape_word_iou"] < 0.9
    blob = [render_scene(one_object("circle"))] * 3
    wrong = toy.scores(blob, prompts)
    assert wrong["colors_rule"] == pytest.approx(1 / 3) and wrong["shape_word_iou"] == 1.0
    moved = [render_scene(one_object("square", "blue", 20, 20))] * 3  # the wrong colour satisfies nothing
    assert toy.scores(moved, prompts)["colors_rule"] == 0.0
    apart = [(index, "red", shape) for index, (_, _, shape) in enumerate(prompts)]  # no noise shared: no IoU
    alone = toy.scores(drawn, apart)
    assert alone["colors_rule"] == 1.0 and alone["shape_word_iou"] != alone["shape_word_iou"]  # nan


def test_pixel_space_folds_each_patch_into_one_token_and_back(toy, tmp_path):
    from hydra_hf import HydraPipeline

    pipe = HydraPipeline.from_pretrained(save_tiny_hydra(tmp_path / "tiny"))
    images = [render_scene(one_object("triangle", "blue", 30, 34))]
    folded = toy.encode(pipe, images, space="pixels")
    patch, size = pipe.model.config.vision_config.patch_size, pipe.model.config.vision_config.image_size
    assert folded.shape == (1, 3 * patch * patch, size // patch, size // patch)
    pixels = pipe.processor.image_processor(images, return_tensors="pt")["pixel_values"]
    expected = pipe.processor.postprocess(pixels, output_type="np")
    assert (np.asarray(toy.decode(pipe, folded, seed=0, space="pixels")[0]) == expected[0]).all()


def test_the_shipped_decoder_reads_back_clean_latents_and_loses_shapes_under_large_errors(toy):
    from importlib import resources

    from hydra_hf import HydraPipeline

    pipe = HydraPipeline.from_pretrained(str(resources.files("hydra_hf") / "assets" / "hydra-tiny-shapes"))
    pipe.set_progress_bar_config(disable=True)
    results = toy.latent_noise_scores(pipe, [0.0, 30.0], seed=5, num_scenes=6)
    assert results["0"]["colors_rule"] == 1.0 and results["0"]["images"] == 6
    assert results["30"]["colors_rule"] < 1.0


def test_training_lowers_the_flow_loss_of_label_dependent_latents(toy):
    # Each label has one fixed latent: a conditioned flow model can fit that far below its starting loss.
    generator = torch.Generator().manual_seed(0)
    targets = torch.randn(len(toy.LABELS), 4, 2, 2, generator=generator)
    labels = torch.arange(len(toy.LABELS)).repeat(4)
    model = tiny_toy(toy, "token")

    class Args:
        seed, steps, batch_size, learning_rate, label_dropout, ema_decay, eval_at = 0, 300, 32, 3e-3, 0.0, None, []

    losses = toy.train(model, targets[labels], labels, Args)
    assert sum(losses[-30:]) / 30 < 0.6 * sum(losses[:30]) / 30
    assert not model.training


def test_mid_run_checkpoints_see_the_weights_average_and_training_goes_on_from_the_raw_weights(toy):
    targets = torch.randn(len(toy.LABELS), 4, 2, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(len(toy.LABELS)).repeat(2)

    class Args:
        seed, steps, batch_size, learning_rate, label_dropout, eval_at = 0, 6, 8, 1e-2, 0.0, [2, 4]

    def run(ema_decay):
        Args.ema_decay = ema_decay
        model, seen = tiny_toy(toy, "adaln"), {}

        def checkpoint(step, losses):
            assert not model.training and len(losses) == step
            seen[step] = model.proj_out.weight.detach().clone()

        toy.train(model, targets[labels], labels, Args, checkpoint)
        return seen, model.proj_out.weight.detach()

    raw_seen, raw_final = run(None)
    ema_seen, ema_final = run(0.9)
    assert set(raw_seen) == set(ema_seen) == {2, 4}
    assert torch.equal(raw_final, ema_final)  # the average is shown, never trained on
    assert not torch.allclose(raw_seen[4], ema_seen[4])


def test_main_writes_each_arm_and_its_scores_at_each_guidance(toy, tmp_path):
    model_dir = save_tiny_hydra(tmp_path / "tiny")
    out = tmp_path / "toy"
    toy.main(["--out", str(out), "--model", str(model_dir), "--num-scenes", "6", "--steps", "2", "--batch-size", "4",
              "--width", "16", "--layers", "1", "--heads", "2", "--sampling-steps", "2", "--eval-noises", "1",
              "--guidance", "1", "2", "--eval-at", "1", "--ema-decay", "0.9"])
    results = json.loads((out / "toy_results.json").read_text())
    assert set(results["arms"]) == {"adaln", "token"}
    for arm, row in results["arms"].items():
        assert {"guidance_1", "guidance_2"} <= set(row) and row["guidance_1"]["images"] == len(toy.LABELS)
        assert (out / f"{arm}.safetensors").exists() and (out / f"{arm}_guidance_2.png").exists()
        assert list(row["checkpoints"]) == ["1"] and row["checkpoints"]["1"]["guidance_2"]["images"] == len(toy.LABELS)
        assert (out / f"{arm}_step1_guidance_1.png").exists() and len(row["loss_per_100_steps"]) == 1
    with pytest.raises(SystemExit):
        toy.main(["--out", str(out), "--model", str(model_dir), "--steps", "2", "--eval-at", "2"])

    probed = tmp_path / "probe"
    toy.main(["--out", str(probed), "--model", str(model_dir), "--arms", "--word-loss", str(out / "token.safetensors"),
              "--word-loss-scenes", "6", "--width", "16", "--layers", "1", "--heads", "2"])
    word_loss = json.loads((probed / "toy_results.json").read_text())["word_loss"]
    assert set(word_loss) == {str(model_dir), str(out / "token.safetensors")}
    for row in word_loss[str(model_dir)].values():
        assert set(row) == {"right", "wrong_shape", "wrong_colour", "null"}
