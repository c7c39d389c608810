"""pytest-benchmark kernels of the memory core, each in a group with its pure-Python baseline.

Run: ``python -m pytest bench --benchmark-only`` (not part of the default test run). Compare rows
within a group: ``flinknet`` against ``python`` measured in the same session.
"""

import pytest

from flinknet._core.pool import NetworkBufferPool

SEGMENT = 32 * 1024


@pytest.fixture
def pool():
    nbp = NetworkBufferPool(16, SEGMENT)
    lbp = nbp.create_buffer_pool(4, 4)
    yield lbp
    lbp.lazy_destroy()
    assert nbp.is_whole
    nbp.destroy()


@pytest.mark.benchmark(group="request+recycle")
def test_request_recycle_flinknet(benchmark, pool):
    request = pool.request_buffer

    def run():
        for _ in range(1000):
            request().recycle()

    benchmark(run)


@pytest.mark.benchmark(group="request+recycle")
def test_request_builder_close_flinknet(benchmark, pool):
    request = pool.request_buffer_builder

    def run():
        for _ in range(1000):
            request().close()

    benchmark(run)


@pytest.mark.benchmark(group="request+recycle")
def test_global_segment_request_recycle_flinknet(benchmark):
    nbp = NetworkBufferPool(16, SEGMENT)
    request, recycle = nbp.request_pooled_memory_segment, nbp.recycle_pooled_memory_segment

    def run():
        for _ in range(1000):
            recycle(request())

    benchmark(run)
    assert nbp.is_whole
    nbp.destroy()


@pytest.mark.benchmark(group="request+recycle")
def test_request_recycle_python(benchmark):
    free = [bytearray(SEGMENT) for _ in range(4)]

    class Buf:
        __slots__ = ("seg", "refs")

        def __init__(self, seg):
            self.seg = seg
            self.refs = 1

        def recycle(self):
            self.refs -= 1
            if not self.refs:
                free.append(self.seg)

    def run():
        for _ in range(1000):
            Buf(free.pop()).recycle()

    benchmark(run)


@pytest.mark.parametrize("chunk", [16, 100, 1000, SEGMENT])
def test_append_and_commit_flinknet(benchmark, pool, chunk):
    benchmark.group = f"append {chunk} B"
    data = bytes(chunk)
    n = SEGMENT // chunk

    def run():
        b = pool.request_buffer_builder()
        append = b.append_and_commit
        for _ in range(n):
            append(data)
        b.close()

    benchmark(run)


@pytest.mark.parametrize("chunk", [16, 100, 1000, SEGMENT])
def test_append_python_memoryview(benchmark, chunk):
    benchmark.group = f"append {chunk} B"
    data = bytes(chunk)
    n = SEGMENT // chunk
    target = memoryview(bytearray(SEGMENT))

    def run():
        pos = 0
        for _ in range(n):
            end = pos + chunk
            target[pos:end] = data
            pos = end

    benchmark(run)
