/* flinknet core: build switches and alignment-safe byte-order helpers.
 *
 * FLINKNET_DEBUG is 0 in release builds and 1 when built with FLINKNET_DEBUG=1 (setup.py); code
 * guarded by it is removed by the compiler in release builds.
 *
 * All loads and stores go through memcpy so that unaligned offsets are legal on every CPU; the
 * compiler turns them into single moves (plus a bswap where the order differs from the host's).
 */
#ifndef FLINKNET_DEFS_H
#define FLINKNET_DEFS_H

#include <stdint.h>
#include <string.h>

#ifndef FLINKNET_DEBUG
#define FLINKNET_DEBUG 0
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define FN_NATIVE_BIG_ENDIAN 1
#else
#define FN_NATIVE_BIG_ENDIAN 0
#endif

static inline uint16_t fn_bswap16(uint16_t v) { return __builtin_bswap16(v); }
static inline uint32_t fn_bswap32(uint32_t v) { return __builtin_bswap32(v); }
static inline uint64_t fn_bswap64(uint64_t v) { return __builtin_bswap64(v); }

#if FN_NATIVE_BIG_ENDIAN
#define FN_TO_BE16(v) (v)
#define FN_TO_BE32(v) (v)
#define FN_TO_BE64(v) (v)
#define FN_TO_LE16(v) fn_bswap16(v)
#define FN_TO_LE32(v) fn_bswap32(v)
#define FN_TO_LE64(v) fn_bswap64(v)
#else
#define FN_TO_BE16(v) fn_bswap16(v)
#define FN_TO_BE32(v) fn_bswap32(v)
#define FN_TO_BE64(v) fn_bswap64(v)
#define FN_TO_LE16(v) (v)
#define FN_TO_LE32(v) (v)
#define FN_TO_LE64(v) (v)
#endif

static inline uint16_t fn_load16(const char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t fn_load32(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t fn_load64(const char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void fn_store16(char *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void fn_store32(char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void fn_store64(char *p, uint64_t v) { memcpy(p, &v, 8); }

/* Big-endian (network order), as every Flink wire integer. */
static inline int16_t fn_load_be_i16(const char *p) { return (int16_t)FN_TO_BE16(fn_load16(p)); }
static inline int32_t fn_load_be_i32(const char *p) { return (int32_t)FN_TO_BE32(fn_load32(p)); }
static inline int64_t fn_load_be_i64(const char *p) { return (int64_t)FN_TO_BE64(fn_load64(p)); }
static inline void fn_store_be_i16(char *p, int16_t v) { fn_store16(p, FN_TO_BE16((uint16_t)v)); }
static inline void fn_store_be_i32(char *p, int32_t v) { fn_store32(p, FN_TO_BE32((uint32_t)v)); }
static inline void fn_store_be_i64(char *p, int64_t v) { fn_store64(p, FN_TO_BE64((uint64_t)v)); }

/* Little-endian. */
static inline int16_t fn_load_le_i16(const char *p) { return (int16_t)FN_TO_LE16(fn_load16(p)); }
static inline int32_t fn_load_le_i32(const char *p) { return (int32_t)FN_TO_LE32(fn_load32(p)); }
static inline int64_t fn_load_le_i64(const char *p) { return (int64_t)FN_TO_LE64(fn_load64(p)); }
static inline void fn_store_le_i16(char *p, int16_t v) { fn_store16(p, FN_TO_LE16((uint16_t)v)); }
static inline void fn_store_le_i32(char *p, int32_t v) { fn_store32(p, FN_TO_LE32((uint32_t)v)); }
static inline void fn_store_le_i64(char *p, int64_t v) { fn_store64(p, FN_TO_LE64((uint64_t)v)); }

/* Floats travel as the bit pattern of the integer of the same width (Java floatToRawIntBits). */
static inline float fn_bits_to_f32(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
static inline double fn_bits_to_f64(uint64_t b) { double d; memcpy(&d, &b, 8); return d; }
static inline uint32_t fn_f32_to_bits(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }
static inline uint64_t fn_f64_to_bits(double d) { uint64_t b; memcpy(&b, &d, 8); return b; }

#endif
