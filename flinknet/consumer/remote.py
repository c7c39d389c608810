"""Remote input channels: read a subpartition of another environment over TCP (Flink's
``RemoteInputChannel`` with its ``BufferManager``).

A :class:`RemoteInputChannel` owns ``initial_credit`` exclusive buffers (requested from the global
pool at setup) and borrows floating buffers from its gate's pool as the sender's backlog asks for
them (Flink's ``BufferManager``). Every free buffer is one credit, announced to the sender once
(coalesced AddCredit); the I/O thread decodes each arriving data buffer straight into one of them.
Received buffers wait in a queue bounded by the credits given, so the sender can never push more
than the receiver has room for: that is credit-based flow control.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from flinknet._core.buffer import Buffer, DataType, NetworkBuffer
from flinknet._core.engine import ChannelQueue
from flinknet._core.pool import NetworkBufferPool
from flinknet.consumer.channels import (
    DEFAULT_INITIAL_BACKOFF,
    DEFAULT_MAX_BACKOFF,
    InputChannel,
)
from flinknet.errors import (
    BufferReorderingError,
    CancelTaskError,
    FlinknetError,
    IllegalStateError,
    PartitionNotFoundError,
)
from flinknet.events import CheckpointBarrier, EventAnnouncement, from_buffer, to_buffer
from flinknet.ids import InputChannelID, ResultPartitionID
from flinknet.interfaces import BufferAndBacklog, PartitionRequestClient
from flinknet.types import Address

if TYPE_CHECKING:
    from flinknet.consumer.gate import SingleInputGate
    from flinknet.transport.client import ConnectionManager

__all__ = ["BufferReorderingError", "RemoteInputChannel"]

_BLOCKING_TYPES = frozenset(t for t in DataType if t.is_blocking_upstream)
_PRIORITY_TYPES = frozenset(t for t in DataType if t.has_priority)
_TIMEOUTABLE_BARRIER = DataType.TIMEOUTABLE_ALIGNED_CHECKPOINT_BARRIER


def _barrier_of(buffer: Buffer) -> CheckpointBarrier | None:
    """The checkpoint barrier in an event buffer, or None (a corrupt event fails the read that
    takes it, not the receiving thread)."""
    try:
        event = from_buffer(buffer)
    except Exception:  # noqa: BLE001
        return None
    return event if isinstance(event, CheckpointBarrier) else None


class RemoteInputChannel(InputChannel):
    """Reads subpartition ``subpartition_index`` of ``partition_id`` from the environment at
    ``address`` through the shared connection of ``connection_manager``.

    Its credit slots and received buffers live in a native
    :class:`~flinknet._core.engine.ChannelQueue` that the native I/O thread fills without the GIL
    (or the Python transport, for TLS and TCP-backpressure connections)."""

    is_remote = True

    def __init__(self, input_gate: SingleInputGate, channel_index: int, partition_id: ResultPartitionID,
                 subpartition_index: int, address: Address, connection_manager: ConnectionManager,
                 network_buffer_pool: NetworkBufferPool, initial_credit: int = 2,
                 initial_backoff: int = DEFAULT_INITIAL_BACKOFF, max_backoff: int = DEFAULT_MAX_BACKOFF):
        super().__init__(input_gate, channel_index, partition_id, subpartition_index,
                         initial_backoff, max_backoff)
        if initial_credit < 0:
            raise ValueError("initial_credit must be >= 0")
        self.address: Address = (str(address[0]), int(address[1]))
        self.connection_manager = connection_manager
        self.network_buffer_pool = network_buffer_pool
        self.input_channel_id = InputChannelID.generate()
        self.initial_credit = initial_credit
        self._lock = threading.Lock()
        self._queue: ChannelQueue | None = None
        self._released = False
        self._client: PartitionRequestClient | None = None
        self._num_exclusive_total = 0
        self._num_required = 0
        self._waiting_for_floating = False
        self._sender_backlog = 0
        # Unaligned checkpoints (Flink's lastBarrierId / lastBarrierSequenceNumber): the newest
        # priority barrier received and its sequence number (recorded by the receiving thread
        # before the barrier is queued); the last sequence number the task took, and the last
        # one captured as in-flight data (task thread).
        self._last_barrier_id = -1
        self._last_barrier_seq: int | None = None
        self._last_polled_seq = -1                      # -1: just before the first (0)
        self._last_data_seq = -1
        self._captured_through: int | None = None
        self.num_bytes_in = 0
        self.num_buffers_in = 0

    @property
    def queue(self) -> ChannelQueue:
        """The native credit slots and received-buffer queue (made on first use)."""
        q = self._queue
        if q is None:
            with self._lock:
                q = self._queue
                if q is None:
                    signal = self.input_gate.signal
                    if signal is None:
                        raise IllegalStateError(f"{self}: the gate's channels are not set yet")
                    q = ChannelQueue(signal, self.channel_index,
                                     self.input_channel_id.to_bytes(),
                                     self.network_buffer_pool.recycle_unpooled_memory_segments)
                    q.set_announce_callback(self._on_credit)
                    q.set_backlog_callback(self.on_sender_backlog)
                    q.set_required(self.initial_credit)
                    if self._released:
                        q.release()
                    self._queue = q
        return q

    # -- setup -----------------------------------------------------------------------------

    def setup(self) -> None:
        """Request the exclusive buffers from the global pool (unpooled, Flink's setup); they are
        the initial credit of the PartitionRequest, not announced again."""
        q = self.queue
        if self.initial_credit and not self._num_exclusive_total:
            segments = self.network_buffer_pool.request_unpooled_memory_segments(self.initial_credit)
            self._num_exclusive_total = len(segments)
            for seg in segments:
                q.add_exclusive(seg, announce=False)

    def request_subpartitions(self) -> None:
        """Connect (or share the connection) and send the PartitionRequest with the initial credit."""
        with self._lock:
            if self._released or self._client is not None:
                return
        if not self._num_exclusive_total and self.initial_credit:
            self.setup()
        client = self.connection_manager.create_client(self.address)
        with self._lock:
            if self._released:
                released = True
            else:
                released = False
                self._client = client
        if released:
            self.connection_manager.release_client(client)
            return
        client.request_subpartition(self, self.initial_credit)

    def retrigger_subpartition_request(self) -> None:
        """Send the PartitionRequest again (after PartitionNotFound and a backoff)."""
        client = self._client
        if client is not None and not self._released:
            client.request_subpartition(self, self.initial_credit)

    def on_partition_not_found(self) -> None:
        """The server answered PartitionNotFound: retry with backoff, then fail."""
        if self.increase_backoff():
            self.input_gate.retrigger_partition_request(self, self.current_backoff)
        else:
            self.on_error(PartitionNotFoundError(self.partition_id))

    # -- credit accounting (BufferManager) -------------------------------------------------

    def request_buffer(self, arrival: bool = True) -> NetworkBuffer | None:
        """A free buffer for an arriving data buffer (the Python transport's I/O thread), or None.

        ``arrival=False`` retries for the same buffer (TCP-backpressure mode) without counting
        another arrival."""
        if arrival:
            with self._lock:
                self._num_required -= 1
        buf: NetworkBuffer | None = self.queue.pop_free_buffer()
        return buf

    def on_backlog_announcement(self, backlog: int) -> None:
        """A BacklogAnnouncement arrived (the sender has ``backlog`` buffers and no credit):
        the newest backlog from now on, and floating buffers for it."""
        self.queue.note_backlog(backlog)
        self.on_sender_backlog(backlog)

    def on_sender_backlog(self, backlog: int) -> None:
        """Ask the gate pool for floating buffers up to backlog + initial credit."""
        announce = False
        pool = self.input_gate.buffer_pool
        q = self.queue
        with self._lock:
            if self._released:
                return
            self._num_required = backlog + self.initial_credit
            self._sender_backlog = backlog
            q.set_required(self._num_required)
            while q.free_slots < self._num_required and not self._waiting_for_floating:
                if pool is None:
                    break
                buf = pool.request_buffer()
                if buf is not None:
                    announce |= q.add_floating(buf)
                elif pool.add_buffer_listener(self):
                    self._waiting_for_floating = True
                    q.set_floating_blocked(True)
                    break
                # else: a buffer appeared meanwhile; try again
        if announce:
            self._on_credit()

    def notify_buffer_available(self, buffer: NetworkBuffer) -> bool:
        """The gate pool offers a recycled buffer (listener; any thread). True = kept."""
        q = self.queue
        with self._lock:
            self._waiting_for_floating = False
            q.set_floating_blocked(False)
            if self._released or q.free_slots >= self._num_required:
                return False
            announce = q.add_floating(buffer)
        if announce:
            self._on_credit()
        self.on_sender_backlog(max(0, self._num_required - self.initial_credit))
        return True

    def notify_buffer_destroyed(self) -> None:
        """The gate pool was destroyed while this channel waited for a floating buffer."""
        with self._lock:
            self._waiting_for_floating = False
        q = self._queue
        if q is not None:
            q.set_floating_blocked(False)

    def _on_credit(self) -> None:
        """The unannounced credit went from 0 to > 0 and no native connection announces it."""
        client = self._client
        if client is not None:
            client.notify_credit_available(self)

    # -- metrics (Flink's unsynchronizedGet...: approximate reads, no lock) -------------------

    @property
    def number_of_queued_buffers(self) -> int:
        """Received buffers waiting for the task (``inputQueueLength``)."""
        return self.queue.queued_buffers

    @property
    def size_of_queued_buffers(self) -> int:
        """Bytes of the received buffers waiting for the task (``inputQueueSize``)."""
        return self.queue.queued_bytes

    @property
    def exclusive_buffers_used(self) -> int:
        """Exclusive buffers not free: ``max(0, initial credit - free exclusive)``."""
        return max(0, self.initial_credit - self.queue.free_exclusive)

    @property
    def floating_buffers_available(self) -> int:
        """Floating buffers this channel holds free (they count as idle for the gate's usage)."""
        return self.queue.free_floating

    @property
    def credit(self) -> int:
        """Free buffers this channel holds for arriving data (exclusive and floating): the
        credit the sender has been or is about to be given."""
        return self.queue.free_slots

    @property
    def unannounced_credit(self) -> int:
        """Credit gained since the last AddCredit (Flink's ``getUnannouncedCredit``)."""
        return self.queue.unannounced_credit

    @property
    def sender_backlog(self) -> int:
        """The backlog the sender reported with its last buffer (Flink's
        ``getSenderBacklog``)."""
        return self._sender_backlog

    def take_unannounced_credit(self) -> int:
        """Credit gained since the last AddCredit, reset to 0 (as an AddCredit is written)."""
        return self.queue.take_unannounced_credit()

    # -- receiving (the Python transport's I/O thread) -------------------------------------

    def on_buffer(self, buffer: Buffer, sequence_number: int, backlog: int, subpartition_id: int = 0) -> None:
        """A buffer arrived: queue it, or fail the channel if out of sequence."""
        data_type = buffer.data_type
        if data_type in _BLOCKING_TYPES and self.initial_credit == 0:
            self._release_floating()
        q = self.queue
        expected = q.expected_sequence_number
        announcement: Buffer | None = None
        if data_type in _PRIORITY_TYPES or data_type is _TIMEOUTABLE_BARRIER:
            # read the barrier before it is queued (the task may take and recycle it at once)
            barrier = _barrier_of(buffer)
            if barrier is not None:
                self._note_barrier(barrier, sequence_number)
                if data_type is _TIMEOUTABLE_BARRIER:
                    announcement = to_buffer(EventAnnouncement(barrier, sequence_number), True)
        # A priority event (an unaligned barrier) goes to the head of the queue, behind the
        # priority events already there, as Flink's RemoteInputChannel.onBuffer queues it: the
        # sender sent it ahead of its queued data, and the reader must see it before the data
        # this channel already received.
        result = q.push_buffer(buffer, sequence_number, backlog, data_type in _PRIORITY_TYPES)
        if result != "ok":
            buffer.recycle()
            if announcement is not None:
                announcement.recycle()
            if result == "reordered":
                self.on_reordered(expected, sequence_number)
            elif result == "full":
                self.on_error(FlinknetError(
                    f"{self} received more than {q.free_slots} buffers and events beyond its credit"))
            return
        if data_type in _PRIORITY_TYPES:
            self.notify_priority_event(sequence_number)
        elif announcement is not None:
            # Flink's RemoteInputChannel.onBuffer: a barrier whose alignment may time out is
            # queued in order and announced ahead of the data (an EventAnnouncement with its
            # sequence number), so the handler can make it overtake (convert_to_priority_event)
            if q.push_announcement(announcement, sequence_number) == "ok":
                self.notify_priority_event(sequence_number)
            else:
                announcement.recycle()
        if backlog >= 0:
            self.on_sender_backlog(backlog)

    def convert_to_priority_event(self, sequence_number: int) -> None:
        """Make the announced barrier with ``sequence_number`` overtake the data queued before
        it (Flink's ``convertToPriorityEvent``): the handler's alignment timed out. A barrier
        already taken is left alone."""
        if self.queue.prioritize(sequence_number):
            self.input_gate.notify_priority_event_force(self)

    def on_reordered(self, expected: int, sequence_number: int) -> None:
        """A buffer arrived out of sequence: the channel fails."""
        self.on_error(BufferReorderingError(
            f"Buffer re-ordering: expected buffer with sequence number {expected}, "
            f"but received {sequence_number}."))

    def on_empty_buffer(self, sequence_number: int, backlog: int) -> None:
        """An empty buffer arrived: only its sequence number and backlog count."""
        q = self.queue
        expected = q.expected_sequence_number
        if not q.advance_sequence(sequence_number):
            self.on_reordered(expected, sequence_number)
            return
        if backlog >= 0:
            q.note_backlog(backlog)
            self.on_sender_backlog(backlog)

    def on_error(self, error: BaseException) -> None:
        """The connection or the producer failed this channel."""
        self.set_error(error)

    def _release_floating(self) -> None:
        q = self.queue
        with self._lock:
            self._num_required = 0
            q.set_required(0)
            floating = []
            while (buf := q.take_free_floating()) is not None:
                floating.append(buf)
        for b in floating:
            b.recycle()

    # -- reading (task thread) -------------------------------------------------------------

    def get_next_buffer(self) -> BufferAndBacklog | None:
        """The next received buffer (the caller owns it), or None."""
        self.check_error()
        q = self.queue
        result = q.poll()
        if result is None:
            if self._released:
                raise CancelTaskError(f"{self} has been released")
            return None
        buffer, next_type, seq, backlog = result
        try:
            self.note_polled(buffer, seq, backlog)
        except BaseException:
            buffer.recycle()
            raise
        return BufferAndBacklog(buffer, 0, next_type, seq)

    def note_polled(self, buffer: Buffer, sequence_number: int, backlog: int) -> None:
        """The task took ``buffer`` from the channel's queue (:meth:`get_next_buffer`, or the
        gate's fast lane, :meth:`~flinknet.consumer.SingleInputGate.poll_data_buffer`): count it
        and act on the sender's ``backlog`` as the queue reported it. Task thread."""
        # The sender's backlog as the newest received buffer reported it (the queue returns that
        # one, not this buffer's older figure): ask for floating buffers now if the free slots
        # fall short of it (Flink does it on arrival; the I/O thread leaves it to the task's
        # thread, asking itself only when a buffer took the last free slot); else only record it
        # (no lock, no pool: the common case). With no backlog and a free slot left, the
        # shortfall is this buffer, whose recycle (as soon as its records are read) gives its
        # slot back: the sender has credit meanwhile and nothing queued, so no floating buffer is
        # asked for only to go back at that recycle (Flink asks, and gives it back, at every
        # buffer of a stream that keeps its sender idle: here a pool request and an AddCredit
        # on the task thread before the records are handed out). Nor with no backlog and no
        # free slot while more buffers are still queued here: the sender used its last credit
        # for data this task is about to take, and has nothing waiting for more; the next
        # poll decides again, so buffers the task keeps (none come back) still borrow. (On a
        # slow reader's tail, two records queued behind each other, the request cost the
        # first one's hand-out a pool request and an AddCredit: 5 µs on 17 % of the records
        # at 10,000 records/s.)
        if backlog >= 0:
            required = backlog + self.initial_credit
            q = self.queue
            free = q.free_slots
            if free < required and (backlog > 0 or (free == 0 and not q.queued_buffers)):
                # (already waiting for the gate pool with this requirement: nothing to ask; the
                # pool's offer asks again, see notify_buffer_available)
                if not (self._waiting_for_floating and required == self._num_required):
                    self.on_sender_backlog(backlog)
            elif required != self._num_required:
                self._sender_backlog = backlog
                self._num_required = required
                q.set_required(required)
        self.num_bytes_in += buffer.size
        self.num_buffers_in += 1
        self._last_polled_seq = sequence_number
        if buffer.is_buffer:
            # (a priority event is taken out of order: data behind it may have lower numbers)
            self._last_data_seq = sequence_number

    # -- unaligned checkpoints: the data a priority barrier overtook -------------------------

    def _note_barrier(self, barrier: CheckpointBarrier, sequence_number: int) -> None:
        with self._lock:
            if barrier.id > self._last_barrier_id:
                self._last_barrier_id = barrier.id
                self._last_barrier_seq = sequence_number

    def checkpoint_started(self, checkpoint_id: int) -> list[Buffer]:
        """An unaligned checkpoint started: the data buffers received and not yet taken that
        belong to it (all of them if its barrier has not arrived, else those the barrier
        overtook), retained for the channel state writer (Flink's ``checkpointStarted`` /
        ``getInflightBuffersUnsafe``). Task thread."""
        with self._lock:
            if checkpoint_id < self._last_barrier_id:
                raise IllegalStateError(
                    f"{self}: the sequence number of checkpoint {checkpoint_id}'s barrier is not known "
                    f"(a newer barrier, of checkpoint {self._last_barrier_id}, arrived)")
            if checkpoint_id > self._last_barrier_id:
                self._last_barrier_seq = None      # an older barrier's number: not this one's
            before = self._last_barrier_seq
        buffers, self._captured_through = self.queue.inflight_buffers(self._last_data_seq, before)
        return buffers

    def already_captured(self, sequence_number: int) -> bool:
        """Whether the buffer the task just took (``sequence_number``) was captured already
        (when the checkpoint started); if not, it counts as captured from now on (the caller
        captures it)."""
        through = self._captured_through
        if through is not None and (sequence_number == through
                                    or ((sequence_number - through) & 0xFFFFFFFF) >= 0x80000000):
            return True
        self._captured_through = sequence_number
        return False

    @property
    def last_polled_sequence_number(self) -> int:
        """The sequence number of the buffer the task took last (-1 before the first)."""
        return self._last_polled_seq

    def capture_overtaken(self, checkpoint_id: int) -> list[Buffer]:
        """The task took this channel's barrier of ``checkpoint_id`` while the checkpoint waited
        for it: the data buffers the barrier overtook and not captured yet, retained."""
        with self._lock:
            before = self._last_barrier_seq if self._last_barrier_id == checkpoint_id else None
        if before is None:
            return []
        through = self._captured_through
        buffers, self._captured_through = self.queue.inflight_buffers(
            self._last_data_seq if through is None else through, before)
        return buffers

    def checkpoint_stopped(self, checkpoint_id: int) -> None:
        """The unaligned checkpoint ended (Flink's ``checkpointStopped``)."""
        with self._lock:
            if self._last_barrier_id == checkpoint_id:
                self._last_barrier_seq = None
        self._captured_through = None

    def resume_consumption(self) -> None:
        """Send ResumeConsumption (after an aligned barrier was consumed)."""
        if self.initial_credit == 0:
            self.queue.reset_unannounced_credit()
        client = self._client
        if client is not None:
            client.resume_consumption(self)

    def acknowledge_all_records_processed(self) -> None:
        """Send AckAllUserRecordsProcessed."""
        client = self._client
        if client is not None:
            client.acknowledge_all_records_processed(self)

    def notify_new_buffer_size(self, buffer_size: int) -> None:
        """Tell the producer the desired buffer size (buffer debloating)."""
        if buffer_size <= 0:
            raise ValueError(f"buffer_size must be > 0, got {buffer_size}")
        client = self._client
        if client is not None:
            client.notify_new_buffer_size(self, buffer_size)

    def release_all_resources(self) -> None:
        """Release the channel (idempotent): its buffers go back, the connection forgets it."""
        with self._lock:
            if self._released:
                return
            self._released = True
            client = self._client
            q = self._queue
        if q is not None:
            q.release()
        if client is not None:
            client.release_channel(self)

    @property
    def is_released(self) -> bool:
        """The channel was released (its buffers went back)."""
        return self._released

    def __repr__(self) -> str:
        return f"{super().__repr__()} from {self.address[0]}:{self.address[1]}"

    @property
    def buffers_in_use_count(self) -> int:
        """Received buffers plus the floating ones the backlog asks for (Flink's
        ``getBuffersInUseCount``)."""
        return self.queue.queued_buffers + max(0, self._num_required - self.initial_credit)

    def announce_buffer_size(self, size: int) -> None:
        """Send NewBufferSize (Flink's ``RemoteInputChannel.announceBufferSize``); nothing before
        the partition request went out (the next announcement reaches the producer) or once
        released."""
        if not self._released:
            self.notify_new_buffer_size(size)
