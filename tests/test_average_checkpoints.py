import json
from pathlib import Path

import pytest
import torch

from hydra_hf import HydraForConditionalGeneration

from .utils import load_script, tiny_hydra, tiny_processor


def load_averager():
    return load_script("scripts/average_checkpoints.py")


def save_draw(folder: Path, seed: int) -> Path:
    tiny_hydra(seed=seed).save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    (folder / "training_recipe.json").write_text(json.dumps({"seed": seed}))
    (folder / "README.md").write_text("the card of one draw")
    return folder


def test_the_average_loads_as_the_mean_of_its_ingredients(tmp_path):
    averager = load_averager()
    draws = [save_draw(tmp_path / f"draw{seed}", seed) for seed in (0, 1, 2)]
    averager.average_checkpoints(tmp_path / "soup", draws)

    soup = HydraForConditionalGeneration.from_pretrained(tmp_path / "soup")
    ingredients = [HydraForConditionalGeneration.from_pretrained(draw).state_dict() for draw in draws]
    for name, tensor in soup.state_dict().items():
        torch.testing.assert_close(tensor, sum(sd[name] for sd in ingredients) / 3, msg=name)
    assert any(not torch.equal(tensor, ingredients[1][name]) for name, tensor in ingredients[0].items())  # they differ
    recipe = json.loads((tmp_path / "soup" / "training_recipe.json").read_text())  # the soup's own, naming its draws
    assert recipe == {"averaged_from": [str(draw) for draw in draws], "average_of": [{"seed": seed} for seed in (0, 1, 2)]}
    assert (tmp_path / "soup" / "tokenizer.json").is_file()
    assert not (tmp_path / "soup" / "README.md").exists()  # the first draw's card does not describe the soup


def test_averaging_refuses_other_architectures_and_an_existing_folder(tmp_path):
    averager = load_averager()
    draw = save_draw(tmp_path / "draw", 0)
    other = tmp_path / "wider"
    tiny_hydra(flow_head_hidden_size=48).save_pretrained(other)
    with pytest.raises(ValueError, match="has shape"):
        averager.average_checkpoints(tmp_path / "soup", [draw, other])
    assert not (tmp_path / "soup").exists() and not (tmp_path / "soup.partial").exists()
    with pytest.raises(ValueError, match="exists"):
        averager.average_checkpoints(draw, [draw, other])
    with pytest.raises(ValueError, match="at least two"):
        averager.average_checkpoints(tmp_path / "soup", [draw])
