"""Install a trained `hydra-tiny-shapes` into the package (src/hydra_hf/assets/hydra-tiny-shapes) with its model card.

    python scripts/package_default_model.py outputs/tiny-shapes/final --scores scores.json [--provenance TEXT]

`--scores` is the JSON that `hydra-hf eval shapes --json` writes; its figures go into the card's evaluation table
and nothing else does, and the guidance it was scored with becomes the model's default (its generation config's
`text_to_image`, which `HydraPipeline` reads). Only the files `from_pretrained` needs are copied (safetensors,
configs, processor files).
"""

import argparse
import json
import shutil
from pathlib import Path

from transformers import GenerationConfig

from hydra_hf.data.shapes import binding_questions, prompt_spec_from_text
from hydra_hf.evaluation import WELL_DRAWN_MIN_FIT
from hydra_hf.hub import model_card, staged_folder

ASSET = Path(__file__).resolve().parents[1] / "src" / "hydra_hf" / "assets" / "hydra-tiny-shapes"
KEEP = ("*.safetensors", "*.json", "*.jinja")
SKIP = ("trainer_state.json",)  # a checkpoint's, not the model's
CARD_PROMPT = "a red circle to the left of a blue square"
CARD_SCORES = ("settings", "num_scenes", "seed", "reconstruction_psnr", "generation", "vqa_accuracy")


def eval_table(scores: dict) -> dict[str, float]:
    table = {"tokenizer reconstruction PSNR (dB)": round(scores["reconstruction_psnr"], 2)}
    table.update({f"GenEval-style {name}": round(value, 3) for name, value in scores["generation"].items()})
    if scores.get("well_drawn_overall") is not None:  # scores from before it was measured lack it
        table[f"GenEval-style overall, well-drawn shapes only (fit >= {WELL_DRAWN_MIN_FIT})"] = round(scores["well_drawn_overall"], 3)
    if scores.get("generation_standard_error") is not None:  # likewise
        table["GenEval-style overall, standard error over the prompts"] = round(scores["generation_standard_error"], 3)
    objects = scores.get("objects_per_single_object_image")  # likewise
    if objects is not None:
        table["objects drawn per image for single-object prompts (asked: 1)"] = round(objects, 2)
    only_asked = scores.get("only_asked", {})  # likewise
    for name in ("single_object", "overall"):
        if name in only_asked:
            table[f"GenEval-style {name}, nothing drawn but what was asked"] = round(only_asked[name], 3)
    table["VQA accuracy"] = round(scores["vqa_accuracy"], 3)
    return table


def evaluation_summary(scores: dict) -> str:
    """How the card's figures were measured, with the images drawn per prompt when there were several (scores from
    before `--images-per-prompt` drew one)."""
    images = scores.get("images_per_prompt", 1)
    flag = f" --images-per-prompt {images}" if images > 1 else ""
    return f"{scores['num_scenes']} held-out scenes (seed {scores['seed']}), `hydra-hf eval shapes{flag}`, {scores['settings']}"


# training_recipe.json keys not named after their flag of examples/train_hydra_tiny_shapes.py, and those of no flag.
RECIPE_FLAG_NAMES = {"scenes": "num_scenes", "pretrain_scenes": "num_pretrain_scenes"}
RECIPE_NOT_FLAGS = ("stages", "seed", "llm")  # the step table, the fixed training seed, the LLM's size (two flags)


def _flag(name: str, value) -> str:
    """One flag of the training script as its recipe records it: a switch (`store_true`) bare, a list spread out."""
    if value is True:
        return f"--{name}"
    return f"--{name} {' '.join(map(str, value)) if isinstance(value, list) else value}"


def recipe_command(recipe: dict, work_dir: str = "DIR") -> str:
    """The commands that rebuild the model of `recipe` into `work_dir`, each with every flag its training_recipe.json
    records (older recipes record fewer; a flag they lack took the script's default of that time). A recipe continued
    with `--start_from` gives the start's commands, then its own; an average (scripts/average_checkpoints.py) its
    ingredients' commands, then the average's. A model that several of them start from is trained once. The models on
    the way are trained into `<work_dir>_1`, `_2`, ... in the order of the commands; a start without a recipe of its
    own, which no command builds, is `<work_dir>_start`."""
    commands, trained = [], {}  # a recipe (as JSON) -> the work dir its model is trained in

    def train(step: dict, final: bool = False) -> str:
        signature = json.dumps(step, sort_keys=True)
        if signature in trained:
            return trained[signature]
        if "average_of" in step:
            ingredients = [train(ingredient) for ingredient in step["average_of"]]
            into = work_dir if final else f"{work_dir}_{len(commands) + 1}"
            commands.append(f"python scripts/average_checkpoints.py {into}/final "
                            + " ".join(f"{ingredient}/final" for ingredient in ingredients))
        else:
            flags = {RECIPE_FLAG_NAMES.get(key, key): value for key, value in step.items()
                     if key not in (*RECIPE_NOT_FLAGS, "start_from", "start_recipe")}
            if "start_from" in step:
                start = step["start_recipe"]
                start_dir = train(start) if start else f"{work_dir}_start"
                flags = {"start_from": f"{start_dir}/final", **flags}
            else:
                llm = step.get("llm", {})
                flags.update(llm_hidden_size=llm.get("hidden_size"), llm_num_layers=llm.get("num_hidden_layers"))
            given = " ".join(_flag(name, value) for name, value in flags.items()
                             if value is not None and value is not False)  # `not in (None, False)` drops zeros
            into = work_dir if final else f"{work_dir}_{len(commands) + 1}"
            commands.append(f"python examples/train_hydra_tiny_shapes.py --work_dir {into} {given}")
        trained[signature] = into
        return into

    train(recipe, final=True)
    return " && ".join(commands)


def last_trained(recipe: dict) -> list[dict]:
    """The recipes whose training made the model last: the recipe itself, or each ingredient of an average."""
    if "average_of" not in recipe:
        return [recipe]
    return [item for ingredient in recipe["average_of"] for item in last_trained(ingredient)]


def averages_lacking_recipes(recipe: dict) -> bool:
    """Whether an average anywhere in the model's history has an ingredient without a training_recipe.json: the
    card's command cannot rebuild that ingredient, nor can its seeds be named."""
    nested = [*recipe.get("average_of", ()), recipe.get("start_recipe")]
    return None in recipe.get("average_of", ()) or any(averages_lacking_recipes(step) for step in nested if step)


def first_recipe(recipe: dict) -> dict:
    """The recipe that trained the model's first stages, through any `--start_from` continuations and averages
    (the first ingredient's)."""
    while recipe.get("start_recipe") or recipe.get("average_of"):
        recipe = recipe["start_recipe"] if recipe.get("start_recipe") else recipe["average_of"][0]
    return recipe


def install_generation_defaults(folder: Path, settings: dict) -> dict:
    """Write the guidance of the scored run into the installed generation config, so that the pipeline, `hydra-hf`
    and the card's figures agree without anyone passing it; and turn the KV cache back on for `generate` in
    checkpoints saved before `HydraForConditionalGeneration` kept it on itself (`Trainer` had switched it off in the
    model config, `TrainingArguments.use_cache` being False, from which their generation config was derived)."""
    defaults = {name: value for name, value in settings.items() if name != "steps"}  # the guidance of the run
    config = GenerationConfig.from_pretrained(folder)
    config.use_cache = True
    config.text_to_image = defaults
    config._from_model_config = False  # otherwise the extra attribute is dropped on load
    config.save_pretrained(folder)
    return defaults


def sampling_summary(sampling: dict) -> str:
    """The card's sentence on the default sampler. Answer guidance needs questions, which a plain `pipe(prompt)`
    does not have, so the card says who asks them."""
    summary = ("`HydraPipeline` samples it by default with the guidance it was scored with, from its generation "
               f"config: {sampling}.")
    if sampling.get("answer_guidance_scale"):
        summary += (" Answer guidance applies to calls that pass `guidance_questions`; `hydra-hf generate`, `demo` and "
                    "`eval shapes` ask a shapes-world prompt's existence and relation questions themselves "
                    "(`hydra_hf.data.shapes.binding_questions(prompt_spec_from_text(prompt))`).")
    return summary


def install(args, scores: dict, recipe: dict, staging: Path) -> None:
    """Write the model's files, its generation defaults and its card into `staging`."""
    first, last = first_recipe(recipe), last_trained(recipe)
    for pattern in KEEP:
        for file in args.model.glob(pattern):
            if file.name not in SKIP:
                shutil.copy2(file, staging / file.name)
    sampling = install_generation_defaults(staging, scores["settings"])
    first_scenes = first.get("data_seed", 0)  # older recipes: always seed 0
    last_scenes = ", ".join(sorted({str(item.get("data_seed", 0)) for item in last}))
    scene_seeds = f"{first_scenes}" if last_scenes == str(first_scenes) else f"{first_scenes}, the continuation's {last_scenes}"
    unified_seeds = ", ".join(str(item.get("unified_seed", first["seed"])) for item in last)
    card = model_card(
        model_name="hydra-tiny-shapes",
        datasets=["synthetic shapes world (hydra_hf.data.shapes)"],
        description=(
            "A tiny HYDRA trained from scratch on the synthetic shapes world by `examples/train_hydra_tiny_shapes.py` "
            "on 2 CPU cores: the embedded default of `hydra_hf` (`hydra-hf demo`). The project's targets are "
            "reconstruction PSNR >= 30 dB, GenEval-style overall >= 0.80 (single object >= 0.95) and VQA >= 0.90; "
            f"this checkpoint reaches {scores['reconstruction_psnr']:.2f} dB, "
            f"{scores['generation']['overall']:.3f} ({scores['generation']['single_object']:.3f}) and "
            f"{scores['vqa_accuracy']:.3f}. {sampling_summary(sampling)}"
        ),
        training_details={
            "recipe": "examples/train_hydra_tiny_shapes.py (semantic ViT, word tokenizer, LLM, HYDRA-TOK 1-2, unified I-III)",
            "command": f"`{recipe_command(recipe)}`",
            **({"provenance": args.provenance} if args.provenance else {}),
            "steps at --scale 1, batch, learning rate per stage": json.dumps(last[0]["stages"]),
            "training scenes": f"{last[0]['scenes']} for the unified stages, the first {first.get('pretrain_scenes', first['scenes'])} "
            "of them for the pretraining and tokenizer stages",
            "seeds": f"first stages {first['seed']}, LLM pretraining {first.get('llm_seed', first['seed'])}, unified "
            f"stages {unified_seeds}{' (the averaged draws)' if len(last) > 1 else ''}; training scenes {scene_seeds}",
            "evaluation": evaluation_summary(scores),
        },
        eval_results=eval_table(scores),
        num_inference_steps=scores["settings"]["steps"],
        guidance_scale=None,
        prompt=CARD_PROMPT,
        guidance_questions=(binding_questions(prompt_spec_from_text(CARD_PROMPT))
                            if sampling.get("answer_guidance_scale") else None),  # the usage then samples as scored
        question="how many circles are there?",
    )
    card.save(staging / "README.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="the recipe's final folder")
    parser.add_argument("--scores", type=Path, required=True, help="hydra-hf eval shapes --json output")
    parser.add_argument("--provenance", help="how the checkpoint came about, for the card, when the recipe's "
                        "command alone does not rebuild it (stages taken from different runs, older code)")
    args = parser.parse_args()
    if args.model.resolve() == ASSET.resolve():
        parser.error(f"{args.model} is the installed model itself, which installing would delete first; copy it elsewhere")
    scores = json.loads(args.scores.read_text())
    recipe = json.loads((args.model / "training_recipe.json").read_text())
    if averages_lacking_recipes(recipe):
        parser.error("the card's command needs the training_recipe.json of every checkpoint the model averages")
    missing = [name for name in CARD_SCORES if scores.get(name) is None]
    if missing:
        parser.error(f"{args.scores} lacks {', '.join(missing)}: the card needs a full `hydra-hf eval shapes` run "
                     "(not --parts)")
    with staged_folder(ASSET, replace=True) as staging:  # the installed model is replaced only once this is whole
        install(args, scores, recipe, staging)
    size = sum(f.stat().st_size for f in ASSET.iterdir())
    print(f"installed {ASSET} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
