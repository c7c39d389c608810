# Declarations of fn_defs.h: the FLINKNET_DEBUG switch and byte-order helpers. Every helper is a
# static inline C function that cannot fail (noexcept); callers check bounds before calling.
from libc.stdint cimport int16_t, int32_t, int64_t, uint16_t, uint32_t, uint64_t

cdef extern from "fn_defs.h" nogil:
    # 0 in release builds; 1 when built with FLINKNET_DEBUG=1. Guards segment accounting and
    # internal consistency checks, so `if FLINKNET_DEBUG:` blocks vanish from release binaries.
    const bint FLINKNET_DEBUG
    const bint FN_NATIVE_BIG_ENDIAN

    uint16_t fn_load16(const char *p)
    uint32_t fn_load32(const char *p)
    uint64_t fn_load64(const char *p)
    void fn_store16(char *p, uint16_t v)
    void fn_store32(char *p, uint32_t v)
    void fn_store64(char *p, uint64_t v)
    uint16_t fn_bswap16(uint16_t v)
    uint32_t fn_bswap32(uint32_t v)
    uint64_t fn_bswap64(uint64_t v)

    int16_t fn_load_be_i16(const char *p)
    int32_t fn_load_be_i32(const char *p)
    int64_t fn_load_be_i64(const char *p)
    void fn_store_be_i16(char *p, int16_t v)
    void fn_store_be_i32(char *p, int32_t v)
    void fn_store_be_i64(char *p, int64_t v)

    int16_t fn_load_le_i16(const char *p)
    int32_t fn_load_le_i32(const char *p)
    int64_t fn_load_le_i64(const char *p)
    void fn_store_le_i16(char *p, int16_t v)
    void fn_store_le_i32(char *p, int32_t v)
    void fn_store_le_i64(char *p, int64_t v)

    float fn_bits_to_f32(uint32_t b)
    double fn_bits_to_f64(uint64_t b)
    uint32_t fn_f32_to_bits(float f)
    uint64_t fn_f64_to_bits(double d)
