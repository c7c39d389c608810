"""flinknet.tools.bench.peers moves what it says: every record, framed and deframed, counted (not
its speed: timings never gate tests)."""

from __future__ import annotations

import multiprocessing as mp
import struct

import pytest

from flinknet.tools.bench import peers

# (size, n): many small records, a few larger than a framing chunk
SMALL_AND_LARGE = [(100, 2000), (32768, 20)]


def _stream(records):
    return b"".join(struct.pack("<I", len(r)) + r for r in records)


def _deframe_pieces(stream, cuts):
    """Feed ``stream`` to a Deframer in pieces ending at ``cuts``; every record read out."""
    deframer = peers.Deframer()
    out = []
    pos = 0
    for cut in [*cuts, len(stream)]:
        while pos < cut:
            space = deframer.space()
            k = min(cut - pos, len(space))
            space[:k] = stream[pos:pos + k]
            pos += k
            out += deframer.feed(k)
    return out, deframer.pending


def test_frame_records_chunks_and_splits():
    for size in (0, 8, 100, 1000, peers.CHUNK - 5, peers.CHUNK - 4, peers.CHUNK, 3 * peers.CHUNK):
        record = peers.record_of(size)
        n = 3 if size >= peers.CHUNK - 5 else 9000
        chunks = []
        peers.frame_records(record, n, lambda view: chunks.append(bytes(view)))
        assert all(0 < len(c) <= peers.CHUNK for c in chunks)
        # every chunk but the last is full, unless fewer than 4 bytes (a length) were left
        assert all(len(c) > peers.CHUNK - 4 for c in chunks[:-1])
        stream = b"".join(chunks)
        assert stream == _stream([record] * n)
        cuts = [sum(map(len, chunks[:i])) for i in range(1, len(chunks))]
        out, pending = _deframe_pieces(stream, cuts)
        assert out == [record] * n and pending == 0
        assert all(type(r) is bytes for r in out)


def test_deframe_records_split_anywhere():
    records = [b"", b"a", bytes(range(7)), b"x" * 100, b"y" * 4095, b"z" * 4096, b"w" * 40_000,
               b"v" * 300_000, b"", b"tail"]
    stream = _stream(records)
    # pieces of every awkward size: a length split, a record split across several pieces
    cuts, pos = [], 0
    for step in [1, 2, 3, 5, 7, 4096, 33_000, 1, 200_000, 3]:
        pos += step
        if pos < len(stream):
            cuts.append(pos)
    out, pending = _deframe_pieces(stream, cuts)
    assert out == records and pending == 0
    # one byte at a time
    out, pending = _deframe_pieces(stream, range(1, len(stream)))
    assert out == records and pending == 0


def test_deframe_returns_the_first_incomplete_record():
    stream = _stream([b"abc", b"defg", b"0123456789"])
    view = memoryview(stream)
    out = []
    assert peers.deframe(view, 0, len(stream) - 3, out) == 7 + 8       # the third is cut short
    assert out == [b"abc", b"defg"]
    assert peers.deframe(view, 0, 2, out := []) == 0 and out == []     # not even a length
    big = _stream([b"b" * 5000, b"c" * 5000])
    assert peers.deframe(memoryview(big), 0, len(big) - 1, out := []) == 5004 and out == [b"b" * 5000]
    # a stream cut inside a record leaves it pending: a peer's check fails
    out, pending = _deframe_pieces(stream[:-1], [5])
    assert out == [b"abc", b"defg"] and pending == 13


def test_check_count():
    peers.check_count("p", 5, 5)
    with pytest.raises(peers.CountMismatchError, match="read 4 records, expected 5"):
        peers.check_count("p", 4, 5)


@pytest.mark.parametrize("size, n", SMALL_AND_LARGE)
def test_hand_written_loop_moves_every_record(size, n):
    # raises unless exactly n records were deframed, nothing left over
    assert peers.hand_written_loop(size, n, repeats=2) > 0
    assert mp.active_children() == []


@pytest.mark.parametrize("produce", [1999, 2001])
def test_hand_written_loop_detects_a_wrong_count(produce):
    with pytest.raises(peers.CountMismatchError):
        peers.hand_written_loop(100, 2000, produce=produce)
    assert mp.active_children() == []


@pytest.mark.parametrize("size, n", SMALL_AND_LARGE)
def test_pyzmq_framed_moves_every_record(size, n):
    pytest.importorskip("zmq")
    assert peers.pyzmq_framed(size, n, repeats=2) > 0
    assert mp.active_children() == []


def test_pyzmq_framed_detects_a_wrong_count():
    pytest.importorskip("zmq")
    with pytest.raises(peers.CountMismatchError):
        peers.pyzmq_framed(100, 2000, produce=1999)
    assert mp.active_children() == []


@pytest.mark.parametrize("consumer", ["to_pylist", "columnar"])
@pytest.mark.parametrize("size, n", SMALL_AND_LARGE)
def test_flight_moves_every_record(size, n, consumer):
    pytest.importorskip("pyarrow.flight")
    assert peers.flight_do_get(size, n, consumer, repeats=2) > 0
    # batches of 300 rows: several whole batches, then a short one
    assert peers.flight_do_get(size, n, consumer, rows_per_batch=300 if size < 1000 else 3) > 0
    assert mp.active_children() == []


def test_flight_batches_are_about_a_mebibyte():
    assert [peers.flight_rows_per_batch(s) for s in (8, 100, 1000, 32768, 4 << 20)] == [65536, 10485, 1048, 32, 1]


@pytest.mark.parametrize("consumer", ["to_pylist", "columnar"])
def test_flight_detects_a_wrong_count(consumer):
    pytest.importorskip("pyarrow.flight")
    with pytest.raises(peers.CountMismatchError):
        peers.flight_do_get(100, 2000, consumer, produce=2001)
    assert mp.active_children() == []


def test_missing_names_only_absent_peers():
    absent = peers.missing()
    assert set(absent) <= {"pyzmq framed", "flight"}
    try:
        import zmq  # noqa: F401
    except ImportError:
        assert absent["pyzmq framed"] == "pyzmq not installed"
    else:
        assert "pyzmq framed" not in absent


def test_remote_rows_baselines_without_the_optional_peers(monkeypatch):
    from flinknet.tools.bench import transport

    monkeypatch.setattr(peers, "missing", lambda: {"pyzmq framed": "pyzmq not installed",
                                                   "flight": "pyarrow not installed"})
    objects, columnar, missing = transport._peer_baselines(100, 2000, 2000, 1)
    assert list(objects) == ["hand-written loop"] and objects["hand-written loop"] > 0
    assert columnar == {}
    assert "pyzmq not installed" in missing["pyzmq framed"] and "pyarrow not installed" in missing["flight"]
    assert mp.active_children() == []


def test_remote_run_reports_cpu_per_side():
    from flinknet.tools.bench import transport

    stats: dict[str, float] = {}
    assert transport.run_remote(32768, 200, "batch", stats=stats) > 0
    assert stats["producer_cpu_s"] > 0 and stats["consumer_cpu_s"] > 0
    assert mp.active_children() == []


def test_busy_python_threads_spin_for_the_block_only():
    import threading

    def spinning():
        return [t for t in threading.enumerate() if t.name.startswith("busy-python-")]

    with peers.busy_python_threads(0):
        assert spinning() == []
    with peers.busy_python_threads(2):
        assert len(spinning()) == 2 and all(t.is_alive() for t in spinning())
    assert spinning() == []
    with pytest.raises(RuntimeError, match="inside"):
        with peers.busy_python_threads(1):
            raise RuntimeError("inside")
    assert spinning() == []                   # stopped and joined on an error too
    with pytest.raises(ValueError, match="count"):
        with peers.busy_python_threads(-1):
            pass


def test_peers_move_every_record_beside_a_busy_python_thread():
    assert peers.hand_written_loop(1000, 500, busy=1) > 0
    if "pyzmq framed" not in peers.missing():
        assert peers.pyzmq_framed(1000, 500, busy=1) > 0
    if "flight" not in peers.missing():
        assert peers.flight_do_get(1000, 500, "to_pylist", busy=1) > 0
    assert mp.active_children() == []


def test_busy_neighbour_row_has_its_baselines_and_names_missing_peers(monkeypatch):
    from flinknet.tools.bench import transport

    monkeypatch.setattr(peers, "missing", lambda: {"pyzmq framed": "pyzmq not installed",
                                                   "flight": "pyarrow not installed"})
    monkeypatch.setattr(transport, "BUSY_RECORDS", {False: 5000, True: 5000})
    row = transport.bench_busy_neighbour(quick=True, repeats=1)
    assert row.name == "remote.1000B.batch.busy_python_thread" and row.value > 0
    assert list(row.baselines) == [transport.NO_BUSY_THREAD, "hand-written loop, busy thread"]
    assert all(v > 0 for v in row.baselines.values())
    assert "pyzmq not installed" in row.note and "pyarrow not installed" in row.note
    given = transport.bench_busy_neighbour(quick=True, repeats=1, plain_ns=123.0)
    assert given.baselines[transport.NO_BUSY_THREAD] == 123.0      # the row's own figure, reused
    assert mp.active_children() == []
