"""The measuring sections, in report order. Each module has TITLE, `cases(opts)`, `run_case(case, opts)` and
`table(results, opts)`; the memory section is built from every case's peak RSS. Modules load on first use, so a
case's process imports only its own section (training pulls in `Trainer`, `datasets` and `accelerate`)."""

import importlib
from types import ModuleType

SECTIONS = {
    "tokenizer": "tokenizer",
    "text-to-image": "text_to_image",
    "understanding": "understanding",
    "training": "training",
}


def section_module(name: str) -> ModuleType:
    return importlib.import_module(f"{__package__}.{SECTIONS[name]}")
