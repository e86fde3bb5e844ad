"""Nearest-code lookup for vector quantisation: for each row of z, the index of
the closest codebook row in squared L2 distance.

Three backends, one answer:

- ``full``   : ||z||^2 - 2 z.e + ||e||^2 over the whole N x K matrix, then argmin
               (what taming-transformers does). The plain twin, used by tests.
- ``torch``  : tiled over rows of z and blocks of codes, so the extra memory is
               O(rows x codes per tile + (N + K) x D). It drops the constant
               ||z||^2 and folds ||e||^2 into the matmul by augmenting z with a
               column of ones and e with a column of -||e||^2 / 2, so one GEMM
               per tile yields z.e - ||e||^2/2; a blocked argmax keeps a running
               best per row across code tiles. Default on CPU.
- ``triton`` : one fused kernel that streams codebook tiles through ``tl.dot``
               and keeps a running min / argmin per row; the N x K matrix never
               exists. Default on CUDA. Runs on CPU tensors under
               ``TRITON_INTERPRET=1`` (set before the first triton call).

What is guaranteed (fp32, TF32 off, "exact mode"):

1. Among bitwise-identical codes every backend returns the lowest index (BLAS
   may round one code differently at different column positions, so this is
   settled after the search by mapping each code to its first duplicate).
2. The three backends round differently (with or without ||z||^2, different
   summation orders), so their indices agree whenever, for that row, the exact
   best and second-best distances differ by more than ``2 * exact_bound`` where
   ``exact_bound = EXACT_RTOL * (||z||^2 + max_k ||e_k||^2)`` (a worst-case fp32
   rounding bound, see ``distance_error_bound``). Otherwise the chosen code's exact
   distance is within ``2 * exact_bound`` of the true minimum.

Fast modes (TF32 matmuls, or bf16 / fp16 inputs with fp32 accumulation in the
triton backend): the chosen code's exact distance is within
``2 * FAST_RTOL[mode] * (||z||^2 + max_k ||e_k||^2)`` of the true minimum.
``full`` and ``torch`` always upcast half inputs to fp32; TF32 for them follows
``torch.backends.cuda.matmul.allow_tf32`` and, for triton, the same flag picks
``input_precision="tf32"`` versus ``"ieee"``.
"""
from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

BACKENDS = ("auto", "full", "torch", "triton")

# unit roundoff of fp32 is 2**-24; a D-term dot product plus three extra
# additions loses at most about (D + 3) units relative to the sum of magnitudes
# |z|^2 + 2|z||e| + |e|^2 <= 2 (|z|^2 + |e|^2). EXACT_RTOL is per unit of D.
_U_FP32 = 2.0 ** -24
# relative error of one product from rounding the inputs (TF32 keeps 10
# mantissa bits, bf16 7, fp16 10), times 2 for the two inputs, times a safety 2.
FAST_RTOL = {"tf32": 4 * 2.0 ** -11, "bfloat16": 4 * 2.0 ** -8, "float16": 4 * 2.0 ** -11}

# torch backend tiling: each GEMM writes a scores tile of about _TORCH_CHUNK_ELEMS
# fp32 values (2**20 = 4 MiB, within the CPU caches, where the argmax pass reads
# it back), at least _TORCH_MIN_ROWS rows of z (MKL wants many rows) and, when
# the codebook is small, all of it (one code tile: 4096 rows x 256 codes at the
# tiny VQGAN's K). Measured on a 2-core AMD EPYC at N=4096, K=16384, D=256:
# 1024 x 1024 tiles take 0.91x the bare z @ e.T (which writes 256 MiB), against
# 1.01x for 4096 x 1024 and 1.45x for 128-row strips over all codes; equal to
# one-tile at K=256 and to the bare matmul at K=1024 (benchmarks/test_bench_vq.py).
_TORCH_CHUNK_ELEMS = 2 ** 20
_TORCH_MIN_ROWS = 1024
_ARGMAX_BLOCK = 128


def distance_error_bound(z: Tensor, codebook: Tensor, mode: str = "exact") -> Tensor:
    """Per-row bound [N] on |computed - exact| squared distance for any code.

    mode "exact": fp32 arithmetic with D-term dot products;
    mode "tf32" / "bfloat16" / "float16": input rounding of the fast modes
    (plus the fp32 accumulation error).
    """
    z64, e64 = z.double(), codebook.double()
    scale = (z64 * z64).sum(1) + (e64 * e64).sum(1).max()
    exact = 2 * (z.shape[1] + 4) * _U_FP32
    rtol = exact if mode == "exact" else exact + FAST_RTOL[mode]
    return rtol * scale


# ---------------------------------------------------------------------------
# argument checks (one clear line per user mistake)
# ---------------------------------------------------------------------------

def _check(z: Tensor, codebook: Tensor, backend: str, chunk_size: int | None) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"vq_lookup: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not isinstance(z, Tensor) or not isinstance(codebook, Tensor):
        raise ValueError("vq_lookup: z and codebook must be torch tensors")
    if z.dim() != 2 or codebook.dim() != 2:
        raise ValueError(f"vq_lookup: expected z [N,D] and codebook [K,D], got {tuple(z.shape)} and {tuple(codebook.shape)}")
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(f"vq_lookup: z has D={z.shape[1]} but the codebook has D={codebook.shape[1]}")
    if codebook.shape[0] == 0:
        raise ValueError("vq_lookup: the codebook is empty (K=0)")
    if not (z.is_floating_point() and codebook.is_floating_point()):
        raise ValueError(f"vq_lookup: z and codebook must be floating point, got {z.dtype} and {codebook.dtype}")
    if z.device != codebook.device:
        raise ValueError(f"vq_lookup: z is on {z.device} but the codebook is on {codebook.device}")
    if chunk_size is not None and (type(chunk_size) is not int or chunk_size < 1):  # a bool is no row count
        raise ValueError(f"vq_lookup: chunk_size must be a positive int or None, got {chunk_size!r}")


def _as_fp32(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float32 else x.float()


# ---------------------------------------------------------------------------
# backend "full": the plain twin
# ---------------------------------------------------------------------------

def _lookup_full(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    z, e = _as_fp32(z), _as_fp32(codebook)
    z_sq = (z * z).sum(1, keepdim=True)  # [N,1]
    e_sq = (e * e).sum(1)  # [K]
    dist = z_sq - 2.0 * (z @ e.t()) + e_sq  # [N,K]
    best, idx = dist.min(1)  # ties: lowest index
    return idx, best.clamp_min_(0.0)


# ---------------------------------------------------------------------------
# backend "torch": one augmented GEMM per (row block, code block) + blocked argmax
# ---------------------------------------------------------------------------

def _augmented_codebook(e: Tensor, k_pad: int) -> Tensor:
    """[K_pad, D+1]: codebook rows (e, -||e||^2/2), then padding rows (0, -inf) that never win.

    Built with one copy of e; K_pad is K rounded up to whole argmax blocks."""
    k, d = e.shape
    # ||e||^2 from the 2-norm: one vectorised pass, no [K,D] temporary; equal
    # codes get equal values (the same reduction runs on every row)
    half_sq = torch.linalg.vector_norm(e, dim=1).square_().mul_(-0.5)
    parts = [e, half_sq[:, None]]
    if k_pad > k:
        pad = e.new_zeros(k_pad - k, d + 1)
        pad[:, d] = float("-inf")
        return torch.cat([torch.cat(parts, 1), pad], 0)
    return torch.cat(parts, 1)  # cat: a contiguous copy several times faster than copy_ into a strided slice


def _lookup_torch(z: Tensor, codebook: Tensor, chunk_size: int | None) -> tuple[Tensor, Tensor]:
    z, e = _as_fp32(z), _as_fp32(codebook)
    n, d = z.shape
    k = e.shape[0]
    # argmax over k in blocks of G: a vectorised amax pass gives each block's
    # max, a max over the few block maxima picks the block, and a second look
    # inside that block only gives the position (max with indices over whole
    # rows is several times slower on CPU than amax)
    g = _ARGMAX_BLOCK if k >= 2 * _ARGMAX_BLOCK else k
    k_pad = -(-k // g) * g
    rows = min(n, chunk_size or max(_TORCH_MIN_ROWS, _TORCH_CHUNK_ELEMS // k_pad))
    # codes per GEMM: the scores block [rows, kc] stays within the budget;
    # a whole number of argmax blocks, at least one
    kc = min(k_pad, max(g, _TORCH_CHUNK_ELEMS // rows // g * g))
    e_aug = _augmented_codebook(e, k_pad)
    # (z, 1) . (e, -||e||^2/2) = z.e - ||e||^2/2 = (||z||^2 - ||z - e||^2) / 2:
    # the largest score is the nearest code, and one GEMM gives the scores
    z_aug = torch.cat([z, z.new_ones(n, 1)], 1)  # [N, D+1]: the size of the input
    scores = z.new_empty(rows * kc)
    block_max = z.new_empty(rows * (kc // g))
    idx = torch.empty(n, dtype=torch.int64, device=z.device)
    best = torch.empty(n, dtype=z.dtype, device=z.device)
    for r0 in range(0, n, rows):
        m = min(rows, n - r0)
        zc, best_r, idx_r = z_aug[r0:r0 + m], best[r0:r0 + m], idx[r0:r0 + m]
        # code blocks left to right; a later block replaces the running best
        # only when strictly better, so exact ties keep the lowest index
        for c0 in range(0, k_pad, kc):
            w = min(kc, k_pad - c0)
            nbc = w // g
            s = torch.mm(zc, e_aug[c0:c0 + w].t(), out=scores[:m * w].view(m, w))
            bmax = torch.amax(s.view(m, nbc, g), 2, out=block_max[:m * nbc].view(m, nbc))
            # [m] the row's max in this code chunk and the first block holding it
            # (max with indices returns the first maximum, and on CPU beats argmax)
            cand, blk = bmax.max(1)
            # rows this chunk improves (all of them on the first chunk)
            r = None if c0 == 0 else (cand > best_r).nonzero().squeeze(1)
            if r is None:
                sel_blk, sel_val = blk, cand
                flat = blk + torch.arange(m, device=z.device) * nbc
            elif r.numel():
                sel_blk, sel_val = blk[r], cand[r]
                flat = sel_blk + r * nbc
            else:
                continue
            pos = s.view(m * nbc, g).index_select(0, flat).max(1).indices  # first position of the max
            code = sel_blk.mul_(g).add_(pos).add_(c0)
            if r is None:
                best_r.copy_(sel_val)
                idx_r.copy_(code)
            else:
                best_r[r] = sel_val
                idx_r[r] = code
    # squared distance = ||z||^2 - 2 * max score
    dist = (z * z).sum(1).sub_(best.mul_(2.0)).clamp_min_(0.0)
    return idx, dist


# ---------------------------------------------------------------------------
# backend "triton": fused streaming argmin (kernels are built lazily so that
# TRITON_INTERPRET can be set before the first use)
# ---------------------------------------------------------------------------

def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton_kernel(interpret: bool):
    # `interpret` is part of the cache key: triton.jit reads TRITON_INTERPRET when it decorates
    import triton
    import triton.language as tl

    @triton.jit
    def vq_argmin_kernel(
        z_ptr, e_ptr, esq_ptr, idx_ptr, best_ptr,
        N, K, D,
        stride_zn, stride_zd, stride_ek, stride_ed,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr, WHOLE_D: tl.constexpr,
    ):
        # WHOLE_D (BLOCK_D >= D): the rows' z tile is loaded once and each code tile is one tl.dot, so the
        # code loop is the only loop and the compiler can pipeline its loads; otherwise D is walked in
        # BLOCK_D steps inside every code tile
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        rows64 = rows.to(tl.int64)
        offs_d = tl.arange(0, BLOCK_D)
        if WHOLE_D:
            z_whole = tl.load(  # [BLOCK_N, BLOCK_D]
                z_ptr + rows64[:, None] * stride_zn + offs_d[None, :] * stride_zd,
                mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0)
        best = tl.full([BLOCK_N], float("inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_N], tl.int32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            cols64 = cols.to(tl.int64)
            if WHOLE_D:
                e_tile = tl.load(  # [BLOCK_D, BLOCK_K]: the codebook tile, transposed by indexing
                    e_ptr + cols64[None, :] * stride_ek + offs_d[:, None] * stride_ed,
                    mask=(offs_d < D)[:, None] & col_ok[None, :], other=0.0)
                acc = tl.dot(z_whole, e_tile, input_precision=PRECISION)
            else:
                acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
                for d0 in range(0, D, BLOCK_D):
                    dd = d0 + offs_d
                    d_ok = dd < D
                    z_tile = tl.load(  # [BLOCK_N, BLOCK_D]
                        z_ptr + rows64[:, None] * stride_zn + dd[None, :] * stride_zd,
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0)
                    e_tile = tl.load(  # [BLOCK_D, BLOCK_K]
                        e_ptr + cols64[None, :] * stride_ek + dd[:, None] * stride_ed,
                        mask=d_ok[:, None] & col_ok[None, :], other=0.0)
                    acc = tl.dot(z_tile, e_tile, acc, input_precision=PRECISION)
            e_sq = tl.load(esq_ptr + cols, mask=col_ok, other=float("inf"))
            dist = e_sq[None, :] - 2.0 * acc  # ||z-e||^2 - ||z||^2; +inf past K
            tile_best, tile_arg = tl.min(dist, axis=1, return_indices=True,
                                         return_indices_tie_break_left=True)
            better = tile_best < best  # strict: an earlier tile keeps ties
            best = tl.where(better, tile_best, best)
            best_idx = tl.where(better, k0 + tile_arg, best_idx)
        tl.store(idx_ptr + rows, best_idx, mask=row_ok)
        tl.store(best_ptr + rows, best, mask=row_ok)

    if interpret:
        return vq_argmin_kernel, None
    stepped = [  # D walked in BLOCK_D steps inside each code tile: any D
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_D": bd, "WHOLE_D": False}, num_warps=w, num_stages=st)
        for bn, bk, bd, w, st in ((128, 128, 32, 8, 3), (128, 128, 64, 8, 3), (128, 256, 32, 8, 3),
                                  (128, 128, 32, 4, 4), (64, 128, 64, 4, 3), (64, 64, 32, 4, 2),
                                  (128, 128, 128, 8, 3), (128, 256, 64, 8, 4), (256, 128, 64, 8, 3))
    ]
    # whole-D tiles (BLOCK_D set to D's power of two by _prune, for D <= _WHOLE_D_MAX). Not yet timed on a GPU.
    # Compiled for sm_90 here (benchmarks/kernel_resources.py): with bf16 inputs the stepped kernel gets one
    # shared-memory stage whatever num_stages asks (its TF32 build gets them all), the suspect for session 1's
    # 43% of the bf16 matmul rate; these whole-D tiles keep bf16 at D=256 free of spills with 2-4 stages of code
    # loads in flight. TF32 at D=256 fits only the 64 x 32 tile; the autotuner skips what a device cannot hold.
    whole = [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_D": 0, "WHOLE_D": True}, num_warps=w, num_stages=st)
        for bn, bk, w, st in ((128, 64, 8, 3), (64, 64, 4, 4), (128, 32, 4, 4), (64, 32, 4, 3))
    ]

    def _prune(configs, named_args, **kwargs):
        block_d = _whole_d_block(named_args["D"])
        return [c if not c.kwargs["WHOLE_D"] else
                triton.Config({**c.kwargs, "BLOCK_D": block_d}, num_warps=c.num_warps, num_stages=c.num_stages)
                for c in configs if not c.kwargs["WHOLE_D"] or block_d <= _WHOLE_D_MAX]

    tuned = triton.autotune(configs=stepped + whole, key=["K", "D", "PRECISION"],
                            prune_configs_by={"early_config_prune": _prune})(vq_argmin_kernel)
    return vq_argmin_kernel, tuned


_WHOLE_D_MAX = 256


def _whole_d_block(d: int) -> int:
    """BLOCK_D for a whole-D tile: D's power of two, at least 16 (tl.dot's smallest)."""
    return max(16, 1 << (int(d) - 1).bit_length())


def _lookup_triton(z: Tensor, codebook: Tensor, meta: dict | None = None) -> tuple[Tensor, Tensor]:
    """meta: fixed tile parameters (BLOCK_N, BLOCK_K, BLOCK_D, WHOLE_D[, num_warps, num_stages]) instead of the
    autotuner's pick; under the interpreter the default is small tiles, whole-D for D <= 32 and stepped above,
    so that the tests exercise both forms and the masks."""
    if z.device.type != "cuda" and not _interpret():
        raise ValueError("vq_lookup: backend='triton' needs CUDA tensors "
                         "(or TRITON_INTERPRET=1 set before the first triton call, to run on CPU)")
    if z.dtype != codebook.dtype:
        common = torch.promote_types(z.dtype, codebook.dtype)
        z, codebook = z.to(common), codebook.to(common)
    if z.dtype == torch.float64:
        z, codebook = z.float(), codebook.float()
    n, d = z.shape
    k = codebook.shape[0]
    e_sq = (_as_fp32(codebook) ** 2).sum(1).contiguous()  # [K] fp32, same rounding for equal codes
    idx = torch.empty(n, dtype=torch.int32, device=z.device)
    best = torch.empty(n, dtype=torch.float32, device=z.device)
    if z.dtype == torch.float32 and z.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        precision = "tf32"
    else:
        precision = "ieee"  # fp32 exact mode; for bf16/fp16 inputs it has no effect
    interpret = _interpret()
    plain, tuned = _triton_kernel(interpret)
    args = (z, codebook, e_sq, idx, best, n, k, d,
            z.stride(0), z.stride(1), codebook.stride(0), codebook.stride(1))
    if meta is None and tuned is None:
        whole = d <= 32
        meta = {"BLOCK_N": 16, "BLOCK_K": 32, "BLOCK_D": _whole_d_block(d) if whole else 16, "WHOLE_D": whole}
    if meta is None:
        tuned[lambda m: (triton_cdiv(n, m["BLOCK_N"]),)](*args, PRECISION=precision)
    else:
        if meta["WHOLE_D"] and meta["BLOCK_D"] < d:
            raise ValueError(f"vq_lookup: a whole-D tile needs BLOCK_D >= D={d}, got {meta['BLOCK_D']}")
        plain[(triton_cdiv(n, meta["BLOCK_N"]),)](*args, PRECISION=precision, **meta)
    z32 = _as_fp32(z)
    dist = (z32 * z32).sum(1).add_(best).clamp_min_(0.0)
    return idx.long(), dist


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------
# exact duplicates: BLAS kernels may round the same code differently at
# different column positions (vector tails, GEMV paths), so ties between
# bitwise-identical codes are settled here, once, for every backend
# ---------------------------------------------------------------------------

_INT_OF = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _lowest_duplicate(codebook: Tensor) -> Tensor | None:
    """[K] map from each code to the lowest index of a bitwise-identical code, or None if all differ."""
    bits = codebook.view(_INT_OF[codebook.element_size()])  # [K,D] same bytes as integers
    row_sum = bits.sum(1, dtype=bits.dtype)  # [K] wrapping checksum, equal rows have equal sums
    sorted_sum = row_sum.sort().values
    if not bool((sorted_sum[1:] == sorted_sum[:-1]).any()):
        return None
    _, group = torch.unique(bits, dim=0, return_inverse=True)  # [K] group of identical rows
    k = codebook.shape[0]
    first = torch.full((k,), k, dtype=torch.int64, device=codebook.device)
    first.scatter_reduce_(0, group, torch.arange(k, device=codebook.device), reduce="amin")
    return first[group]


# ---------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------

@torch.no_grad()
def vq_lookup(
    z: Tensor,
    codebook: Tensor,
    backend: str = "auto",
    return_distances: bool = False,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Index of the nearest codebook row for each row of z.

    z [N,D], codebook [K,D] -> indices [N] int64 (ties go to the lowest index);
    with ``return_distances`` also the squared L2 distances [N] fp32.
    backend: "auto" ("triton" on CUDA tensors, "torch" otherwise), "full",
    "torch" (``chunk_size`` rows of z per GEMM, by default as many as keep a
    4 MiB scores tile, at least 1024; codes per GEMM follow from that budget) or "triton".
    """
    _check(z, codebook, backend, chunk_size)
    if backend == "auto":
        backend = "triton" if z.device.type == "cuda" else "torch"
    if z.shape[0] == 0:
        idx = torch.empty(0, dtype=torch.int64, device=z.device)
        dist = torch.empty(0, dtype=torch.float32, device=z.device)
    elif backend == "full":
        idx, dist = _lookup_full(z, codebook)
    elif backend == "torch":
        idx, dist = _lookup_torch(z, codebook, chunk_size)
    else:
        idx, dist = _lookup_triton(z, codebook)
    if z.shape[0] > 0:
        lowest = _lowest_duplicate(codebook)
        if lowest is not None:
            idx = lowest[idx]
    return (idx, dist) if return_distances else idx
