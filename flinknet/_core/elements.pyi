"""Type stubs for flinknet._core.elements (compiled)."""

from typing import Any, final

from flinknet._core.serialization import PayloadSerializer

@final
class StreamRecord:
    value: Any
    has_timestamp: bool
    def __init__(self, value: Any, timestamp: int | None = None) -> None: ...
    @property
    def timestamp(self) -> int | None: ...

@final
class Watermark:
    timestamp: int
    def __init__(self, timestamp: int) -> None: ...

@final
class InternalWatermark:
    timestamp: int
    subpartition_index: int
    def __init__(self, timestamp: int, subpartition_index: int) -> None: ...

@final
class LatencyMarker:
    marked_time: int
    operator_id_lower: int
    operator_id_upper: int
    subtask_index: int
    def __init__(self, marked_time: int, operator_id_lower: int, operator_id_upper: int,
                 subtask_index: int) -> None: ...

@final
class WatermarkStatus:
    status: int
    def __init__(self, status: int) -> None: ...
    @property
    def is_idle(self) -> bool: ...
    @property
    def is_active(self) -> bool: ...

@final
class RecordAttributes:
    is_backlog: bool
    def __init__(self, is_backlog: bool) -> None: ...

MAX_WATERMARK: Watermark
UNINITIALIZED: Watermark
IDLE: WatermarkStatus
ACTIVE: WatermarkStatus

@final
class StreamElementSerializer(PayloadSerializer):
    value_serializer: PayloadSerializer
    latency_markers_written: int
    latency_markers_read: int
    def __init__(self, value_serializer: PayloadSerializer | str = "byte_array") -> None: ...
