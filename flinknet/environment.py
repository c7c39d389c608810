"""One network environment per process (Flink's NettyShuffleEnvironment).

``NetworkEnvironment(config)`` allocates the global :class:`~flinknet.NetworkBufferPool` once
(network memory / segment size), runs one I/O thread with a TCP server (``address`` tells where
it listens; loopback unless configured) and the client connections to other environments, and
owns the :class:`~flinknet.partition.ResultPartitionManager`. Producers get partitions from
:meth:`NetworkEnvironment.create_result_partition`; consumers get gates from
:meth:`NetworkEnvironment.create_input_gate`, with local channels for partitions of this
environment and remote channels (one shared TCP connection per peer) for the others.
``close()`` (or leaving a ``with`` block) releases everything.
"""

from __future__ import annotations

from flinknet._core.pool import NetworkBufferPool
from flinknet.config import NetworkConfig
from flinknet.consumer.channels import LocalInputChannel
from flinknet.consumer.gate import SingleInputGate
from flinknet.consumer.remote import RemoteInputChannel
from flinknet.errors import IllegalStateError
from flinknet.ids import ResultPartitionID
from flinknet.partition import ResultPartitionManager, create_result_partition
from flinknet.transport.client import ConnectionManager
from flinknet.transport.eventloop import IOThread
from flinknet.transport.handshake import HandshakeConfig
from flinknet.transport.server import TransportServer
from flinknet.types import ResultPartitionType

__all__ = ["NetworkEnvironment"]


class NetworkEnvironment:
    """A process's network stack: buffer pool, partition manager, I/O thread, server, clients."""

    def __init__(self, config: NetworkConfig | dict | None = None, **options):
        if config is None or isinstance(config, dict):
            config = NetworkConfig(config or {}, **options)
        elif options:
            raise TypeError("give either a NetworkConfig or option keywords, not both")
        self.config = config
        handshake = HandshakeConfig.from_config(config)   # bad SSL settings fail before allocating
        self.network_buffer_pool = NetworkBufferPool(
            config.num_network_buffers, config.segment_size, config.request_timeout)
        self.partition_manager = ResultPartitionManager(config.partition_request_timeout)
        self.loop = IOThread()
        try:
            self.server = TransportServer(self.loop, self.partition_manager, config.bind_host,
                                          config.data_port, config.max_frame_length,
                                          config.credit_based, handshake)
        except BaseException:
            self.loop.stop()
            self.network_buffer_pool.destroy()
            raise
        self.connection_manager = ConnectionManager(
            self.loop, config.segment_size, config.max_frame_length, config.connect_timeout,
            config.connect_retries, config.credit_based, handshake)
        self._gates: list[SingleInputGate] = []
        self._partitions: list = []
        self._closed = False

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` where this environment's server listens."""
        return self.server.address

    # -- producers -------------------------------------------------------------------------

    def create_result_partition(self, num_subpartitions: int,
                                partition_type: ResultPartitionType = ResultPartitionType.PIPELINED_BOUNDED,
                                partition_id: ResultPartitionID | None = None, serializer="bytes", **kwargs):
        """A partition of this environment, set up and registered (consumers can find it)."""
        self._check_open()
        if not partition_type.is_blocking:
            # The subpartitions know how many exclusive buffers their receivers hold (Flink's
            # ResultPartitionFactory passes the configured buffers-per-channel): with 0, a
            # receiver reads with floating buffers only and the sender announces its backlog.
            kwargs.setdefault("receiver_exclusive_buffers_per_channel", self.config.buffers_per_channel)
        partition = create_result_partition(
            self.network_buffer_pool, num_subpartitions, partition_type,
            partition_id=partition_id, serializer=serializer, partition_manager=self.partition_manager,
            max_buffers_per_channel=self.config.max_buffers_per_channel, **kwargs)
        partition.setup()
        self._partitions.append(partition)
        return partition

    # -- consumers -------------------------------------------------------------------------

    def create_input_gate(self, partitions, gate_index: int = 0, owning_task_name: str = "") -> SingleInputGate:
        """A gate with one channel per ``(partition_id, subpartition_index, address)``;
        ``address`` None (or this environment's) means a local channel."""
        self._check_open()
        specs = list(partitions)
        if not specs:
            raise ValueError("a gate needs at least one partition")
        cfg = self.config
        n_remote = sum(1 for s in specs if not self._is_local(s[2] if len(s) > 2 else None))
        pool = None
        if n_remote:
            # Flink's gate pool (§2.4): floating buffers, at least one.
            # No overdraft on the input side (Flink gives overdraft buffers to output pools only):
            # a gate never holds more than its floating buffers.
            pool = self.network_buffer_pool.create_buffer_pool(
                1, max(1, cfg.floating_buffers_per_gate), max_overdraft_buffers=0)
        gate = SingleInputGate(gate_index, owning_task_name, pool)
        channels = []
        try:
            for i, spec in enumerate(specs):
                pid, index = spec[0], spec[1]
                address = spec[2] if len(spec) > 2 else None
                if self._is_local(address):
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
        return gate

    def _is_local(self, address) -> bool:
        if address is None:
            return True
        host, port = address[0], int(address[1])
        return port == self.address[1] and host in (self.address[0], "localhost", "127.0.0.1", "::1")

    # -- lifecycle -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise IllegalStateError("the network environment is closed")

    def close(self) -> None:
        """Close gates, release partitions, stop the server and the I/O thread, free the memory."""
        if self._closed:
            return
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
        self.loop.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"NetworkEnvironment({self.address[0]}:{self.address[1]}, "
                f"{self.network_buffer_pool.total_segments} x {self.config.segment_size} B)")
