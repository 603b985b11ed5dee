// CUDA kernels for Fourier-slice projection / backprojection (declared in slicing_cuda.h).
//
// Includes only CUDA headers and slice_geometry.h (the sampling rule shared with the CPU
// kernels), so it compiles with nvcc alone; the torch binding is slicing_cuda_binding.cpp.
//   project:      one thread per (image, pixel): gather 8 corners x K, write one output pixel.
//   gather_grads: blocks of 256 pixels of one image; block reductions, one atomicAdd per block
//                 and quantity into grad_coeffs / grad_rot.
//   scatter:      one thread per (image, pixel); atomicAdd into the voxels (order not fixed).

#include <cuda_runtime.h>
#include <stdint.h>

#include "slice_geometry.h"
#include "slicing_cuda.h"

namespace cryovox {
namespace cuda {
namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t items) {
    int64_t b = (items + kThreads - 1) / kThreads;
    if (b > 65535LL * 32) b = 65535LL * 32;  // grid-stride loops cover the rest
    return (int)(b < 1 ? 1 : b);
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block; the result is valid in thread 0. `shared` holds >= 32 T.
template <typename T>
__device__ T block_sum(T v, T* shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // shared may still be read by a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    const int nwarps = (blockDim.x + 31) >> 5;
    v = threadIdx.x < nwarps ? shared[threadIdx.x] : (T)0;
    if (warp == 0) v = warp_sum(v);
    return v;
}

template <typename T>
__global__ void project_kernel(const Pixel* __restrict__ px, const T* __restrict__ basis_t,
                               const T* __restrict__ coeffs, const T* __restrict__ bias, const T* __restrict__ rot,
                               Dims d, T* __restrict__ out) {
    const int64_t total = d.B * d.N;
    const int64_t img = (int64_t)d.D * (d.D / 2 + 1);
    for (int64_t it = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; it < total;
         it += (int64_t)gridDim.x * blockDim.x) {
        const int64_t b = it / d.N;
        const Pixel q = px[it - b * d.N];
        SlicePoint<T> s;
        slice_point<T>(rot + 9 * b, (T)q.kx, (T)q.ky, d.pad, d.Dv, s);
        T re = 0, im = 0;
        if (basis_t) {
            const T* cf = coeffs + b * d.K;
            for (int c = 0; c < 8; ++c) {
                if (!((s.valid >> c) & 1u)) continue;
                const T* v = basis_t + 2 * s.idx[c] * d.K;
                T sr = 0, si = 0;
                for (int64_t k = 0; k < d.K; ++k) {
                    const T ck = __ldg(cf + k);
                    sr += ck * __ldg(v + 2 * k);
                    si += ck * __ldg(v + 2 * k + 1);
                }
                re += s.w[c] * sr;
                im += s.w[c] * si;
            }
        }
        if (bias) {
            for (int c = 0; c < 8; ++c) {
                if (!((s.valid >> c) & 1u)) continue;
                re += s.w[c] * __ldg(bias + 2 * s.idx[c]);
                im += s.w[c] * __ldg(bias + 2 * s.idx[c] + 1);
            }
        }
        T* o = out + 2 * (b * img + q.index);
        o[0] = re;
        o[1] = s.flip ? -im : im;
    }
}

// grid (x: pixel blocks, y: images); blockDim.x == kThreads.
template <typename T>
__global__ void gather_grads_kernel(const Pixel* __restrict__ px, const T* __restrict__ grad,
                                    const T* __restrict__ basis_t, const T* __restrict__ coeffs,
                                    const T* __restrict__ bias, const T* __restrict__ rot, Dims d,
                                    T* __restrict__ grad_coeffs, T* __restrict__ grad_rot) {
    __shared__ T shared[32];
    const int64_t b = blockIdx.y;
    const int64_t img = (int64_t)d.D * (d.D / 2 + 1);
    const T* cf = coeffs ? coeffs + b * d.K : nullptr;
    T gr[6] = {0, 0, 0, 0, 0, 0};
    for (int64_t n0 = (int64_t)blockIdx.x * blockDim.x; n0 < d.N; n0 += (int64_t)gridDim.x * blockDim.x) {
        const int64_t n = n0 + threadIdx.x;
        const bool active = n < d.N;
        SlicePoint<T> s;
        T gre = 0, gim = 0;
        if (active) {
            const Pixel q = px[n];
            slice_point<T>(rot + 9 * b, (T)q.kx, (T)q.ky, d.pad, d.Dv, s);
            const T* gp = grad + 2 * (b * img + q.index);
            gre = gp[0];
            gim = s.flip ? -gp[1] : gp[1];
            if (grad_rot) {
                T vr[8], vi[8];
                for (int c = 0; c < 8; ++c) {
                    T r = 0, i = 0;
                    if ((s.valid >> c) & 1u) {
                        if (basis_t) {
                            const T* v = basis_t + 2 * s.idx[c] * d.K;
                            for (int64_t k = 0; k < d.K; ++k) {
                                r += cf[k] * v[2 * k];
                                i += cf[k] * v[2 * k + 1];
                            }
                        }
                        if (bias) {
                            r += bias[2 * s.idx[c]];
                            i += bias[2 * s.idx[c] + 1];
                        }
                    }
                    vr[c] = r;
                    vi[c] = i;
                }
                const T sgn = s.flip ? (T)-1 : (T)1;
                for (int j = 0; j < 3; ++j) {
                    T dr = 0, di = 0;
                    for (int c = 0; c < 8; ++c) {
                        const T dw = corner_weight_derivative<T>(s, c, j);
                        dr += dw * vr[c];
                        di += dw * vi[c];
                    }
                    const T dLdp = sgn * (T)d.pad * (gre * dr + gim * di);
                    gr[j] += dLdp * (T)q.kx;
                    gr[3 + j] += dLdp * (T)q.ky;
                }
            }
        }
        if (grad_coeffs) {  // uniform branch: every thread of the block takes part in the reductions
            for (int64_t k = 0; k < d.K; ++k) {
                T contrib = 0;
                if (active && (gre != (T)0 || gim != (T)0)) {
                    T ar = 0, ai = 0;
                    for (int c = 0; c < 8; ++c) {
                        if (!((s.valid >> c) & 1u)) continue;
                        const T* v = basis_t + 2 * s.idx[c] * d.K;
                        ar += s.w[c] * v[2 * k];
                        ai += s.w[c] * v[2 * k + 1];
                    }
                    contrib = gre * ar + gim * ai;
                }
                const T total = block_sum(contrib, shared);
                if (threadIdx.x == 0 && total != (T)0) atomicAdd(grad_coeffs + b * d.K + k, total);
            }
        }
    }
    if (grad_rot) {
        for (int j = 0; j < 6; ++j) {
            const T total = block_sum(gr[j], shared);
            if (threadIdx.x == 0 && total != (T)0) atomicAdd(grad_rot + 9 * b + j, total);
        }
    }
}

template <typename T>
__global__ void scatter_kernel(const Pixel* __restrict__ px, const T* __restrict__ vals, const T* __restrict__ wts,
                               const T* __restrict__ coeffs, const T* __restrict__ rot, Dims d, T* __restrict__ out_k,
                               T* __restrict__ out_1, T* __restrict__ out_w) {
    const int64_t total = d.B * d.N;
    const int64_t img = (int64_t)d.D * (d.D / 2 + 1);
    for (int64_t it = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; it < total;
         it += (int64_t)gridDim.x * blockDim.x) {
        const int64_t b = it / d.N;
        const Pixel q = px[it - b * d.N];
        const T* vp = vals + 2 * (b * img + q.index);
        const T wt = wts ? wts[b * img + q.index] : (T)1;
        SlicePoint<T> s;
        slice_point<T>(rot + 9 * b, (T)q.kx, (T)q.ky, d.pad, d.Dv, s);
        const T vr = vp[0], vi = s.flip ? -vp[1] : vp[1];
        const T* cf = coeffs ? coeffs + b * d.K : nullptr;
        for (int c = 0; c < 8; ++c) {
            if (!((s.valid >> c) & 1u)) continue;
            const int64_t v = s.idx[c];
            const T w = s.w[c], wr = w * vr, wi = w * vi;
            if (out_k) {
                T* o = out_k + 2 * v * d.K;
                for (int64_t k = 0; k < d.K; ++k) {
                    atomicAdd(o + 2 * k, cf[k] * wr);
                    atomicAdd(o + 2 * k + 1, cf[k] * wi);
                }
            }
            if (out_1) {
                atomicAdd(out_1 + 2 * v, wr);
                atomicAdd(out_1 + 2 * v + 1, wi);
            }
            if (out_w) atomicAdd(out_w + v, w * wt);
        }
    }
}

}  // namespace

template <typename T>
cudaError_t project(const Pixel* px, const T* basis_t, const T* coeffs, const T* bias, const T* rot, Dims d, T* out,
                    cudaStream_t stream) {
    if (d.B * d.N == 0) return cudaSuccess;
    project_kernel<T><<<blocks_for(d.B * d.N), kThreads, 0, stream>>>(px, basis_t, coeffs, bias, rot, d, out);
    return cudaGetLastError();
}

template <typename T>
cudaError_t gather_grads(const Pixel* px, const T* grad, const T* basis_t, const T* coeffs, const T* bias,
                         const T* rot, Dims d, T* grad_coeffs, T* grad_rot, cudaStream_t stream) {
    if (d.B * d.N == 0 || (!grad_coeffs && !grad_rot)) return cudaSuccess;
    if (d.B > 65535) {  // grid.y limit: launch in slices of images
        for (int64_t b0 = 0; b0 < d.B; b0 += 65535) {
            Dims part = d;
            part.B = d.B - b0 < 65535 ? d.B - b0 : 65535;
            const int64_t img = (int64_t)d.D * (d.D / 2 + 1);
            cudaError_t e = gather_grads<T>(px, grad + 2 * b0 * img, basis_t, coeffs ? coeffs + b0 * d.K : nullptr,
                                            bias, rot + 9 * b0, part, grad_coeffs ? grad_coeffs + b0 * d.K : nullptr,
                                            grad_rot ? grad_rot + 9 * b0 : nullptr, stream);
            if (e != cudaSuccess) return e;
        }
        return cudaSuccess;
    }
    dim3 grid((unsigned)((d.N + kThreads - 1) / kThreads), (unsigned)d.B);
    gather_grads_kernel<T><<<grid, kThreads, 0, stream>>>(px, grad, basis_t, coeffs, bias, rot, d, grad_coeffs,
                                                          grad_rot);
    return cudaGetLastError();
}

template <typename T>
cudaError_t scatter(const Pixel* px, const T* vals, const T* wts, const T* coeffs, const T* rot, Dims d, T* out_k,
                    T* out_1, T* out_w, cudaStream_t stream) {
    if (d.B * d.N == 0) return cudaSuccess;
    scatter_kernel<T><<<blocks_for(d.B * d.N), kThreads, 0, stream>>>(px, vals, wts, coeffs, rot, d, out_k, out_1,
                                                                      out_w);
    return cudaGetLastError();
}

#define CRYOVOX_INSTANTIATE(T)                                                                                       \
    template cudaError_t project<T>(const Pixel*, const T*, const T*, const T*, const T*, Dims, T*, cudaStream_t);   \
    template cudaError_t gather_grads<T>(const Pixel*, const T*, const T*, const T*, const T*, const T*, Dims, T*,   \
                                         T*, cudaStream_t);                                                          \
    template cudaError_t scatter<T>(const Pixel*, const T*, const T*, const T*, const T*, Dims, T*, T*, T*,         \
                                    cudaStream_t);

CRYOVOX_INSTANTIATE(float)
CRYOVOX_INSTANTIATE(double)

}  // namespace cuda
}  // namespace cryovox
