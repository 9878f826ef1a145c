"""hydra_hf: HYDRA (arXiv 2603.15228) for the Hugging Face ecosystem."""

__version__ = "0.1.0.dev0"
