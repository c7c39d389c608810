"""The transport's I/O thread: one selector loop per NetworkEnvironment (Netty's event loop).

All socket work of an environment runs here and nothing else: producers and consumers hand work
to it with :meth:`IOThread.call_soon_threadsafe` (a wake-up byte on a socket pair), once per state
transition, never per record. User code never runs on this thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar, TypeVarTuple

__all__ = ["IOThread", "TimerHandle", "configure_socket"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

TimerHandle: TypeAlias = list[Any]
"""What :meth:`IOThread.call_later` returns (for :meth:`IOThread.cancel`): ``[when, sequence
number, fn, args, cancelled]``, ordered in the loop's timer heap by time, then sequence."""

# What a socket's registration calls with the ready event mask.
_SocketCallback: TypeAlias = Callable[[int], object]


class IOThread:
    """A selector loop in a daemon thread: ``register(sock, events, callback)`` (the callback
    gets the ready event mask), ``call_soon_threadsafe``, ``call_later``, ``stop``."""

    def __init__(self, name: str = "flinknet-io"):
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        self._ready: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._timers: list[TimerHandle] = []
        self._seq = itertools.count()
        self._stopping = False
        self._woken = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- scheduling ------------------------------------------------------------------------

    def call_soon_threadsafe(self, fn: Callable[[*_Ts], object], *args: *_Ts) -> None:
        """Run ``fn(*args)`` on the loop soon (from any thread)."""
        self._ready.append((fn, args))
        if not self._woken and threading.current_thread() is not self._thread:
            self._woken = True
            try:
                self._wake_w.send(b"\0")
            except (BlockingIOError, OSError):
                pass

    def call_later(self, delay: float, fn: Callable[[*_Ts], object], *args: *_Ts) -> TimerHandle:
        """Run ``fn(*args)`` on the loop after ``delay`` seconds; returns a handle for cancel()."""
        handle = [time.monotonic() + delay, next(self._seq), fn, args, False]
        self.call_soon_threadsafe(heapq.heappush, self._timers, handle)
        return handle

    @staticmethod
    def cancel(handle: TimerHandle) -> None:
        """Cancel a :meth:`call_later` (a no-op once it ran)."""
        handle[4] = True

    def in_loop(self) -> bool:
        """Whether the caller runs on the loop's thread."""
        return threading.current_thread() is self._thread

    # -- sockets (loop thread only) --------------------------------------------------------

    def register(self, sock: socket.socket, events: int, callback: _SocketCallback) -> None:
        """Call ``callback(mask)`` when ``sock`` is ready for ``events`` (loop thread)."""
        self._selector.register(sock, events, callback)

    def modify(self, sock: socket.socket, events: int, callback: _SocketCallback) -> None:
        """Change a registration (loop thread)."""
        self._selector.modify(sock, events, callback)

    def unregister(self, sock: socket.socket) -> None:
        """Forget ``sock`` (loop thread; a no-op if it is not registered)."""
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    # -- loop ------------------------------------------------------------------------------

    def _on_wake(self, mask: int) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self._woken = False

    def _run(self) -> None:
        select = self._selector.select
        ready = self._ready
        timers = self._timers
        while not self._stopping:
            timeout: float | None = None
            if ready:
                timeout = 0
            elif timers:
                timeout = max(0.0, timers[0][0] - time.monotonic())
            try:
                events = select(timeout)
            except OSError:  # pragma: no cover (a closed fd raced the select)
                log.exception("selector failed")
                events = []
            for key, mask in events:
                self._guard(key.data, mask)
            now = time.monotonic()
            while timers and timers[0][0] <= now:
                _, _, fn, args, cancelled = heapq.heappop(timers)
                if not cancelled:
                    self._guard(fn, *args)
            for _ in range(len(ready)):
                fn, args = ready.popleft()
                self._guard(fn, *args)
        # Drain what was handed over before stop (closing connections gives buffers back).
        while ready:
            fn, args = ready.popleft()
            self._guard(fn, *args)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    @staticmethod
    def _guard(fn: Callable[..., object], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 (the loop must survive any one callback)
            log.exception("error in the flinknet I/O thread (callback %r)", fn)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after running what is queued; waits for the thread (not from the loop itself)."""
        def _stop() -> None:
            self._stopping = True
        self.call_soon_threadsafe(_stop)
        if not self.in_loop():
            self._thread.join(timeout)

    def run_sync(self, fn: Callable[[*_Ts], _T], *args: *_Ts, timeout: float = 30.0) -> _T:
        """Run ``fn(*args)`` on the loop and return its result (from another thread)."""
        if self.in_loop():
            return fn(*args)
        done = threading.Event()
        box: list[tuple[bool, Any]] = []

        def call() -> None:
            try:
                box.append((True, fn(*args)))
            except BaseException as err:  # noqa: BLE001
                box.append((False, err))
            finally:
                done.set()
        self.call_soon_threadsafe(call)
        if not done.wait(timeout):
            raise TimeoutError("the I/O thread did not answer")
        ok, value = box[0]
        if not ok:
            raise value
        result: _T = value
        return result

    @property
    def is_alive(self) -> bool:
        """The loop's thread runs."""
        return self._thread.is_alive()


def configure_socket(sock: socket.socket, liveness_timeout: float = 0.0, credit_based: bool = True) -> None:
    """The options of every connection: no Nagle delay, keepalive, and with a
    ``liveness_timeout`` (seconds, 0: the kernel's defaults) a dead or frozen peer detected
    within about that time.

    - Keepalive probes after ``liveness_timeout / 2`` idle seconds, five of them
      ``liveness_timeout / 10`` apart: a host that vanished (power, network) is found even on a
      quiet connection (the kernel's default takes over two hours).
    - ``TCP_USER_TIMEOUT`` (credit-based mode only): data the peer does not acknowledge, or a
      window the peer keeps closed, for ``liveness_timeout`` fails the connection. With credit,
      a receiver's I/O thread always reads what it granted credit for, so a closed window means
      its process is frozen or gone; in TCP-backpressure mode a closed window is backpressure.
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if liveness_timeout > 0 and hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(liveness_timeout / 2)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(liveness_timeout / 10)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)
        if credit_based and hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, int(liveness_timeout * 1000)))
