"""Small real helpers shared by the test modules (no mocks)."""

import contextlib
import random
import threading
import time

from flinknet._core.buffer import BufferRecycler
from flinknet._core.memory import MemorySegment


class RecordingRecycler(BufferRecycler):
    """A real recycler that remembers every segment it was handed."""

    def __init__(self):
        self.segments = []

    def recycle(self, segment):
        self.segments.append(segment)

    @property
    def calls(self):
        return len(self.segments)


class Worker(threading.Thread):
    """Runs ``fn(*args)`` in a daemon thread and keeps its result or exception."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self._fn = fn
        self._args = args
        self.result = None
        self.error: BaseException | None = None

    def run(self):
        try:
            self.result = self._fn(*self._args)
        except BaseException as e:  # noqa: BLE001 - checked by the test
            self.error = e

    def finish(self, timeout: float = 10.0):
        """Join, and fail the test if the thread is still running."""
        self.join(timeout)
        assert not self.is_alive(), f"{self._fn.__name__} did not finish"
        return self


def pattern(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def segment_with(data: bytes) -> MemorySegment:
    seg = MemorySegment(len(data))
    seg.put_bytes(0, data)
    return seg


def contents(seg: MemorySegment) -> bytes:
    return seg.get_bytes(0, seg.size)


def assert_whole(*envs, timeout: float = 10.0) -> None:
    """Every network buffer of every environment is back in its pool (within ``timeout``
    seconds: an I/O thread may still be recycling what it sent)."""
    deadline = time.monotonic() + timeout
    while not all(e.network_buffer_pool.is_whole for e in envs) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(e.network_buffer_pool.is_whole for e in envs), [
        e.network_buffer_pool.total_segments - e.network_buffer_pool.available_segments for e in envs]


def wait_queued(channel, n: int, timeout: float = 30.0) -> None:
    """Until ``channel`` has ``n`` buffers received and not taken (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    q = channel.queue
    while q.queued_buffers < n and time.monotonic() < deadline:
        time.sleep(0.001)
    gate = channel.input_gate
    signal = gate.signal if gate is not None else None
    # what a failure needs to tell a lost credit from a lost buffer
    assert q.queued_buffers == n, (
        f"{q.queued_buffers} of {n} buffers queued after {timeout} s: buffers received "
        f"{q.buffers_received}, free slots {q.free_slots}, unannounced credit "
        f"{q.unannounced_credit}, attached {q.is_attached}, deferred credit "
        f"{signal.deferred_credit_count if signal is not None else None}")


@contextlib.contextmanager
def first_record_read(config: dict):
    """A one-channel remote exchange (both environments configured by ``config``) whose first
    record the threaded reader has read, so the gate's fast lane is in use: ``(writer, gate,
    reader, channel)``, the writer's timeout 0. The pools are checked whole at the end."""
    from flinknet.consumer import RecordReader
    from flinknet.environment import NetworkEnvironment
    from flinknet.writer import RecordWriter

    with NetworkEnvironment(config) as prod, NetworkEnvironment(config) as cons:
        partition = prod.create_result_partition(1)
        gate = cons.create_input_gate([(partition.partition_id, 0, prod.address)])
        with RecordWriter(partition, timeout=0) as w:
            with gate, RecordReader(gate) as reader:
                w.emit(b"first", 0)
                assert reader.read_batch() == [b"first"]
                yield w, gate, reader, gate.input_channels[0]
        partition.close()
    assert_whole(prod, cons)


def count_calls(obj, name: str, counts: dict, results: bool = False) -> None:
    """Count the calls of ``obj.<name>`` in ``counts[name]`` (an instance attribute over the
    method: callers look it up at every call); with ``results``, also each result in
    ``counts[(name, result)]``."""
    method = getattr(obj, name)

    def counted(*args):
        counts[name] = counts.get(name, 0) + 1
        out = method(*args)
        if results:
            counts[(name, out)] = counts.get((name, out), 0) + 1
        return out

    setattr(obj, name, counted)


@contextlib.contextmanager
def two_local_gates(config: dict):
    """Two gates of one environment (configured by ``config``), each reading a partition of
    that environment through a local channel, so neither has a fast lane: ``(first, second)``,
    the first's partitions requested."""
    from flinknet.environment import NetworkEnvironment

    with NetworkEnvironment(config) as env:
        partitions = [env.create_result_partition(1) for _ in range(2)]
        first, second = (env.create_input_gate([(p.partition_id, 0, None)], gate_index=i)
                         for i, p in enumerate(partitions))
        with first, second:
            first.request_partitions()
            yield first, second
        for p in partitions:
            p.close()
