"""``flinknet demo``: the real multi-process job, its views, its check and its clean shutdown.

Each run is a subprocess with a generous timeout; assertions are on what the demo printed and on
the processes and ports it left behind (none), never on timings. The runs use the default
``--runner process``; one runs on Ray.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import urllib.request

import pytest

from flinknet.core import StreamElementSerializer, StreamRecord
from flinknet.graph import Partitioning
from flinknet.tools import demo
from flinknet.tools.demo import coordinator, job

DEMO = [sys.executable, "-m", "flinknet", "demo"]
TIMEOUT = 150          # seconds for one run (a 10-second job; generous for a loaded 2-core machine)
LISTENING = re.compile(r"task=(\S+) pid=(\d+) listening=([\d.]+):(\d+)")


# -- helpers -----------------------------------------------------------------------------------

def _run(args, tmp_path, name="out.txt", timeout=TIMEOUT):
    """Run the demo with stdout and stderr in a file; returns (exit status, output)."""
    path = tmp_path / name
    with open(path, "w") as out:
        proc = subprocess.Popen(DEMO + args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise
    return code, path.read_text()


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _tasks(output: str) -> dict[str, tuple[int, str, int]]:
    """``{task: (pid, host, port)}`` from the demo's start-up lines."""
    return {m.group(1): (int(m.group(2)), m.group(3), int(m.group(4))) for m in LISTENING.finditer(output)}


def _assert_all_gone(output: str, expected_tasks: int) -> None:
    """Every task process the demo started has exited and nothing listens on its port."""
    tasks = _tasks(output)
    assert len(tasks) == expected_tasks, output[-3000:]
    assert len({pid for pid, _, _ in tasks.values()}) == expected_tasks     # one process per task
    deadline = time.monotonic() + 10
    for name, (pid, host, port) in tasks.items():
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), f"{name} (pid {pid}) is still running"
        with pytest.raises(OSError):
            socket.create_connection((host, port), timeout=2).close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the job -----------------------------------------------------------------------------------

def test_no_live_run_passes_its_check_and_shows_backpressure(tmp_path):
    code, out = _run(["--no-live", "--duration", "10"], tmp_path)
    assert code == 0, out[-4000:]
    for phase in ("steady", "slow", "recovery", "finish", "done"):
        assert f"=== phase {phase}:" in out
    # one line per task per interval, with the Flink metric values
    line = re.compile(r"phase=(\w+) task=(\w+)\[(\d)\] pid=\d+ state=\w+ in/s=\d+ out/s=\d+ outPool=[\d.]+ "
                      r"inPool=([\d.]+) bp=([\d.]+) level=(OK|LOW|HIGH)")
    rows = [m.groups() for m in line.finditer(out)]
    assert {(r[1], r[2]) for r in rows} == {("Source", "0"), ("Source", "1"), ("Aggregator", "0"),
                                            ("Aggregator", "1"), ("Sink", "0")}
    # the slowed aggregator back-pressures the sources: HIGH during the slow phase
    assert any(r[0] == "slow" and r[1] == "Source" and r[5] == "HIGH" for r in rows), out[-4000:]
    # its input buffers fill up and its channels run out of credit
    assert any(r[0] == "slow" and r[1:3] == ("Aggregator", "0") and float(r[3]) >= 0.99 for r in rows)
    assert re.search(r"phase=slow task=Aggregator\[0\] .*credit/backlog=Source\[0\]:0/", out)
    assert "latency_ms=p50:" in out
    # the summary, its per-phase back-pressure and the exactly-once check
    assert re.search(r"RESULT task=Source\[\d\] .*max_bp_slow=HIGH", out)
    assert re.search(r"RESULT check=PASS keys=1000 produced=(\d+) aggregated=\1 at_sink=\1 "
                     r"lost=0 duplicated=0", out)
    assert "CHECK PASSED" in out and "Summary per task" in out and "End-to-end latency" in out
    _assert_all_gone(out, 5)


def test_the_demo_on_ray(tmp_path):
    pytest.importorskip("ray")
    code, out = _run(["--no-live", "--duration", "5", "--runner", "ray"], tmp_path)
    assert code == 0, out[-4000:]
    assert "on the ray runner: one Ray actor per task" in out
    for phase in ("steady", "slow", "recovery", "finish", "done"):
        assert f"=== phase {phase}:" in out
    assert re.search(r"RESULT check=PASS keys=1000 produced=(\d+) aggregated=\1 at_sink=\1 "
                     r"lost=0 duplicated=0", out), out[-4000:]
    assert "CHECK PASSED" in out
    # the actors report their pids and listen on the cluster's address (loopback)
    assert {host for _, host, _ in _tasks(out).values()} == {"127.0.0.1"}
    _assert_all_gone(out, 5)


def test_lost_records_fail_the_check(tmp_path):
    code, out = _run(["--no-live", "--duration", "4", "--sources", "1", "--aggregators", "1",
                      "--inject-loss", "5"], tmp_path)
    assert code == 1, out[-3000:]
    assert re.search(r"RESULT check=FAIL .* lost=5 duplicated=0", out)
    assert "CHECK FAILED" in out
    _assert_all_gone(out, 3)


def test_a_failing_task_fails_the_run_and_stops_every_process(tmp_path):
    code, out = _run(["--no-live", "--duration", "4", "--inject-failure", "aggregator"], tmp_path)
    assert code == 1, out[-3000:]
    assert "FAILED: Aggregator[0]" in out and "RuntimeError: injected failure" in out
    assert "RESULT check=NOT-RUN" in out
    _assert_all_gone(out, 5)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_stops_every_process(tmp_path, signum):
    path = tmp_path / "out.txt"
    with open(path, "w") as f:
        proc = subprocess.Popen(DEMO + ["--no-live", "--duration", "30"], stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + TIMEOUT
            while "=== phase steady" not in path.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, path.read_text()[-3000:]
                time.sleep(0.1)
            proc.send_signal(signum)
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                _kill_group(proc)
    out = path.read_text()
    assert code == 128 + signum, out[-3000:]
    assert "interrupted" in out and "RESULT check=NOT-RUN interrupted" in out
    _assert_all_gone(out, 5)


# -- the live view -------------------------------------------------------------------------------

def test_live_view_in_a_terminal(tmp_path):
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    env.pop("COLUMNS", None)
    proc = subprocess.Popen(DEMO + ["--duration", "6"], stdin=slave, stdout=slave, stderr=slave,
                            env=env, start_new_session=True)
    os.close(slave)
    data = bytearray()
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 1 << 16)
                except OSError:          # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                data += chunk
            elif proc.poll() is not None:
                break
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
        os.close(master)
    text = data.decode("utf-8", "replace")
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert code == 0, plain[-4000:]
    assert "\x1b[" in text                                   # drawn with terminal control sequences
    assert "━" in plain                                      # the progress bar
    for heading in ("flinknet demo", "Tasks", "Remote input channels", "outPool", "inPool", "Credit",
                    "Latency at the sink", "Summary per task"):
        assert heading in plain, heading
    assert re.search(r"Source\[0\] → Aggregator\[0\]", plain)
    assert "HIGH" in plain and "CHECK PASSED" in plain
    _assert_all_gone(plain, 5)


# -- Prometheus ----------------------------------------------------------------------------------

def test_prometheus_serves_the_tasks_metrics_while_running(tmp_path):
    from prometheus_client import parser  # in the test extra: fail, never skip, without it
    port = _free_port()
    path = tmp_path / "out.txt"
    with open(path, "w") as f:
        proc = subprocess.Popen(DEMO + ["--no-live", "--duration", "6", "--prometheus", str(port)],
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + TIMEOUT
            # wait until every task has reported at least once
            while len(re.findall(r"phase=\w+ task=(\S+)", path.read_text())) < 5:
                assert proc.poll() is None and time.monotonic() < deadline, path.read_text()[-3000:]
                time.sleep(0.1)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                text = response.read().decode()
            code = proc.wait(TIMEOUT)
        finally:
            if proc.poll() is None:
                _kill_group(proc)
    out = path.read_text()
    assert code == 0, out[-3000:]
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    tasks = {s.labels["task_name"] for s in families["flinknet_taskmanager_job_task_numRecordsOut"].samples}
    assert tasks == {"Source", "Aggregator", "Sink"}
    for name in ("backPressuredTimeMsPerSecond", "numRecordsInPerSecond",
                 "Shuffle_Netty_Input_Buffers_inPoolUsage", "Shuffle_Netty_Output_Buffers_outPoolUsage"):
        assert f"flinknet_taskmanager_job_task_{name}" in families, name
    assert any(s.labels.get("job_name") == "demo" for f in families.values() for s in f.samples)
    assert "flinknet_taskmanager_Shuffle_Netty_TotalMemorySegments" in families
    with pytest.raises(OSError):                             # the server is gone with the demo
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    _assert_all_gone(out, 5)


def test_prometheus_without_the_client_fails_before_starting(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)     # import raises ImportError
    assert demo.main(["--no-live", "--prometheus", "0"]) == 2
    err = capsys.readouterr().err
    assert "prometheus_client" in err and "pip install" in err


# -- arguments -----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--sources", "0"], "sources must be between 1 and 16"),
    (["--aggregators", "x"], "aggregators must be an integer"),
    (["--duration", "1"], "duration must be >= 4.0"),
    (["--duration", "nan"], "duration must be"),
    (["--keys", "0"], "keys must be between 1 and"),
    (["--record-size", "8"], "record size must be between 12"),
    (["--buffer-timeout", "-5"], "buffer timeout must be -1"),
    (["--rate", "-1"], "rate must be >= 0"),
    (["--slow-factor", "0"], "slow factor must be > 0.0"),
    (["--slow-factor", "1.5"], "slow factor must be > 0.0 and <= 1.0"),
    (["--aggregators", "2", "--slow-aggregator", "2"], "--slow-aggregator 2 does not exist"),
    (["--network-memory", "12zz"], "cannot parse memory size"),
    (["--prometheus", "70000"], "port must be between 0 and 65535"),
    (["--live", "--no-live"], "not allowed with argument"),
    (["--runner", "bogus"], "argument --runner: invalid choice: 'bogus'"),
    (["--runner"], "argument --runner: expected one argument"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_arguments_exit_with_status_2(args, message, capsys):
    assert demo.main(args) == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_ray_runner_without_ray_fails_before_starting(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)                   # import raises ImportError
    assert demo.main(["--no-live", "--runner", "ray"]) == 2
    err = capsys.readouterr().err
    assert "--runner ray" in err and "pip install 'flinknet[ray]'" in err


def test_the_demo_without_rich_fails_before_starting(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rich", None)
    assert demo.main(["--no-live"]) == 2
    assert "pip install 'flinknet[demo]'" in capsys.readouterr().err


def test_help_lists_the_options(capsys):
    from flinknet.tools.cli import main

    assert main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--duration", "--sources", "--aggregators", "--keys", "--record-size", "--buffer-timeout",
                 "--rate", "--latency-interval", "--slow-factor", "--no-live", "--prometheus", "--runner"):
        assert flag in out, flag
    assert "--inject-loss" not in out                        # testing options stay hidden
    assert main(["demo", "--sources", "0"]) == 2
    assert main(["version"]) == 0
    assert main(["nonsense"]) == 2


def test_config_phases_and_defaults():
    cfg = coordinator.parse_config([])
    assert cfg.duration <= 30 and cfg.sources >= 1 and cfg.aggregators >= 1 and cfg.runner == "process"
    assert coordinator.parse_config(["--runner", "thread"]).runner == "thread"
    assert [p for p, _ in cfg.phase_schedule()] == ["steady", "slow", "recovery"]
    starts = [t for _, t in cfg.phase_schedule()]
    assert starts == sorted(starts) and starts[0] == 0 and starts[-1] < cfg.duration
    assert job.record_dtype(100).itemsize == 100 and job.record_dtype(12).itemsize == 12


def test_the_job_graph_and_its_functions_travel_to_workers():
    cfg = coordinator.parse_config(["--sources", "3", "--aggregators", "4", "--buffer-timeout", "5"])
    graph = job.build_graph(cfg)
    assert [(v.name, v.parallelism) for v in graph.vertices] == [("Source", 3), ("Aggregator", 4), ("Sink", 1)]
    assert graph.vertex("Aggregator").max_parallelism == job.MAX_PARALLELISM == 128
    keyed, to_sink = graph.edges
    assert keyed.partitioning is Partitioning.KEY_GROUPS and keyed.key_selector is job.record_key
    assert to_sink.partitioning is Partitioning.REBALANCE and to_sink.target.name == "Sink"
    assert keyed.buffer_timeout == to_sink.buffer_timeout == 5.0
    # what the process and Ray runners send their workers: the graph (its serializers and key
    # selector) and the task functions bound to the configuration
    graph2, functions = pickle.loads(pickle.dumps((graph, job.task_functions(cfg))))
    assert set(functions) == {"Source", "Aggregator", "Sink"}
    assert all(f.args == (cfg,) for f in functions.values())
    serializer = graph2.edges[0].serializer
    assert isinstance(serializer, StreamElementSerializer)
    record = StreamRecord(b"\x00\x00\x00\x07" + bytes(96), 42)
    assert job.record_key(record) == 7
    writer_side = pickle.loads(pickle.dumps(StreamElementSerializer("bytes")))
    assert type(writer_side.value_serializer) is type(serializer.value_serializer)
