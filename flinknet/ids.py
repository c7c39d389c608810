"""Identifiers of partitions, producers and channels, with Flink's sizes and byte layouts (as
Flink's ``NettyMessage`` frames carry them).

Every identifier is an immutable, hashable value with ``to_bytes()`` (Flink's big-endian wire
layout) and ``from_bytes()``; ``generate()`` makes a random one (Flink's ``new AbstractID()``).

==============================================  ======================  =====
Flink                                           flinknet                bytes
==============================================  ======================  =====
AbstractID (lowerPart i64, upperPart i64)       :class:`AbstractID`     16
InputChannelID                                  :class:`InputChannelID`  16
IntermediateDataSetID / JobVertexID / JobID /    same names              16
ExecutionGraphID
IntermediateResultPartitionID                   same name               20
ExecutionVertexID                               same name               20
ExecutionAttemptID                              same name               40
ResultPartitionID (partition, producer)         same name               60
ResultSubpartitionIndexSet (start, end incl.)   same name               8
==============================================  ======================  =====
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from typing_extensions import Buffer as _BufferLike

__all__ = [
    "AbstractID",
    "InputChannelID",
    "JobID",
    "IntermediateDataSetID",
    "JobVertexID",
    "ExecutionGraphID",
    "OperatorID",
    "IntermediateResultPartitionID",
    "ExecutionVertexID",
    "ExecutionAttemptID",
    "ResultPartitionID",
    "ResultSubpartitionIndexSet",
]

_I32 = struct.Struct(">i")
_I64X2 = struct.Struct(">qq")


def _check_int32(name: str, value: int, minimum: int = -(1 << 31)) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not minimum <= value < (1 << 31):
        raise ValueError(f"{name} must be in [{minimum}, 2**31), got {value}")


def _exact(data: _BufferLike, size: int, what: str) -> bytes:
    data = bytes(data)
    if len(data) != size:
        raise ValueError(f"{what} takes exactly {size} bytes, got {len(data)}")
    return data


@dataclass(frozen=True, slots=True)
class AbstractID:
    """A 16-byte random identifier: ``lower_part`` i64 then ``upper_part`` i64, big-endian."""

    SIZE = 16
    data: bytes = field(default_factory=lambda: os.urandom(16))

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes) or len(self.data) != 16:
            raise ValueError(f"{type(self).__name__} takes exactly 16 bytes")

    @classmethod
    def generate(cls) -> Self:
        """A new random identifier."""
        return cls(os.urandom(16))

    @classmethod
    def from_name(cls, name: str) -> Self:
        """A stable identifier derived from ``name`` (BLAKE2b of the class name and ``name``):
        every process that names a data set, vertex or graph alike derives the same id."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        return cls(hashlib.blake2b(f"{cls.__name__}:{name}".encode(), digest_size=16).digest())

    @classmethod
    def from_parts(cls, lower_part: int, upper_part: int) -> Self:
        """The identifier of Flink's ``new AbstractID(lowerPart, upperPart)``."""
        return cls(_I64X2.pack(lower_part, upper_part))

    @classmethod
    def from_bytes(cls, data: _BufferLike) -> Self:
        """The identifier of Flink's 16-byte wire form."""
        return cls(_exact(data, 16, cls.__name__))

    @classmethod
    def from_hex_string(cls, text: str) -> Self:
        """Parse Flink's ``toString()`` form (32 hex digits)."""
        return cls.from_bytes(bytes.fromhex(text))

    @property
    def lower_part(self) -> int:
        """Flink's ``lowerPart`` (the first eight bytes, a signed big-endian long)."""
        lower: int = _I64X2.unpack(self.data)[0]
        return lower

    @property
    def upper_part(self) -> int:
        """Flink's ``upperPart`` (the last eight bytes, a signed big-endian long)."""
        upper: int = _I64X2.unpack(self.data)[1]
        return upper

    def to_bytes(self) -> bytes:
        return self.data

    def __str__(self) -> str:
        return self.data.hex()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.data.hex()})"


class JobID(AbstractID):
    """Identifies a job (:class:`flinknet.graph.JobGraph`): the ids of its vertices, data sets and
    partitions are derived from it."""


class InputChannelID(AbstractID):
    """Identifies one input channel on the receiving side (the receiver id of every frame)."""


class IntermediateDataSetID(AbstractID):
    """Identifies an intermediate data set (the output of one producing vertex)."""


class JobVertexID(AbstractID):
    """Identifies a job vertex."""


class ExecutionGraphID(AbstractID):
    """Identifies an execution graph."""


class OperatorID(AbstractID):
    """Identifies an operator (latency markers name their source operator by it)."""


@dataclass(frozen=True, slots=True)
class IntermediateResultPartitionID:
    """One partition of an intermediate data set: data set id (16) + partition number i32."""

    SIZE = 20
    intermediate_data_set_id: IntermediateDataSetID = field(default_factory=IntermediateDataSetID)
    partition_num: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.intermediate_data_set_id, IntermediateDataSetID):
            raise TypeError("intermediate_data_set_id must be an IntermediateDataSetID")
        _check_int32("partition_num", self.partition_num, 0)

    def to_bytes(self) -> bytes:
        return self.intermediate_data_set_id.data + _I32.pack(self.partition_num)

    @classmethod
    def from_bytes(cls, data: _BufferLike) -> Self:
        raw = _exact(data, 20, cls.__name__)
        return cls(IntermediateDataSetID(raw[:16]), _I32.unpack_from(raw, 16)[0])

    def __str__(self) -> str:
        return f"{self.intermediate_data_set_id}#{self.partition_num}"


@dataclass(frozen=True, slots=True)
class ExecutionVertexID:
    """One subtask of a job vertex: job vertex id (16) + subtask index i32."""

    SIZE = 20
    job_vertex_id: JobVertexID = field(default_factory=JobVertexID)
    subtask_index: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.job_vertex_id, JobVertexID):
            raise TypeError("job_vertex_id must be a JobVertexID")
        _check_int32("subtask_index", self.subtask_index, 0)

    def to_bytes(self) -> bytes:
        return self.job_vertex_id.data + _I32.pack(self.subtask_index)

    @classmethod
    def from_bytes(cls, data: _BufferLike) -> Self:
        raw = _exact(data, 20, cls.__name__)
        return cls(JobVertexID(raw[:16]), _I32.unpack_from(raw, 16)[0])

    def __str__(self) -> str:
        return f"{self.job_vertex_id}_{self.subtask_index}"


@dataclass(frozen=True, slots=True)
class ExecutionAttemptID:
    """One attempt of a subtask: execution graph id (16), execution vertex id (20), attempt i32."""

    SIZE = 40
    execution_graph_id: ExecutionGraphID = field(default_factory=ExecutionGraphID)
    execution_vertex_id: ExecutionVertexID = field(default_factory=ExecutionVertexID)
    attempt_number: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.execution_graph_id, ExecutionGraphID):
            raise TypeError("execution_graph_id must be an ExecutionGraphID")
        if not isinstance(self.execution_vertex_id, ExecutionVertexID):
            raise TypeError("execution_vertex_id must be an ExecutionVertexID")
        _check_int32("attempt_number", self.attempt_number, 0)

    def to_bytes(self) -> bytes:
        return (self.execution_graph_id.data + self.execution_vertex_id.to_bytes()
                + _I32.pack(self.attempt_number))

    @classmethod
    def from_bytes(cls, data: _BufferLike) -> Self:
        raw = _exact(data, 40, cls.__name__)
        return cls(ExecutionGraphID(raw[:16]), ExecutionVertexID.from_bytes(raw[16:36]),
                   _I32.unpack_from(raw, 36)[0])

    def __str__(self) -> str:
        return f"{self.execution_graph_id}_{self.execution_vertex_id}_{self.attempt_number}"


@dataclass(frozen=True, slots=True)
class ResultPartitionID:
    """A result partition as produced by one execution attempt (60 bytes on the wire).

    ``ResultPartitionID()`` generates a random one. Frameworks that address partitions by their
    own names derive a stable one with :meth:`of`: producer and consumer processes compute the
    same id from the same data set id (e.g. ``IntermediateDataSetID.from_name("orders")``),
    partition number and attempt, with nothing to ship between them.
    """

    SIZE = 60
    partition_id: IntermediateResultPartitionID = field(default_factory=IntermediateResultPartitionID)
    producer_id: ExecutionAttemptID = field(default_factory=ExecutionAttemptID)

    def __post_init__(self) -> None:
        if not isinstance(self.partition_id, IntermediateResultPartitionID):
            raise TypeError("partition_id must be an IntermediateResultPartitionID")
        if not isinstance(self.producer_id, ExecutionAttemptID):
            raise TypeError("producer_id must be an ExecutionAttemptID")

    @classmethod
    def of(cls, data_set_id: IntermediateDataSetID, partition_num: int,
           producer_id: ExecutionAttemptID | None = None, attempt_number: int = 0) -> Self:
        """The id of partition ``partition_num`` of ``data_set_id``, produced by ``producer_id``
        or, by default, by a producer derived from the same arguments: attempt
        ``attempt_number`` of subtask ``partition_num`` of a vertex and graph whose ids are the
        data set's. The same arguments give the same id in every process."""
        if not isinstance(data_set_id, IntermediateDataSetID):
            raise TypeError(f"data_set_id must be an IntermediateDataSetID, got {data_set_id!r}")
        if producer_id is None:
            producer_id = ExecutionAttemptID(
                ExecutionGraphID(data_set_id.data),
                ExecutionVertexID(JobVertexID(data_set_id.data), partition_num), attempt_number)
        elif attempt_number:
            raise ValueError("give either producer_id or attempt_number")
        return cls(IntermediateResultPartitionID(data_set_id, partition_num), producer_id)

    def to_bytes(self) -> bytes:
        return self.partition_id.to_bytes() + self.producer_id.to_bytes()

    @classmethod
    def from_bytes(cls, data: _BufferLike) -> Self:
        raw = _exact(data, 60, cls.__name__)
        return cls(IntermediateResultPartitionID.from_bytes(raw[:20]),
                   ExecutionAttemptID.from_bytes(raw[20:]))

    def __str__(self) -> str:
        return f"{self.partition_id}@{self.producer_id}"


@dataclass(frozen=True, slots=True, init=False)
class ResultSubpartitionIndexSet:
    """A contiguous range of subpartitions one channel consumes: ``start`` to ``end`` inclusive
    (``end`` None: ``start`` alone)."""

    SIZE = 8
    start: int
    end: int

    def __init__(self, start: int, end: int | None = None) -> None:
        if end is None:
            end = start
        _check_int32("start", start, 0)
        _check_int32("end", end, 0)
        if end < start:
            raise ValueError(f"end {end} < start {start}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    def __len__(self) -> int:
        return self.end - self.start + 1

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end + 1))

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and self.start <= index <= self.end

    def to_bytes(self) -> bytes:
        return _I32.pack(self.start) + _I32.pack(self.end)

    @classmethod
    def from_bytes(cls, data: _BufferLike) -> Self:
        raw = _exact(data, 8, cls.__name__)
        return cls(_I32.unpack_from(raw, 0)[0], _I32.unpack_from(raw, 4)[0])
