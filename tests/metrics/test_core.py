"""Metric types against Flink's definitions (TimerGaugeTest, MeterViewTest) and the registry."""

from __future__ import annotations

import math

import pytest

from flinknet.metrics import (
    UPDATE_INTERVAL_SECONDS,
    Counter,
    MeterView,
    MetricRegistry,
    Reporter,
    TimerGauge,
    backpressure_level,
)

SLEEP = 10


class ManualClock:
    def __init__(self, ms: int = 42_000_000):
        self.ms = ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms


# -- TimerGauge (Flink's TimerGaugeTest) ---------------------------------------------------

def test_timer_gauge_basic_usage():
    clock = ManualClock()
    g = TimerGauge(clock, UPDATE_INTERVAL_SECONDS)
    g.update()
    assert (g.value, g.max_single_measurement, g.accumulated_count) == (0, 0, 0)
    g.mark_start()
    clock.advance(SLEEP)
    g.mark_end()
    g.update()
    assert g.value >= SLEEP // UPDATE_INTERVAL_SECONDS
    assert g.max_single_measurement == SLEEP
    assert g.accumulated_count == SLEEP
    # the max can go down after an update
    g.mark_start()
    clock.advance(SLEEP // 2)
    g.mark_end()
    g.update()
    assert g.max_single_measurement == SLEEP // 2
    assert g.accumulated_count == SLEEP + SLEEP // 2


def test_timer_gauge_update_without_marking_end():
    clock = ManualClock()
    g = TimerGauge(clock, UPDATE_INTERVAL_SECONDS)
    g.mark_start()
    clock.advance(SLEEP)
    g.update()
    assert g.value >= SLEEP // UPDATE_INTERVAL_SECONDS
    assert g.max_single_measurement == SLEEP
    clock.advance(SLEEP)
    g.update()
    assert g.max_single_measurement == 2 * SLEEP      # one period spanning two updates
    assert g.is_measuring


def test_timer_gauge_get_without_update():
    clock = ManualClock()
    g = TimerGauge(clock)
    g.mark_start()
    clock.advance(SLEEP)
    assert g.value == 0
    g.mark_end()
    assert g.value == 0 and g.max_single_measurement == 0


def test_timer_gauge_larger_timespan():
    clock = ManualClock()
    g = TimerGauge(clock, 2 * UPDATE_INTERVAL_SECONDS)
    g.mark_start()
    clock.advance(SLEEP)
    g.mark_end()
    g.update()
    assert g.value == SLEEP // UPDATE_INTERVAL_SECONDS
    assert g.max_single_measurement == SLEEP
    g.update()
    assert g.value == SLEEP // (2 * UPDATE_INTERVAL_SECONDS)   # one sleep in 2 intervals
    assert g.max_single_measurement == 0
    assert g.accumulated_count == SLEEP
    for _ in range(2):
        g.mark_start()
        clock.advance(SLEEP)
        g.mark_end()
        g.update()
    assert g.value == SLEEP // UPDATE_INTERVAL_SECONDS
    g.mark_start()
    clock.advance(SLEEP // 2)
    g.mark_end()
    g.update()
    assert g.max_single_measurement == SLEEP // 2
    assert g.accumulated_count == 3 * SLEEP + SLEEP // 2


def test_timer_gauge_is_clamped_to_1000_ms_per_second():
    clock = ManualClock()
    g = TimerGauge(clock)
    g.mark_start()
    clock.advance(60_000)     # a minute in one 5-second window (a stalled updater)
    g.update()
    assert g.value == 1000


def test_timer_gauge_full_window_is_averaged_over_its_buckets():
    clock = ManualClock()
    g = TimerGauge(clock, 60)
    for _ in range(12):                       # 12 buckets of 5 s; 2.5 s back-pressured in each
        g.mark_start()
        clock.advance(2500)
        g.mark_end()
        clock.advance(2500)
        g.update()
    assert g.value == 500
    for _ in range(12):                       # a minute without: the window forgets
        clock.advance(5000)
        g.update()
    assert g.value == 0 and g.accumulated_count == 12 * 2500


def test_timer_gauge_double_marks_are_ignored():
    clock = ManualClock()
    g = TimerGauge(clock)
    g.mark_end()                              # end without start: nothing
    g.mark_start()
    clock.advance(5)
    g.mark_start()                            # a second start keeps the first
    clock.advance(5)
    g.mark_end()
    g.mark_end()
    assert g.accumulated_count == 10


@pytest.mark.parametrize("span", [0, -5, 2.5, "5"])
def test_bad_time_spans(span):
    with pytest.raises(ValueError):
        TimerGauge(time_span_seconds=span)
    with pytest.raises(ValueError):
        MeterView(time_span_seconds=span)


# -- MeterView -------------------------------------------------------------------------------

def test_meter_view_rate_over_its_window():
    m = MeterView(Counter(), 60)               # 13 samples, 5 s apart
    for _ in range(12):
        m.mark_event(500)
        m.update()
    assert m.rate == pytest.approx(12 * 500 / 60)
    m.update()                                 # the oldest sample (0 events) leaves the window
    assert m.rate == pytest.approx(11 * 500 / 60)
    assert m.count == 6000


def test_meter_view_time_span_rounds_down_to_the_interval():
    assert MeterView(time_span_seconds=7).time_span_seconds == 5
    assert MeterView(time_span_seconds=3).time_span_seconds == 5
    assert MeterView(time_span_seconds=61).time_span_seconds == 60


# -- back-pressure level -----------------------------------------------------------------------

@pytest.mark.parametrize("ratio, level", [
    (0.0, "OK"), (0.1, "OK"), (0.1000001, "LOW"), (0.5, "LOW"), (0.50001, "HIGH"), (1.0, "HIGH"),
])
def test_backpressure_level_thresholds(ratio, level):
    assert backpressure_level(ratio) == level


@pytest.mark.parametrize("bad", [math.nan, "0.2", None, True])
def test_backpressure_level_rejects_non_numbers(bad):
    with pytest.raises(ValueError):
        backpressure_level(bad)


# -- registry ----------------------------------------------------------------------------------

def test_registry_scopes_snapshot_and_reporters():
    reg = MetricRegistry(start=False)
    task = reg.group("taskmanager", "tm-1", "Source", "0")
    c = task.counter("numRecordsOut")
    task.meter("numRecordsOutPerSecond", MeterView(c))
    buffers = task.add_group("Shuffle").add_group("Netty").add_group("Output").add_group("Buffers")
    buffers.gauge("outPoolUsage", lambda: 0.25)
    assert task.add_group("Shuffle") is task.add_group("Shuffle")
    seen = []

    class Collect(Reporter):
        closed = False

        def report(self, snapshot):
            seen.append(snapshot)

        def close(self):
            Collect.closed = True

    reg.subscribe(Collect())
    reg.subscribe(lambda snap: 1 / 0)        # a failing reporter never breaks the registry
    c.inc(50)
    snap = reg.update()
    assert snap == seen[-1] == {
        "taskmanager.tm-1.Source.0.numRecordsOut": 50,
        "taskmanager.tm-1.Source.0.numRecordsOutPerSecond": 50 / 60,
        "taskmanager.tm-1.Source.0.Shuffle.Netty.Output.Buffers.outPoolUsage": 0.25,
    }
    with pytest.raises(ValueError, match="already registered"):
        task.counter("numRecordsOut")
    with pytest.raises(ValueError):
        task.counter("a.b")
    task.remove()
    assert reg.update() == {}
    reg.close()
    assert Collect.closed


def test_registry_updater_thread_refreshes_views():
    import time

    with MetricRegistry(update_interval=0.02) as reg:
        m = reg.group("job").meter("rate", MeterView(Counter(), 5))
        m.mark_event(10)
        deadline = time.monotonic() + 5
        while m.rate == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert m.rate == 2.0            # 10 events over a 5-second window


def test_a_failing_gauge_is_left_out_of_snapshots_and_reporters_still_run(caplog):
    reg = MetricRegistry(start=False)
    g = reg.group("job")
    g.gauge("broken", lambda: 1 / 0)
    g.gauge("fine", lambda: 7)
    seen = []
    reg.subscribe(seen.append)
    assert reg.update() == {"job.fine": 7}
    assert seen == [{"job.fine": 7}]
    assert "job.broken" in caplog.text and "ZeroDivisionError" in caplog.text
    reg.close()
