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
