"""Flink 2.3's subpartition ranges for job edges (``vectors/subpartition_ranges.json``) hang together.

The vectors were computed by Flink's own classes (``ci/oracle/subpartition_ranges.sh``: a real
JobGraph built into a non-dynamic DefaultExecutionGraph) for every producer parallelism P and
consumer parallelism C in 1..8 and every edge kind (POINTWISE, ALL_TO_ALL, ALL_TO_ALL with
isBroadcast). For now this module checks only their internal consistency; the comparison with
``flinknet.graph`` uses :func:`load_subpartition_range_vectors`.
"""

from __future__ import annotations

import json
import pathlib
from collections import Counter
from typing import Any

import pytest

VECTOR_FILE = pathlib.Path(__file__).parent / "vectors" / "subpartition_ranges.json"
KINDS = ("POINTWISE", "ALL_TO_ALL", "ALL_TO_ALL_BROADCAST")


def load_subpartition_range_vectors(path: pathlib.Path = VECTOR_FILE) -> dict[str, Any]:
    """The vectors as parsed from JSON (a fresh copy on every call).

    Header keys: ``name``, ``generator``, ``flink_version``, ``flink_classes``,
    ``result_partition_type``, ``max_parallelism``, ``kinds``, ``fields`` (descriptions). ``edges``
    is a list, one dict per (kind, P, C) in that order (kind, then P, then C), with

    * ``kind``: ``"POINTWISE"``, ``"ALL_TO_ALL"`` or ``"ALL_TO_ALL_BROADCAST"``;
    * ``producers`` (P) and ``consumers`` (C);
    * ``num_subpartitions``: P ints, the subpartitions of producer subtask p's result partition;
    * ``partition_consumers``: P lists, the consumer subtasks of partition p (its ConsumerVertexGroup);
    * ``inputs``: C dicts, consumer subtask i's ``{"partitions": [first, last], "subpartitions":
      [first, last]}`` (inclusive ranges: it reads those subpartitions of each of those partitions);
    * or, instead of the three lists, ``refused`` (exception text) if Flink refused the edge.
    """
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


VECTORS = load_subpartition_range_vectors()
EDGES = [e for e in VECTORS["edges"] if "refused" not in e]


def _edge_id(edge: dict[str, Any]) -> str:
    return f"{edge['kind']}-{edge['producers']}x{edge['consumers']}"


def _partitions(entry: dict[str, Any]) -> range:
    first, last = entry["partitions"]
    return range(first, last + 1)


def _subpartitions(entry: dict[str, Any]) -> range:
    first, last = entry["subpartitions"]
    return range(first, last + 1)


def test_header_names_flink_and_the_generator():
    assert VECTORS["name"] == "subpartition_ranges"
    assert VECTORS["flink_version"] == "2.3.0"
    assert VECTORS["generator"].startswith("ci/oracle/SubpartitionRanges.java")
    assert VECTORS["result_partition_type"] == "PIPELINED_BOUNDED"
    assert tuple(VECTORS["kinds"]) == KINDS


def test_every_kind_and_parallelism_pair_appears_once_in_order():
    n = VECTORS["max_parallelism"]
    assert n == 8
    keys = [(e["kind"], e["producers"], e["consumers"]) for e in VECTORS["edges"]]
    assert keys == [(k, p, c) for k in KINDS for p in range(1, n + 1) for c in range(1, n + 1)]


def test_refused_edges_carry_only_the_reason():
    for edge in VECTORS["edges"]:
        if "refused" in edge:
            assert set(edge) == {"kind", "producers", "consumers", "refused"}, edge
            assert isinstance(edge["refused"], str) and edge["refused"]
    # Flink 2.3 builds every pointwise edge, whatever the two parallelisms
    assert len(EDGES) == len(VECTORS["edges"])


@pytest.mark.parametrize("edge", EDGES, ids=_edge_id)
def test_edge_is_consistent(edge):
    p, c = edge["producers"], edge["consumers"]
    num_subpartitions = edge["num_subpartitions"]
    partition_consumers = edge["partition_consumers"]
    inputs = edge["inputs"]
    assert len(num_subpartitions) == p and len(partition_consumers) == p and len(inputs) == c
    assert set(edge) == {"kind", "producers", "consumers", "num_subpartitions", "partition_consumers", "inputs"}

    # a non-dynamic graph gives each partition one subpartition per consumer of its vertex group
    for consumers, n in zip(partition_consumers, num_subpartitions):
        assert consumers == sorted(set(consumers)) and all(0 <= i < c for i in consumers)
        assert n == len(consumers) >= 1

    # ranges within bounds; each consumer reads one subpartition of each partition it reads
    for entry in inputs:
        partitions, subpartitions = _partitions(entry), _subpartitions(entry)
        assert len(partitions) >= 1 and 0 <= partitions.start and partitions.stop <= p
        assert len(subpartitions) == 1 and subpartitions.start >= 0
        for q in partitions:
            assert subpartitions.stop <= num_subpartitions[q], (entry, q)

    # every consumer subtask is in the consumer group of exactly the partitions it reads
    for i, entry in enumerate(inputs):
        assert {q for q in range(p) if i in partition_consumers[q]} == set(_partitions(entry)), i

    # every (producer, subpartition) pair is read by exactly one consumer subtask
    readers = Counter((q, s) for entry in inputs for q in _partitions(entry) for s in _subpartitions(entry))
    produced = {(q, s) for q in range(p) for s in range(num_subpartitions[q])}
    assert set(readers) == produced
    assert set(readers.values()) == {1}


@pytest.mark.parametrize("edge", [e for e in EDGES if e["kind"] == "POINTWISE"], ids=_edge_id)
def test_pointwise_partition_ranges_tile_the_producers(edge):
    p, c = edge["producers"], edge["consumers"]
    ranges = [_partitions(entry) for entry in edge["inputs"]]
    if p >= c:
        # each consumer reads a run of whole partitions (subpartition 0: each has one consumer)
        assert [q for r in ranges for q in r] == list(range(p))
        assert all(entry["subpartitions"] == [0, 0] for entry in edge["inputs"])
    else:
        # each consumer reads one partition; a partition's consumers are consecutive subtasks
        assert all(len(r) == 1 for r in ranges)
        assert [r.start for r in ranges] == sorted(r.start for r in ranges)
        assert sorted({r.start for r in ranges}) == list(range(p))


@pytest.mark.parametrize("edge", [e for e in EDGES if e["kind"] == "POINTWISE"], ids=_edge_id)
def test_pointwise_subpartition_is_the_consumer_index_modulo_its_group_size(edge):
    # Flink's computeConsumedSubpartitionRange(i, numConsumers, ...): i % numConsumers, not the
    # consumer's position in its group
    for i, entry in enumerate(edge["inputs"]):
        group = edge["partition_consumers"][entry["partitions"][0]]
        assert entry["subpartitions"] == [i % len(group)] * 2, i


def test_pointwise_subpartition_differs_from_the_position_in_the_group():
    # P=3, C=7: partition 1 feeds consumers 3 and 4, which read subpartitions 3 % 2 = 1 and 4 % 2 = 0
    edge = next(e for e in EDGES if (e["kind"], e["producers"], e["consumers"]) == ("POINTWISE", 3, 7))
    assert edge["partition_consumers"] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [entry["subpartitions"][0] for entry in edge["inputs"]] == [0, 1, 2, 1, 0, 1, 0]


def test_all_to_all_reads_subpartition_i_of_every_partition():
    for edge in EDGES:
        if edge["kind"] == "POINTWISE":
            continue
        p, c = edge["producers"], edge["consumers"]
        assert edge["num_subpartitions"] == [c] * p
        assert edge["partition_consumers"] == [list(range(c))] * p
        assert edge["inputs"] == [{"partitions": [0, p - 1], "subpartitions": [i, i]} for i in range(c)]


def test_broadcast_changes_nothing_in_a_non_dynamic_graph():
    by_key = {(e["kind"], e["producers"], e["consumers"]): e for e in EDGES}
    for (kind, p, c), edge in by_key.items():
        if kind == "ALL_TO_ALL_BROADCAST":
            plain = by_key[("ALL_TO_ALL", p, c)]
            assert {**edge, "kind": "ALL_TO_ALL"} == plain
