# cython: language_level=3
"""The records a :class:`~flinknet.consumer.RecordReader` has read and not yet handed out, and the
native ``async for`` over them.

A reader turns one buffer into a list of records (the per-record work is in the deserializer);
handing them out one at a time is then the only per-record cost. Threaded, ``for record in
reader`` is a generator step (about 70 ns on CPython 3.11). On asyncio, ``async for`` over an
async generator costs about three times that: every record is an ``asend`` object, a trip
through the async-generator machinery and a ``StopIteration`` carrying the value.

:class:`RecordCursor` is the async iterator instead. Its ``__anext__`` returns, while records are
pending, a :class:`Completed` awaitable: an object that is already done and gives its value
through the ``am_send`` slot (CPython's ``PySendResult`` protocol, 3.10+), which the ``await`` of
CPython 3.10 and 3.11 calls without raising ``StopIteration``. A record then costs what a
generator step costs. From 3.12 on, ``await`` no longer calls ``am_send`` for objects that are not
CPython's own coroutines (it calls ``tp_iternext``, which must raise ``StopIteration``); there
``__anext__`` returns a finished plain coroutine instead, the cheapest awaitable those versions
have (measured: 250-320 ns against 430-480 ns for ``tp_iternext``). Only when no record is
pending does ``__anext__`` read the next buffer without blocking, and only when none is ready does
it return the reader's real coroutine, which waits for the gate on the event loop.

The cursor is the reader's single store of pending records: ``next_record()``, ``await
anext(reader)``, ``async for`` and ``for`` all take from it, so records left by a ``break`` stay
with the reader for the next read.

Threads: like the reader, a cursor is used by one thread (or one task) at a time.
"""

cimport cython
from cpython.object cimport PyObject
from cpython.exc cimport PyErr_SetString
from cpython.ref cimport Py_INCREF

import sys


cdef extern from "Python.h":
    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT
    ctypedef struct PyAsyncMethods:
        void *am_send
    ctypedef struct _TypeWithAsync "PyTypeObject":
        PyAsyncMethods *tp_as_async


#: ``await`` calls ``am_send`` (``PyIter_Send``) on CPython 3.10 and 3.11 only.
AWAIT_CALLS_AM_SEND = sys.version_info < (3, 12)

# A plain CPython coroutine function (``async def`` in a .pyx would be Cython's coroutine type,
# which 3.12+'s ``await`` does not specialise): the awaitable those versions finish fastest.
_namespace = {}
exec("async def ready(value):\n    return value\n", _namespace)
cdef object _ready = _namespace["ready"]
del _namespace


@cython.final
@cython.freelist(16)
cdef class Completed:
    """An awaitable that is already done: ``await Completed(value)`` gives ``value`` without
    suspending. Awaited once, like a coroutine (a second await raises ``RuntimeError``)."""

    cdef object _value
    cdef bint _consumed

    def __init__(self, value=None):
        self._value = value
        self._consumed = False

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        return self.send(None)

    def send(self, arg):
        """Finish: raises ``StopIteration(value)`` (the generator protocol's return)."""
        if self._consumed:
            raise RuntimeError("cannot reuse an already awaited Completed")
        value = self._value
        self._value = None
        self._consumed = True
        raise StopIteration(value)

    def throw(self, typ, val=None, tb=None):
        """Raise the thrown exception (a completed awaitable never suspends, so nothing is
        interrupted)."""
        self._consumed = True
        self._value = None
        if val is None:
            raise typ
        raise val

    def close(self):
        """Drop the value."""
        self._consumed = True
        self._value = None


cdef PySendResult _completed_am_send(PyObject *obj, PyObject *arg, PyObject **result) noexcept:
    # PyIter_Send's slot: the value is the return value, no StopIteration is raised.
    cdef Completed self = <Completed>obj
    if self._consumed:
        PyErr_SetString(RuntimeError, b"cannot reuse an already awaited Completed")
        result[0] = NULL
        return PYGEN_ERROR
    value = self._value
    self._value = None
    self._consumed = True
    Py_INCREF(value)
    result[0] = <PyObject *>value
    return PYGEN_RETURN


if AWAIT_CALLS_AM_SEND and (<_TypeWithAsync *>Completed).tp_as_async != NULL:
    (<_TypeWithAsync *>Completed).tp_as_async.am_send = <void *>_completed_am_send


cdef inline object _completed(object value):
    cdef Completed c
    if AWAIT_CALLS_AM_SEND:
        c = Completed.__new__(Completed)
        c._value = value
        return c
    return _ready(value)


@cython.final
cdef class RecordCursor:
    """``RecordCursor(read_batch, wait_next, yield_every=64)``: the records read and not yet
    handed out, and the reader's native async iterator.

    ``read_batch(timeout, blocking)`` is the reader's :meth:`~flinknet.consumer.RecordReader.read_batch`;
    ``wait_next(yield_first)`` is a coroutine function that gives the next record the slow way
    (requesting partitions, waiting on the event loop, yielding to it first when
    ``yield_first``), storing the rest of its batch here with :meth:`set_batch`, and raises
    ``StopAsyncIteration`` at the end. ``__anext__`` yields to the loop (``yield_first``) after
    ``yield_every`` buffers read in a row without suspending.
    """

    cdef list _items
    cdef Py_ssize_t _pos
    cdef object _read_batch
    cdef object _wait_next
    cdef Py_ssize_t _run
    cdef readonly Py_ssize_t yield_every
    #: the reader's gate has requested its partitions (set by ``wait_next``): until then every
    #: ``__anext__`` that needs a buffer takes the slow way, which requests them off the loop.
    cdef public bint partitions_requested

    def __init__(self, read_batch, wait_next, Py_ssize_t yield_every=64):
        if not callable(read_batch) or not callable(wait_next):
            raise TypeError("read_batch and wait_next must be callable")
        if yield_every < 1:
            raise ValueError(f"yield_every must be >= 1, got {yield_every}")
        self._items = []
        self._pos = 0
        self._read_batch = read_batch
        self._wait_next = wait_next
        self._run = 0
        self.yield_every = yield_every
        self.partitions_requested = False

    def __len__(self):
        """The number of records pending."""
        return len(self._items) - self._pos

    def set_batch(self, list batch not None, Py_ssize_t pos=0):
        """Replace the pending records with ``batch[pos:]`` (the caller handed out the ones
        before ``pos``)."""
        if pos < 0 or pos > len(batch):
            raise ValueError(f"pos must be in [0, {len(batch)}], got {pos}")
        self._items = batch
        self._pos = pos

    def take_rest(self):
        """The pending records as a new list; the cursor is empty after it."""
        cdef list rest = self._items[self._pos:]
        self._items = []
        self._pos = 0
        return rest

    def clear(self):
        """Drop the pending records."""
        self._items = []
        self._pos = 0

    def next_record(self, timeout=None):
        """The next record, reading (blocking up to ``timeout``) when none is pending; raises
        ``StopIteration`` once the gate is finished."""
        cdef list batch
        if self._pos < len(self._items):
            self._pos += 1
            return self._items[self._pos - 1]
        while True:
            result = self._read_batch(timeout, True)
            if result is None:
                self._items = []
                self._pos = 0
                raise StopIteration
            batch = result
            if len(batch):
                self._items = batch
                self._pos = 1
                return batch[0]

    def __aiter__(self):
        return self

    def aclose(self):
        """An awaitable that does nothing (for ``contextlib.aclosing``): records left pending
        stay with the reader."""
        return _completed(None)

    def __anext__(self):
        cdef list batch
        if self._pos < len(self._items):
            self._pos += 1
            return _completed(self._items[self._pos - 1])
        if self.partitions_requested:
            while self._run < self.yield_every:
                self._run += 1
                result = self._read_batch(None, False)
                if result is None:
                    break                       # nothing ready (or finished): the slow way
                batch = result
                if len(batch):
                    self._items = batch
                    self._pos = 1
                    return _completed(batch[0])
            else:
                self._run = 1                   # (the one buffer the slow way reads)
                return self._wait_next(True)    # yield to the loop, then read on
        self._run = 1
        return self._wait_next(False)
