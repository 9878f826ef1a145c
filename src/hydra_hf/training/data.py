"""Loading image/text training data with `datasets`: local image folders, parquet/arrow files, folders written by
`save_to_disk`, Hub dataset ids, optionally streamed. Images stay undecoded until the collator reads them, so one
unreadable file is skipped (and counted) instead of stopping the run."""

import io
from pathlib import Path

import datasets
import PIL.Image

__all__ = ["load_training_dataset", "decode_image"]

_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def load_training_dataset(
    source: str,
    split: str = "train",
    image_column: str | None = "image",
    streaming: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """`source` is a local folder of images (`imagefolder`, captions from `metadata.jsonl`), a data file or a glob of
    them, a folder written by `Dataset.save_to_disk`, or a Hub dataset id (online only)."""
    path = Path(source)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
        dataset = datasets.load_from_disk(source)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[split]
        if streaming:
            dataset = dataset.to_iterable_dataset()
    elif path.is_dir():
        dataset = datasets.load_dataset("imagefolder", data_dir=source, split=split, streaming=streaming)
    elif path.suffix in _FILE_BUILDERS or any(char in source for char in "*?"):
        builder = _FILE_BUILDERS.get(Path(source.replace("*", "x")).suffix)
        if builder is None:
            raise ValueError(f"cannot tell the format of {source!r}; expected one of {sorted(_FILE_BUILDERS)}")
        dataset = datasets.load_dataset(builder, data_files={split: source}, split=split, streaming=streaming)
    else:
        dataset = datasets.load_dataset(source, split=split, streaming=streaming)
    if image_column is not None:
        features = dataset.features
        if features is not None and image_column not in features:
            raise ValueError(f"image column {image_column!r} not in the dataset's columns {sorted(features)}")
        if features is not None and isinstance(features[image_column], datasets.Image):
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


def decode_image(value) -> PIL.Image.Image:
    """A PIL image from what a dataset holds: a PIL image, `{"bytes", "path"}` (undecoded Image feature), or a
    path. Raises on unreadable data; the collators catch that and skip the example."""
    if isinstance(value, PIL.Image.Image):
        image = value
    elif isinstance(value, dict) and value.get("bytes"):
        image = PIL.Image.open(io.BytesIO(value["bytes"]))
    elif isinstance(value, dict) and value.get("path"):
        image = PIL.Image.open(value["path"])
    elif isinstance(value, (str, Path)):
        image = PIL.Image.open(value)
    else:
        raise ValueError(f"cannot read an image from {type(value).__name__}")
    image.load()
    return image.convert("RGB")
