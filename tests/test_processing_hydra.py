"""HydraImageProcessor, HydraProcessor and the word-level tokenizer, offline."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import hydra_hf  # noqa: F401  (registers HydraImageProcessor with AutoImageProcessor)

from hydra_hf.data.text_tokenizer import train_word_tokenizer
from hydra_hf.models.hydra.image_processing_hydra import HydraImageProcessor
from hydra_hf.models.hydra.processing_hydra import HydraProcessor


CORPUS = [
    "a red circle",
    "a red circle to the left of a blue square",
    "three green triangles",
    "how many circles are there?",
    "what is it?",
    "is there a blue square?",
    "yes",
    "no",
    "2",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_word_tokenizer(CORPUS, vocab_size=200)


@pytest.fixture
def processor(tokenizer):
    return HydraProcessor(HydraImageProcessor(patch_size=8), tokenizer)


def random_image(height, width, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


def image_runs(input_ids, processor):
    """Lengths of the runs of image tokens between begin- and end-of-image, checking that they are well formed."""
    ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
    runs = []
    for start in [i for i, token in enumerate(ids) if token == processor.boi_token_id]:
        end = ids.index(processor.eoi_token_id, start)
        assert set(ids[start + 1 : end]) == {processor.image_token_id}
        runs.append(end - start - 1)
    assert sum(runs) == ids.count(processor.image_token_id)
    return runs


# ---- image processor ----


def test_image_processor_range_shape_and_input_types():
    image_processor = HydraImageProcessor()
    pixels = np.array(random_image(64, 64))
    images = [
        PIL.Image.fromarray(pixels),
        pixels,
        torch.from_numpy(pixels).permute(2, 0, 1),
        PIL.Image.fromarray(pixels).convert("RGBA"),
    ]
    pixel_values = image_processor(images, return_tensors="pt").pixel_values
    assert pixel_values.shape == (4, 3, 64, 64)
    assert pixel_values.dtype == torch.float32
    assert pixel_values.min() >= -1 and pixel_values.max() <= 1
    for other in pixel_values[1:]:
        torch.testing.assert_close(other, pixel_values[0])

    black_and_white = [PIL.Image.new("RGB", (20, 30), 0), PIL.Image.new("L", (50, 40), 255)]
    pixel_values = HydraImageProcessor(size={"height": 32, "width": 48})(black_and_white, return_tensors="pt")
    assert pixel_values.pixel_values.shape == (2, 3, 32, 48)
    assert torch.all(pixel_values.pixel_values[0] == -1) and torch.all(pixel_values.pixel_values[1] == 1)


def test_image_processor_shortest_edge_and_center_crop():
    image_processor = HydraImageProcessor(
        size={"shortest_edge": 32}, do_center_crop=True, crop_size={"height": 32, "width": 32}
    )
    assert image_processor(random_image(40, 80), return_tensors="pt").pixel_values.shape == (1, 3, 32, 32)


def test_sizes_must_be_multiples_of_the_patch_size():
    image_processor = HydraImageProcessor(size={"height": 60, "width": 64}, patch_size=8)
    with pytest.raises(ValueError, match=r"60x64 is not a multiple of the patch size 8.*multiples of 8"):
        image_processor(random_image(64, 64))
    with pytest.raises(ValueError, match="multiples of 4"):
        HydraImageProcessor(patch_size=4)(random_image(30, 32), do_resize=False)
    with pytest.raises(ValueError, match="multiples of 8"):
        image_processor.num_image_tokens(60, 64)
    assert image_processor.num_image_tokens(32, 48) == 24
    assert HydraImageProcessor(patch_size=4).num_image_tokens(32, 48) == 96


def test_differently_sized_images_cannot_be_stacked():
    images = [random_image(32, 32), random_image(16, 32)]
    with pytest.raises(ValueError, match="different sizes"):
        HydraImageProcessor()(images, do_resize=False, return_tensors="pt")
    shapes = [image.shape for image in HydraImageProcessor()(images, do_resize=False).pixel_values]
    assert shapes == [(3, 32, 32), (3, 16, 32)]


def test_postprocess_round_trip_and_clamping():
    image_processor = HydraImageProcessor()
    image = random_image(64, 64, seed=1)
    pixel_values = image_processor(image, return_tensors="pt").pixel_values

    recovered = image_processor.postprocess(pixel_values, output_type="np")
    assert recovered.dtype == np.uint8 and recovered.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(recovered[0], np.asarray(image))  # exact, since values are rounded, not truncated

    (pil_image,) = image_processor.postprocess(pixel_values[0].to(torch.bfloat16))
    assert pil_image.mode == "RGB" and pil_image.size == (64, 64)
    assert np.abs(np.asarray(pil_image).astype(int) - np.asarray(image).astype(int)).max() <= 2

    out_of_range = torch.stack([torch.full((3, 8, 8), 3.0), torch.full((3, 8, 8), -3.0)])
    clamped = image_processor.postprocess(out_of_range, output_type="np")
    assert np.all(clamped[0] == 255) and np.all(clamped[1] == 0)

    with pytest.raises(ValueError, match="output_type"):
        image_processor.postprocess(pixel_values, output_type="latent")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        image_processor.postprocess(torch.zeros(1, 4, 8, 8))


def test_image_processor_save_and_load(tmp_path):
    image_processor = HydraImageProcessor(size={"height": 32, "width": 48}, patch_size=4)
    image_processor.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    reloaded = HydraImageProcessor.from_pretrained(tmp_path)
    assert reloaded.patch_size == 4 and reloaded.num_image_tokens(32, 48) == 96
    image = random_image(50, 40)
    torch.testing.assert_close(
        reloaded(image, return_tensors="pt").pixel_values, image_processor(image, return_tensors="pt").pixel_values
    )


# ---- processor ----


def test_placeholders_expand_to_one_token_per_patch(processor):
    text = "<image> a red circle"
    assert image_runs(processor(text=text, images=random_image(64, 64)).input_ids[0], processor) == [64]

    inputs = processor(text=text, images=random_image(64, 64), size={"height": 32, "width": 48})
    assert inputs.pixel_values.shape == (1, 3, 32, 48)
    assert image_runs(inputs.input_ids[0], processor) == [24]

    # Images keep their own sizes; each placeholder gets its own image's count, in order.
    inputs = processor(
        text="<image> and <image>", images=[random_image(64, 64), random_image(32, 48)], do_resize=False,
        return_tensors=None,
    )
    assert image_runs(inputs["input_ids"][0], processor) == [64, 24]


def test_images_are_assigned_to_placeholders_across_the_batch(processor):
    inputs = processor(
        text=["<image> a red circle", "no image here", "<image><image>"],
        images=[[random_image(64, 64)], [], [random_image(32, 32), random_image(16, 16)]],
        do_resize=False,
        return_tensors=None,
    )
    runs = [image_runs(ids, processor) for ids in inputs["input_ids"]]
    assert runs == [[64], [], [16, 4]]


def test_placeholder_image_count_mismatch(processor):
    with pytest.raises(ValueError, match=r"Found 2 <image> placeholder\(s\) in the text but 1 image\(s\)"):
        processor(text="<image> and <image>", images=random_image(64, 64))
    with pytest.raises(ValueError, match=r"Found 1 <image> placeholder\(s\) in the text but 0 image\(s\)"):
        processor(text="<image> a red circle")
    with pytest.raises(ValueError, match=r"Found 0 <image> placeholder\(s\) in the text but 2 image\(s\)"):
        processor(text="a red circle", images=[random_image(64, 64), random_image(64, 64)])


def test_text_only_and_images_only(processor, tokenizer):
    text_inputs = processor(text="a red circle")
    assert set(text_inputs) == {"input_ids", "attention_mask"}
    assert text_inputs.input_ids.tolist() == [tokenizer("a red circle").input_ids]

    image_inputs = processor(images=[random_image(64, 64), random_image(64, 64, seed=2)])
    assert set(image_inputs) == {"pixel_values"}
    assert image_inputs.pixel_values.shape == (2, 3, 64, 64)

    with pytest.raises(ValueError, match="needs `text`, `images` or both"):
        processor()


def test_batches_are_padded_on_the_left(processor, tokenizer):
    inputs = processor(text=["a red circle to the left of a blue square", "yes"])
    short = tokenizer("yes").input_ids
    assert inputs.input_ids.shape == (2, 10)
    assert inputs.input_ids[1].tolist() == [tokenizer.pad_token_id] * 9 + short
    assert inputs.attention_mask[1].tolist() == [0] * 9 + [1]
    assert inputs.attention_mask[0].tolist() == [1] * 10

    right = processor(text=["a red circle", "yes"], padding_side="right")
    assert right.input_ids[1].tolist() == short + [tokenizer.pad_token_id] * 2



def test_left_padding_survives_a_tokenizer_saved_after_right_padding(tmp_path, tokenizer):
    # Training pads on the right, and a fast tokenizer keeps its last call's padding in the tokenizer.json it saves;
    # a reloaded tokenizer defaults to it. The processor saves without it, and pads generation batches on the left
    # even with a tokenizer saved on its own.
    processor = HydraProcessor(HydraImageProcessor(patch_size=8), tokenizer)
    processor(text=["a red circle", "yes"], padding_side="right")
    tokenizer.save_pretrained(tmp_path / "alone")
    assert json.loads((tmp_path / "alone" / "tokenizer.json").read_text())["padding"]["direction"] == "Right"
    processor.save_pretrained(tmp_path / "processor")
    assert json.loads((tmp_path / "processor" / "tokenizer.json").read_text())["padding"] is None
    alone = HydraProcessor(HydraImageProcessor(patch_size=8), type(tokenizer).from_pretrained(tmp_path / "alone"))
    for reloaded in (HydraProcessor.from_pretrained(tmp_path / "processor"), alone):
        assert reloaded(text=["a red circle", "yes"]).attention_mask[1].tolist() == [0, 0, 1]
        assert reloaded(text=["a red circle", "yes"], padding_side="right").attention_mask[1].tolist() == [1, 0, 0]
    # the processor's own calls still pad and truncate after saving
    assert processor(text=["a red circle", "yes"], padding_side="right").attention_mask[1].tolist() == [1, 0, 0]


def test_special_tokens_come_from_the_tokenizer(processor, tokenizer):
    assert (processor.image_token, processor.boi_token, processor.eoi_token) == (
        "<image>",
        "<begin_of_image>",
        "<end_of_image>",
    )
    assert processor.image_token_id == tokenizer.image_token_id
    assert processor.boi_token_id == tokenizer.boi_token_id
    assert processor.eoi_token_id == tokenizer.eoi_token_id
    assert processor.decode(processor(text="<image>", images=random_image(8, 8)).input_ids[0][:3]) == (
        "<begin_of_image> <image> <image>"
    )


def test_missing_image_tokens_are_added_to_the_tokenizer():
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "<pad>": 1, "red": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    plain = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")
    processor = HydraProcessor(tokenizer=plain)
    ids = {processor.image_token_id, processor.boi_token_id, processor.eoi_token_id}
    assert len(plain) == 6 and ids == {3, 4, 5}
    inputs = processor(text="red <image>", images=random_image(64, 64))
    assert inputs.input_ids[0, 0] == 2 and image_runs(inputs.input_ids[0], processor) == [64]


def test_processor_save_and_load(tmp_path, tokenizer):
    processor = HydraProcessor(HydraImageProcessor(size={"height": 32, "width": 48}, patch_size=4), tokenizer)
    processor.save_pretrained(tmp_path)
    reloaded = HydraProcessor.from_pretrained(tmp_path)

    assert isinstance(reloaded.image_processor, HydraImageProcessor)
    assert reloaded.image_processor.patch_size == 4
    assert reloaded.chat_template == processor.chat_template
    assert reloaded.image_token_id == processor.image_token_id
    kwargs = {"text": ["<image> a red circle", "yes"], "images": random_image(40, 70)}
    expected, actual = processor(**kwargs), reloaded(**kwargs)
    assert set(actual) == set(expected) == {"input_ids", "attention_mask", "pixel_values"}
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key])
    assert image_runs(actual.input_ids[0], reloaded) == [96]


def test_chat_template_renders_and_expands_images(processor):
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]},
        {"role": "user", "content": "is there a blue square?"},
    ]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>user\n<image>what is it?<|im_end|>\n"
        "<|im_start|>assistant\na red circle<|im_end|>\n"
        "<|im_start|>user\nis there a blue square?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    inputs = processor(text=prompt, images=random_image(64, 64))
    assert image_runs(inputs.input_ids[0], processor) == [64]
    assert processor.tokenizer.unk_token_id not in inputs.input_ids[0].tolist()

    conversation[0]["content"][0]["image"] = random_image(64, 64)
    tokenized = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    torch.testing.assert_close(tokenized.input_ids, inputs.input_ids)
    torch.testing.assert_close(tokenized.pixel_values, inputs.pixel_values)


def test_generation_prompt(processor):
    prompt = processor.build_generation_prompt("a red circle")
    assert prompt == "<|im_start|>user\na red circle<|im_end|>\n<|im_start|>assistant\n<begin_of_image>"
    assert processor.build_generation_prompt(["a red circle", ""])[0] == prompt

    inputs = processor(text=processor.build_generation_prompt(["a red circle", "three green triangles"]))
    assert inputs.input_ids[:, -1].tolist() == [processor.boi_token_id] * 2
    assert processor.image_token_id not in inputs.input_ids.tolist()

    conversation = [{"role": "user", "content": [{"type": "text", "text": "a red circle"}]}]
    templated = processor.apply_chat_template(conversation, add_generation_prompt=True)
    torch.testing.assert_close(
        processor(text=templated, generation_mode="image").input_ids, processor(text=prompt).input_ids
    )
    with pytest.raises(ValueError, match="generation_mode"):
        processor(text=prompt, generation_mode="video")


def test_postprocess_and_decode_forward(processor, tokenizer):
    pixel_values = processor(images=random_image(64, 64)).pixel_values
    np.testing.assert_array_equal(
        processor.postprocess(pixel_values, output_type="np"),
        processor.image_processor.postprocess(pixel_values, output_type="np"),
    )
    (image,) = processor.post_process_multimodal_output(pixel_values, generation_mode="image")
    assert isinstance(image, PIL.Image.Image)

    ids = processor(text=["a red circle", "is there a blue square?"]).input_ids
    assert processor.batch_decode(ids, skip_special_tokens=True) == ["a red circle", "is there a blue square ?"]
    assert processor.decode(ids[0], skip_special_tokens=True) == "a red circle"


# ---- tokenizer ----


def test_train_word_tokenizer_special_tokens(tmp_path, tokenizer):
    special = ["<pad>", "<unk>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>", "<image>", "<begin_of_image>"]
    special.append("<end_of_image>")
    ids = tokenizer.convert_tokens_to_ids(special)
    assert ids == list(range(len(special)))
    assert set(special) <= set(tokenizer.all_special_tokens)
    named = (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert named == (0, 1, 2, 3)
    assert (tokenizer.image_token_id, tokenizer.boi_token_id, tokenizer.eoi_token_id) == (6, 7, 8)

    encoded = tokenizer("<|im_start|>User\nHow many CIRCLES?<image><|im_end|>").input_ids
    assert tokenizer.convert_ids_to_tokens(encoded) == [
        "<|im_start|>", "user", "how", "many", "circles", "?", "<image>", "<|im_end|>"
    ]
    assert tokenizer("a purple hexagon").input_ids[1:] == [tokenizer.unk_token_id] * 2
    assert {"system", "user", "assistant"} <= set(tokenizer.get_vocab())

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.convert_tokens_to_ids(special) == ids
    assert reloaded.image_token == "<image>" and reloaded.eoi_token_id == 8
    assert reloaded("a red circle <image>").input_ids == tokenizer("a red circle <image>").input_ids


def test_train_word_tokenizer_vocab_size_and_extra_tokens():
    small = train_word_tokenizer(CORPUS, vocab_size=15, extra_special_tokens=["<mask>"])
    assert small.convert_tokens_to_ids("<mask>") == 9 and "<mask>" in small.all_special_tokens
    assert len(small) == 15 + 3  # the three chat roles are kept beyond the budget
    assert small("a")["input_ids"] != [small.unk_token_id]
