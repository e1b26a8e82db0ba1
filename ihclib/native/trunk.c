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
 * Layout (C order, elements of `size` bytes, copied as they are): up (H, W, block^2 * cu), its
 * channel (a * block + b) * cu + k going to pixel (block * y + a, block * x + b), channel k (as
 * depth_to_space's DCR order); skip (block * H, block * W, cs); out (block * H, block * W,
 * cu + cs), the up channels first. Rows [r0, r1) of out are written, so callers may run bands of
 * rows in threads.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* One output row; constant sizes let the compiler turn each memcpy into vector moves. */
#define COPY_ROW(UBYTES, SBYTES)                                                       \
    for (int x = 0; x < w; x++) {                                                      \
        const char *u = urow + (size_t)x * block * block * (UBYTES);                   \
        for (int b = 0; b < block; b++, o += (UBYTES) + (SBYTES), s += (SBYTES)) {      \
            memcpy(o, u + (size_t)b * (UBYTES), (UBYTES));                             \
            memcpy(o + (UBYTES), s, (SBYTES));                                         \
        }                                                                              \
    }

int ihclib_upsample_concat_rows(const void *up, int h, int w, int cu, const void *skip, int cs, int block,
                                int size, void *out, int r0, int r1) {
    if (block < 1 || size < 1 || cu < 1 || cs < 1 || r0 < 0 || r1 > block * h || r0 > r1)
        return -1;
    const size_t ub = (size_t)cu * size, sb = (size_t)cs * size, ob = ub + sb;
    const size_t out_row = (size_t)block * w * ob, skip_row = (size_t)block * w * sb;
    const size_t up_row = (size_t)w * block * block * ub;
    for (int r = r0; r < r1; r++) {
        const int y = r / block, a = r % block;
        /* the phases of row a: channels (a * block + b) * cu, b = 0..block-1, of each input pixel */
        const char *urow = (const char *)up + (size_t)y * up_row + (size_t)a * block * ub;
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
