"""The scale benchmark's machinery and the properties it shows (real processes and sockets; no
timed assertions, only generous guards): too little network memory fails at once with Flink's
message, the per-subpartition cap bounds a hot key while cold channels deliver, the network
namespaces come and go."""

from __future__ import annotations

import multiprocessing as mp
import subprocess

import pytest

from flinknet.tools.bench import scale


def _netns_names() -> list[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


needs_netns = pytest.mark.skipif(not scale.hosts_available()[0], reason=scale.hosts_available()[1])


@pytest.mark.parametrize("side, memory, required", [
    ("consumer", "32mb", "required 2, but only 1 available"),
    ("producer", "16mb", "required 1001, but only 512 available")])
def test_too_few_buffers_fail_at_startup_with_flinks_message(side, memory, required):
    # raises ChildError if the failing side has not reported within the guard (a hang)
    res = scale.startup_too_few_buffers(side, n=1000, network_memory=memory, guard_s=30)
    assert res["type"] == "InsufficientNetworkBuffersError"
    assert res["message"].startswith("Insufficient number of network buffers: " + required)
    assert "taskmanager.memory.network.max" in res["message"]
    assert res["whole"], "the failed start-up kept network buffers"


def test_many_channels_move_every_record():
    # run_channels raises unless every record arrived and both pools are whole
    res = scale.run_channels(100, 50_000)
    assert res["records"] == 50_000 and res["producer_whole"] and res["consumer_whole"]
    assert res["producer_pool_min"] == 101 and res["producer_pool_max"] == 208
    assert res["consumer_required"] == 2 * 100 + 1


def test_exactly_the_minimum_budget_is_enough():
    p_mem, c_mem = scale._minimum_budget(200)
    res = scale.run_channels(200, 50_000, producer_options={"taskmanager.memory.network.max": p_mem},
                         consumer_options={"taskmanager.memory.network.max": c_mem})
    assert res["producer_network_buffers"] == 201 and res["consumer_network_buffers"] == 401


def test_the_cap_bounds_the_hot_subpartition_while_cold_channels_deliver():
    cap = 5
    res = scale.run_skew(n=16, hot_fraction=0.5, hot_rate=2e6, cap=cap, duration=1.5)
    assert res["hot_max"] <= cap                 # the hot subpartition never holds more than the cap
    assert res["waits_cap"] > 0                  # ... and reaching it is what held the producer
    assert res["wait_free_median"] > 0           # the pool had buffers left while it waited
    # cold channels kept delivering: records arrived in (nearly) every 200 ms of the run
    assert res["cold_records"] > 0 and res["cold_slices_with_data"] >= res["cold_slices"] // 2 > 0
    assert res["producer_whole"] and res["consumer_whole"]


def test_without_the_cap_the_hot_subpartition_takes_the_pool():
    res = scale.run_skew(n=16, hot_fraction=0.5, hot_rate=2e6, cap=10_000, duration=1.5)
    assert res["hot_max"] > 10
    assert res["waits_exhausted"] > 0 and res["waits_cap"] == 0
    assert res["producer_whole"] and res["consumer_whole"]


@needs_netns
def test_netns_topology_creates_and_removes_its_namespaces():
    topo = scale.NetnsTopology(rtt_ms=10.0, rate_mbit=100)
    try:
        topo.create()
        names = _netns_names()
        assert all(ns in names for ns in topo.namespaces)
        link = scale.measure_link(topo, pings=10)
        assert link["rtt_ms_min"] >= 9.0         # every packet went through the delay line
    finally:
        topo.cleanup()
    assert not set(topo.namespaces) & set(_netns_names())
    topo.cleanup()                               # safe to run twice
    assert not set(topo.namespaces) & set(_netns_names())


@needs_netns
def test_stale_namespaces_of_dead_processes_are_removed():
    p = mp.get_context("spawn").Process(target=int)
    p.start()
    p.join()
    name = f"{scale.NETNS_PREFIX}{p.pid}-1-link"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name in scale.NetnsTopology.remove_stale()
        assert name not in _netns_names()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@needs_netns
def test_transfer_between_namespaces_is_credit_limited():
    with scale.NetnsTopology(rtt_ms=10.0, rate_mbit=1000) as topo:
        # run_host_transfer raises unless every record arrived and both pools are whole
        res = scale.run_host_transfer(topo, exclusive=2, duration=1.0, warmup=0.3)
        namespaces = topo.namespaces
    assert res["credits"] == 3 and res["mb_per_s"] > 0
    assert not set(namespaces) & set(_netns_names())
