# flinknet._core.keygroups: Flink's KeyGroupRangeAssignment and MathUtils.murmurHash, with
# Java hashCode emulation for int, long and String keys. Pure functions: no state, no GIL needed.
from libc.stdint cimport int32_t, int64_t

cdef enum:
    DEFAULT_LOWER_BOUND_MAX_PARALLELISM = 128
    UPPER_BOUND_MAX_PARALLELISM = 32768

cdef int32_t murmur_hash_int(int32_t code) noexcept nogil
cdef int32_t java_long_hash(int64_t value) noexcept nogil
cdef int32_t java_string_hash(str value) except? -1
cdef inline int32_t key_group_for_hash(int32_t hash_code, int32_t max_parallelism) noexcept nogil:
    return murmur_hash_int(hash_code) % max_parallelism
cdef inline int32_t operator_index_for_key_group(int32_t max_parallelism, int32_t parallelism,
                                                 int32_t key_group) noexcept nogil:
    return <int32_t>((<int64_t>key_group) * parallelism // max_parallelism)
