"""Partition ids a producer and a consumer derive on their own agree (issue 16): ``of()`` no
longer picks a random producer attempt, and ``from_name`` turns a framework's names into ids."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flinknet.ids import (
    ExecutionAttemptID,
    IntermediateDataSetID,
    JobVertexID,
    ResultPartitionID,
)


def test_of_is_stable_across_processes():
    code = ("from flinknet.ids import IntermediateDataSetID as D, ResultPartitionID as R;"
            "print(R.of(D.from_name('orders'), 3).to_bytes().hex())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mine = ResultPartitionID.of(IntermediateDataSetID.from_name("orders"), 3)
    assert other.stdout.strip() == mine.to_bytes().hex()
    assert ResultPartitionID.from_bytes(mine.to_bytes()) == mine


def test_of_distinguishes_what_it_should():
    ds = IntermediateDataSetID.from_name("orders")
    ids = {ResultPartitionID.of(ds, n, attempt_number=a) for n in range(4) for a in range(3)}
    ids.add(ResultPartitionID.of(IntermediateDataSetID.from_name("payments"), 0))
    assert len(ids) == 13
    p = ResultPartitionID.of(ds, 2, attempt_number=1)
    assert p.partition_id.partition_num == 2
    assert p.producer_id.execution_vertex_id.subtask_index == 2 and p.producer_id.attempt_number == 1
    producer = ExecutionAttemptID()
    assert ResultPartitionID.of(ds, 0, producer).producer_id == producer


def test_from_name_is_per_type_and_checked():
    assert IntermediateDataSetID.from_name("x") == IntermediateDataSetID.from_name("x")
    assert IntermediateDataSetID.from_name("x").data != JobVertexID.from_name("x").data
    with pytest.raises(TypeError):
        IntermediateDataSetID.from_name(b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="data_set_id"):
        ResultPartitionID.of("orders", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="either"):
        ResultPartitionID.of(IntermediateDataSetID(), 0, ExecutionAttemptID(), attempt_number=1)
    with pytest.raises(ValueError):
        ResultPartitionID.of(IntermediateDataSetID(), -1)
