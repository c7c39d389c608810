"""Checkpoint barriers on the input side: alignment, unaligned capture of in-flight data,
aligned-with-timeout, at-least-once (Flink's ``streaming.runtime.io.checkpointing``).

A framework wraps its task's gate in a :class:`CheckpointedInputGate` (built by
:func:`create_checkpointed_input_gate`), reads it as any gate (a
:class:`~flinknet.consumer.RecordReader` can read through it), and implements
:class:`CheckpointableTask` — ``trigger_checkpoint_on_barrier(metadata, options, metrics)``
(snapshot now: "the barrier is complete at this task" for an aligned checkpoint) and
``abort_checkpoint_on_barrier(checkpoint_id, cause)`` — plus, for unaligned checkpoints, a
:class:`ChannelStateWriter` receiving the captured in-flight buffers
(:class:`InMemoryChannelStateWriter` is one).

Name map (Flink → flinknet):

==============================================  ==================================================
``CheckpointedInputGate``                       :class:`CheckpointedInputGate`
``InputProcessorUtil.createCheckpointBarrier…``  :func:`create_checkpointed_input_gate`
``CheckpointBarrierHandler``                    :class:`CheckpointBarrierHandler`
``SingleCheckpointBarrierHandler``              :class:`SingleCheckpointBarrierHandler`
  ``.aligned / .unaligned / .alternating``        ``.aligned / .unaligned / .alternating``
``CheckpointBarrierTracker``                    :class:`CheckpointBarrierTracker`
``BarrierHandlerState`` and its states          :mod:`flinknet.checkpointing.states`
``CheckpointableInput``                         :class:`CheckpointableInput`
``ChannelStatePersister``                       :class:`ChannelStatePersister`
``CheckpointableTask``                          :class:`CheckpointableTask`
  ``triggerCheckpointOnBarrier``                  ``trigger_checkpoint_on_barrier``
  ``abortCheckpointOnBarrier``                    ``abort_checkpoint_on_barrier``
``ChannelStateWriter``                          :class:`ChannelStateWriter`
  ``start / addInputData / finishInput / abort``  ``start / add_input_data / finish_input / abort``
``CheckpointMetaData``                          :class:`CheckpointMetaData`
``CheckpointMetricsBuilder``                    :class:`CheckpointMetrics`
``CheckpointException``                         :class:`CheckpointFailure` (a value, not raised)
``CheckpointFailureReason``                     :class:`CheckpointFailureReason`
``Clock`` / ``ManualClock``                     :class:`Clock` / :class:`SystemClock`, :class:`ManualClock`
==============================================  ==================================================
"""

from flinknet.checkpointing.api import (
    SEQUENCE_NUMBER_RESTORED,
    SEQUENCE_NUMBER_UNKNOWN,
    Cancellable,
    ChannelStateWriter,
    ChannelStateWriteResult,
    CheckpointableTask,
    CheckpointFailure,
    CheckpointFailureReason,
    CheckpointMetaData,
    CheckpointMetrics,
    Clock,
    InMemoryChannelStateWriter,
    ManualClock,
    SystemClock,
    TaskThreadTimerService,
    TimerService,
)
from flinknet.checkpointing.gate import (
    CheckpointedInputGate,
    CheckpointingMode,
    create_checkpointed_input_gate,
)
from flinknet.checkpointing.handlers import (
    CheckpointBarrierHandler,
    CheckpointBarrierTracker,
    SingleCheckpointBarrierHandler,
)
from flinknet.checkpointing.inputs import ChannelStatePersister, CheckpointableInput
from flinknet.checkpointing.metrics import register_checkpoint_metrics

__all__ = [
    "SEQUENCE_NUMBER_RESTORED",
    "SEQUENCE_NUMBER_UNKNOWN",
    "Cancellable",
    "ChannelStatePersister",
    "ChannelStateWriteResult",
    "ChannelStateWriter",
    "CheckpointBarrierHandler",
    "CheckpointBarrierTracker",
    "CheckpointFailure",
    "CheckpointFailureReason",
    "CheckpointMetaData",
    "CheckpointMetrics",
    "CheckpointableInput",
    "CheckpointableTask",
    "CheckpointedInputGate",
    "CheckpointingMode",
    "Clock",
    "InMemoryChannelStateWriter",
    "ManualClock",
    "SingleCheckpointBarrierHandler",
    "SystemClock",
    "TaskThreadTimerService",
    "TimerService",
    "create_checkpointed_input_gate",
    "register_checkpoint_metrics",
]
