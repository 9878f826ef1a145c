import pytest
import torch

from hydra_hf import flow_matching


def test_interpolation_endpoints_and_velocity():
    clean, noise = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(flow_matching.interpolate(clean, noise, torch.zeros(3)), clean)
    assert torch.allclose(flow_matching.interpolate(clean, noise, torch.ones(3)), noise)
    # The target is the derivative of the path in t.
    t = torch.tensor([0.2, 0.5, 0.7])
    step = 1e-3
    finite_difference = (flow_matching.interpolate(clean, noise, t + step) - flow_matching.interpolate(clean, noise, t)) / step
    assert torch.allclose(finite_difference, flow_matching.velocity_target(clean, noise), atol=1e-3)


def test_clean_estimate_inverts_interpolation_with_true_velocity():
    clean, noise, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5), torch.tensor([0.3, 0.9])
    noisy = flow_matching.interpolate(clean, noise, t)
    estimate = flow_matching.clean_estimate(noisy, flow_matching.velocity_target(clean, noise), t)
    assert torch.allclose(estimate, clean, atol=1e-6)


def test_velocity_from_clean_is_the_path_velocity_and_bounded_near_clean_data():
    clean, noise = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    t = torch.tensor([0.05, 0.4, 1.0])
    noisy = flow_matching.interpolate(clean, noise, t)
    assert torch.allclose(flow_matching.velocity_from_clean(noisy, clean, t), flow_matching.velocity_target(clean, noise), atol=1e-5)
    # At t = 0 the division is clamped (as JiT does), so a wrong clean estimate gives a finite velocity.
    at_zero = flow_matching.velocity_from_clean(clean, clean + 1.0, torch.zeros(3))
    assert torch.allclose(at_zero, torch.full_like(clean, -1.0 / flow_matching.MIN_SAMPLE_PREDICTION_TIME))


def test_euler_with_exact_velocity_recovers_clean_sample():
    clean, noise = torch.randn(2, 6), torch.randn(2, 6)
    sample = noise
    times = flow_matching.sampling_timesteps(7, shift=3.0)
    for t, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
        sample = flow_matching.euler_step(sample, flow_matching.velocity_target(clean, noise), t, t_next)
    assert torch.allclose(sample, clean, atol=1e-5)


def test_sampling_timesteps_run_from_noise_to_clean():
    times = flow_matching.sampling_timesteps(10, shift=2.0)
    assert times.shape == (11,) and times[0] == 1 and times[-1] == 0
    assert torch.all(times[1:] < times[:-1])
    # A shift > 1 keeps more of the schedule near the noise end.
    assert torch.all(times[1:-1] > flow_matching.sampling_timesteps(10)[1:-1])
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        flow_matching.sampling_timesteps(0)


def test_training_timesteps_are_seeded_and_inside_unit_interval():
    a = flow_matching.sample_timesteps(1000, generator=torch.Generator().manual_seed(0))
    b = flow_matching.sample_timesteps(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    # Logit-normal mass concentrates around the middle.
    assert ((a > 0.25) & (a < 0.75)).float().mean() > 0.5
