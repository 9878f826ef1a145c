import json
import re
import subprocess
import sys

from .utils import ROOT, load_script


def load_packager():
    return load_script("scripts/package_default_model.py")


def plain_recipe(packager) -> dict:
    """A recipe without continuations or averages: the one that trained the shipped model's first stages."""
    return packager.first_recipe(json.loads((packager.ASSET / "training_recipe.json").read_text()))


def test_recipe_command_names_only_flags_the_training_script_has():
    packager = load_packager()
    recipe = plain_recipe(packager)
    # The shipped recipe predates some flags; add what today's script records.
    recipe.update(llm={"hidden_size": 128, "num_hidden_layers": 4}, unified_seed=2, latent_channels=16,
                  timestep_logit_std=1.6)
    command = packager.recipe_command(recipe)
    assert "--num_scenes 40000" in command and "--latent_channels 16" in command and "--unified_seed 2" in command
    assert "--timestep_logit_std 1.6" in command
    assert "--llm_hidden_size 128 --llm_num_layers 4" in command and "--stages" not in command and "--seed " not in command
    assert set(re.findall(r"--(\w+)", command)) <= training_script_flags()
    # a switch (store_true) is written bare when on and left out when off: "--flow_head_latent_input False" would
    # be an argparse error in the card's command
    assert "--flow_head_latent_input" not in packager.recipe_command({**recipe, "flow_head_latent_input": False})
    switched_on = packager.recipe_command({**recipe, "flow_head_latent_input": True}).split()
    assert "--flow_head_latent_input" in switched_on and "True" not in switched_on
    zeros = packager.recipe_command({**recipe, "unified_seed": 0, "repa_weight": 0.0})
    assert "--unified_seed 0 " in zeros and "--repa_weight 0.0 " in zeros  # zeros are values, not switches


def training_script_flags() -> set[str]:
    script_help = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_hydra_tiny_shapes.py"), "--help"],
        capture_output=True, text=True, check=True,
    ).stdout
    return set(re.findall(r"--(\w+)", script_help))


def test_a_continued_recipe_gives_its_start_command_then_its_own():
    packager = load_packager()
    start = plain_recipe(packager)
    continued = {"start_from": "outputs/x/final", "start_recipe": start, "stages": start["stages"], "scale": 1.0,
                 "scenes": 40000, "stage_ii_cycles": 1, "generation_ratio": 0.8, "ema_decay": None, "seed": 0,
                 "data_seed": 1, "unified_seed": 2}
    first, then = packager.recipe_command(continued).split(" && ")
    assert first == packager.recipe_command(start, "DIR_1")
    assert then == ("python examples/train_hydra_tiny_shapes.py --work_dir DIR --start_from DIR_1/final "
                    "--scale 1.0 --num_scenes 40000 --stage_ii_cycles 1 --generation_ratio 0.8 --data_seed 1 --unified_seed 2")
    assert set(re.findall(r"--(\w+)", then)) <= training_script_flags()
    assert packager.first_recipe({**continued, "start_recipe": continued}) is start
    bare = then.replace("DIR_1/final", "DIR_start/final")  # a start without a recipe of its own, which no command builds
    assert packager.recipe_command({**continued, "start_recipe": None}) == bare
    specialised = packager.recipe_command({**continued, "train_categories": ["single_object", "colors"]})
    assert specialised.endswith("--unified_seed 2 --train_categories single_object colors")


def test_an_averaged_recipe_trains_each_shared_start_once_then_averages():
    packager = load_packager()
    start = plain_recipe(packager)
    third = {"start_from": "outputs/shipped/final", "start_recipe": start, "stages": start["stages"], "scenes": 40000,
             "stage_ii_cycles": 1, "generation_ratio": 0.8, "unified_seed": 2}
    fourth = {**third, "start_from": "outputs/third/final", "start_recipe": third, "unified_seed": 3}
    soup = {"averaged_from": ["outputs/third/final", "outputs/fourth/final"], "average_of": [third, fourth]}
    commands = packager.recipe_command(soup).split(" && ")
    assert commands[0] == packager.recipe_command(start, "DIR_1")  # the shared start, trained once
    assert commands[1].startswith("python examples/train_hydra_tiny_shapes.py --work_dir DIR_2 --start_from DIR_1/final ")
    assert commands[2].startswith("python examples/train_hydra_tiny_shapes.py --work_dir DIR_3 --start_from DIR_2/final ")
    assert commands[3] == "python scripts/average_checkpoints.py DIR/final DIR_2/final DIR_3/final"
    assert len(commands) == 4 and "--unified_seed 3" in commands[2]
    assert packager.first_recipe(soup) is start and packager.last_trained(soup) == [third, fourth]


def test_installing_refuses_an_average_with_an_ingredient_lacking_its_recipe_at_any_depth(tmp_path):
    packager = load_packager()
    start = plain_recipe(packager)
    inner = {"averaged_from": ["a/final", "b/final"], "average_of": [start, None]}  # b had no training_recipe.json
    continued = {"start_from": "soup/final", "start_recipe": inner, "stages": start["stages"], "unified_seed": 5}
    assert not packager.averages_lacking_recipes({"average_of": [start, start]})
    model = tmp_path / "model"
    model.mkdir()
    (model / "training_recipe.json").write_text(json.dumps({"average_of": [start, continued]}))
    result = install_expecting_refusal(packager, model, tmp_path, scores={})
    assert result.returncode == 2 and "needs the training_recipe.json of every checkpoint" in result.stderr


def test_installing_refuses_scores_of_a_partial_evaluation(tmp_path):
    packager = load_packager()
    model = tmp_path / "model"
    model.mkdir()
    (model / "training_recipe.json").write_text(json.dumps(plain_recipe(packager)))
    development_scores = {"num_scenes": 480, "seed": 777, "settings": {"steps": 30}, "reconstruction_psnr": None,
                          "generation": {"overall": 0.3}, "vqa_accuracy": None}  # `--parts generation`
    result = install_expecting_refusal(packager, model, tmp_path, development_scores)
    assert result.returncode == 2 and "lacks reconstruction_psnr, vqa_accuracy" in result.stderr


def install_expecting_refusal(packager, model, tmp_path, scores: dict) -> subprocess.CompletedProcess:
    """Run the packager on `model` with `scores`, expecting a refusal: the shipped model must be left as it was."""
    (tmp_path / "scores.json").write_text(json.dumps(scores))
    installed = {path.name: path.stat().st_mtime_ns for path in packager.ASSET.iterdir()}
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "package_default_model.py"), str(model),
                             "--scores", str(tmp_path / "scores.json")], capture_output=True, text=True)
    assert {path.name: path.stat().st_mtime_ns for path in packager.ASSET.iterdir()} == installed
    return result


def test_card_table_carries_the_well_drawn_score_standard_error_object_count_and_only_asked_scores_when_they_exist():
    packager = load_packager()
    scores = {"reconstruction_psnr": 31.664, "generation": {"overall": 0.2914}, "vqa_accuracy": 0.74}
    assert "GenEval-style overall, well-drawn shapes only (fit >= 0.8)" not in packager.eval_table(scores)
    table = packager.eval_table({**scores, "well_drawn_overall": 0.13377})
    assert table["GenEval-style overall, well-drawn shapes only (fit >= 0.8)"] == 0.134
    assert table["GenEval-style overall"] == 0.291 and table["tokenizer reconstruction PSNR (dB)"] == 31.66
    assert packager.eval_table({**scores, "generation_standard_error": 0.01874})[
        "GenEval-style overall, standard error over the prompts"] == 0.019
    assert packager.eval_table({**scores, "objects_per_single_object_image": 2.3333})[
        "objects drawn per image for single-object prompts (asked: 1)"] == 2.33
    assert not any(name.startswith("objects drawn") for name in table)
    only_asked = packager.eval_table({**scores, "only_asked": {"single_object": 0.1234, "colors": 0.5, "overall": 0.2}})
    assert only_asked["GenEval-style single_object, nothing drawn but what was asked"] == 0.123
    assert only_asked["GenEval-style overall, nothing drawn but what was asked"] == 0.2
    assert "GenEval-style colors, nothing drawn but what was asked" not in only_asked  # only the two headline rows
    assert not any("nothing drawn" in name for name in table)


def test_training_further_refuses_flags_that_the_start_has_fixed(tmp_path):
    command = [sys.executable, str(ROOT / "examples" / "train_hydra_tiny_shapes.py"), "--work_dir", str(tmp_path / "run"),
               "--start_from", str(load_packager().ASSET), "--latent_channels", "8", "--llm_seed", "1"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2
    assert "--latent_channels, --llm_seed shape the model or its first stages" in result.stderr
    assert not (tmp_path / "run").exists()
    result = subprocess.run([*command[:4], "--train_categories", "colors"], capture_output=True, text=True)
    assert result.returncode == 2 and "--train_categories needs --start_from" in result.stderr


def test_card_says_how_many_images_per_prompt_its_generation_scores_drew():
    packager = load_packager()
    scores = {"num_scenes": 500, "seed": 12345, "settings": {"steps": 30}}
    assert packager.evaluation_summary(scores) == "500 held-out scenes (seed 12345), `hydra-hf eval shapes`, {'steps': 30}"
    assert packager.evaluation_summary({**scores, "images_per_prompt": 1}) == packager.evaluation_summary(scores)
    assert "`hydra-hf eval shapes --images-per-prompt 4`" in packager.evaluation_summary({**scores, "images_per_prompt": 4})


def test_card_says_that_answer_guidance_needs_questions_only_when_the_model_ships_it():
    packager = load_packager()
    plain = {"guidance_scale": 1.0, "pag_scale": 3.0, "pag_applied_layers": [0]}
    assert "guidance_questions" not in packager.sampling_summary(plain)
    assert str(plain) in packager.sampling_summary(plain)
    guided = packager.sampling_summary({**plain, "answer_guidance_scale": 0.03})
    assert "Answer guidance applies to calls that pass `guidance_questions`" in guided
