"""A hypothesis model of the barrier handlers over real local channels.

A random program of producer steps — records to one channel, a checkpoint broadcast to every
open channel (some channels sending a cancellation marker instead of the barrier), a channel's
EndOfPartition — is staged per channel, and delivered to the real subpartitions in a random
interleaving (random amounts per channel, random reads by the consumer, random clock ticks for
timeouts). Whatever the interleaving:

* aligned: a checkpoint is triggered only if every channel sent its barrier, in increasing id
  order, and the records the task had taken when triggered are exactly those before the barrier
  on every channel;
* unaligned (and aligned-with-timeout, whichever way each checkpoint went): the records taken
  when triggered plus the captured in-flight data are exactly those before the barrier on every
  channel, for every checkpoint that was not aborted; an aborted one's data was dropped;
* at-least-once: the records taken when triggered include everything before the barrier;
* nothing stays blocked, the gate finishes, every pool is whole and no buffer leaks.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flinknet._core.pool import NetworkBufferPool
from flinknet.events import CancelCheckpointMarker, CheckpointBarrier
from tests.checkpointing.harness import (
    ALIGNED,
    AT_LEAST_ONCE,
    EOP,
    UNALIGNED,
    Harness,
    records_of,
    timeoutable,
)

TIMEOUT = 20

ops = st.lists(st.one_of(
    st.tuples(st.just("rec"), st.integers(0, 3), st.integers(1, 3)),
    st.tuples(st.just("ckpt"), st.sets(st.integers(0, 3), max_size=2), st.sampled_from(["a", "u", "t"]),
              st.booleans()),
    st.tuples(st.just("eop"), st.integers(0, 3)),
    st.tuples(st.just("deliver"), st.integers(0, 3), st.integers(1, 4)),
    st.tuples(st.just("read"), st.integers(1, 5)),
    st.tuples(st.just("tick"), st.integers(1, 15)),
), max_size=45)


def run(mode: str, n: int, program, after_finish: bool = True) -> None:
    nbp = NetworkBufferPool(512, 128)
    h = Harness(nbp, n, mode, enable_checkpoint_after_tasks_finished=after_finish)
    try:
        _run(h, mode, n, program)
    finally:
        h.close()
    assert nbp.is_whole, "the pool is not whole"
    nbp.destroy()


def _options(mode: str, kind: str):
    if mode == "aligned":
        return ALIGNED
    if mode == "tracker":
        return AT_LEAST_ONCE
    if mode == "unaligned":
        return UNALIGNED if kind != "a" else ALIGNED    # an aligned barrier is taken unaligned
    return {"a": ALIGNED, "u": UNALIGNED, "t": timeoutable(TIMEOUT)}[kind]


def _run(h: Harness, mode: str, n: int, program) -> None:
    staged: list[list] = [[] for _ in range(n)]
    ended = [False] * n
    next_record = 0
    next_checkpoint = 1
    sent: dict[int, set[int]] = {}          # checkpoint -> channels that got its barrier
    cancelled: set[int] = set()             # checkpoints some channel cancelled

    def read(limit: int | None) -> None:
        count = 0
        while limit is None or count < limit:
            before = len(h.log)
            boe = h.cgate.poll_next()
            if boe is None:
                return
            ch = boe.channel_info.input_channel_idx
            if boe.is_buffer:
                try:
                    for r in records_of(boe.buffer.to_bytes()):
                        h.seen[ch].append(r)
                        h.log.append(("rec", ch, r))
                finally:
                    boe.buffer.recycle()
            else:
                h.log.append(("event", ch, boe.event))
            assert len(h.log) > before
            count += 1

    for op in program:
        kind = op[0]
        if kind == "rec":
            ch = op[1] % n
            if not ended[ch]:
                for _ in range(op[2]):
                    staged[ch].append(next_record)
                    next_record += 1
        elif kind == "ckpt":
            cid = next_checkpoint
            next_checkpoint += 1
            options = _options(mode, op[2])
            b = CheckpointBarrier(cid, h.clock.absolute_time_millis(), options)
            sent[cid] = set()
            for ch in range(n):
                if ended[ch]:
                    continue
                if ch in op[1] and op[3]:
                    staged[ch].append(CancelCheckpointMarker(cid))
                    cancelled.add(cid)
                else:
                    staged[ch].append(b)
                    sent[cid].add(ch)
        elif kind == "eop":
            ch = op[1] % n
            if not ended[ch]:
                ended[ch] = True
                staged[ch].append(EOP)
        elif kind == "deliver":
            ch = op[1] % n
            items, staged[ch] = staged[ch][:op[2]], staged[ch][op[2]:]
            h.push(ch, *items)
        elif kind == "read":
            read(op[1])
        elif kind == "tick":
            h.clock.advance_millis(op[1])
    # the end: everything delivered, every channel ended, everything read
    for ch in range(n):
        if not ended[ch]:
            staged[ch].append(EOP)
        h.push(ch, *staged[ch])
        staged[ch] = []
    read(None)
    assert h.cgate.is_finished, h.handler
    assert not any(h.subpartition_blocked(ch) for ch in range(n))
    check(h, mode, n, sent, cancelled)


def check(h: Harness, mode: str, n: int, sent: dict[int, set[int]], cancelled: set[int]) -> None:
    triggered = h.task.triggered_ids
    aborted = set(h.task.aborted_ids)
    assert triggered == sorted(set(triggered)), triggered            # each once, in order
    for t in h.task.triggers:
        cid = t.checkpoint_id
        if mode == "tracker":
            for ch in range(n):
                expected = h.before_barrier(ch, cid)
                assert t.seen[ch][:len(expected)] == expected, (cid, ch)
            continue
        if mode == "aligned" or not t.options.is_unaligned:
            assert cid not in cancelled or cid in aborted or mode != "aligned", cid
            for ch in range(n):
                assert t.seen[ch] == h.before_barrier(ch, cid), (cid, ch, t.seen[ch])
            continue
        if cid in aborted:
            continue
        r = h.result(cid)
        assert r.input_finished, cid
        captured = {info.input_channel_idx: [x for b in bufs for x in records_of(b.to_bytes())]
                    for info, bufs in r.input_data.items()}
        for ch in range(n):
            got = t.seen[ch] + captured.get(ch, [])
            assert got == h.before_barrier(ch, cid), (cid, ch, t.seen[ch], captured.get(ch))
    if mode == "aligned":
        for cid in triggered:
            assert cid not in cancelled, cid
            assert cid not in aborted, cid
    # an aborted checkpoint's captured data was dropped; only completed ones are left
    for cid in h.writer.checkpoint_ids:
        assert cid not in aborted
    for cid, _ in h.writer.aborted:
        assert cid in aborted


@pytest.mark.parametrize("mode", ["aligned", "unaligned", "alternating", "tracker"])
@settings(max_examples=120)
@given(n=st.integers(1, 4), program=ops)
def test_model(mode, n, program):
    run(mode, n, program)


@pytest.mark.parametrize("mode", ["aligned", "unaligned", "alternating", "tracker"])
@settings(max_examples=40)
@given(n=st.integers(1, 3), program=ops)
def test_model_without_checkpoints_after_finish(mode, n, program):
    run(mode, n, program, after_finish=False)
