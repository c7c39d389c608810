"""The credit-window comparison runs each configuration for real and reaches the side it names."""

from flinknet.tools.bench import window


def test_each_configuration_runs_and_sets_only_its_side():
    results = window.measure(1000, "batch", 3000, rounds=1, floating=24)
    assert len(results) == 3
    pools = {}
    for name, runs in results.items():
        (run,) = runs
        assert run["seconds"] > 0 and run["consumer_cpu_s"] > 0 and run["producer_cpu_s"] > 0
        pools[name] = run["consumer_gate_max_floating"]
    # Flink's 8 floating buffers per gate, except where the consumer was given more
    assert pools == {"Flink's defaults (2 + 8)": 8, "24 floating, producer only": 8,
                     "24 floating, consumer only": 24}


def test_main_prints_a_line_per_configuration(capsys, monkeypatch):
    monkeypatch.setattr(window, "CASES", ((1000, "batch", 1000),))
    window.main(["--rounds", "1", "--floating", "16"])
    out = capsys.readouterr().out
    assert "1000 B records" in out
    assert out.count("M records/s") == 3
    assert "consumer gate pool <= 16 floating" in out
