"""What ``NetworkEnvironment.create_input_gate`` and ``SingleInputGate.create_local`` take.

Each channel is ``(partition_id, subpartition_index)`` or ``(partition_id, subpartition_index,
address)``; the address is ``(host, port)``, a ``"host:port"`` string (``"[v6-host]:port"`` for
IPv6) or None. A malformed item is a TypeError or ValueError that names it (``partitions[i]``),
raised before anything is allocated; a ``"host:port"`` string is parsed, never indexed character
by character.
"""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from flinknet import NetworkEnvironment, ResultPartitionID, ResultPartitionManager, SingleInputGate
from flinknet.consumer import LocalInputChannel, RecordReader
from flinknet.consumer.remote import RemoteInputChannel
from flinknet.writer import RecordWriter

SMALL = {"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "1mb"}


def _read_all(env: NetworkEnvironment, spec_address: object, producer: NetworkEnvironment,
              n: int = 500) -> tuple[list[bytes], object]:
    """Produce ``n`` records in ``producer`` and read them in ``env`` through a gate whose one
    channel names the producer by ``spec_address``; the records and the channel."""
    p = producer.create_result_partition(1)
    gate = env.create_input_gate([(p.partition_id, 0, spec_address)])
    channel = gate.get_channel(0)

    def produce() -> None:
        with RecordWriter(p, timeout=1) as w:
            for i in range(n):
                w.emit(b"r%d" % i)
        p.finish()
        p.close()

    t = threading.Thread(target=produce)
    t.start()
    with gate, RecordReader(gate) as reader:
        records = list(reader)
    t.join()
    return records, channel


# -- malformed items ------------------------------------------------------------------------------

@pytest.mark.parametrize("item, error, words", [
    (("not-an-id", "x", 42), TypeError, ["partitions[0]", "ResultPartitionID", "'not-an-id'"]),
    ((ResultPartitionID(), "x"), TypeError, ["partitions[0]", "subpartition index", "'x'"]),
    ((ResultPartitionID(), True), TypeError, ["partitions[0]", "subpartition index", "True"]),
    ((ResultPartitionID(), -1), ValueError, ["partitions[0]", ">= 0", "-1"]),
    ((ResultPartitionID(),), TypeError, ["partitions[0]", "(partition_id, subpartition_index)"]),
    ((ResultPartitionID(), 0, None, "extra"), TypeError, ["partitions[0]"]),
    ("not a tuple", TypeError, ["partitions[0]", "'not a tuple'"]),
    ((ResultPartitionID(), 0, 42), TypeError, ["partitions[0]", "address", "42"]),
    ((ResultPartitionID(), 0, (b"host", 6121)), TypeError, ["partitions[0]", "host", "b'host'"]),
    ((ResultPartitionID(), 0, ("127.0.0.1", "6121")), TypeError, ["partitions[0]", "port", "'6121'"]),
    ((ResultPartitionID(), 0, ("127.0.0.1", 0)), ValueError, ["partitions[0]", "port", "[1, 65535]"]),
])
def test_a_malformed_item_is_an_error_naming_it(item, error, words):
    with NetworkEnvironment(SMALL) as env:
        good = (ResultPartitionID(), 0)
        with pytest.raises(error) as info:
            env.create_input_gate([item])
        for word in words:
            assert word in str(info.value), (word, str(info.value))
        # the second item is named by its own index
        with pytest.raises(error) as info:
            env.create_input_gate([good, item])
        assert "partitions[1]" in str(info.value)
        # nothing was allocated or registered: the environment still works and is whole
        assert env.network_buffer_pool.available_segments == env.network_buffer_pool.total_segments


@pytest.mark.parametrize("text, words", [
    ("127.0.0.1", ["expected 'host:port'"]),
    ("::1:6121", ["IPv6 host needs brackets", "'[::1]:6121'"]),
    ("[::1]6121", ["'[host]:port'"]),
    ("[::1", ["'[host]:port'"]),
    ("host:", ["no valid port"]),
    ("host:http", ["no valid port"]),
    ("host:+80", ["no valid port"]),
    ("host:0", ["[1, 65535]"]),
    ("host:70000", ["[1, 65535]"]),
    (":6121", ["no host"]),
    ("[]:6121", ["no host"]),
])
def test_a_malformed_host_port_string_is_a_value_error_naming_it(text, words):
    with NetworkEnvironment(SMALL) as env:
        with pytest.raises(ValueError) as info:
            env.create_input_gate([(ResultPartitionID(), 0, text)])
        message = str(info.value)
        assert "partitions[0]" in message and repr(text.strip()) in message, message
        for word in words:
            assert word in message, (word, message)


def test_an_empty_gate_is_still_a_value_error():
    with NetworkEnvironment(SMALL) as env, pytest.raises(ValueError, match="at least one partition"):
        env.create_input_gate([])


# -- "host:port" strings are parsed ---------------------------------------------------------------

def test_host_port_strings_naming_this_environment_give_local_channels():
    with NetworkEnvironment(SMALL) as env:
        port = env.address[1]
        pid = ResultPartitionID()
        gate = env.create_input_gate([(pid, 0, f"127.0.0.1:{port}"), (pid, 1, f"localhost:{port}"),
                                      (pid, 2, f"[::1]:{port}"), (pid, 3, f" 127.0.0.1:{port} "),
                                      (pid, 4, env.address), (pid, 5, None), (pid, 6)])
        assert all(isinstance(gate.get_channel(i), LocalInputChannel) for i in range(7))
        gate.close()


def test_a_host_port_string_reaches_a_remote_environment():
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        host, port = prod.address
        records, channel = _read_all(cons, f"{host}:{port}", prod)
        assert records == [b"r%d" % i for i in range(500)]
        assert isinstance(channel, RemoteInputChannel)
        assert channel.address == (host, port)        # not ("1", "2")-style characters


def test_numpy_integers_are_ints():
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        host, port = prod.address
        records, channel = _read_all(cons, (host, np.int64(port)), prod)
        assert len(records) == 500 and channel.address == (host, port)
        gate = cons.create_input_gate([(ResultPartitionID(), np.int32(3))])
        assert gate.get_channel(0).consumed_subpartition_index == 3
        assert type(gate.get_channel(0).consumed_subpartition_index) is int
        gate.close()
    gate = SingleInputGate.create_local(ResultPartitionManager(), [(ResultPartitionID(), np.uint8(2))])
    assert gate.get_channel(0).consumed_subpartition_index == 2
    gate.close()


def test_a_list_address_and_a_list_item_still_work():
    # Values that crossed a process boundary (JSON, multiprocessing) arrive as lists.
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        records, channel = _read_all(cons, list(prod.address), prod)
        assert len(records) == 500 and isinstance(channel, RemoteInputChannel)
        assert channel.address == prod.address


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
def test_an_ipv6_host_port_string_reaches_a_remote_environment():
    with NetworkEnvironment({**SMALL, "taskmanager.network.bind-host": "::1"}) as prod, \
            NetworkEnvironment(SMALL) as cons:
        host, port = prod.address
        assert host == "::1"
        records, channel = _read_all(cons, f"[::1]:{port}", prod)
        assert records == [b"r%d" % i for i in range(500)]
        assert isinstance(channel, RemoteInputChannel) and channel.address == ("::1", port)


# -- SingleInputGate.create_local ------------------------------------------------------------------

@pytest.mark.parametrize("item, error, words", [
    (("not-an-id", 0), TypeError, ["partitions[0]", "ResultPartitionID", "'not-an-id'"]),
    ((ResultPartitionID(), "x"), TypeError, ["partitions[0]", "subpartition index", "'x'"]),
    ((ResultPartitionID(), -2), ValueError, ["partitions[0]", ">= 0"]),
    ((ResultPartitionID(), 0, None), TypeError, ["partitions[0]", "(ResultPartitionID, subpartition index)"]),
    (ResultPartitionID(), TypeError, ["partitions[0]"]),
])
def test_create_local_names_a_malformed_item(item, error, words):
    manager = ResultPartitionManager()
    with pytest.raises(error) as info:
        SingleInputGate.create_local(manager, [item])
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    with pytest.raises(error, match=r"partitions\[1\]"):
        SingleInputGate.create_local(manager, [(ResultPartitionID(), 0), item])


def test_create_local_takes_tuples_and_lists():
    manager = ResultPartitionManager()
    gate = SingleInputGate.create_local(manager, [(ResultPartitionID(), 0), [ResultPartitionID(), 1]])
    assert gate.number_of_input_channels == 2
    assert gate.get_channel(1).consumed_subpartition_index == 1
    gate.close()
