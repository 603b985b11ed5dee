// Fourier-slice projection / backprojection: op schemas and the C++ (OpenMP) kernels.
//
// Ops (namespace cryovox; Python wrappers and autograd in cryovox/core/_ext.py):
//   project(Tensor? basis, Tensor? coeffs, Tensor? bias, Tensor rot, float radius, int pad) -> Tensor
//       (B, D, D/2+1) central slices of sum_k coeffs[b,k] basis[k] + bias; basis (K, Dv, Dv, Dv/2+1),
//       coeffs (B, K) real, bias (Dv, Dv, Dv/2+1), rot (B, 3, 3); D = Dv / pad.
//   project_backward(Tensor grad, Tensor? basis, Tensor? coeffs, Tensor? bias, Tensor rot,
//                    float radius, int pad, bool[4] needs) -> (Tensor, Tensor, Tensor, Tensor)
//       gradients for (basis, coeffs, bias, rot); an empty tensor where not needed.
//   backproject(Tensor images, Tensor rot, Tensor? weights, float radius, int pad) -> (Tensor, Tensor)
//       (data, weight), the adjoint of project; weights None counts 1 per pixel.
// The sampling rule is in slice_geometry.h. Complex tensors are read as interleaved (re, im).
//
// Parallelism and determinism: the forward and the per-image reductions (coeffs, rotation
// gradients) are parallel over pixels / images and write disjoint outputs. The scatters
// (basis / bias gradients, backprojection) give each thread a slab of z planes it alone writes
// (slabs balanced by a histogram of the work); every thread scans all items in order and applies
// the corners in its slab: no atomics, no lost updates, and every voxel sums its contributions
// in ascending (image, pixel) order, so results are bitwise identical run to run and for any
// number of threads.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "slice_geometry.h"
#include "slicing_host.h"

// The kernels below never rely on floating-point exception flags: letting GCC assume that FP
// operations do not trap allows it to if-convert (and so vectorise) loops such as geo_block's.
// Results are unchanged (no value-changing transformation is enabled by this).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

namespace cryovox {
namespace {

using host::Geometry;
using host::real_mut_ptr;
using host::real_ptr;

// Items (image, pixel) handled by one scatter pass; bounds its memory (per item: geometry, 20-32 bytes).
constexpr int64_t kScatterItems = int64_t(1) << 21;
constexpr int64_t kScatterItemsSerial = int64_t(1) << 15;

// Below this many (image, pixel) items a call runs on one thread: starting a parallel region
// costs more than it saves, and on an oversubscribed machine it can cost far more.
constexpr int64_t kParallelItems = int64_t(1) << 14;

int num_threads() { return std::max(1, at::get_num_threads()); }
int num_threads(int64_t items) { return items < kParallelItems ? 1 : num_threads(); }

// ---------------------------------------------------------------- kernels
// Hot loops are compiled twice on x86-64 Linux with GCC (AVX2 and baseline, picked at load time
// by target_clones) so that one build runs everywhere and uses wide vectors where they exist.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CVX_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CVX_CLONES
#endif
#if defined(__GNUC__)
#define CVX_INLINE inline __attribute__((always_inline))
#else
#define CVX_INLINE inline
#endif

// Raw inputs shared by the kernels (null where absent). Complex arrays are interleaved (re, im).
template <typename T>
struct Args {
    const T* basis_t;  // (M, K) voxel-major complex
    const T* coeffs;   // (B, K) real
    const T* bias;     // (M,) complex
    const T* rot;      // (B, 3, 3)
    const Pixel* px;   // (N,) in-radius pixels
    int64_t N;
    Geometry g;
    const T* kx = nullptr;  // (N,) px[n].kx and px[n].ky as T (for the blocked single-volume paths)
    const T* ky = nullptr;
};

// Owner of Args::kx, Args::ky.
template <typename T>
struct PixelCoords {
    std::vector<T> kx, ky;
    explicit PixelCoords(Args<T>& a) : kx((size_t)a.N), ky((size_t)a.N) {
        for (int64_t n = 0; n < a.N; ++n) kx[(size_t)n] = (T)a.px[n].kx, ky[(size_t)n] = (T)a.px[n].ky;
        a.kx = kx.data();
        a.ky = ky.data();
    }
};

template <typename T>
CVX_INLINE void point(const Args<T>& a, int64_t b, const Pixel& q, SlicePoint<T>& s) {
    slice_point<T>(a.rot + 9 * b, (T)q.kx, (T)q.ky, a.g.pad, (int)a.g.Dv, s);
}

// acc[0:2K] = sum_c w[c] * basis_t[idx[c], :] (the K complex values of the 8 corners, weighted)
template <typename T>
CVX_INLINE void weighted_corners(const T* basis_t, int64_t K2, const int64_t* idx, const T* w, T* acc) {
    for (int64_t j = 0; j < K2; ++j) acc[j] = 0;
    for (int c = 0; c < 8; ++c) {
        const T wc = w[c];
        const T* v = basis_t + K2 * idx[c];
        for (int64_t j = 0; j < K2; ++j) acc[j] += wc * v[j];
    }
}

// Prefetch `bytes` bytes from p (a basis row of one voxel, or two adjacent voxels).
CVX_INLINE void prefetch_bytes(const void* p, int64_t bytes, bool write) {
#if defined(__GNUC__)
    const char* c = static_cast<const char*>(p);
    for (int64_t off = 0; off < bytes; off += 64) {
        if (write)
            __builtin_prefetch(c + off, 1);
        else
            __builtin_prefetch(c + off, 0);
    }
#else
    (void)p, (void)bytes, (void)write;
#endif
}

// ----- single-volume paths (K <= 1: one basis volume and/or the bias; the backprojection)
// The geometry of a block of pixels of one image is computed in SoA form by a vectorisable loop,
// with the arithmetic of slice_point (same cell, same fractions, bitwise). Items whose cell lies
// entirely inside the stored grid (all but a thin shell near the volume's Nyquist) then take a
// short path: the trilinear interpolant and its derivatives as nested lerps of the 4 rows of 2
// adjacent voxels; the other items take the general per-corner code.
constexpr int kBlock = 64;

template <typename T>
struct GeoBlock {
    T fx[kBlock], fy[kBlock], fz[kBlock];
    int32_t ix[kBlock], iy[kBlock], iz[kBlock];  // array index of corner 0
    int32_t base[kBlock];                         // flat index of corner 0 (where inside)
    int32_t inside[kBlock], flip[kBlock];
};

// Whether the single-volume paths serve these arguments (flat int32 voxel indices).
template <typename T>
bool single_volume(const Args<T>& a) {
    return a.g.K <= 1 && a.kx != nullptr && a.g.M < (int64_t(1) << 31);
}

template <typename T>
CVX_INLINE void geo_block(const Args<T>& a, int64_t b, int64_t n0, int n, GeoBlock<T>& __restrict__ g) {
    const T* R = a.rot + 9 * b;
    const T R0 = R[0], R1 = R[1], R2 = R[2], R3 = R[3], R4 = R[4], R5 = R[5];
    const T* __restrict__ kx = a.kx + n0;
    const T* __restrict__ ky = a.ky + n0;
    const T P = (T)a.g.pad;
    const int32_t Dv = (int32_t)a.g.Dv, Dh = (int32_t)a.g.Dh, half = Dv / 2;
    for (int j = 0; j < n; ++j) {
        T p0 = P * (R0 * kx[j] + R3 * ky[j]);
        T p1 = P * (R1 * kx[j] + R4 * ky[j]);
        T p2 = P * (R2 * kx[j] + R5 * ky[j]);
        const bool fl = p0 < (T)0;
        p0 = fl ? -p0 : p0;
        p1 = fl ? -p1 : p1;
        p2 = fl ? -p2 : p2;
        const bool fin = (p0 > (T)(-1e9)) & (p0 < (T)1e9) & (p1 > (T)(-1e9)) & (p1 < (T)1e9) & (p2 > (T)(-1e9)) &
                         (p2 < (T)1e9);
        p0 = fin ? p0 : (T)0;
        p1 = fin ? p1 : (T)0;
        p2 = fin ? p2 : (T)0;
        int32_t i0 = (int32_t)p0, i1 = (int32_t)p1, i2 = (int32_t)p2;
        i0 -= (T)i0 > p0 ? 1 : 0;
        i1 -= (T)i1 > p1 ? 1 : 0;
        i2 -= (T)i2 > p2 ? 1 : 0;
        g.fx[j] = p0 - (T)i0;
        g.fy[j] = p1 - (T)i1;
        g.fz[j] = p2 - (T)i2;
        i1 += half;
        i2 += half;
        g.ix[j] = i0;
        g.iy[j] = i1;
        g.iz[j] = i2;
        g.inside[j] = fin & (i0 >= 0) & (i0 + 1 < Dh) & (i1 >= 0) & (i1 + 1 < Dv) & (i2 >= 0) & (i2 + 1 < Dv);
        g.flip[j] = fl;
        g.base[j] = (int32_t)(((uint32_t)i2 * (uint32_t)Dv + (uint32_t)i1) * (uint32_t)Dh + (uint32_t)i0);
    }
}

// Trilinear value of a complex volume at a fully stored cell: v points at corner 0 (interleaved
// re, im), sy / sz are the strides of y and z in T. Rows r = 2 dz + dy hold corners dx = 0, 1.
template <typename T>
CVX_INLINE void cell_value(const T* v, int64_t sy, int64_t sz, T fx, T fy, T fz, T* val) {
    T a[4][2];
    for (int r = 0; r < 4; ++r) {
        const T* q = v + (r >> 1) * sz + (r & 1) * sy;
        a[r][0] = q[0] + fx * (q[2] - q[0]);
        a[r][1] = q[1] + fx * (q[3] - q[1]);
    }
    for (int c = 0; c < 2; ++c) {
        const T b0 = a[0][c] + fy * (a[1][c] - a[0][c]), b1 = a[2][c] + fy * (a[3][c] - a[2][c]);
        val[c] = b0 + fz * (b1 - b0);
    }
}

// The same plus the derivatives d[j] of the interpolant with respect to the fraction f_j.
template <typename T>
CVX_INLINE void cell_value_grad(const T* v, int64_t sy, int64_t sz, T fx, T fy, T fz, T* val, T (*d)[2]) {
    T a[4][2], ax[4][2];
    for (int r = 0; r < 4; ++r) {
        const T* q = v + (r >> 1) * sz + (r & 1) * sy;
        for (int c = 0; c < 2; ++c) {
            ax[r][c] = q[2 + c] - q[c];
            a[r][c] = q[c] + fx * ax[r][c];
        }
    }
    for (int c = 0; c < 2; ++c) {
        const T by0 = a[1][c] - a[0][c], by1 = a[3][c] - a[2][c];
        const T b0 = a[0][c] + fy * by0, b1 = a[2][c] + fy * by1;
        const T bx0 = ax[0][c] + fy * (ax[1][c] - ax[0][c]), bx1 = ax[2][c] + fy * (ax[3][c] - ax[2][c]);
        d[2][c] = b1 - b0;
        val[c] = b0 + fz * d[2][c];
        d[1][c] = by0 + fz * (by1 - by0);
        d[0][c] = bx0 + fz * (bx1 - bx0);
    }
}

// Prefetch (for reading) the 4 rows of a cell.
template <typename T>
CVX_INLINE void prefetch_cell(const T* v, int64_t sy, int64_t sz) {
    prefetch_bytes(v, 4 * (int64_t)sizeof(T), false);
    prefetch_bytes(v + sy, 4 * (int64_t)sizeof(T), false);
    prefetch_bytes(v + sz, 4 * (int64_t)sizeof(T), false);
    prefetch_bytes(v + sz + sy, 4 * (int64_t)sizeof(T), false);
}

// ----- forward: items [begin, end) of the flattened (image, pixel) range
// Single-volume forward: blocks of pixels of one image (see geo_block).
template <typename T>
CVX_INLINE void project_items_single(const Args<T>& a, T* out, int64_t begin, int64_t end) {
    const int64_t N = a.N, img = a.g.D * a.g.Dimg_half, sy = 2 * a.g.Dh, sz = 2 * a.g.Dv * a.g.Dh;
    constexpr int ahead = 4;  // prefetch distance (items)
    GeoBlock<T> G;
    for (int64_t it = begin; it < end;) {
        const int64_t b = it / N, n0 = it - b * N;
        const int n = (int)std::min<int64_t>({(int64_t)kBlock, N - n0, end - it});
        geo_block(a, b, n0, n, G);
        const T c0 = a.basis_t ? a.coeffs[b] : (T)0;
        T* ob = out + 2 * b * img;
        for (int j = 0; j < n; ++j) {
            if (j + ahead < n && G.inside[j + ahead]) {
                const int64_t o = 2 * (int64_t)G.base[j + ahead];
                if (a.basis_t) prefetch_cell(a.basis_t + o, sy, sz);
                if (a.bias) prefetch_cell(a.bias + o, sy, sz);
            }
            T re = 0, im = 0;
            if (G.inside[j]) {
                const int64_t o = 2 * (int64_t)G.base[j];
                T v[2];
                if (a.basis_t) {
                    cell_value(a.basis_t + o, sy, sz, G.fx[j], G.fy[j], G.fz[j], v);
                    re = c0 * v[0];
                    im = c0 * v[1];
                }
                if (a.bias) {
                    cell_value(a.bias + o, sy, sz, G.fx[j], G.fy[j], G.fz[j], v);
                    re += v[0];
                    im += v[1];
                }
            } else {  // a corner outside the stored grid: the general per-corner sum
                SlicePoint<T> s;
                point(a, b, a.px[n0 + j], s);
                if (a.basis_t) {
                    T sr = 0, si = 0;
                    for (int c = 0; c < 8; ++c) {
                        sr += s.w[c] * a.basis_t[2 * s.idx[c]];
                        si += s.w[c] * a.basis_t[2 * s.idx[c] + 1];
                    }
                    re = c0 * sr;
                    im = c0 * si;
                }
                if (a.bias)
                    for (int c = 0; c < 8; ++c) {
                        re += s.w[c] * a.bias[2 * s.idx[c]];
                        im += s.w[c] * a.bias[2 * s.idx[c] + 1];
                    }
            }
            T* o = ob + 2 * (int64_t)a.px[n0 + j].index;
            o[0] = re;
            o[1] = G.flip[j] ? -im : im;
        }
        it += n;
    }
}

template <typename T>
CVX_INLINE void project_items(const Args<T>& a, T* out, int64_t begin, int64_t end, T* acc) {
    if (single_volume(a)) {
        project_items_single(a, out, begin, end);
        return;
    }
    const int64_t K = a.g.K, K2 = 2 * K, N = a.N, img = a.g.D * a.g.Dimg_half;
    int64_t b = begin / N, n = begin - b * N;
    // software pipeline: the next item's corners are prefetched while this one is summed
    // (with K > 1 each corner is 8K bytes of basis, usually outside the caches)
    SlicePoint<T> nxt;
    if (begin < end) point(a, b, a.px[n], nxt);
    for (int64_t it = begin; it < end; ++it, ++n) {
        if (n == N) {
            n = 0;
            ++b;
        }
        const Pixel q = a.px[n];
        const SlicePoint<T> s = nxt;
        if (it + 1 < end) {
            const int64_t n1 = n + 1 == N ? 0 : n + 1, b1 = n + 1 == N ? b + 1 : b;
            point(a, b1, a.px[n1], nxt);
            for (int c = 0; c < 8; c += 2) {  // corners c, c+1 are adjacent voxels
                if (a.basis_t) prefetch_bytes(a.basis_t + K2 * nxt.idx[c], 2 * K2 * (int64_t)sizeof(T), false);
                if (a.bias) prefetch_bytes(a.bias + 2 * nxt.idx[c], 4 * (int64_t)sizeof(T), false);
            }
        }
        T re = 0, im = 0;
        if (a.basis_t && K == 1) {
            T sr = 0, si = 0;
            for (int c = 0; c < 8; ++c) {
                sr += s.w[c] * a.basis_t[2 * s.idx[c]];
                si += s.w[c] * a.basis_t[2 * s.idx[c] + 1];
            }
            re = a.coeffs[b] * sr;
            im = a.coeffs[b] * si;
        } else if (a.basis_t) {
            weighted_corners(a.basis_t, K2, s.idx, s.w, acc);
            const T* cf = a.coeffs + b * K;
#pragma omp simd reduction(+ : re, im)
            for (int64_t k = 0; k < K; ++k) {
                re += cf[k] * acc[2 * k];
                im += cf[k] * acc[2 * k + 1];
            }
        }
        if (a.bias) {
            for (int c = 0; c < 8; ++c) {
                re += s.w[c] * a.bias[2 * s.idx[c]];
                im += s.w[c] * a.bias[2 * s.idx[c] + 1];
            }
        }
        T* o = out + 2 * (b * img + q.index);
        o[0] = re;
        o[1] = s.flip ? -im : im;
    }
}
CVX_CLONES void project_items_c(const Args<float>& a, float* out, int64_t b, int64_t e, float* acc) {
    project_items<float>(a, out, b, e, acc);
}
CVX_CLONES void project_items_c(const Args<double>& a, double* out, int64_t b, int64_t e, double* acc) {
    project_items<double>(a, out, b, e, acc);
}

template <typename T>
void project_kernel(const Args<T>& a, T* out) {
    const int64_t total = a.g.B * a.N, block = 512;
    const int64_t nblocks = (total + block - 1) / block;
#pragma omp parallel num_threads(num_threads(total))
    {
        std::vector<T> acc(2 * std::max<int64_t>(a.g.K, 1));
#pragma omp for schedule(static)
        for (int64_t i = 0; i < nblocks; ++i)
            project_items_c(a, out, i * block, std::min(total, (i + 1) * block), acc.data());
    }
}

// ----- per-image gradient reductions
// grad_coeffs[b,k] = sum_n Re(conj(g') sum_c w_c basis[c,k]);
// grad_rot[b]: dL/dp_j = Re(conj(g') sum_c dw_c/df_j V_c), V_c = sum_k coeffs[b,k] basis[c,k] + bias[c],
// p_j = s pad (R[0][j] kx + R[1][j] ky), s = -1 where the mate was sampled; g' = grad, conjugated there.
// Single-volume coefficient / rotation gradients of image b (see geo_block): V = c0 basis + bias.
template <typename T>
CVX_INLINE void grads_image_single(const Args<T>& a, const T* grad, int64_t b, T* gc, T* gr) {
    const int64_t N = a.N, img = a.g.D * a.g.Dimg_half, sy = 2 * a.g.Dh, sz = 2 * a.g.Dv * a.g.Dh;
    const bool basis = a.basis_t != nullptr;
    const T c0 = basis ? a.coeffs[b] : (T)0, pad = (T)a.g.pad;
    constexpr int ahead = 4;
    T gc0 = 0, r6[6] = {0, 0, 0, 0, 0, 0};
    const T* gb = grad + 2 * b * img;
    GeoBlock<T> G;
    for (int64_t n0 = 0; n0 < N; n0 += kBlock) {
        const int n = (int)std::min<int64_t>(kBlock, N - n0);
        geo_block(a, b, n0, n, G);
        for (int j = 0; j < n; ++j) {
            if (j + ahead < n && G.inside[j + ahead]) {
                const int64_t o = 2 * (int64_t)G.base[j + ahead];
                if (basis) prefetch_cell(a.basis_t + o, sy, sz);
                if (a.bias && gr) prefetch_cell(a.bias + o, sy, sz);
            }
            const Pixel q = a.px[n0 + j];
            const T* gp = gb + 2 * (int64_t)q.index;
            if (gp[0] == (T)0 && gp[1] == (T)0) continue;
            const T gre = gp[0], gim = G.flip[j] ? -gp[1] : gp[1];
            T val[2] = {0, 0}, d[3][2] = {{0, 0}, {0, 0}, {0, 0}};  // basis value; derivatives of V
            if (G.inside[j]) {
                const int64_t o = 2 * (int64_t)G.base[j];
                const T fx = G.fx[j], fy = G.fy[j], fz = G.fz[j];
                if (basis) {
                    if (gr) {
                        cell_value_grad(a.basis_t + o, sy, sz, fx, fy, fz, val, d);
                        for (int k = 0; k < 3; ++k) d[k][0] *= c0, d[k][1] *= c0;
                    } else {
                        cell_value(a.basis_t + o, sy, sz, fx, fy, fz, val);
                    }
                }
                if (gr && a.bias) {
                    T bv[2], bd[3][2];
                    cell_value_grad(a.bias + o, sy, sz, fx, fy, fz, bv, bd);
                    for (int k = 0; k < 3; ++k) d[k][0] += bd[k][0], d[k][1] += bd[k][1];
                }
            } else {  // a corner outside the stored grid: per-corner sums (outside corners count 0)
                SlicePoint<T> s;
                point(a, b, q, s);
                for (int c = 0; c < 8; ++c) {
                    T vr = 0, vi = 0;
                    if (basis) {
                        const T* v = a.basis_t + 2 * s.idx[c];
                        val[0] += s.w[c] * v[0];
                        val[1] += s.w[c] * v[1];
                        vr = c0 * v[0];
                        vi = c0 * v[1];
                    }
                    if (gr && a.bias) {
                        vr += a.bias[2 * s.idx[c]];
                        vi += a.bias[2 * s.idx[c] + 1];
                    }
                    if (gr && ((s.valid >> c) & 1u))
                        for (int k = 0; k < 3; ++k) {
                            const T dw = corner_weight_derivative(s, c, k);
                            d[k][0] += dw * vr;
                            d[k][1] += dw * vi;
                        }
                }
            }
            gc0 += gre * val[0] + gim * val[1];
            if (gr) {
                const T sgn = G.flip[j] ? (T)-1 : (T)1;
                for (int k = 0; k < 3; ++k) {
                    const T dLdp = sgn * pad * (gre * d[k][0] + gim * d[k][1]);
                    r6[k] += dLdp * a.kx[n0 + j];
                    r6[3 + k] += dLdp * a.ky[n0 + j];
                }
            }
        }
    }
    if (gc) gc[0] = gc0;
    if (gr) {
        for (int j = 0; j < 6; ++j) gr[j] = r6[j];
        gr[6] = gr[7] = gr[8] = 0;
    }
}

template <typename T>
CVX_INLINE void grads_image(const Args<T>& a, const T* grad, int64_t b, T* gc, T* gr, T* acc) {
    if (single_volume(a)) {
        grads_image_single(a, grad, b, gc, gr);
        return;
    }
    const int64_t K = a.g.K, K2 = 2 * K, img = a.g.D * a.g.Dimg_half;
    const bool basis = a.basis_t != nullptr;
    const T* cf = basis ? a.coeffs + b * K : nullptr;
    if (gc)
        for (int64_t k = 0; k < K; ++k) gc[k] = 0;
    T r6[6] = {0, 0, 0, 0, 0, 0};
    SlicePoint<T> nxt;
    if (a.N > 0) point(a, b, a.px[0], nxt);
    for (int64_t n = 0; n < a.N; ++n) {
        const Pixel q = a.px[n];
        const SlicePoint<T> s = nxt;
        if (n + 1 < a.N) {  // prefetch the next pixel's corners (see project_items)
            point(a, b, a.px[n + 1], nxt);
            for (int c = 0; c < 8; c += 2) {
                if (basis) prefetch_bytes(a.basis_t + K2 * nxt.idx[c], 2 * K2 * (int64_t)sizeof(T), false);
                if (a.bias) prefetch_bytes(a.bias + 2 * nxt.idx[c], 4 * (int64_t)sizeof(T), false);
            }
        }
        const T* gp = grad + 2 * (b * img + q.index);
        if (gp[0] == (T)0 && gp[1] == (T)0) continue;
        const T gre = gp[0], gim = s.flip ? -gp[1] : gp[1];
        T Vr[8], Vi[8];  // mixed corner values sum_k coeffs[b,k] basis[c,k] + bias[c] (0 outside)
        if (gc)
            for (int64_t j = 0; j < K2; ++j) acc[j] = 0;
        if (basis && K == 1) {  // the common single-volume case without the K loops
            T ar = 0, ai = 0;
            const T c0 = cf[0];
            for (int c = 0; c < 8; ++c) {
                const T* v = a.basis_t + 2 * s.idx[c];
                ar += s.w[c] * v[0];
                ai += s.w[c] * v[1];
                const bool inside = (s.valid >> c) & 1u;
                Vr[c] = inside ? c0 * v[0] : (T)0;
                Vi[c] = inside ? c0 * v[1] : (T)0;
            }
            if (gc) acc[0] = ar, acc[1] = ai;
            if (gr && a.bias)
                for (int c = 0; c < 8; ++c) {
                    const bool inside = (s.valid >> c) & 1u;
                    Vr[c] += inside ? a.bias[2 * s.idx[c]] : (T)0;
                    Vi[c] += inside ? a.bias[2 * s.idx[c] + 1] : (T)0;
                }
        } else
        for (int c = 0; c < 8; ++c) {
            T vr = 0, vi = 0;
            if (basis) {
                const T* v = a.basis_t + K2 * s.idx[c];
                if (gc) {
                    const T w = s.w[c];
                    for (int64_t j = 0; j < K2; ++j) acc[j] += w * v[j];
                }
                if (gr) {
#pragma omp simd reduction(+ : vr, vi)
                    for (int64_t k = 0; k < K; ++k) {
                        vr += cf[k] * v[2 * k];
                        vi += cf[k] * v[2 * k + 1];
                    }
                }
            }
            if (gr && a.bias) {
                vr += a.bias[2 * s.idx[c]];
                vi += a.bias[2 * s.idx[c] + 1];
            }
            const bool inside = (s.valid >> c) & 1u;
            Vr[c] = inside ? vr : (T)0;
            Vi[c] = inside ? vi : (T)0;
        }
        if (gc)
            for (int64_t k = 0; k < K; ++k) gc[k] += gre * acc[2 * k] + gim * acc[2 * k + 1];
        if (gr) {
            // derivatives of the trilinear interpolant in the cell: differences along one axis,
            // weighted by the other two axes' weights (corner c = 4 dz + 2 dy + dx)
            const T wx[2] = {(T)1 - s.f[0], s.f[0]}, wy[2] = {(T)1 - s.f[1], s.f[1]}, wz[2] = {(T)1 - s.f[2], s.f[2]};
            T dr[3] = {0, 0, 0}, di[3] = {0, 0, 0};
            for (int u = 0; u < 2; ++u)
                for (int t = 0; t < 2; ++t) {
                    const int cx = 4 * t + 2 * u, cy = 4 * t + u, cz = 2 * u + t;  // x: (dy=u, dz=t) ...
                    const T ax = wy[u] * wz[t], ay = wx[u] * wz[t], az = wx[t] * wy[u];
                    dr[0] += ax * (Vr[cx + 1] - Vr[cx]);
                    di[0] += ax * (Vi[cx + 1] - Vi[cx]);
                    dr[1] += ay * (Vr[cy + 2] - Vr[cy]);
                    di[1] += ay * (Vi[cy + 2] - Vi[cy]);
                    dr[2] += az * (Vr[cz + 4] - Vr[cz]);
                    di[2] += az * (Vi[cz + 4] - Vi[cz]);
                }
            const T sgn = s.flip ? (T)-1 : (T)1;
            for (int j = 0; j < 3; ++j) {
                const T dLdp = sgn * (T)a.g.pad * (gre * dr[j] + gim * di[j]);
                r6[j] += dLdp * (T)q.kx;
                r6[3 + j] += dLdp * (T)q.ky;
            }
        }
    }
    if (gr) {
        for (int j = 0; j < 6; ++j) gr[j] = r6[j];
        gr[6] = gr[7] = gr[8] = 0;
    }
}
CVX_CLONES void grads_image_c(const Args<float>& a, const float* grad, int64_t b, float* gc, float* gr, float* s) {
    grads_image<float>(a, grad, b, gc, gr, s);
}
CVX_CLONES void grads_image_c(const Args<double>& a, const double* grad, int64_t b, double* gc, double* gr,
                              double* s) {
    grads_image<double>(a, grad, b, gc, gr, s);
}

template <typename T>
void gather_grads_kernel(const Args<T>& a, const T* grad, T* grad_coeffs, T* grad_rot) {
#pragma omp parallel num_threads(num_threads(a.g.B * a.N))
    {
        std::vector<T> scratch(2 * std::max<int64_t>(a.g.K, 1));
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < a.g.B; ++b)
            grads_image_c(a, grad, b, grad_coeffs ? grad_coeffs + b * a.g.K : nullptr,
                          grad_rot ? grad_rot + 9 * b : nullptr, scratch.data());
    }
}

// ----- deterministic scatter
// For every item (b, n) with value v = vals[b, pixel] (conjugated where the mate was sampled):
//   out_k[voxel, k] += w coeffs[b,k] v   (if out_k: (M, K) voxel-major)
//   out_1[voxel]    += w v               (if out_1: (M,))
//   out_w[voxel]    += w wt              (if out_w: (M,), wt = wts[b, pixel] or 1)
template <typename T>
struct ScatterOut {
    const T* vals;
    const T* wts;
    T* out_k;
    T* out_1;
    T* out_w;
};

// Geometry of one item kept between the passes of the scatter (computed once).
template <typename T>
struct ItemGeo {
    T f[3];         // fractional position (x, y, z)
    int32_t i0[3];  // array index of corner 0
    uint8_t valid;  // inside-corner bits (corner c = 4 dz + 2 dy + dx)
    uint8_t flip;   // Friedel mate sampled
};

// Contributions of items [lo, hi) (indices into geo, item = first + i) to the planes [z_lo, z_hi).
template <typename T>
CVX_INLINE void scatter_items(const Args<T>& a, const ScatterOut<T>& o, const ItemGeo<T>* geo, int64_t first,
                              int64_t lo, int64_t hi, int32_t z_lo, int32_t z_hi, T* base) {
    const int64_t K = a.g.K, K2 = 2 * K, N = a.N, img = a.g.D * a.g.Dimg_half;
    const int64_t Dv = a.g.Dv, Dh = a.g.Dh;
    // outputs that fit in a core's L2 cache gain nothing from the prefetch, only its cost
    const int64_t out_bytes = a.g.M * (int64_t)sizeof(T) * ((o.out_k ? K2 : 0) + (o.out_1 ? 2 : 0) + (o.out_w ? 1 : 0));
    const bool prefetch = out_bytes > (int64_t(1) << 21);
    // item first + i is pixel n of image b (counted, not divided: a 64-bit division per item costs)
    int64_t b = (first + lo) / N, n = first + lo - b * N;
    for (int64_t i = lo; i < hi; ++i, n = n + 1 == N ? (++b, 0) : n + 1) {
        const ItemGeo<T>& s = geo[i];
        const int32_t z0 = s.i0[2];
        if (prefetch && i + 2 < hi) {  // prefetch (for writing) the rows item i+2 updates
            const ItemGeo<T>& s2 = geo[i + 2];
            for (int dz = 0; dz < 2; ++dz) {
                const int32_t z = s2.i0[2] + dz;
                if (z < z_lo || z >= z_hi || s2.i0[1] < 0 || s2.i0[1] + 1 >= Dv || s2.i0[0] < 0 || s2.i0[0] + 1 >= Dh)
                    continue;
                const int64_t row = ((int64_t)z * Dv + s2.i0[1]) * Dh + s2.i0[0];
                for (int64_t r : {row, row + Dh}) {
                    if (o.out_k) prefetch_bytes(o.out_k + K2 * r, 2 * K2 * (int64_t)sizeof(T), true);
                    if (o.out_1) prefetch_bytes(o.out_1 + 2 * r, 4 * (int64_t)sizeof(T), true);
                    if (o.out_w) prefetch_bytes(o.out_w + r, 2 * (int64_t)sizeof(T), true);
                }
            }
        }
        if (z0 + 1 < z_lo || z0 >= z_hi || !s.valid) continue;
        const Pixel q = a.px[n];
        const T* vp = o.vals + 2 * (b * img + q.index);
        const T vr = vp[0], vi = s.flip ? -vp[1] : vp[1];
        const T wt = o.wts ? o.wts[b * img + q.index] : (T)1;
        if (K <= 1 && s.valid == 0xFFu) {  // single volume, whole cell stored: 4 rows of 2 voxels
            const T cf0 = o.out_k ? a.coeffs[b] : (T)0, br = cf0 * vr, bi = cf0 * vi;
            const T wx0 = (T)1 - s.f[0], wx1 = s.f[0];
            const T wy[2] = {(T)1 - s.f[1], s.f[1]}, wz[2] = {(T)1 - s.f[2], s.f[2]};
            for (int dz = 0; dz < 2; ++dz) {
                if (z0 + dz < z_lo || z0 + dz >= z_hi) continue;
                const int64_t row0 = ((int64_t)(z0 + dz) * Dv + s.i0[1]) * Dh + s.i0[0];
                for (int dy = 0; dy < 2; ++dy) {
                    const T wyz = wy[dy] * wz[dz], w0 = wx0 * wyz, w1 = wx1 * wyz;
                    const int64_t v = row0 + dy * Dh;
                    if (o.out_k) {
                        T* p = o.out_k + 2 * v;
                        p[0] += w0 * br;
                        p[1] += w0 * bi;
                        p[2] += w1 * br;
                        p[3] += w1 * bi;
                    }
                    if (o.out_1) {
                        T* p = o.out_1 + 2 * v;
                        p[0] += w0 * vr;
                        p[1] += w0 * vi;
                        p[2] += w1 * vr;
                        p[3] += w1 * vi;
                    }
                    if (o.out_w) {
                        o.out_w[v] += w0 * wt;
                        o.out_w[v + 1] += w1 * wt;
                    }
                }
            }
            continue;
        }
        if (o.out_k) {
            const T* cf = a.coeffs + b * K;
            for (int64_t k = 0; k < K; ++k) {
                base[2 * k] = cf[k] * vr;
                base[2 * k + 1] = cf[k] * vi;
            }
        }
        const T wx[2] = {(T)1 - s.f[0], s.f[0]}, wy[2] = {(T)1 - s.f[1], s.f[1]}, wz[2] = {(T)1 - s.f[2], s.f[2]};
        for (int dz = 0; dz < 2; ++dz) {
            if (z0 + dz < z_lo || z0 + dz >= z_hi) continue;
            const int64_t row0 = ((int64_t)(z0 + dz) * Dv + s.i0[1]) * Dh + s.i0[0];
            for (int c4 = 0; c4 < 4; ++c4) {
                const int c = 4 * dz + c4;
                if (!((s.valid >> c) & 1u)) continue;
                const int dx = c4 & 1, dy = c4 >> 1;
                const T w = wx[dx] * wy[dy] * wz[dz];  // same product order as slice_point
                const int64_t v = row0 + dy * Dh + dx;
                if (o.out_k) {
                    T* ok = o.out_k + K2 * v;
                    for (int64_t j = 0; j < K2; ++j) ok[j] += w * base[j];
                }
                if (o.out_1) {
                    o.out_1[2 * v] += w * vr;
                    o.out_1[2 * v + 1] += w * vi;
                }
                if (o.out_w) o.out_w[v] += w * wt;
            }
        }
    }
}
CVX_CLONES void scatter_items_c(const Args<float>& a, const ScatterOut<float>& o, const ItemGeo<float>* geo,
                                int64_t first, int64_t lo, int64_t hi, int32_t z_lo, int32_t z_hi, float* base) {
    scatter_items<float>(a, o, geo, first, lo, hi, z_lo, z_hi, base);
}
CVX_CLONES void scatter_items_c(const Args<double>& a, const ScatterOut<double>& o, const ItemGeo<double>* geo,
                                int64_t first, int64_t lo, int64_t hi, int32_t z_lo, int32_t z_hi, double* base) {
    scatter_items<double>(a, o, geo, first, lo, hi, z_lo, z_hi, base);
}

// Pass 1 of the scatter: geometry of items [lo, hi) (geo is indexed from item `first`) and the
// histogram `cnt` of the z planes they write.
template <typename T>
CVX_INLINE void scatter_geometry(const Args<T>& a, ItemGeo<T>* geo, int64_t first, int64_t lo, int64_t hi,
                                 int64_t* cnt) {
    const int64_t N = a.N;
    GeoBlock<T> G;
    for (int64_t it = lo; it < hi;) {  // blocks of pixels of one image (see geo_block)
        const int64_t b = it / N, n0 = it - b * N;
        const int n = (int)std::min<int64_t>({(int64_t)kBlock, N - n0, hi - it});
        geo_block(a, b, n0, n, G);
        for (int j = 0; j < n; ++j) {
            ItemGeo<T>& gi = geo[it + j - first];
            gi.f[0] = G.fx[j];
            gi.f[1] = G.fy[j];
            gi.f[2] = G.fz[j];
            gi.i0[0] = G.ix[j];
            gi.i0[1] = G.iy[j];
            gi.i0[2] = G.iz[j];
            gi.flip = (uint8_t)G.flip[j];
            uint32_t valid = 0xFFu;
            if (!G.inside[j]) {  // per-corner validity from the general rule
                SlicePoint<T> s;
                point(a, b, a.px[n0 + j], s);
                valid = s.valid;
            }
            gi.valid = (uint8_t)valid;
            if (valid & 0x0Fu) cnt[G.iz[j]] += 4;
            if (valid & 0xF0u) cnt[G.iz[j] + 1] += 4;
        }
        it += n;
    }
}
CVX_CLONES void scatter_geometry_c(const Args<float>& a, ItemGeo<float>* geo, int64_t first, int64_t lo, int64_t hi,
                                   int64_t* cnt) {
    scatter_geometry<float>(a, geo, first, lo, hi, cnt);
}
CVX_CLONES void scatter_geometry_c(const Args<double>& a, ItemGeo<double>* geo, int64_t first, int64_t lo,
                                   int64_t hi, int64_t* cnt) {
    scatter_geometry<double>(a, geo, first, lo, hi, cnt);
}

// Deterministic parallel scatter. Pass 1 (parallel over items) stores each item's geometry and a
// histogram of the z planes it writes. The planes are then cut into one contiguous slab per
// thread with about equal work; in pass 2 every thread scans all items in ascending order and
// applies only the corners in its own slab. Each voxel is written by one thread and receives its
// contributions in ascending (image, pixel) order whatever the number of threads: bitwise
// reproducible, no atomics, no lost updates. Items are processed in chunks to bound memory.
template <typename T>
void scatter_kernel(const Args<T>& a, const ScatterOut<T>& o) {
    const int64_t N = a.N, Dv = a.g.Dv, total = a.g.B * N;
    if (total == 0) return;
    const int T_ = num_threads(total);
    // whole images per pass; on one thread, passes small enough for their geometry to stay in L2
    // (the order in which a voxel receives its contributions does not depend on the chunking)
    const int64_t chunk_items = T_ == 1 ? kScatterItemsSerial : kScatterItems;
    const int64_t per_chunk = std::max<int64_t>(1, chunk_items / N) * N;
    std::vector<int64_t> counts((size_t)T_ * (Dv + 1));
    std::vector<int32_t> cut(T_ + 1);
    // every entry is written by pass 1 before it is read: no zero-initialisation (new[], not vector)
    const int64_t geo_items = std::min(total, per_chunk);
    std::unique_ptr<ItemGeo<T>[]> geo_buf(new ItemGeo<T>[(size_t)geo_items]);
    ItemGeo<T>* geo = geo_buf.get();
    for (int64_t first = 0; first < total; first += per_chunk) {
        const int64_t last = std::min(total, first + per_chunk), n_items = last - first;
        const int64_t span = (n_items + T_ - 1) / T_;
        std::fill(counts.begin(), counts.end(), 0);
        // pass 1: geometry of every item, and per-thread histograms of the planes written
#pragma omp parallel for schedule(static, 1) num_threads(T_)
        for (int t = 0; t < T_; ++t) {
            int64_t* cnt = counts.data() + (size_t)t * (Dv + 1);
            const int64_t lo = first + t * span, hi = std::min(last, first + (t + 1) * span);
            scatter_geometry_c(a, geo, first, lo, hi, cnt);
        }
        // slabs of planes with about equal work (plus a scan cost per plane)
        std::vector<int64_t> work(Dv);
        int64_t all = 0;
        for (int64_t z = 0; z < Dv; ++z) {
            int64_t w = 1;
            for (int t = 0; t < T_; ++t) w += counts[(size_t)t * (Dv + 1) + z];
            work[z] = w;
            all += w;
        }
        cut[0] = 0;
        int64_t run = 0;
        int32_t z = 0;
        for (int t = 1; t < T_; ++t) {
            const int64_t target = all * t / T_;
            while (z < Dv && run + work[z] <= target) run += work[z++];
            cut[t] = z;
        }
        cut[T_] = (int32_t)Dv;
        // pass 2: slab t (planes [cut[t], cut[t+1])) is applied by one thread, whatever the team size
#pragma omp parallel num_threads(T_)
        {
            std::vector<T> base(2 * std::max<int64_t>(a.g.K, 1));
#pragma omp for schedule(static, 1)
            for (int t = 0; t < T_; ++t)
                if (cut[t] < cut[t + 1])
                    scatter_items_c(a, o, geo, first, 0, n_items, cut[t], cut[t + 1], base.data());
        }
    }
}

template <typename T>
Args<T> args_of(const host::ProjectInputs& in) {
    return {real_ptr<T>(in.basis_t), real_ptr<T>(in.coeffs), real_ptr<T>(in.bias), real_ptr<T>(in.rot),
            in.px.data(), (int64_t)in.px.size(), in.g};
}

// ---------------------------------------------------------------- torch entry points
at::Tensor project_cpu(const c10::optional<at::Tensor>& basis, const c10::optional<at::Tensor>& coeffs,
                       const c10::optional<at::Tensor>& bias, const at::Tensor& rot, double radius, int64_t pad) {
    auto in = host::prepare_project(basis, coeffs, bias, rot, radius, pad);
    auto out = at::zeros({in.g.B, in.g.D, in.g.Dimg_half}, in.rot.options().dtype(in.complex_t));
    AT_DISPATCH_FLOATING_TYPES(in.real_t, "cryovox_project", [&] {
        Args<scalar_t> a = args_of<scalar_t>(in);
        const PixelCoords<scalar_t> coords(a);
        project_kernel<scalar_t>(a, real_mut_ptr<scalar_t>(out));
    });
    return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_backward_cpu(
    const at::Tensor& grad_in, const c10::optional<at::Tensor>& basis, const c10::optional<at::Tensor>& coeffs,
    const c10::optional<at::Tensor>& bias, const at::Tensor& rot, double radius, int64_t pad,
    std::array<bool, 4> needs) {
    auto in = host::prepare_project(basis, coeffs, bias, rot, radius, pad);
    const Geometry& g = in.g;
    TORCH_CHECK(grad_in.dim() == 3 && grad_in.size(0) == g.B && grad_in.size(1) == g.D && grad_in.size(2) == g.Dimg_half,
                "cryovox: grad has shape ", grad_in.sizes());
    auto grad = grad_in.to(in.complex_t).contiguous();
    const bool need_basis = needs[0] && in.basis_t.defined(), need_coeffs = needs[1] && in.basis_t.defined();
    const bool need_bias = needs[2] && in.bias.defined(), need_rot = needs[3];
    auto copt = in.rot.options().dtype(in.complex_t);
    at::Tensor g_basis_t, g_coeffs, g_bias, g_rot;
    if (need_basis) g_basis_t = at::zeros({g.M, g.K}, copt);
    if (need_bias) g_bias = at::zeros({g.Dv, g.Dv, g.Dh}, copt);
    if (need_coeffs) g_coeffs = at::zeros({g.B, g.K}, in.rot.options());
    if (need_rot) g_rot = at::zeros({g.B, 3, 3}, in.rot.options());
    AT_DISPATCH_FLOATING_TYPES(in.real_t, "cryovox_project_backward", [&] {
        using T = scalar_t;
        Args<T> a = args_of<T>(in);
        const PixelCoords<T> coords(a);
        if (need_coeffs || need_rot)
            gather_grads_kernel<T>(a, real_ptr<T>(grad), real_mut_ptr<T>(g_coeffs), real_mut_ptr<T>(g_rot));
        if (need_basis || need_bias)
            scatter_kernel<T>(a, {real_ptr<T>(grad), nullptr, real_mut_ptr<T>(g_basis_t), real_mut_ptr<T>(g_bias),
                                  nullptr});
    });
    auto none = [&](const at::TensorOptions& o) { return at::empty({0}, o); };
    return {need_basis ? host::basis_layout(g_basis_t, g) : none(copt), need_coeffs ? g_coeffs : none(in.rot.options()),
            need_bias ? g_bias : none(copt), need_rot ? g_rot : none(in.rot.options())};
}

std::tuple<at::Tensor, at::Tensor> backproject_cpu(const at::Tensor& images, const at::Tensor& rot,
                                                   const c10::optional<at::Tensor>& weights, double radius,
                                                   int64_t pad) {
    auto in = host::prepare_backproject(images, rot, weights, radius, pad);
    const Geometry& g = in.g;
    auto data = at::zeros({g.Dv, g.Dv, g.Dh}, in.images.options());
    auto weight = at::zeros({g.Dv, g.Dv, g.Dh}, in.rot.options());
    AT_DISPATCH_FLOATING_TYPES(in.real_t, "cryovox_backproject", [&] {
        using T = scalar_t;
        Args<T> a{nullptr, nullptr, nullptr, real_ptr<T>(in.rot), in.px.data(), (int64_t)in.px.size(), g};
        const PixelCoords<T> coords(a);
        scatter_kernel<T>(a, {real_ptr<T>(in.images), real_ptr<T>(in.weights), nullptr, real_mut_ptr<T>(data),
                              real_mut_ptr<T>(weight)});
    });
    return {data, weight};
}

// ---------------------------------------------------------------- meta (shape-only) kernels
// Registered for the Meta key: meta tensors, FakeTensorMode and torch.compile (dynamo, AOTAutograd)
// run the ops through these without touching data. Outputs have the shapes, dtypes and strides of
// the CPU / CUDA kernels' outputs; sizes are SymInts so that dynamic shapes trace. Only the checks
// that need no data are made here (the real kernels repeat them and check the rest).
namespace meta {

struct Volume {
    c10::SymInt Dv;
    at::ScalarType complex_t, real_t;
};

Volume project_volume(const c10::optional<at::Tensor>& basis, const c10::optional<at::Tensor>& coeffs,
                      const c10::optional<at::Tensor>& bias, const at::Tensor& rot, int64_t pad) {
    const bool has_basis = basis.has_value() && basis->defined();
    const bool has_bias = bias.has_value() && bias->defined();
    TORCH_CHECK(has_basis || has_bias, "cryovox::project needs a basis, a bias or both");
    const at::Tensor& ref = has_basis ? *basis : *bias;
    TORCH_CHECK(ref.is_complex(), "cryovox: volumes must be complex");
    TORCH_CHECK(rot.dim() == 3, "cryovox: rot must be (B, 3, 3)");
    TORCH_SYM_CHECK(rot.sym_size(1).sym_eq(3) & rot.sym_size(2).sym_eq(3), "cryovox: rot must be (B, 3, 3)");
    TORCH_CHECK(pad >= 1, "cryovox: pad must be >= 1");
    const c10::SymInt Dv = ref.sym_size(-3);
    TORCH_SYM_CHECK((Dv % pad).sym_eq(0), "cryovox: volume box is not a multiple of pad ", pad);
    if (has_basis) {
        host::check_volume_dims(*basis, "basis", true);
        TORCH_CHECK(coeffs.has_value() && coeffs->defined() && coeffs->dim() == 2,
                    "cryovox: coeffs must be (B, K)");
        TORCH_SYM_CHECK(coeffs->sym_size(0).sym_eq(rot.sym_size(0)) & coeffs->sym_size(1).sym_eq(basis->sym_size(0)),
                        "cryovox: coeffs must be (B, K)");
    }
    if (has_bias) {
        host::check_volume_dims(*bias, "bias", false);
        TORCH_CHECK(bias->scalar_type() == ref.scalar_type(), "cryovox: basis and bias dtypes differ");
    }
    return {Dv, ref.scalar_type(), c10::toRealValueType(ref.scalar_type())};
}

at::Tensor project(const c10::optional<at::Tensor>& basis, const c10::optional<at::Tensor>& coeffs,
                   const c10::optional<at::Tensor>& bias, const at::Tensor& rot, double /*radius*/, int64_t pad) {
    const Volume v = project_volume(basis, coeffs, bias, rot, pad);
    const c10::SymInt D = v.Dv / pad;
    return at::empty_symint({rot.sym_size(0), D, D / 2 + 1}, rot.options().dtype(v.complex_t));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_backward(
    const at::Tensor& grad, const c10::optional<at::Tensor>& basis, const c10::optional<at::Tensor>& coeffs,
    const c10::optional<at::Tensor>& bias, const at::Tensor& rot, double /*radius*/, int64_t pad,
    std::array<bool, 4> needs) {
    const Volume v = project_volume(basis, coeffs, bias, rot, pad);
    const c10::SymInt B = rot.sym_size(0), D = v.Dv / pad, Dh = v.Dv / 2 + 1;
    TORCH_CHECK(grad.dim() == 3, "cryovox: grad has shape ", grad.sym_sizes());
    TORCH_SYM_CHECK(grad.sym_size(0).sym_eq(B) & grad.sym_size(1).sym_eq(D) & grad.sym_size(2).sym_eq(D / 2 + 1),
                    "cryovox: grad has shape ", grad.sym_sizes());
    const bool has_basis = basis.has_value() && basis->defined();
    const bool has_bias = bias.has_value() && bias->defined();
    const auto copt = rot.options().dtype(v.complex_t), ropt = rot.options().dtype(v.real_t);
    auto none = [](const at::TensorOptions& o) { return at::empty({0}, o); };
    at::Tensor g_basis = none(copt), g_coeffs = none(ropt), g_bias = none(copt), g_rot = none(ropt);
    if (needs[0] && has_basis) {
        const c10::SymInt K = basis->sym_size(0);
        g_basis = host::basis_layout(at::empty_symint({v.Dv * v.Dv * Dh, K}, copt), K, v.Dv, Dh);
    }
    if (needs[1] && has_basis) g_coeffs = at::empty_symint({B, basis->sym_size(0)}, ropt);
    if (needs[2] && has_bias) g_bias = at::empty_symint({v.Dv, v.Dv, Dh}, copt);
    if (needs[3]) g_rot = at::empty_symint({B, 3, 3}, ropt);
    return {g_basis, g_coeffs, g_bias, g_rot};
}

std::tuple<at::Tensor, at::Tensor> backproject(const at::Tensor& images, const at::Tensor& rot,
                                               const c10::optional<at::Tensor>& weights, double /*radius*/,
                                               int64_t pad) {
    TORCH_CHECK(images.is_complex() && images.dim() == 3, "cryovox: images must be complex (B, D, D/2+1), got ",
                images.sym_sizes());
    TORCH_SYM_CHECK(images.sym_size(2).sym_eq(images.sym_size(1) / 2 + 1),
                    "cryovox: images must be complex (B, D, D/2+1), got ", images.sym_sizes());
    TORCH_CHECK(rot.dim() == 3, "cryovox: rot must be (B, 3, 3)");
    TORCH_SYM_CHECK(rot.sym_size(0).sym_eq(images.sym_size(0)) & rot.sym_size(1).sym_eq(3) & rot.sym_size(2).sym_eq(3),
                    "cryovox: rot must be (B, 3, 3)");
    TORCH_CHECK(pad >= 1, "cryovox: pad must be >= 1");
    if (weights.has_value() && weights->defined())
        TORCH_CHECK(weights->dim() == 3, "cryovox: weights must match images");
    const c10::SymInt Dv = images.sym_size(1) * pad, Dh = Dv / 2 + 1;
    const auto real_t = c10::toRealValueType(images.scalar_type());
    return {at::empty_symint({Dv, Dv, Dh}, images.options()), at::empty_symint({Dv, Dv, Dh}, rot.options().dtype(real_t))};
}

}  // namespace meta

}  // namespace
}  // namespace cryovox

TORCH_LIBRARY(cryovox, m) {
    m.def("project(Tensor? basis, Tensor? coeffs, Tensor? bias, Tensor rot, float radius, int pad) -> Tensor");
    m.def(
        "project_backward(Tensor grad, Tensor? basis, Tensor? coeffs, Tensor? bias, Tensor rot, float radius, "
        "int pad, bool[4] needs) -> (Tensor, Tensor, Tensor, Tensor)");
    m.def("backproject(Tensor images, Tensor rot, Tensor? weights, float radius, int pad) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(cryovox, CPU, m) {
    m.impl("project", &cryovox::project_cpu);
    m.impl("project_backward", &cryovox::project_backward_cpu);
    m.impl("backproject", &cryovox::backproject_cpu);
}

TORCH_LIBRARY_IMPL(cryovox, Meta, m) {
    m.impl("project", &cryovox::meta::project);
    m.impl("project_backward", &cryovox::meta::project_backward);
    m.impl("backproject", &cryovox::meta::backproject);
}

// A Python module with no functions: importing cryovox._C loads the library and registers the ops.
static struct PyModuleDef cryovox_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&cryovox_module); }
