"""The registry of a process's result partitions (Flink's ``ResultPartitionManager``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from flinknet.errors import IllegalStateError, PartitionNotFoundError
from flinknet.ids import ResultPartitionID, ResultSubpartitionIndexSet
from flinknet.interfaces import BufferAvailabilityListener, ResultSubpartitionView

if TYPE_CHECKING:
    from flinknet.partition.result_partition import ResultPartition

__all__ = ["ResultPartitionManager", "ViewCallback"]

log = logging.getLogger(__name__)

ViewCallback: TypeAlias = Callable[[ResultSubpartitionView | None, BaseException | None], None]
"""``on_view(view, error)``: how a pending view request is answered (exactly one of the two is
not None)."""

# A pending request: (subpartition index, listener, on_view, deadline on the monotonic clock).
_Pending: TypeAlias = tuple[int, BufferAvailabilityListener, ViewCallback, float]


class ResultPartitionManager:
    """Maps :class:`~flinknet.ids.ResultPartitionID` s to live partitions; consumers in the same
    process (local channels) and the transport server ask it for subpartition views.

    Thread-safe. ``create_subpartition_view_or_register_listener`` remembers requests for
    partitions that are not registered yet and answers them on registration or, after
    ``partition_request_timeout`` seconds, with :class:`~flinknet.errors.PartitionNotFoundError`
    (call :meth:`check_request_timeouts` periodically, as the transport does).
    """

    def __init__(self, partition_request_timeout: float = 10.0):
        if partition_request_timeout <= 0:
            raise ValueError("partition_request_timeout must be > 0")
        self.partition_request_timeout = partition_request_timeout
        self._lock = threading.Lock()
        self._partitions: dict[ResultPartitionID, ResultPartition] = {}
        self._listeners: dict[ResultPartitionID, list[_Pending]] = {}
        self._is_shutdown = False

    def register_result_partition(self, partition: ResultPartition) -> None:
        """Register ``partition``; pending view requests for it are answered now."""
        with self._lock:
            if self._is_shutdown:
                raise IllegalStateError("Result partition manager already shut down.")
            if partition.partition_id in self._partitions:
                raise IllegalStateError(f"Result partition already registered: {partition.partition_id}")
            self._partitions[partition.partition_id] = partition
            pending = self._listeners.pop(partition.partition_id, [])
        log.debug("registered %s", partition)
        for index, listener, on_view, _deadline in pending:
            try:
                view = self.create_subpartition_view(partition.partition_id, index, listener)
            except BaseException as err:  # noqa: BLE001 (handed to the requester)
                on_view(None, err)
            else:
                on_view(view, None)

    @staticmethod
    def _index(index: int | ResultSubpartitionIndexSet) -> int:
        if isinstance(index, ResultSubpartitionIndexSet):
            if len(index) != 1:
                raise ValueError("a channel consuming several subpartitions is not supported")
            return index.start
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"subpartition index must be an int, got {type(index).__name__}")
        return index

    def create_subpartition_view(self, partition_id: ResultPartitionID,
                                 subpartition_index: int | ResultSubpartitionIndexSet,
                                 listener: BufferAvailabilityListener) -> ResultSubpartitionView:
        """The read view of one subpartition; unknown partition → PartitionNotFoundError."""
        index = self._index(subpartition_index)
        with self._lock:
            partition = self._partitions.get(partition_id)
        if partition is None:
            raise PartitionNotFoundError(partition_id)
        return partition.create_subpartition_view(index, listener)

    def create_subpartition_view_or_register_listener(
            self, partition_id: ResultPartitionID, subpartition_index: int | ResultSubpartitionIndexSet,
            listener: BufferAvailabilityListener, on_view: ViewCallback) -> ResultSubpartitionView | None:
        """The view if the partition is registered; otherwise None, and ``on_view(view, error)``
        is called once later: on registration, or with PartitionNotFoundError after the timeout."""
        index = self._index(subpartition_index)
        with self._lock:
            partition = self._partitions.get(partition_id)
            if partition is None:
                if self._is_shutdown:
                    raise IllegalStateError("Result partition manager already shut down.")
                deadline = time.monotonic() + self.partition_request_timeout
                self._listeners.setdefault(partition_id, []).append((index, listener, on_view, deadline))
                return None
        return partition.create_subpartition_view(index, listener)

    def check_request_timeouts(self, now: float | None = None) -> int:
        """Answer expired pending requests with PartitionNotFoundError; returns how many."""
        now = time.monotonic() if now is None else now
        expired: list[tuple[ResultPartitionID, _Pending]] = []
        with self._lock:
            for pid in list(self._listeners):
                kept: list[tuple[ResultPartitionID, _Pending]] = []
                for entry in self._listeners[pid]:
                    (expired if entry[3] <= now else kept).append((pid, entry))
                keep = [e for _, e in kept]
                if keep:
                    self._listeners[pid] = keep
                else:
                    del self._listeners[pid]
        for pid, (_i, _l, on_view, _d) in expired:
            on_view(None, PartitionNotFoundError(pid))
        return len(expired)

    def cancel_pending_request(self, partition_id: ResultPartitionID, on_view: ViewCallback) -> bool:
        """Forget a pending request (its requester went away)."""
        with self._lock:
            entries = self._listeners.get(partition_id)
            if not entries:
                return False
            kept = [e for e in entries if e[2] is not on_view]
            if kept:
                self._listeners[partition_id] = kept
            else:
                del self._listeners[partition_id]
            return len(kept) != len(entries)

    def release_partition(self, partition_id: ResultPartitionID, cause: BaseException | None = None) -> None:
        """Remove and release the partition (pending requests for it fail at once)."""
        with self._lock:
            partition = self._partitions.pop(partition_id, None)
            pending = self._listeners.pop(partition_id, [])
        if partition is not None:
            partition.release(cause)
            log.debug("released %s", partition)
        for _i, _l, on_view, _d in pending:
            on_view(None, PartitionNotFoundError(partition_id))

    def on_consumed_partition(self, partition: ResultPartition) -> None:
        """A pipelined partition was fully consumed: remove and release it."""
        with self._lock:
            current = self._partitions.get(partition.partition_id)
            if current is not partition:
                return
            del self._partitions[partition.partition_id]
        partition.release()

    def contains(self, partition_id: ResultPartitionID) -> bool:
        """Whether ``partition_id`` is registered."""
        with self._lock:
            return partition_id in self._partitions

    def get_unreleased_partitions(self) -> list[ResultPartitionID]:
        """The registered partitions' ids."""
        with self._lock:
            return list(self._partitions)

    @property
    def num_pending_requests(self) -> int:
        """View requests waiting for their partition."""
        with self._lock:
            return sum(len(v) for v in self._listeners.values())

    def shutdown(self) -> None:
        """Release every partition; pending requests fail."""
        with self._lock:
            self._is_shutdown = True
            partitions = list(self._partitions.values())
            self._partitions.clear()
            pending = [(pid, e) for pid, entries in self._listeners.items() for e in entries]
            self._listeners.clear()
        for partition in partitions:
            partition.release()
        for pid, (_i, _l, on_view, _d) in pending:
            on_view(None, PartitionNotFoundError(pid))
