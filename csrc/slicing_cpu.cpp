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
// (basis / bias gradients, backprojection) bucket every (pixel, dz) contribution by the z plane
// it writes to (a stable parallel counting sort), then threads own whole planes: no atomics,
// no lost updates, and every voxel sums its contributions in ascending (image, pixel) order,
// so results are bitwise identical run to run and for any number of threads.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "slice_geometry.h"
#include "slicing_host.h"

namespace cryovox {
namespace {

using host::Geometry;
using host::real_mut_ptr;
using host::real_ptr;

// Items (image, pixel) handled by one scatter pass; bounds the bucket memory (8 bytes each, x2).
constexpr int64_t kScatterItems = int64_t(1) << 22;

// Below this many (image, pixel) items a call runs on one thread: starting a parallel region
// costs more than it saves, and on an oversubscribed machine it can cost far more.
constexpr int64_t kParallelItems = int64_t(1) << 14;

int num_threads() { return std::max(1, at::get_num_threads()); }
int num_threads(int64_t items) { return items < kParallelItems ? 1 : num_threads(); }

// ---------------------------------------------------------------- kernels
// Hot loops are compiled twice on x86-64 Linux with GCC (AVX2 and baseline, picked at load time
// by target_clones) so that one build runs everywhere and uses wide vectors where they exist.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CVX_CLONES __attribute__((target_clones("arch=haswell", "default")))
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

// ----- forward: items [begin, end) of the flattened (image, pixel) range
template <typename T>
CVX_INLINE void project_items(const Args<T>& a, T* out, int64_t begin, int64_t end, T* acc) {
    const int64_t K = a.g.K, K2 = 2 * K, N = a.N, img = a.g.D * a.g.Dimg_half;
    int64_t b = begin / N, n = begin - b * N;
    for (int64_t it = begin; it < end; ++it, ++n) {
        if (n == N) {
            n = 0;
            ++b;
        }
        const Pixel q = a.px[n];
        SlicePoint<T> s;
        point(a, b, q, s);
        T re = 0, im = 0;
        if (a.basis_t) {
            weighted_corners(a.basis_t, K2, s.idx, s.w, acc);
            const T* cf = a.coeffs + b * K;
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
template <typename T>
CVX_INLINE void grads_image(const Args<T>& a, const T* grad, int64_t b, T* gc, T* gr, T* scratch) {
    const int64_t K = a.g.K, K2 = 2 * K, img = a.g.D * a.g.Dimg_half;
    // scratch: acc = sum_c w_c v_c (coeffs); d[j] = sum_c dw_c/df_j v_c, j = 0..2 (rotations)
    T* acc = scratch;
    T* d0 = scratch + K2;
    T* d1 = scratch + 2 * K2;
    T* d2 = scratch + 3 * K2;
    const bool basis = a.basis_t != nullptr;
    const T* cf = basis ? a.coeffs + b * K : nullptr;
    if (gc)
        for (int64_t k = 0; k < K; ++k) gc[k] = 0;
    T r6[6] = {0, 0, 0, 0, 0, 0};
    for (int64_t n = 0; n < a.N; ++n) {
        const Pixel q = a.px[n];
        const T* gp = grad + 2 * (b * img + q.index);
        if (gp[0] == (T)0 && gp[1] == (T)0) continue;
        SlicePoint<T> s;
        point(a, b, q, s);
        const T gre = gp[0], gim = s.flip ? -gp[1] : gp[1];
        T dw[3][8];
        if (gr)
            for (int j = 0; j < 3; ++j)
                for (int c = 0; c < 8; ++c) dw[j][c] = corner_weight_derivative<T>(s, c, j);
        if (basis) {
            // one pass over the 8 corners' K values, all accumulators at once (vectorisable axpys)
            if (gc)
                for (int64_t j = 0; j < K2; ++j) acc[j] = 0;
            if (gr)
                for (int64_t j = 0; j < K2; ++j) d0[j] = d1[j] = d2[j] = 0;
            for (int c = 0; c < 8; ++c) {
                const T* v = a.basis_t + K2 * s.idx[c];
                if (gc) {
                    const T w = s.w[c];
                    for (int64_t j = 0; j < K2; ++j) acc[j] += w * v[j];
                }
                if (gr) {
                    const T w0 = dw[0][c], w1 = dw[1][c], w2 = dw[2][c];
                    for (int64_t j = 0; j < K2; ++j) {
                        d0[j] += w0 * v[j];
                        d1[j] += w1 * v[j];
                        d2[j] += w2 * v[j];
                    }
                }
            }
            if (gc)
                for (int64_t k = 0; k < K; ++k) gc[k] += gre * acc[2 * k] + gim * acc[2 * k + 1];
        }
        if (gr) {
            const T sgn = s.flip ? (T)-1 : (T)1;
            const T* dj[3] = {d0, d1, d2};
            for (int j = 0; j < 3; ++j) {
                T dr = 0, di = 0;
                if (basis) {
                    for (int64_t k = 0; k < K; ++k) {
                        dr += cf[k] * dj[j][2 * k];
                        di += cf[k] * dj[j][2 * k + 1];
                    }
                }
                if (a.bias) {
                    for (int c = 0; c < 8; ++c) {
                        dr += dw[j][c] * a.bias[2 * s.idx[c]];
                        di += dw[j][c] * a.bias[2 * s.idx[c] + 1];
                    }
                }
                const T dLdp = sgn * (T)a.g.pad * (gre * dr + gim * di);
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
        std::vector<T> scratch(8 * std::max<int64_t>(a.g.K, 1));  // 4 accumulators of 2K
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

// Contributions of entries [e0, e1) of one plane; entry = 2 * item + dz.
template <typename T>
CVX_INLINE void scatter_entries(const Args<T>& a, const ScatterOut<T>& o, const int64_t* entries, int64_t e0,
                                int64_t e1, T* base) {
    const int64_t K = a.g.K, K2 = 2 * K, N = a.N, img = a.g.D * a.g.Dimg_half;
    for (int64_t e = e0; e < e1; ++e) {
        const int64_t it = entries[e] >> 1;
        const int dz = (int)(entries[e] & 1);
        const int64_t b = it / N;
        const Pixel q = a.px[it - b * N];
        SlicePoint<T> s;
        point(a, b, q, s);
        const T* vp = o.vals + 2 * (b * img + q.index);
        const T vr = vp[0], vi = s.flip ? -vp[1] : vp[1];
        const T wt = o.wts ? o.wts[b * img + q.index] : (T)1;
        if (o.out_k) {
            const T* cf = a.coeffs + b * K;
            for (int64_t k = 0; k < K; ++k) {
                base[2 * k] = cf[k] * vr;
                base[2 * k + 1] = cf[k] * vi;
            }
        }
        for (int c = 4 * dz; c < 4 * dz + 4; ++c) {
            if (!((s.valid >> c) & 1u)) continue;
            const int64_t v = s.idx[c];
            const T w = s.w[c];
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
CVX_CLONES void scatter_entries_c(const Args<float>& a, const ScatterOut<float>& o, const int64_t* en, int64_t e0,
                                  int64_t e1, float* base) {
    scatter_entries<float>(a, o, en, e0, e1, base);
}
CVX_CLONES void scatter_entries_c(const Args<double>& a, const ScatterOut<double>& o, const int64_t* en, int64_t e0,
                                  int64_t e1, double* base) {
    scatter_entries<double>(a, o, en, e0, e1, base);
}

template <typename T>
void scatter_kernel(const Args<T>& a, const ScatterOut<T>& o) {
    const int64_t N = a.N, Dv = a.g.Dv, total = a.g.B * N;
    if (total == 0) return;
    const int T_ = num_threads(total);
    const int64_t per_chunk = std::max<int64_t>(1, kScatterItems / N) * N;  // whole images per pass
    std::vector<int64_t> entries;
    std::vector<int64_t> counts((size_t)T_ * Dv), offs((size_t)T_ * Dv), start(Dv + 1);
    std::vector<int32_t> zfirst;
    std::vector<uint8_t> zvalid;
    for (int64_t first = 0; first < total; first += per_chunk) {
        const int64_t last = std::min(total, first + per_chunk), n_items = last - first;
        const int64_t span = (n_items + T_ - 1) / T_;
        std::fill(counts.begin(), counts.end(), 0);
        zfirst.resize((size_t)n_items);
        zvalid.resize((size_t)n_items);
        // pass 1: first plane and inside-corners of every item; counts per (thread chunk, plane)
#pragma omp parallel for schedule(static, 1) num_threads(T_)
        for (int t = 0; t < T_; ++t) {
            int64_t* cnt = counts.data() + (size_t)t * Dv;
            const int64_t lo = first + t * span, hi = std::min(last, first + (t + 1) * span);
            for (int64_t it = lo; it < hi; ++it) {
                const int64_t b = it / N;
                SlicePoint<T> s;
                point(a, b, a.px[it - b * N], s);
                zfirst[it - first] = s.i0[2];
                zvalid[it - first] = (uint8_t)s.valid;
                if (s.valid & 0x0Fu) ++cnt[s.i0[2]];
                if (s.valid & 0xF0u) ++cnt[s.i0[2] + 1];
            }
        }
        // exclusive prefix over (plane, chunk): plane-major so each plane's entries are contiguous
        int64_t run = 0;
        for (int64_t z = 0; z < Dv; ++z) {
            start[z] = run;
            for (int t = 0; t < T_; ++t) {
                offs[(size_t)t * Dv + z] = run;
                run += counts[(size_t)t * Dv + z];
            }
        }
        start[Dv] = run;
        entries.resize((size_t)run);
        // pass 2: fill, in item order within each chunk (a stable counting sort)
#pragma omp parallel for schedule(static, 1) num_threads(T_)
        for (int t = 0; t < T_; ++t) {
            int64_t* off = offs.data() + (size_t)t * Dv;
            const int64_t lo = first + t * span, hi = std::min(last, first + (t + 1) * span);
            for (int64_t it = lo; it < hi; ++it) {
                const int32_t z0 = zfirst[it - first];
                const uint8_t valid = zvalid[it - first];
                if (valid & 0x0Fu) entries[off[z0]++] = it * 2;
                if (valid & 0xF0u) entries[off[z0 + 1]++] = it * 2 + 1;
            }
        }
        // pass 3: each plane owned by one thread, its contributions in ascending item order
#pragma omp parallel num_threads(T_)
        {
            std::vector<T> base(2 * std::max<int64_t>(a.g.K, 1));
#pragma omp for schedule(dynamic, 1)
            for (int64_t z = 0; z < Dv; ++z) scatter_entries_c(a, o, entries.data(), start[z], start[z + 1], base.data());
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
        project_kernel<scalar_t>(args_of<scalar_t>(in), real_mut_ptr<scalar_t>(out));
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
        const Args<T> a = args_of<T>(in);
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
        const Args<T> a{nullptr, nullptr, nullptr, real_ptr<T>(in.rot), in.px.data(), (int64_t)in.px.size(), g};
        scatter_kernel<T>(a, {real_ptr<T>(in.images), real_ptr<T>(in.weights), nullptr, real_mut_ptr<T>(data),
                              real_mut_ptr<T>(weight)});
    });
    return {data, weight};
}

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

// A Python module with no functions: importing cryovox._C loads the library and registers the ops.
static struct PyModuleDef cryovox_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&cryovox_module); }
