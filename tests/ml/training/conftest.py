"""One torch thread: the machine is shared, and subprocess/in-process runs must match bit for bit."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
