"""Fixtures of the checkpointing tests: a harness factory closed (pools checked whole) at teardown."""

from __future__ import annotations

import pytest

from tests.checkpointing.harness import SEGMENT, Harness


@pytest.fixture
def harness(make_pool):
    made: list[Harness] = []
    nbp = make_pool(256, SEGMENT)

    def factory(n: int, mode: str = "aligned", **kwargs) -> Harness:
        h = Harness(nbp, n, mode, **kwargs)
        made.append(h)
        return h

    yield factory
    for h in made:
        h.close()
