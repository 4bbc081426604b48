"""One torch thread for tests made of many tiny operations (training loops).

On a shared 2-core machine, two OpenMP threads per tiny matrix product spend most of their
time waiting for each other; one thread runs the same loop several times faster.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
