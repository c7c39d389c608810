"""The TCP transport with real sockets on loopback and real processes."""

from __future__ import annotations

import multiprocessing as mp
import socket
import threading
import time

import pytest

from flinknet._core import protocol as P
from flinknet._core.buffer import DataType
from flinknet.consumer import RecordReader
from flinknet.environment import NetworkEnvironment
from flinknet.errors import PartitionNotFoundError
from flinknet.ids import ResultPartitionID
from flinknet.transport import RemoteTransportError
from flinknet.transport.handshake import HandshakeConfig, client_handshake
from flinknet.writer import RecordWriter
from tests.transport import procs

SMALL = {"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "2mb"}
CTX = mp.get_context("spawn")


def _records_by_producer(records):
    out = {}
    for r in records:
        prod, seq = procs.REC.unpack_from(r)
        out.setdefault(prod, []).append((seq, r))
    return out


def _check_in_order(got, producer, expected_seqs, seg):
    seqs = [s for s, _ in got]
    assert seqs == expected_seqs
    for s, r in got:
        assert r == procs.record(producer, s, procs.record_size(s, seg))


def test_two_environments_in_one_process():
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        p = prod.create_result_partition(2)
        n = 3000
        seg = prod.config.segment_size

        def produce():
            with RecordWriter(p, timeout=5) as w:
                for i in range(n):
                    w.emit(procs.record(0, i, procs.record_size(i, seg)), i % 2)
            p.finish()
            p.close()

        gates = [cons.create_input_gate([(p.partition_id, sp, prod.address)]) for sp in range(2)]
        outs = [[], []]

        def consume(sp):
            with RecordReader(gates[sp]) as r:
                outs[sp].extend(r)

        # Both subpartitions are read at once: reading one after the other would deadlock (the
        # producer blocks on the unread one, as in Flink).
        threads = [threading.Thread(target=produce)] + [
            threading.Thread(target=consume, args=(sp,)) for sp in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
            assert not t.is_alive()
        for sp, g in enumerate(gates):
            got = _records_by_producer(outs[sp])
            _check_in_order(got[0], 0, list(range(sp, n, 2)), seg)
            g.close()
        assert sum(map(len, outs)) == n
        # one shared connection carried both channels
        deadline = time.monotonic() + 5
        while (not prod.network_buffer_pool.is_whole or not cons.network_buffer_pool.is_whole
               or prod.partition_manager.get_unreleased_partitions()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert prod.network_buffer_pool.is_whole and cons.network_buffer_pool.is_whole
        assert not prod.partition_manager.get_unreleased_partitions()


@pytest.mark.parametrize("native_io", [True, False])
def test_reader_gil_hold_reaches_the_doorbell_of_a_gate_fed_natively(native_io):
    """flinknet.network.reader-gil-hold: a gate of remote channels takes it; its doorbell keeps
    it once every channel is on a native connection (not on the Python I/O thread, whose data
    needs the GIL to arrive); a gate with a local channel never does."""
    opts = {**SMALL, "flinknet.network.reader-gil-hold": "2 ms", "flinknet.network.native-io": native_io}
    with NetworkEnvironment(opts) as prod, NetworkEnvironment(opts) as cons:
        p = prod.create_result_partition(1)
        n = 2000
        seg = prod.config.segment_size
        gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
        assert gate.reader_gil_hold == 0.002
        local = prod.create_input_gate([(prod.create_result_partition(1).partition_id, 0, None)])
        assert local.reader_gil_hold == 0.0
        local.close()

        def produce():
            with RecordWriter(p, timeout=5) as w:
                for i in range(n):
                    w.emit(procs.record(0, i, procs.record_size(i, seg)), 0)
            p.finish()
            p.close()

        producer = threading.Thread(target=produce)
        producer.start()
        with RecordReader(gate) as r:
            got = list(r)
        producer.join(60)
        assert len(got) == n
        assert gate.signal.gil_hold == (0.002 if native_io else 0.0)
        gate.close()
        with pytest.raises(ValueError, match="reader_gil_hold"):
            gate.reader_gil_hold = 0.5
        with pytest.raises(ValueError, match="reader_gil_hold"):
            gate.reader_gil_hold = True


def _start_producer(index, nsub, n, options=SMALL, mode="finish", delay=0.0, edge="rebalance"):
    q_out, q_in = CTX.Queue(), CTX.Queue()
    proc = CTX.Process(target=procs.producer,
                       args=(q_out, q_in, index, nsub, n, options, mode, delay, edge))
    proc.start()
    pid, addr = q_out.get(timeout=60)
    return proc, q_out, q_in, ResultPartitionID.from_bytes(pid), addr


def _expected_seqs(edge, sp, n):
    if edge == "rebalance":
        return list(range(sp, n, 2))
    if edge == "broadcast":
        return list(range(n))
    from flinknet._core.keygroups import assign_key_to_parallel_operator, compute_default_max_parallelism
    mp_ = compute_default_max_parallelism(2)
    return [i for i in range(n) if assign_key_to_parallel_operator(i % 1000, mp_, 2) == sp]


@pytest.mark.parametrize("edge", ["rebalance", "keyed", "broadcast"])
def test_processes_all_to_all_exactly_once_in_order(edge):
    n = 4000 if edge != "broadcast" else 2000
    producers = [_start_producer(i, 2, n, edge=edge) for i in range(2)]
    try:
        with NetworkEnvironment(SMALL) as env:
            seg = env.config.segment_size
            gates = [env.create_input_gate([(pid, sp, addr) for (_, _, _, pid, addr) in producers])
                     for sp in range(2)]
            outs = [[] for _ in gates]

            def consume(i):
                with RecordReader(gates[i]) as r:
                    outs[i].extend(r)

            threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
                assert not t.is_alive()
            for sp, out in enumerate(outs):
                by = _records_by_producer(out)
                for prod in range(2):
                    _check_in_order(by[prod], prod, _expected_seqs(edge, sp, n), seg)
            for g in gates:
                g.close()
            assert env.connection_manager.num_connections <= 2
        for proc, q_out, q_in, _, _ in producers:
            q_in.put(1)
            assert q_out.get(timeout=30) == ("whole", True, True)
            proc.join(30)
            assert proc.exitcode == 0
    finally:
        for proc, *_ in producers:
            if proc.is_alive():
                proc.kill()
                proc.join()


def test_partition_requested_before_it_exists():
    proc, q_out, q_in, pid, addr = _start_producer(0, 1, 500, delay=0.5)
    try:
        with NetworkEnvironment(SMALL) as env:
            gate = env.create_input_gate([(pid, 0, addr)])
            with RecordReader(gate) as r:
                assert len(list(r)) == 500
            gate.close()
        q_in.put(1)
        assert q_out.get(timeout=30)[0] == "whole"
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()


def test_partition_never_registered_fails_with_partition_not_found():
    opts = dict(SMALL, **{"taskmanager.network.partition-request-timeout": "200 ms",
                          "taskmanager.network.request-backoff.initial": "20 ms",
                          "taskmanager.network.request-backoff.max": "40 ms"})
    with NetworkEnvironment(opts) as prod, NetworkEnvironment(opts) as cons:
        gate = cons.create_input_gate([(ResultPartitionID(), 0, prod.address)])
        with pytest.raises(PartitionNotFoundError):
            gate.get_next(timeout=20)
        gate.close()
        assert cons.network_buffer_pool.is_whole


def test_producer_failure_fails_only_its_channel():
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        bad = prod.create_result_partition(1)
        good = prod.create_result_partition(1)
        gate_bad = cons.create_input_gate([(bad.partition_id, 0, prod.address)])
        gate_good = cons.create_input_gate([(good.partition_id, 0, prod.address)], gate_index=1)
        with RecordWriter(good, timeout=0) as w:
            w.emit(b"fine", 0)
        with RecordWriter(bad, timeout=0) as w:
            w.emit(b"first", 0)
        first = gate_bad.get_next(timeout=10)  # the channel is connected and reading
        assert first.buffer.to_bytes() == b"\x00\x00\x00\x05first"
        first.buffer.recycle()
        bad.fail(ValueError("producer failed on purpose"))
        with pytest.raises(RemoteTransportError, match="producer failed on purpose"):
            while True:
                b = gate_bad.get_next(timeout=10)
                assert b is not None
                if b.buffer is not None:
                    b.buffer.recycle()
        boe = gate_good.get_next(timeout=10)
        assert boe.buffer is not None and boe.buffer.to_bytes() == b"\x00\x00\x00\x04fine"
        boe.buffer.recycle()
        good.finish()
        good.close()
        gate_bad.close()
        gate_good.close()


def test_producer_process_killed_mid_stream():
    proc, q_out, q_in, pid, addr = _start_producer(0, 1, 10_000, mode="kill")
    try:
        with NetworkEnvironment(SMALL) as env:
            gate = env.create_input_gate([(pid, 0, addr)])
            t0 = time.monotonic()
            with pytest.raises(RemoteTransportError) as info:
                with RecordReader(gate) as r:
                    for _ in r:
                        pass
            assert time.monotonic() - t0 < 30
            assert str(addr[1]) in str(info.value)
            gate.close()
            deadline = time.monotonic() + 5
            while not env.network_buffer_pool.is_whole and time.monotonic() < deadline:
                time.sleep(0.01)
            assert env.network_buffer_pool.is_whole
        proc.join(30)
        assert proc.exitcode == 3
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()


@pytest.mark.parametrize("garbage", [
    b"\x00\x00\x00\x1d\xde\xad\xbe\xef" + b"\x06" + b"\x00" * 20,              # wrong magic
    b"\x7f\xff\xff\xff\xba\xdc\x0f\xfe\x02",                                    # huge length
    b"\xff\xff\xff\xfe\xba\xdc\x0f\xfe\x02",                                    # negative length
    b"\x00\x00\x00\x09\xba\xdc\x0f\xfe\x63",                                    # unknown id
    P.encode_add_credit(1, b"\x01" * 16),                                      # unknown receiver
    b"\x00\x00\x00\x1d\xba\xdc\x0f\xfe\x06\x00\x00\x00\x00" + b"\x01" * 16,     # zero credit
    bytes(range(256)) * 4,
])
def test_bad_input_closes_only_that_connection(garbage):
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        p = prod.create_result_partition(1)
        gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
        with socket.create_connection(prod.address, timeout=10) as s:
            s = client_handshake(s, HandshakeConfig(), prod.address)   # past the handshake
            s.sendall(garbage)
            s.settimeout(10)
            data = b""
            try:
                while chunk := s.recv(4096):
                    data += chunk
            except ConnectionResetError:
                pass
        if data:  # a fatal ErrorResponse (no receiver) before the close
            (msg,) = P.FrameDecoder(side="client").feed(data)
            assert msg.receiver_id is None
        with RecordWriter(p, timeout=0) as w:
            for i in range(100):
                w.emit(b"%d" % i, 0)
        p.finish()
        p.close()
        with RecordReader(gate) as r:
            assert list(r) == [b"%d" % i for i in range(100)]
        gate.close()


def test_buffer_responses_carry_the_requested_subpartition():
    with NetworkEnvironment(SMALL) as prod:
        p = prod.create_result_partition(3)
        with RecordWriter(p, timeout=0) as w:
            w.emit(b"for two", 2)
        p.finish()
        rid = b"\x05" * 16
        with socket.create_connection(prod.address, timeout=10) as s:
            s = client_handshake(s, HandshakeConfig(), prod.address)
            s.sendall(P.encode_partition_request(p.partition_id.to_bytes(), 2, 2, rid, 2))
            decoder = P.FrameDecoder(side="client")
            msgs = []
            while len(msgs) < 2:     # the record's buffer, then EndOfPartition
                msgs += decoder.feed(s.recv(65536))
            decoder.close()
        assert [(m.receiver_id, m.subpartition_id, m.sequence_number) for m in msgs[:2]] == \
            [(rid, 2, 0), (rid, 2, 1)]
        assert msgs[0].data_type == DataType.DATA_BUFFER and msgs[0].size == 11
        p.close()
        prod.close(timeout=0)      # subpartitions 0 and 1 are finished, and nobody reads them


def test_subpartitions_know_the_receivers_configured_exclusive_buffers():
    from flinknet.environment import NetworkEnvironment

    for exclusive in (0, 2, 5):
        opts = {"taskmanager.memory.network.max": "8mb",
                "taskmanager.network.memory.buffers-per-channel": exclusive}
        with NetworkEnvironment(opts) as env:
            p = env.create_result_partition(2)
            assert [sp._receiver_exclusive for sp in p.subpartitions] == [exclusive, exclusive]


def test_a_receiver_without_exclusive_buffers_reads_on_floating_credit():
    import threading

    from flinknet.consumer import RecordReader
    from flinknet.environment import NetworkEnvironment
    from flinknet.writer import RecordWriter

    opts = {"taskmanager.memory.network.max": "8mb", "taskmanager.memory.segment-size": "4kb",
            "taskmanager.network.memory.buffers-per-channel": 0,
            "taskmanager.network.memory.floating-buffers-per-gate": 4}
    # Both pools as Flink sizes them from these options: the producer's partition pool holds 4
    # buffers (2 x 0 + 4), the receiver's gate 4 floating ones and no exclusive ones. Data flows
    # on BacklogAnnouncements and floating credit alone. (This hung before the receiver acted on
    # the newest backlog when the task took a buffer: a buffer received before an announcement
    # reset the announced backlog to its own older figure, the channel refused the floating
    # buffer it had asked for, and the producer, its pool full of that channel's backlog,
    # waited forever.)
    prod_opts = opts
    with NetworkEnvironment(prod_opts) as prod, NetworkEnvironment(opts) as cons:
        p = prod.create_result_partition(2)
        gate = cons.create_input_gate([(p.partition_id, i, prod.address) for i in range(2)])

        errors = []

        def produce():
            try:
                with RecordWriter(p, timeout=10) as w:
                    for i in range(2000):
                        w.emit(b"%05d" % i + bytes(2000), i % 2)
                p.finish()
            except BaseException as e:  # noqa: BLE001 (reported below)
                errors.append(e)

        t = threading.Thread(target=produce)
        t.start()
        got = []
        with RecordReader(gate) as r:
            # a stalled exchange fails here within seconds instead of hanging the suite
            while (batch := r.read_batch(timeout=20)) is not None:
                got += [rec[:5] for rec in batch]
        t.join(30)
        assert not errors, errors
        assert sorted(got) == [b"%05d" % i for i in range(2000)]
        gate.close()
        assert cons.network_buffer_pool.is_whole


@pytest.mark.parametrize("native_io", [True, False])
def test_union_gate_over_remote_gates_reads_everything(native_io):
    """A UnionInputGate over gates whose channels the native I/O thread fills: each member gate
    tells the union when it turns available (the armed doorbell), bursts and pauses alike."""
    from flinknet.consumer import UnionInputGate

    opts = {"taskmanager.memory.segment-size": "4kb", "flinknet.network.native-io": native_io}
    n = 3000
    with NetworkEnvironment(opts) as prod, NetworkEnvironment(opts) as cons:
        parts = [prod.create_result_partition(1) for _ in range(2)]
        gates = [cons.create_input_gate([(p.partition_id, 0, prod.address)], gate_index=i)
                 for i, p in enumerate(parts)]
        union = UnionInputGate(gates)

        def produce(p, tag):
            with RecordWriter(p, timeout=1) as w:
                for i in range(n):
                    w.emit(tag + i.to_bytes(4, "big"), 0)
                    if i % 500 == 0:
                        time.sleep(0.02)       # pauses: the gates go unavailable and back
            p.finish()

        threads = [threading.Thread(target=produce, args=(p, bytes([t]))) for t, p in enumerate(parts)]
        for t in threads:
            t.start()
        seen = {0: 0, 1: 0}
        with RecordReader(union) as reader:
            while (batch := reader.read_batch(timeout=20)) is not None:
                for rec in batch:
                    tag, i = rec[0], int.from_bytes(rec[1:], "big")
                    assert i == seen[tag]
                    seen[tag] += 1
        for t in threads:
            t.join(10)
        assert seen == {0: n, 1: n}
        for g in gates:
            g.close()
        for p in parts:
            p.close()
        assert cons.network_buffer_pool.is_whole
