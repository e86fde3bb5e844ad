"""Attention for one new query token against a static KV cache (decoding).

q [B,H,Dh] attends to cache positions [0, length) of k_cache / v_cache
[B,H,T,Dh]; the new token's own key and value are already written at position
length - 1. ``length`` is an int (positions >= length are never read), or a
0-d integer tensor for static-shape decoding under torch.compile: then the
whole cache is read and positions >= length are masked out (sdpa only). A
tensor length's value is not checked (that would cost a host sync per token):
the caller keeps it in [1, T] (0 masks every position, one past T reads the
whole cache, neither raises).

Backends:
- ``sdpa``   : torch ``scaled_dot_product_attention`` over the sliced cache
               (the plain twin, and the default).
- ``triton`` : one program per (batch, head) streams the cache in BLOCK_T tiles
               with an online fp32 softmax (running max and sum), masked to
               ``length``; inputs may be fp32 / bf16 / fp16, the output has q's
               dtype. Runs on CPU tensors under ``TRITON_INTERPRET=1``.
The default stays ``sdpa`` unless a GPU benchmark shows the kernel winning
(benchmarks/gpu_kernels.py, results/benchmarks/gpu-*.json).
"""
from __future__ import annotations

import functools
import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("sdpa", "triton")


def _check(q: Tensor, k_cache: Tensor, v_cache: Tensor, length: int | Tensor, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"decode_attention: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.dim() != 4:
        raise ValueError("decode_attention: expected q [B,H,Dh] and caches [B,H,T,Dh], got "
                         f"{tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"decode_attention: k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ")
    b, h, t, dh = k_cache.shape
    if tuple(q.shape) != (b, h, dh):
        raise ValueError(f"decode_attention: q is {tuple(q.shape)} but the cache expects {(b, h, dh)}")
    if isinstance(length, Tensor):
        # a device tensor's value is not checked here: that would synchronise every decoding step
        if length.dim() != 0 or length.is_floating_point() or length.is_complex() or length.dtype == torch.bool:
            raise ValueError(f"decode_attention: a tensor length must be a 0-d integer tensor, got {length.dtype} "
                             f"{tuple(length.shape)}")
        if length.device != q.device:
            raise ValueError(f"decode_attention: length is on {length.device} but q is on {q.device}")
        if backend != "sdpa":
            raise ValueError("decode_attention: a tensor length (static-shape decoding) needs backend='sdpa'")
    elif type(length) is not int or not 1 <= length <= t:  # a bool is no position count
        raise ValueError(f"decode_attention: length must be an int in [1, {t}] (the cache size), got {length!r}")
    if not (q.device == k_cache.device == v_cache.device):
        raise ValueError("decode_attention: q, k_cache and v_cache must be on one device")


# ---------------------------------------------------------------------------
# backend "sdpa": the plain twin
# ---------------------------------------------------------------------------

def _attend_sdpa(q: Tensor, k_cache: Tensor, v_cache: Tensor, length: int | Tensor, scale: float) -> Tensor:
    if isinstance(length, Tensor):  # static shapes: the whole cache, positions >= length masked out
        t = k_cache.shape[2]
        mask = torch.arange(t, device=q.device) < length  # [T] bool
        k, v, mask = k_cache, v_cache, mask.view(1, 1, 1, t)
    else:
        k, v, mask = k_cache[:, :, :length], v_cache[:, :, :length], None  # [B,H,L,Dh]
    out = F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=mask, scale=scale)  # [B,H,1,Dh]
    return out.squeeze(2)  # [B,H,Dh]


# ---------------------------------------------------------------------------
# backend "triton": online-softmax decode kernel, built lazily (TRITON_INTERPRET
# is read when triton.jit decorates)
# ---------------------------------------------------------------------------

def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton_kernel(interpret: bool):
    import triton
    import triton.language as tl

    @triton.jit
    def decode_kernel(
        q_ptr, k_ptr, v_ptr, o_ptr,
        length, qk_scale, H, DH,
        sq_b, sq_h, sq_d,
        sk_b, sk_h, sk_t, sk_d,
        sv_b, sv_h, sv_t, sv_d,
        so_b, so_h, so_d,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = (pid // H).to(tl.int64)
        h = (pid % H).to(tl.int64)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < DH
        # qk_scale = scale * log2(e): softmax in base 2
        q = tl.load(q_ptr + b * sq_b + h * sq_h + offs_d * sq_d, mask=d_ok, other=0.0).to(tl.float32)
        q = q * qk_scale
        k_base = k_ptr + b * sk_b + h * sk_h
        v_base = v_ptr + b * sv_b + h * sv_h
        m_i = tl.max(tl.full([BLOCK_T], float("-inf"), tl.float32), axis=0)  # running max (scalar)
        l_i = tl.sum(tl.zeros([BLOCK_T], tl.float32), axis=0)  # running sum of exp2
        acc = tl.zeros([BLOCK_D], tl.float32)
        for t0 in range(0, length, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            t_ok = offs_t < length
            mask = t_ok[:, None] & d_ok[None, :]
            k = tl.load(k_base + offs_t[:, None] * sk_t + offs_d[None, :] * sk_d, mask=mask, other=0.0)
            s = tl.sum(k.to(tl.float32) * q[None, :], axis=1)  # [BLOCK_T]
            s = tl.where(t_ok, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=0))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new)  # 0 past length
            v = tl.load(v_base + offs_t[:, None] * sv_t + offs_d[None, :] * sv_d, mask=mask, other=0.0)
            acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            m_i = m_new
        out = acc / l_i
        tl.store(o_ptr + b * so_b + h * so_h + offs_d * so_d, out.to(o_ptr.dtype.element_ty), mask=d_ok)

    return decode_kernel


def _attend_triton(q: Tensor, k_cache: Tensor, v_cache: Tensor, length: int, scale: float) -> Tensor:
    if q.device.type != "cuda" and not _interpret():
        raise ValueError("decode_attention: backend='triton' needs CUDA tensors "
                         "(or TRITON_INTERPRET=1 set before the first triton call, to run on CPU)")
    b, h, t, dh = k_cache.shape
    out = torch.empty(b, h, dh, dtype=q.dtype, device=q.device)
    block_d = max(16, 1 << (dh - 1).bit_length())
    interpret = _interpret()
    # interpreter: a small tile so that several tiles and the tail mask are exercised
    block_t = 16 if interpret else max(16, min(64, 8192 // block_d))
    kernel = _triton_kernel(interpret)
    kernel[(b * h,)](
        q, k_cache, v_cache, out,
        length, scale * 1.4426950408889634, h, dh,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *out.stride(),
        BLOCK_T=block_t, BLOCK_D=block_d,
        **({} if interpret else {"num_warps": 4 if block_d <= 64 else 8}),
    )
    return out


# ---------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------

def decode_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    length: int | Tensor,
    scale: float | None = None,
    backend: str = "sdpa",
) -> Tensor:
    """Softmax(q . k / sqrt(Dh) or scale) @ v over cache positions [0, length).

    q [B,H,Dh], k_cache / v_cache [B,H,T,Dh] -> [B,H,Dh] in q's dtype. ``length``: an int, or a 0-d integer
    tensor (static shapes: the whole cache is read, masked; backend "sdpa" only).
    """
    _check(q, k_cache, v_cache, length, backend)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if backend == "sdpa":
        return _attend_sdpa(q, k_cache, v_cache, length, scale)
    return _attend_triton(q, k_cache, v_cache, length, scale)
