# cython: freethreading_compatible = False
"""Fixed-size native memory: flinknet's ``MemorySegment`` (Flink ``org.apache.flink.core.memory``).

Name map (Flink → flinknet):

=====================================  ==================================================
``MemorySegmentFactory.allocateUnpooledSegment(size, owner)``  ``MemorySegment(size, owner=None)``
``MemorySegmentFactory.wrapCopy(bytes, start, end)``  ``MemorySegment.wrap_copy(data, start, end)``
``get(i)`` / ``put(i, byte)``          ``get_int8`` / ``put_int8`` (and ``get_uint8``/``put_uint8``)
``getBoolean`` / ``putBoolean``        ``get_boolean`` / ``put_boolean``
``getShort``/``getChar``/``getInt``/``getLong``/``getFloat``/``getDouble`` (native order)
                                       ``get_int16``/``get_uint16``/``get_int32``/``get_int64``/``get_float32``/``get_float64``
``...BigEndian`` / ``...LittleEndian`` the same names with ``_be`` / ``_le``; ``put_*`` alike
``get(i, byte[] dst, off, len)``       ``get_bytes(i, length)`` (new bytes) or ``get_into(i, target, offset, length)``
``put(i, byte[] src, off, len)``       ``put_bytes(i, source, offset, length)``
``copyTo(off, seg, segOff, n)``        ``copy_to(offset, target, target_offset, num_bytes)``
``compare(seg2, o1, o2, len[, len1, len2])``  ``compare(other, offset, other_offset, length, other_length=None)``
``equalTo(seg2, o1, o2, len)``         ``equal_to(other, offset, other_offset, length)``
``swapBytes(tmp, seg2, o1, o2, len)``  ``swap_bytes(other, offset, other_offset, length)`` (no temp buffer needed)
``wrap(off, len)``                     ``wrap(offset, length)`` → writable ``memoryview`` sharing the memory
``size()``, ``isFreed()``, ``free()``, ``getOwner()``, ``getAddress()``  ``size``, ``is_freed``, ``free()``, ``owner``, ``address``
=====================================  ==================================================

Every accessor checks its range: a bad index raises :class:`IndexError` naming the index, the width
and the segment size; any access after :meth:`MemorySegment.free` raises
:class:`~flinknet.errors.SegmentFreedError`. ``free()`` twice is harmless. The segment supports the
buffer protocol; ``free()`` while a memoryview over it is alive raises :class:`BufferError`.
"""

cimport cython
from cpython.buffer cimport PyBuffer_FillInfo, PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree
from cpython.number cimport PyNumber_Index
from libc.stdint cimport int8_t, uint8_t, int16_t, uint16_t, int32_t, uint32_t, int64_t, uint64_t, uintptr_t
from libc.stdlib cimport free as c_free
from libc.string cimport memcpy, memmove, memcmp, memset

from flinknet._core.defs cimport *

from flinknet.errors import SegmentFreedError


cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)


cdef inline uint16_t _be16(uint16_t v) noexcept nogil:
    return v if FN_NATIVE_BIG_ENDIAN else fn_bswap16(v)

cdef inline uint32_t _be32(uint32_t v) noexcept nogil:
    return v if FN_NATIVE_BIG_ENDIAN else fn_bswap32(v)

cdef inline uint64_t _be64(uint64_t v) noexcept nogil:
    return v if FN_NATIVE_BIG_ENDIAN else fn_bswap64(v)

cdef inline uint16_t _le16(uint16_t v) noexcept nogil:
    return fn_bswap16(v) if FN_NATIVE_BIG_ENDIAN else v

cdef inline uint32_t _le32(uint32_t v) noexcept nogil:
    return fn_bswap32(v) if FN_NATIVE_BIG_ENDIAN else v

cdef inline uint64_t _le64(uint64_t v) noexcept nogil:
    return fn_bswap64(v) if FN_NATIVE_BIG_ENDIAN else v


cdef void copy_memory(char *dst, const char *src, Py_ssize_t n) noexcept:
    if n >= GIL_RELEASE_THRESHOLD:
        with nogil:
            memmove(dst, src, <size_t>n)
    elif n > 0:
        memmove(dst, src, <size_t>n)


@cython.final
cdef class _Arena:
    """One page-aligned, zeroed allocation shared by all segments of a NetworkBufferPool."""

    # Owned by this object; freed in __dealloc__, which runs only after every segment that points
    # into it is gone (each holds a reference to the arena).
    cdef void *base
    cdef Py_ssize_t nbytes

    def __cinit__(self, Py_ssize_t nbytes):
        self.base = NULL
        self.nbytes = nbytes
        if nbytes <= 0:
            return
        if posix_memalign(&self.base, 4096, <size_t>nbytes) != 0:
            self.base = NULL
            raise MemoryError(
                f"could not allocate {nbytes} bytes ({nbytes / 1048576.0:.1f} MiB) of network memory")
        # Touch every page now: the pool's memory is committed once, at start, as in Flink.
        with nogil:
            memset(self.base, 0, <size_t>nbytes)

    def __dealloc__(self):
        if self.base != NULL:
            c_free(self.base)
            self.base = NULL


cdef list allocate_arena_segments(Py_ssize_t num, Py_ssize_t size, object owner):
    cdef _Arena arena = _Arena(num * size)
    cdef list segments = []
    cdef MemorySegment seg
    cdef Py_ssize_t i
    for i in range(num):
        seg = MemorySegment.__new__(MemorySegment)
        seg._address = <char *>arena.base + i * size
        seg._size = size
        seg._limit = size
        seg._arena = arena
        seg._owner = owner
        segments.append(seg)
    return segments


cdef inline int _check_range(Py_ssize_t offset, Py_ssize_t length, Py_ssize_t total, str what) except -1:
    if offset < 0 or length < 0 or offset > total - length:
        raise IndexError(
            f"{what}: range [{offset}, {<object>offset + <object>length}) out of bounds for size {total}")
    return 0


@cython.final
cdef class MemorySegment:
    """A fixed-size block of native memory with bounds-checked, byte-order-explicit accessors.

    ``MemorySegment(size)`` allocates ``size`` zeroed bytes owned by the segment; segments of a
    :class:`~flinknet._core.pool.NetworkBufferPool` live in the pool's single arena. Integers and
    floats can be read and written in native, big-endian (``_be``) or little-endian (``_le``)
    order; Flink's network code, and therefore flinknet's, only uses big-endian.
    """

    def __cinit__(self, Py_ssize_t size=0, owner=None):
        # Arena segments are built with __new__ (size 0): nothing to allocate here for them.
        self._address = NULL
        self._size = 0
        self._limit = 0
        self._arena = None
        self._owns_memory = False
        self._freed = False
        self._exports = 0
        self._owner = owner
        self._in_pool = False
        if size < 0:
            raise ValueError(f"segment size must be >= 0, got {size}")
        if size > 0:
            self._address = <char *>PyMem_RawCalloc(<size_t>size, 1)
            if self._address == NULL:
                raise MemoryError(f"could not allocate a memory segment of {size} bytes")
            self._owns_memory = True
        self._size = size
        self._limit = size

    def __dealloc__(self):
        if self._owns_memory and self._address != NULL:
            PyMem_RawFree(self._address)
            self._address = NULL

    @staticmethod
    def wrap_copy(data, Py_ssize_t start=0, end=None):
        """A new segment holding a copy of ``data[start:end]`` (Flink ``wrapCopy``)."""
        cdef Py_buffer view
        cdef Py_ssize_t stop
        cdef MemorySegment seg
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            stop = view.len if end is None else <Py_ssize_t>end
            _check_range(start, stop - start, view.len, "wrap_copy")
            seg = MemorySegment(stop - start)
            copy_memory(seg._address, <const char *>view.buf + start, stop - start)
        finally:
            PyBuffer_Release(&view)
        return seg

    # -- state ------------------------------------------------------------------------------

    cdef int _raise_bad_access(self, Py_ssize_t index, Py_ssize_t width) except -1:
        if self._freed:
            raise SegmentFreedError("segment has been freed")
        if width == 0:
            raise IndexError(f"index {index} out of bounds for segment of size {self._size}")
        raise IndexError(
            f"index {index} out of bounds for a {width}-byte access in segment of size {self._size}")

    cdef int check_not_exported(self, str action) except -1:
        if self._exports > 0:
            raise BufferError(
                f"cannot {action}: {self._exports} memoryview(s) still export this memory; "
                f"release them first")
        return 0

    cdef int free_memory(self) except -1:
        if self._freed:
            return 0
        self.check_not_exported("free the memory segment")
        self._freed = True
        self._limit = -1
        if self._owns_memory:
            PyMem_RawFree(self._address)
            self._owns_memory = False
        self._address = NULL
        return 0

    def free(self):
        """Release the memory. Later accesses raise ``SegmentFreedError``; a second call is a no-op.

        Raises :class:`BufferError` while a memoryview over the segment is alive.
        """
        self.free_memory()

    @property
    def is_freed(self):
        """True once :meth:`free` ran."""
        return self._freed

    @property
    def size(self):
        """Size in bytes."""
        return self._size

    @property
    def owner(self):
        """The object the allocator attached (Flink ``getOwner``)."""
        return self._owner

    @property
    def address(self):
        """The memory's address as an int (for diagnostics); raises once freed."""
        self.check(0, 0)
        return <uintptr_t>self._address

    @property
    def is_off_heap(self):
        """Always True: segments are native memory."""
        return True

    def __repr__(self):
        state = "freed" if self._freed else f"{self._exports} export(s)"
        return f"<MemorySegment size={self._size} {state}>"

    # -- buffer protocol --------------------------------------------------------------------

    def __getbuffer__(self, Py_buffer *view, int flags):
        self.check(0, 0)
        # The view's `obj` is this segment, so it stays alive (and un-freeable) while exported.
        PyBuffer_FillInfo(view, self, self._address, self._size, 0, flags)
        self._exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self._exports -= 1

    def wrap(self, Py_ssize_t offset, Py_ssize_t length):
        """A writable memoryview of ``[offset, offset + length)`` sharing this segment's memory."""
        self.check(0, 0)
        _check_range(offset, length, self._size, "wrap")
        return memoryview(self)[offset:offset + length]

    # -- single bytes -----------------------------------------------------------------------

    def get_int8(self, Py_ssize_t index):
        """Read a signed byte at ``index`` (Flink ``get(int)``)."""
        self.check(index, 1)
        return <int8_t>self._address[index]

    def put_int8(self, Py_ssize_t index, value):
        """Write a signed byte at ``index`` (Flink ``put(int, byte)``)."""
        self.check(index, 1)
        cdef int8_t v = PyNumber_Index(value)
        self._address[index] = <char>v

    def get_uint8(self, Py_ssize_t index):
        """Read an unsigned byte at ``index``."""
        self.check(index, 1)
        return <uint8_t>self._address[index]

    def put_uint8(self, Py_ssize_t index, value):
        """Write an unsigned byte at ``index``."""
        self.check(index, 1)
        cdef uint8_t v = PyNumber_Index(value)
        self._address[index] = <char>v

    def get_boolean(self, Py_ssize_t index):
        """Read a boolean (any non-zero byte is True)."""
        self.check(index, 1)
        return self._address[index] != 0

    def put_boolean(self, Py_ssize_t index, bint value):
        """Write a boolean as the byte 1 or 0."""
        self.check(index, 1)
        self._address[index] = 1 if value else 0

    # -- multi-byte primitives (native, big-endian, little-endian) ---------------------------

    def get_int16(self, Py_ssize_t index):
        """Read a int16_t in native order at ``index``."""
        self.check(index, 2)
        return <int16_t>fn_load16(self._address + index)

    def put_int16(self, Py_ssize_t index, value):
        """Write a int16_t in native order at ``index``."""
        self.check(index, 2)
        cdef int16_t v = PyNumber_Index(value)
        fn_store16(self._address + index, <uint16_t>v)

    def get_int16_be(self, Py_ssize_t index):
        """Read a int16_t in big-endian order at ``index``."""
        self.check(index, 2)
        return <int16_t>_be16(fn_load16(self._address + index))

    def put_int16_be(self, Py_ssize_t index, value):
        """Write a int16_t in big-endian order at ``index``."""
        self.check(index, 2)
        cdef int16_t v = PyNumber_Index(value)
        fn_store16(self._address + index, _be16(<uint16_t>v))

    def get_int16_le(self, Py_ssize_t index):
        """Read a int16_t in little-endian order at ``index``."""
        self.check(index, 2)
        return <int16_t>_le16(fn_load16(self._address + index))

    def put_int16_le(self, Py_ssize_t index, value):
        """Write a int16_t in little-endian order at ``index``."""
        self.check(index, 2)
        cdef int16_t v = PyNumber_Index(value)
        fn_store16(self._address + index, _le16(<uint16_t>v))

    def get_uint16(self, Py_ssize_t index):
        """Read a uint16_t in native order at ``index``."""
        self.check(index, 2)
        return <uint16_t>fn_load16(self._address + index)

    def put_uint16(self, Py_ssize_t index, value):
        """Write a uint16_t in native order at ``index``."""
        self.check(index, 2)
        cdef uint16_t v = PyNumber_Index(value)
        fn_store16(self._address + index, <uint16_t>v)

    def get_uint16_be(self, Py_ssize_t index):
        """Read a uint16_t in big-endian order at ``index``."""
        self.check(index, 2)
        return <uint16_t>_be16(fn_load16(self._address + index))

    def put_uint16_be(self, Py_ssize_t index, value):
        """Write a uint16_t in big-endian order at ``index``."""
        self.check(index, 2)
        cdef uint16_t v = PyNumber_Index(value)
        fn_store16(self._address + index, _be16(<uint16_t>v))

    def get_uint16_le(self, Py_ssize_t index):
        """Read a uint16_t in little-endian order at ``index``."""
        self.check(index, 2)
        return <uint16_t>_le16(fn_load16(self._address + index))

    def put_uint16_le(self, Py_ssize_t index, value):
        """Write a uint16_t in little-endian order at ``index``."""
        self.check(index, 2)
        cdef uint16_t v = PyNumber_Index(value)
        fn_store16(self._address + index, _le16(<uint16_t>v))

    def get_int32(self, Py_ssize_t index):
        """Read a int32_t in native order at ``index``."""
        self.check(index, 4)
        return <int32_t>fn_load32(self._address + index)

    def put_int32(self, Py_ssize_t index, value):
        """Write a int32_t in native order at ``index``."""
        self.check(index, 4)
        cdef int32_t v = PyNumber_Index(value)
        fn_store32(self._address + index, <uint32_t>v)

    def get_int32_be(self, Py_ssize_t index):
        """Read a int32_t in big-endian order at ``index``."""
        self.check(index, 4)
        return <int32_t>_be32(fn_load32(self._address + index))

    def put_int32_be(self, Py_ssize_t index, value):
        """Write a int32_t in big-endian order at ``index``."""
        self.check(index, 4)
        cdef int32_t v = PyNumber_Index(value)
        fn_store32(self._address + index, _be32(<uint32_t>v))

    def get_int32_le(self, Py_ssize_t index):
        """Read a int32_t in little-endian order at ``index``."""
        self.check(index, 4)
        return <int32_t>_le32(fn_load32(self._address + index))

    def put_int32_le(self, Py_ssize_t index, value):
        """Write a int32_t in little-endian order at ``index``."""
        self.check(index, 4)
        cdef int32_t v = PyNumber_Index(value)
        fn_store32(self._address + index, _le32(<uint32_t>v))

    def get_int64(self, Py_ssize_t index):
        """Read a int64_t in native order at ``index``."""
        self.check(index, 8)
        return <int64_t>fn_load64(self._address + index)

    def put_int64(self, Py_ssize_t index, value):
        """Write a int64_t in native order at ``index``."""
        self.check(index, 8)
        cdef int64_t v = PyNumber_Index(value)
        fn_store64(self._address + index, <uint64_t>v)

    def get_int64_be(self, Py_ssize_t index):
        """Read a int64_t in big-endian order at ``index``."""
        self.check(index, 8)
        return <int64_t>_be64(fn_load64(self._address + index))

    def put_int64_be(self, Py_ssize_t index, value):
        """Write a int64_t in big-endian order at ``index``."""
        self.check(index, 8)
        cdef int64_t v = PyNumber_Index(value)
        fn_store64(self._address + index, _be64(<uint64_t>v))

    def get_int64_le(self, Py_ssize_t index):
        """Read a int64_t in little-endian order at ``index``."""
        self.check(index, 8)
        return <int64_t>_le64(fn_load64(self._address + index))

    def put_int64_le(self, Py_ssize_t index, value):
        """Write a int64_t in little-endian order at ``index``."""
        self.check(index, 8)
        cdef int64_t v = PyNumber_Index(value)
        fn_store64(self._address + index, _le64(<uint64_t>v))

    def get_float32(self, Py_ssize_t index):
        """Read a float in native order at ``index``."""
        self.check(index, 4)
        return fn_bits_to_f32(fn_load32(self._address + index))

    def put_float32(self, Py_ssize_t index, float value):
        """Write a float in native order at ``index``."""
        self.check(index, 4)
        fn_store32(self._address + index, fn_f32_to_bits(value))

    def get_float32_be(self, Py_ssize_t index):
        """Read a float in big-endian order at ``index``."""
        self.check(index, 4)
        return fn_bits_to_f32(_be32(fn_load32(self._address + index)))

    def put_float32_be(self, Py_ssize_t index, float value):
        """Write a float in big-endian order at ``index``."""
        self.check(index, 4)
        fn_store32(self._address + index, _be32(fn_f32_to_bits(value)))

    def get_float32_le(self, Py_ssize_t index):
        """Read a float in little-endian order at ``index``."""
        self.check(index, 4)
        return fn_bits_to_f32(_le32(fn_load32(self._address + index)))

    def put_float32_le(self, Py_ssize_t index, float value):
        """Write a float in little-endian order at ``index``."""
        self.check(index, 4)
        fn_store32(self._address + index, _le32(fn_f32_to_bits(value)))

    def get_float64(self, Py_ssize_t index):
        """Read a double in native order at ``index``."""
        self.check(index, 8)
        return fn_bits_to_f64(fn_load64(self._address + index))

    def put_float64(self, Py_ssize_t index, double value):
        """Write a double in native order at ``index``."""
        self.check(index, 8)
        fn_store64(self._address + index, fn_f64_to_bits(value))

    def get_float64_be(self, Py_ssize_t index):
        """Read a double in big-endian order at ``index``."""
        self.check(index, 8)
        return fn_bits_to_f64(_be64(fn_load64(self._address + index)))

    def put_float64_be(self, Py_ssize_t index, double value):
        """Write a double in big-endian order at ``index``."""
        self.check(index, 8)
        fn_store64(self._address + index, _be64(fn_f64_to_bits(value)))

    def get_float64_le(self, Py_ssize_t index):
        """Read a double in little-endian order at ``index``."""
        self.check(index, 8)
        return fn_bits_to_f64(_le64(fn_load64(self._address + index)))

    def put_float64_le(self, Py_ssize_t index, double value):
        """Write a double in little-endian order at ``index``."""
        self.check(index, 8)
        fn_store64(self._address + index, _le64(fn_f64_to_bits(value)))

    # -- bulk -------------------------------------------------------------------------------

    def get_bytes(self, Py_ssize_t index, Py_ssize_t length):
        """A new ``bytes`` object with a copy of ``[index, index + length)``."""
        self.check(0, 0)
        _check_range(index, length, self._size, "get_bytes")
        return PyBytes_FromStringAndSize(self._address + index, length)

    def get_into(self, Py_ssize_t index, target, Py_ssize_t target_offset=0, length=None):
        """Copy ``length`` bytes at ``index`` into the writable buffer ``target`` at ``target_offset``.

        ``length`` defaults to the room left in ``target``. Returns the number of bytes copied.
        """
        cdef Py_buffer view
        cdef Py_ssize_t n
        self.check(0, 0)
        PyObject_GetBuffer(target, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
        try:
            n = view.len - target_offset if length is None else <Py_ssize_t>length
            _check_range(target_offset, n, view.len, "get_into target")
            _check_range(index, n, self._size, "get_into")
            # Counted as an export while copying: free() from another thread must not pull the
            # memory away while the GIL is released for a large copy.
            self._exports += 1
            try:
                copy_memory(<char *>view.buf + target_offset, self._address + index, n)
            finally:
                self._exports -= 1
        finally:
            PyBuffer_Release(&view)
        return n

    def put_bytes(self, Py_ssize_t index, source, Py_ssize_t source_offset=0, length=None):
        """Copy ``source[source_offset:source_offset + length]`` (any contiguous buffer) to ``index``.

        ``length`` defaults to the rest of ``source``. Returns the number of bytes copied.
        """
        cdef Py_buffer view
        cdef Py_ssize_t n
        self.check(0, 0)
        PyObject_GetBuffer(source, &view, PyBUF_SIMPLE)
        try:
            n = view.len - source_offset if length is None else <Py_ssize_t>length
            _check_range(source_offset, n, view.len, "put_bytes source")
            _check_range(index, n, self._size, "put_bytes")
            self._exports += 1
            try:
                copy_memory(self._address + index, <const char *>view.buf + source_offset, n)
            finally:
                self._exports -= 1
        finally:
            PyBuffer_Release(&view)
        return n

    def copy_to(self, Py_ssize_t offset, MemorySegment target not None, Py_ssize_t target_offset,
                Py_ssize_t num_bytes):
        """Copy ``num_bytes`` from ``offset`` to ``target`` at ``target_offset`` (ranges may overlap)."""
        self.check(0, 0)
        target.check(0, 0)
        _check_range(offset, num_bytes, self._size, "copy_to source")
        _check_range(target_offset, num_bytes, target._size, "copy_to target")
        self._exports += 1
        target._exports += 1
        try:
            copy_memory(target._address + target_offset, self._address + offset, num_bytes)
        finally:
            self._exports -= 1
            target._exports -= 1

    def compare(self, MemorySegment other not None, Py_ssize_t offset, Py_ssize_t other_offset,
                Py_ssize_t length, other_length=None):
        """Unsigned lexicographic comparison: negative, zero or positive.

        With ``other_length``, compares ``length`` bytes here against ``other_length`` bytes of
        ``other``; on a common prefix the shorter range is the smaller (Flink's 5-argument form).
        """
        cdef Py_ssize_t len2 = length if other_length is None else <Py_ssize_t>other_length
        cdef Py_ssize_t common = length if length < len2 else len2
        cdef int c
        self.check(0, 0)
        other.check(0, 0)
        _check_range(offset, length, self._size, "compare")
        _check_range(other_offset, len2, other._size, "compare other")
        c = memcmp(self._address + offset, other._address + other_offset, <size_t>common) if common > 0 else 0
        if c != 0:
            return -1 if c < 0 else 1
        return (length > len2) - (length < len2)

    def equal_to(self, MemorySegment other not None, Py_ssize_t offset, Py_ssize_t other_offset,
                 Py_ssize_t length):
        """True when the two ranges hold the same bytes."""
        self.check(0, 0)
        other.check(0, 0)
        _check_range(offset, length, self._size, "equal_to")
        _check_range(other_offset, length, other._size, "equal_to other")
        return length == 0 or memcmp(self._address + offset, other._address + other_offset, <size_t>length) == 0

    def swap_bytes(self, MemorySegment other not None, Py_ssize_t offset, Py_ssize_t other_offset,
                   Py_ssize_t length):
        """Exchange ``length`` bytes at ``offset`` with those of ``other`` at ``other_offset``."""
        cdef char tmp[512]
        cdef Py_ssize_t done = 0, n
        self.check(0, 0)
        other.check(0, 0)
        _check_range(offset, length, self._size, "swap_bytes")
        _check_range(other_offset, length, other._size, "swap_bytes other")
        while done < length:
            n = length - done
            if n > 512:
                n = 512
            memcpy(tmp, self._address + offset + done, <size_t>n)
            memmove(self._address + offset + done, other._address + other_offset + done, <size_t>n)
            memcpy(other._address + other_offset + done, tmp, <size_t>n)
            done += n
