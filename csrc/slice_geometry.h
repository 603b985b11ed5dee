// Sampling geometry of a Fourier slice, shared by the C++ (OpenMP) and CUDA kernels.
//
// Plain C++ (no torch, no CUDA runtime): compiled by g++ for the CPU kernels and by nvcc,
// where CVX_HD marks the functions __host__ __device__. The rule, identical to
// cryovox/core/_slicing_ref.py:
//   image pixel (kx, ky) samples the half volume at p = pad * R^T (kx, ky, 0)^T, i.e.
//   p_j = pad * (R[0][j] kx + R[1][j] ky) for j = x, y, z;
//   if p.x < 0 the Friedel mate -p is sampled and the value conjugated;
//   trilinear weights over the 8 neighbours floor(p) + {0,1}^3, corner c = 4 dz + 2 dy + dx;
//   a neighbour outside the stored grid (x in [0, Dv/2], y, z in [-Dv/2, (Dv-1)/2]) has weight 0.
// Volumes are centred half transforms (Dv, Dv, Dv/2+1) indexed [z][y][x]; images (D, D/2+1).
#pragma once

#include <stdint.h>

#ifdef __CUDACC__
#define CVX_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define CVX_HD inline __attribute__((always_inline))
#else
#define CVX_HD inline
#endif

namespace cryovox {

// One image pixel of the half image inside the radius: flat index into (D, D/2+1), kx, ky.
struct Pixel {
    int32_t index;
    int32_t kx;
    int32_t ky;
};

template <typename T>
struct SlicePoint {
    int64_t idx[8];  // flat index into the half volume; 0 where the corner is outside
    T w[8];          // trilinear weight; 0 where the corner is outside
    T f[3];          // fractional position inside the cell (x, y, z)
    int32_t i0[3];   // array index of corner 0 (x, y, z)
    uint32_t valid;  // bit c set when corner c lies inside the stored grid
    bool flip;       // Friedel mate sampled: conjugate the value
};

// Fill `s` for pixel (kx, ky) and the row-major 3x3 matrix R.
template <typename T>
CVX_HD void slice_point(const T* R, T kx, T ky, int pad, int Dv, SlicePoint<T>& s) {
    const int Dh = Dv / 2 + 1;
    T p[3];
    for (int j = 0; j < 3; ++j) p[j] = (T)pad * (R[j] * kx + R[3 + j] * ky);
    s.flip = p[0] < (T)0;
    if (s.flip) {
        p[0] = -p[0];
        p[1] = -p[1];
        p[2] = -p[2];
    }
    bool finite = true;
    for (int j = 0; j < 3; ++j) {
        // guards the integer conversion against NaN / huge values (treated as outside)
        if (!(p[j] > (T)(-1e9) && p[j] < (T)1e9)) finite = false;
    }
    for (int j = 0; j < 3; ++j) {
        // floor without a libm call: truncate, then step down for negative non-integers
        int32_t i = finite ? (int32_t)p[j] : 0;
        if (finite && (T)i > p[j]) --i;
        s.f[j] = finite ? p[j] - (T)i : (T)0;
        s.i0[j] = i;
    }
    s.i0[1] += Dv / 2;
    s.i0[2] += Dv / 2;
    const T wx[2] = {(T)1 - s.f[0], s.f[0]};
    const T wy[2] = {(T)1 - s.f[1], s.f[1]};
    const T wz[2] = {(T)1 - s.f[2], s.f[2]};
    const bool interior = finite && s.i0[0] >= 0 && s.i0[0] + 1 < Dh && s.i0[1] >= 0 && s.i0[1] + 1 < Dv &&
                          s.i0[2] >= 0 && s.i0[2] + 1 < Dv;
    if (interior) {  // the common case: all 8 corners stored
        const int64_t base = ((int64_t)s.i0[2] * Dv + s.i0[1]) * Dh + s.i0[0];
        const int64_t plane = (int64_t)Dv * Dh;
        s.valid = 0xFFu;
        for (int c = 0; c < 8; ++c) {
            const int dx = c & 1, dy = (c >> 1) & 1, dz = c >> 2;
            s.w[c] = wx[dx] * wy[dy] * wz[dz];
            s.idx[c] = base + dz * plane + dy * Dh + dx;
        }
        return;
    }
    s.valid = 0;
    for (int c = 0; c < 8; ++c) {
        const int dx = c & 1, dy = (c >> 1) & 1, dz = c >> 2;
        const int ix = s.i0[0] + dx, iy = s.i0[1] + dy, iz = s.i0[2] + dz;
        const bool valid = finite && ix >= 0 && ix < Dh && iy >= 0 && iy < Dv && iz >= 0 && iz < Dv;
        s.w[c] = valid ? wx[dx] * wy[dy] * wz[dz] : (T)0;
        s.valid |= valid ? (1u << c) : 0u;
        s.idx[c] = valid ? ((int64_t)iz * Dv + iy) * Dh + ix : 0;
    }
}

// d w_c / d f_j for corner c (0 where the corner is outside).
template <typename T>
CVX_HD T corner_weight_derivative(const SlicePoint<T>& s, int c, int j) {
    if (!((s.valid >> c) & 1u)) return (T)0;
    const int d[3] = {c & 1, (c >> 1) & 1, c >> 2};
    T g = d[j] ? (T)1 : (T)-1;
    for (int a = 0; a < 3; ++a) {
        if (a == j) continue;
        g *= d[a] ? s.f[a] : (T)1 - s.f[a];
    }
    return g;
}

}  // namespace cryovox
