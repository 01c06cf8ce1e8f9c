/* The compiled kernels of spora_zarr.standardize (loaded through ctypes by kernels.py, which releases
 * the GIL for each call, so several threads run them at once).
 *
 * spora_count_u16 / spora_count_u8: value histograms of a block's planes, one call per block. Each
 * sample of plane p adds one to counts[p * stride + (sample ^ flip)]
 * (flip = 0x8000 or 0x80 turns signed samples into their offset bin, 0 for unsigned ones). Stored
 * multiplex counts are mostly zero, so the samples are taken 8 bytes at a time and an all-zero word
 * only adds to a register; the other words count their samples straight into the int64 table (no
 * per-call partial tables to clear and sum). numpy's bincount converts its input to intp first.
 *
 * spora_affine_u16 / spora_affine_u8: the standardization without log1p in one pass: plane p's samples
 * become min(x, upper[p]) * scale[p] + bias[p] in float32, the same operations as the element-wise
 * path (no contraction into fused multiply-adds: -std=c11), vectorised by the compiler.
 *
 * spora_lut_u16 / spora_lut_u8: the standardization of 8/16-bit samples as one gather. Plane p of
 * `planes` planes of `plane_n` samples is mapped through its table table[offsets[p] ...] of
 * lengths[p] float32 entries, the sample clamped to the last entry (values above the clipping bound
 * share that entry). The tables are built by the standardizers with the same float32 operations as
 * their element-wise path.
 */

#include <stdint.h>
#include <string.h>

#define SPORA_COUNT(NAME, T, PER_WORD)                                                              \
    static void NAME(const T *data, int64_t n, T flip, int64_t *counts) {                           \
        int64_t zeros = 0, i = 0;                                                                  \
        for (; i + PER_WORD <= n; i += PER_WORD) {                                                 \
            uint64_t word;                                                                         \
            memcpy(&word, data + i, 8);                                                            \
            if (word == 0) {                                                                       \
                zeros += PER_WORD;                                                                 \
                continue;                                                                          \
            }                                                                                      \
            for (int k = 0; k < PER_WORD; k++) counts[(T)(data[i + k] ^ flip)]++;                  \
        }                                                                                          \
        for (; i < n; i++) counts[(T)(data[i] ^ flip)]++;                                          \
        counts[flip] += zeros; /* the bin of the sample value 0 */                                  \
    }

SPORA_COUNT(count_u16, uint16_t, 4)
SPORA_COUNT(count_u8, uint8_t, 8)

/* `planes` contiguous planes of `plane_n` samples, plane p counted into counts + p * stride (one call per block). */
int spora_count_u16(const uint16_t *data, int64_t planes, int64_t plane_n, uint16_t flip, int64_t *counts, int64_t stride) {
    for (int64_t p = 0; p < planes; p++) count_u16(data + p * plane_n, plane_n, flip, counts + p * stride);
    return 0;
}

int spora_count_u8(const uint8_t *data, int64_t planes, int64_t plane_n, uint8_t flip, int64_t *counts, int64_t stride) {
    for (int64_t p = 0; p < planes; p++) count_u8(data + p * plane_n, plane_n, flip, counts + p * stride);
    return 0;
}

#define SPORA_LUT(NAME, T)                                                                          \
    int NAME(const T *data, int64_t planes, int64_t plane_n, const float *table, const int64_t *offsets, \
             const int64_t *lengths, float *out) {                                                 \
        for (int64_t p = 0; p < planes; p++) {                                                     \
            if (lengths[p] < 1) return -1;                                                         \
            const float *t = table + offsets[p];                                                   \
            const T last = lengths[p] - 1 > (int64_t)(T)~(T)0 ? (T)~(T)0 : (T)(lengths[p] - 1);      \
            const T *x = data + p * plane_n;                                                       \
            float *o = out + p * plane_n;                                                          \
            for (int64_t i = 0; i < plane_n; i++) {                                                \
                const T v = x[i];                                                                  \
                o[i] = t[v < last ? v : last];                                                     \
            }                                                                                      \
        }                                                                                          \
        return 0;                                                                                  \
    }

SPORA_LUT(spora_lut_u16, uint16_t)
SPORA_LUT(spora_lut_u8, uint8_t)

#define SPORA_AFFINE(NAME, T)                                                                       \
    int NAME(const T *data, int64_t planes, int64_t plane_n, const float *upper, const float *scale, \
             const float *bias, float *out) {                                                      \
        for (int64_t p = 0; p < planes; p++) {                                                     \
            const float u = upper[p], s = scale[p], b = bias[p];                                   \
            const T *x = data + p * plane_n;                                                       \
            float *o = out + p * plane_n;                                                          \
            for (int64_t i = 0; i < plane_n; i++) {                                                \
                const float v = (float)x[i];                                                       \
                const float clipped = v < u ? v : u; /* a NaN bound gives NaN, as torch.minimum */    \
                const float scaled = clipped * s;                                                  \
                o[i] = scaled + b;                                                                 \
            }                                                                                      \
        }                                                                                          \
        return 0;                                                                                  \
    }

SPORA_AFFINE(spora_affine_u16, uint16_t)
SPORA_AFFINE(spora_affine_u8, uint8_t)
