"""The end of a job loses nothing (issue 16): an environment asked to close while its finished
pipelined partitions are not consumed yet waits for them (``flinknet.network.close-timeout``),
then fails the rest loudly, naming them; leaving its ``with`` block by an exception does not
wait."""

from __future__ import annotations

import logging
import multiprocessing as mp
import time

import pytest

from flinknet import NetworkEnvironment, RecordReader, RecordWriter
from flinknet.errors import IllegalStateError
from flinknet.ids import ResultPartitionID
from tests.transport import procs
from tests.transport.test_faults import SMALL, _assert_whole, _stop_process

CTX = mp.get_context("spawn")


def test_a_producer_process_that_leaves_at_once_loses_nothing():
    """The README's lifecycle in a real producer process: finish, close, leave the ``with``
    block. Its consumer starts reading only afterwards and still gets every record, in order."""
    n = 20_000
    q_out, q_in = CTX.Queue(), CTX.Queue()
    proc = CTX.Process(target=procs.finish_and_leave, args=(q_out, q_in, n, SMALL))
    proc.start()
    try:
        pid, address = q_out.get(timeout=60)
        with NetworkEnvironment(SMALL) as cons:
            gate = cons.create_input_gate([(ResultPartitionID.from_bytes(pid), 0, tuple(address))])
            gate.request_partitions()
            q_in.put("go")
            time.sleep(1.0)                     # the producer is closing by now
            assert proc.is_alive(), "the producer closed before its partition was consumed"
            with RecordReader(gate) as r:
                assert list(r) == [b"%d" % i for i in range(n)]
            gate.close()
            _assert_whole(cons)
        tag, _seconds, whole = q_out.get(timeout=60)
        assert tag == "closed" and whole
        proc.join(30)
        assert proc.exitcode == 0
    finally:
        _stop_process(proc)


def test_unconsumed_partitions_fail_loudly_after_the_close_timeout(caplog):
    """A consumer that holds its channel but never reads: the producer's close waits
    ``close-timeout``, logs the partition as an error, and the consumer gets the reason."""
    opts = dict(SMALL, **{"flinknet.network.close-timeout": "300 ms"})
    with NetworkEnvironment(SMALL) as cons:
        prod = NetworkEnvironment(opts)
        p = prod.create_result_partition(1)
        gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
        gate.request_partitions()
        with RecordWriter(p, timeout=0) as w:
            for _ in range(500):               # more than the consumer's credit: some stay queued
                w.emit(bytes(100), 0)
        p.finish()
        with caplog.at_level(logging.ERROR, logger="flinknet.environment"):
            prod.close()
        assert str(p.partition_id) in caplog.text and "not consumed after 0.3 s" in caplog.text
        with RecordReader(gate) as r, pytest.raises(Exception, match="closed before partition"):
            for _ in r:
                pass
        gate.close()
        _assert_whole(cons, prod)


def test_leaving_by_an_exception_does_not_wait(caplog):
    opts = dict(SMALL, **{"flinknet.network.close-timeout": "1 h"})
    with caplog.at_level(logging.ERROR, logger="flinknet.environment"), \
            pytest.raises(RuntimeError, match="the job failed"), NetworkEnvironment(opts) as env:
        p = env.create_result_partition(2)
        p.finish()
        raise RuntimeError("the job failed")
    assert "not consumed after 0.0 s" in caplog.text
    assert p.is_released and isinstance(p.failure_cause, IllegalStateError)


def test_partly_read_partitions_and_explicit_timeouts():
    """close(timeout=0) fails at once; close() with nothing unconsumed does not wait; a bad
    timeout is refused before anything is closed."""
    with NetworkEnvironment(SMALL) as env:
        with pytest.raises(ValueError, match="timeout"):
            env.close(-1)
        p = env.create_result_partition(1)
        p.close()                                # never finished: nothing to wait for
    assert env._closed


# -- addressing ----------------------------------------------------------------------------


# the point of the test is a fork of a process with threads (the environment's): Python 3.12+
# warns about exactly that
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
def test_an_environment_used_after_fork_raises_a_clear_error():
    """A child forked from a process with an environment has none of its threads: every use of
    the environment (closing too) raises IllegalStateError naming both processes, at once."""
    import os

    with NetworkEnvironment(SMALL) as env:
        r, w = os.pipe()
        child = os.fork()
        if child == 0:                                     # the child: report, never return
            try:
                msgs = []
                for use in (lambda: env.create_result_partition(1), env.close):
                    try:
                        use()
                        msgs.append("no error")
                    except IllegalStateError as err:
                        msgs.append(str(err))
                os.write(w, "\n".join(msgs).encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            out = f.read()
        os.waitpid(child, 0)
        lines = out.split("\n")
        assert len(lines) == 2, out
        for line in lines:
            assert f"created in process {os.getpid()}" in line and f"({child})" in line, line
        p = env.create_result_partition(1)                 # the parent's is unaffected
        p.close()


def test_a_wildcard_bind_advertises_a_connectable_address():
    """``taskmanager.host`` is what other environments connect to; without it a wildcard bind
    host advertises this host's address, never ``0.0.0.0``."""
    opts = dict(SMALL, **{"taskmanager.network.bind-host": "0.0.0.0"})
    with NetworkEnvironment(opts) as env:
        assert env.bind_address[0] == "0.0.0.0"
        assert env.address[0] not in ("0.0.0.0", "::", "") and env.address[1] == env.bind_address[1]
    opts["taskmanager.host"] = "127.0.0.1"
    with NetworkEnvironment(opts) as prod, NetworkEnvironment(SMALL) as cons:
        assert prod.address == ("127.0.0.1", prod.bind_address[1])
        p = prod.create_result_partition(1)
        local = prod.create_input_gate([(p.partition_id, 0, prod.address)])   # its own: local
        assert not local.get_channel(0).is_remote
        local.close()
        gate = cons.create_input_gate([(p.partition_id, 0, f"127.0.0.1:{prod.address[1]}")])
        with RecordWriter(p, timeout=0) as w:
            w.emit(b"x", 0)
        p.finish()
        p.close()
        with RecordReader(gate) as rd:
            assert list(rd) == [b"x"]
        gate.close()
