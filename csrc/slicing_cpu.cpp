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

#include <ATen/ATen.h>
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

namespace cryovox {
namespace {

// Items (image, pixel) handled by one scatter pass; bounds the bucket memory (8 bytes each, x2).
constexpr int64_t kScatterItems = int64_t(1) << 22;

int num_threads() { return std::max(1, at::get_num_threads()); }

std::vector<Pixel> image_pixels(int64_t size, double radius) {
    std::vector<Pixel> px;
    const int64_t half = size / 2 + 1;
    const double r2 = radius * radius;
    for (int64_t iy = 0; iy < size; ++iy) {
        const int64_t ky = iy - size / 2;
        for (int64_t kx = 0; kx < half; ++kx) {
            if ((double)(kx * kx + ky * ky) <= r2) px.push_back({(int32_t)(iy * half + kx), (int32_t)kx, (int32_t)ky});
        }
    }
    return px;
}

struct Geometry {
    int64_t Dv, Dh, M, D, Dimg_half, B, K;
    int pad;
};

Geometry make_geometry(int64_t Dv, int64_t pad, int64_t B, int64_t K) {
    TORCH_CHECK(pad >= 1 && Dv % pad == 0, "cryovox: volume box ", Dv, " is not a multiple of pad ", pad);
    Geometry g;
    g.Dv = Dv;
    g.Dh = Dv / 2 + 1;
    g.M = Dv * Dv * g.Dh;
    g.D = Dv / pad;
    g.Dimg_half = g.D / 2 + 1;
    g.B = B;
    g.K = K;
    g.pad = (int)pad;
    return g;
}

void check_volume(const at::Tensor& t, int64_t Dv, const char* name, int64_t lead) {
    TORCH_CHECK(t.is_complex(), "cryovox: ", name, " must be complex");
    const int64_t nd = lead >= 0 ? 4 : 3;
    TORCH_CHECK(t.dim() == nd && t.size(-3) == Dv && t.size(-2) == Dv && t.size(-1) == Dv / 2 + 1,
                "cryovox: ", name, " has shape ", t.sizes(), ", expected (..., ", Dv, ", ", Dv, ", ", Dv / 2 + 1, ")");
}

// Basis (K, M) complex -> voxel-major (M, K) so that the K values of one voxel are contiguous.
at::Tensor voxel_major(const at::Tensor& basis, int64_t K, int64_t M) {
    auto flat = basis.reshape({K, M});
    return K == 1 ? flat.contiguous() : flat.t().contiguous();
}

// ---------------------------------------------------------------- forward
template <typename T>
void project_kernel(const T* basis_t, const T* coeffs, const T* bias, const T* rot, const std::vector<Pixel>& px,
                    const Geometry& g, T* out) {
    const int64_t N = (int64_t)px.size(), total = g.B * N, K = g.K;
    const int64_t img = g.D * g.Dimg_half;
#pragma omp parallel for schedule(static) num_threads(num_threads())
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
#pragma omp parallel num_threads(num_threads())
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
    const int T_ = num_threads();
    const int64_t per_chunk = std::max<int64_t>(1, kScatterItems / N) * N;  // whole images per pass
    std::vector<int64_t> entries;
    std::vector<int64_t> counts((size_t)T_ * Dv), start(Dv + 1);
    for (int64_t first = 0; first < g.B * N; first += per_chunk) {
        const int64_t last = std::min(g.B * N, first + per_chunk), n_items = last - first;
        const int64_t span = (n_items + T_ - 1) / T_;
        std::fill(counts.begin(), counts.end(), 0);
        auto z_of = [&](int64_t it, int32_t& z0) {
            const int64_t b = it / N;
            const Pixel& q = px[it - b * N];
            SlicePoint<T> s;
            slice_point<T>(rot + 9 * b, (T)q.kx, (T)q.ky, g.pad, (int)Dv, s);
            z0 = s.i0[2];
            return s.valid;
        };
        // pass 1: count contributions per (thread chunk, plane)
#pragma omp parallel for schedule(static, 1) num_threads(T_)
        for (int t = 0; t < T_; ++t) {
            int64_t* cnt = counts.data() + (size_t)t * Dv;
            for (int64_t it = first + t * span; it < std::min(last, first + (t + 1) * span); ++it) {
                int32_t z0;
                const uint32_t valid = z_of(it, z0);
                if (valid & 0x0Fu) ++cnt[z0];
                if (valid & 0xF0u) ++cnt[z0 + 1];
            }
        }
        // exclusive prefix over (plane, chunk): plane-major so each plane's entries are contiguous
        std::vector<int64_t> offs((size_t)T_ * Dv);
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
                int32_t z0;
                const uint32_t valid = z_of(it, z0);
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
template <typename T>
const T* real_ptr(const at::Tensor& t) {
    return t.defined() ? reinterpret_cast<const T*>(t.data_ptr()) : nullptr;
}

at::Tensor project_cpu(const c10::optional<at::Tensor>& basis_o, const c10::optional<at::Tensor>& coeffs_o,
                       const c10::optional<at::Tensor>& bias_o, const at::Tensor& rot_in, double radius, int64_t pad) {
    const bool has_basis = basis_o.has_value() && basis_o->defined();
    const bool has_bias = bias_o.has_value() && bias_o->defined();
    TORCH_CHECK(has_basis || has_bias, "cryovox::project needs a basis, a bias or both");
    const at::Tensor& ref = has_basis ? *basis_o : *bias_o;
    const int64_t Dv = ref.size(-3);
    const int64_t B = rot_in.size(0);
    TORCH_CHECK(rot_in.dim() == 3 && rot_in.size(1) == 3 && rot_in.size(2) == 3, "cryovox: rot must be (B, 3, 3)");
    const int64_t K = has_basis ? basis_o->size(0) : 0;
    if (has_basis) check_volume(*basis_o, Dv, "basis", K);
    if (has_bias) check_volume(*bias_o, Dv, "bias", -1);
    auto real_t = c10::toRealValueType(ref.scalar_type());
    Geometry g = make_geometry(Dv, pad, B, K);
    at::Tensor basis_t, coeffs, bias;
    if (has_basis) {
        TORCH_CHECK(coeffs_o.has_value() && coeffs_o->defined() && coeffs_o->dim() == 2 && coeffs_o->size(0) == B &&
                        coeffs_o->size(1) == K,
                    "cryovox: coeffs must be (B, K)");
        basis_t = voxel_major(*basis_o, K, g.M);
        coeffs = coeffs_o->to(real_t).contiguous();
    }
    if (has_bias) {
        TORCH_CHECK(bias_o->scalar_type() == ref.scalar_type(), "cryovox: basis and bias dtypes differ");
        bias = bias_o->contiguous();
    }
    auto rot = rot_in.to(real_t).contiguous();
    auto px = image_pixels(g.D, radius);
    auto out = at::zeros({B, g.D, g.Dimg_half}, ref.options());
    AT_DISPATCH_FLOATING_TYPES(real_t, "cryovox_project", [&] {
        project_kernel<scalar_t>(real_ptr<scalar_t>(basis_t), real_ptr<scalar_t>(coeffs), real_ptr<scalar_t>(bias),
                                 real_ptr<scalar_t>(rot), px, g, reinterpret_cast<scalar_t*>(out.data_ptr()));
    });
    return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_backward_cpu(
    const at::Tensor& grad_in, const c10::optional<at::Tensor>& basis_o, const c10::optional<at::Tensor>& coeffs_o,
    const c10::optional<at::Tensor>& bias_o, const at::Tensor& rot_in, double radius, int64_t pad,
    std::array<bool, 4> needs) {
    const bool has_basis = basis_o.has_value() && basis_o->defined();
    const bool has_bias = bias_o.has_value() && bias_o->defined();
    TORCH_CHECK(has_basis || has_bias, "cryovox::project_backward needs a basis, a bias or both");
    const at::Tensor& ref = has_basis ? *basis_o : *bias_o;
    const int64_t Dv = ref.size(-3), B = rot_in.size(0), K = has_basis ? basis_o->size(0) : 0;
    auto real_t = c10::toRealValueType(ref.scalar_type());
    Geometry g = make_geometry(Dv, pad, B, K);
    TORCH_CHECK(grad_in.dim() == 3 && grad_in.size(0) == B && grad_in.size(1) == g.D && grad_in.size(2) == g.Dimg_half,
                "cryovox: grad has shape ", grad_in.sizes());
    auto grad = grad_in.to(ref.scalar_type()).contiguous();
    auto rot = rot_in.to(real_t).contiguous();
    at::Tensor basis_t, coeffs, bias;
    if (has_basis) {
        basis_t = voxel_major(*basis_o, K, g.M);
        coeffs = coeffs_o->to(real_t).contiguous();
    }
    if (has_bias) bias = bias_o->contiguous();
    const bool need_basis = needs[0] && has_basis, need_coeffs = needs[1] && has_basis;
    const bool need_bias = needs[2] && has_bias, need_rot = needs[3];
    auto px = image_pixels(g.D, radius);
    at::Tensor g_basis_t, g_coeffs, g_bias, g_rot;
    auto empty = at::empty({0}, ref.options());
    if (need_basis) g_basis_t = at::zeros({g.M, K}, ref.options());
    if (need_bias) g_bias = at::zeros({Dv, Dv, g.Dh}, ref.options());
    if (need_coeffs) g_coeffs = at::zeros({B, K}, rot.options());
    if (need_rot) g_rot = at::zeros({B, 3, 3}, rot.options());
    AT_DISPATCH_FLOATING_TYPES(real_t, "cryovox_project_backward", [&] {
        using T = scalar_t;
        const T* gp = reinterpret_cast<const T*>(grad.data_ptr());
        if (need_coeffs || need_rot)
            gather_grads_kernel<T>(gp, real_ptr<T>(basis_t), real_ptr<T>(coeffs), real_ptr<T>(bias), real_ptr<T>(rot),
                                   px, g, need_coeffs ? g_coeffs.data_ptr<T>() : nullptr,
                                   need_rot ? g_rot.data_ptr<T>() : nullptr);
        if (need_basis || need_bias)
            scatter_kernel<T>(gp, nullptr, need_basis ? real_ptr<T>(coeffs) : nullptr, real_ptr<T>(rot), px, g,
                              need_basis ? reinterpret_cast<T*>(g_basis_t.data_ptr()) : nullptr,
                              need_bias ? reinterpret_cast<T*>(g_bias.data_ptr()) : nullptr, nullptr);
    });
    at::Tensor g_basis = empty;
    if (need_basis) g_basis = (K == 1 ? g_basis_t : g_basis_t.t().contiguous()).reshape({K, Dv, Dv, g.Dh});
    return {g_basis, need_coeffs ? g_coeffs : rot.new_empty({0}), need_bias ? g_bias : empty,
            need_rot ? g_rot : rot.new_empty({0})};
}

std::tuple<at::Tensor, at::Tensor> backproject_cpu(const at::Tensor& images_in, const at::Tensor& rot_in,
                                                   const c10::optional<at::Tensor>& weights_o, double radius,
                                                   int64_t pad) {
    TORCH_CHECK(images_in.is_complex() && images_in.dim() == 3 && images_in.size(2) == images_in.size(1) / 2 + 1,
                "cryovox: images must be complex (B, D, D/2+1)");
    const int64_t B = images_in.size(0), D = images_in.size(1);
    TORCH_CHECK(rot_in.dim() == 3 && rot_in.size(0) == B && rot_in.size(1) == 3 && rot_in.size(2) == 3,
                "cryovox: rot must be (B, 3, 3)");
    auto real_t = c10::toRealValueType(images_in.scalar_type());
    Geometry g = make_geometry(D * pad, pad, B, 1);
    auto images = images_in.contiguous();
    auto rot = rot_in.to(real_t).contiguous();
    at::Tensor weights;
    if (weights_o.has_value() && weights_o->defined()) {
        TORCH_CHECK(weights_o->sizes() == images.sizes(), "cryovox: weights must match images");
        weights = weights_o->to(real_t).contiguous();
    }
    auto px = image_pixels(D, radius);
    auto data = at::zeros({g.Dv, g.Dv, g.Dh}, images.options());
    auto weight = at::zeros({g.Dv, g.Dv, g.Dh}, rot.options());
    AT_DISPATCH_FLOATING_TYPES(real_t, "cryovox_backproject", [&] {
        using T = scalar_t;
        scatter_kernel<T>(reinterpret_cast<const T*>(images.data_ptr()), real_ptr<T>(weights), nullptr,
                          real_ptr<T>(rot), px, g, nullptr, reinterpret_cast<T*>(data.data_ptr()),
                          weight.data_ptr<T>());
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
