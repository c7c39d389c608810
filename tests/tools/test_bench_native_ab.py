"""The native-engine A/B benchmark runs both paths and reports real measurements."""

from flinknet.tools.bench import native_ab


def test_throughput_case_runs_both_paths():
    r = native_ab.throughput_case(1000, 2000, rounds=1)
    for side in ("native", "python"):
        (seconds, cons_cpu, prod_cpu), = r[side]
        assert seconds > 0 and cons_cpu > 0 and prod_cpu > 0


def test_latency_case_runs_both_paths():
    r = native_ab.latency_case(300, rounds=1)
    for side in ("native", "python"):
        (p50, p99), = r[side]
        assert 0 < p50 <= p99
