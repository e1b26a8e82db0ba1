/* The U-Net trunk's way up: a depth-to-space and the concatenation with the skip, in one pass
 * (issue 13).
 *
 * ihclib.fast_trunk computes each stride-2 transposed convolution as one convolution into
 * block * block phases of its channels; the U-Net then puts those phases in place
 * (tf.nn.depth_to_space) and concatenates the skip after them (tf.concat), two passes that each
 * copy 64-byte pieces of every full-resolution pixel: 7 and 13 ms of a 1056 px tile of the
 * bundled model (32 + 32 bf16 channels, the 2-core Zen 5), about twice a plain copy of those bytes.
 * Here each output pixel is written once, its two pieces read straight from where they are.
 *
 * Layout (C order, elements of `size` bytes, copied as they are): the block * block phases of the
 * upsampled tensor, phase p = a * block + b going to pixels (block * y + a, block * x + b), each
 * (H, W, cu) from its own base (phases[p]) with `pixel` bytes from one input pixel to the next
 * (the next row: W * pixel). The phases side by side as the channels of one (H, W, block^2 * cu)
 * tensor (depth_to_space's DCR order) are phases[p] = up + p * cu * size, pixel = block^2 * cu *
 * size; each in a tensor of its own (ihclib.fast_trunk's per-phase convolutions), pixel = cu *
 * size. skip (block * H, block * W, cs); out (block * H, block * W, cu + cs), the up channels
 * first. Rows [r0, r1) of out are written, so callers may run bands of rows in threads.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* One output row; constant sizes let the compiler turn each memcpy into vector moves. */
#define COPY_ROW(UBYTES, SBYTES)                                                       \
    for (int x = 0; x < w; x++) {                                                      \
        for (int b = 0; b < block; b++, o += (UBYTES) + (SBYTES), s += (SBYTES)) {      \
            memcpy(o, urow[b] + (size_t)x * pixel, (UBYTES));                          \
            memcpy(o + (UBYTES), s, (SBYTES));                                         \
        }                                                                              \
    }

#define MAX_BLOCK 8

int ihclib_upsample_concat_rows(const void *const *phases, size_t pixel, int h, int w, int cu, const void *skip,
                                int cs, int block, int size, void *out, int r0, int r1) {
    if (block < 1 || block > MAX_BLOCK || size < 1 || cu < 1 || cs < 1 || r0 < 0 || r1 > block * h || r0 > r1)
        return -1;
    const size_t ub = (size_t)cu * size, sb = (size_t)cs * size, ob = ub + sb;
    const size_t out_row = (size_t)block * w * ob, skip_row = (size_t)block * w * sb;
    const size_t up_row = (size_t)w * pixel;
    for (int r = r0; r < r1; r++) {
        const int y = r / block, a = r % block;
        /* row y of the phases of output row a: a * block + b, b = 0..block-1 */
        const char *urow[MAX_BLOCK];
        for (int b = 0; b < block; b++) urow[b] = (const char *)phases[a * block + b] + (size_t)y * up_row;
        const char *s = (const char *)skip + (size_t)r * skip_row;
        char *o = (char *)out + (size_t)r * out_row;
        if (ub == 64 && sb == 64) {
            COPY_ROW(64, 64)
        } else if (ub == 32 && sb == 32) {
            COPY_ROW(32, 32)
        } else if (ub == 128 && sb == 128) {
            COPY_ROW(128, 128)
        } else {
            COPY_ROW(ub, sb)
        }
    }
    return 0;
}
