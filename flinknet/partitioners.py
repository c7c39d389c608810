"""Channel selectors: Flink's ``StreamPartitioner`` family (and the runtime's
``ChannelSelector``s).

Each selector is ``setup(number_of_channels)`` once, then picks the output channel (subpartition)
of a record with :meth:`ChannelSelector.select_channel`, or of many records at once with
:meth:`ChannelSelector.select_channels` (a numpy ``int32`` array; key-group hashing runs in C over
numpy keys). Behaviour is Flink's:

=================================  ==========================================================
Flink                              flinknet
=================================  ==========================================================
``ForwardPartitioner``             :class:`ForwardPartitioner`: always 0
``RebalancePartitioner``           :class:`RebalancePartitioner`: round robin from a random start
                                   ``r``; the first record goes to ``(r + 1) % n``
``RescalePartitioner``             :class:`RescalePartitioner`: round robin, first record to 0
``ShufflePartitioner``             :class:`ShufflePartitioner`: uniformly random
``BroadcastPartitioner``           :class:`BroadcastPartitioner`: ``is_broadcast``; selecting raises
``GlobalPartitioner``              :class:`GlobalPartitioner`: always 0
``KeyGroupStreamPartitioner``      :class:`KeyGroupStreamPartitioner`: ``assignKeyToParallelOperator``
``CustomPartitionerWrapper``       :class:`CustomPartitionerWrapper`: ``partition(key, n)``, checked
``RoundRobinChannelSelector``      :class:`RoundRobinChannelSelector`: round robin, first record to 0
``setup`` / ``selectChannel`` / ``isBroadcast`` / ``isPointwise`` / ``copy``  same names in snake_case
=================================  ==========================================================
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from flinknet._core.keygroups import (
    assign_key_to_parallel_operator,
    compute_default_max_parallelism,
    operator_indexes_array,
    operator_indexes_of,
    operator_indexes_of_slices,
)
from flinknet._core.typedefs import KeyType

__all__ = [
    "BroadcastPartitioner", "ChannelSelector", "CustomPartitionerWrapper", "ForwardPartitioner",
    "GlobalPartitioner", "KeyGroupStreamPartitioner", "RebalancePartitioner", "RescalePartitioner",
    "RoundRobinChannelSelector", "ShufflePartitioner",
]


class ChannelSelector:
    """Base of all selectors: picks one of ``number_of_channels`` channels per record."""

    name = "CHANNEL_SELECTOR"
    is_broadcast = False
    is_pointwise = False

    def __init__(self) -> None:
        self.number_of_channels = 0

    def setup(self, number_of_channels: int) -> None:
        """Fix the number of channels (called once, before selecting)."""
        if isinstance(number_of_channels, bool) or not isinstance(number_of_channels, int):
            raise TypeError(f"number_of_channels must be an int, got {type(number_of_channels).__name__}")
        if number_of_channels <= 0:
            raise ValueError(f"number_of_channels must be > 0, got {number_of_channels}")
        self.number_of_channels = number_of_channels

    def _check_setup(self) -> int:
        if self.number_of_channels <= 0:
            raise RuntimeError(f"{type(self).__name__}.setup() was not called")
        return self.number_of_channels

    def select_channel(self, record: Any) -> int:
        """The channel of ``record``."""
        raise NotImplementedError

    def select_channels(self, records: Sequence[Any] | npt.NDArray[Any]) -> npt.NDArray[np.int32]:
        """The channel of every record, in order, as an ``int32`` array (one call per batch)."""
        return np.fromiter((self.select_channel(r) for r in records), dtype=np.int32, count=len(records))

    def copy(self) -> ChannelSelector:
        """A fresh selector with the same configuration (each writer owns its selector)."""
        return type(self)()

    def __str__(self) -> str:
        return self.name


class ForwardPartitioner(ChannelSelector):
    """Forwards to the one downstream channel of a pointwise edge with equal parallelism."""

    name = "FORWARD"
    is_pointwise = True

    def select_channel(self, record: Any) -> int:
        self._check_setup()
        return 0

    def select_channels(self, records: Sequence[Any] | npt.NDArray[Any]) -> npt.NDArray[np.int32]:
        self._check_setup()
        return np.zeros(len(records), dtype=np.int32)


class GlobalPartitioner(ForwardPartitioner):
    """Sends everything to the first downstream subtask."""

    name = "GLOBAL"
    is_pointwise = False


class _RoundRobin(ChannelSelector):
    def __init__(self) -> None:
        super().__init__()
        self._next = -1

    def _start(self, number_of_channels: int) -> int:
        return -1

    def setup(self, number_of_channels: int) -> None:
        super().setup(number_of_channels)
        self._next = self._start(number_of_channels)

    def select_channel(self, record: Any) -> int:
        n = self._check_setup()
        self._next = (self._next + 1) % n
        return self._next

    def select_channels(self, records: Sequence[Any] | npt.NDArray[Any]) -> npt.NDArray[np.int32]:
        n = self._check_setup()
        count = len(records)
        out = (np.arange(1, count + 1, dtype=np.int64) + self._next) % n
        if count:
            self._next = int(out[-1])
        return out.astype(np.int32)


class RebalancePartitioner(_RoundRobin):
    """Round robin over all channels, starting at a random channel (Flink: ThreadLocalRandom)."""

    name = "REBALANCE"

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__()
        self._rng = rng if rng is not None else random.Random()

    def _start(self, number_of_channels: int) -> int:
        return self._rng.randrange(number_of_channels)

    def copy(self) -> RebalancePartitioner:
        return RebalancePartitioner()


class RescalePartitioner(_RoundRobin):
    """Round robin over the channels of a pointwise edge, starting at channel 0."""

    name = "RESCALE"
    is_pointwise = True


class RoundRobinChannelSelector(_RoundRobin):
    """The runtime's default selector: round robin starting at channel 0."""

    name = "ROUND_ROBIN"


class ShufflePartitioner(ChannelSelector):
    """A uniformly random channel per record."""

    name = "SHUFFLE"

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self._seed = seed
        self._rng = np.random.default_rng(seed)

    def select_channel(self, record: Any) -> int:
        return int(self._rng.integers(self._check_setup()))

    def select_channels(self, records: Sequence[Any] | npt.NDArray[Any]) -> npt.NDArray[np.int32]:
        return self._rng.integers(self._check_setup(), size=len(records), dtype=np.int32)

    def copy(self) -> ShufflePartitioner:
        return ShufflePartitioner()


class BroadcastPartitioner(ChannelSelector):
    """Every record to every channel: writers broadcast instead of selecting."""

    name = "BROADCAST"
    is_broadcast = True

    def select_channel(self, record: Any) -> int:
        raise TypeError("Broadcast partitioner does not support select channels.")

    def select_channels(self, records: Sequence[Any] | npt.NDArray[Any]) -> npt.NDArray[np.int32]:
        raise TypeError("Broadcast partitioner does not support select channels.")


class KeyGroupStreamPartitioner(ChannelSelector):
    """Hash partitioning by key groups, as Flink's keyBy: ``key_selector(record)`` is hashed with
    Java's ``hashCode`` (see :mod:`flinknet._core.keygroups`), then murmur, key group and operator.

    ``key_selector`` is a callable, or a ``slice`` (step 1): the key is then ``record[key_selector]``,
    Flink's positional key (``keyBy(0)``) for records with the key at a fixed place. Routing a batch
    (:meth:`select_channels`) then makes no key object and no Python call per record for ``bytes``
    and ``bytearray`` records: their key bytes are hashed in place
    (:func:`~flinknet._core.keygroups.operator_indexes_of_slices`); the channels are those of the
    callable ``lambda record: record[key_selector]``."""

    name = "HASH"

    def __init__(self, key_selector: Callable[[Any], Any] | slice, max_parallelism: int | None = None,
                 key_type: KeyType | None = None) -> None:
        super().__init__()
        if isinstance(key_selector, slice):
            if key_selector.step is not None and key_selector.step != 1:
                raise ValueError(f"a key slice needs a step of 1, got {key_selector!r}")
            for bound in (key_selector.start, key_selector.stop):
                if bound is not None and not isinstance(bound, int):
                    raise TypeError(f"a key slice's bounds must be int or None, got {key_selector!r}")
        elif not callable(key_selector):
            raise TypeError("key_selector must be callable or a slice")
        if max_parallelism is not None and not 0 < max_parallelism <= 32768:
            raise ValueError(f"max_parallelism must be in (0, 32768], got {max_parallelism}")
        self.key_selector = key_selector
        self.max_parallelism = max_parallelism
        self.key_type = key_type

    def _max_parallelism(self) -> int:
        # Set by setup() (which _check_setup() requires) when not given.
        max_parallelism = self.max_parallelism
        if max_parallelism is None:
            raise RuntimeError(f"{type(self).__name__}.setup() was not called")
        return max_parallelism

    def setup(self, number_of_channels: int) -> None:
        super().setup(number_of_channels)
        if self.max_parallelism is None:
            self.max_parallelism = compute_default_max_parallelism(number_of_channels)
        if number_of_channels > self.max_parallelism:
            raise ValueError(f"{number_of_channels} channels exceed max_parallelism {self.max_parallelism}")

    def select_channel(self, record: Any) -> int:
        n = self._check_setup()
        selector = self.key_selector
        key = record[selector] if isinstance(selector, slice) else selector(record)
        if key is None:
            raise ValueError("Assigned key must not be null!")
        return assign_key_to_parallel_operator(key, self._max_parallelism(), n, self.key_type)

    def select_channels(self, records: Sequence[Any] | npt.NDArray[Any]) -> npt.NDArray[np.int32]:
        selector = self.key_selector
        if isinstance(selector, slice):
            n = self._check_setup()
            return operator_indexes_of_slices(records, selector, self._max_parallelism(), n, self.key_type)
        return self.select_channels_for_keys(list(map(selector, records)))

    def select_channels_for_keys(self, keys: Sequence[Any] | npt.NDArray[Any]) -> npt.NDArray[np.int32]:
        """The channel of every key, in order, as an ``int32`` array: :meth:`select_channels` for
        keys already extracted (a column of the batch). A list or tuple of ``bytes``, ``str`` or
        ``int`` keys is routed in C without a Python call per key (the scalar hashing rule of
        :meth:`select_channel`); a numpy integer array by the dtype rule of
        :func:`~flinknet._core.keygroups.key_groups_array` (int64 keys hash as Java Longs)."""
        n = self._check_setup()
        if isinstance(keys, np.ndarray) and keys.dtype.kind in "iu":
            key_type = self.key_type
            if key_type is not None and key_type != "int" and key_type != "long":
                raise TypeError(f"key_type {key_type!r} cannot route an integer array")
            return operator_indexes_array(keys, self._max_parallelism(), n, key_type)
        return operator_indexes_of(keys, self._max_parallelism(), n, self.key_type)

    def _select_key(self, key: Any, n: int) -> int:
        if key is None:
            raise ValueError("Assigned key must not be null!")
        return assign_key_to_parallel_operator(key, self._max_parallelism(), n, self.key_type)

    def copy(self) -> KeyGroupStreamPartitioner:
        return KeyGroupStreamPartitioner(self.key_selector, self.max_parallelism, self.key_type)


class CustomPartitionerWrapper(ChannelSelector):
    """A user function ``partition(key, number_of_channels) -> channel`` (Flink's Partitioner);
    a result outside ``[0, number_of_channels)`` is an error naming the key."""

    name = "CUSTOM"

    def __init__(self, partitioner: Callable[[Any, int], int],
                 key_selector: Callable[[Any], Any] = lambda record: record) -> None:
        super().__init__()
        if not callable(partitioner) or not callable(key_selector):
            raise TypeError("partitioner and key_selector must be callable")
        self.partitioner = partitioner
        self.key_selector = key_selector

    def select_channel(self, record: Any) -> int:
        n = self._check_setup()
        key = self.key_selector(record)
        channel = self.partitioner(key, n)
        if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
            raise TypeError(f"custom partitioner returned {channel!r} for key {key!r}, not an int")
        if not 0 <= channel < n:
            raise ValueError(f"custom partitioner returned channel {channel} for key {key!r}; "
                             f"valid channels are 0..{n - 1}")
        return int(channel)

    def copy(self) -> CustomPartitionerWrapper:
        return CustomPartitionerWrapper(self.partitioner, self.key_selector)
