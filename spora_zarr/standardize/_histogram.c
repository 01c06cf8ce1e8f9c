/* Value histograms of 8- and 16-bit samples for spora_zarr.standardize.histograms.
 *
 * spora_count_u16 / spora_count_u8 add one count per sample to counts[sample ^ flip] (flip = 0x8000
 * or 0x80 turns signed samples into their offset bin, 0 for unsigned ones). numpy's bincount
 * converts its input to intp first (8 bytes read and written per sample); this reads each sample
 * once. Four partial tables break the store-to-load dependency of runs of equal values. Called
 * through ctypes, which releases the GIL, so channels are counted on several threads.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int spora_count_u16(const uint16_t *data, int64_t n, uint16_t flip, int64_t *counts) {
    /* uint32 partial tables (1 MiB, kinder to the cache than int64 ones): flushed every 2^31 samples. */
    uint32_t *parts = malloc(4 * 65536 * sizeof(uint32_t));
    if (!parts) return -1;
    for (int64_t begin = 0; begin < n; begin += (int64_t)1 << 31) {
        const int64_t end = n - begin > ((int64_t)1 << 31) ? begin + ((int64_t)1 << 31) : n;
        memset(parts, 0, 4 * 65536 * sizeof(uint32_t));
        int64_t i = begin;
        for (; i + 4 <= end; i += 4) {
            parts[(uint16_t)(data[i] ^ flip)]++;
            parts[65536 + (uint16_t)(data[i + 1] ^ flip)]++;
            parts[2 * 65536 + (uint16_t)(data[i + 2] ^ flip)]++;
            parts[3 * 65536 + (uint16_t)(data[i + 3] ^ flip)]++;
        }
        for (; i < end; i++) parts[(uint16_t)(data[i] ^ flip)]++;
        for (int64_t b = 0; b < 65536; b++)
            counts[b] += (int64_t)parts[b] + parts[65536 + b] + parts[2 * 65536 + b] + parts[3 * 65536 + b];
    }
    free(parts);
    return 0;
}

int spora_count_u8(const uint8_t *data, int64_t n, uint8_t flip, int64_t *counts) {
    int64_t parts[4][256];
    memset(parts, 0, sizeof parts);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        parts[0][(uint8_t)(data[i] ^ flip)]++;
        parts[1][(uint8_t)(data[i + 1] ^ flip)]++;
        parts[2][(uint8_t)(data[i + 2] ^ flip)]++;
        parts[3][(uint8_t)(data[i + 3] ^ flip)]++;
    }
    for (; i < n; i++) parts[0][(uint8_t)(data[i] ^ flip)]++;
    for (int b = 0; b < 256; b++) counts[b] += parts[0][b] + parts[1][b] + parts[2][b] + parts[3][b];
    return 0;
}
