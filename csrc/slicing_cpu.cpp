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

// ---------------------------------------------------------------- forward
template <typename T>
void project_kernel(const T* basis_t, const T* coeffs, const T* bias, const T* rot, const std::vector<Pixel>& px,
                    const Geometry& g, T* out) {
    const int64_t N = (int64_t)px.size(), total = g.B * N, K = g.K;
    const int64_t img = g.D * g.Dimg_half;
#pragma omp parallel for schedule(static) num_threads(num_threads(total))
    for (int64_t it = 0; it < total; ++it) {
        const int64_t b = it / N;
        const Pixel& q = px[it - b * N];
        SlicePoint<T> s;
        slice_point<T>(rot + 9 * b, (T)q.kx, (T)q.ky, g.pad, (int)g.Dv, s);
        T re = 0, im = 0;
        if (basis_t) {
            const T* cf = coeffs + b * K;
            for (int c = 0; c < 8; ++c) {
                const T* v = basis_t + 2 * s.idx[c] * K;
                T sr = 0, si = 0;
                for (int64_t k = 0; k < K; ++k) {
                    sr += cf[k] * v[2 * k];
                    si += cf[k] * v[2 * k + 1];
                }
                re += s.w[c] * sr;
                im += s.w[c] * si;
            }
        }
        if (bias) {
            T br = 0, bi = 0;
            for (int c = 0; c < 8; ++c) {
                br += s.w[c] * bias[2 * s.idx[c]];
                bi += s.w[c] * bias[2 * s.idx[c] + 1];
            }
            re += br;
            im += bi;
        }
        T* o = out + 2 * (b * img + q.index);
        o[0] = re;
        o[1] = s.flip ? -im : im;
    }
}

// ---------------------------------------------------------------- per-image gradient reductions
// grad_coeffs[b,k] = sum_n Re(conj(g') sum_c w_c basis[c,k]),
// grad_rot[b] from d/dp of the trilinear weights; g' = grad, conjugated where the mate was sampled.
template <typename T>
void gather_grads_kernel(const T* grad, const T* basis_t, const T* coeffs, const T* bias, const T* rot,
                         const std::vector<Pixel>& px, const Geometry& g, T* grad_coeffs, T* grad_rot) {
    const int64_t N = (int64_t)px.size(), K = g.K;
    const int64_t img = g.D * g.Dimg_half;
#pragma omp parallel num_threads(num_threads(g.B * N))
    {
        std::vector<T> acc(2 * std::max<int64_t>(K, 1));
        std::vector<T> gc(std::max<int64_t>(K, 1));
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < g.B; ++b) {
            std::fill(gc.begin(), gc.end(), (T)0);
            T gr[6] = {0, 0, 0, 0, 0, 0};
            for (int64_t n = 0; n < N; ++n) {
                const Pixel& q = px[n];
                const T* gp = grad + 2 * (b * img + q.index);
                SlicePoint<T> s;
                slice_point<T>(rot + 9 * b, (T)q.kx, (T)q.ky, g.pad, (int)g.Dv, s);
                const T gre = gp[0], gim = s.flip ? -gp[1] : gp[1];
                if (gre == (T)0 && gim == (T)0) continue;
                T vr[8], vi[8];
                if (basis_t && grad_coeffs) std::fill(acc.begin(), acc.end(), (T)0);
                for (int c = 0; c < 8; ++c) {
                    T r = 0, i = 0;
                    if (basis_t) {
                        const T* v = basis_t + 2 * s.idx[c] * K;
                        const T* cf = coeffs + b * K;
                        for (int64_t k = 0; k < K; ++k) {
                            r += cf[k] * v[2 * k];
                            i += cf[k] * v[2 * k + 1];
                        }
                        if (grad_coeffs) {
                            for (int64_t k = 0; k < K; ++k) {
                                acc[2 * k] += s.w[c] * v[2 * k];
                                acc[2 * k + 1] += s.w[c] * v[2 * k + 1];
                            }
                        }
                    }
                    if (bias) {
                        r += bias[2 * s.idx[c]];
                        i += bias[2 * s.idx[c] + 1];
                    }
                    vr[c] = r;
                    vi[c] = i;
                }
                if (grad_coeffs)
                    for (int64_t k = 0; k < K; ++k) gc[k] += gre * acc[2 * k] + gim * acc[2 * k + 1];
                if (grad_rot) {
                    const T sgn = s.flip ? (T)-1 : (T)1;
                    for (int j = 0; j < 3; ++j) {
                        T dr = 0, di = 0;
                        for (int c = 0; c < 8; ++c) {
                            const T dw = corner_weight_derivative<T>(s, c, j);
                            dr += dw * vr[c];
                            di += dw * vi[c];
                        }
                        const T dLdp = sgn * (T)g.pad * (gre * dr + gim * di);
                        gr[j] += dLdp * (T)q.kx;
                        gr[3 + j] += dLdp * (T)q.ky;
                    }
                }
            }
            if (grad_coeffs)
                for (int64_t k = 0; k < K; ++k) grad_coeffs[b * K + k] = gc[k];
            if (grad_rot) {
                T* o = grad_rot + 9 * b;
                for (int j = 0; j < 6; ++j) o[j] = gr[j];
                o[6] = o[7] = o[8] = 0;
            }
        }
    }
}

// ---------------------------------------------------------------- deterministic scatter
// For every item (b, n) with value v = vals[b, pixel] (conjugated where the mate was sampled):
//   out_k[voxel, k] += coeffs[b,k] w v   (if out_k: (M, K) voxel-major)
//   out_1[voxel]    += w v               (if out_1: (M,))
//   out_w[voxel]    += w wt              (if out_w: (M,), wt = wts[b, pixel] or 1)
template <typename T>
void scatter_kernel(const T* vals, const T* wts, const T* coeffs, const T* rot, const std::vector<Pixel>& px,
                    const Geometry& g, T* out_k, T* out_1, T* out_w) {
    const int64_t N = (int64_t)px.size(), K = g.K, Dv = g.Dv;
    const int64_t img = g.D * g.Dimg_half;
    if (N == 0 || g.B == 0) return;
    const int T_ = num_threads(g.B * N);
    const int64_t per_chunk = std::max<int64_t>(1, kScatterItems / N) * N;  // whole images per pass
    std::vector<int64_t> entries;
    std::vector<int64_t> counts((size_t)T_ * Dv), offs((size_t)T_ * Dv), start(Dv + 1);
    std::vector<int32_t> zfirst;
    std::vector<uint8_t> zvalid;
    for (int64_t first = 0; first < g.B * N; first += per_chunk) {
        const int64_t last = std::min(g.B * N, first + per_chunk), n_items = last - first;
        const int64_t span = (n_items + T_ - 1) / T_;
        std::fill(counts.begin(), counts.end(), 0);
        // pass 1: geometry of each item (first plane, which corners are inside), and counts per
        // (thread chunk, plane)
        zfirst.resize((size_t)n_items);
        zvalid.resize((size_t)n_items);
#pragma omp parallel for schedule(static, 1) num_threads(T_)
        for (int t = 0; t < T_; ++t) {
            int64_t* cnt = counts.data() + (size_t)t * Dv;
            for (int64_t it = first + t * span; it < std::min(last, first + (t + 1) * span); ++it) {
                const int64_t b = it / N;
                const Pixel& q = px[it - b * N];
                SlicePoint<T> s;
                slice_point<T>(rot + 9 * b, (T)q.kx, (T)q.ky, g.pad, (int)Dv, s);
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
        // pass 2: fill, in item order within each chunk (stable)
#pragma omp parallel for schedule(static, 1) num_threads(T_)
        for (int t = 0; t < T_; ++t) {
            int64_t* off = offs.data() + (size_t)t * Dv;
            for (int64_t it = first + t * span; it < std::min(last, first + (t + 1) * span); ++it) {
                const int32_t z0 = zfirst[it - first];
                const uint8_t valid = zvalid[it - first];
                if (valid & 0x0Fu) entries[off[z0]++] = it * 2;
                if (valid & 0xF0u) entries[off[z0 + 1]++] = it * 2 + 1;
            }
        }
        // pass 3: each plane owned by one thread, contributions in ascending item order
#pragma omp parallel for schedule(dynamic, 1) num_threads(T_)
        for (int64_t z = 0; z < Dv; ++z) {
            for (int64_t e = start[z]; e < start[z + 1]; ++e) {
                const int64_t it = entries[e] >> 1;
                const int dz = (int)(entries[e] & 1);
                const int64_t b = it / N;
                const Pixel& q = px[it - b * N];
                SlicePoint<T> s;
                slice_point<T>(rot + 9 * b, (T)q.kx, (T)q.ky, g.pad, (int)Dv, s);
                const T* vp = vals + 2 * (b * img + q.index);
                const T vr = vp[0], vi = s.flip ? -vp[1] : vp[1];
                const T wt = wts ? wts[b * img + q.index] : (T)1;
                const T* cf = coeffs ? coeffs + b * K : nullptr;
                for (int c = 4 * dz; c < 4 * dz + 4; ++c) {
                    if (!((s.valid >> c) & 1u)) continue;
                    const int64_t v = s.idx[c];
                    const T w = s.w[c];
                    const T wr = w * vr, wi = w * vi;
                    if (out_k) {
                        T* o = out_k + 2 * v * K;
                        for (int64_t k = 0; k < K; ++k) {
                            o[2 * k] += cf[k] * wr;
                            o[2 * k + 1] += cf[k] * wi;
                        }
                    }
                    if (out_1) {
                        out_1[2 * v] += wr;
                        out_1[2 * v + 1] += wi;
                    }
                    if (out_w) out_w[v] += w * wt;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- torch entry points
at::Tensor project_cpu(const c10::optional<at::Tensor>& basis, const c10::optional<at::Tensor>& coeffs,
                       const c10::optional<at::Tensor>& bias, const at::Tensor& rot, double radius, int64_t pad) {
    auto in = host::prepare_project(basis, coeffs, bias, rot, radius, pad);
    auto out = at::zeros({in.g.B, in.g.D, in.g.Dimg_half}, in.rot.options().dtype(in.complex_t));
    AT_DISPATCH_FLOATING_TYPES(in.real_t, "cryovox_project", [&] {
        project_kernel<scalar_t>(real_ptr<scalar_t>(in.basis_t), real_ptr<scalar_t>(in.coeffs),
                                 real_ptr<scalar_t>(in.bias), real_ptr<scalar_t>(in.rot), in.px, in.g,
                                 real_mut_ptr<scalar_t>(out));
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
        if (need_coeffs || need_rot)
            gather_grads_kernel<T>(real_ptr<T>(grad), real_ptr<T>(in.basis_t), real_ptr<T>(in.coeffs),
                                   real_ptr<T>(in.bias), real_ptr<T>(in.rot), in.px, g, real_mut_ptr<T>(g_coeffs),
                                   real_mut_ptr<T>(g_rot));
        if (need_basis || need_bias)
            scatter_kernel<T>(real_ptr<T>(grad), nullptr, need_basis ? real_ptr<T>(in.coeffs) : nullptr,
                              real_ptr<T>(in.rot), in.px, g, real_mut_ptr<T>(g_basis_t), real_mut_ptr<T>(g_bias),
                              nullptr);
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
        scatter_kernel<T>(real_ptr<T>(in.images), real_ptr<T>(in.weights), nullptr, real_ptr<T>(in.rot), in.px, g,
                          nullptr, real_mut_ptr<T>(data), real_mut_ptr<T>(weight));
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
