"""Buffer debloating (Flink's ``org.apache.flink.runtime.throughput`` and the gates' and
producers' part of it).

The first tests are ports of Flink's ``BufferSizeEMATest``, ``BufferDebloaterTest`` and
``ThroughputCalculatorTest`` (same inputs, same expected values); then properties, the
configuration, the gate and producer rules, end-to-end exchanges over loopback TCP and in one
process, and the metrics.
"""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flinknet.checkpointing import create_checkpointed_input_gate
from flinknet.config import NetworkConfig
from flinknet.consumer import (
    BufferDebloatConfiguration,
    BufferDebloater,
    BufferSizeEMA,
    SingleInputGate,
    ThroughputCalculator,
    UnionInputGate,
)
from flinknet.environment import NetworkEnvironment
from flinknet.errors import ConfigurationError, IllegalStateError
from flinknet.metrics import MetricRegistry, TaskIOMetrics
from flinknet.partition import ResultPartitionManager, create_result_partition
from flinknet.writer import RecordWriter
from tests.checkpointing.harness import RecordingTask
from tests.consumer.test_asyncio import assert_whole

# -- Flink's tests, ported -------------------------------------------------------------------------


class ManualClock:
    """Flink's ManualClock: milliseconds that move only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms


def test_ema_calculation_buffer_size():
    calc = BufferSizeEMA(200, 10, 3)
    # The result seeks the bottom limit but takes a while to reach it.
    assert [calc.calculate_buffer_size(111, 13)] == [104]
    assert [calc.calculate_buffer_size(107, 7) for _ in range(5)] == [60, 38, 26, 21, 18]
    assert [calc.calculate_buffer_size(107, 13) for _ in range(3)] == [13, 11, 10]
    # upgrade: at most twice the last value per step
    assert [calc.calculate_buffer_size(333, 1) for _ in range(6)] == [15, 23, 34, 51, 76, 114]


def test_ema_small_buffer_size_changes_do_not_get_stuck():
    samples, starting = 10000, 16
    calc = BufferSizeEMA(32 * 1024, 16, samples, starting)
    for _ in range(samples):
        calc.calculate_buffer_size(20000, 10)
    assert calc.calculate_buffer_size(10000, 10) > starting


def test_ema_size_greater_than_max_and_less_than_min():
    calc = BufferSizeEMA(200, 10, 3)
    assert calc.calculate_buffer_size(0, 1) == 100
    assert [calc.calculate_buffer_size(1000, 1) for _ in range(3)] == [150, 200, 200]
    calc = BufferSizeEMA(200, 10, 3)
    assert [calc.calculate_buffer_size(0, 1) for _ in range(6)] == [100, 50, 25, 13, 10, 10]


def test_ema_rejects_negative_size_and_zero_buffers():
    calc = BufferSizeEMA(100, 200, 2)
    with pytest.raises(ValueError):
        calc.calculate_buffer_size(-1, 1)
    with pytest.raises(ValueError):
        calc.calculate_buffer_size(1, 0)


def _debloater(target: int, lo: int, hi: int, threshold: int = 25) -> BufferDebloater:
    # Flink's BufferDebloaterTestBuilder: starting size = max, one sample (alpha = 1)
    return BufferDebloater(target, hi, lo, threshold, 1)


@pytest.mark.parametrize("target, lo, hi, in_use, throughput, expected", [
    (1000, 50, 2400, 0, 1200, 1200),      # testZeroBuffersInUse: 0 in use counts as 1
    (1200, 50, 1100, 16, 3333, 250),      # testCorrectBufferSizeCalculation
    (1200, 250, 1100, 16, 3333, 250),     # testCalculatedBufferSizeLessThanMin
    (1200, 50, 1100, 16, 0, 50),          # testCalculatedBufferSizeForThroughputZero
    (7, 50, 1100, 16, 3333, 50),          # testConfiguredConsumptionTimeIsTooLow
    (1200, 50, 248, 16, 3333, None),      # testCalculatedBufferSizeGreaterThanMax
    (1200, 50, 250, 16, 3333, None),      # testCalculatedBufferSlightlyDifferentFromCurrentOne
])
def test_debloater_cases(target, lo, hi, in_use, throughput, expected):
    assert _debloater(target, lo, hi).recalculate_buffer_size(throughput, in_use) == expected


def test_debloater_announces_max_despite_a_difference_below_the_threshold():
    d = _debloater(1000, 50, 1100)
    assert d.recalculate_buffer_size(500, 1) == 500
    d.recalculate_buffer_size(1000, 1)
    assert d.last_buffer_size == 1000
    assert d.recalculate_buffer_size(2000, 1) == 1100       # max: announced though < 25 %
    assert d.last_buffer_size == 1100
    assert d.recalculate_buffer_size(2000, 1) is None       # not twice


def test_debloater_announces_min_despite_a_difference_below_the_threshold():
    d = _debloater(1000, 50, 1100)
    assert d.recalculate_buffer_size(60, 1) == 60
    d.recalculate_buffer_size(60, 1)
    assert d.last_buffer_size == 60
    assert d.recalculate_buffer_size(40, 1) == 50
    assert d.last_buffer_size == 50
    assert d.recalculate_buffer_size(40, 1) is None


def test_debloater_skip_update():
    hi, lo, threshold = 32768, 256, 0.3
    d = _debloater(1000, lo, hi, int(threshold * 100))
    current = hi // 2
    assert d.recalculate_buffer_size(current, 1) == current
    # below the threshold: skipped
    for size in (current, current - 1, current + 1, current - int(current * threshold) + 1,
                 current + int(current * threshold) - 1):
        assert d.skip_update(size), size
    # at the threshold, or at/beyond the bounds: announced
    for size in (current - int(current * threshold), current + int(current * threshold), lo + 1, lo,
                 hi - 1, hi, hi + 1, lo - 1):
        assert not d.skip_update(size), size


def test_debloater_estimated_time_to_consume():
    d = _debloater(1000, 50, 2400)
    d.recalculate_buffer_size(1200, 3)                # 1200 B/s over 3 buffers: 400 each
    assert d.last_buffer_size == 400
    assert d.last_estimated_time_to_consume_buffers_ms == 400 * 3 * 1000 // 1200
    d.recalculate_buffer_size(0, 0)                   # throughput 0: divided by 1
    assert d.last_estimated_time_to_consume_buffers_ms == 50 * 1 * 1000


def test_debloater_starts_at_the_starting_size():
    d = BufferDebloater(1000, 32768, 256, 25, 20, starting_buffer_size=1024)
    assert d.last_buffer_size == 1024
    # growing is limited to twice the average per step: ×(1 + 2/21) → 1122, 1228 (both less than
    # 25 % above 1024: not announced), 1345
    assert [d.recalculate_buffer_size(10**9, 1) for _ in range(3)] == [None, None, 1345]
    assert d.last_buffer_size == 1345


def test_throughput_correct_calculation():
    clock = ManualClock()
    calc = ThroughputCalculator(clock)
    calc.incoming_data_size(6666)
    clock.advance(1)
    calc.incoming_data_size(3333)
    clock.advance(33)
    calc.incoming_data_size(1)
    clock.advance(66)
    assert calc.calculate_throughput() == 10_000 * 1_000 // 100


def test_throughput_reset_value_after_calculation():
    clock = ManualClock()
    calc = ThroughputCalculator(clock)
    calc.incoming_data_size(666)
    clock.advance(100)
    assert calc.calculate_throughput() == 6660
    assert calc.calculate_throughput() == 6660          # no time passed: the previous value
    clock.advance(1)
    assert calc.calculate_throughput() == 0


def test_throughput_ignoring_idle_time():
    clock = ManualClock()
    calc = ThroughputCalculator(clock)
    calc.incoming_data_size(7)
    clock.advance(1)
    calc.pause_measurement()
    clock.advance(9)                     # idle: ignored
    calc.incoming_data_size(3)           # resumes
    clock.advance(1)
    assert calc.calculate_throughput() == 5 * 1_000


def test_throughput_calculation_during_idle_time():
    clock = ManualClock()
    calc = ThroughputCalculator(clock)
    calc.incoming_data_size(10)
    clock.advance(1)
    calc.pause_measurement()
    clock.advance(9)
    assert calc.calculate_throughput() == 10 * 1_000


def test_throughput_multiple_idle_ends():
    clock = ManualClock()
    calc = ThroughputCalculator(clock)
    calc.incoming_data_size(10)
    for _ in range(3):
        clock.advance(3)
        calc.resume_measurement()        # not paused: does not restart the time
    clock.advance(1)
    assert calc.calculate_throughput() == 1_000


def test_throughput_not_restarting_the_timer_on_calculation_during_idle_time():
    clock = ManualClock()
    calc = ThroughputCalculator(clock)
    calc.pause_measurement()
    calc.calculate_throughput()          # does not resume
    clock.advance(9)                     # still idle
    calc.incoming_data_size(10)
    clock.advance(1)
    assert calc.calculate_throughput() == 10 * 1_000


def test_throughput_rejects_negative_values():
    calc = ThroughputCalculator(ManualClock())
    with pytest.raises(ValueError):
        calc.calculate_throughput_of(-1, 1)
    with pytest.raises(ValueError):
        calc.calculate_throughput_of(1, -1)


# -- properties -----------------------------------------------------------------------------------

@st.composite
def _debloater_setups(draw):
    lo = draw(st.integers(1, 4096))
    hi = draw(st.integers(lo, 1 << 16))
    start = draw(st.integers(lo, hi))
    return (draw(st.integers(1, 5000)), hi, lo, draw(st.integers(0, 100)), draw(st.integers(1, 50)),
            start)


@given(_debloater_setups(),
       st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 200)), min_size=1, max_size=40))
def test_debloater_sizes_stay_in_bounds_and_follow_the_threshold_rule(setup, steps):
    target, hi, lo, threshold, samples, start = setup
    d = BufferDebloater(target, hi, lo, threshold, samples, start)
    ema = BufferSizeEMA(hi, lo, samples, start)      # the same average, seen without the rule
    last = start
    for throughput, in_use in steps:
        candidate = ema.calculate_buffer_size(throughput * target // 1000, max(1, in_use))
        announced = d.recalculate_buffer_size(throughput, in_use)
        assert lo <= candidate <= hi
        should = candidate != last and (candidate <= lo or candidate >= hi
                                        or abs(candidate - last) >= int(last * threshold / 100))
        if should:
            assert announced == candidate
            last = candidate
        else:
            assert announced is None
        assert d.last_buffer_size == last
        assert d.last_estimated_time_to_consume_buffers_ms == (
            candidate * max(1, in_use) * 1000 // max(1, throughput))


@given(st.lists(st.tuples(st.sampled_from(["data", "pause", "resume", "advance"]), st.integers(0, 10_000)),
                max_size=60))
def test_throughput_is_bytes_over_the_time_not_paused(ops):
    clock = ManualClock()
    calc = ThroughputCalculator(clock)
    measuring, total, measured = False, 0, 0.0
    for op, n in ops:
        if op == "data":
            calc.incoming_data_size(n)
            total += n
            measuring = True
        elif op == "pause":
            calc.pause_measurement()
            measuring = False
        elif op == "resume":
            calc.resume_measurement()
            measuring = True
        else:
            clock.advance(n)
            if measuring:
                measured += n
    expected = int(total / measured * 1000) if measured else 0
    assert calc.calculate_throughput() == expected


# -- configuration --------------------------------------------------------------------------------

PREFIX = "taskmanager.network.memory.buffer-debloat."


def test_config_defaults_are_flinks():
    c = NetworkConfig()
    assert c[PREFIX + "enabled"] is False and not c.buffer_debloat_enabled
    assert c.buffer_debloat_target == 1.0
    assert c.buffer_debloat_period == pytest.approx(0.2)
    assert c.buffer_debloat_samples == 20
    assert c.buffer_debloat_threshold_percentages == 25
    assert c.min_segment_size == 256
    assert c.starting_segment_size == 1024
    d = BufferDebloatConfiguration.from_config(c)
    assert (d.enabled, d.target_ms, d.max_buffer_size, d.min_buffer_size, d.starting_buffer_size) == (
        False, 1000, 32 * 1024, 256, 1024)


def test_config_values_as_flink_writes_them():
    c = NetworkConfig({PREFIX + "enabled": "true", PREFIX + "target": "500 ms", PREFIX + "period": "1 s",
                       PREFIX + "samples": "5", PREFIX + "threshold-percentages": 10,
                       "taskmanager.memory.min-segment-size": "1kb",
                       "taskmanager.memory.starting-segment-size": "4kb"})
    d = BufferDebloatConfiguration.from_config(c)
    assert d == BufferDebloatConfiguration(True, 0.5, 1.0, 4096, 32768, 1024, 10, 5)
    debloater = d.create_debloater(3, "T")
    assert (debloater.gate_index, debloater.target_ms, debloater.last_buffer_size) == (3, 500, 4096)


@pytest.mark.parametrize("options, key", [
    ({PREFIX + "enabled": "sometimes"}, PREFIX + "enabled"),
    ({PREFIX + "target": "0 ms"}, PREFIX + "target"),
    ({PREFIX + "target": "soon"}, PREFIX + "target"),
    ({PREFIX + "period": 0}, PREFIX + "period"),
    ({PREFIX + "samples": 0}, PREFIX + "samples"),
    ({PREFIX + "threshold-percentages": -1}, PREFIX + "threshold-percentages"),
    ({"taskmanager.memory.min-segment-size": 0}, "taskmanager.memory.min-segment-size"),
    ({"taskmanager.memory.starting-segment-size": "0b"}, "taskmanager.memory.starting-segment-size"),
    # the sizes against each other: only when enabled
    ({PREFIX + "enabled": True, "taskmanager.memory.segment-size": "128b"},
     "taskmanager.memory.min-segment-size"),
    ({PREFIX + "enabled": True, "taskmanager.memory.starting-segment-size": "64kb"},
     "taskmanager.memory.starting-segment-size"),
    ({PREFIX + "enabled": True, "taskmanager.memory.starting-segment-size": "128b"},
     "taskmanager.memory.starting-segment-size"),
])
def test_config_errors_name_the_key(options, key):
    with pytest.raises(ConfigurationError) as info:
        NetworkConfig(options)
    assert info.value.key == key and key in str(info.value)


def test_config_sizes_are_not_checked_while_disabled():
    c = NetworkConfig({"taskmanager.memory.segment-size": "128b"})
    d = BufferDebloatConfiguration.from_config(c)
    assert not d.enabled and d.min_buffer_size == d.starting_buffer_size == d.max_buffer_size == 128


def test_a_typo_in_a_debloat_key_names_the_key():
    with pytest.raises(KeyError, match="buffer-debloat.enabled"):
        NetworkConfig({PREFIX + "enable": True})


# -- the gate -------------------------------------------------------------------------------------

SEG = 1024


class _Listener:
    def notify_data_available(self, view):
        pass

    def notify_priority_event(self, sequence_number):
        pass


def _local(make_pool, n_subpartitions: int = 1):
    nbp = make_pool(64, SEG)
    manager = ResultPartitionManager()
    p = create_result_partition(nbp, n_subpartitions, partition_manager=manager)
    p.setup()
    gate = SingleInputGate.create_local(manager, [(p.partition_id, i) for i in range(n_subpartitions)])
    return p, gate


def _drain(gate):
    sizes = []
    while (boe := gate.poll_next()) is not None:
        if boe.buffer is not None:
            sizes.append(boe.size)
            boe.buffer.recycle()
    return sizes


def test_trigger_needs_a_debloater(make_pool):
    p, gate = _local(make_pool)
    with pytest.raises(IllegalStateError, match="no buffer debloater"):
        gate.trigger_debloating()
    with pytest.raises(TypeError):
        gate.set_buffer_debloater(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        gate.set_buffer_debloater(BufferDebloater(1000, SEG, 64, 25, 1), period=0)
    gate.close()
    p.release()
    p.close()


def test_a_local_gate_announces_to_the_view_and_the_writer_trims(make_pool):
    p, gate = _local(make_pool)
    clock = ManualClock()
    # target 100 ms, one sample: the size is throughput × 0.1 s / buffers in use
    gate.set_buffer_debloater(BufferDebloater(100, SEG, 64, 25, 1), throughput_calculator=ThroughputCalculator(clock))
    assert gate.debloat_period is None
    sp = p.subpartitions[0]
    with RecordWriter(p, timeout=-1) as w:
        for _ in range(4):
            w.emit(b"x" * 96, 0)          # 400 bytes: not a whole buffer yet
        w.flush_all()
        boe = gate.poll_next()            # resumes the measurement (manual time 0)
        assert boe is not None and boe.size == 400
        boe.buffer.recycle()
        clock.advance(100)                # busy 100 ms: 4000 B/s → 400 B per buffer in use
        assert gate.buffers_in_use_count() == 1          # the producer's open buffer
        gate.trigger_debloating()
        assert gate.buffer_debloater.last_buffer_size == 400
        assert sp.buffer_size == 400                      # told directly, no message
        w.flush_all()
        for _ in range(12):
            w.emit(b"y" * 96, 0)          # the open buffer is still whole; new ones are trimmed
        w.flush_all()
        p.finish()
    sizes = _drain(gate)
    assert sizes[0] == SEG - 400 or sizes[0] <= SEG
    assert all(s <= 400 for s in sizes[1:]), sizes
    assert gate.is_finished
    gate.close()
    p.close()


def test_the_gate_triggers_itself_on_reads_and_pauses_while_waiting(make_pool):
    p, gate = _local(make_pool)
    debloater = BufferDebloater(100, SEG, 64, 25, 1)
    gate.set_buffer_debloater(debloater, period=0.001)
    calc = gate.throughput_calculator
    assert calc is not None and not calc.is_measuring          # nothing measured before data
    with RecordWriter(p, timeout=-1) as w:
        w.emit(b"z" * 500, 0)
        w.flush_all()
        time.sleep(0.002)
        assert len(_drain(gate)) == 1
        assert not calc.is_measuring          # the poll that found nothing paused it
        with pytest.raises(TimeoutError):
            gate.get_next(timeout=0.01)      # a blocking wait pauses it too
        assert not calc.is_measuring
        p.finish()
    assert _drain(gate) == []
    # the read after the deadline triggered: a (tiny) measured time, a size was computed
    assert debloater.last_estimated_time_to_consume_buffers_ms >= 0
    gate.close()
    p.close()


def test_finished_or_closed_gates_do_not_recalculate(make_pool):
    p, gate = _local(make_pool)
    gate.set_buffer_debloater(BufferDebloater(100, SEG, 64, 25, 1))
    p.finish()
    _drain(gate)
    assert gate.is_finished
    gate.trigger_debloating()          # no effect, no error
    assert gate.buffer_debloater.last_buffer_size == SEG
    gate.close()
    p.close()


def test_union_and_checkpointed_gates_pass_debloating_through(make_pool):
    p1, g1 = _local(make_pool)
    manager2 = ResultPartitionManager()
    p2 = create_result_partition(make_pool(16, SEG), 1, partition_manager=manager2)
    p2.setup()
    g2 = SingleInputGate.create_local(manager2, [(p2.partition_id, 0)], gate_index=1)
    union = UnionInputGate(g1, g2)
    with pytest.raises(IllegalStateError):
        union.trigger_debloating()
    clock = ManualClock()
    g1.set_buffer_debloater(BufferDebloater(1000, SEG, 64, 25, 1), throughput_calculator=ThroughputCalculator(clock))
    gate = create_checkpointed_input_gate(union, RecordingTask())
    gate.request_partitions()
    assert gate.buffers_in_use_count() == 0          # the producers' queues are empty
    gate.announce_buffer_size(300)
    assert p1.subpartitions[0].buffer_size == 300 and p2.subpartitions[0].buffer_size == 300
    gate.trigger_debloating()          # g1 only: no data, no time → throughput 0 → the minimum
    assert g1.buffer_debloater.last_buffer_size == 64
    assert p1.subpartitions[0].buffer_size == 64 and p2.subpartitions[0].buffer_size == 300
    with pytest.raises(ValueError):
        g1.announce_buffer_size(0)
    union.close()
    for p in (p1, p2):
        p.release()
        p.close()


# -- the producer: full-size buffers while its pool is exhausted ----------------------------------

def test_the_producer_grows_its_trimmed_buffer_while_its_pool_is_exhausted(make_pool):
    """Flink's BufferWritingResultPartition.append: a record that does not fit the trimmed open
    buffer while the pool has no buffer to give grows that buffer (to the record and one byte
    more, up to the segment) instead of asking for the next buffer; with buffers in the pool
    the hint applies again."""
    nbp = make_pool(16, SEG)
    p = create_result_partition(nbp, 1, max_overdraft_buffers=0)
    p.setup()
    sp = p.subpartitions[0]
    sp.set_buffer_size(256)
    view = sp.create_read_view(_Listener())
    serializer = p.record_serializer
    record = b"r" * 100                   # 104 bytes framed
    emitted = 0
    pool_available = True
    while pool_available:
        serializer.emit(record, 0)
        emitted += 1
        pool_available = p.buffer_pool.is_available
    trimmed = emitted * 104 // 256        # buffers finished at the debloated size
    extra = (SEG - 1 - 256) // 104
    for _ in range(extra):
        serializer.emit(record, 0)        # grows the open buffer: no new request, no wait
        emitted += 1
    p.flush(0)
    sizes = []
    while (b := view.get_next_buffer()) is not None:
        sizes.append(b.buffer.size)
        b.buffer.recycle()
    assert trimmed >= 2 and sizes[:trimmed] == [256] * trimmed
    # the open buffer: past the debloated size, every record whole in it
    assert sizes[trimmed:] == [emitted * 104 - trimmed * 256]
    assert sizes[-1] > 256
    # the pool has buffers again: new buffers are trimmed again
    assert p.buffer_pool.is_available
    for _ in range(12):
        serializer.emit(record, 0)
    p.finish()
    sizes = []
    while (b := view.get_next_buffer()) is not None:
        if b.buffer.data_type.is_buffer:
            sizes.append(b.buffer.size)
        b.buffer.recycle()
    assert sizes and all(s <= 256 for s in sizes), sizes
    view.release_all_resources()
    p.close()


# -- end to end: over loopback TCP and in one process --------------------------------------------

E2E = {"taskmanager.memory.segment-size": "32kb", "taskmanager.memory.network.max": "4mb",
       PREFIX + "enabled": True, PREFIX + "target": "5 ms", PREFIX + "period": "20 ms",
       PREFIX + "samples": 1, "taskmanager.memory.starting-segment-size": "32kb"}


def _exchange(prod: NetworkEnvironment, cons: NetworkEnvironment, remote: bool, consumer_rate: float | None,
              seconds: float = 1.2):
    """A producer paced at about 500 KB/s (no back-pressure) and a consumer that, when
    ``consumer_rate`` is given, is busy ``size / rate`` seconds per buffer. Returns the data
    buffer sizes read, the subpartition's debloated size seen while producing, the gate."""
    seg = prod.config.segment_size
    p = prod.create_result_partition(1)
    gate = cons.create_input_gate([(p.partition_id, 0, prod.address if remote else None)])
    assert gate.buffer_debloater is not None and gate.debloat_period == pytest.approx(0.02)
    seen: list[int] = []
    sizes: list[int] = []

    def produce():
        with RecordWriter(p, timeout=-1) as w:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                w.emit(b"p" * 996, 0)     # 1000 bytes framed
                time.sleep(0.002)
            seen.append(p.subpartitions[0].buffer_size)
        p.finish()
        p.close()

    def consume():
        while (boe := gate.get_next(timeout=30)) is not None:
            if boe.buffer is not None:
                sizes.append(boe.size)
                boe.buffer.recycle()
                if consumer_rate:
                    time.sleep(boe.size / consumer_rate)

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    gate.close()
    assert sizes
    return sizes[:-1], seen[0], gate, seg     # the last one was cut short by finish()


@pytest.mark.parametrize("remote", [True, False], ids=["tcp", "local"])
def test_a_slow_consumer_shrinks_the_producers_buffers(remote):
    with NetworkEnvironment(E2E) as prod:
        cons_env = NetworkEnvironment(E2E) if remote else prod
        try:
            # about 2 MB/s of capacity: 2 MB/s × 5 ms = 10 KB over the buffers in use
            sizes, debloated, gate, seg = _exchange(prod, cons_env, remote, consumer_rate=2e6)
            assert 256 <= debloated < seg                   # announced, and below the segment
            assert gate.buffer_debloater.last_buffer_size < seg
            assert seg in sizes[:4]                         # before any announcement
            assert max(sizes[-5:]) < seg, sizes             # new buffers are trimmed
        finally:
            if remote:
                cons_env.close()
        assert_whole(prod, cons_env)


@pytest.mark.parametrize("remote", [True, False], ids=["tcp", "local"])
def test_a_fast_consumer_keeps_the_buffers_full(remote):
    # Flink's default target (1 s): a buffer takes the fast consumer far less than that, even
    # on a loaded machine
    opts = dict(E2E, **{PREFIX + "target": "1 s"})
    with NetworkEnvironment(opts) as prod:
        cons_env = NetworkEnvironment(opts) if remote else prod
        try:
            sizes, debloated, gate, seg = _exchange(prod, cons_env, remote, consumer_rate=None)
            assert debloated == 0                           # never told (0: the segment size)
            assert gate.buffer_debloater.last_buffer_size == seg
            # (over TCP the first record may leave on its own: the request flushes the open buffer)
            assert len(sizes) > 5 and all(s == seg for s in sizes[2:]), sizes
        finally:
            if remote:
                cons_env.close()
        assert_whole(prod, cons_env)


def test_disabled_by_default_no_debloater():
    with NetworkEnvironment({"taskmanager.memory.network.max": "2mb"}) as env:
        p = env.create_result_partition(1)
        gate = env.create_input_gate([(p.partition_id, 0)])
        assert gate.buffer_debloater is None and gate.throughput_calculator is None
        gate.close()
        p.release()
        p.close()
        assert_whole(env)


# -- metrics --------------------------------------------------------------------------------------

def test_debloat_metrics_per_gate_and_for_the_task():
    reg = MetricRegistry(update_interval=1, start=False)
    opts = dict(E2E, **{"taskmanager.memory.starting-segment-size": "1kb"})
    with NetworkEnvironment(opts) as env:
        p = env.create_result_partition(2)
        g0 = env.create_input_gate([(p.partition_id, 0)], gate_index=0)
        g1 = env.create_input_gate([(p.partition_id, 1)], gate_index=1)
        gate = create_checkpointed_input_gate(UnionInputGate(g0, g1), RecordingTask())
        metrics = TaskIOMetrics(reg.task_group("Sink", 0))
        metrics.register_gate(gate)                        # a CheckpointedInputGate is accepted
        g1.buffer_debloater.recalculate_buffer_size(1000, 2)   # 5 ms of 1000 B/s: the minimum
        snap = reg.update()
        task = "localhost.taskmanager.tm-0.job.Sink.0."
        inp = task + "Shuffle.Netty.Input."
        assert snap[inp + "0.debloatedBufferSize"] == 1024            # the starting size
        assert snap[inp + "1.debloatedBufferSize"] == 256
        assert snap[inp + "0.estimatedTimeToConsumeBuffersMs"] == 0
        assert snap[inp + "1.estimatedTimeToConsumeBuffersMs"] == 256 * 2 * 1000 // 1000
        assert snap[task + "estimatedTimeToConsumeBuffersMs"] == 512  # the maximum over the gates
        with pytest.raises(TypeError, match="CheckpointedInputGate"):
            metrics.register_gate(object())  # type: ignore[arg-type]
        metrics.close()
        gate.close()
        p.release()
        p.close()
        assert_whole(env)
