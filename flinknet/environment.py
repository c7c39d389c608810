"""One network environment per process (Flink's NettyShuffleEnvironment).

``NetworkEnvironment(config)`` allocates the global :class:`~flinknet.core.NetworkBufferPool` once
(network memory / segment size), runs one I/O thread with a TCP server (``address`` tells where
it listens; loopback unless configured) and the client connections to other environments, and
owns the :class:`~flinknet.partition.ResultPartitionManager`. Producers get partitions from
:meth:`NetworkEnvironment.create_result_partition`; consumers get gates from
:meth:`NetworkEnvironment.create_input_gate`, with local channels for partitions of this
environment and remote channels (one shared TCP connection per peer) for the others.
``close()`` (or leaving a ``with`` block) releases everything.

A partition is named to :meth:`~NetworkEnvironment.create_input_gate` by an
:data:`InputChannelSpec`: ``(partition_id, subpartition_index)`` for a partition of this
environment, ``(partition_id, subpartition_index, address)`` for one anywhere, where ``address``
is the producing environment's :attr:`~NetworkEnvironment.address` (an
:data:`~flinknet.types.Address`, ``(host, port)``), a ``"host:port"`` string (``"[::1]:port"``
for an IPv6 host) or None (this environment).
"""

from __future__ import annotations

import logging
import operator
import os
import socket
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Self, SupportsIndex, TypeAlias

from flinknet._core.engine import ReceiveEngine
from flinknet._core.pool import NetworkBufferPool
from flinknet.config import NetworkConfig
from flinknet.consumer.channels import InputChannel, LocalInputChannel
from flinknet.consumer.debloat import BufferDebloatConfiguration
from flinknet.consumer.gate import SingleInputGate
from flinknet.consumer.remote import RemoteInputChannel
from flinknet.errors import IllegalStateError
from flinknet.ids import ResultPartitionID
from flinknet.partition import (
    PipelinedResultPartition,
    ResultPartition,
    ResultPartitionManager,
    create_result_partition,
)
from flinknet.transport.client import ConnectionManager
from flinknet.transport.eventloop import IOThread
from flinknet.transport.handshake import HandshakeConfig
from flinknet.transport.server import ServerLimits, TransportServer
from flinknet.types import Address, ResultPartitionType, SerializerSpec

__all__ = ["InputChannelSpec", "NetworkEnvironment"]

log = logging.getLogger(__name__)

InputChannelSpec: TypeAlias = (tuple[ResultPartitionID, int]
                               | tuple[ResultPartitionID, int, Address | str | None])
"""One channel of :meth:`NetworkEnvironment.create_input_gate`: ``(partition_id,
subpartition_index)`` or ``(partition_id, subpartition_index, address)``."""

_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_WILDCARDS = ("0.0.0.0", "::")

# Environments of this process: a child forked from it marks them (their threads do not exist
# there), so using one raises a clear error instead of hanging or failing silently.
_LIVE: weakref.WeakSet[NetworkEnvironment] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    parent = os.getppid()
    for env in list(_LIVE):
        env._forked_from = parent


os.register_at_fork(after_in_child=_after_fork_in_child)


def _advertised_host(config: NetworkConfig, bound_host: str) -> str:
    """The host other environments connect to (see :attr:`NetworkEnvironment.address`)."""
    if config.advertised_host:
        return config.advertised_host
    if bound_host not in _WILDCARDS:
        return bound_host
    # A wildcard bind: the address of the interface this host reaches others through (a UDP
    # "connect" sends nothing), else its name's address, else loopback.
    family = socket.AF_INET6 if bound_host == "::" else socket.AF_INET
    probe = "2001:db8::1" if family == socket.AF_INET6 else "192.0.2.1"   # documentation ranges
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            host = s.getsockname()[0]
            if host not in _WILDCARDS:
                return str(host)
    except OSError:
        pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "::1" if family == socket.AF_INET6 else "127.0.0.1"


def _as_int(value: object) -> int | None:
    """``value`` as an int if it is one (numpy integers too; bools are not), else None."""
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        return None
    return operator.index(value)


def _parse_address(text: str, where: str) -> Address:
    """``"host:port"`` or ``"[ipv6-host]:port"`` as ``(host, port)``."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{where}: cannot read address {text!r}: an IPv6 host is written "
                             "'[host]:port', e.g. '[::1]:6121'")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{where}: cannot read address {text!r}: expected 'host:port'")
        if ":" in host:
            raise ValueError(f"{where}: cannot read address {text!r}: an IPv6 host needs brackets, "
                             f"'[{host}]:{port_text}'")
    if not host:
        raise ValueError(f"{where}: address {text!r} has no host")
    if not port_text.isdigit() or not port_text.isascii():
        raise ValueError(f"{where}: address {text!r} has no valid port (a decimal number)")
    return host, _check_port(int(port_text), where, text)


def _check_port(port: int, where: str, address: object) -> int:
    if not 0 < port <= 65535:
        raise ValueError(f"{where}: the port of address {address!r} must be in [1, 65535], got {port}")
    return port


def _check_address(address: object, where: str) -> Address | None:
    """An address as ``create_input_gate`` takes it (see :data:`InputChannelSpec`), normalized."""
    if address is None:
        return None
    if isinstance(address, str):
        return _parse_address(address.strip(), where)
    if isinstance(address, (tuple, list)) and len(address) == 2:
        host, given_port = address
        port = _as_int(given_port)
        if not isinstance(host, str):
            raise TypeError(f"{where}: the host of address {address!r} must be a str, got {host!r}")
        if port is None:
            raise TypeError(f"{where}: the port of address {address!r} must be an int, got {given_port!r}")
        return host, _check_port(port, where, address)
    raise TypeError(f"{where}: the address must be (host, port), 'host:port' or None, got {address!r}")


def _check_spec(i: int, spec: object) -> tuple[ResultPartitionID, int, Address | None]:
    """``partitions[i]`` of :meth:`NetworkEnvironment.create_input_gate`, checked and normalized."""
    where = f"partitions[{i}]"
    if not isinstance(spec, (tuple, list)) or len(spec) not in (2, 3):
        raise TypeError(f"{where} must be (partition_id, subpartition_index) or (partition_id, "
                        f"subpartition_index, address), got {spec!r}")
    pid, index = spec[0], _as_int(spec[1])
    if not isinstance(pid, ResultPartitionID):
        raise TypeError(f"{where}: the partition id must be a ResultPartitionID, got {pid!r}")
    if index is None:
        raise TypeError(f"{where}: the subpartition index must be an int, got {spec[1]!r}")
    if index < 0:
        raise ValueError(f"{where}: the subpartition index must be >= 0, got {index}")
    return pid, index, _check_address(spec[2] if len(spec) > 2 else None, where)


class NetworkEnvironment:
    """A process's network stack: buffer pool, partition manager, I/O thread, server, clients."""

    def __init__(self, config: NetworkConfig | Mapping[str, object] | None = None, **options: object):
        if not isinstance(config, NetworkConfig):
            config = NetworkConfig(config or {}, **options)
        elif options:
            raise TypeError("give either a NetworkConfig or option keywords, not both")
        self.config = config
        self._debloat = BufferDebloatConfiguration.from_config(config)
        handshake = HandshakeConfig.from_config(config)   # bad SSL settings fail before allocating
        self.network_buffer_pool = NetworkBufferPool(
            config.num_network_buffers, config.segment_size, config.request_timeout)
        self.partition_manager = ResultPartitionManager(config.partition_request_timeout)
        self.loop = IOThread()
        try:
            self.server = TransportServer(self.loop, self.partition_manager, config.bind_host,
                                          config.data_port, config.max_frame_length,
                                          config.credit_based, handshake,
                                          ServerLimits.from_config(config))
        except BaseException:
            self.loop.stop()
            self.network_buffer_pool.destroy()
            raise
        # The native receive engine: plain-TCP, credit-based connections are read by its I/O
        # thread without the GIL (TLS and TCP-backpressure mode stay on the Python I/O thread).
        self.receive_engine: ReceiveEngine | None = None
        if config.native_io and config.credit_based and not handshake.ssl_enabled:
            self.receive_engine = ReceiveEngine()
            self.receive_engine.start()
            self.server.engine = self.receive_engine
        self.connection_manager = ConnectionManager(
            self.loop, config.segment_size, config.max_frame_length, config.connect_timeout,
            config.connect_retries, config.credit_based, handshake, engine=self.receive_engine,
            liveness_timeout=config.liveness_timeout)
        # What close() must still close: closed gates and partitions both released and closed
        # are forgotten (each list is pruned whenever it has doubled since its last pruning), so a
        # long-lived environment does not keep every gate, partition and, through their views,
        # connection it ever had.
        self._gates: list[SingleInputGate] = []
        self._partitions: list[ResultPartition] = []
        self._prune_at = [64, 64]
        self._advertised = _advertised_host(config, self.server.address[0])
        self._forked_from: int | None = None   # set in a child forked from this process
        _LIVE.add(self)
        self._closed = False

    @property
    def address(self) -> Address:
        """``(host, port)`` other environments connect to: ``taskmanager.host`` if set, else
        the bound host, or for a wildcard bind host (``0.0.0.0``, ``::``) this host's primary
        address; the port is the server's."""
        return self._advertised, self.server.address[1]

    @property
    def bind_address(self) -> Address:
        """``(host, port)`` the server's socket is bound to."""
        return self.server.address

    # -- producers -------------------------------------------------------------------------

    def create_result_partition(self, num_subpartitions: int,
                                partition_type: ResultPartitionType = ResultPartitionType.PIPELINED_BOUNDED,
                                partition_id: ResultPartitionID | None = None,
                                serializer: SerializerSpec = "bytes", **kwargs: Any) -> ResultPartition:
        """A partition of this environment, set up and registered (consumers can find it);
        ``kwargs`` go to :func:`~flinknet.partition.create_result_partition` (``owning_task_name``,
        ``partition_index``, ``tmp_dir`` for blocking partitions, ...)."""
        self._check_open()
        if not partition_type.is_blocking:
            # The subpartitions know how many exclusive buffers their receivers hold (Flink's
            # ResultPartitionFactory passes the configured buffers-per-channel): with 0, a
            # receiver reads with floating buffers only and the sender announces its backlog.
            kwargs.setdefault("receiver_exclusive_buffers_per_channel", self.config.buffers_per_channel)
        # The pool is sized from the configured buffers-per-channel and floating-buffers-per-gate
        # (Flink's ResultPartitionFactory), not from the defaults.
        kwargs.setdefault("buffers_per_channel", self.config.buffers_per_channel)
        kwargs.setdefault("floating_buffers_per_gate", self.config.floating_buffers_per_gate)
        partition = create_result_partition(
            self.network_buffer_pool, num_subpartitions, partition_type,
            partition_id=partition_id, serializer=serializer, partition_manager=self.partition_manager,
            max_buffers_per_channel=self.config.max_buffers_per_channel, **kwargs)
        engine = self.receive_engine
        if engine is not None:
            # the engine's I/O thread writes this partition's buffers to remote readers: a
            # writer whose pool ran dry recycles the written ones itself (no reaper hop)
            partition.buffer_pool.set_reclaimer(engine)
        partition.setup()
        self._partitions.append(partition)
        if len(self._partitions) >= self._prune_at[0]:
            self._partitions = [p for p in self._partitions if not (p.is_released and p.is_closed)]
            self._prune_at[0] = max(64, 2 * len(self._partitions))
        return partition

    # -- consumers -------------------------------------------------------------------------

    def create_input_gate(self, partitions: Iterable[InputChannelSpec], gate_index: int = 0,
                          owning_task_name: str = "") -> SingleInputGate:
        """A gate with one channel per ``(partition_id, subpartition_index[, address])`` (an
        :data:`InputChannelSpec`); ``address`` None (or this environment's) means a local
        channel, any other a remote one. ``address`` is ``(host, port)`` or ``"host:port"``
        (``"[::1]:port"`` for IPv6). A malformed item is a TypeError or ValueError naming it.
        With ``taskmanager.network.memory.buffer-debloat.enabled`` the gate debloats its buffers
        and triggers itself every ``...buffer-debloat.period`` (see
        :meth:`~flinknet.consumer.SingleInputGate.set_buffer_debloater`)."""
        self._check_open()
        specs = [_check_spec(i, spec) for i, spec in enumerate(partitions)]
        if not specs:
            raise ValueError("a gate needs at least one partition")
        cfg = self.config
        n_remote = sum(1 for s in specs if not self._is_local(s[2]))
        pool = None
        if n_remote:
            # Flink's gate pool (NettyShuffleUtils): floating buffers, at least one.
            # No overdraft on the input side (Flink gives overdraft buffers to output pools only):
            # a gate never holds more than its floating buffers.
            pool = self.network_buffer_pool.create_buffer_pool(
                1, max(1, cfg.floating_buffers_per_gate), max_overdraft_buffers=0)
        gate = SingleInputGate(gate_index, owning_task_name, pool)
        if n_remote == len(specs):
            gate.reader_gil_hold = cfg.reader_gil_hold
        debloat = self._debloat
        if debloat.enabled:
            # Flink's SingleInputGateFactory gives every gate a BufferDebloater; its task
            # triggers it every period (here: the gate's own reads do, see set_buffer_debloater).
            gate.set_buffer_debloater(debloat.create_debloater(gate_index, owning_task_name), debloat.period)
        channels: list[InputChannel] = []
        try:
            for i, (pid, index, address) in enumerate(specs):
                if address is None or self._is_local(address):
                    channels.append(LocalInputChannel(
                        gate, i, pid, index, self.partition_manager,
                        cfg.partition_request_initial_backoff_ms, cfg.partition_request_max_backoff_ms))
                else:
                    channels.append(RemoteInputChannel(
                        gate, i, pid, index, address, self.connection_manager, self.network_buffer_pool,
                        cfg.buffers_per_channel, cfg.partition_request_initial_backoff_ms,
                        cfg.partition_request_max_backoff_ms))
            gate.set_input_channels(channels)
            gate.setup()
            for ch in channels:
                if isinstance(ch, RemoteInputChannel):
                    ch.setup()
        except BaseException:
            gate.close()
            raise
        self._gates.append(gate)
        if len(self._gates) >= self._prune_at[1]:
            self._gates = [g for g in self._gates if not g.is_closed]
            self._prune_at[1] = max(64, 2 * len(self._gates))
        return gate

    def _is_local(self, address: Address | None) -> bool:
        if address is None:
            return True
        host, port = address
        return port == self.server.address[1] and (
            host in (self._advertised, self.server.address[0]) or host in _LOCAL_HOSTS)

    # -- lifecycle -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._forked_from is not None:
            raise IllegalStateError(
                f"this NetworkEnvironment was created in process {self._forked_from}; a process "
                f"forked from it ({os.getpid()}) has none of its threads, so it cannot be used "
                "here: create a new environment in this process (or start processes with 'spawn')")
        if self._closed:
            raise IllegalStateError("the network environment is closed")

    def close(self, timeout: float | None = None) -> None:
        """Close gates, release partitions, stop the server and the I/O thread, free the memory.

        First, as Flink keeps a pipelined partition until it is consumed, wait up to ``timeout``
        seconds (None: ``flinknet.network.close-timeout``, 30 s; 0: not at all) for the pipelined
        partitions whose producer finished them to be consumed; the ones still unconsumed then
        are logged as an error, by id, and released with an :class:`IllegalStateError` their
        consumers receive. Leaving the ``with`` block of an environment by an exception does not
        wait (the job failed: its consumers should learn it at once)."""
        if self._closed:
            return
        self._check_open()          # in a forked child: a clear error, not a join that hangs
        wait = self.config.close_timeout if timeout is None else float(timeout)
        if not wait >= 0:
            raise ValueError(f"timeout must be >= 0, got {timeout!r}")
        self._wait_consumed(wait)
        self._closed = True
        for gate in self._gates:
            try:
                gate.close()
            except Exception:  # noqa: BLE001 (closing everything regardless)
                pass
        self.partition_manager.shutdown()
        for p in self._partitions:
            try:
                p.close()
            except Exception:  # noqa: BLE001
                pass
        self.server.close()
        self.connection_manager.close()
        if self.receive_engine is not None:
            self.receive_engine.close()
        self.loop.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(None if exc_type is None else 0.0)

    def _unconsumed(self) -> list[PipelinedResultPartition]:
        return [p for p in self._partitions if isinstance(p, PipelinedResultPartition)
                and p.is_finished and not p.is_released and not p.is_consumed]

    def _wait_consumed(self, timeout: float) -> None:
        """Wait until the finished pipelined partitions were consumed, at most ``timeout``
        seconds; fail the rest loudly."""
        deadline = time.monotonic() + timeout
        left = self._unconsumed()
        while left and time.monotonic() < deadline:
            time.sleep(0.005)
            left = [p for p in left if not p.is_released and not p.is_consumed]
        if not left:
            return
        host, port = self.address
        log.error("closing the network environment at %s:%s: %d finished partition(s) not consumed "
                  "after %.1f s (flinknet.network.close-timeout), failing them: %s", host, port,
                  len(left), timeout, ", ".join(str(p.partition_id) for p in left))
        for p in left:
            p.release(IllegalStateError(
                f"the producer's network environment at {host}:{port} closed before partition "
                f"{p.partition_id} was consumed (waited {timeout:g} s, flinknet.network.close-timeout)"))

    def __repr__(self) -> str:
        return (f"NetworkEnvironment({self.address[0]}:{self.address[1]}, "
                f"{self.network_buffer_pool.total_segments} x {self.config.segment_size} B)")
