"""Network configuration with Flink's option keys, units and defaults (Flink's
``NettyShuffleEnvironmentOptions``, ``TaskManagerOptions`` and ``ExecutionOptions``).

``NetworkConfig({"taskmanager.memory.network.max": "128mb", ...})`` or
``NetworkConfig(**{...})``; values may be given as Flink writes them (``"64mb"``, ``"32 kb"``,
``"100 ms"``, ``"10 s"``) or as numbers (bytes, milliseconds). Unknown keys are errors, so a typo
never silently falls back to a default: :class:`~flinknet.errors.UnknownConfigurationKeyError`
(also a ``KeyError``) names the closest known key. A bad value, or options that contradict each
other, raise :class:`~flinknet.errors.ConfigurationError` (also a ``ValueError``, Flink's
IllegalConfigurationException) naming the key. Read values with ``config["key"]`` or the typed
properties (sizes in bytes, durations in seconds).

flinknet has no "total process memory" to take a fraction of, so the network memory is
``taskmanager.memory.network.max`` (default 64 MiB, Flink's minimum) and ``.min`` only bounds it
from below. Keys prefixed ``flinknet.`` are flinknet's own (flow-control mode, frame limit, the
shared-secret handshake).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import TypeAlias, TypeVar, cast, overload

from flinknet.errors import ConfigurationError, UnknownConfigurationKeyError

__all__ = ["ConfigValue", "NetworkConfig", "parse_duration", "parse_memory_size"]

ConfigValue: TypeAlias = int | float | str | bool
"""An option's parsed value: sizes in bytes (int), durations in seconds (float), counts (int),
flags (bool), names and paths (str)."""

_Parser: TypeAlias = Callable[[object, str], ConfigValue]
_T = TypeVar("_T")

_SIZE_UNITS = {
    "": 1, "b": 1, "bytes": 1,
    "k": 1 << 10, "kb": 1 << 10, "kibibytes": 1 << 10,
    "m": 1 << 20, "mb": 1 << 20, "mebibytes": 1 << 20,
    "g": 1 << 30, "gb": 1 << 30, "gibibytes": 1 << 30,
    "t": 1 << 40, "tb": 1 << 40, "tebibytes": 1 << 40,
}
_DURATION_UNITS = {
    "ns": 1e-9, "nano": 1e-9, "nanos": 1e-9, "nanosecond": 1e-9, "nanoseconds": 1e-9,
    "us": 1e-6, "µs": 1e-6, "micro": 1e-6, "micros": 1e-6, "microsecond": 1e-6, "microseconds": 1e-6,
    "ms": 1e-3, "milli": 1e-3, "millis": 1e-3, "millisecond": 1e-3, "milliseconds": 1e-3,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "min": 60.0, "m": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}
_NUM_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zµ]*)\s*$", re.IGNORECASE)


def parse_memory_size(value: object, key: str = "size") -> int:
    """Bytes of a Flink MemorySize (``"64mb"``, ``"32 kb"``, ``1024``)."""
    if isinstance(value, bool):
        raise ConfigurationError(f"{key}: expected a memory size, got {value!r}", key)
    if isinstance(value, int):
        n = value
    else:
        m = _NUM_UNIT.match(str(value))
        if not m or m.group(2).lower() not in _SIZE_UNITS or "." in m.group(1):
            raise ConfigurationError(
                f"{key}: cannot parse memory size {value!r} (e.g. '64mb', '32kb', 1024)", key)
        n = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if n < 0:
        raise ConfigurationError(f"{key}: memory size must be >= 0, got {value!r}", key)
    return n


def parse_duration(value: object, key: str = "duration", default_unit: float = 1e-3) -> float:
    """Seconds of a Flink Duration (``"100 ms"``, ``"10 s"``; a bare number is milliseconds)."""
    if isinstance(value, bool):
        raise ConfigurationError(f"{key}: expected a duration, got {value!r}", key)
    if isinstance(value, (int, float)):
        seconds = float(value) * default_unit
    else:
        m = _NUM_UNIT.match(str(value))
        unit = m.group(2).lower() if m else None
        if not m or (unit and unit not in _DURATION_UNITS):
            raise ConfigurationError(f"{key}: cannot parse duration {value!r} (e.g. '100 ms', '10 s')", key)
        seconds = float(m.group(1)) * (_DURATION_UNITS[unit] if unit else default_unit)
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(f"{key}: duration must be finite and >= 0, got {value!r}", key)
    return seconds


def _int(minimum: int) -> _Parser:
    def parse(value: object, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            try:
                number = int(str(value).strip())
            except ValueError:
                raise ConfigurationError(f"{key}: expected an integer, got {value!r}", key) from None
        else:
            number = value
        if number < minimum:
            raise ConfigurationError(f"{key}: must be >= {minimum}, got {number}", key)
        return number
    return parse


def _bool(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ConfigurationError(f"{key}: expected true or false, got {value!r}", key)


def _str(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{key}: expected a string, got {value!r}", key)
    return value


def _choice(*options: str) -> _Parser:
    def parse(value: object, key: str) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ConfigurationError(f"{key}: expected one of {', '.join(options)}, got {value!r}", key)
        return text
    return parse


def _size(value: object, key: str) -> int:
    return parse_memory_size(value, key)


def _duration(value: object, key: str) -> float:
    return parse_duration(value, key)


def _duration_s(value: object, key: str) -> float:
    return parse_duration(value, key, default_unit=1.0)


#: key → (parser, default). Defaults are Flink 2.x's (its option classes' defaults) unless noted.
OPTIONS: dict[str, tuple[_Parser, ConfigValue]] = {
    "taskmanager.memory.segment-size": (_size, "32kb"),
    "taskmanager.memory.network.min": (_size, "64mb"),
    "taskmanager.memory.network.max": (_size, "64mb"),  # Flink: unbounded fraction; flinknet: the size
    "taskmanager.network.memory.buffers-per-channel": (_int(0), 2),
    "taskmanager.network.memory.floating-buffers-per-gate": (_int(0), 8),
    "taskmanager.network.memory.max-buffers-per-channel": (_int(1), 10),
    "taskmanager.network.memory.max-overdraft-buffers-per-gate": (_int(0), 20),
    "taskmanager.network.memory.buffers-request-timeout": (_duration, "30 s"),
    # Buffer debloating (TaskManagerOptions.BUFFER_DEBLOAT_*): a consumer with it asks its
    # producers for buffers that hold about `target` of data in flight (flinknet.consumer.debloat).
    "taskmanager.network.memory.buffer-debloat.enabled": (_bool, False),
    "taskmanager.network.memory.buffer-debloat.target": (_duration, "1 s"),
    "taskmanager.network.memory.buffer-debloat.period": (_duration, "200 ms"),
    "taskmanager.network.memory.buffer-debloat.samples": (_int(1), 20),
    "taskmanager.network.memory.buffer-debloat.threshold-percentages": (_int(0), 25),
    # The smallest size debloating asks for, and where its moving average starts (Flink 2.x).
    "taskmanager.memory.min-segment-size": (_size, "256b"),
    "taskmanager.memory.starting-segment-size": (_size, "1kb"),
    "taskmanager.network.request-backoff.initial": (_duration, "100 ms"),
    "taskmanager.network.request-backoff.max": (_duration, "10000 ms"),
    "taskmanager.network.partition-request-timeout": (_duration, "10 s"),
    "taskmanager.network.retries": (_int(0), 0),
    "taskmanager.network.netty.client.connectTimeoutSec": (_duration_s, 120),
    "taskmanager.network.bind-host": (_str, "127.0.0.1"),  # Flink: 0.0.0.0; flinknet: loopback
    # The address other environments connect to (Flink's external address of the TaskManager);
    # "" (default): the bind host, or for a wildcard bind host this host's primary address.
    "taskmanager.host": (_str, ""),
    "taskmanager.data.port": (_int(0), 0),
    "taskmanager.network.tcp-connection.enable-reuse-across-jobs": (_bool, True),
    "execution.buffer-timeout.enabled": (_bool, True),
    "execution.buffer-timeout.interval": (_duration, "100 ms"),
    "security.ssl.internal.enabled": (_bool, False),
    "security.ssl.internal.keystore": (_str, ""),     # PEM certificate chain + key (Python's ssl)
    "security.ssl.internal.truststore": (_str, ""),   # PEM CA file
    "flinknet.network.flow-control": (_choice("credit", "tcp"), "credit"),
    "flinknet.network.max-frame-length": (_size, "16mb"),
    # The native I/O engine (a thread without the GIL) for plain-TCP, credit-based connections;
    # False: every connection takes the Python I/O thread (TLS always does).
    "flinknet.network.native-io": (_bool, True),
    "flinknet.network.shared-secret": (_str, ""),
    "flinknet.network.handshake-timeout": (_duration, "10 s"),
    # Per-peer bounds of the server (Flink has none): exceeding one closes that peer's
    # connection with a PeerLimitError naming the key (see flinknet.transport.ServerLimits).
    "flinknet.network.max-connections": (_int(1), 1024),
    "flinknet.network.max-connections-per-host": (_int(1), 256),
    "flinknet.network.max-pending-requests-per-connection": (_int(1), 4096),
    "flinknet.network.max-unsent-bytes-per-connection": (_size, "64mb"),
    "flinknet.network.max-request-frame-length": (_size, "64kb"),
    "flinknet.network.idle-timeout": (_duration, "10 min"),   # 0: never
    # A vanished or frozen peer fails its connection after about this long (0: kernel defaults).
    "flinknet.network.liveness-timeout": (_duration, "60 s"),
    # How long closing an environment waits for its finished pipelined partitions to be consumed.
    "flinknet.network.close-timeout": (_duration, "30 s"),
    # The longest a record reader's wait keeps the GIL when its gate's data all comes from the
    # native I/O thread and another Python thread contends for the GIL (0: never; at most 100 ms;
    # see flinknet._core.engine.GateSignal.set_gil_hold).
    "flinknet.network.reader-gil-hold": (_duration, "1 ms"),
}


class NetworkConfig(Mapping[str, ConfigValue]):
    """Validated network options (see the module documentation)."""

    def __init__(self, options: Mapping[str, object] | None = None, /, **kwargs: object):
        given = dict(options or {})
        given.update(kwargs)
        unknown = sorted((k for k in given if k not in OPTIONS), key=str)
        if unknown:
            raise UnknownConfigurationKeyError.for_keys(unknown, OPTIONS)
        values: dict[str, ConfigValue] = {}
        for key, (parse, default) in OPTIONS.items():
            values[key] = parse(given.get(key, default), key)
        self._values = values
        self._given = frozenset(given)
        seg = self._int("taskmanager.memory.segment-size")
        if seg < 64 or seg > (1 << 30) or seg & (seg - 1):
            # Flink requires a power of two for the segment size in several places.
            raise ConfigurationError("taskmanager.memory.segment-size must be a power of two in "
                                     f"[64 b, 1 gb], got {seg}", "taskmanager.memory.segment-size")
        lo, hi = self._int("taskmanager.memory.network.min"), self._int("taskmanager.memory.network.max")
        if "taskmanager.memory.network.min" not in given:
            lo = values["taskmanager.memory.network.min"] = min(lo, hi)
        if hi < lo:
            raise ConfigurationError(f"taskmanager.memory.network.max ({hi} bytes) is smaller than "
                                     f"taskmanager.memory.network.min ({lo} bytes)",
                                     "taskmanager.memory.network.max")
        if hi // seg < 2:
            raise ConfigurationError(
                f"taskmanager.memory.network.max ({hi} bytes) must hold at least two segments of "
                f"taskmanager.memory.segment-size ({seg} bytes)", "taskmanager.memory.network.max")
        if (self._float("taskmanager.network.request-backoff.max")
                < self._float("taskmanager.network.request-backoff.initial")):
            raise ConfigurationError("taskmanager.network.request-backoff.max is smaller than "
                                     "taskmanager.network.request-backoff.initial",
                                     "taskmanager.network.request-backoff.max")
        port = self._int("taskmanager.data.port")
        if port > 65535:
            raise ConfigurationError(f"taskmanager.data.port must be <= 65535, got {port}",
                                     "taskmanager.data.port")
        self._check_network_ranges(seg)

    def _check_network_ranges(self, seg: int) -> None:
        """Values every parser accepts but the transport cannot work with."""
        def bad(key: str, why: str) -> ConfigurationError:
            return ConfigurationError(f"{key} {why}, got {self._values[key]!r}", key)

        if not self._str("taskmanager.network.bind-host").strip():
            raise bad("taskmanager.network.bind-host",
                      "must name a host or address (\"0.0.0.0\" or \"::\" for every interface)")
        for key in ("taskmanager.network.netty.client.connectTimeoutSec",
                    "taskmanager.network.partition-request-timeout",
                    "flinknet.network.handshake-timeout",
                    "taskmanager.network.memory.buffers-request-timeout"):
            if self._float(key) <= 0:
                raise bad(key, "must be > 0")
        # A frame must hold a whole buffer (a BufferResponse's 9 + 47 header bytes and one
        # segment) and its length fits Flink's int32 frame-length field.
        key = "flinknet.network.max-frame-length"
        if not seg + 56 <= self._int(key) <= (1 << 31) - 1:
            raise bad(key, f"must be in [segment size + 56 = {seg + 56}, 2 gb - 1] bytes")
        key = "flinknet.network.max-request-frame-length"
        if not 1024 <= self._int(key) <= (1 << 31) - 1:
            raise bad(key, "must be in [1 kb, 2 gb - 1] bytes")
        key = "flinknet.network.max-unsent-bytes-per-connection"
        if self._int(key) < 64 * 1024:
            raise bad(key, "must be at least 64 kb")
        for key in ("flinknet.network.idle-timeout", "flinknet.network.liveness-timeout",
                    "flinknet.network.close-timeout"):
            if self._float(key) < 0:
                raise bad(key, "must be >= 0 (0: off)")
        key = "flinknet.network.reader-gil-hold"
        if self._float(key) > 0.1:
            raise bad(key, "must be at most 100 ms (0: off)")
        self._check_debloat(seg)

    def _check_debloat(self, seg: int) -> None:
        """The buffer-debloat options (Flink's BufferDebloatConfiguration checks). The sizes are
        checked against each other only when debloating is enabled: a small segment size alone
        must not fail on a default minimum it never uses."""
        def bad(key: str, why: str) -> ConfigurationError:
            return ConfigurationError(f"{key} {why}, got {self._values[key]!r}", key)

        prefix = "taskmanager.network.memory.buffer-debloat."
        if self._float(prefix + "target") < 1e-3:
            raise bad(prefix + "target", "must be at least 1 ms")
        if self._float(prefix + "period") <= 0:
            raise bad(prefix + "period", "must be > 0")
        lo_key, start_key = "taskmanager.memory.min-segment-size", "taskmanager.memory.starting-segment-size"
        if self._int(lo_key) <= 0:
            raise bad(lo_key, "must be > 0")
        if self._int(start_key) <= 0:
            raise bad(start_key, "must be > 0")
        if not self._bool(prefix + "enabled"):
            return
        lo, start = self._int(lo_key), self._int(start_key)
        if lo > seg:
            raise ConfigurationError(
                f"{lo_key} ({lo} bytes) is larger than taskmanager.memory.segment-size ({seg} bytes) "
                f"with {prefix}enabled", lo_key)
        if not lo <= start <= seg:
            raise ConfigurationError(
                f"{start_key} ({start} bytes) must be in [{lo_key}, taskmanager.memory.segment-size] "
                f"= [{lo}, {seg}] bytes with {prefix}enabled", start_key)

    def __getitem__(self, key: str) -> ConfigValue:
        try:
            return self._values[key]
        except KeyError:
            raise UnknownConfigurationKeyError.for_keys([key], OPTIONS) from None

    def __contains__(self, key: object) -> bool:
        return key in self._values

    @overload
    def get(self, key: str, /) -> ConfigValue | None: ...
    @overload
    def get(self, key: str, default: ConfigValue | _T, /) -> ConfigValue | _T: ...

    def get(self, key: str, default: object = None) -> object:
        """The value of ``key``, or ``default`` if flinknet has no such option."""
        return self._values.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    # Typed reads of the parsed values (each option's parser fixes its value's type).
    def _int(self, key: str) -> int:
        return cast(int, self._values[key])

    def _float(self, key: str) -> float:
        return cast(float, self._values[key])

    def _bool(self, key: str) -> bool:
        return cast(bool, self._values[key])

    def _str(self, key: str) -> str:
        return cast(str, self._values[key])

    def is_set(self, key: str) -> bool:
        """Whether ``key`` was given (rather than defaulted)."""
        return key in self._given

    # -- typed views -----------------------------------------------------------------------

    @property
    def segment_size(self) -> int:
        return self._int("taskmanager.memory.segment-size")

    @property
    def network_memory(self) -> int:
        return self._int("taskmanager.memory.network.max")

    @property
    def num_network_buffers(self) -> int:
        return self.network_memory // self.segment_size

    @property
    def buffers_per_channel(self) -> int:
        return self._int("taskmanager.network.memory.buffers-per-channel")

    @property
    def floating_buffers_per_gate(self) -> int:
        return self._int("taskmanager.network.memory.floating-buffers-per-gate")

    @property
    def max_buffers_per_channel(self) -> int:
        return self._int("taskmanager.network.memory.max-buffers-per-channel")

    @property
    def max_overdraft_buffers_per_gate(self) -> int:
        return self._int("taskmanager.network.memory.max-overdraft-buffers-per-gate")

    @property
    def request_timeout(self) -> float:
        return self._float("taskmanager.network.memory.buffers-request-timeout")

    @property
    def partition_request_initial_backoff_ms(self) -> int:
        return round(self._float("taskmanager.network.request-backoff.initial") * 1000)

    @property
    def partition_request_max_backoff_ms(self) -> int:
        return round(self._float("taskmanager.network.request-backoff.max") * 1000)

    @property
    def partition_request_timeout(self) -> float:
        return self._float("taskmanager.network.partition-request-timeout")

    @property
    def connect_timeout(self) -> float:
        return self._float("taskmanager.network.netty.client.connectTimeoutSec")

    @property
    def connect_retries(self) -> int:
        return self._int("taskmanager.network.retries")

    @property
    def bind_host(self) -> str:
        return self._str("taskmanager.network.bind-host")

    @property
    def advertised_host(self) -> str:
        """``taskmanager.host``: the host other environments connect to ("" when not set)."""
        return self._str("taskmanager.host").strip()

    @property
    def data_port(self) -> int:
        return self._int("taskmanager.data.port")

    @property
    def buffer_timeout_ms(self) -> float:
        """The record writers' buffer timeout: -1 when disabled, else milliseconds."""
        if not self._bool("execution.buffer-timeout.enabled"):
            return -1
        return self._float("execution.buffer-timeout.interval") * 1000

    @property
    def credit_based(self) -> bool:
        return self._values["flinknet.network.flow-control"] == "credit"

    @property
    def native_io(self) -> bool:
        """Plain-TCP, credit-based connections are read by the native engine."""
        return self._bool("flinknet.network.native-io")

    @property
    def max_frame_length(self) -> int:
        return self._int("flinknet.network.max-frame-length")

    @property
    def max_connections(self) -> int:
        return self._int("flinknet.network.max-connections")

    @property
    def max_connections_per_host(self) -> int:
        return self._int("flinknet.network.max-connections-per-host")

    @property
    def max_pending_requests_per_connection(self) -> int:
        return self._int("flinknet.network.max-pending-requests-per-connection")

    @property
    def max_unsent_bytes_per_connection(self) -> int:
        return self._int("flinknet.network.max-unsent-bytes-per-connection")

    @property
    def max_request_frame_length(self) -> int:
        return self._int("flinknet.network.max-request-frame-length")

    @property
    def close_timeout(self) -> float:
        """Seconds closing an environment waits for its finished partitions to be consumed."""
        return self._float("flinknet.network.close-timeout")

    @property
    def liveness_timeout(self) -> float:
        """Seconds after which a vanished or frozen peer fails its connection (0: kernel's)."""
        return self._float("flinknet.network.liveness-timeout")

    @property
    def reader_gil_hold(self) -> float:
        """Seconds a record reader's wait may keep the GIL (0: never; see
        :attr:`flinknet.consumer.SingleInputGate.reader_gil_hold`)."""
        return self._float("flinknet.network.reader-gil-hold")

    @property
    def idle_timeout(self) -> float:
        """Seconds a server connection may stay without readers and input (0: forever)."""
        return self._float("flinknet.network.idle-timeout")

    @property
    def buffer_debloat_enabled(self) -> bool:
        """``taskmanager.network.memory.buffer-debloat.enabled``: gates debloat their buffers."""
        return self._bool("taskmanager.network.memory.buffer-debloat.enabled")

    @property
    def buffer_debloat_target(self) -> float:
        """Seconds of data the buffers in flight should hold (``...buffer-debloat.target``)."""
        return self._float("taskmanager.network.memory.buffer-debloat.target")

    @property
    def buffer_debloat_period(self) -> float:
        """Seconds between two recalculations of the buffer size (``...buffer-debloat.period``)."""
        return self._float("taskmanager.network.memory.buffer-debloat.period")

    @property
    def buffer_debloat_samples(self) -> int:
        """The moving average's number of samples (``...buffer-debloat.samples``)."""
        return self._int("taskmanager.network.memory.buffer-debloat.samples")

    @property
    def buffer_debloat_threshold_percentages(self) -> int:
        """How much (percent of the last size) a new size must differ to be announced
        (``...buffer-debloat.threshold-percentages``)."""
        return self._int("taskmanager.network.memory.buffer-debloat.threshold-percentages")

    @property
    def min_segment_size(self) -> int:
        """``taskmanager.memory.min-segment-size``: the smallest size debloating asks for."""
        return self._int("taskmanager.memory.min-segment-size")

    @property
    def starting_segment_size(self) -> int:
        """``taskmanager.memory.starting-segment-size``: where debloating's average starts."""
        return self._int("taskmanager.memory.starting-segment-size")

    def __repr__(self) -> str:
        changed = {k: v for k, v in self._values.items() if k in self._given}
        return f"NetworkConfig({changed!r})"
