"""flinknet.tools.bench.floor measures what it says: every message arrives, once, with a real delay."""

from __future__ import annotations

import multiprocessing as mp

import pytest

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


def test_native_relay_delivers_every_record_with_its_delay():
    delays = floor.native_relay_one_way_us(n=500, rate=20_000)
    assert len(delays) == 500
    assert all(0 < d < 5_000_000 for d in delays)
    assert mp.active_children() == []


def test_native_relay_bandwidth_moves_all_bytes_through_a_small_window():
    # window 2 with odd-sized records: slots run out on both sides and partial writes/reads occur.
    for chunk, window in ((32 * 1024, 2), (1000, 3), (65536 + 17, 1)):
        assert floor.native_relay_bandwidth_gbps(total=4 << 20, chunk=chunk, window=window) > 0
    assert mp.active_children() == []


def test_native_relay_rejects_bad_arguments():
    import socket

    import pytest

    from flinknet.tools.bench import _floorkit

    a, b = socket.socketpair()
    with a, b:
        for args in ((a.fileno(), 1, 4, 1), (a.fileno(), 1, 64, 0), (a.fileno(), -1, 64, 1)):
            with pytest.raises(ValueError):
                _floorkit.relay_send(*args)
            with pytest.raises(ValueError):
                _floorkit.relay_receive(*args)


def test_native_relay_receive_counts_a_stream_cut_short():
    # A sender that stops after 3 records and a half: the receiver returns the 3 whole records.
    import socket
    import struct

    from flinknet.tools.bench import _floorkit

    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"".join(struct.pack("<q", i) + bytes(56) for i in range(3)) + bytes(30))
        a.shutdown(socket.SHUT_WR)
        received, _, delays = _floorkit.relay_receive(b.fileno(), 10, 64, 2, True)
    assert received == 3 and len(delays) == 3


def test_native_credit_relay_moves_all_bytes_through_a_small_window():
    # credit mode: the sender never holds more than the receiver's window; odd sizes give partial
    # writes and reads, window 1 a credit round per record
    for chunk, window in ((32 * 1024, 10), (1000, 3), (65536 + 17, 1)):
        assert floor.native_credit_relay_bandwidth_gbps(total=4 << 20, chunk=chunk, window=window) > 0
    assert mp.active_children() == []


def test_native_credit_relay_receiver_returns_one_credit_per_record():
    # A Python sender that honours the credit: it sends `window` records, then one more per
    # credit read back. The receiver must give every slot back (credits sum to the records) and
    # never be sent more than its window (it has no slot for more: the transfer would stall).
    import socket
    import struct
    import threading

    from flinknet.tools.bench import _floorkit

    window, count, chunk = 3, 200, 64
    credits: list[int] = []
    a, b = socket.socketpair()

    def take(buf: bytes) -> bytes:
        while len(buf) >= 4:
            credits.append(struct.unpack_from("<I", buf)[0])
            buf = buf[4:]
        return buf

    def sender() -> None:
        credit, sent, buf = window, 0, b""
        while sent < count:
            while credit and sent < count:
                a.sendall(struct.pack("<q", 0) + bytes(chunk - 8))
                sent += 1
                credit -= 1
            if sent < count:
                buf += a.recv(4096)
                before = len(credits)
                buf = take(buf)
                credit += sum(credits[before:])
        a.shutdown(socket.SHUT_WR)
        while data := a.recv(4096):
            buf = take(buf + data)

    with a, b:
        t = threading.Thread(target=sender)
        t.start()
        received, _, _ = _floorkit.relay_receive(b.fileno(), count, chunk, window, False, True)
        b.shutdown(socket.SHUT_WR)
        t.join(30)
    assert received == count
    assert sum(credits) == count and all(0 < c <= window for c in credits)


def test_native_credit_relay_rejects_negative_credit():
    import socket

    import pytest

    from flinknet.tools.bench import _floorkit

    a, b = socket.socketpair()
    with a, b, pytest.raises(ValueError):
        _floorkit.relay_send(a.fileno(), 1, 64, 1, 0.0, -1)


def test_floor_baselines_join_the_rows_they_bound_and_skip_absent_ones():
    from flinknet.tools.bench.report import Row

    rows = [Row("remote.32768B.batch", "ns/rec", 20_000.0), Row("remote.100B.batch", "ns/rec", 90.0),
            Row("latency.100B.timeout0.p50", "us", 60.0), Row("latency.100B.timeout0.p99", "us", 130.0)]
    floor.add_floor_baselines(rows, total=8 << 20, latency_records=500)
    big, small, p50, p99 = rows
    assert big.baselines[floor.NATIVE_FLOOR] > 0 and big.baselines[floor.CREDIT_FLOOR] > 0
    assert small.baselines == {}
    assert 0 < p50.baselines[floor.NATIVE_FLOOR_P50] <= p99.baselines[floor.NATIVE_FLOOR_P99]
    untouched = [Row("remote.1000B.batch", "ns/rec", 700.0)]
    floor.add_floor_baselines(untouched, total=8 << 20, latency_records=500)
    assert untouched[0].baselines == {}


def test_floor_pairs_alternate_and_take_the_median_of_the_pairs_ratios(monkeypatch):
    # stand-ins whose load changes from pair to pair: the pairs' ratios are what the rows show
    calls: list[str] = []
    ours_ns = iter([200.0, 300.0, 260.0])          # ns per 32 KiB record, pair by pair
    plain_ns = iter([100.0, 250.0, 200.0])         # ratios 2.0, 1.2, 1.3 -> median 1.3
    lat = iter([(50.0, 150.0), (80.0, 100.0), (60.0, 300.0)])
    floor_lat = iter([(40.0, 100.0), (40.0, 100.0), (60.0, 100.0)])   # p50 1.25, 2.0, 1.0

    def fake_run_remote(size, n, api, **kw):
        calls.append(api)
        if api == "latency":
            p50, p99 = next(lat)
            return [p50] * 98 + [p99] * 2 + [p50] * 11     # 10 % dropped: p99 still p99
        return next(ours_ns) * n / 1e9

    def fake_plain(total, chunk):
        calls.append("plain")
        return chunk / next(plain_ns)

    def fake_credit(total, chunk):
        calls.append("credit")
        return chunk / 100.0

    def fake_one_way(n):
        calls.append("floor-latency")
        p50, p99 = next(floor_lat)
        return [p50] * 98 + [p99] * 2 + [p50] * 11

    monkeypatch.setattr(floor, "run_remote", fake_run_remote)
    monkeypatch.setattr(floor, "native_relay_bandwidth_gbps", fake_plain)
    monkeypatch.setattr(floor, "native_credit_relay_bandwidth_gbps", fake_credit)
    monkeypatch.setattr(floor, "native_relay_one_way_us", fake_one_way)
    rows = floor.bench_floor_pairs(pairs=3, records=16, latency_records=111, small_records={})
    forward = ["batch", "plain", "credit", "latency", "floor-latency"]
    assert calls == forward + forward[::-1] + forward
    bw, p50, p99 = rows
    assert [r.name for r in rows] == ["remote.32768B.batch.floor_pairs",
                                      "latency.100B.timeout0.floor_pairs.p50",
                                      "latency.100B.timeout0.floor_pairs.p99"]
    assert bw.value == pytest.approx(260.0)
    assert bw.ratio(floor.NATIVE_FLOOR) == pytest.approx(1.3)
    assert bw.ratio(floor.CREDIT_FLOOR) == pytest.approx(2.6)       # 2.0, 3.0, 2.6
    assert "median of 3 alternated pairs 1.30x / 2.60x, pairs 1.20-2.00x / 2.00-3.00x" in bw.note
    assert p50.value == pytest.approx(60.0) and p50.ratio(floor.NATIVE_FLOOR_P50) == pytest.approx(1.25)
    assert p99.value == pytest.approx(150.0) and p99.ratio(floor.NATIVE_FLOOR_P99) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="pairs"):
        floor.bench_floor_pairs(pairs=0)


def test_floor_pairs_run_for_real():
    rows = floor.bench_floor_pairs(pairs=1, records=64, latency_records=300,
                                   small_records={(1000, "batch"): 3000, (100, "numpy"): 5000,
                                                  (100, "batch"): 4000})
    assert [r.name for r in rows][3:] == ["remote.1000B.batch.floor_pairs",
                                          "remote.100B.numpy.floor_pairs",
                                          "remote.100B.batch.floor_pairs"]
    assert [r.unit for r in rows] == ["ns/rec", "us", "us", "ns/rec", "ns/rec", "ns/rec"]
    assert all(r.value > 0 and all(b > 0 for b in r.baselines.values()) for r in rows)
    assert all(set(r.baselines) == {floor.NATIVE_FLOOR, floor.CREDIT_FLOOR} for r in rows[3:])
    assert "5000 records" in rows[4].note
    assert mp.active_children() == []


def test_default_floor_pairs_cover_the_small_record_targets():
    # the 1000 B and 100 B targets (lists, and numpy at 100 B) each get a floor row
    assert set(floor.RECORD_FLOOR_ROWS) == {(1000, "batch"), (100, "batch"), (100, "numpy")}


@pytest.mark.parametrize("credits", [False, True])
@pytest.mark.parametrize("size, count", [(100, 20_000), (1000, 3_001), (32_764, 5), (1, 1)])
def test_native_record_relay_moves_every_record(size, count, credits):
    # a last slot holding fewer records than the others, a record that just fits a slot
    assert floor.native_relay_records_ns(size, count, window=3, credits=credits) > 0
    assert mp.active_children() == []


def _send_and_close(sock, data: bytes) -> None:
    import socket

    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def test_native_record_relay_rejects_bad_arguments_and_a_corrupt_stream():
    import socket
    import struct
    import threading

    from flinknet.tools.bench import _floorkit

    a, b = socket.socketpair()
    with a, b:
        for kwargs in ({"record": -1}, {"record": 61}, {"record": 8, "rate": 1.0}):
            with pytest.raises(ValueError, match="record"):
                _floorkit.relay_send(a.fileno(), 1, 64, 1, **kwargs)
        with pytest.raises(ValueError, match="record"):
            _floorkit.relay_receive(a.fileno(), 1, 64, 1, record=61)
        with pytest.raises(ValueError, match="record"):
            _floorkit.relay_receive(a.fileno(), 1, 64, 1, stamps=True, record=8)
    # 64-byte slots of five 8-byte records: a first record that says 9 bytes where 8 were
    # agreed, and a second slot where the 5 agreed records fit one
    good = (struct.pack("<I", 8) + bytes(8)) * 5 + bytes(4)
    for stream, count in ((struct.pack("<I", 9) + bytes(60), 6), (good * 2, 5)):
        a, b = socket.socketpair()
        with a, b:
            writer = threading.Thread(target=_send_and_close, args=(a, stream))
            writer.start()
            try:
                with pytest.raises(ValueError, match="corrupt"):
                    _floorkit.relay_receive(b.fileno(), count, 64, 2, record=8)
            finally:
                writer.join()
