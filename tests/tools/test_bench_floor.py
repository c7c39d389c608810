"""flinknet.tools.bench.floor measures what it says: every message arrives, once, with a real delay."""

from __future__ import annotations

import multiprocessing as mp

from flinknet.tools.bench import floor


def test_relay_and_paced_socket_deliver_every_message_with_its_delay():
    for fn in (floor.relay_one_way_us, floor.paced_raw_one_way_us):
        delays = fn(n=500, rate=20_000)
        assert len(delays) == 500
        assert all(0 < d < 5_000_000 for d in delays)     # positive, and under 5 s
    assert mp.active_children() == []


def test_relay_bandwidth_moves_all_bytes():
    gbps = floor.relay_bandwidth_gbps(total=8 << 20, chunk=32 * 1024, window=4)
    assert gbps > 0
    assert mp.active_children() == []


def test_thread_handoff():
    hops = floor.thread_handoff_us(200)
    assert len(hops) == 200 and all(h > 0 for h in hops)
