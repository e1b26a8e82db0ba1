/* crosschannel_unet's gate (ihclib.fast_layers.CrossChannelHead) in one pass over a tile (issue 13).
 *
 * TensorFlow ran it as an XLA cluster: about 3.5 ms of a 1056 px tile of the bundled model, but
 * its first call in a process also spent about 30 ms of one core in XLA (converting the cluster
 * and loading its compiled code from the cache), on the way to the first tile (2-core Zen 5).
 * Here: the same function, up to float32 rounding (expf for the sigmoids), per value:
 *
 *   out = x + flag * sigmoid(logit) * (fill - x),
 *   fill = xc + sigmoid(share) * (spatial - xc) + correction * contrast,
 *   contrast = sqrt(max(sum(p^2) / n - (sum(p) / n)^2, 0) + 1e-12)
 *
 * (p: the prior, its box sums over a (2r + 1)^2 window with n of its values inside the image).
 * Where flag is 0 the output is x exactly, as the reference's hard gate.
 *
 * Layout: x, flag, spatial, xc (H, W, 3) float32; sums (H, W, 6): the sums of p, then of p^2;
 * heads (H, W, 9): the mask logit, the correction and the share logit, 3 each, float32 or
 * bfloat16 bits; out (H, W, 3) float32. Rows [y0, y1) are written: callers may run bands of rows
 * in threads.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float count1(int i, int n, int r) {
    int lo = i - r < 0 ? 0 : i - r, hi = i + r > n - 1 ? n - 1 : i + r;
    return (float)(hi - lo + 1);
}

static inline float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

int ihclib_head_rows(const float *x, const float *flag, const float *spatial, const float *xc, const float *sums,
                     const void *heads, int heads_bf16, int height, int width, int radius, float *out, int y0,
                     int y1) {
    if (radius < 0 || y0 < 0 || y1 > height || y0 > y1) return -1;
    float h[9];
    for (int y = y0; y < y1; y++) {
        const float cy = count1(y, height, radius);
        for (int j = 0; j < width; j++) {
            const size_t at = (size_t)y * width + j, a3 = at * 3, a6 = at * 6;
            if (flag[a3] == 0.0f && flag[a3 + 1] == 0.0f && flag[a3 + 2] == 0.0f) {
                /* the mask is 0: x exactly, and nothing else of this pixel is read */
                memcpy(out + a3, x + a3, 3 * sizeof(float));
                continue;
            }
            if (heads_bf16)
                for (int k = 0; k < 9; k++) h[k] = from_bf16(((const uint16_t *)heads)[at * 9 + k]);
            else
                memcpy(h, (const float *)heads + at * 9, sizeof h);
            const float n = cy * count1(j, width, radius);
            for (int c = 0; c < 3; c++) {
                const float xv = x[a3 + c], f = flag[a3 + c];
                if (f == 0.0f) {  /* this value's mask is 0: x exactly */
                    out[a3 + c] = xv;
                    continue;
                }
                const float mean = sums[a6 + c] / n, sq = sums[a6 + 3 + c] / n;
                const float d = sq - mean * mean;
                const float contrast = sqrtf((d > 0.0f ? d : 0.0f) + 1e-12f);
                const float s = spatial[a3 + c], cross = xc[a3 + c];
                const float fill = cross + sigmoid(h[6 + c]) * (s - cross) + h[3 + c] * contrast;
                out[a3 + c] = xv + f * sigmoid(h[c]) * (fill - xv);
            }
        }
    }
    return 0;
}
