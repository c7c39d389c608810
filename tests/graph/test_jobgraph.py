"""Job graph construction and validation: what Flink refuses, refused with a clear message."""

from __future__ import annotations

import pickle

import pytest

from flinknet.core import assign_key_to_parallel_operator
from flinknet.graph import GraphValidationError, JobGraph, Partitioning
from flinknet.ids import JobID
from flinknet.partitioners import (
    BroadcastPartitioner,
    CustomPartitionerWrapper,
    ForwardPartitioner,
    GlobalPartitioner,
    KeyGroupStreamPartitioner,
    RebalancePartitioner,
    RescalePartitioner,
    ShufflePartitioner,
)
from flinknet.types import DistributionPattern, ResultPartitionType
from tests.graph import jobs


def _mod(key: int, n: int) -> int:
    return key % n


def test_vertices_edges_and_defaults():
    g = JobGraph("job")
    a = g.add_vertex("a", 2)
    b = g.add_vertex("b", 300)
    e = g.connect(a, "b", "key_groups", key_selector=jobs.key_of)
    assert g.vertices == [a, b] and g.edges == [e] and len(g) == 2 and g.number_of_subtasks == 302
    assert a.max_parallelism == 128 and b.max_parallelism == 512       # Flink's default
    assert e.distribution_pattern is DistributionPattern.ALL_TO_ALL
    assert e.result_partition_type is ResultPartitionType.PIPELINED_BOUNDED
    assert e.output_name == "b" and e.input_name == "a" and e.producer is a
    assert a.task_name(1) == "a (2/2)"
    with pytest.raises(IndexError):
        a.task_name(2)
    assert g.vertex("a") is a
    with pytest.raises(KeyError, match="has no vertex 'c'"):
        g.vertex("c")
    assert g.vertices_in_topological_order() == [a, b]
    assert JobGraph("x").job_id == JobGraph("x").job_id == JobID.from_name("x")
    assert "JobGraph('job', 2 vertices, 1 edges)" == repr(g)


def test_graph_pickles_with_module_level_selectors():
    g = jobs.three_stage()
    h = pickle.loads(pickle.dumps(g))
    assert [v.name for v in h.vertices] == ["source", "count", "sink"]
    assert h.job_id == g.job_id and h.edges[0].key_selector is jobs.key_of


@pytest.mark.parametrize("name,cls", [
    ("forward", ForwardPartitioner), ("rescale", RescalePartitioner), ("rebalance", RebalancePartitioner),
    ("shuffle", ShufflePartitioner), ("broadcast", BroadcastPartitioner), ("global", GlobalPartitioner),
    ("key_groups", KeyGroupStreamPartitioner), ("custom", CustomPartitionerWrapper)])
def test_each_partitioning_builds_its_selector(name, cls):
    g = JobGraph("p")
    kwargs = {"key_selector": jobs.key_of} if name == "key_groups" else \
        {"partitioner": _mod} if name == "custom" else {}
    e = g.connect(g.add_vertex("a", 2), g.add_vertex("b", 2, max_parallelism=16), name, **kwargs)
    selector = e.create_channel_selector()
    assert type(selector) is cls
    assert selector is not e.create_channel_selector()     # one per producer subtask
    if name == "key_groups":
        assert selector.max_parallelism == 16               # the consumer's key groups
    assert Partitioning.parse(name).is_pointwise == (name in ("forward", "rescale"))


def test_a_key_groups_edge_takes_a_slice_key_and_routes_as_its_callable():
    g = JobGraph("slice")
    e = g.connect(g.add_vertex("a", 2), g.add_vertex("b", 4, max_parallelism=32), "key_groups",
                  key_selector=slice(2, 6))
    h = pickle.loads(pickle.dumps(g))                       # shipped to processes and actors
    assert h.edges[0].key_selector == slice(2, 6)
    selector = e.create_channel_selector()
    selector.setup(4)
    records = [bytes([i, i, i * 7 % 256, i * 13 % 256, i, 0, 9]) for i in range(100)]
    assert type(selector) is KeyGroupStreamPartitioner
    assert selector.select_channels(records).tolist() == [
        assign_key_to_parallel_operator(r[2:6], 32, 4) for r in records]


def test_forward_between_different_parallelisms_is_refused_with_flinks_message():
    g = JobGraph("fwd")
    g.connect(g.add_vertex("up", 2), g.add_vertex("down", 3), "forward")
    with pytest.raises(GraphValidationError, match=r"Forward partitioning does not allow change of "
                                                   r"parallelism\. Upstream operation: up parallelism: 2, "
                                                   r"downstream operation: down parallelism: 3"):
        g.validate()


def test_cycles_are_refused_naming_the_cycle():
    g = JobGraph("cyclic")
    a, b, c, d = (g.add_vertex(n) for n in "abcd")
    g.connect(d, a)
    g.connect(a, b)
    g.connect(b, c)
    g.connect(c, a, name="back")
    with pytest.raises(GraphValidationError, match=r"The job graph is cyclic: (a → b → c → a|b → c → a → b|c → a → b → c)"):
        g.validate()
    s = JobGraph("self")
    x = s.add_vertex("x")
    s.connect(x, x)
    with pytest.raises(GraphValidationError, match="cyclic: x → x"):
        s.vertices_in_topological_order()


def test_bad_vertices():
    g = JobGraph("v")
    g.add_vertex("a")
    with pytest.raises(GraphValidationError, match="already has a vertex named 'a'"):
        g.add_vertex("a")
    with pytest.raises(GraphValidationError, match=r"parallelism of 'b' must be in \[1, 32768\]"):
        g.add_vertex("b", 0)
    with pytest.raises(GraphValidationError, match="must be smaller than or equal to its max parallelism"):
        g.add_vertex("c", 10, max_parallelism=8)
    with pytest.raises(GraphValidationError, match="max parallelism"):
        g.add_vertex("d", 1, max_parallelism=40000)
    with pytest.raises(TypeError):
        g.add_vertex("e", 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        g.add_vertex("f", True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not be empty"):
        g.add_vertex(" ")
    with pytest.raises(TypeError):
        g.add_vertex(3)  # type: ignore[arg-type]
    with pytest.raises(GraphValidationError, match="has no vertices"):
        JobGraph("empty").validate()
    with pytest.raises(TypeError, match="job_id"):
        JobGraph("j", job_id="x")  # type: ignore[arg-type]


def test_bad_edges():
    g = JobGraph("e")
    a, b = g.add_vertex("a", 2), g.add_vertex("b", 2)
    with pytest.raises(TypeError, match=r"needs a key_selector \(a callable or a slice\)"):
        g.connect(a, b, "key_groups")
    with pytest.raises(TypeError, match="needs a callable partitioner"):
        g.connect(a, b, "custom")
    with pytest.raises(TypeError, match="custom edge 'a' → 'b' needs a callable key_selector"):
        g.connect(a, b, "custom", partitioner=_mod, key_selector=slice(0, 8))
    with pytest.raises(ValueError, match="a key_selector has no use on a rebalance edge"):
        g.connect(a, b, "rebalance", key_selector=jobs.key_of)
    with pytest.raises(ValueError, match="a partitioner has no use on a key_groups edge"):
        g.connect(a, b, "key_groups", key_selector=jobs.key_of, partitioner=_mod)
    with pytest.raises(ValueError, match="unknown partitioning"):
        g.connect(a, b, "roundabout")
    with pytest.raises(TypeError, match="result_partition_type"):
        g.connect(a, b, result_partition_type="PIPELINED")  # type: ignore[arg-type]
    other = JobGraph("other").add_vertex("a")
    with pytest.raises(GraphValidationError, match="not part of job 'e'"):
        g.connect(other, b)
    g.connect(a, b)
    with pytest.raises(GraphValidationError, match="'b' already has an input named 'a': name the edges"):
        g.connect(a, b, "broadcast")
    g.connect(a, b, "broadcast", name="side")
    with pytest.raises(GraphValidationError, match="already has an input named 'side'"):
        g.connect(g.add_vertex("c", 1), b, name="side")
    assert [e.input_name for e in b.inputs] == ["a", "side"]
    assert [ds.consumer.output_name for ds in a.produced_data_sets] == ["b", "side"]
    # the two data sets of a → b get different ids
    assert a.produced_data_sets[0].id != a.produced_data_sets[1].id
