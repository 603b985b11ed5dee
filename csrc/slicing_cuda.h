// CUDA slicing kernels: raw pointers and a stream, no torch (see slicing_cuda.cu).
//
// Layouts as in slicing_cpu.cpp: complex arrays interleaved (re, im) of T; basis voxel-major
// (M, K); images (B, D, D/2+1); volumes (Dv, Dv, Dv/2+1); rot (B, 3, 3) row-major; px the
// in-radius half-image pixels (N of them). Outputs must be zero-filled by the caller; the
// scatters and per-image reductions accumulate with atomicAdd (not bitwise deterministic).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "slice_geometry.h"

namespace cryovox {
namespace cuda {

struct Dims {
    int64_t B;  // images
    int64_t N;  // in-radius pixels per image
    int64_t K;  // basis volumes (0: none)
    int Dv;     // volume box
    int D;      // image box (Dv / pad)
    int pad;
};

// out (B, D, D/2+1) complex = slices of sum_k coeffs[b,k] basis[k] + bias.
template <typename T>
cudaError_t project(const Pixel* px, const T* basis_t, const T* coeffs, const T* bias, const T* rot, Dims d, T* out,
                    cudaStream_t stream);

// grad_coeffs (B, K) and/or grad_rot (B, 3, 3) from the output gradient grad (B, D, D/2+1).
template <typename T>
cudaError_t gather_grads(const Pixel* px, const T* grad, const T* basis_t, const T* coeffs, const T* bias,
                         const T* rot, Dims d, T* grad_coeffs, T* grad_rot, cudaStream_t stream);

// Adjoint scatter of vals (B, D, D/2+1) complex: out_k (M, K) += coeffs w v, out_1 (M) += w v,
// out_w (M) += w wt (wt = wts or 1). Any of the outputs may be null.
template <typename T>
cudaError_t scatter(const Pixel* px, const T* vals, const T* wts, const T* coeffs, const T* rot, Dims d, T* out_k,
                    T* out_1, T* out_w, cudaStream_t stream);

}  // namespace cuda
}  // namespace cryovox
