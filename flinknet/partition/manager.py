"""The registry of a process's result partitions (Flink's ``ResultPartitionManager``)."""

from __future__ import annotations

import heapq
import itertools
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
        # Pending requests per partition, keyed by their callback (insertion order is request
        # order); their deadlines in a heap whose entries a cancellation leaves behind (skipped
        # when they come up: the entry's callback no longer waits, or waits for a newer
        # request). Registering is O(log n), cancelling O(1), expiring O(log n) per request,
        # whatever the number waiting for the same partition.
        self._listeners: dict[ResultPartitionID, dict[ViewCallback, _Pending]] = {}
        self._deadlines: dict[ViewCallback, ResultPartitionID] = {}
        self._heap: list[tuple[float, int, ViewCallback]] = []
        self._seq = itertools.count()
        self._is_shutdown = False

    def register_result_partition(self, partition: ResultPartition) -> None:
        """Register ``partition``; pending view requests for it are answered now."""
        with self._lock:
            if self._is_shutdown:
                raise IllegalStateError("Result partition manager already shut down.")
            if partition.partition_id in self._partitions:
                raise IllegalStateError(f"Result partition already registered: {partition.partition_id}")
            self._partitions[partition.partition_id] = partition
            pending = self._take_pending(partition.partition_id)
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
                if on_view in self._deadlines:
                    raise IllegalStateError("this on_view callback already waits for a partition")
                deadline = time.monotonic() + self.partition_request_timeout
                self._listeners.setdefault(partition_id, {})[on_view] = (index, listener, on_view, deadline)
                self._deadlines[on_view] = partition_id
                heapq.heappush(self._heap, (deadline, next(self._seq), on_view))
                return None
        return partition.create_subpartition_view(index, listener)

    def _take_pending(self, partition_id: ResultPartitionID) -> list[_Pending]:
        """Remove and return the requests waiting for ``partition_id`` (lock held)."""
        entries = self._listeners.pop(partition_id, None)
        if not entries:
            return []
        deadlines = self._deadlines
        for on_view in entries:
            del deadlines[on_view]
        self._compact()
        return list(entries.values())

    def _compact(self) -> None:
        """Rebuild the deadline heap once cancelled entries outnumber the live ones (lock held):
        a peer that requests and cancels in a loop cannot grow it beyond twice the requests
        actually waiting."""
        if len(self._heap) > 2 * len(self._deadlines) + 64:
            seq = self._seq
            self._heap = [(e[3], next(seq), e[2]) for entries in self._listeners.values()
                          for e in entries.values()]
            heapq.heapify(self._heap)

    def check_request_timeouts(self, now: float | None = None) -> int:
        """Answer expired pending requests with PartitionNotFoundError; returns how many (the
        cost is the number expired, not the number waiting)."""
        now = time.monotonic() if now is None else now
        expired: list[tuple[ResultPartitionID, ViewCallback]] = []
        with self._lock:
            heap, deadlines = self._heap, self._deadlines
            while heap and heap[0][0] <= now:
                deadline, _seq, on_view = heapq.heappop(heap)
                pid = deadlines.get(on_view)
                if pid is None:
                    continue            # cancelled or answered
                entries = self._listeners[pid]
                if entries[on_view][3] != deadline:
                    continue            # the callback waits again, for a newer request
                del deadlines[on_view]
                del entries[on_view]
                if not entries:
                    del self._listeners[pid]
                expired.append((pid, on_view))
            if not deadlines:
                heap.clear()
        for pid, on_view in expired:
            on_view(None, PartitionNotFoundError(pid))
        return len(expired)

    def cancel_pending_request(self, partition_id: ResultPartitionID, on_view: ViewCallback) -> bool:
        """Forget a pending request (its requester went away); O(1)."""
        with self._lock:
            entries = self._listeners.get(partition_id)
            if not entries or entries.pop(on_view, None) is None:
                return False
            del self._deadlines[on_view]
            if not entries:
                del self._listeners[partition_id]
            self._compact()
            return True

    def release_partition(self, partition_id: ResultPartitionID, cause: BaseException | None = None) -> None:
        """Remove and release the partition (pending requests for it fail at once)."""
        with self._lock:
            partition = self._partitions.pop(partition_id, None)
            pending = self._take_pending(partition_id)
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
            return len(self._deadlines)

    def shutdown(self) -> None:
        """Release every partition; pending requests fail."""
        with self._lock:
            self._is_shutdown = True
            partitions = list(self._partitions.values())
            self._partitions.clear()
            pending = [(pid, e) for pid, entries in self._listeners.items() for e in entries.values()]
            self._listeners.clear()
            self._deadlines.clear()
            self._heap.clear()
        for partition in partitions:
            partition.release()
        for pid, (_i, _l, on_view, _d) in pending:
            on_view(None, PartitionNotFoundError(pid))
