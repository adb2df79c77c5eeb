"""Search trials and sweeps compare runs bit for bit: one torch thread for the whole module (see ``torch_threads``)."""

from __future__ import annotations

import pytest

from tests.support.fixtures import torch_threads


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    with torch_threads(1):
        yield
