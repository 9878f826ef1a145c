import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """Slow checks run only with HYDRA_RUN_SLOW=1 (see README)."""
    if os.environ.get("HYDRA_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set HYDRA_RUN_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield


def random_pixels(batch: int, size: int | tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Pixels in [-1, 1], the package-wide image convention."""
    height, width = (size, size) if isinstance(size, int) else size
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1
