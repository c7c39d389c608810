"""NetworkConfig: Flink's keys, units and defaults; unknown keys and bad values rejected."""

import pytest

from flinknet.config import OPTIONS, NetworkConfig, parse_duration, parse_memory_size


def test_defaults_are_flinks():
    c = NetworkConfig()
    assert c.segment_size == 32 * 1024
    assert c.network_memory == 64 * 1024 * 1024
    assert c.num_network_buffers == 2048
    assert (c.buffers_per_channel, c.floating_buffers_per_gate, c.max_buffers_per_channel) == (2, 8, 10)
    assert c.max_overdraft_buffers_per_gate == 20
    assert c.request_timeout == 30.0
    assert (c.partition_request_initial_backoff_ms, c.partition_request_max_backoff_ms) == (100, 10_000)
    assert c.partition_request_timeout == 10.0
    assert c.connect_timeout == 120.0 and c.connect_retries == 0
    assert c.bind_host == "127.0.0.1" and c.data_port == 0
    assert c.buffer_timeout_ms == 100
    assert c.credit_based


@pytest.mark.parametrize("text, expected", [
    ("64mb", 64 << 20), ("32kb", 32 << 10), ("32 kb", 32 << 10), ("1g", 1 << 30), ("100", 100),
    (4096, 4096), ("7b", 7), ("2 MB", 2 << 20), ("3 mebibytes", 3 << 20),
])
def test_memory_sizes(text, expected):
    assert parse_memory_size(text) == expected


@pytest.mark.parametrize("bad", ["64 xb", "-1mb", "1.5mb", "", "mb", True, -5])
def test_bad_memory_sizes(bad):
    with pytest.raises((ValueError, TypeError)):
        parse_memory_size(bad)


@pytest.mark.parametrize("text, seconds", [
    ("100 ms", 0.1), ("10 s", 10.0), ("10s", 10.0), ("2 min", 120.0), (250, 0.25), ("250", 0.25),
    ("1 h", 3600.0), ("1.5 s", 1.5),
])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["10 parsecs", "-1 s", "s", float("inf"), float("nan"), False])
def test_bad_durations(bad):
    with pytest.raises((ValueError, TypeError)):
        parse_duration(bad)


def test_unknown_keys_are_rejected():
    with pytest.raises(KeyError, match="taskmanager.memory.segmentsize"):
        NetworkConfig({"taskmanager.memory.segmentsize": "32kb"})


def test_values_are_parsed_and_checked():
    c = NetworkConfig({"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "1mb"},
                      **{"execution.buffer-timeout.enabled": "false", "flinknet.network.flow-control": "TCP"})
    assert c.segment_size == 4096 and c.num_network_buffers == 256
    assert c.buffer_timeout_ms == -1
    assert not c.credit_based
    assert c.is_set("taskmanager.memory.segment-size") and not c.is_set("taskmanager.data.port")
    assert c["taskmanager.memory.network.max"] == 1 << 20
    assert len(c) == len(OPTIONS) and set(c) == set(OPTIONS)


@pytest.mark.parametrize("options", [
    {"taskmanager.memory.segment-size": "3000"},
    {"taskmanager.memory.segment-size": "32"},
    {"taskmanager.memory.network.max": "32kb"},
    {"taskmanager.memory.network.min": "128mb"},
    {"taskmanager.network.request-backoff.initial": "1 s", "taskmanager.network.request-backoff.max": "10 ms"},
    {"taskmanager.data.port": 70000},
    {"taskmanager.network.memory.buffers-per-channel": -1},
    {"taskmanager.network.memory.max-buffers-per-channel": 0},
    {"flinknet.network.flow-control": "maybe"},
    {"execution.buffer-timeout.enabled": "perhaps"},
    {"taskmanager.network.bind-host": 5},
    {"flinknet.network.reader-gil-hold": "200 ms"},
    {"flinknet.network.reader-gil-hold": "-1 ms"},
])
def test_bad_values_are_rejected(options):
    with pytest.raises((ValueError, TypeError)):
        NetworkConfig(options)


def test_reader_gil_hold_defaults_to_a_millisecond_and_can_be_turned_off():
    assert NetworkConfig().reader_gil_hold == 0.001
    assert NetworkConfig({"flinknet.network.reader-gil-hold": "250 us"}).reader_gil_hold == 0.00025
    assert NetworkConfig({"flinknet.network.reader-gil-hold": 0}).reader_gil_hold == 0.0
    with pytest.raises(ValueError, match="reader-gil-hold"):
        NetworkConfig({"flinknet.network.reader-gil-hold": "1 s"})
