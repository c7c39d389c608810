"""The consumer side of the exchange: input gates, input channels and record readers (Flink's
``SingleInputGate`` / ``UnionInputGate``, ``InputChannel`` s and ``RecordReader``).

Name map (Flink → flinknet):

==========================================  ===========================================
``SingleInputGate`` / ``UnionInputGate``     :class:`SingleInputGate` / :class:`UnionInputGate`
``InputChannel`` / ``LocalInputChannel``     :class:`InputChannel` / :class:`LocalInputChannel`
``InputChannelInfo``                         :class:`InputChannelInfo`
``BufferOrEvent``                            :class:`BufferOrEvent`
``InputChannel.BufferAndAvailability``       :class:`~flinknet.interfaces.BufferAndBacklog`
``RecordReader``                             :class:`RecordReader`
``BufferDebloater``                          :class:`BufferDebloater` (:mod:`flinknet.consumer.debloat`)
``ThroughputCalculator``                     :class:`ThroughputCalculator`
==========================================  ===========================================
"""

from flinknet.consumer.channels import (
    DEFAULT_INITIAL_BACKOFF,
    DEFAULT_MAX_BACKOFF,
    InputChannel,
    InputChannelInfo,
    LocalInputChannel,
)
from flinknet.consumer.debloat import (
    BufferDebloatConfiguration,
    BufferDebloater,
    BufferSizeEMA,
    ThroughputCalculator,
)
from flinknet.consumer.gate import BufferOrEvent, InputGate, SingleInputGate, UnionInputGate
from flinknet.consumer.reader import RecordOrEvent, RecordReader

__all__ = [
    "DEFAULT_INITIAL_BACKOFF",
    "DEFAULT_MAX_BACKOFF",
    "BufferDebloatConfiguration",
    "BufferDebloater",
    "BufferOrEvent",
    "BufferSizeEMA",
    "InputChannel",
    "InputChannelInfo",
    "InputGate",
    "LocalInputChannel",
    "RecordOrEvent",
    "RecordReader",
    "SingleInputGate",
    "ThroughputCalculator",
    "UnionInputGate",
]
