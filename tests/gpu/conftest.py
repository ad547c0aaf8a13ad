"""GPU op tests: run by bench/gpu/device_check.sh on a machine with a CUDA GPU, never by the CPU
test command (pyproject's testpaths is tests/python). Without a GPU they fail, not skip."""

from __future__ import annotations

import pytest
import torch
from capi import Capi


@pytest.fixture(scope="session")
def capi() -> Capi:
    assert torch.cuda.is_available(), "tests/gpu needs a CUDA GPU (bench/gpu/device_check.sh)"
    return Capi()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
