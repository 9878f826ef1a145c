import json

import numpy as np
import pytest
import torch

from .utils import load_script, save_tiny_hydra


@pytest.fixture(scope="module")
def diagnostics():
    return load_script("scripts/generation_diagnostics.py")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_hydra(tmp_path_factory.mktemp("tiny-hydra"))


def run(diagnostics, *argv):
    diagnostics.main([str(arg) for arg in argv])


def test_flow_loss_gives_every_model_the_same_scenes_and_noise(diagnostics, model_dir, tmp_path):
    # The same weights under two paths must score identically at each time and prompt: the table compares models.
    twin = save_tiny_hydra(tmp_path / "twin")
    output = tmp_path / "losses.json"
    run(diagnostics, "flow-loss", model_dir, twin, "--num-scenes", 4, "--batch-size", 2,
        "--times", 0.2, 0.9, "--json", output)
    losses = json.loads(output.read_text())
    assert losses[str(model_dir)] == losses[str(twin)]
    caption = losses[str(model_dir)]["caption"]
    assert set(caption) == {"0.2", "0.9"} and caption["0.2"] != caption["0.9"]
    with pytest.raises(SystemExit):
        run(diagnostics, "flow-loss", model_dir, "--times", 1.5)


def test_drawn_iou_counts_pixels_darker_than_the_white_background(diagnostics):
    white = np.full((4, 4, 3), 255, dtype=np.uint8)  # as the pipeline's PIL images read
    first, second = white.copy(), white.copy()
    first[0, :2] = [190, 0, 0]  # drawn: its darkest channel is far below white
    second[0, 1:3] = [0, 0, 200]
    assert diagnostics.drawn_iou(first, second) == pytest.approx(1 / 3)
    assert diagnostics.drawn_iou(white, white) == 0.0


def test_probe_reads_a_label_the_features_carry_and_not_one_they_do_not(diagnostics):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(6) % 3  # 6 prompts, 3 classes, as colour or shape of the prompts; 8 seeds of features
    noise = torch.randn(8, 6, 16, generator=generator)
    carried = noise + 10 * torch.nn.functional.pad(torch.nn.functional.one_hot(labels, 3), (0, 13))
    assert diagnostics.probe_accuracy(carried, labels, train_seeds=6) == 1.0
    assert diagnostics.probe_accuracy(noise, labels, train_seeds=6) < 0.6  # chance is 1/3, on 12 test rows


def test_band_scheduler_steps_stochastically_only_inside_its_band(diagnostics):
    scheduler = diagnostics.BandStochasticScheduler()
    scheduler.band = (0.0, 0.6)
    sample, velocity = torch.ones(1, 4), torch.full((1, 4), 0.5)
    steps = []
    for seed in (0, 1):
        scheduler.set_timesteps(sigmas=[1.0, 0.5, 0.25])
        generator = torch.Generator().manual_seed(seed)
        first = scheduler.step(velocity, scheduler.timesteps[0], sample, generator=generator).prev_sample
        steps.append((first, scheduler.step(velocity, scheduler.timesteps[1], first, generator=generator).prev_sample))
    # t = 1 lies outside the band: an Euler step to t = 0.5, whatever the generator
    torch.testing.assert_close(steps[0][0], sample - 0.5 * velocity)
    torch.testing.assert_close(steps[1][0], steps[0][0])
    # t = 0.5 lies inside: the clean estimate x - t v re-noised to t = 0.25 with the generator's noise
    noise = torch.randn(1, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(steps[0][1], 0.75 * (steps[0][0] - 0.5 * velocity) + 0.25 * noise)
    assert not torch.allclose(steps[0][1], steps[1][1])
