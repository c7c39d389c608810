"""Blocking partitions persisted to files (Flink's ``BoundedBlockingResultPartition``).

Each subpartition appends its buffers to its own file in the partition's directory, every buffer
behind Flink's 8-byte header in native byte order (``BufferReaderWriterUtil``)::

    type i16 (0 = buffer, 1 = event) | compressed i16 (0/1) | length i32 | length bytes

Buffers are written when they are finished (full, flushed by ``flush_all()``, or at
``finish()``), straight from the pool's memory with one gather write, and go back to the pool at
once: a blocking partition needs only one buffer per subpartition of pool memory, however much it
holds. After :meth:`~BoundedBlockingResultPartition.finish` any number of readers (one
:class:`BoundedBlockingSubpartitionReader` each, also several per subpartition: blocking
partitions are reconsumable) read the files, each through two buffers of its own. Releasing the
partition removes its files (readers already open keep reading their open files to the end).
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

from flinknet import events as _events
from flinknet._core.buffer import BufferRecycler, DataType, NetworkBuffer
from flinknet._core.builder import BufferConsumer
from flinknet._core.memory import MemorySegment
from flinknet._core.pool import LocalBufferPool
from flinknet.errors import CorruptPartitionFileError, IllegalStateError, PartitionNotFoundError
from flinknet.interfaces import AvailabilityWithBacklog, BufferAndBacklog, BufferAvailabilityListener
from flinknet.partition.result_partition import ResultPartition
from flinknet.partition.subpartition import ADD_BUFFER_ERROR_CODE
from flinknet.types import ResultPartitionType

__all__ = [
    "HEADER_LENGTH",
    "BoundedBlockingResultPartition",
    "BoundedBlockingSubpartition",
    "BoundedBlockingSubpartitionReader",
    "CorruptPartitionFileError",
]

#: Flink's ``BufferReaderWriterUtil.HEADER_LENGTH``.
HEADER_LENGTH = 8
HEADER_VALUE_IS_BUFFER = 0
HEADER_VALUE_IS_EVENT = 1
_HEADER = struct.Struct("=hhi")  # native order, standard sizes
_NONE = DataType.NONE


class BoundedBlockingSubpartition:
    """One subpartition of a blocking partition: a file of ``[header][buffer]`` records."""

    def __init__(self, index: int, parent: BoundedBlockingResultPartition, path: str):
        self.index = index
        self.parent = parent
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._current: BufferConsumer | None = None  # the one unfinished consumer being filled
        self._is_finished = False
        self._is_released = False
        self._readers: set[BoundedBlockingSubpartitionReader] = set()
        self._lock = threading.Lock()
        self.num_buffers_and_events_written = 0
        self.num_data_buffers_written = 0
        self.file_size = 0

    def add(self, consumer: BufferConsumer, partial_record_length: int = 0, finish: bool = False) -> int:
        """Take over ``consumer``: written to the file once finished (0, or
        ``ADD_BUFFER_ERROR_CODE`` if finished or released)."""
        if self._is_finished or self._is_released:
            consumer.close()
            return ADD_BUFFER_ERROR_CODE
        self._write_current()
        if consumer.is_finished:
            self._write_and_close(consumer)
        else:
            self._current = consumer
        if finish:
            self._is_finished = True
            os.close(self._fd)
            self._fd = -1
        return 0

    def buffer_finished(self) -> None:
        """The writer finished the open buffer: write it to the file."""
        self._write_current()

    def flush(self) -> None:
        """Write the open buffer to the file."""
        # The partition finishes its builders before flushing, so the consumer is complete.
        self._write_current()

    def _write_current(self) -> None:
        # Called once the writer finished the current buffer's builder (buffer_finished, flush,
        # the next add, finish), as Flink's flushCurrentBuffer. Its consumer only notices that it
        # is finished when built (is_finished is the state last seen), so it is not asked here:
        # asking it dropped every data buffer the serializer enqueued before filling it.
        consumer = self._current
        if consumer is not None:
            self._current = None
            self._write_and_close(consumer)

    def _write_and_close(self, consumer: BufferConsumer) -> None:
        try:
            buffer = consumer.build()
            try:
                size = buffer.readable_bytes
                if size == 0 and consumer.data_type == DataType.DATA_BUFFER:
                    return
                header = _HEADER.pack(
                    HEADER_VALUE_IS_BUFFER if buffer.is_buffer else HEADER_VALUE_IS_EVENT, 0, size)
                with memoryview(buffer) as view:
                    _write_all(self._fd, [header, view])
                self.file_size += HEADER_LENGTH + size
                self.num_buffers_and_events_written += 1
                if buffer.is_buffer:
                    self.num_data_buffers_written += 1
            finally:
                buffer.recycle()
        finally:
            consumer.close()

    def finish(self) -> None:
        """Append EndOfPartition and close the file; readers can start."""
        self.add(_events.to_buffer_consumer(_events.EndOfPartitionEvent()), 0, finish=True)

    def release(self) -> None:
        """Drop the open buffer and remove the file (open readers keep reading theirs)."""
        with self._lock:
            if self._is_released:
                return
            self._is_released = True
        if self._current is not None:
            self._current.close()
            self._current = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def create_read_view(self, listener: BufferAvailabilityListener,
                         read_buffer_size: int | None = None) -> BoundedBlockingSubpartitionReader:
        """A new reader of the finished file (any number of them), reporting to ``listener``;
        ``read_buffer_size`` defaults to the pool's segment size."""
        with self._lock:
            if self._is_released:
                raise IllegalStateError(f"subpartition {self.index} of {self.parent} is released")
            if not self._is_finished:
                raise IllegalStateError("writing of blocking partition not yet finished")
            reader = BoundedBlockingSubpartitionReader(
                self, listener, read_buffer_size or self.parent.buffer_pool.segment_size)
            self._readers.add(reader)
        try:
            reader._start()
        except BaseException:  # e.g. a corrupt first header: close the file, free the memory
            reader.release_all_resources()
            raise
        return reader

    def _on_reader_released(self, reader: BoundedBlockingSubpartitionReader) -> None:
        with self._lock:
            self._readers.discard(reader)

    @property
    def has_unflushed_data(self) -> bool:
        """Whether a buffer is open (a flush writes it to the file)."""
        return self._current is not None

    @property
    def number_of_queued_buffers(self) -> int:
        """The open buffer not yet written (0 or 1)."""
        return 0 if self._current is None else 1

    @property
    def is_finished(self) -> bool:
        """EndOfPartition was written."""
        return self._is_finished

    @property
    def is_released(self) -> bool:
        """The subpartition was released (its file removed)."""
        return self._is_released

    @property
    def num_readers(self) -> int:
        """Readers not yet released."""
        return len(self._readers)


def _write_all(fd: int, parts: Sequence[bytes | memoryview]) -> None:
    total = sum(len(p) for p in parts)
    written = os.writev(fd, parts)
    while written < total:
        # Short write (rare on regular files): write the rest without re-sending what went.
        rest: list[bytes | memoryview] = []
        skip = written
        for p in parts:
            if skip >= len(p):
                skip -= len(p)
                continue
            rest.append(memoryview(p)[skip:])
            skip = 0
        parts, total = rest, total - written
        written = os.writev(fd, parts)


class BoundedBlockingSubpartitionReader(BufferRecycler):
    """One reader of a finished blocking subpartition (Flink's BoundedBlockingSubpartitionReader).

    Reads the file sequentially into two segments of its own, one buffer ahead (so that the
    next data type is known). A buffer goes back to the reader when recycled, which then reads
    the next one and tells its listener that data is available.
    """

    NUM_READ_BUFFERS = 2

    def __init__(self, parent: BoundedBlockingSubpartition, listener: BufferAvailabilityListener,
                 read_buffer_size: int):
        super().__init__()
        self._parent = parent
        self._listener = listener
        self._file = open(parent.path, "rb", buffering=0)  # noqa: SIM115 (closed in release)
        self._free = [MemorySegment(read_buffer_size) for _ in range(self.NUM_READ_BUFFERS)]
        self._read_buffer_size = read_buffer_size
        self._next: NetworkBuffer | None = None
        self._eof = False
        self._released = False
        self._lock = threading.Lock()
        self._sequence_number = 0
        self._data_backlog = parent.num_data_buffers_written
        self._position = 0
        self._size = parent.file_size

    def _start(self) -> None:
        with self._lock:
            self._prefetch()
        self._listener.notify_data_available(self)

    def _prefetch(self) -> None:
        """Read the next buffer into a free segment (under the lock)."""
        if self._next is not None or self._eof or self._released or not self._free:
            return
        if self._position >= self._size:
            self._eof = True
            return
        header = self._read_exact(HEADER_LENGTH)
        kind, compressed, length = _HEADER.unpack(header)
        if kind not in (HEADER_VALUE_IS_BUFFER, HEADER_VALUE_IS_EVENT) or compressed not in (0, 1):
            raise CorruptPartitionFileError(f"{self._parent.path}: bad buffer header {header.hex()}")
        if not 0 <= length <= self._read_buffer_size or self._position + HEADER_LENGTH + length > self._size:
            raise CorruptPartitionFileError(
                f"{self._parent.path}: buffer length {length} at offset {self._position} does not fit")
        segment = self._free.pop()
        try:
            with memoryview(segment) as view:
                got = self._file.readinto(view[:length]) if length else 0
            if got != length:
                raise CorruptPartitionFileError(f"{self._parent.path}: truncated at {self._position}")
        except BaseException:
            self._free.append(segment)
            raise
        self._position += HEADER_LENGTH + length
        buffer = NetworkBuffer(segment, self, DataType.DATA_BUFFER, length)
        if kind == HEADER_VALUE_IS_EVENT:
            buffer.data_type = _events.get_data_type(_events.from_buffer(buffer))
        buffer.is_compressed = bool(compressed)
        self._next = buffer

    def _read_exact(self, n: int) -> bytes:
        data = self._file.read(n)
        if data is None or len(data) != n:
            raise CorruptPartitionFileError(f"{self._parent.path}: truncated at {self._position}")
        return data

    def get_next_buffer(self) -> BufferAndBacklog | None:
        """The next buffer of the file (the caller owns it), or None (nothing read ahead yet)."""
        with self._lock:
            if self._released:
                return None
            self._prefetch()
            current = self._next
            if current is None:
                return None
            self._next = None
            if current.is_buffer:
                self._data_backlog -= 1
            try:
                self._prefetch()
            except BaseException as err:  # a corrupt file: give back the buffer in hand first
                error = err
            else:
                nxt = self._next
                seq = self._sequence_number
                self._sequence_number = seq + 1
                return BufferAndBacklog(current, self._data_backlog,
                                        nxt.data_type if nxt is not None else _NONE, seq)
        current.recycle()  # outside the lock: recycling comes back to this reader
        raise error

    def recycle(self, segment: MemorySegment) -> None:
        """A buffer of this reader was recycled: its segment reads the next buffer."""
        notify = False
        with self._lock:
            if self._released:
                segment.free()
                return
            self._free.append(segment)
            if self._next is None and not self._eof:
                self._prefetch()
                notify = self._next is not None
        if notify:
            self._listener.notify_data_available(self)

    def release_all_resources(self) -> None:
        """Release the reader (idempotent): close the file, free the read buffers."""
        with self._lock:
            if self._released:
                return
            self._released = True
            nxt, self._next = self._next, None
            free, self._free = self._free, []
        if nxt is not None:
            nxt.recycle()  # released: frees the segment
        for segment in free:
            segment.free()
        self._file.close()
        self._parent._on_reader_released(self)

    @property
    def is_released(self) -> bool:
        """The reader was released."""
        return self._released

    def resume_consumption(self) -> None:
        """Not applicable: raises IllegalStateError (blocking subpartitions never block)."""
        raise IllegalStateError("blocking subpartitions do not block on barriers")

    def acknowledge_all_data_processed(self) -> None:
        """Nothing to do for a blocking subpartition."""

    def get_availability_and_backlog(self, is_credit_available: bool = True) -> AvailabilityWithBacklog:
        """Whether a buffer (with credit) or an event (without) was read ahead, and the data
        buffers left."""
        with self._lock:
            nxt = self._next
            if is_credit_available:
                available = nxt is not None
            else:
                available = nxt is not None and not nxt.is_buffer
            return AvailabilityWithBacklog(available, self._data_backlog)

    @property
    def failure_cause(self) -> BaseException | None:
        """Why the producer failed, if it did."""
        return self._parent.parent.failure_cause

    def notify_new_buffer_size(self, size: int) -> None:
        """Ignored: the file's buffers have the sizes they were written with."""

    @property
    def number_of_queued_buffers(self) -> int:
        """Data buffers left to read."""
        return self._data_backlog

    def __repr__(self) -> str:
        return f"BoundedBlockingSubpartitionReader(index: {self._parent.index}) of {self._parent.parent}"


class BoundedBlockingResultPartition(ResultPartition):
    """A BLOCKING / BLOCKING_PERSISTENT partition: every subpartition written to a file.

    ``tmp_dir`` is where the partition's directory is created (default: the system's temporary
    directory). Consumers can read only after :meth:`finish`; before that the partition manager
    answers as if the partition were not there yet, and local channels retry with backoff.
    The buffer timeout does not apply (Flink disables it for batch): data is written when
    buffers fill, on :meth:`flush_all` and on :meth:`finish`.
    """

    _partition_type_default = ResultPartitionType.BLOCKING

    subpartitions: Sequence[BoundedBlockingSubpartition]

    def __init__(self, num_subpartitions: int, buffer_pool: LocalBufferPool, *, tmp_dir: str | None = None,
                 **kwargs: Any):
        self._dir = tempfile.mkdtemp(prefix="flinknet-partition-", dir=tmp_dir)
        try:
            super().__init__(num_subpartitions, buffer_pool, **kwargs)
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise

    def _check_partition_type(self, partition_type: ResultPartitionType) -> None:
        if not partition_type.is_blocking:
            raise ValueError(f"{partition_type.name} is not a blocking type")

    def _create_subpartitions(self, n: int) -> list[BoundedBlockingSubpartition]:
        subs: list[BoundedBlockingSubpartition] = []
        try:
            for i in range(n):
                subs.append(BoundedBlockingSubpartition(i, self, os.path.join(self._dir, f"{i}.data")))
        except BaseException:
            for sp in subs:
                sp.release()
            raise
        return subs

    def buffer_finished(self, subpartition: int, num_bytes: int) -> None:
        super().buffer_finished(subpartition, num_bytes)
        if subpartition >= 0:
            self.subpartitions[subpartition].buffer_finished()
        else:
            for sp in self.subpartitions:
                sp.buffer_finished()

    def flush(self, target_subpartition: int) -> None:
        """Finish the subpartition's open buffer and write it to the file."""
        self._check_target(target_subpartition)
        if self._is_finished or self._is_released:
            return
        self._serializer.finish_unicast_builder(target_subpartition)
        self._serializer.finish_broadcast_builder()

    def flush_all(self) -> None:
        """Finish every open buffer and write it to its file."""
        if self._is_finished or self._is_released:
            return
        self._serializer.finish_all()

    def create_subpartition_view(self, index: int,
                                 listener: BufferAvailabilityListener) -> BoundedBlockingSubpartitionReader:
        """A new reader of subpartition ``index`` (PartitionNotFoundError until finished)."""
        if self._is_released:
            raise IllegalStateError(f"{self} has been released")
        self._check_target(index)
        if not self._is_finished:
            raise PartitionNotFoundError(self.partition_id)
        return self.subpartitions[index].create_read_view(listener)

    def _release_internal(self) -> None:
        super()._release_internal()
        shutil.rmtree(self._dir, ignore_errors=True)

    def close(self) -> None:
        """Close (see :meth:`ResultPartition.close`); unfinished, the partition is also released."""
        super().close()
        if self._is_released:
            return
        if not self._is_finished:
            # Closed without finishing (the task failed): nothing can ever read it.
            self.release()

    @property
    def directory(self) -> str:
        """The directory of the subpartitions' files."""
        return self._dir


if sys.byteorder not in ("little", "big"):  # pragma: no cover
    raise ImportError("unknown byte order")
