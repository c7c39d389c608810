"""Small real helpers shared by the test modules (no mocks)."""

import random
import threading

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
