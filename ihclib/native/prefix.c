/* crosschannel_unet's classical prefix in one cache-blocked pass (issue 13).
 *
 * The same functions as ihclib.fast_layers.CrossChannelPrefix (impulse flags, the spatial fill
 * over windows 3/5/7, the cross-channel fill over window 5, the trunk's 13 feature channels and
 * the 5x5 box sums of [prior, prior^2]), up to float32 rounding. In TensorFlow these are ~40
 * box sums as depthwise convolutions over whole tiles: each reads and writes the tile, so a
 * 1056 px tile spent 62-70 ms there, as long as the width-16 trunk's convolutions (measured on a
 * 2-core Zen 5). Here a band of rows and its halo is worked on while it is in cache: the terms to
 * sum (planar rows), vertical then horizontal sums (nested windows share their additions), the
 * per-pixel algebra, and the outputs written once: 33 ms on one core, 18 ms on two (same tile).
 * The loops are plain C that GCC vectorises (-fopt-info-vec); where it would not (a boolean
 * select chain), the code says so.
 *
 * Built on first use by ihclib.native (the machine's own compiler, -O3 -march=native); ihclib
 * falls back to the TensorFlow layers where it cannot be built.
 *
 * Layout: x is (H, W, 3) float32, C order; outputs (H, W, k): features 13 (float32, or bfloat16
 * bits where features_bf16), and float32 flag 3, spatial 3, xc 3, contrast sums 6. Rows [y0, y1)
 * of the outputs are written; any split into rows gives the same bits (each band recomputes its
 * halo in the same order), so callers may run bands in threads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define R 3          /* the largest spatial window's radius (7x7) */
#define RC 2         /* the cross-channel fill's and the contrast's radius (5x5) */
#define NS 9         /* spatial terms: x * keep (3), keep (3), x (3) */
#define FEATURES 13  /* the trunk's input channels */
#define NC 10        /* cross terms: clean, clean * x (3), clean * x^2 (3), clean * x_c * x_{c+1} (3) */

static inline float count1(int i, int n, int r) {
    int lo = i - r < 0 ? 0 : i - r, hi = i + r > n - 1 ? n - 1 : i + r;
    return (float)(hi - lo + 1);
}

/* float32 to bfloat16, rounded to nearest even (as TensorFlow's cast; the values are finite) */
static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static inline float flag_of(float v) {
    /* ihclib.model.impulse_hint: ReLU(threshold=0.999) passes values above it */
    float y = 1.0f - v;
    return (v > 0.999f ? v : 0.0f) + (y > 0.999f ? y : 0.0f);
}

static const float ZERO_ROW[4096];  /* rows above or below the image (zero padding) */

/* Row y of plane p of a [row][plane][wp] buffer holding rows [lo, hi), from its first column
 * (padding included); a row of zeros outside those rows. */
static inline const float *row_at(const float *buf, int lo, int hi, int y, int planes, int p, int wp) {
    return (y < lo || y >= hi) ? ZERO_ROW : buf + ((size_t)(y - lo) * planes + p) * wp;
}

/* Vertical sums of one plane around row y over radii 1, 2 and 3 (nested: each adds two rows to
 * the last) into v[0], v[1], v[2] (up to radius rmax); sums in registers, one pass. */
static void vsums(const float *buf, int lo, int hi, int y, int planes, int p, int wp, int rmax,
                  float *restrict v1, float *restrict v2, float *restrict v3) {
    const float *restrict m3 = row_at(buf, lo, hi, y - 3, planes, p, wp), *restrict m2 = row_at(buf, lo, hi, y - 2, planes, p, wp);
    const float *restrict m1 = row_at(buf, lo, hi, y - 1, planes, p, wp), *restrict c0 = row_at(buf, lo, hi, y, planes, p, wp);
    const float *restrict p1 = row_at(buf, lo, hi, y + 1, planes, p, wp), *restrict p2 = row_at(buf, lo, hi, y + 2, planes, p, wp);
    const float *restrict p3 = row_at(buf, lo, hi, y + 3, planes, p, wp);
    if (rmax >= 3)
        for (int j = 0; j < wp; j++) {
            float a = m1[j] + c0[j] + p1[j];
            v1[j] = a;
            a += m2[j] + p2[j];
            v2[j] = a;
            v3[j] = a + m3[j] + p3[j];
        }
    else if (rmax == 2)
        for (int j = 0; j < wp; j++) {
            float a = m1[j] + c0[j] + p1[j];
            v1[j] = a;
            v2[j] = a + m2[j] + p2[j];
        }
    else
        for (int j = 0; j < wp; j++) v1[j] = m1[j] + c0[j] + p1[j];
}

/* out[j] = sum of in[j - r .. j + r] for r = 1, 2, 3 (in: a padded row, from the column at j = 0) */
static void hsum(const float *restrict in, int w, int r, float *restrict out) {
    if (r == 1)
        for (int j = 0; j < w; j++) out[j] = in[j - 1] + in[j] + in[j + 1];
    else if (r == 2)
        for (int j = 0; j < w; j++) out[j] = (in[j - 1] + in[j] + in[j + 1]) + (in[j - 2] + in[j + 2]);
    else
        for (int j = 0; j < w; j++) out[j] = (in[j - 1] + in[j] + in[j + 1]) + (in[j - 2] + in[j + 2]) + (in[j - 3] + in[j + 3]);
}

/* One channel c of the cross-channel fill on one row, guides d = c + 1 and e = c + 2 (mod 3);
 * also the prior (x where unflagged, the fill where flagged) and its square. A function of its
 * own so that the compiler sees the restrict pointers and vectorises it. */
static void cross_fill_row(int width, float eps, float lim, const float *restrict n, const float *restrict c_cd,
                           const float *restrict c_ce, const float *restrict c_de, const float *restrict vd,
                           const float *restrict ve, const float *restrict mc, const float *restrict md,
                           const float *restrict me, const float *restrict xc, const float *restrict xd,
                           const float *restrict xe, const float *restrict fc, const float *restrict fdv,
                           const float *restrict fev, const float *restrict fallback, float *restrict out,
                           float *restrict prior, float *restrict prior2) {
    for (int j = 0; j < width; j++) {
        float a11 = vd[j] + eps, a22 = ve[j] + eps;
        float dd = xd[j] - md[j], de = xe[j] - me[j];
        float one_d = mc[j] + c_cd[j] / a11 * dd;
        float one_e = mc[j] + c_ce[j] / a22 * de;
        float det = a11 * a22 - c_de[j] * c_de[j];
        float two = mc[j] + ((a22 * c_cd[j] - c_de[j] * c_ce[j]) * dd + (a11 * c_ce[j] - c_de[j] * c_cd[j]) * de) / det;
        /* a guide is used where there are enough clean neighbours and it is not flagged
         * (written as float selects: GCC 12 does not vectorise the boolean version) */
        float use_d = n[j] >= lim ? (fdv[j] > 0.5f ? 0.0f : 1.0f) : 0.0f;
        float use_e = n[j] >= lim ? (fev[j] > 0.5f ? 0.0f : 1.0f) : 0.0f;
        float value = use_d > 0.5f ? (use_e > 0.5f ? two : one_d) : (use_e > 0.5f ? one_e : fallback[j]);
        value = value < 0.0f ? 0.0f : value;
        value = value > 1.0f ? 1.0f : value;
        out[j] = value;
        float p = xc[j] + fc[j] * (value - xc[j]);
        prior[j] = p;
        prior2[j] = p * p;
    }
}

/* A rectangle's work buffers, [row][plane][wp]: a = x (3), flags (3), spatial terms, cross terms
 * (rows and columns of the rectangle and its halo); b = spatial fill (3), cross-channel fill (3),
 * prior (3), prior^2 (3) (rows of the rectangle and the contrast's halo). */
enum { NA = 6 + NS + NC, NB = 12 };
typedef struct {
    float *ta, *tb, *v, *sums, *cnt, *tmp;
} Buffers;

/* plane p of a [row][plane][wp] buffer, at row y of a buffer whose first row is lo, at the
 * column that the buffer's column 0 holds (the padding's end) */
#define PLANE(buf, lo, planes, y, p) ((buf) + ((size_t)((y) - (lo)) * (planes) + (p)) * wp + R)

/* Row y's planes of both buffers, from the column at offset off of a buffer row: x, flags
 * (buffer a), spatial fill, cross-channel fill, prior, prior^2 (buffer b). */
typedef struct {
    float *x[3], *flag[3], *spatial[3], *xc[3], *prior[3], *prior2[3];
} RowPlanes;

static RowPlanes row_planes(float *ta, int a0, float *tb, int b0, int wp, int y, int off) {
    RowPlanes rp;
    for (int c = 0; c < 3; c++) {
        rp.x[c] = PLANE(ta, a0, NA, y, c) + off;
        rp.flag[c] = PLANE(ta, a0, NA, y, 3 + c) + off;
        rp.spatial[c] = PLANE(tb, b0, NB, y, c) + off;
        rp.xc[c] = PLANE(tb, b0, NB, y, 3 + c) + off;
        rp.prior[c] = PLANE(tb, b0, NB, y, 6 + c) + off;
        rp.prior2[c] = PLANE(tb, b0, NB, y, 9 + c) + off;
    }
    return rp;
}

/* Outputs of rows [y0, y1), columns [x0, x1) of the image; the halo is recomputed. */
static void prefix_rect(const float *x, int height, int width, int y0, int y1, int x0, int x1,
                        const int *windows, int n_windows, float eps, int min_clean, Buffers *bf,
                        void *features, int features_bf16, float *flag_out, float *spatial_out, float *xc_out,
                        float *contrast_out) {
    /* rows and columns of the terms (a), of the fills (b) */
    const int a0 = y0 - R - RC < 0 ? 0 : y0 - R - RC, a1 = y1 + R + RC > height ? height : y1 + R + RC;
    const int b0 = y0 - RC < 0 ? 0 : y0 - RC, b1 = y1 + RC > height ? height : y1 + RC;
    const int ca0 = x0 - R - RC < 0 ? 0 : x0 - R - RC, ca1 = x1 + R + RC > width ? width : x1 + R + RC;
    const int cb0 = x0 - RC < 0 ? 0 : x0 - RC, cb1 = x1 + RC > width ? width : x1 + RC;
    const int wa = ca1 - ca0, wb = cb1 - cb0, wo = x1 - x0;
    const int wp = wa + 2 * R;  /* a padded buffer row; zeros outside the image */
    const int ob = cb0 - ca0, oo = x0 - ca0;  /* where columns cb0 and x0 are in a buffer row */
    float *ta = bf->ta, *tb = bf->tb, *v = bf->v, *sums = bf->sums, *cnt = bf->cnt, *tmp = bf->tmp;
    memset(tb, 0, sizeof(float) * (size_t)(b1 - b0) * NB * wp);
    for (int y = a0; y < a1; y++)
        for (int p = 0; p < NA; p++) {
            float *row = PLANE(ta, a0, NA, y, p);
            for (int k = 1; k <= R; k++) row[-k] = row[wa - 1 + k] = 0.0f;
        }
    for (int r = 0; r <= R; r++)
        for (int j = 0; j < wb; j++) cnt[r * wb + j] = count1(cb0 + j, width, r);

    /* 1. planar x, flags and the terms to sum */
    for (int y = a0; y < a1; y++) {
        const float *xr = x + ((size_t)y * width + ca0) * 3;
        float *xp[3], *f[3];
        for (int c = 0; c < 3; c++) {
            xp[c] = PLANE(ta, a0, NA, y, c);
            f[c] = PLANE(ta, a0, NA, y, 3 + c);
        }
        for (int j = 0; j < wa; j++) {
            xp[0][j] = xr[3 * j];
            xp[1][j] = xr[3 * j + 1];
            xp[2][j] = xr[3 * j + 2];
        }
        for (int c = 0; c < 3; c++) {
            float *restrict xc = xp[c], *restrict fc = f[c];
            float *restrict sk = PLANE(ta, a0, NA, y, 6 + c), *restrict k = PLANE(ta, a0, NA, y, 9 + c);
            float *restrict sx = PLANE(ta, a0, NA, y, 12 + c);
            for (int j = 0; j < wa; j++) {
                float fv = flag_of(xc[j]);
                fc[j] = fv;
                k[j] = 1.0f - fv;
                sk[j] = xc[j] * (1.0f - fv);
                sx[j] = xc[j];
            }
        }
        float *restrict clean = PLANE(ta, a0, NA, y, 6 + NS);
        const float *restrict k0 = PLANE(ta, a0, NA, y, 9), *restrict k1 = PLANE(ta, a0, NA, y, 10);
        const float *restrict k2 = PLANE(ta, a0, NA, y, 11);
        for (int j = 0; j < wa; j++) clean[j] = k0[j] * k1[j] * k2[j];
        for (int c = 0; c < 3; c++) {
            const float *restrict xc = xp[c], *restrict xn = xp[(c + 1) % 3];
            float *restrict cx = PLANE(ta, a0, NA, y, 7 + NS + c), *restrict cxx = PLANE(ta, a0, NA, y, 10 + NS + c);
            float *restrict cxn = PLANE(ta, a0, NA, y, 13 + NS + c);
            for (int j = 0; j < wa; j++) {
                float t = clean[j] * xc[j];
                cx[j] = t;
                cxx[j] = t * xc[j];
                cxn[j] = t * xn[j];
            }
        }
    }

    /* 2. the fills of the rectangle's rows and the contrast's halo rows (columns cb0..cb1) */
    for (int y = b0; y < b1; y++) {
        /* box sums: vertical (nested radii) then horizontal, one plane at a time */
        float *vr[3] = {v, v + wp, v + 2 * wp};
        for (int p = 0; p < NS; p++) {
            vsums(ta, a0, a1, y, NA, 6 + p, wp, windows[n_windows - 1] / 2, vr[0], vr[1], vr[2]);
            for (int i = 0; i < n_windows; i++) {
                int r = windows[i] / 2;
                if (r == 0) memcpy(sums + (size_t)(i * NS + p) * wb, PLANE(ta, a0, NA, y, 6 + p) + ob, sizeof(float) * wb);
                else hsum(vr[r - 1] + R + ob, wb, r, sums + (size_t)(i * NS + p) * wb);
            }
        }
        for (int p = 0; p < NC; p++) {
            vsums(ta, a0, a1, y, NA, 6 + NS + p, wp, RC, vr[0], vr[1], vr[2]);
            hsum(vr[RC - 1] + R + ob, wb, RC, sums + (size_t)(3 * NS + p) * wb);
        }
        RowPlanes rp = row_planes(ta, a0, tb, b0, wp, y, ob);
        float **xp = rp.x, **f = rp.flag, **sp = rp.spatial, **xo = rp.xc, **pr = rp.prior, **pr2 = rp.prior2;
        /* spatial fill (ihclib.fast_layers.spatial_fill_from_sums) */
        const int last = n_windows - 1;
        for (int c = 0; c < 3; c++) {
            float *restrict fill = sp[c];
            int rl = windows[last] / 2;
            const float cy = count1(y, height, rl), *restrict cc = cnt + rl * wb;
            const float *restrict sxs = sums + (size_t)(last * NS + 6 + c) * wb;
            for (int j = 0; j < wb; j++) fill[j] = rintf(sxs[j] / (cy * cc[j]));
            for (int i = last; i >= 0; i--) {
                int r = windows[i] / 2;
                const float cyi = count1(y, height, r), *restrict ci = cnt + r * wb;
                const float *restrict num = sums + (size_t)(i * NS + c) * wb;
                const float *restrict den = sums + (size_t)(i * NS + 3 + c) * wb;
                for (int j = 0; j < wb; j++) {
                    float q = num[j] / (den[j] != 0.0f ? den[j] : 1.0f);
                    fill[j] = den[j] > 1e-6f * (cyi * ci[j]) ? q : fill[j];
                }
            }
        }
        /* cross-channel fill (ihclib.fast_layers.cross_fill_from_sums) */
        const float *restrict cs = sums + (size_t)3 * NS * wb;
        float *restrict inv = tmp, *mu[3], *var[3], *cr[3];
        for (int c = 0; c < 3; c++) {
            mu[c] = tmp + (size_t)(1 + c) * wb;
            var[c] = tmp + (size_t)(4 + c) * wb;
            cr[c] = tmp + (size_t)(7 + c) * wb;
        }
        const float lim = (float)min_clean - 0.5f;
        for (int j = 0; j < wb; j++) inv[j] = 1.0f / (cs[j] >= lim ? cs[j] : 1.0f);
        for (int c = 0; c < 3; c++) {
            float *restrict m = mu[c], *restrict va = var[c];
            const float *restrict s1 = cs + (size_t)(1 + c) * wb, *restrict s2 = cs + (size_t)(4 + c) * wb;
            for (int j = 0; j < wb; j++) {
                m[j] = s1[j] * inv[j];
                va[j] = s2[j] * inv[j] - m[j] * m[j];
            }
        }
        for (int c = 0; c < 3; c++) {
            float *restrict out = cr[c];
            const float *restrict s3 = cs + (size_t)(7 + c) * wb, *restrict m = mu[c], *restrict mn = mu[(c + 1) % 3];
            for (int j = 0; j < wb; j++) out[j] = s3[j] * inv[j] - m[j] * mn[j];
        }
        for (int c = 0; c < 3; c++) {
            const int d = (c + 1) % 3, e = (c + 2) % 3;
            cross_fill_row(wb, eps, lim, cs, cr[c], cr[e], cr[d], var[d], var[e], mu[c], mu[d], mu[e], xp[c], xp[d],
                           xp[e], f[c], f[d], f[e], sp[c], xo[c], pr[c], pr2[c]);
        }
    }

    /* 3. the outputs of the rectangle: contrast sums, features, fills (interleaved) */
    for (int y = y0; y < y1; y++) {
        float *csum = tmp;  /* 6 planes of wo */
        for (int p = 0; p < 6; p++) {
            vsums(tb, b0, b1, y, NB, 6 + p, wp, RC, v, v + wp, v + 2 * wp);
            hsum(v + wp + R + oo, wo, RC, csum + (size_t)p * wo);
        }
        RowPlanes rp = row_planes(ta, a0, tb, b0, wp, y, oo);
        float **xp = rp.x, **f = rp.flag, **sp = rp.spatial, **xo = rp.xc, **pr = rp.prior;
        const size_t at = (size_t)y * width + x0;
        float *flo = flag_out + at * 3, *spo = spatial_out + at * 3;
        float *xco = xc_out + at * 3, *co = contrast_out + at * 6;
        float *fo32 = (float *)features + at * FEATURES;
        uint16_t *fo16 = (uint16_t *)features + at * FEATURES;
        for (int j = 0; j < wo; j++) {
            float fe[FEATURES];  /* prior (3), spatial prior (3), flags (3), same extreme, x (3) */
            fe[9] = f[0][j] * f[1][j] * f[2][j] * (1.0f - fabsf(xp[0][j] - xp[1][j])) * (1.0f - fabsf(xp[1][j] - xp[2][j]));
            for (int c = 0; c < 3; c++) {
                float xv = xp[c][j], fv = f[c][j], s = sp[c][j];
                fe[c] = pr[c][j];
                fe[3 + c] = xv + fv * (s - xv);
                fe[6 + c] = fv;
                fe[10 + c] = xv;
                flo[3 * j + c] = fv;
                spo[3 * j + c] = s;
                xco[3 * j + c] = xo[c][j];
            }
            if (features_bf16)
                for (int k = 0; k < FEATURES; k++) fo16[FEATURES * j + k] = to_bf16(fe[k]);
            else
                for (int k = 0; k < FEATURES; k++) fo32[FEATURES * j + k] = fe[k];
            for (int p = 0; p < 6; p++) co[6 * j + p] = csum[(size_t)p * wo + j];
        }
    }
}

/* Rows [y0, y1) of the outputs of one (height, width, 3) image, in rectangles of block_rows x
 * block_cols (each with its halo, so that its work buffers stay in the core's cache). 0: done;
 * -1: unsupported windows; -2: out of memory. */
int ihclib_prefix_rows(const float *x, int height, int width, int y0, int y1, int block_rows, int block_cols,
                       const int *windows, int n_windows, float eps, int min_clean, void *features,
                       int features_bf16, float *flag_out, float *spatial_out, float *xc_out, float *contrast_out) {
    if (n_windows < 1 || n_windows > 3 || block_rows < 1 || block_cols < 1) return -1;
    for (int i = 0; i < n_windows; i++)
        if (windows[i] % 2 == 0 || windows[i] / 2 > R || (i && windows[i] <= windows[i - 1])) return -1;
    const int wp = block_cols + 2 * (R + RC) + 2 * R, rows = block_rows + 2 * (R + RC), cols = block_cols + 2 * RC;
    if (wp > (int)(sizeof ZERO_ROW / sizeof ZERO_ROW[0])) return -1;
    Buffers bf;
    bf.ta = malloc(sizeof(float) * (size_t)rows * NA * wp);
    bf.tb = malloc(sizeof(float) * (size_t)rows * NB * wp);
    bf.v = malloc(sizeof(float) * 3 * wp);
    bf.sums = malloc(sizeof(float) * (size_t)(3 * NS + NC) * cols);
    bf.cnt = malloc(sizeof(float) * (size_t)(R + 1) * cols);
    bf.tmp = malloc(sizeof(float) * (size_t)10 * cols);
    int code = 0;
    if (!bf.ta || !bf.tb || !bf.v || !bf.sums || !bf.cnt || !bf.tmp) code = -2;
    for (int ys = y0; !code && ys < y1; ys += block_rows)
        for (int xs = 0; xs < width; xs += block_cols)
            prefix_rect(x, height, width, ys, ys + block_rows < y1 ? ys + block_rows : y1, xs,
                        xs + block_cols < width ? xs + block_cols : width, windows, n_windows, eps, min_clean, &bf,
                        features, features_bf16, flag_out, spatial_out, xc_out, contrast_out);
    free(bf.ta); free(bf.tb); free(bf.v); free(bf.sums); free(bf.cnt); free(bf.tmp);
    return code;
}
