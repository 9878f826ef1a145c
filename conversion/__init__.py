"""Checkpoint converters: pretrained InternViT + LLM -> an initial HYDRA, and the authors' release -> hydra_hf.

Run them from the repository root as modules, e.g. `python -m conversion.init_from_pretrained --help`.
"""
