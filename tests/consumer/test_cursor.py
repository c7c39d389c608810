"""The native record cursor behind ``RecordReader`` (``flinknet._core.cursor``): its completed
awaitable, its async iteration, and a model check that every read form, interleaved at random,
hands out every record once and in order."""

import asyncio
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flinknet._core.cursor import AWAIT_CALLS_AM_SEND, Completed, RecordCursor


def test_await_calls_am_send_only_where_cpython_does():
    assert AWAIT_CALLS_AM_SEND == (sys.version_info < (3, 12))


def test_completed_gives_its_value_without_suspending():
    async def main():
        values = [await Completed(v) for v in (1, None, (2, 3), StopIteration(4), b"x")]
        wrapped = await asyncio.ensure_future(Completed("task"))   # through asyncio's wrapper
        gathered = await asyncio.gather(Completed("a"), Completed("b"))
        return values, wrapped, gathered

    values, wrapped, gathered = asyncio.run(main())
    assert values[0] == 1 and values[1] is None and values[2] == (2, 3)
    assert isinstance(values[3], StopIteration) and values[3].args == (4,)   # a value, not raised
    assert values[4] == b"x"
    assert wrapped == "task" and gathered == ["a", "b"]


def test_completed_is_awaited_once():
    c = Completed(5)

    async def twice():
        assert await c == 5
        await c

    with pytest.raises(RuntimeError, match="already awaited"):
        asyncio.run(twice())
    it = Completed(6).__await__()
    with pytest.raises(StopIteration) as info:
        next(it)
    assert info.value.value == 6
    with pytest.raises(RuntimeError, match="already awaited"):
        next(it)
    with pytest.raises(KeyError):
        Completed(7).throw(KeyError("k"))
    Completed(8).close()


class Source:
    """A reader's read_batch over a fixed list of batches (None: nothing ready yet)."""

    def __init__(self, batches):
        self.batches = list(batches)
        self.reads = 0

    def read_batch(self, timeout=None, blocking=True):
        self.reads += 1
        while self.batches:
            b = self.batches.pop(0)
            if b is not None or not blocking:
                return b
        return None


def make_cursor(source, yield_every=64):
    async def wait_next(yield_first):
        cursor = holder[0]
        cursor.partitions_requested = True
        if yield_first:
            await asyncio.sleep(0)
        while True:
            batch = source.read_batch(None, False)
            if batch is None:
                if not source.batches:
                    raise StopAsyncIteration
                await asyncio.sleep(0)        # "wait" for the next buffer
                continue
            if batch:
                cursor.set_batch(batch, 1)
                return batch[0]

    holder = [RecordCursor(source.read_batch, wait_next, yield_every)]
    return holder[0]


def test_cursor_validates_its_arguments():
    with pytest.raises(TypeError):
        RecordCursor(None, lambda y: None)
    with pytest.raises(ValueError, match="yield_every"):
        RecordCursor(lambda t, b: None, lambda y: None, 0)
    c = RecordCursor(lambda t, b: None, lambda y: None)
    with pytest.raises(ValueError, match="pos"):
        c.set_batch([1, 2], 3)
    with pytest.raises(TypeError):
        c.set_batch(None)


def test_async_for_over_batches_with_gaps_and_empty_batches():
    source = Source([[1, 2], [], None, [3], None, None, [4, 5, 6]])
    cursor = make_cursor(source)

    async def main():
        return [r async for r in cursor]

    assert asyncio.run(main()) == [1, 2, 3, 4, 5, 6]


def test_async_for_yields_to_the_loop_every_yield_every_buffers():
    source = Source([[i] for i in range(40)])
    cursor = make_cursor(source, yield_every=4)
    ticks = []

    async def other():
        while True:
            ticks.append(len(got))
            await asyncio.sleep(0)

    got = []

    async def main():
        t = asyncio.ensure_future(other())
        await asyncio.sleep(0)
        async for r in cursor:
            got.append(r)
        t.cancel()

    asyncio.run(main())
    assert got == list(range(40))
    assert len(ticks) >= 40 // 4        # the other task ran at least once per 4 buffers


def test_next_record_reads_blocking_and_stops_at_the_end():
    source = Source([[1], [], [2, 3]])
    cursor = make_cursor(source)
    assert [cursor.next_record(), cursor.next_record(), cursor.next_record()] == [1, 2, 3]
    with pytest.raises(StopIteration):
        cursor.next_record()
    assert len(cursor) == 0


def test_take_rest_and_clear():
    cursor = make_cursor(Source([]))
    cursor.set_batch([1, 2, 3, 4], 1)
    assert len(cursor) == 3
    assert cursor.take_rest() == [2, 3, 4] and len(cursor) == 0
    cursor.set_batch([5, 6])
    cursor.clear()
    assert len(cursor) == 0 and cursor.take_rest() == []


@settings(max_examples=200, deadline=None)
@given(batches=st.lists(st.one_of(st.none(), st.lists(st.integers(0, 9), max_size=5)), max_size=30),
       ops=st.lists(st.sampled_from(["anext", "next", "for_break", "rest"]), max_size=60),
       yield_every=st.integers(1, 5))
def test_every_read_form_interleaved_hands_out_each_record_once_in_order(batches, ops, yield_every):
    # records are numbered so that order and uniqueness are checked together
    counter = iter(range(10**6))
    numbered = [None if b is None else [next(counter) for _ in b] for b in batches]
    expected = [r for b in numbered if b for r in b]
    cursor = make_cursor(Source(numbered), yield_every)
    got = []

    async def main():
        for op in ops:
            if op == "anext":
                try:
                    got.append(await anext(cursor))
                except StopAsyncIteration:
                    pass
            elif op == "next":
                try:
                    got.append(cursor.next_record())
                except StopIteration:
                    pass
            elif op == "for_break":
                n = 0
                async for r in cursor:
                    got.append(r)
                    n += 1
                    if n == 2:
                        break
            else:
                got.extend(cursor.take_rest())
        async for r in cursor:
            got.append(r)

    asyncio.run(main())
    assert got == expected
