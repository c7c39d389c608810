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
from collections import deque
from typing import TYPE_CHECKING

from flinknet._core.buffer import Buffer, BufferRecycler, DataType, NetworkBuffer
from flinknet._core.memory import MemorySegment
from flinknet._core.pool import NetworkBufferPool
from flinknet.consumer.channels import (
    DEFAULT_INITIAL_BACKOFF,
    DEFAULT_MAX_BACKOFF,
    InputChannel,
)
from flinknet.errors import BufferReorderingError, CancelTaskError, PartitionNotFoundError
from flinknet.ids import InputChannelID, ResultPartitionID
from flinknet.interfaces import BufferAndBacklog, PartitionRequestClient
from flinknet.types import Address

if TYPE_CHECKING:
    from flinknet.consumer.gate import SingleInputGate
    from flinknet.transport.client import ConnectionManager

__all__ = ["BufferReorderingError", "RemoteInputChannel"]

_NONE = DataType.NONE
_DATA_BUFFER = DataType.DATA_BUFFER
_BLOCKING_TYPES = frozenset(t for t in DataType if t.is_blocking_upstream)
_PRIORITY_TYPES = frozenset(t for t in DataType if t.has_priority)


class _ExclusiveRecycler(BufferRecycler):
    def __init__(self, channel: RemoteInputChannel):
        super().__init__()
        self.channel = channel

    def recycle(self, segment: MemorySegment) -> None:
        self.channel._recycle_exclusive(segment)


class RemoteInputChannel(InputChannel):
    """Reads subpartition ``subpartition_index`` of ``partition_id`` from the environment at
    ``address`` through the shared connection of ``connection_manager``."""

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
        self._received: deque[Buffer] = deque()
        self._expected_seq = 0
        self._released = False
        self._client: PartitionRequestClient | None = None
        self._exclusive_segments: list[MemorySegment] = []   # free exclusive segments
        self._num_exclusive_total = 0
        self._floating: list[NetworkBuffer] = []             # free floating buffers of the gate pool
        self._num_required = 0
        self._waiting_for_floating = False
        self._unannounced_credit = 0
        self._sender_backlog = 0
        self._exclusive_recycler = _ExclusiveRecycler(self)
        self.num_bytes_in = 0
        self.num_buffers_in = 0

    # -- setup -----------------------------------------------------------------------------

    def setup(self) -> None:
        """Request the exclusive buffers from the global pool (unpooled, Flink's setup)."""
        if self.initial_credit and not self._num_exclusive_total:
            segments = self.network_buffer_pool.request_unpooled_memory_segments(self.initial_credit)
            with self._lock:
                self._exclusive_segments.extend(segments)
                self._num_exclusive_total = len(segments)

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
        """A free buffer for an arriving data buffer (I/O thread), or None.

        ``arrival=False`` retries for the same buffer (TCP-backpressure mode) without counting
        another arrival."""
        with self._lock:
            if arrival:
                self._num_required -= 1
            if self._floating:
                return self._floating.pop()
            if self._exclusive_segments:
                seg = self._exclusive_segments.pop()
                return NetworkBuffer(seg, self._exclusive_recycler)
            return None

    def _available(self) -> int:
        return len(self._floating) + len(self._exclusive_segments)

    def on_sender_backlog(self, backlog: int) -> None:
        """Ask the gate pool for floating buffers up to backlog + initial credit (I/O thread)."""
        new = 0
        pool = self.input_gate.buffer_pool
        with self._lock:
            if self._released:
                return
            self._num_required = backlog + self.initial_credit
            self._sender_backlog = backlog
            while self._available() < self._num_required and not self._waiting_for_floating:
                if pool is None:
                    break
                buf = pool.request_buffer()
                if buf is not None:
                    self._floating.append(buf)
                    new += 1
                elif pool.add_buffer_listener(self):
                    self._waiting_for_floating = True
                    break
                # else: a buffer appeared meanwhile; try again
        if new:
            self._announce(new)

    def notify_buffer_available(self, buffer: NetworkBuffer) -> bool:
        """The gate pool offers a recycled buffer (listener; any thread). True = kept."""
        with self._lock:
            self._waiting_for_floating = False
            if self._released or self._available() >= self._num_required:
                return False
            self._floating.append(buffer)
        self._announce(1)
        self.on_sender_backlog(max(0, self._num_required - self.initial_credit))
        return True

    def notify_buffer_destroyed(self) -> None:
        """The gate pool was destroyed while this channel waited for a floating buffer."""
        with self._lock:
            self._waiting_for_floating = False

    def _recycle_exclusive(self, segment: MemorySegment) -> None:
        give_back = None
        announce = False
        with self._lock:
            if self._released:
                self.network_buffer_pool.recycle_unpooled_memory_segments([segment])
                self._num_exclusive_total -= 1
                return
            self._exclusive_segments.append(segment)
            if self._available() > self._num_required and self._floating:
                give_back = self._floating.pop()
            else:
                announce = True
        if give_back is not None:
            give_back.recycle()
        if announce:
            self._announce(1)

    def _announce(self, credit: int) -> None:
        with self._lock:
            before = self._unannounced_credit
            self._unannounced_credit = before + credit
            client = self._client
        if before == 0 and client is not None:
            client.notify_credit_available(self)

    # -- metrics (Flink's unsynchronizedGet...: approximate reads, no lock) -------------------

    @property
    def number_of_queued_buffers(self) -> int:
        """Received buffers waiting for the task (``inputQueueLength``)."""
        return len(self._received)

    @property
    def size_of_queued_buffers(self) -> int:
        """Bytes of the received buffers waiting for the task (``inputQueueSize``)."""
        return sum(b.readable_bytes for b in list(self._received))

    @property
    def exclusive_buffers_used(self) -> int:
        """Exclusive buffers not free: ``max(0, initial credit - free exclusive)``."""
        return max(0, self.initial_credit - len(self._exclusive_segments))

    @property
    def floating_buffers_available(self) -> int:
        """Floating buffers this channel holds free (they count as idle for the gate's usage)."""
        return len(self._floating)

    @property
    def credit(self) -> int:
        """Free buffers this channel holds for arriving data (exclusive and floating): the
        credit the sender has been or is about to be given."""
        return len(self._floating) + len(self._exclusive_segments)

    @property
    def unannounced_credit(self) -> int:
        """Credit gained since the last AddCredit (Flink's ``getUnannouncedCredit``)."""
        return self._unannounced_credit

    @property
    def sender_backlog(self) -> int:
        """The backlog the sender reported with its last buffer (Flink's
        ``getSenderBacklog``)."""
        return self._sender_backlog

    def take_unannounced_credit(self) -> int:
        """Credit gained since the last AddCredit, reset to 0 (I/O thread, as it writes one)."""
        with self._lock:
            credit, self._unannounced_credit = self._unannounced_credit, 0
            return credit

    # -- receiving (I/O thread) ------------------------------------------------------------

    def on_buffer(self, buffer: Buffer, sequence_number: int, backlog: int, subpartition_id: int = 0) -> None:
        """A buffer arrived (I/O thread): queue it, or fail the channel if out of sequence."""
        if sequence_number != self._expected_seq:
            buffer.recycle()
            self.on_error(BufferReorderingError(
                f"Buffer re-ordering: expected buffer with sequence number {self._expected_seq}, "
                f"but received {sequence_number}."))
            return
        data_type = buffer.data_type
        if data_type in _BLOCKING_TYPES and self.initial_credit == 0:
            self._release_floating()
        with self._lock:
            if self._released:
                recycle = True
            else:
                recycle = False
                was_empty = not self._received
                self._received.append(buffer)
                self._expected_seq += 1
        if recycle:
            buffer.recycle()
            return
        if data_type in _PRIORITY_TYPES:
            self.notify_priority_event(sequence_number)
        elif was_empty:
            self.notify_channel_non_empty()
        if backlog >= 0:
            self.on_sender_backlog(backlog)

    def on_empty_buffer(self, sequence_number: int, backlog: int) -> None:
        """An empty buffer arrived (I/O thread): only its sequence number and backlog count."""
        if sequence_number != self._expected_seq:
            self.on_error(BufferReorderingError(
                f"Buffer re-ordering: expected buffer with sequence number {self._expected_seq}, "
                f"but received {sequence_number}."))
            return
        self._expected_seq += 1
        if backlog >= 0:
            self.on_sender_backlog(backlog)

    def on_error(self, error: BaseException) -> None:
        """The connection or the producer failed this channel."""
        self.set_error(error)

    def _release_floating(self) -> None:
        with self._lock:
            self._num_required = 0
            floating, self._floating = self._floating, []
        for b in floating:
            b.recycle()

    # -- reading (task thread) -------------------------------------------------------------

    def get_next_buffer(self) -> BufferAndBacklog | None:
        """The next received buffer (the caller owns it), or None."""
        self.check_error()
        with self._lock:
            if not self._received:
                if self._released:
                    raise CancelTaskError(f"{self} has been released")
                return None
            buffer = self._received.popleft()
            next_type = self._received[0].data_type if self._received else _NONE
            seq = self._expected_seq - len(self._received) - 1
        self.num_bytes_in += buffer.size
        self.num_buffers_in += 1
        return BufferAndBacklog(buffer, 0, next_type, seq)

    def resume_consumption(self) -> None:
        """Send ResumeConsumption (after an aligned barrier was consumed)."""
        if self.initial_credit == 0:
            with self._lock:
                self._unannounced_credit = 0
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
            received, self._received = list(self._received), deque()
            floating, self._floating = self._floating, []
            segments, self._exclusive_segments = self._exclusive_segments, []
            self._num_exclusive_total -= len(segments)
            client = self._client
        for b in received:
            b.recycle()
        for b in floating:
            b.recycle()
        if segments:
            self.network_buffer_pool.recycle_unpooled_memory_segments(segments)
        if client is not None:
            client.release_channel(self)

    @property
    def is_released(self) -> bool:
        """The channel was released (its buffers went back)."""
        return self._released

    @property
    def buffers_in_use_count(self) -> int:
        """Received buffers plus the floating ones the backlog asks for (Flink's
        ``getBuffersInUseCount``)."""
        return len(self._received) + max(0, self._num_required - self.initial_credit)
