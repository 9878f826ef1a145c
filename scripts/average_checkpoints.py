"""Average the weights of checkpoints of one architecture (a uniform "model soup", Wortsman et al. 2022).

    python scripts/average_checkpoints.py OUT MODEL [MODEL ...]

Meant for draws trained further from one start (e.g. several `--start_from` runs of
examples/train_hydra_tiny_shapes.py), whose weights stay in one basin, so their mean is itself a model. OUT gets the
first MODEL's configs and processor files (its top-level `*.json` and `*.jinja`), the elementwise mean of every
`model.safetensors` (in float32, saved in the first model's dtypes), and a `training_recipe.json` of its own: the
ingredients' folders and recipes (`{"averaged_from": [...], "average_of": [...]}`, a recipe None where a folder has
none), from which scripts/package_default_model.py writes the card's commands. The first model's recipe and model card
are not copied, since they do not describe the mean. OUT must not exist, so nothing is overwritten.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hydra_hf.hub import staged_folder

WEIGHTS = "model.safetensors"
CONFIGS = ("*.json", "*.jinja")  # what `from_pretrained` reads besides the weights
RECIPE = "training_recipe.json"
NOT_COPIED = (RECIPE, "trainer_state.json")  # they describe the first model's training, not the mean


def average_state_dicts(state_dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The elementwise mean; every state dict must hold the same tensor names and shapes."""
    first = state_dicts[0]
    for index, other in enumerate(state_dicts[1:], start=2):
        if other.keys() != first.keys():
            differing = sorted(other.keys() ^ first.keys())
            raise ValueError(f"checkpoint {index} has other tensors than the first: {differing[:5]}")
        for name, tensor in first.items():
            if other[name].shape != tensor.shape:
                raise ValueError(f"checkpoint {index}: {name} has shape {tuple(other[name].shape)}, "
                                 f"expected {tuple(tensor.shape)} as in the first")
    return {
        name: (sum(sd[name].float() for sd in state_dicts) / len(state_dicts)).to(tensor.dtype)
        for name, tensor in first.items()
    }


def average_checkpoints(out: Path, models: list[Path]) -> None:
    if out.exists():
        raise ValueError(f"{out} exists; pass a new folder")
    if len(models) < 2:
        raise ValueError(f"expected at least two checkpoints to average, got {len(models)}")
    missing = [str(model) for model in models if not (model / WEIGHTS).is_file()]
    if missing:
        raise ValueError(f"expected a single {WEIGHTS} in each checkpoint folder; missing in {missing}")
    averaged = average_state_dicts([load_file(model / WEIGHTS) for model in models])
    with staged_folder(out) as staging:  # the folder appears whole or not at all
        for pattern in CONFIGS:
            for path in models[0].glob(pattern):
                if path.name not in NOT_COPIED:
                    shutil.copy2(path, staging / path.name)
        save_file(averaged, staging / WEIGHTS, metadata={"format": "pt"})
        recipes = [json.loads((model / RECIPE).read_text()) if (model / RECIPE).is_file() else None for model in models]
        recipe = {"averaged_from": [str(model) for model in models], "average_of": recipes}
        (staging / RECIPE).write_text(json.dumps(recipe, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="new folder for the averaged checkpoint")
    parser.add_argument("models", type=Path, nargs="+", help="checkpoint folders (save_pretrained) to average")
    args = parser.parse_args()
    try:
        average_checkpoints(args.out, args.models)
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote the mean of {len(args.models)} checkpoints to {args.out}")


if __name__ == "__main__":
    main()
