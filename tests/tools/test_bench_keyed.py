"""The keyed cross-process benchmark's machinery (not its speed: timings never gate tests)."""

from __future__ import annotations

import multiprocessing

import pytest

from flinknet.tools.bench import keyed


def test_key_batches_start_with_a_key():
    batches = keyed.key_batches(100, 10, seed=1)
    assert all(len(b) == keyed.BATCH for b in batches)
    recs = [r for b in batches for r in b]
    assert all(len(r) == 100 for r in recs)
    assert {int.from_bytes(r[:8], "little") for r in recs} == set(range(10))


def test_join_records_keeps_records_whole():
    from flinknet.tools.bench.peers import Deframer

    records = [bytes([i % 251]) * (1 + i % 300) for i in range(2000)]
    sent = []
    buf = bytearray(keyed.CHUNK)
    pos = keyed.join_records(records, lambda v: sent.append(bytes(v)), buf)
    sent.append(bytes(buf[:pos]))
    out = []
    for msg in sent:
        assert len(msg) <= keyed.CHUNK
        d = Deframer()
        d.space()[:len(msg)] = msg
        out += d.feed(len(msg))
        assert d.pending == 0            # every message holds whole records
    assert out == records


def test_flinknet_keyed_job_moves_every_record():
    # raises unless exactly 2n records arrived and every pool is whole
    assert keyed.run_keyed_flinknet(3000) > 0
    assert multiprocessing.active_children() == []


def test_pyzmq_keyed_job_moves_every_record():
    pytest.importorskip("zmq")
    assert keyed.run_keyed_pyzmq(3000) > 0
    assert multiprocessing.active_children() == []


def test_bench_keyed_row(monkeypatch):
    monkeypatch.setattr(keyed, "N_QUICK", 2500)
    rows = keyed.bench_keyed(quick=True, repeats=1)
    assert [(r.name, r.unit) for r in rows] == [("remote.keyed.2to1.100B", "ns/rec")]
    row = rows[0]
    assert row.value > 0
    if keyed.PYZMQ_JOINED in keyed._absent():
        assert row.baselines == {} and "pyzmq not installed" in row.note
    else:
        assert set(row.baselines) == {keyed.PYZMQ_JOINED} and row.baselines[keyed.PYZMQ_JOINED] > 0
        assert "pyzmq" in row.note
    assert multiprocessing.active_children() == []


def test_bench_keyed_without_pyzmq(monkeypatch):
    monkeypatch.setattr(keyed, "N_QUICK", 1000)
    monkeypatch.setattr(keyed, "_absent", lambda: {keyed.PYZMQ_JOINED: "pyzmq not installed"})
    (row,) = keyed.bench_keyed(quick=True, repeats=1)
    assert row.baselines == {} and "pyzmq not installed" in row.note
    assert multiprocessing.active_children() == []


def test_producer_failure_is_reported_and_processes_stopped():
    with pytest.raises(RuntimeError, match="producer failed"):
        keyed.run_keyed_flinknet(10, size=4)     # a record shorter than its key
    assert multiprocessing.active_children() == []
