"""Key groups exactly as Flink assigns them (``KeyGroupRangeAssignment``, ``MathUtils.murmurHash``).

A key's group is ``murmurHash(key.hashCode()) % maxParallelism`` and the operator (subtask) of a
group is ``keyGroup * parallelism // maxParallelism``. Java's ``hashCode`` is emulated for the
key types Flink programs use most: ``int`` (java.lang.Integer), ``long`` (java.lang.Long),
``string`` (java.lang.String, over UTF-16 code units), ``boolean`` (java.lang.Boolean: 1231/1237)
and ``bytes`` (``java.util.Arrays.hashCode(byte[])``: a Java ``byte[]`` key itself would hash by
identity, which no distributed job can use); other keys need a ``hash_code()`` of their own.

Name map (Flink → flinknet):

=============================================================  =========================================
``MathUtils.murmurHash(int)``                                   :func:`murmur_hash`
``KeyGroupRangeAssignment.assignToKeyGroup(key, maxP)``         :func:`assign_to_key_group`
``KeyGroupRangeAssignment.computeKeyGroupForKeyHash(h, maxP)``  :func:`compute_key_group_for_key_hash`
``KeyGroupRangeAssignment.computeOperatorIndexForKeyGroup``     :func:`compute_operator_index_for_key_group`
``KeyGroupRangeAssignment.assignKeyToParallelOperator``         :func:`assign_key_to_parallel_operator`
``KeyGroupRangeAssignment.computeDefaultMaxParallelism(p)``     :func:`compute_default_max_parallelism`
``Integer/Long/String/Boolean.hashCode()``, ``Arrays.hashCode(byte[])``  :func:`java_hash_code` (``key_type``)
``KeyGroupRange`` / ``computeKeyGroupRangeForOperatorIndex``    :class:`KeyGroupRange` / :func:`compute_key_group_range_for_operator_index`
a positional key (``keyBy(0)``) over a batch of records          :func:`key_groups_of_slices` / :func:`operator_indexes_of_slices`
=============================================================  =========================================

The ``*_array`` functions do the same over numpy int32/int64 arrays in one call, without the GIL;
:func:`key_groups_of` and :func:`operator_indexes_of` over a list of keys (``bytes``, ``str``,
``int`` hashed in C); :func:`key_groups_of_slices` and :func:`operator_indexes_of_slices` over a
list of records whose key is ``record[key_slice]`` (Flink's positional key, ``keyBy(0)``): a
``bytes`` or ``bytearray`` record's key bytes are hashed in place, no key object is made.
"""

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.number cimport PyNumber_Index
from cpython.slice cimport PySlice_Unpack, PySlice_AdjustIndices
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

import numpy as np

DEFAULT_LOWER_BOUND = DEFAULT_LOWER_BOUND_MAX_PARALLELISM
UPPER_BOUND = UPPER_BOUND_MAX_PARALLELISM

KEY_TYPES = ("int", "long", "string", "boolean", "bytes")


cdef inline uint32_t _rotl(uint32_t x, int r) noexcept nogil:
    return (x << r) | (x >> (32 - r))


cdef int32_t murmur_hash_int(int32_t code) noexcept nogil:
    # Java int arithmetic wraps: do it in uint32 and reinterpret.
    cdef uint32_t h = <uint32_t>code
    h *= 0xcc9e2d51u
    h = _rotl(h, 15)
    h *= 0x1b873593u
    h = _rotl(h, 13)
    h = h * 5u + 0xe6546b64u
    h ^= 4u
    # bitMix (the murmur3 finalizer)
    h ^= h >> 16
    h *= 0x85ebca6bu
    h ^= h >> 13
    h *= 0xc2b2ae35u
    h ^= h >> 16
    cdef int32_t s = <int32_t>h
    if s >= 0:
        return s
    if s != -2147483648:
        return -s
    return 0


cdef int32_t java_long_hash(int64_t value) noexcept nogil:
    cdef uint64_t v = <uint64_t>value
    return <int32_t><uint32_t>(v ^ (v >> 32))


cdef int32_t java_string_hash(str value) except? -1:
    # String.hashCode iterates UTF-16 code units: characters beyond the BMP count as two.
    cdef uint32_t h = 0
    cdef Py_UCS4 ch
    cdef uint32_t cp
    for ch in value:
        cp = <uint32_t>ch
        if cp >= 0x10000:
            cp -= 0x10000
            h = h * 31u + (0xD800u + (cp >> 10))
            h = h * 31u + (0xDC00u + (cp & 0x3FFu))
        else:
            h = h * 31u + cp
    return <int32_t>h


cdef object _as_integer(object key, str key_type):
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
        raise TypeError(f"key_type {key_type!r} needs an integer key, got {type(key).__name__}")
    return PyNumber_Index(key)


cdef inline int _check_max_parallelism(int64_t max_parallelism) except -1:
    if not 0 < max_parallelism <= UPPER_BOUND_MAX_PARALLELISM:
        raise ValueError(
            f"max_parallelism must be in (0, {UPPER_BOUND_MAX_PARALLELISM}], got {max_parallelism}")
    return 0


cdef inline int _check_parallelism(int64_t parallelism, int64_t max_parallelism) except -1:
    if not 0 < parallelism <= max_parallelism:
        raise ValueError(
            f"parallelism must be in (0, max_parallelism={max_parallelism}], got {parallelism}")
    return 0


cdef inline uint32_t _bytes_hash(const char *data, Py_ssize_t n) noexcept nogil:
    # java.util.Arrays.hashCode(byte[]): 31 * h + b over signed bytes, starting at 1.
    cdef uint32_t h = 1
    cdef Py_ssize_t i
    for i in range(n):
        h = h * 31u + <uint32_t><int32_t>(<signed char>data[i])
    return h


cdef int32_t java_bytes_hash(object data) except? -1:
    # bytes and bytearray are read in place (no memoryview per key: this is the keyed hot path);
    # any other buffer through a byte view of it.
    cdef const unsigned char[::1] view
    if type(data) is bytes:
        return <int32_t>_bytes_hash(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    if type(data) is bytearray:
        return <int32_t>_bytes_hash(PyByteArray_AS_STRING(data), PyByteArray_GET_SIZE(data))
    view = memoryview(data).cast("B")
    if view.shape[0] == 0:
        return 1
    return <int32_t>_bytes_hash(<const char *>&view[0], view.shape[0])


def murmur_hash(int32_t code):
    """Flink's ``MathUtils.murmurHash(int)``: a non-negative int."""
    return murmur_hash_int(code)


def java_hash_code(key, key_type=None):
    """Java's ``hashCode()`` of ``key`` as an Integer (``"int"``), Long (``"long"``) or String.

    Without ``key_type``: ``str`` keys are Strings, ``int`` keys are Integers when they fit in 32
    bits, else Longs. Objects with a ``hash_code()`` method use it.
    """
    return _java_hash(key, key_type)


cdef int32_t _java_hash(object key, object key_type) except? -1:
    if key_type is None:
        if isinstance(key, str):
            # str.__str__ gives the exact str of a subclass (StrEnum members and the like).
            return java_string_hash(str.__str__(key))
        if isinstance(key, (bool, np.bool_)):
            return 1231 if key else 1237
        if isinstance(key, (bytes, bytearray, memoryview)):
            return java_bytes_hash(key)
        if isinstance(key, (int, np.integer)):
            key = PyNumber_Index(key)
            if -2147483648 <= key <= 2147483647:
                return <int32_t>key
            return java_long_hash(<int64_t>key)
        hash_code = getattr(key, "hash_code", None)
        if hash_code is not None:
            return <int32_t>hash_code()
        raise TypeError(
            f"no Java hashCode for {type(key).__name__} keys: use str or int keys, pass key_type, "
            f"or give the key a hash_code() method")
    if key_type == "int":
        return <int32_t>_as_integer(key, key_type)
    if key_type == "long":
        return java_long_hash(<int64_t>_as_integer(key, key_type))
    if key_type == "string":
        if not isinstance(key, str):
            raise TypeError(f"key_type 'string' needs a str key, got {type(key).__name__}")
        return java_string_hash(str.__str__(key))
    if key_type == "boolean":
        if not isinstance(key, (bool, np.bool_)):
            raise TypeError(f"key_type 'boolean' needs a bool key, got {type(key).__name__}")
        return 1231 if key else 1237
    if key_type == "bytes":
        return java_bytes_hash(key)
    raise ValueError(f"unknown key_type {key_type!r} (use one of {KEY_TYPES})")


cdef inline int32_t _fast_hash(object key, object key_type) except? -1:
    # The exact builtin types a keyed edge sees per record, hashed without a Python call; the
    # rest (subclasses, numpy scalars, hash_code() objects, type errors) by _java_hash.
    cdef type t = type(key)
    cdef long long value
    cdef int overflow = 0
    if t is bytes and (key_type is None or key_type == "bytes"):
        return <int32_t>_bytes_hash(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
    if t is str and (key_type is None or key_type == "string"):
        return java_string_hash(<str>key)
    if t is int and (key_type is None or key_type == "long" or key_type == "int"):
        value = PyLong_AsLongLongAndOverflow(key, &overflow)
        if overflow == 0:
            if key_type == "long":
                return java_long_hash(value)
            if -2147483648 <= value <= 2147483647:
                return <int32_t>value
            if key_type is None:
                return java_long_hash(value)
    return _java_hash(key, key_type)


cdef inline int _check_key_type(object key_type) except -1:
    if key_type is not None and key_type not in KEY_TYPES:
        raise ValueError(f"unknown key_type {key_type!r} (use one of {KEY_TYPES})")
    return 0


cdef tuple _batch_and_output(keys, Py_ssize_t max_parallelism, key_type):
    """The checked arguments of a batch routing call: ``(seq, out)``, the keys (or records) as a
    list or tuple (other iterables listed) and an int32 array for their key groups."""
    _check_max_parallelism(max_parallelism)
    _check_key_type(key_type)
    seq = keys if type(keys) is list or type(keys) is tuple else list(keys)
    return seq, np.empty(len(seq), dtype=np.int32)


@cython.boundscheck(False)
@cython.wraparound(False)
def key_groups_of(keys, Py_ssize_t max_parallelism, key_type=None):
    """Key groups of a sequence of keys (a list or tuple; other iterables are listed first) as an
    int32 array: :func:`assign_to_key_group` per key, in one call. ``bytes``, ``str`` and ``int``
    keys are hashed in C without a Python call per key; a ``None`` key raises ``ValueError``."""
    cdef Py_ssize_t i, n
    cdef int32_t[::1] out_view
    cdef int32_t maxp = <int32_t>max_parallelism
    seq, out = _batch_and_output(keys, max_parallelism, key_type)
    out_view = out
    n = len(seq)
    for i in range(n):
        key = seq[i]
        if key is None:
            raise ValueError(f"Assigned key must not be null! (key {i} is None)")
        out_view[i] = key_group_for_hash(_fast_hash(key, key_type), maxp)
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def operator_indexes_of(keys, Py_ssize_t max_parallelism, Py_ssize_t parallelism, key_type=None):
    """Subtask indexes of a sequence of keys (see :func:`key_groups_of`): the routing of a keyed
    edge for a batch of records whose keys are already extracted."""
    _check_max_parallelism(max_parallelism)
    _check_parallelism(parallelism, max_parallelism)
    return _to_operator_indexes(key_groups_of(keys, max_parallelism, key_type), max_parallelism,
                                parallelism)


@cython.boundscheck(False)
@cython.wraparound(False)
def key_groups_of_slices(records, slice key_slice not None, Py_ssize_t max_parallelism, key_type=None):
    """Key groups of ``record[key_slice]`` for every record of a sequence (a list or tuple; other
    iterables are listed first), as an int32 array: :func:`key_groups_of` over the records'
    keys, without making them. The key of a ``bytes`` or ``bytearray`` record is hashed in place
    as a ``bytes`` key (Python's slice rules for its bounds: negative indexes count from the
    end, out-of-range bounds clip); any other record is sliced and its key hashed as
    :func:`key_groups_of` hashes it. ``key_slice`` needs a step of 1."""
    cdef Py_ssize_t i, n, start, stop, step, first, last, size
    cdef int32_t[::1] out_view
    cdef int32_t maxp, h
    cdef const char *data
    cdef type t
    cdef bint in_place
    seq, out = _batch_and_output(records, max_parallelism, key_type)
    if key_slice.step is not None and PyNumber_Index(key_slice.step) != 1:
        raise ValueError(f"a key slice needs a step of 1, got {key_slice!r}")
    PySlice_Unpack(key_slice, &start, &stop, &step)
    in_place = key_type is None or key_type == "bytes"
    maxp = <int32_t>max_parallelism
    out_view = out
    n = len(seq)
    for i in range(n):
        record = seq[i]
        t = type(record)
        if in_place and t is bytes:
            data = PyBytes_AS_STRING(record)
            size = PyBytes_GET_SIZE(record)
        elif in_place and t is bytearray:
            data = PyByteArray_AS_STRING(record)
            size = PyByteArray_GET_SIZE(record)
        else:
            key = record[key_slice]
            if key is None:
                raise ValueError(f"Assigned key must not be null! (record {i}'s key is None)")
            out_view[i] = key_group_for_hash(_fast_hash(key, key_type), maxp)
            continue
        first = start
        last = stop
        PySlice_AdjustIndices(size, &first, &last, 1)
        h = <int32_t>_bytes_hash(data + first, last - first if last > first else 0)
        out_view[i] = key_group_for_hash(h, maxp)
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def operator_indexes_of_slices(records, slice key_slice not None, Py_ssize_t max_parallelism,
                               Py_ssize_t parallelism, key_type=None):
    """Subtask indexes of ``record[key_slice]`` for every record (see
    :func:`key_groups_of_slices`): the routing of a keyed edge whose key is a byte range of each
    record, for a batch of records."""
    _check_max_parallelism(max_parallelism)
    _check_parallelism(parallelism, max_parallelism)
    return _to_operator_indexes(key_groups_of_slices(records, key_slice, max_parallelism, key_type),
                                max_parallelism, parallelism)


def compute_key_group_for_key_hash(int32_t key_hash, Py_ssize_t max_parallelism):
    """``murmurHash(key_hash) % max_parallelism``."""
    _check_max_parallelism(max_parallelism)
    return key_group_for_hash(key_hash, <int32_t>max_parallelism)


def assign_to_key_group(key, Py_ssize_t max_parallelism, key_type=None):
    """The key group of ``key`` (see :func:`java_hash_code` for ``key_type``)."""
    _check_max_parallelism(max_parallelism)
    return key_group_for_hash(_java_hash(key, key_type), <int32_t>max_parallelism)


def compute_operator_index_for_key_group(Py_ssize_t max_parallelism, Py_ssize_t parallelism, Py_ssize_t key_group):
    """The subtask index owning ``key_group``: ``key_group * parallelism // max_parallelism``."""
    _check_max_parallelism(max_parallelism)
    _check_parallelism(parallelism, max_parallelism)
    if not 0 <= key_group < max_parallelism:
        raise ValueError(f"key_group must be in [0, {max_parallelism}), got {key_group}")
    return operator_index_for_key_group(<int32_t>max_parallelism, <int32_t>parallelism, <int32_t>key_group)


def assign_key_to_parallel_operator(key, Py_ssize_t max_parallelism, Py_ssize_t parallelism, key_type=None):
    """The subtask index for ``key``."""
    _check_max_parallelism(max_parallelism)
    _check_parallelism(parallelism, max_parallelism)
    return operator_index_for_key_group(
        <int32_t>max_parallelism, <int32_t>parallelism,
        key_group_for_hash(_java_hash(key, key_type), <int32_t>max_parallelism))


def compute_default_max_parallelism(Py_ssize_t parallelism):
    """``min(max(roundUpToPowerOfTwo(p + p // 2), 128), 32768)``."""
    cdef int64_t n, v
    if not 0 < parallelism <= UPPER_BOUND_MAX_PARALLELISM:
        raise ValueError(f"Operator parallelism not within bounds: {parallelism} "
                         f"(must be in [1, {UPPER_BOUND_MAX_PARALLELISM}])")
    n = parallelism + parallelism // 2
    v = 1
    while v < n:
        v <<= 1
    if v < DEFAULT_LOWER_BOUND_MAX_PARALLELISM:
        v = DEFAULT_LOWER_BOUND_MAX_PARALLELISM
    return v if v < UPPER_BOUND_MAX_PARALLELISM else UPPER_BOUND_MAX_PARALLELISM


# Releasing the GIL for a short loop costs the releasing thread up to a switch interval (5 ms)
# when another Python thread is busy (the convoy effect): only long batches release it.
cdef enum:
    NOGIL_KEYS = 1 << 20


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _groups_long(const int64_t[::1] k, int32_t[::1] out, int32_t maxp) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(k.shape[0]):
        out[i] = key_group_for_hash(java_long_hash(k[i]), maxp)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _groups_int(const int32_t[::1] k, int32_t[::1] out, int32_t maxp) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(k.shape[0]):
        out[i] = key_group_for_hash(k[i], maxp)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _operator_indexes(int32_t[::1] groups, int32_t maxp, int32_t p) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(groups.shape[0]):
        groups[i] = operator_index_for_key_group(maxp, p, groups[i])


cdef object _to_operator_indexes(object out, Py_ssize_t max_parallelism, Py_ssize_t parallelism):
    """Key groups (an int32 array, checked bounds) turned into subtask indexes in place: what
    every ``operator_indexes_*`` function returns. Large arrays without the GIL."""
    cdef int32_t[::1] groups = out
    cdef int32_t maxp = <int32_t>max_parallelism, p = <int32_t>parallelism
    if groups.shape[0] >= NOGIL_KEYS:
        with nogil:
            _operator_indexes(groups, maxp, p)
    else:
        _operator_indexes(groups, maxp, p)
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def key_groups_array(keys, Py_ssize_t max_parallelism, key_type=None):
    """Key groups of a numpy array of int keys: up to 32-bit signed dtypes hash as Integers, wider
    or uint32 ones as Longs (identical for non-negative keys below 2**31), unless ``key_type``."""
    cdef const int32_t[::1] k32
    cdef const int64_t[::1] k64
    cdef int32_t[::1] out_view
    cdef Py_ssize_t i, n
    cdef int32_t maxp
    cdef bint as_long
    _check_max_parallelism(max_parallelism)
    maxp = <int32_t>max_parallelism
    arr = np.asarray(keys)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"keys must be an integer array, got dtype {arr.dtype}")
    if key_type is None:
        # uint32 keys may exceed an Integer: hash them as Longs, which for non-negative values
        # below 2**31 is the same hash as an Integer's (so the scalar rule still holds).
        as_long = arr.dtype.itemsize > 4 or (arr.dtype.kind == "u" and arr.dtype.itemsize == 4)
    elif key_type == "long":
        as_long = True
    elif key_type == "int":
        as_long = False
    else:
        raise ValueError(f"key_type for arrays must be 'int' or 'long', got {key_type!r}")
    n = arr.shape[0] if arr.ndim == 1 else -1
    if n < 0:
        raise ValueError("keys must be one-dimensional")
    out = np.empty(n, dtype=np.int32)
    out_view = out
    if arr.dtype.kind == "u" and arr.dtype.itemsize >= 8 and arr.size and (arr > 9223372036854775807).any():
        raise OverflowError("keys beyond the range of a Java long")
    if as_long:
        k64 = np.ascontiguousarray(arr, dtype=np.int64)
        if n >= NOGIL_KEYS:
            with nogil:
                _groups_long(k64, out_view, maxp)
        else:
            _groups_long(k64, out_view, maxp)
    else:
        if (arr.dtype.itemsize > 4 or (arr.dtype.kind == "u" and arr.dtype.itemsize == 4)) and arr.size \
                and ((arr < -2147483648) | (arr > 2147483647)).any():
            raise OverflowError("key_type 'int' needs keys that fit in 32 bits")
        k32 = np.ascontiguousarray(arr, dtype=np.int32)
        if n >= NOGIL_KEYS:
            with nogil:
                _groups_int(k32, out_view, maxp)
        else:
            _groups_int(k32, out_view, maxp)
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def operator_indexes_array(keys, Py_ssize_t max_parallelism, Py_ssize_t parallelism, key_type=None):
    """Subtask indexes of a numpy array of int keys (see :func:`key_groups_array`)."""
    _check_max_parallelism(max_parallelism)
    _check_parallelism(parallelism, max_parallelism)
    return _to_operator_indexes(key_groups_array(keys, max_parallelism, key_type), max_parallelism,
                                parallelism)


class KeyGroupRange:
    """The key groups ``[start_key_group, end_key_group]`` (inclusive) one operator owns."""

    __slots__ = ("start_key_group", "end_key_group")

    def __init__(self, int start_key_group, int end_key_group):
        if start_key_group < 0:
            raise ValueError("start_key_group must be >= 0")
        if end_key_group < start_key_group and end_key_group >= 0:
            raise ValueError("end_key_group must be >= start_key_group, or negative for an empty range")
        self.start_key_group = start_key_group
        self.end_key_group = end_key_group

    @property
    def number_of_key_groups(self):
        """How many key groups the range holds."""
        return max(0, self.end_key_group - self.start_key_group + 1)

    def contains(self, int key_group):
        """Whether ``key_group`` is in the range."""
        return self.start_key_group <= key_group <= self.end_key_group

    __contains__ = contains

    def __iter__(self):
        return iter(range(self.start_key_group, self.start_key_group + self.number_of_key_groups))

    def __len__(self):
        return self.number_of_key_groups

    def __eq__(self, other):
        return (isinstance(other, KeyGroupRange) and other.start_key_group == self.start_key_group
                and other.end_key_group == self.end_key_group)

    def __hash__(self):
        return hash((self.start_key_group, self.end_key_group))

    def __repr__(self):
        return f"KeyGroupRange{{startKeyGroup={self.start_key_group}, endKeyGroup={self.end_key_group}}}"


def compute_key_group_range_for_operator_index(Py_ssize_t max_parallelism, Py_ssize_t parallelism,
                                               Py_ssize_t operator_index):
    """The :class:`KeyGroupRange` of subtask ``operator_index`` (Flink's formula)."""
    _check_max_parallelism(max_parallelism)
    _check_parallelism(parallelism, max_parallelism)
    if not 0 <= operator_index < parallelism:
        raise ValueError(f"operator_index must be in [0, {parallelism}), got {operator_index}")
    start = (operator_index * max_parallelism + parallelism - 1) // parallelism
    end = ((operator_index + 1) * max_parallelism - 1) // parallelism
    return KeyGroupRange(start, end)
