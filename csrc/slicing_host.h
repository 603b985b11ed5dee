// Host-side argument handling shared by the CPU ops (slicing_cpu.cpp) and the CUDA binding
// (slicing_cuda_binding.cpp): shape checks, the image pixel list, the voxel-major basis and
// the output allocation. Needs ATen; no CUDA.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

#include "slice_geometry.h"

namespace cryovox {
namespace host {

struct Geometry {
    int64_t Dv;         // volume box
    int64_t Dh;         // Dv / 2 + 1
    int64_t M;          // voxels in a half volume
    int64_t D;          // image box = Dv / pad
    int64_t Dimg_half;  // D / 2 + 1
    int64_t B;          // images
    int64_t K;          // basis volumes (0: none)
    int pad;
};

inline Geometry make_geometry(int64_t Dv, int64_t pad, int64_t B, int64_t K) {
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

// Half-image pixels with kx^2 + ky^2 <= radius^2, row-major (same order as the reference).
inline std::vector<Pixel> image_pixels(int64_t size, double radius) {
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

// The pixel list as an int32 (N, 3) tensor on `device` (layout of struct Pixel).
inline at::Tensor pixel_tensor(const std::vector<Pixel>& px, const at::Device& device) {
    static_assert(sizeof(Pixel) == 3 * sizeof(int32_t), "Pixel must be three packed int32");
    auto t = at::empty({(int64_t)px.size(), 3}, at::TensorOptions().dtype(at::kInt));
    if (!px.empty()) std::copy(px.begin(), px.end(), reinterpret_cast<Pixel*>(t.data_ptr()));
    return t.to(device);
}

// Rank and half-volume shape (..., Dv, Dv, Dv/2+1) of a volume, checked without concrete sizes (meta kernels).
inline void check_volume_dims(const at::Tensor& t, const char* name, bool batched) {
    TORCH_CHECK(t.is_complex(), "cryovox: ", name, " must be complex");
    TORCH_CHECK(t.dim() == (batched ? 4 : 3), "cryovox: ", name, " has shape ", t.sym_sizes());
    TORCH_SYM_CHECK(t.sym_size(-2).sym_eq(t.sym_size(-3)) & t.sym_size(-1).sym_eq(t.sym_size(-3) / 2 + 1),
                    "cryovox: ", name, " has shape ", t.sym_sizes(), ", expected (..., Dv, Dv, Dv/2+1)");
}

inline void check_volume(const at::Tensor& t, int64_t Dv, const char* name, bool batched) {
    TORCH_CHECK(t.is_complex(), "cryovox: ", name, " must be complex");
    TORCH_CHECK(t.dim() == (batched ? 4 : 3) && t.size(-3) == Dv && t.size(-2) == Dv && t.size(-1) == Dv / 2 + 1,
                "cryovox: ", name, " has shape ", t.sizes(), ", expected (..., ", Dv, ", ", Dv, ", ", Dv / 2 + 1, ")");
}

// Basis (K, M) complex -> voxel-major (M, K): the K values of one voxel are contiguous.
// No copy when the basis is already a permuted view of a contiguous (Dv, Dv, Dh, K) tensor.
inline at::Tensor voxel_major(const at::Tensor& basis, int64_t K, int64_t M) {
    auto flat = basis.reshape({K, M});
    return K == 1 ? flat.contiguous() : flat.t().contiguous();
}

template <typename T>
const T* real_ptr(const at::Tensor& t) {
    return t.defined() ? reinterpret_cast<const T*>(t.data_ptr()) : nullptr;
}

template <typename T>
T* real_mut_ptr(const at::Tensor& t) {
    return t.defined() ? reinterpret_cast<T*>(t.data_ptr()) : nullptr;
}

// Inputs of project / project_backward, checked and laid out for the kernels.
struct ProjectInputs {
    at::Tensor basis_t;  // (M, K) voxel-major complex, or undefined
    at::Tensor coeffs;   // (B, K) real, or undefined
    at::Tensor bias;     // (Dv, Dv, Dh) complex contiguous, or undefined
    at::Tensor rot;      // (B, 3, 3) real contiguous
    at::ScalarType complex_t, real_t;
    Geometry g;
    std::vector<Pixel> px;
};

inline ProjectInputs prepare_project(const c10::optional<at::Tensor>& basis_o, const c10::optional<at::Tensor>& coeffs_o,
                                     const c10::optional<at::Tensor>& bias_o, const at::Tensor& rot_in, double radius,
                                     int64_t pad) {
    const bool has_basis = basis_o.has_value() && basis_o->defined();
    const bool has_bias = bias_o.has_value() && bias_o->defined();
    TORCH_CHECK(has_basis || has_bias, "cryovox::project needs a basis, a bias or both");
    const at::Tensor& ref = has_basis ? *basis_o : *bias_o;
    TORCH_CHECK(ref.dim() >= 3, "cryovox: volumes must be (..., Dv, Dv, Dv/2+1)");
    TORCH_CHECK(rot_in.dim() == 3 && rot_in.size(1) == 3 && rot_in.size(2) == 3, "cryovox: rot must be (B, 3, 3)");
    const int64_t Dv = ref.size(-3), B = rot_in.size(0), K = has_basis ? basis_o->size(0) : 0;
    ProjectInputs in;
    in.complex_t = ref.scalar_type();
    in.real_t = c10::toRealValueType(in.complex_t);
    in.g = make_geometry(Dv, pad, B, K);
    if (has_basis) {
        check_volume(*basis_o, Dv, "basis", true);
        TORCH_CHECK(coeffs_o.has_value() && coeffs_o->defined() && coeffs_o->dim() == 2 && coeffs_o->size(0) == B &&
                        coeffs_o->size(1) == K,
                    "cryovox: coeffs must be (B, K) = (", B, ", ", K, ")");
        TORCH_CHECK(coeffs_o->device() == ref.device(), "cryovox: coeffs and basis on different devices");
        in.basis_t = voxel_major(*basis_o, K, in.g.M);
        in.coeffs = coeffs_o->to(in.real_t).contiguous();
    }
    if (has_bias) {
        check_volume(*bias_o, Dv, "bias", false);
        TORCH_CHECK(bias_o->scalar_type() == in.complex_t, "cryovox: basis and bias dtypes differ");
        TORCH_CHECK(bias_o->device() == ref.device(), "cryovox: bias and basis on different devices");
        in.bias = bias_o->contiguous();
    }
    TORCH_CHECK(rot_in.device() == ref.device(), "cryovox: rot and volumes on different devices");
    in.rot = rot_in.to(in.real_t).contiguous();
    in.px = image_pixels(in.g.D, radius);
    return in;
}

struct BackprojectInputs {
    at::Tensor images, rot, weights;  // contiguous; weights undefined for 1 per pixel
    at::ScalarType complex_t, real_t;
    Geometry g;
    std::vector<Pixel> px;
};

inline BackprojectInputs prepare_backproject(const at::Tensor& images_in, const at::Tensor& rot_in,
                                             const c10::optional<at::Tensor>& weights_o, double radius, int64_t pad) {
    TORCH_CHECK(images_in.is_complex() && images_in.dim() == 3 && images_in.size(2) == images_in.size(1) / 2 + 1,
                "cryovox: images must be complex (B, D, D/2+1), got ", images_in.sizes());
    const int64_t B = images_in.size(0), D = images_in.size(1);
    TORCH_CHECK(rot_in.dim() == 3 && rot_in.size(0) == B && rot_in.size(1) == 3 && rot_in.size(2) == 3,
                "cryovox: rot must be (B, 3, 3)");
    TORCH_CHECK(rot_in.device() == images_in.device(), "cryovox: rot and images on different devices");
    BackprojectInputs in;
    in.complex_t = images_in.scalar_type();
    in.real_t = c10::toRealValueType(in.complex_t);
    in.g = make_geometry(D * pad, pad, B, 1);
    in.images = images_in.contiguous();
    in.rot = rot_in.to(in.real_t).contiguous();
    if (weights_o.has_value() && weights_o->defined()) {
        TORCH_CHECK(weights_o->sizes() == images_in.sizes(), "cryovox: weights must match images");
        TORCH_CHECK(weights_o->device() == images_in.device(), "cryovox: weights and images on different devices");
        in.weights = weights_o->to(in.real_t).contiguous();
    }
    in.px = image_pixels(D, radius);
    return in;
}

// (M, K) voxel-major gradient -> (K, Dv, Dv, Dh), a strided view (no copy): autograd hands it on
// as is to a voxel-major basis and makes it contiguous only where the basis is (K, ...)-contiguous.
// The meta (shape-only) kernels build their output through the same function, so the strides agree.
inline at::Tensor basis_layout(const at::Tensor& voxel_major_grad, const c10::SymInt& K, const c10::SymInt& Dv,
                               const c10::SymInt& Dh) {
    return voxel_major_grad.t().reshape_symint({K, Dv, Dv, Dh});
}
inline at::Tensor basis_layout(const at::Tensor& voxel_major_grad, const Geometry& g) {
    return basis_layout(voxel_major_grad, g.K, g.Dv, g.Dh);
}

}  // namespace host
}  // namespace cryovox
