// Torch binding of the CUDA slicing kernels: registers the CUDA implementations of the ops
// defined in slicing_cpu.cpp. Built only where torch is a CUDA build and nvcc exists (setup.py).

#include <ATen/Dispatch.h>
#include <c10/core/DeviceGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "slicing_cuda.h"
#include "slicing_host.h"

namespace cryovox {
namespace {

using host::Geometry;
using host::real_mut_ptr;
using host::real_ptr;

cuda::Dims dims_of(const Geometry& g, int64_t N) {
    cuda::Dims d;
    d.B = g.B;
    d.N = N;
    d.K = g.K;
    d.Dv = (int)g.Dv;
    d.D = (int)g.D;
    d.pad = g.pad;
    return d;
}

void check(cudaError_t e, const char* what) {
    TORCH_CHECK(e == cudaSuccess, "cryovox CUDA ", what, ": ", cudaGetErrorString(e));
}

at::Tensor project_cuda(const c10::optional<at::Tensor>& basis, const c10::optional<at::Tensor>& coeffs,
                        const c10::optional<at::Tensor>& bias, const at::Tensor& rot, double radius, int64_t pad) {
    auto in = host::prepare_project(basis, coeffs, bias, rot, radius, pad);
    c10::DeviceGuard guard(in.rot.device());
    auto px = host::pixel_tensor(in.px, in.rot.device());
    auto out = at::zeros({in.g.B, in.g.D, in.g.Dimg_half}, in.rot.options().dtype(in.complex_t));
    auto stream = c10::cuda::getCurrentCUDAStream().stream();
    const auto* pxp = reinterpret_cast<const Pixel*>(px.data_ptr());
    AT_DISPATCH_FLOATING_TYPES(in.real_t, "cryovox_project_cuda", [&] {
        check(cuda::project<scalar_t>(pxp, real_ptr<scalar_t>(in.basis_t), real_ptr<scalar_t>(in.coeffs),
                                      real_ptr<scalar_t>(in.bias), real_ptr<scalar_t>(in.rot),
                                      dims_of(in.g, (int64_t)in.px.size()), real_mut_ptr<scalar_t>(out), stream),
              "project");
    });
    return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_backward_cuda(
    const at::Tensor& grad_in, const c10::optional<at::Tensor>& basis, const c10::optional<at::Tensor>& coeffs,
    const c10::optional<at::Tensor>& bias, const at::Tensor& rot, double radius, int64_t pad,
    std::array<bool, 4> needs) {
    auto in = host::prepare_project(basis, coeffs, bias, rot, radius, pad);
    const Geometry& g = in.g;
    TORCH_CHECK(grad_in.dim() == 3 && grad_in.size(0) == g.B && grad_in.size(1) == g.D && grad_in.size(2) == g.Dimg_half,
                "cryovox: grad has shape ", grad_in.sizes());
    c10::DeviceGuard guard(in.rot.device());
    auto grad = grad_in.to(in.complex_t).contiguous();
    auto px = host::pixel_tensor(in.px, in.rot.device());
    const auto* pxp = reinterpret_cast<const Pixel*>(px.data_ptr());
    const bool need_basis = needs[0] && in.basis_t.defined(), need_coeffs = needs[1] && in.basis_t.defined();
    const bool need_bias = needs[2] && in.bias.defined(), need_rot = needs[3];
    auto copt = in.rot.options().dtype(in.complex_t);
    at::Tensor g_basis_t, g_coeffs, g_bias, g_rot;
    if (need_basis) g_basis_t = at::zeros({g.M, g.K}, copt);
    if (need_bias) g_bias = at::zeros({g.Dv, g.Dv, g.Dh}, copt);
    if (need_coeffs) g_coeffs = at::zeros({g.B, g.K}, in.rot.options());
    if (need_rot) g_rot = at::zeros({g.B, 3, 3}, in.rot.options());
    auto stream = c10::cuda::getCurrentCUDAStream().stream();
    const auto d = dims_of(g, (int64_t)in.px.size());
    AT_DISPATCH_FLOATING_TYPES(in.real_t, "cryovox_project_backward_cuda", [&] {
        using T = scalar_t;
        if (need_coeffs || need_rot)
            check(cuda::gather_grads<T>(pxp, real_ptr<T>(grad), real_ptr<T>(in.basis_t), real_ptr<T>(in.coeffs),
                                        real_ptr<T>(in.bias), real_ptr<T>(in.rot), d, real_mut_ptr<T>(g_coeffs),
                                        real_mut_ptr<T>(g_rot), stream),
                  "project_backward (gather)");
        if (need_basis || need_bias)
            check(cuda::scatter<T>(pxp, real_ptr<T>(grad), nullptr, need_basis ? real_ptr<T>(in.coeffs) : nullptr,
                                   real_ptr<T>(in.rot), d, real_mut_ptr<T>(g_basis_t), real_mut_ptr<T>(g_bias),
                                   nullptr, stream),
                  "project_backward (scatter)");
    });
    auto none = [&](const at::TensorOptions& o) { return at::empty({0}, o); };
    return {need_basis ? host::basis_layout(g_basis_t, g) : none(copt), need_coeffs ? g_coeffs : none(in.rot.options()),
            need_bias ? g_bias : none(copt), need_rot ? g_rot : none(in.rot.options())};
}

std::tuple<at::Tensor, at::Tensor> backproject_cuda(const at::Tensor& images, const at::Tensor& rot,
                                                    const c10::optional<at::Tensor>& weights, double radius,
                                                    int64_t pad) {
    auto in = host::prepare_backproject(images, rot, weights, radius, pad);
    const Geometry& g = in.g;
    c10::DeviceGuard guard(in.rot.device());
    auto px = host::pixel_tensor(in.px, in.rot.device());
    const auto* pxp = reinterpret_cast<const Pixel*>(px.data_ptr());
    auto data = at::zeros({g.Dv, g.Dv, g.Dh}, in.images.options());
    auto weight = at::zeros({g.Dv, g.Dv, g.Dh}, in.rot.options());
    auto stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(in.real_t, "cryovox_backproject_cuda", [&] {
        using T = scalar_t;
        check(cuda::scatter<T>(pxp, real_ptr<T>(in.images), real_ptr<T>(in.weights), nullptr, real_ptr<T>(in.rot),
                               dims_of(g, (int64_t)in.px.size()), nullptr, real_mut_ptr<T>(data),
                               real_mut_ptr<T>(weight), stream),
              "backproject");
    });
    return {data, weight};
}

}  // namespace
}  // namespace cryovox

TORCH_LIBRARY_IMPL(cryovox, CUDA, m) {
    m.impl("project", &cryovox::project_cuda);
    m.impl("project_backward", &cryovox::project_backward_cuda);
    m.impl("backproject", &cryovox::backproject_cuda);
}
