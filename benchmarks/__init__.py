"""Performance harness: HYDRA side by side with diffusers' SD-VAE and transformers' Janus (`python -m benchmarks`)."""
