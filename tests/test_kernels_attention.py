"""Decode attention: the triton kernel against torch SDPA over the sliced cache, and the masked static-shape path.

On CPU the kernel runs under the triton interpreter (TRITON_INTERPRET=1, set by
the `kernel_device` fixture before the kernel is first built); with CUDA the
same tests run the compiled kernel, and the `cuda` tests add serving shapes and
half precision.
"""
from __future__ import annotations


import pytest
import torch

from reference.kernels import decode_attention

HAS_CUDA = torch.cuda.is_available()


def make(b, h, t, dh, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, dh, generator=g)
    k = torch.randn(b, h, t, dh, generator=g)
    v = torch.randn(b, h, t, dh, generator=g)
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)


@pytest.mark.parametrize("b,h,t,dh,length", [
    (1, 1, 1, 8, 1),  # a single position
    (2, 3, 40, 24, 17),  # Dh not a power of two, length mid-cache
    (2, 2, 33, 64, 33),  # full cache, T not a multiple of the tile
    (1, 4, 70, 16, 1),  # first decode step of a long cache
    (3, 1, 50, 5, 50),
    (1, 2, 64, 32, 48),
])
def test_triton_equals_sdpa(kernel_device, b, h, t, dh, length):
    q, k, v = make(b, h, t, dh, seed=length, device=kernel_device)
    ref = decode_attention(q, k, v, length)
    out = decode_attention(q, k, v, length, backend="triton")
    assert out.shape == (b, h, dh) and out.dtype == q.dtype
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_positions_past_length_are_never_read(kernel_device):
    q, k, v = make(2, 2, 40, 16, seed=1, device=kernel_device)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 23:] = float("nan")
    v2[:, :, 23:] = 1e30
    for backend in ("sdpa", "triton"):
        out = decode_attention(q, k2, v2, 23, backend=backend)
        assert torch.isfinite(out).all(), backend
        torch.testing.assert_close(out, decode_attention(q, k, v, 23, backend=backend), rtol=0, atol=0)


def test_identical_keys_average_the_values(kernel_device):
    q, k, v = make(1, 2, 30, 8, seed=2, device=kernel_device)
    k[:] = k[:, :, :1]  # every position has the same key: uniform attention
    for backend in ("sdpa", "triton"):
        out = decode_attention(q, k, v, 12, backend=backend)
        torch.testing.assert_close(out, v[:, :, :12].mean(2), rtol=1e-5, atol=1e-5)


def test_strided_layouts_and_custom_scale(kernel_device):
    g = torch.Generator().manual_seed(4)
    b, h, t, dh = 2, 3, 37, 20
    # the cache as a model often holds it: [B,T,H,Dh] seen as [B,H,T,Dh]
    k = torch.randn(b, t, h, dh, generator=g).to(kernel_device).transpose(1, 2)
    v = torch.randn(b, t, h, dh, generator=g).to(kernel_device).transpose(1, 2)
    q = torch.randn(b, dh, h, generator=g).to(kernel_device).transpose(1, 2)  # [B,H,Dh], strided
    assert not (k.is_contiguous() or q.is_contiguous())
    for scale in (None, 0.05, 1.0):
        ref = decode_attention(q.contiguous(), k.contiguous(), v.contiguous(), 30, scale=scale)
        out = decode_attention(q, k, v, 30, scale=scale, backend="triton")
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(decode_attention(q, k, v, 30, scale=scale), ref, rtol=1e-5, atol=1e-5)


def test_half_inputs_accumulate_in_fp32(kernel_device):
    q, k, v = make(2, 2, 45, 32, seed=5, dtype=torch.float16, device=kernel_device)
    out = decode_attention(q, k, v, 45, backend="triton")
    assert out.dtype == torch.float16
    ref = decode_attention(q.float(), k.float(), v.float(), 45)
    torch.testing.assert_close(out.float(), ref, rtol=2e-3, atol=2e-3)


def test_tensor_length_masks_the_whole_cache_like_the_int_slice():
    """Static-shape decoding: a 0-d tensor length reads all T positions with a mask and must give what the
    sliced int path gives, whatever garbage lies past the length."""
    q, k, v = make(2, 3, 40, 16, seed=4)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 23:] = 1e4  # huge scores past the length: any leak would dominate the softmax
    v2[:, :, 23:] = 1e30
    for length in (1, 23):
        if length == 23:
            k, v = k2, v2
        out = decode_attention(q, k, v, torch.tensor(length))
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, decode_attention(q, k, v, length), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("length,msg", [(torch.tensor(3.0), "0-d integer"), (torch.tensor([3]), "0-d integer"),
                                        (torch.tensor(True), "0-d integer")])
def test_bad_tensor_length_is_one_clear_value_error(length, msg):
    q, k, v = make(1, 1, 40, 8)
    with pytest.raises(ValueError, match=msg):
        decode_attention(q, k, v, length)
    with pytest.raises(ValueError, match="backend='sdpa'"):
        decode_attention(q, k, v, torch.tensor(3), backend="triton")


@pytest.mark.parametrize("length,msg", [(0, "length"), (41, "length"), (3.0, "length")])
def test_bad_length_is_one_clear_value_error(length, msg):
    q, k, v = make(1, 1, 40, 8)
    with pytest.raises(ValueError, match=msg):
        decode_attention(q, k, v, length)


def test_shape_and_backend_mistakes_are_value_errors(monkeypatch):
    q, k, v = make(1, 2, 10, 8)
    with pytest.raises(ValueError, match="q is"):
        decode_attention(q[:, :1], k, v, 5)
    with pytest.raises(ValueError, match="differ"):
        decode_attention(q, k, v[:, :, :9], 5)
    with pytest.raises(ValueError, match="unknown backend"):
        decode_attention(q, k, v, 5, backend="flash")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not HAS_CUDA:
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            decode_attention(q, k, v, 5, backend="triton")


@pytest.mark.parametrize("b,h,t,dh,dtype", [
    (64, 16, 256, 64, torch.bfloat16),
    (64, 16, 256, 64, torch.float32),
    (4, 16, 1024, 128, torch.float16),
    (1, 1, 7, 64, torch.bfloat16),
])
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_serving_shapes_match_sdpa(b, h, t, dh, dtype):
    q, k, v = make(b, h, t, dh, seed=7, dtype=dtype, device="cuda")
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for length in (1, t // 2 + 1, t):
        ref = decode_attention(q.float(), k.float(), v.float(), length)
        out = decode_attention(q, k, v, length, backend="triton")
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
