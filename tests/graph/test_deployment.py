"""Deployment descriptors against the subpartition ranges Flink 2.3 itself computes
(tests/vectors/subpartition_ranges.json, built from a real DefaultExecutionGraph)."""

from __future__ import annotations

import pickle

import pytest

from flinknet.graph import (
    IndexRange,
    JobGraph,
    Partitioning,
    compute_vertex_input_info_for_all_to_all,
    compute_vertex_input_info_for_pointwise,
    deploy,
    number_of_subpartitions,
)
from flinknet.types import DistributionPattern
from tests.test_subpartition_ranges_vectors import load_subpartition_range_vectors

EDGES = load_subpartition_range_vectors()["edges"]
PARTITIONING = {"POINTWISE": "rescale", "ALL_TO_ALL": "rebalance", "ALL_TO_ALL_BROADCAST": "broadcast"}


def _id(edge: dict) -> str:
    return f"{edge['kind']}-{edge['producers']}x{edge['consumers']}"


@pytest.mark.parametrize("edge", EDGES, ids=_id)
def test_input_infos_and_subpartition_counts_match_flink(edge):
    p, c = edge["producers"], edge["consumers"]
    pattern = DistributionPattern.POINTWISE if edge["kind"] == "POINTWISE" else DistributionPattern.ALL_TO_ALL
    compute = (compute_vertex_input_info_for_pointwise if pattern is DistributionPattern.POINTWISE
               else compute_vertex_input_info_for_all_to_all)
    infos = compute(p, c)
    assert [i.subtask_index for i in infos] == list(range(c))
    assert [[[i.partition_index_range.start, i.partition_index_range.end],
             [i.subpartition_index_range.start, i.subpartition_index_range.end]] for i in infos] == \
        [[e["partitions"], e["subpartitions"]] for e in edge["inputs"]]
    assert [number_of_subpartitions(pattern, p, c, k) for k in range(p)] == edge["num_subpartitions"]


@pytest.mark.parametrize("edge", EDGES, ids=_id)
def test_descriptors_of_a_two_vertex_graph_match_flink(edge):
    p, c = edge["producers"], edge["consumers"]
    g = JobGraph("vectors")
    g.connect(g.add_vertex("up", p), g.add_vertex("down", c), PARTITIONING[edge["kind"]])
    tdds = deploy(g, lambda v, i: ("127.0.0.1", 1000 + i if v == "up" else 2000 + i))
    ups = [tdds[("up", k)] for k in range(p)]
    downs = [tdds[("down", i)] for i in range(c)]
    assert [u.produced_partitions[0].number_of_subpartitions for u in ups] == edge["num_subpartitions"]
    for i, d in enumerate(downs):
        (gate,) = d.input_gates
        want = edge["inputs"][i]
        assert [gate.partition_index_range.start, gate.partition_index_range.end] == want["partitions"]
        assert [gate.subpartition_index_range.start, gate.subpartition_index_range.end] == want["subpartitions"]
        # each channel names the producer's partition id and address
        specs = gate.channel_specs()
        producers = list(range(want["partitions"][0], want["partitions"][1] + 1))
        assert [s[0] for s in specs] == [ups[k].produced_partitions[0].partition_id for k in producers]
        assert [s[2] for s in specs] == [("127.0.0.1", 1000 + k) for k in producers]
        assert {s[1] for s in specs} == {want["subpartitions"][0]}
    # every (producer, subpartition) is read by exactly one channel
    read = [(s[0], s[1]) for d in downs for s in d.input_gates[0].channel_specs()]
    assert len(read) == len(set(read)) == sum(edge["num_subpartitions"])


def test_descriptors_are_stable_plain_data():
    def build() -> JobGraph:
        g = JobGraph("stable")
        g.connect(g.add_vertex("a", 3), g.add_vertex("b", 5), "rescale")
        return g

    one, two = deploy(build(), lambda v, i: ("h", 1)), deploy(build(), lambda v, i: ("h", 1))
    assert one == two                                    # two processes derive the same ids
    assert pickle.loads(pickle.dumps(one)) == one
    assert list(one) == [("a", 0), ("a", 1), ("a", 2)] + [("b", i) for i in range(5)]
    assert JobGraph("stable").job_id != JobGraph("renamed").job_id


def test_attempt_numbers_give_new_partition_ids():
    g = JobGraph("attempts")
    g.connect(g.add_vertex("a", 2), g.add_vertex("b", 2), "forward")
    first = deploy(g, lambda v, i: ("h", 1))
    second = deploy(g, lambda v, i: ("h", 1), attempt_numbers={("a", 1): 1})
    assert first[("a", 0)].produced_partitions == second[("a", 0)].produced_partitions
    assert first[("a", 1)].produced_partitions[0].partition_id != second[("a", 1)].produced_partitions[0].partition_id
    assert second[("b", 1)].input_gates[0].shuffle_descriptors[0].partition_id == \
        second[("a", 1)].produced_partitions[0].partition_id
    assert second[("a", 1)].attempt_number == 1
    with pytest.raises(ValueError, match="attempt number"):
        deploy(g, None, attempt_numbers={("a", 0): -1})


def test_without_locations_descriptors_plan_but_do_not_connect():
    g = JobGraph("plan")
    g.connect(g.add_vertex("a", 1), g.add_vertex("b", 1))
    tdds = deploy(g)
    with pytest.raises(ValueError, match="no producer location"):
        tdds[("b", 0)].input_gates[0].channel_specs()
    with pytest.raises(KeyError, match="no location for subtask 0 of 'a'"):
        deploy(g, {("b", 0): ("h", 1)})


def test_descriptor_names_and_ids():
    g = JobGraph("names")
    src = g.add_vertex("src", 2)
    g.connect(src, g.add_vertex("left", 2), "forward")
    g.connect(src, g.add_vertex("right", 1), "rebalance", name="side")
    tdds = deploy(g, lambda v, i: ("h", 1))
    s = tdds[("src", 1)]
    assert s.task_name == "src (2/2)"
    assert [p.edge_name for p in s.produced_partitions] == ["left", "side"]
    assert [p.consumer_vertex for p in s.produced_partitions] == ["left", "right"]
    assert [p.number_of_subpartitions for p in s.produced_partitions] == [1, 1]
    assert tdds[("left", 0)].input_gates[0].edge_name == "src"
    assert tdds[("right", 0)].input_gates[0].edge_name == "side"
    assert s.execution_attempt_id == s.produced_partitions[0].partition_id.producer_id
    assert s.max_parallelism == 128


def test_index_range():
    r = IndexRange(2, 4)
    assert list(r) == [2, 3, 4] and len(r) == 3 and 3 in r and 5 not in r and str(r) == "[2, 4]"
    with pytest.raises(ValueError):
        IndexRange(3, 2)
    with pytest.raises(ValueError):
        compute_vertex_input_info_for_pointwise(0, 1)
    with pytest.raises(IndexError):
        number_of_subpartitions(DistributionPattern.POINTWISE, 2, 3, 2)


def test_partitioning_patterns():
    assert Partitioning.parse("forward").distribution_pattern is DistributionPattern.POINTWISE
    assert Partitioning.parse("RESCALE").is_pointwise
    for name in ("rebalance", "shuffle", "broadcast", "global", "key_groups", "hash", "keyBy", "custom"):
        assert Partitioning.parse(name).distribution_pattern is DistributionPattern.ALL_TO_ALL
    with pytest.raises(ValueError, match="unknown partitioning 'zigzag'"):
        Partitioning.parse("zigzag")
    with pytest.raises(TypeError):
        Partitioning.parse(3)  # type: ignore[arg-type]
