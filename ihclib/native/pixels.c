/* Float tiles to the pixels an image is stored in (issue 13): out = round(clip(src, 0, 1) * top)
 * for rows of float32 values, bit for bit ihclib.images.float_to_pixels' NumPy passes (clip,
 * multiply in float32, round half to even, convert); NaN gives 0, as NumPy's conversion does on
 * x86. One pass instead of four: ihclib denoise converts each tile's own rectangle as it is
 * blended, in a thread beside the model.
 *
 * Layout: `rows` rows of `row_len` values; row r of src starts at src + r * src_row, of out at
 * out + r * out_row (in elements of each); out is uint8 (out_bytes 1) or uint16 (2).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

static inline float unit(float v) {
    v = v > 0.0f ? v : 0.0f;  /* NaN too */
    return v < 1.0f ? v : 1.0f;
}

int ihclib_float_to_pixels(const float *src, ptrdiff_t src_row, int rows, int row_len, void *out, ptrdiff_t out_row,
                           int out_bytes, float top) {
    if (out_bytes != 1 && out_bytes != 2) return -1;
    for (int r = 0; r < rows; r++) {
        const float *restrict s = src + r * src_row;
        if (out_bytes == 1) {
            uint8_t *restrict o = (uint8_t *)out + r * out_row;
            for (int i = 0; i < row_len; i++) o[i] = (uint8_t)(int)rintf(unit(s[i]) * top);
        } else {
            uint16_t *restrict o = (uint16_t *)out + r * out_row;
            for (int i = 0; i < row_len; i++) o[i] = (uint16_t)(int)rintf(unit(s[i]) * top);
        }
    }
    return 0;
}
