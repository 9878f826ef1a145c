import json

import numpy as np
import pytest
import torch

from .utils import expected_answer, load_script, row_scene, save_tiny_hydra


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


def test_answer_likelihoods_do_not_depend_on_the_batch_padding(diagnostics):
    from .utils import random_pixels, tiny_hydra, tiny_processor

    model, processor = tiny_hydra(), tiny_processor()
    images = [processor.postprocess(random_pixels(1, 32, seed=seed))[0] for seed in (0, 1)]
    pairs = [("what shape is it ?", "a red circle"), ("what color is the shape ? describe the image .", "yes")]
    batched = diagnostics.answer_log_likelihoods(model, processor, images, pairs)
    alone = [diagnostics.answer_log_likelihoods(model, processor, [image], [pair])[0] for image, pair in zip(images, pairs)]
    assert batched == pytest.approx(alone, abs=1e-4)
    assert all(value < 0 for value in batched)
    # a longer answer is one more factor below 1
    assert diagnostics.answer_log_likelihoods(model, processor, images[:1], [("what shape is it ?", "a red circle yes")])[0] < batched[0]


def test_self_verify_scores_every_pick_between_nothing_and_the_oracle(diagnostics, model_dir, tmp_path):
    output = tmp_path / "verify.json"
    run(diagnostics, "self-verify", model_dir, "--num-prompts", 6, "--candidates", 2, "--json", output)
    row = json.loads(output.read_text())[str(model_dir)]
    picks = {"first candidate", "random candidate", "picked by its answers", "picked as a diffusion classifier"}
    assert set(row) == picks | {"oracle", "shape answers agree with the detector, own images",
                                "the same, the prompts' reference scenes"}
    assert all(0 <= row[pick] <= row["oracle"] <= 1 for pick in picks)
    assert all(0 <= value <= 1 for value in row.values())
    with pytest.raises(SystemExit):
        run(diagnostics, "self-verify", model_dir, "--candidates", 1)


def test_prompt_flow_gain_compares_candidates_on_the_same_noise(diagnostics, model_dir):
    from hydra_hf import HydraPipeline

    from .utils import random_pixels

    pipe = HydraPipeline.from_pretrained(model_dir)
    images = [pipe.processor.postprocess(random_pixels(1, 32, seed=seed))[0] for seed in (0, 1)]
    together = diagnostics.prompt_flow_gain(pipe, "a red circle", images)
    alone = [diagnostics.prompt_flow_gain(pipe, "a red circle", [image])[0] for image in images]
    assert together == pytest.approx(alone, rel=1e-4) and together[0] != pytest.approx(together[1])
    assert diagnostics.prompt_flow_gain(pipe, "", images) == pytest.approx([0.0, 0.0], abs=1e-6)


def test_failure_reason_names_the_first_way_an_image_misses_its_prompt(diagnostics):
    from hydra_hf.data.shapes import ObjectRequirement, PromptSpec, Scene, ShapeObject, render_scene
    from hydra_hf.evaluation.shapes import detect_objects

    def reason(objects, spec):
        return diagnostics.failure_reason(detect_objects(render_scene(Scene(tuple(objects)))), spec)

    red_circle, blue_square = ShapeObject.at("circle", "red", 6, 20, 16), ShapeObject.at("square", "blue", 40, 20, 16)
    single = PromptSpec("single_object", "a circle", (ObjectRequirement("circle"),))
    assert reason([red_circle], single) is None
    assert reason([], single) == "nothing detected"
    assert reason([blue_square], single) == "shape"
    assert reason([blue_square], PromptSpec("colors", "a red square", (ObjectRequirement("square", "red"),))) == "colour absent"
    three = PromptSpec("counting", "three red circles", (ObjectRequirement("circle", "red", 3, exact=True),))
    assert reason([red_circle, ShapeObject.at("circle", "red", 40, 40, 16)], three) == "count"
    assert reason([red_circle, ShapeObject.at("square", "red", 40, 40, 16), ShapeObject.at("circle", "red", 40, 4, 14)],
                  three) == "shape"
    right_of = PromptSpec("position", "a red circle to the right of a blue square",
                          (ObjectRequirement("circle", "red"), ObjectRequirement("square", "blue")), "right of")
    assert reason([red_circle, blue_square], right_of) == "relation"


def test_failures_table_splits_each_category_into_satisfied_and_reasons(diagnostics, model_dir, tmp_path):
    output = tmp_path / "failures.json"
    run(diagnostics, "failures", model_dir, "--num-prompts", 6, "--json", output)
    table = json.loads(output.read_text())[str(model_dir)]
    assert list(table) == ["single_object", "two_objects", "counting", "colors", "position", "color_attribution"]
    for shares in table.values():
        assert list(shares) == ["satisfied", *diagnostics.FAILURE_REASONS] and sum(shares.values()) == pytest.approx(1)


def test_shape_guidance_pairs_every_setting_with_the_defaults(diagnostics, model_dir, tmp_path):
    output = tmp_path / "shape-guidance.json"
    run(diagnostics, "shape-guidance", model_dir, "--num-prompts", 6, "--scales", 3, "--json", output)
    rows = json.loads(output.read_text())[str(model_dir)]
    assert list(rows) == ["defaults", "CFG 2.0 against the empty prompt", "CFG 3.0 against rotated shapes"]
    assert rows["defaults"]["paired_difference"] == [0.0, 0.0]
    for row in rows.values():
        satisfied = [float(value) for values in row["outcomes"].values() for value in values]
        assert len(satisfied) == 6 and 0 <= row["scores"]["overall"] <= 1
    with pytest.raises(SystemExit):
        run(diagnostics, "shape-guidance", model_dir, "--scales", 1)


def test_word_classifier_picks_the_candidate_with_the_lowest_flow_loss(diagnostics, monkeypatch):
    from hydra_hf.data import make_shapes_dataset

    scenes = make_shapes_dataset(12, seed=777, categories=("colors",))
    objects = [scene_objects[0] for scene_objects in scenes["objects"]]
    # a classifier that always prefers circles, and blue: it is right on exactly the circles and the blue scenes
    monkeypatch.setattr(diagnostics, "prompt_flow_losses", lambda pipe, prompts, images, times: np.array(
        [[-float(prompt.endswith("circle")) - float(prompt.startswith("a blue"))] * len(images) for prompt in prompts]))
    shapes = [obj["shape"] for obj in objects]
    colors = [obj["color"] for obj in objects]
    assert diagnostics.word_classifier_accuracy(None, scenes, "shape", 0.5) == shapes.count("circle") / 12
    assert diagnostics.word_classifier_accuracy(None, scenes, "color", 0.5) == colors.count("blue") / 12


def test_word_classifier_table_scores_shape_and_colour_at_each_time(diagnostics, model_dir, tmp_path):
    output = tmp_path / "classifier.json"
    run(diagnostics, "word-classifier", model_dir, "--num-scenes", 6, "--times", 0.3, 0.9, "--json", output)
    table = json.loads(output.read_text())[str(model_dir)]
    assert list(table) == ["0.3", "0.9"]
    for row in table.values():
        assert set(row) == {"shape", "color"} and all(0 <= value <= 1 for value in row.values())
    with pytest.raises(SystemExit):
        run(diagnostics, "word-classifier", model_dir, "--times", 1.5)


def test_relation_word_scores_split_seeing_the_axis_from_the_direction(diagnostics):
    words = ["left", "left", "right", "above", "below", "below"]
    answered = ["left", "right", "above", "above", "below", "yes"]
    scores = diagnostics.relation_word_scores(answered, words)
    assert scores == {"questions": 6, "accuracy": 0.5, "axis": 4 / 6, "direction": {"horizontal": 0.5, "vertical": 1.0}}


def test_relation_flip_tells_a_reader_of_the_relation_word_from_one_that_ignores_it(diagnostics, model_dir, monkeypatch):
    from hydra_hf.data import make_shapes_dataset

    assert diagnostics.flip_relation("is the red circle left of the blue square?") == "is the red circle right of the blue square?"
    assert diagnostics.flip_relation("is the red circle below the blue square?") == "is the red circle above the blue square?"
    scenes = make_shapes_dataset(300, seed=777)
    related_rows = [row for row in scenes if row["question_type"] == "relation"]

    # A reader answers every question as the scene's objects do, so a flipped one the other way; an ignorer says "yes".
    def reader(pipe, images, questions):
        rows = zip(questions, related_rows, strict=True)
        return [expected_answer(question, row_scene(row)) for question, row in rows]

    ignorer = lambda pipe, images, questions: ["yes"] * len(questions)  # noqa: E731
    for answer, yes_share, flips in ((reader, None, 1.0), (ignorer, 1.0, 0.0)):
        monkeypatch.setattr(diagnostics, "answer_questions", answer)
        table = diagnostics.relation_flip_table(
            type("Args", (), {"num_scenes": 300, "seed": 777, "models": [str(model_dir)]}))[str(model_dir)]
        seen = 1.0 if answer is reader else None  # an ignorer never names an axis, so it has no direction to score
        assert table.pop("relation_word") == {"questions": len(related_rows), "accuracy": seen or 0.0, "axis": seen or 0.0,
                                              "direction": {"horizontal": seen, "vertical": seen}}
        assert sum(row["questions"] for row in table.values()) == len(related_rows) > 0
        for row in table.values():
            assert row["flip_consistency"] == flips
            if answer is reader:
                assert row["accuracy"] == 1.0
            else:
                assert row["yes"] == yes_share and row["accuracy"] < 1.0


def test_relation_probe_reads_each_label_from_the_layer_that_carries_it(diagnostics, model_dir, monkeypatch):
    from hydra_hf.data import make_shapes_dataset
    from hydra_hf.data.shapes import OPPOSITE_RELATION

    relations = list(OPPOSITE_RELATION)
    scenes = [row_scene(row) for row in make_shapes_dataset(600, seed=777) if row["question_type"] == "relation"]
    generator = torch.Generator().manual_seed(0)

    # Layer 1 carries the asked word, layer 2 the true relation, layer 3 the yes/no answer; layer 0 only noise.
    def states(pipe, images, questions, batch_size=50):
        features = torch.randn(4, len(questions), 12, generator=generator)
        for index, question in enumerate(questions):
            if question.startswith("what is"):  # one relation-word question per scene
                truth = expected_answer(question, scenes[index])
                asked, answer = truth, 1
            else:  # each scene asked as it is and flipped
                asked = next(relation for relation in relations if f" {relation} the " in question)
                answer = int(expected_answer(question, scenes[index // 2]) == "yes")
                truth = asked if answer else OPPOSITE_RELATION[asked]
            features[1, index, [relation.startswith(asked) for relation in relations].index(True)] += 10
            features[2, index, 4 + [relation.startswith(truth) for relation in relations].index(True)] += 10
            features[3, index, 8 + answer] += 10
        return features

    monkeypatch.setattr(diagnostics, "last_position_states", states)
    table = diagnostics.relation_probe_table(
        type("Args", (), {"num_scenes": 600, "seed": 777, "models": [str(model_dir)]}))[str(model_dir)]
    assert table[1]["asked word"] == table[2]["true relation"] == table[3]["answer"] == 1.0
    assert table[2]["true relation, relation-word question"] == 1.0
    assert table[0]["answer"] < 0.75 and table[0]["true relation"] < 0.6 and table[3]["asked word"] < 0.6


def test_last_position_states_do_not_depend_on_the_batch_padding(diagnostics, model_dir):
    from hydra_hf import HydraPipeline
    from hydra_hf.data import make_shapes_dataset

    pipe = HydraPipeline.from_pretrained(model_dir)
    image = make_shapes_dataset(1, seed=777)["image"][0]
    short, long = "is the red circle above the blue square?", "what is the red circle to the blue square on the left?"
    alone = diagnostics.last_position_states(pipe, [image], [short])
    padded = diagnostics.last_position_states(pipe, [image, image], [short, long])
    assert padded.shape == (pipe.model.config.text_config.num_hidden_layers + 1, 2, alone.shape[-1])
    torch.testing.assert_close(padded[:, :1], alone, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(padded[-1, 0], padded[-1, 1])


def test_shape_answer_agreement_asks_about_each_detected_object_of_a_unique_colour(diagnostics, monkeypatch):
    from hydra_hf.data.shapes import generation_scenes, render_scene

    scenes = generation_scenes(24, seed=3)
    asked = []

    def always_circle(pipe, images, questions):
        asked.extend(questions)
        return ["circle"] * len(questions)

    monkeypatch.setattr(diagnostics, "answer_questions", always_circle)
    agreement = diagnostics.shape_answer_agreement(None, [render_scene(scene) for scene in scenes])
    # the detector reads rendered scenes exactly, so the asked objects are the scenes' objects of a unique colour
    unique = [obj for scene in scenes for obj in scene.objects
              if [other.color for other in scene.objects].count(obj.color) == 1]
    assert sorted(asked) == sorted(f"what shape is the {obj.color} object?" for obj in unique)
    assert agreement == pytest.approx(np.mean([obj.shape == "circle" for obj in unique]))
    assert 0 < agreement < 1
