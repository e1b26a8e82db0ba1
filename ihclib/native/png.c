/* A PNG's filtered rows back to pixels (the five filter types of the PNG specification, section
 * 9), for ihclib.images' PNG read (issue 13).
 *
 * libspng reads an 8-bit RGB(A) PNG with the system's zlib, whose inflate is most of the time:
 * 0.22 s of a 4096 px RGB PNG, against 0.10 s for ISA-L's inflate (measured on the 2-core Zen
 * 5). ihclib.images inflates with ISA-L and undoes the filters here.
 *
 * Layout: raw holds `height` rows of 1 + row_bytes bytes (the filter type, then the row);
 * out gets `height` rows of row_bytes bytes; bpp is the bytes of one pixel (3 or 4 for 8-bit
 * RGB and RGBA). Returns 0, or -(y + 1) for the first row y whose filter type is not 0-4.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline int paeth(int a, int b, int c) {
    int p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/* One row of filter type 1, 3 or 4 for a constant bpp: the left pixel is kept in registers
 * (read back from memory, each byte waited for the store of the byte bpp before it: a 4096 px
 * RGB image of Sub rows took 35 ms, now 20). up is the row above, or NULL on the first row.
 * Each byte is read before it or any byte after it is written, so o may lie at or before in
 * (the in-place use: no restrict on them). */
static inline void left_filtered_row(int type, const uint8_t *in, const uint8_t *restrict up,
                                     uint8_t *o, int row_bytes, const int bpp) {
    int left[4] = {0, 0, 0, 0}, upleft[4] = {0, 0, 0, 0};
    for (int i = 0; i + bpp <= row_bytes; i += bpp)
        for (int k = 0; k < bpp; k++) {
            int b = up ? up[i + k] : 0, v;
            if (type == 1) v = in[i + k] + left[k];
            else if (type == 3) v = in[i + k] + ((left[k] + b) >> 1);
            else v = in[i + k] + paeth(left[k], b, upleft[k]);
            left[k] = (uint8_t)v;
            upleft[k] = b;
            o[i + k] = (uint8_t)v;
        }
}

/* The rows of `raw` back to pixels in `out`, which may be `raw` itself (in place: row y's pixels
 * start y + 1 bytes before its filtered bytes, so each byte is read before it is overwritten,
 * and the row above is already pixels, where the filters want it). In place saves the output's
 * fresh pages (50 MB for a 4096 px RGB image, about 17 ms of page faults on the 2-core Zen 5). */
static int unfilter_rows(const uint8_t *raw, int height, int row_bytes, int bpp, uint8_t *out) {
    for (int y = 0; y < height; y++) {
        const uint8_t *in = raw + (size_t)y * (row_bytes + 1) + 1;
        uint8_t *o = out + (size_t)y * row_bytes;
        const uint8_t *up = y ? o - row_bytes : NULL;  /* the row above, as pixels */
        int type = in[-1];
        if (type == 0 || (type == 2 && !up)) {
            memmove(o, in, (size_t)row_bytes);
        } else if (type == 2) {
            uint8_t tmp[64];
            int i = 0;
            for (; i + 64 <= row_bytes; i += 64) {  /* a block read whole before it is written */
                memcpy(tmp, in + i, 64);
                for (int k = 0; k < 64; k++) tmp[k] = (uint8_t)(tmp[k] + up[i + k]);
                memcpy(o + i, tmp, 64);
            }
            for (; i < row_bytes; i++) o[i] = (uint8_t)(in[i] + up[i]);
        } else if (type == 1 || type == 3 || type == 4) {
            if (bpp == 3) left_filtered_row(type, in, up, o, row_bytes, 3);
            else if (bpp == 4) left_filtered_row(type, in, up, o, row_bytes, 4);
            else return -(y + 1);
        } else {
            return -(y + 1);
        }
    }
    return 0;
}

int ihclib_png_unfilter_inplace(uint8_t *raw, int height, int row_bytes, int bpp) {
    return unfilter_rows(raw, height, row_bytes, bpp, raw);
}

int ihclib_png_unfilter(const uint8_t *raw, int height, int row_bytes, int bpp, uint8_t *out) {
    return unfilter_rows(raw, height, row_bytes, bpp, out);
}
