import json

import numpy as np
import pytest
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from PIL import Image
from transformers import GenerationConfig

from hydra_hf import cli
from hydra_hf.data.shapes import generation_scenes, prompt_spec_for, render_scene
from hydra_hf.evaluation.shapes_eval import EVAL_SEED, evaluate_shapes, generate_for_specs
from hydra_hf.pipelines import HydraPipeline

from .utils import save_tiny_hydra


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_hydra(tmp_path_factory.mktemp("tiny-hydra"))


def test_every_command_has_help(capsys):
    for command in (["--help"], ["demo", "--help"], ["generate", "--help"], ["chat", "--help"], ["eval", "shapes", "--help"],
                    ["eval", "compare", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(command)
        assert exit_info.value.code == 0
        assert "usage: hydra-hf" in capsys.readouterr().out


def test_generate_writes_seeded_images(model_dir, tmp_path, capsys):
    arguments = ["generate", "a red circle", "--model", str(model_dir), "--steps", "2", "--num-images", "2"]
    cli.main([*arguments, "--output", str(tmp_path / "a.png")])
    cli.main([*arguments, "--output", str(tmp_path / "b.png")])
    first, second = Image.open(tmp_path / "a-0.png"), Image.open(tmp_path / "b-0.png")
    assert first.size == (32, 32) and np.array_equal(np.asarray(first), np.asarray(second))
    assert str(tmp_path / "a-1.png") in capsys.readouterr().out


def test_chat_answers_and_bad_input_is_a_clear_error(model_dir, tmp_path, capsys):
    image = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (220, 40, 40)).save(image)
    cli.main(["chat", "--image", str(image), "what color is the shape ?", "--model", str(model_dir), "--max-new-tokens", "2"])
    assert capsys.readouterr().out.count("\n") == 1  # one answer line (an untrained model's may be empty)
    with pytest.raises(SystemExit, match="cannot read image"):
        cli.main(["chat", "--image", str(tmp_path / "missing.png"), "what?", "--model", str(model_dir)])
    with pytest.raises(SystemExit, match="--steps must be >= 1"):
        cli.main(["generate", "x", "--model", str(model_dir), "--steps", "0"])


def test_missing_embedded_model_says_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setattr(cli.resources, "files", lambda package: tmp_path)
    with pytest.raises(SystemExit, match="train it with examples/train_hydra_tiny_shapes.py"):
        cli.resolve_model(cli.DEFAULT_MODEL)
    assert cli.resolve_model("some/repo") == "some/repo"


def test_eval_shapes_reports_every_part(model_dir, tmp_path, capsys):
    output = tmp_path / "scores.json"
    cli.main(["eval", "shapes", "--model", str(model_dir), "--num-scenes", "6", "--batch-size", "3", "--steps", "2",
              "--json", str(output)])
    scores = json.loads(output.read_text())
    assert scores["num_scenes"] == 6 and scores["seed"] == 12345
    assert 0 <= scores["vqa_accuracy"] <= 1 and scores["reconstruction_psnr"] > 0
    assert set(scores["generation"]) >= {"single_object", "two_objects", "counting", "colors", "position", "overall"}
    assert scores["specks_per_image"] >= 0
    assert 0 <= scores["well_drawn_overall"] <= 1 and 0 <= scores["generation_standard_error"] <= 0.5
    printed = capsys.readouterr().out
    assert "tokenizer reconstruction PSNR" in printed and "Specks per generated image" in printed
    assert "Overall counting only well-drawn shapes" in printed and "Standard error of the overall" in printed



def test_compare_pairs_two_evaluations_of_the_same_prompts(model_dir, tmp_path, capsys):
    first = tmp_path / "a.json"
    cli.main(["eval", "shapes", "--model", str(model_dir), "--num-scenes", "12", "--steps", "2", "--parts", "generation",
              "--json", str(first)])
    scores = json.loads(first.read_text())
    outcomes = scores["generation_outcomes"]
    assert [len(values) for values in outcomes.values()] == [2] * 6  # 12 prompts, 2 per category
    assert scores["generation"]["overall"] == pytest.approx(np.mean([np.mean(v) for v in outcomes.values()]))
    # B satisfies every prompt of one category more than A: A - B = -(that category's failures) / 6 categories
    better = {**scores, "generation_outcomes": {**outcomes, "counting": [True, True]}}
    second = tmp_path / "b.json"
    second.write_text(json.dumps(better))
    capsys.readouterr()
    cli.main(["eval", "compare", str(first), str(second)])
    difference, a = -outcomes["counting"].count(False) / 2 / 6, scores["generation"]["overall"]
    printed = capsys.readouterr().out
    assert f"| GenEval-style overall | {a:.4f} | {a - difference:.4f} | {difference:+.4f} +- " in printed
    counting = scores["generation"]["counting"]
    assert f"| GenEval-style counting | {counting:.4f} | 1.0000 | {counting - 1:+.4f} +- " in printed
    single = scores["generation"]["single_object"]
    assert f"| GenEval-style single object | {single:.4f} | {single:.4f} | +0.0000 +- 0.0000 |" in printed
    assert "| well-drawn overall | " in printed and "| well-drawn counting" not in printed
    assert "| only asked overall | " in printed and "| only asked single object | " in printed
    assert "12 prompts of seed 12345, each image from the same noise seed" in printed
    second.write_text(json.dumps({**better, "images_per_prompt": 4}))
    cli.main(["eval", "compare", str(first), str(second)])
    assert "1 and 4 images per prompt, the j-th of each prompt from the same noise seed" in capsys.readouterr().out
    second.write_text(json.dumps({**better, "only_asked_outcomes": {}}))  # written before it was measured
    cli.main(["eval", "compare", str(first), str(second)])
    assert "| only asked" not in capsys.readouterr().out
    for changed, message in (({"seed": 1}, "same prompts and noise seeds"), ({"generation_outcomes": {}}, "no per-prompt")):
        second.write_text(json.dumps({**scores, **changed}))
        with pytest.raises(SystemExit, match=message):
            cli.main(["eval", "compare", str(first), str(second)])

def test_compare_sizes_a_test_of_its_design_for_the_effects_asked(tmp_path, capsys):
    from hydra_hf.data.shapes import GENERATION_CATEGORIES
    from hydra_hf.evaluation.shapes import paired_differences, prompts_for_power

    rng = np.random.default_rng(0)
    results = [{"num_scenes": 60, "seed": 5, "generation_outcomes": {
        category: (rng.random(10) < 0.5).tolist() for category in GENERATION_CATEGORIES}} for _ in range(2)]
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, result in zip(paths, results):
        path.write_text(json.dumps(result))
    error = paired_differences(*(result["generation_outcomes"] for result in results))["overall"][1]
    cli.main(["eval", "compare", *map(str, paths), "--size-for", "0.03", "0.1", "--power", "0.9"])
    printed = capsys.readouterr().out
    for effect in (0.03, 0.1):
        needed = prompts_for_power(error, 60, effect, 0.9)
        assert (f"difference of +{effect:.3f} above two standard errors with probability 0.9, a test of this design "
                f"needs about {needed} prompts (this one had 60)") in printed
    assert prompts_for_power(error, 60, 0.03, 0.9) > 9 * prompts_for_power(error, 60, 0.1, 0.9)
    cli.main(["eval", "compare", *map(str, paths)])
    assert "a test of this design needs" not in capsys.readouterr().out
    with pytest.raises(SystemExit, match="power in"):
        cli.main(["eval", "compare", *map(str, paths), "--size-for", "0.03", "--power", "0.2"])
    assert capsys.readouterr().out == ""  # refused before the table


def test_guidance_flags_reach_the_pipeline_and_the_eval_records_what_it_used(model_dir, tmp_path, monkeypatch):
    arguments = ["generate", "a red circle", "--model", str(model_dir), "--steps", "2", "--output", str(tmp_path / "a.png")]
    calls, pipeline_call = [], HydraPipeline.__call__
    monkeypatch.setattr(HydraPipeline, "__call__", lambda self, *a, **kw: calls.append(kw) or pipeline_call(self, *a, **kw))
    cli.main(arguments)
    cli.main([*arguments, "--guidance", "2", "--pag-scale", "3", "--pag-layers", "0", "1", "--guidance-interval", "0.5", "1"])
    cli.main([*arguments, "--answer-guidance", "0.05"])
    names = ("guidance_scale", "pag_scale", "pag_applied_layers", "guidance_interval", "answer_guidance_scale",
             "guidance_questions")
    assert [{name: call[name] for name in names} for call in calls] == [
        dict.fromkeys(names),  # None: the model's defaults, and no answer guidance (the tiny model ships none)
        {"guidance_scale": 2.0, "pag_scale": 3.0, "pag_applied_layers": [0, 1], "guidance_interval": [0.5, 1.0],
         "answer_guidance_scale": None, "guidance_questions": None},
        {**dict.fromkeys(names), "answer_guidance_scale": 0.05, "guidance_questions": [[("is there a red circle?", "yes")]]},
    ]
    with pytest.raises(SystemExit, match="--pag-scale must be >= 0"):
        cli.main([*arguments, "--pag-scale", "-1"])

    def settings(*flags):
        output = tmp_path / "scores.json"
        cli.main(["eval", "shapes", "--model", str(model_dir), "--num-scenes", "2", "--steps", "2", "--parts",
                  "generation", "--json", str(output), *flags])
        return json.loads(output.read_text())["settings"]

    assert settings() == {"steps": 2, "guidance_scale": 5.0, "pag_scale": 0.0, "guidance_interval": [0.0, 1.0]}
    assert settings("--guidance", "3", "--pag-scale", "2", "--pag-layers", "0", "--guidance-interval", "0.7", "1") == {
        "steps": 2, "guidance_scale": 3.0, "pag_scale": 2.0, "pag_applied_layers": [0], "guidance_interval": [0.7, 1.0],
    }
    # Without classifier-free guidance there is no interval of it to record.
    assert settings("--guidance", "1") == {"steps": 2, "guidance_scale": 1.0, "pag_scale": 0.0}
    assert settings("--answer-guidance", "0.05") == {
        "steps": 2, "guidance_scale": 5.0, "pag_scale": 0.0, "guidance_interval": [0.0, 1.0],
        "answer_guidance_scale": 0.05, "answer_guidance_min_time": 0.3, "answer_guidance_smoothing": [4, 0.5],
    }


def test_answer_guidance_needs_a_shapes_world_prompt_when_asked_for_and_skips_others_by_default(
    model_dir, tmp_path, monkeypatch, caplog
):
    arguments = ["generate", "a dog", "--model", str(model_dir), "--steps", "2", "--output", str(tmp_path / "a.png")]
    with pytest.raises(SystemExit, match="--answer-guidance asks the prompt's questions: 'a dog' is not a shapes-world"):
        cli.main([*arguments, "--answer-guidance", "0.03"])
    calls, pipeline_call = [], HydraPipeline.__call__
    monkeypatch.setattr(HydraPipeline, "__call__", lambda self, *a, **kw: calls.append(kw) or pipeline_call(self, *a, **kw))
    own = {"answer_guidance_scale": 0.03}
    monkeypatch.setattr(HydraPipeline, "guidance_settings",
                        lambda self, *a, **kw: {**pipeline_guidance_settings(self, *a, **kw), **own})
    cli.main(arguments)  # the model's default: drawn unguided, with a warning
    assert calls[-1]["guidance_questions"] == [[]] and "drawing 'a dog' without answer guidance" in caplog.text
    cli.main([*arguments[:1], "a red circle above a blue square", *arguments[2:]])
    assert len(calls[-1]["guidance_questions"][0]) == 3


pipeline_guidance_settings = HydraPipeline.guidance_settings


def test_eval_follows_a_models_own_answer_guidance_and_zero_turns_it_off(tmp_path):
    model_dir = save_tiny_hydra(tmp_path / "guided")
    config = GenerationConfig.from_pretrained(model_dir)
    config.text_to_image, config._from_model_config = {"answer_guidance_scale": 0.05}, False
    config.save_pretrained(model_dir)

    def settings(*flags):
        output = tmp_path / "scores.json"
        cli.main(["eval", "shapes", "--model", str(model_dir), "--num-scenes", "1", "--steps", "2", "--parts",
                  "generation", "--json", str(output), *flags])
        return json.loads(output.read_text())["settings"]

    assert settings()["answer_guidance_scale"] == 0.05
    assert "answer_guidance_scale" not in settings("--answer-guidance", "0")


def test_answer_guided_generation_changes_only_the_prompts_with_binding_questions(model_dir, monkeypatch):
    # latents, not pixels: the tiny model's untrained (zero-initialised) decoder draws the same grey for any latent
    pipeline_call = HydraPipeline.__call__
    monkeypatch.setattr(HydraPipeline, "__call__", lambda self, *a, **kw: pipeline_call(self, *a, **{**kw, "output_type": "latent"}))
    pipe = HydraPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    specs = [prompt_spec_for(scene) for scene in generation_scenes(6, seed=EVAL_SEED)]  # one per category
    plain = generate_for_specs(pipe, specs, num_inference_steps=2, batch_size=3)
    guided = generate_for_specs(pipe, specs, num_inference_steps=2, batch_size=3, answer_guidance_scale=0.5,
                                answer_guidance_min_time=0.0)
    changed = [spec.category for spec, a, b in zip(specs, plain, guided) if not np.array_equal(np.asarray(a), np.asarray(b))]
    assert changed == ["colors", "position", "color_attribution"]


def test_evaluation_is_deterministic(model_dir):
    pipe = HydraPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    first = evaluate_shapes(pipe, num_scenes=3, batch_size=3, num_inference_steps=2, parts=("reconstruction", "vqa"))
    again = evaluate_shapes(pipe, num_scenes=3, batch_size=3, num_inference_steps=2, parts=("reconstruction", "vqa"))
    assert first.to_dict() == again.to_dict() and first.generation == {}


def test_generation_guides_each_batch_against_its_prompts_own_negatives(model_dir, monkeypatch):
    pipe = HydraPipeline.from_pretrained(model_dir)
    specs = [prompt_spec_for(scene) for scene in generation_scenes(3, seed=5)]
    calls = []

    def record(self, prompts, negative_prompt=None, **kwargs):
        calls.append((prompts, negative_prompt))
        return ImagePipelineOutput(images=[Image.new("RGB", (32, 32), "white")] * len(prompts))

    monkeypatch.setattr(HydraPipeline, "__call__", record)
    generate_for_specs(pipe, specs, batch_size=2, negative_prompts=["n0", "n1", "n2"])
    assert calls == [([specs[0].prompt, specs[1].prompt], ["n0", "n1"]), ([specs[2].prompt], ["n2"])]
    calls.clear()
    generate_for_specs(pipe, specs, batch_size=2)
    assert [negative for _, negative in calls] == [None, None]  # the pipeline's default, the empty prompt
    with pytest.raises(ValueError, match="one of `negative_prompts` per prompt spec"):
        generate_for_specs(pipe, specs, negative_prompts=["n0"])


def test_several_images_per_prompt_keep_the_first_image_and_score_each_prompt_by_its_share(model_dir, monkeypatch):
    """Image j of prompt i comes from noise seed EVAL_SEED + j * num_scenes + i (so the first image of each prompt is
    the single-image run's); a prompt whose first image is its reference scene and whose second is blank scores 0.5."""
    pipe = HydraPipeline.from_pretrained(model_dir)
    references = [render_scene(scene) for scene in generation_scenes(6, seed=EVAL_SEED)]
    drawn = []  # (prompt, seed)

    def draw(self, prompts, generator, **kwargs):
        seeds = [g.initial_seed() - EVAL_SEED for g in generator]
        drawn.extend(zip(prompts, seeds))
        return ImagePipelineOutput(images=[references[k] if k < 6 else Image.new("RGB", (64, 64), "white") for k in seeds])

    monkeypatch.setattr(HydraPipeline, "__call__", draw)
    result = evaluate_shapes(pipe, num_scenes=6, batch_size=4, parts=("generation",), images_per_prompt=2)
    prompts = [prompt_spec_for(scene).prompt for scene in generation_scenes(6, seed=EVAL_SEED)]
    assert drawn == [(prompts[k % 6], k) for k in range(12)]
    assert result.generation_outcomes == {category: [0.5] for category in result.generation_outcomes}
    assert result.generation["overall"] == 0.5 and result.images_per_prompt == 2
    assert result.objects_per_single_object_image == 0.5  # its reference scene's one object, then a blank image
    assert "(2 images per prompt)" in result.to_markdown()
    drawn.clear()
    single = evaluate_shapes(pipe, num_scenes=6, batch_size=4, parts=("generation",))
    assert drawn == [(prompts[k], k) for k in range(6)] and single.generation["overall"] == 1.0
    assert single.objects_per_single_object_image == 1.0
    assert result.only_asked == result.generation and single.only_asked["overall"] == 1.0
    assert "With nothing drawn but what was asked (every count exact, no other object): overall 1.0000" in single.to_markdown()
    assert "Objects drawn per image for the single-object prompts (asked: 1; " in single.to_markdown()
    assert "| metric | value |" not in single.to_markdown()  # no empty table for the parts not scored
    with pytest.raises(SystemExit, match="--images-per-prompt must be >= 1"):
        cli.main(["eval", "shapes", "--model", str(model_dir), "--images-per-prompt", "0"])


def test_editing_scores_edits_of_each_prompts_own_reference_scene(model_dir, monkeypatch):
    """An edit that returns its input scores 1 (the references match the prompts), one that blanks it 0; the
    strengths reach the pipeline and key the scores."""
    pipe = HydraPipeline.from_pretrained(model_dir)
    seen = []

    def edit(prompts, image, strength, keep, **kwargs):
        seen.append(strength)
        return ImagePipelineOutput(images=list(image) if keep else [Image.new("RGB", (64, 64), "white")] * len(image))

    monkeypatch.setattr(HydraPipeline, "__call__", lambda self, prompts, **kw: edit(prompts, keep=True, **kw))
    kept = evaluate_shapes(pipe, num_scenes=6, batch_size=4, parts=("editing",), edit_strengths=(0.3, 0.6))
    assert kept.editing == {"0.3": 1.0, "0.6": 1.0} and seen == [0.3, 0.3, 0.6, 0.6]
    assert "| 0.6 | 1.0000 |" in kept.to_markdown()
    monkeypatch.setattr(HydraPipeline, "__call__", lambda self, prompts, **kw: edit(prompts, keep=False, **kw))
    assert evaluate_shapes(pipe, num_scenes=6, parts=("editing",), edit_strengths=(0.5,)).editing == {"0.5": 0.0}


def test_demo_writes_each_image_a_grid_and_answers(model_dir, tmp_path, capsys):
    cli.main(["demo", "--model", str(model_dir), "--steps", "2", "--output-dir", str(tmp_path)])
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(pngs) == len(cli.DEMO_PROMPTS) + 1 and "grid.png" in pngs
    assert Image.open(tmp_path / "grid.png").size == (len(cli.DEMO_PROMPTS) * 32 * cli.GRID_SCALE, 32 * cli.GRID_SCALE)
    printed = capsys.readouterr().out
    assert all(question in printed for question in cli.DEMO_QUESTIONS)
