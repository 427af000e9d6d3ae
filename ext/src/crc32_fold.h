/*
 * CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), bit-identical to zlib's crc32().
 *
 * Three kernels, chosen at run time by CPU feature detection:
 *   - D7Y_CRC32_VPCLMUL: 512-bit carry-less multiplication folding (AVX-512F + VPCLMULQDQ)
 *   - D7Y_CRC32_PCLMUL:  128-bit carry-less multiplication folding (PCLMULQDQ + SSE4.1)
 *   - D7Y_CRC32_TABLE:   portable slicing-by-16 table lookup (any CPU, any byte order)
 * The translation unit compiles without -march flags: the SIMD kernels are individual
 * functions with __attribute__((target(...))) and are only called when the CPU has the
 * features.
 *
 * All functions are thread-safe after d7y_crc32_init() returned, and none of them touch
 * Python objects, so callers may run them without the GIL.
 */
#ifndef D7Y_CRC32_FOLD_H
#define D7Y_CRC32_FOLD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    D7Y_CRC32_TABLE = 0,
    D7Y_CRC32_PCLMUL = 1,
    D7Y_CRC32_VPCLMUL = 2,
    D7Y_CRC32_NPATHS = 3
} d7y_crc32_path;

/* A named constant used by the folding kernels, exposed so tests can re-derive it. */
typedef struct {
    const char *name;
    uint64_t value;
} d7y_crc32_constant;

/* {NULL, 0}-terminated list of the folding and reduction constants. */
extern const d7y_crc32_constant d7y_crc32_constants[];

/* Build the lookup tables and detect the CPU. Idempotent; call once before anything else
 * (the Python module does it at import, under the GIL). */
void d7y_crc32_init(void);

/* 1 when `path` can run on this CPU (the table path always can), else 0. */
int d7y_crc32_path_supported(d7y_crc32_path path);

/* The fastest path this CPU supports; the one d7y_crc32() uses. */
d7y_crc32_path d7y_crc32_best_path(void);

/* "table", "pclmulqdq", "vpclmulqdq", or NULL for an unknown value. */
const char *d7y_crc32_path_name(d7y_crc32_path path);

/* zlib semantics: crc32(value, buf, len) continues the CRC `value` (0 to start) over buf. */
uint32_t d7y_crc32(uint32_t value, const unsigned char *buf, size_t len);

/* The same through a chosen path. The caller must have checked d7y_crc32_path_supported();
 * an unsupported or unknown path falls back to the table path rather than fault. */
uint32_t d7y_crc32_with(d7y_crc32_path path, uint32_t value, const unsigned char *buf,
                        size_t len);

#ifdef __cplusplus
}
#endif

#endif /* D7Y_CRC32_FOLD_H */
