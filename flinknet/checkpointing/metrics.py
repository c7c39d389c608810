"""The alignment metrics of a checkpointed gate in a metric group (§13).

=========================================  ==============================================================
metric                                     value
=========================================  ==============================================================
``checkpointAlignmentTime``                Flink's gauge (``MetricNames.CHECKPOINT_ALIGNMENT_TIME``): the
                                           running alignment so far, else the latest one's, in ns
``checkpointStartDelayNanos``              Flink's gauge: the latest checkpoint's creation to its first
                                           barrier at this task, in ns
``checkpointBytesProcessedDuringAlignment`` flinknet's: data bytes taken during the latest alignment
                                           (Flink reports it per checkpoint, ``CheckpointMetrics``)
``checkpointBytesPersistedDuringAlignment`` flinknet's: in-flight bytes captured for the latest
                                           (unaligned) checkpoint (Flink: per checkpoint)
=========================================  ==============================================================

Register them in the task's group, e.g. ``register_checkpoint_metrics(task_io.group, gate)``.
"""

from __future__ import annotations

from flinknet.checkpointing.gate import CheckpointedInputGate
from flinknet.checkpointing.handlers import CheckpointBarrierHandler
from flinknet.metrics.registry import MetricGroup

__all__ = ["CHECKPOINT_METRIC_NAMES", "register_checkpoint_metrics"]

CHECKPOINT_METRIC_NAMES = (
    "checkpointAlignmentTime",
    "checkpointStartDelayNanos",
    "checkpointBytesProcessedDuringAlignment",
    "checkpointBytesPersistedDuringAlignment",
)


def register_checkpoint_metrics(group: MetricGroup,
                                gate_or_handler: CheckpointedInputGate | CheckpointBarrierHandler) -> None:
    """Register the gauges of the table above in ``group`` (read on the reporter's thread:
    each is one attribute read of the handler)."""
    handler = (gate_or_handler.barrier_handler if isinstance(gate_or_handler, CheckpointedInputGate)
               else gate_or_handler)
    if not isinstance(handler, CheckpointBarrierHandler):
        raise TypeError("expected a CheckpointedInputGate or a CheckpointBarrierHandler")
    group.gauge("checkpointAlignmentTime", lambda: handler.alignment_duration_nanos)
    group.gauge("checkpointStartDelayNanos", lambda: handler.checkpoint_start_delay_nanos)
    group.gauge("checkpointBytesProcessedDuringAlignment", lambda: handler.bytes_processed_during_alignment)
    group.gauge("checkpointBytesPersistedDuringAlignment", lambda: handler.bytes_persisted_during_alignment)
