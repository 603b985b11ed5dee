"""Compiled slicing kernels (csrc/, cryovox._C) against the pure-PyTorch reference.

Skipped as a whole when the extension is not built (``pip install --no-build-isolation -e .``
builds it); the fallback test runs either way.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cryovox.core import _ext
from cryovox.core._slicing_ref import backproject_ref, project_ref
from cryovox.core.rotations import random_rotations

C128, F64 = torch.complex128, torch.float64
needs_ext = pytest.mark.skipif(not _ext.available("cpu"), reason="cryovox._C (compiled kernels) is not built")


def make(box, pad, K, B, seed, dtype=C128, with_basis=True, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    P = box * pad
    rdt = torch.float64 if dtype == C128 else torch.float32
    basis = torch.randn(K, P, P, P // 2 + 1, dtype=dtype, generator=g) if with_basis else None
    coeffs = torch.randn(B, K, dtype=rdt, generator=g) if with_basis else None
    bias = torch.randn(P, P, P // 2 + 1, dtype=dtype, generator=g) if with_bias else None
    rot = random_rotations(B, g, dtype=rdt)
    return basis, coeffs, bias, rot


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


CASES = [  # box, pad, K, basis, bias, radius
    (16, 1, 3, True, True, None),
    (17, 1, 1, True, False, None),
    (9, 2, 2, True, True, None),
    (12, 1, 4, False, True, 3.7),
    (10, 3, 5, True, False, 4.0),
    (8, 2, 1, True, True, None),  # K = 1 with a bias: the single-volume paths with both volumes
]


@needs_ext
@pytest.mark.parametrize("box,pad,K,wb,wbias,radius", CASES)
def test_kernel_forward_and_backward_equal_reference(box, pad, K, wb, wbias, radius):
    basis, coeffs, bias, rot = make(box, pad, K, 7, seed=box + pad, with_basis=wb, with_bias=wbias)
    r = box / 2 if radius is None else radius
    leaves = [t.requires_grad_() for t in (basis, coeffs, bias, rot) if t is not None]
    a = project_ref(basis, coeffs, bias, rot, r, pad)
    b = _ext.project(basis, coeffs, bias, rot, r, pad)
    assert rel(b, a) < 1e-10
    go = torch.randn(a.shape, dtype=a.dtype, generator=torch.Generator().manual_seed(1))
    ga = torch.autograd.grad(a, leaves, go)
    gb = torch.autograd.grad(b, leaves, go)
    for x, y in zip(gb, ga):
        assert x.shape == y.shape and rel(x, y) < 1e-10
    # only the gradients asked for (here: rotations alone)
    (grot,) = torch.autograd.grad(_ext.project(basis, coeffs, bias, rot, r, pad), [rot], go)
    assert rel(grot, ga[-1]) < 1e-10


@needs_ext
@pytest.mark.parametrize("box,pad", [(16, 1), (9, 2), (11, 1)])
def test_kernel_backproject_equals_reference_and_is_adjoint(box, pad):
    _, _, bias, rot = make(box, pad, 1, 9, seed=box, with_basis=False)
    g = torch.Generator().manual_seed(2)
    imgs = torch.randn(9, box, box // 2 + 1, dtype=C128, generator=g)
    wts = torch.rand(9, box, box // 2 + 1, dtype=F64, generator=g)
    for w in (wts, None):
        d1, w1 = backproject_ref(imgs, rot, w, box / 2, pad)
        d2, w2 = _ext.backproject(imgs, rot, w, box / 2, pad)
        assert rel(d2, d1) < 1e-12 and rel(w2, w1) < 1e-12
    lhs = (_ext.project(None, None, bias, rot, box / 2, pad).conj() * imgs).real.sum()
    rhs = (bias.conj() * _ext.backproject(imgs, rot, None, box / 2, pad)[0]).real.sum()
    assert abs(lhs - rhs) < 1e-10 * abs(lhs)


@needs_ext
@pytest.mark.parametrize("K", [1, 3])  # single-volume and general paths
def test_kernel_float32_matches_reference(K):
    basis, coeffs, bias, rot = make(20, 2, K, 6, seed=5, dtype=torch.complex64)
    a = project_ref(basis, coeffs, bias, rot, 10.0, 2)
    b = _ext.project(basis, coeffs, bias, rot, 10.0, 2)
    assert b.dtype == torch.complex64 and rel(b, a) < 1e-5
    imgs = a.detach()
    d1, w1 = backproject_ref(imgs, rot, None, 10.0, 2)
    d2, w2 = _ext.backproject(imgs, rot, None, 10.0, 2)
    assert rel(d2, d1) < 1e-5 and rel(w2, w1) < 1e-5


@needs_ext
@pytest.mark.parametrize("K", [1, 2])
def test_gradcheck_through_kernel(K):
    basis, coeffs, bias, rot = make(4, 1, K, 2, seed=3)
    inputs = tuple(t.requires_grad_() for t in (basis, coeffs, bias, rot))
    assert torch.autograd.gradcheck(lambda a, c, b, r: _ext.project(a, c, b, r, 2.0, 1), inputs,
                                    eps=1e-6, atol=1e-7)


@needs_ext
@pytest.mark.parametrize("K", [4, 1])  # general and single-volume paths
def test_backward_deterministic_and_thread_count_independent(K):
    basis, coeffs, bias, rot = make(24, 1, K, 160, seed=8, dtype=torch.complex64)
    go = torch.randn(160, 24, 13, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    wts = go.real.abs()
    calls = [
        (torch.ops.cryovox.project_backward, (go, basis, coeffs, bias, rot, 12.0, 1, [True, True, True, True])),
        (torch.ops.cryovox.project_backward, (go, None, None, bias, rot, 12.0, 1, [False, False, True, True])),
        (torch.ops.cryovox.backproject, (go, rot, wts, 12.0, 1)),
    ]
    old = torch.get_num_threads()
    for op, args in calls:
        try:
            torch.set_num_threads(max(old, 2))  # more than one slab even on a 1-core machine
            first = op(*args)
            second = op(*args)
            torch.set_num_threads(1)
            serial = op(*args)
        finally:
            torch.set_num_threads(old)
        for x, y, z in zip(first, second, serial):
            assert torch.equal(x, y) and torch.equal(x, z)


@needs_ext
def test_scatter_loses_no_updates_when_all_images_hit_the_same_voxels():
    # 3000 images with one pose: every voxel receives 3000 contributions from many threads' chunks.
    B, box = 3000, 8
    rot = random_rotations(1, torch.Generator().manual_seed(4)).expand(B, 3, 3).contiguous()
    img = torch.randn(1, box, box // 2 + 1, dtype=C128, generator=torch.Generator().manual_seed(5))
    data, weight = _ext.backproject(img.expand(B, -1, -1).contiguous(), rot, None, box / 2, 1)
    d1, w1 = _ext.backproject(img, rot[:1], None, box / 2, 1)
    assert rel(data, B * d1) < 1e-12 and rel(weight, B * w1) < 1e-12
    # and random poses on a tiny grid against the serial reference
    rot = random_rotations(B, torch.Generator().manual_seed(6))
    imgs = torch.randn(B, 4, 3, dtype=C128, generator=torch.Generator().manual_seed(7))
    d1, w1 = backproject_ref(imgs, rot, None, 2.0, 1)
    d2, w2 = _ext.backproject(imgs, rot, None, 2.0, 1)
    assert rel(d2, d1) < 1e-12 and rel(w2, w1) < 1e-12
    # the basis gradient takes the same path
    basis = torch.randn(2, 4, 4, 3, dtype=C128, requires_grad=True)
    coeffs = torch.randn(B, 2, dtype=F64)
    (g1,) = torch.autograd.grad(project_ref(basis, coeffs, None, rot, 2.0, 1), basis, imgs)
    (g2,) = torch.autograd.grad(_ext.project(basis, coeffs, None, rot, 2.0, 1), basis, imgs)
    assert rel(g2, g1) < 1e-12


@needs_ext
def test_meta_kernels_give_the_real_outputs_shapes_dtypes_and_strides():
    from torch._subclasses.fake_tensor import FakeTensorMode

    basis, coeffs, bias, rot = make(9, 2, 3, 4, seed=11, dtype=torch.complex64)
    rot = rot.double()  # the kernels convert the poses to the volumes' real dtype
    go = torch.randn(4, 9, 5, dtype=torch.complex64, generator=torch.Generator().manual_seed(3))
    calls = [
        (torch.ops.cryovox.project, (basis, coeffs, bias, rot, 4.5, 2)),
        (torch.ops.cryovox.project, (None, None, bias, rot, 3.0, 2)),
        (torch.ops.cryovox.project_backward, (go, basis, coeffs, bias, rot, 4.5, 2, [True, True, True, True])),
        (torch.ops.cryovox.project_backward, (go, basis, coeffs, None, rot, 4.5, 2, [True, False, True, False])),
        (torch.ops.cryovox.project_backward, (go, None, None, bias, rot, 4.5, 2, [True, True, True, True])),
        (torch.ops.cryovox.backproject, (go, rot, go.real.abs(), 4.5, 2)),
        (torch.ops.cryovox.backproject, (go.to(C128), rot, None, 4.5, 3)),
    ]

    def meta_of(x):
        return [(tuple(t.shape), t.stride(), t.dtype, t.device.type) for t in (x if isinstance(x, tuple) else (x,))]

    mode = FakeTensorMode()
    for op, args in calls:
        real = meta_of(op(*args))
        fake = meta_of(op(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]))
        assert fake == real, (op, fake, real)
        on_meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
        assert meta_of(op(*on_meta)) == [(s, st, dt, "meta") for s, st, dt, _ in real]
    with pytest.raises(RuntimeError, match="coeffs must be"):  # shape errors are found without data
        torch.ops.cryovox.project(basis.to("meta"), coeffs[:2].to("meta"), None, rot.to("meta"), 4.5, 2)


@needs_ext
def test_ops_pass_torch_library_opcheck():
    # schema, autograd registration, FakeTensor and AOTAutograd (dynamic shapes) consistency
    basis, coeffs, bias, rot = make(8, 1, 2, 3, seed=12)
    img = torch.randn(3, 8, 5, dtype=C128, generator=torch.Generator().manual_seed(4))
    leaves = [t.clone().requires_grad_() for t in (basis, coeffs, bias, rot)]
    for op, args in [
        (torch.ops.cryovox.project.default, (*leaves, 4.0, 1)),
        (torch.ops.cryovox.project_backward.default, (img, basis, coeffs, None, rot, 4.0, 1, [True, False, True, True])),
        (torch.ops.cryovox.backproject.default, (img, rot, img.real.abs(), 4.0, 2)),
    ]:
        result = torch.library.opcheck(op, args)
        assert set(result.values()) == {"SUCCESS"}, (op, result)


@needs_ext
def test_torch_compile_fullgraph_matches_eager():
    from cryovox.core.slicing import backproject, project

    def step(basis, coeffs, bias, rot, target):
        img = project(basis, coeffs, bias, rot, pad=2)
        loss = (img - target).abs().pow(2).sum()
        data, weight = backproject((img - target).detach(), rot.detach(), pad=2)
        return loss, data, weight

    basis, coeffs, bias, rot = make(8, 2, 2, 5, seed=13)
    target = torch.randn(5, 8, 5, dtype=C128, generator=torch.Generator().manual_seed(5))
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (step, compiled):
        leaves = [t.clone().requires_grad_() for t in (basis, coeffs, bias, rot)]
        loss, data, weight = fn(*leaves, target)
        results.append((loss, data, weight, *torch.autograd.grad(loss, leaves)))
    for e, c in zip(*results):
        assert c.shape == e.shape and rel(c, e) < 1e-12
    assert results[1][3].abs().max() > 0 and results[1][6].abs().max() > 0  # basis and rotation gradients


def test_fallback_to_reference_warns_once():
    code = (
        "import warnings, torch\n"
        "from cryovox.core.slicing import project_volume, backproject\n"
        "from cryovox.core import _ext\n"
        "v = torch.randn(8, 8, 5, dtype=torch.complex128)\n"
        "r = torch.eye(3, dtype=torch.float64)[None]\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    a = project_volume(v, r); b = project_volume(v, r); backproject(a, r)\n"
        "msgs = [str(x.message) for x in w if 'reference' in str(x.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert not _ext.available('cpu')\n"
        "assert torch.allclose(a[0, 4, :], v[4, 4, :])\n"  # identity pose: the z = 0 plane
        "print('ok')\n"
    )
    env = {"CRYOVOX_NO_EXT": "1", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


needs_cuda_ext = pytest.mark.skipif(not (torch.cuda.is_available() and _ext.available("cuda")),
                                    reason="no CUDA device or CUDA kernels not built")


@needs_cuda_ext
@pytest.mark.parametrize("box,pad,K,wb,wbias,radius", CASES[:3])
def test_cuda_kernel_equals_reference(box, pad, K, wb, wbias, radius):
    basis, coeffs, bias, rot = make(box, pad, K, 7, seed=box + pad, with_basis=wb, with_bias=wbias)
    r = box / 2 if radius is None else radius
    leaves = [t.requires_grad_() for t in (basis, coeffs, bias, rot) if t is not None]
    gpu = [t.detach().cuda().requires_grad_() for t in leaves]
    it = iter(gpu)
    args = [next(it) if t is not None else None for t in (basis, coeffs, bias, rot)]
    a = project_ref(basis, coeffs, bias, rot, r, pad)
    b = _ext.project(*args, r, pad)
    assert b.is_cuda and rel(b.cpu(), a) < 1e-10
    go = torch.randn(a.shape, dtype=a.dtype, generator=torch.Generator().manual_seed(1))
    ga = torch.autograd.grad(a, leaves, go)
    gb = torch.autograd.grad(b, gpu, go.cuda())
    for x, y in zip(gb, ga):
        assert rel(x.cpu(), y) < 1e-10
    imgs, wts = go, torch.rand(go.shape, dtype=F64, generator=torch.Generator().manual_seed(2))
    d1, w1 = backproject_ref(imgs, rot.detach(), wts, r, pad)
    d2, w2 = _ext.backproject(imgs.cuda(), rot.detach().cuda(), wts.cuda(), r, pad)
    assert rel(d2.cpu(), d1) < 1e-10 and rel(w2.cpu(), w1) < 1e-10


@needs_cuda_ext
def test_cuda_gradcheck_and_float32():
    basis, coeffs, bias, rot = make(4, 1, 2, 2, seed=3)
    inputs = tuple(t.cuda().requires_grad_() for t in (basis, coeffs, bias, rot))
    assert torch.autograd.gradcheck(lambda a, c, b, r: _ext.project(a, c, b, r, 2.0, 1), inputs,
                                    eps=1e-6, atol=1e-7)
    basis, coeffs, bias, rot = make(20, 2, 3, 6, seed=5, dtype=torch.complex64)
    a = project_ref(basis, coeffs, bias, rot, 10.0, 2)
    b = _ext.project(basis.cuda(), coeffs.cuda(), bias.cuda(), rot.cuda(), 10.0, 2)
    assert rel(b.cpu(), a) < 1e-5
