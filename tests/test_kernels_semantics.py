"""Kernel semantics pinned against independent arithmetic: vq_lookup's ties between *distinct* codes at exactly
equal distance go to the lowest index in every backend, across argmax blocks, code tiles, row chunks and triton
tiles (integer codes with perfect-square norms, so fp32 is exact and numpy's first argmin is the answer); the
documented formula of distance_error_bound (hand arithmetic) and that it bounds the returned distances, which are
never negative; fp64 and mixed-dtype inputs; which backend "auto" / "full" / "torch" / "triton" actually runs; the
dtypes of the empty answer; the input checks (`_check`) refusing non-tensors, bad codebook shapes / dtypes, another
device and non-int chunk sizes with one clear ValueError; and decode_attention against a float64 loop over the
first `length` positions (default scale 1/sqrt(Dh), int and 0-d tensor lengths, scores spanning more than fp32's
exp2 range across cache tiles, half-precision outputs in q's dtype) plus its device / rank / length-type checks.
"""
from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch

from reference.kernels import decode_attention, vq_lookup
from reference.kernels.vq_lookup import distance_error_bound
from test_kernels_attention import make
from test_kernels_vq import exact_distances, exact_fp32, well_separated  # noqa: F401 (autouse fixture)

vq_mod = importlib.import_module("reference.kernels.vq_lookup")

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------
# vq_lookup: exact ties between distinct codes
# ---------------------------------------------------------------------------

def tied_integer_problem(n=48, k=300, d=5, seed=0):
    """k distinct integer codes from {-2..2}^d whose squared norms are perfect squares (so the torch backend's
    ||e||^2 = vector_norm(e)^2 is exact too), in random order, and z on the half-integer grid: every squared
    distance is a small multiple of 1/4, exact in fp32 whatever the summation order, and many rows have several
    distinct nearest codes. Returns z, e, numpy's first argmin, the minimum distance and the tied-row count."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.cartesian_prod(*[torch.arange(-2, 3)] * d)  # 5^d distinct rows
    norm2 = (grid * grid).sum(1)
    grid = grid[norm2.double().sqrt().round() ** 2 == norm2].float()
    e = grid[torch.randperm(len(grid), generator=g)[:k]].contiguous()
    assert len(e) == k
    z2 = torch.randint(-5, 6, (n, d), generator=g)  # 2 z: half-integer coordinates sit between two codes
    z = z2.float() / 2
    dist4 = ((z2.numpy()[:, None, :] - 2 * e.numpy()[None].astype(np.int64)) ** 2).sum(-1)  # 4 ||z - e||^2
    expected = torch.from_numpy(dist4.argmin(1))  # numpy: the first minimum
    tied = (dist4 == dist4.min(1, keepdims=True)).sum(1) >= 2
    return z, e, expected, torch.from_numpy(dist4.min(1) / 4).float(), int(tied.sum())


def test_ties_between_distinct_codes_go_to_the_lowest_index_in_every_backend(kernel_device, monkeypatch):
    z, e, expected, dmin, n_tied = tied_integer_problem()
    assert len(torch.unique(e, dim=0)) == len(e)  # no duplicates: the duplicate remap cannot settle these ties
    assert n_tied >= 12, n_tied
    z, e = z.to(kernel_device), e.to(kernel_device)
    runs = {"full": lambda: vq_lookup(z, e, backend="full", return_distances=True),
            "triton": lambda: vq_lookup(z, e, backend="triton", return_distances=True)}
    for rows in (None, 1, 5):
        runs[f"torch-{rows}"] = lambda rows=rows: vq_lookup(z, e, backend="torch", chunk_size=rows,
                                                            return_distances=True)
    for name, fn in runs.items():
        idx, dist = fn()
        assert torch.equal(idx.cpu(), expected), name
        assert torch.equal(dist.cpu(), dmin), name
    # a scores budget this small gives one 128-code argmax block per GEMM: ties across code tiles
    monkeypatch.setattr(vq_mod, "_TORCH_CHUNK_ELEMS", 1)
    for rows in (None, 1, 7):
        assert torch.equal(vq_lookup(z, e, backend="torch", chunk_size=rows).cpu(), expected), rows


def test_triton_stepped_tiles_keep_the_lowest_index_on_ties(kernel_device):
    z, e, expected, _, n_tied = tied_integer_problem(n=20, k=100, seed=1)
    assert n_tied >= 3, n_tied
    meta = {"BLOCK_N": 16, "BLOCK_K": 32, "BLOCK_D": 16, "WHOLE_D": False}
    idx, _ = vq_mod._lookup_triton(z.to(kernel_device), e.to(kernel_device), meta)
    assert torch.equal(idx.cpu(), expected)


# ---------------------------------------------------------------------------
# vq_lookup: the error bound and the distances
# ---------------------------------------------------------------------------

def test_distance_error_bound_is_the_documented_formula():
    """rtol * (||z||^2 + max_k ||e_k||^2), rtol = 2 (D + 4) u in exact mode, plus FAST_RTOL[mode] otherwise."""
    z = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]])  # ||z||^2 = 9, 0
    e = torch.tensor([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]])  # ||e||^2 = 9, 16 (max 16, mean 12.5)
    u = 2.0 ** -24
    scale = torch.tensor([25.0, 16.0], dtype=torch.float64)
    got = distance_error_bound(z, e)
    assert got.dtype == torch.float64 and got.shape == (2,)
    torch.testing.assert_close(got, 14 * u * scale, rtol=1e-12, atol=0)
    for mode, fast in (("tf32", 2.0 ** -9), ("bfloat16", 2.0 ** -6), ("float16", 2.0 ** -9)):
        torch.testing.assert_close(distance_error_bound(z, e, mode), (14 * u + fast) * scale, rtol=1e-12, atol=0)


@pytest.mark.parametrize("offset", [10.0, 1000.0])
def test_returned_distances_are_within_the_bound_and_never_negative(kernel_device, offset):
    """z sitting exactly on codes far from the origin: ||z||^2 - 2 z.e + ||e||^2 cancels to rounding noise that
    may fall below 0; each backend clamps it, and stays within distance_error_bound of the fp64 distance."""
    g = torch.Generator().manual_seed(int(offset))
    e = torch.randn(40, 8, generator=g) * 0.5 + offset
    z = torch.cat([e[torch.randint(0, 40, (30,), generator=g)], e[:10] + 0.3 * torch.randn(10, 8, generator=g)])
    exact = exact_distances(z, e)
    bound = distance_error_bound(z, e)
    for backend in ("full", "torch", "triton"):
        idx, dist = vq_lookup(z.to(kernel_device), e.to(kernel_device), backend=backend, return_distances=True)
        idx, dist = idx.cpu(), dist.cpu()
        chosen = exact.gather(1, idx[:, None]).squeeze(1)
        assert (dist >= 0).all(), (backend, dist.min().item())
        assert ((dist.double() - chosen).abs() <= bound).all(), backend
        assert (chosen - exact.min(1).values <= 2 * bound).all(), backend


def test_float64_and_mixed_dtypes_give_the_known_code_and_fp32_distances(kernel_device):
    z, e, target = well_separated(30, 50, 12, seed=4, device=kernel_device)
    cases = {"fp64": (z.double(), e.double()), "half z, fp32 codes": (z.half(), e),
             "fp32 z, half codes": (z, e.half())}
    for case, (zc, ec) in cases.items():
        for backend in ("auto", "full", "torch", "triton"):
            idx, dist = vq_lookup(zc, ec, backend=backend, return_distances=True)
            assert idx.dtype == torch.int64 and torch.equal(idx, target), (case, backend)
            assert dist.dtype == torch.float32 and dist.shape == (30,), (case, backend)
            assert (dist < 0.01 * 12).all(), (case, backend)  # z is 0.01 * noise from its code


def test_empty_input_answers_in_the_documented_dtypes():
    z, e = torch.randn(0, 4), torch.randn(3, 4)
    idx = vq_lookup(z, e)
    assert isinstance(idx, torch.Tensor) and idx.dtype == torch.int64 and idx.shape == (0,)
    for backend in ("auto", "full", "torch"):
        idx, dist = vq_lookup(z.double(), e.double(), backend=backend, return_distances=True)
        assert idx.dtype == torch.int64 and dist.dtype == torch.float32 and dist.shape == (0,), backend


# ---------------------------------------------------------------------------
# vq_lookup: backend selection
# ---------------------------------------------------------------------------

def test_each_backend_name_runs_its_own_implementation_and_auto_follows_the_device(kernel_device, monkeypatch):
    """"auto" is the torch backend on CPU tensors (the triton one on CUDA); chunk_size reaches the torch one."""
    calls = []
    for name in ("_lookup_full", "_lookup_torch", "_lookup_triton"):
        real = getattr(vq_mod, name)

        def spy(*args, _name=name, _real=real):
            calls.append((_name, args[2:]))
            return _real(*args)

        monkeypatch.setattr(vq_mod, name, spy)
    z, e = torch.randn(6, 5).to(kernel_device), torch.randn(9, 5).to(kernel_device)
    auto = ("_lookup_triton", ()) if kernel_device == "cuda" else ("_lookup_torch", (3,))
    expected = {"auto": auto, "full": ("_lookup_full", ()), "torch": ("_lookup_torch", (3,)),
                "triton": ("_lookup_triton", ())}
    for backend, call in expected.items():
        calls.clear()
        vq_lookup(z, e, backend=backend, chunk_size=None if backend in ("full", "triton") else 3)
        assert calls == [call], backend


# ---------------------------------------------------------------------------
# vq_lookup: input checks
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("z,e,kwargs,msg", [
    (np.zeros((3, 4), np.float32), torch.randn(5, 4), {}, "torch tensors"),
    (torch.randn(3, 4), np.zeros((5, 4), np.float32), {}, "torch tensors"),
    (torch.randn(3, 4), torch.randn(5, 4, 1), {}, "expected z"),
    (torch.randn(3, 4), torch.ones(5, 4, dtype=torch.int32), {}, "floating point"),
    (torch.randn(3, 4), torch.randn(5, 4, device="meta"), {}, "codebook is on meta"),
    (torch.randn(3, 4), torch.randn(5, 4), {"chunk_size": 2.5}, "chunk_size"),
    (torch.randn(3, 4), torch.randn(5, 4), {"chunk_size": "4"}, "chunk_size"),
    (torch.randn(3, 4), torch.randn(5, 4), {"chunk_size": -2}, "chunk_size"),
    (torch.randn(3, 4), torch.randn(5, 4), {"chunk_size": True}, "chunk_size"),  # a bool is no row count
])
def test_bad_inputs_are_one_clear_value_error(z, e, kwargs, msg):
    with pytest.raises(ValueError, match=msg) as err:
        vq_lookup(z, e, **kwargs)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------
# decode_attention against a float64 loop
# ---------------------------------------------------------------------------

def naive_attention(q, k, v, length, scale=None):
    """softmax(q.k * scale) @ v over positions [0, length), one (batch, head) at a time, in float64."""
    q, k, v = q.double().cpu(), k.double().cpu(), v.double().cpu()
    b, h, _, dh = k.shape
    s = 1.0 / math.sqrt(dh) if scale is None else scale
    out = torch.empty(b, h, dh, dtype=torch.float64)
    for i in range(b):
        for j in range(h):
            scores = [float(q[i, j] @ k[i, j, p]) * s for p in range(length)]
            top = max(scores)
            w = [math.exp(x - top) for x in scores]
            out[i, j] = sum(wp / sum(w) * v[i, j, p] for p, wp in enumerate(w))
    return out


@pytest.mark.parametrize("length", [1, 16, 17, 37])
def test_decode_attention_equals_a_float64_loop_over_the_first_length_positions(kernel_device, length):
    q, k, v = make(2, 3, 37, 12, seed=length, device=kernel_device)
    v[:, :, length:] = 1e6  # anything read past `length` would show
    ref = naive_attention(q, k, v, length)
    outs = {"sdpa": decode_attention(q, k, v, length), "triton": decode_attention(q, k, v, length, backend="triton"),
            "sdpa-tensor-length": decode_attention(q, k, v, torch.tensor(length, device=kernel_device))}
    for name, out in outs.items():
        assert out.shape == (2, 3, 12) and out.dtype == torch.float32, name
        torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-5, atol=1e-5, msg=name)
    for scale in (0.3, 2.0):
        ref = naive_attention(q, k, v, length, scale)
        for backend in ("sdpa", "triton"):
            out = decode_attention(q, k, v, length, scale=scale, backend=backend)
            torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-5, atol=1e-5, msg=backend)


def test_scores_falling_far_below_an_earlier_tiles_max_stay_finite(kernel_device):
    """Position 0 scores +100 and every later one -100: 200 nats (288 in base 2) apart, past the fp32 exp2 range.
    The online softmax must rescale by exp2(old max - new max) with a running max that never decreases."""
    b, h, t, dh = 1, 2, 40, 16
    q = torch.full((b, h, dh), 5.0)
    k = torch.full((b, h, t, dh), -5.0)
    k[:, :, 0] = 5.0  # q.k / sqrt(16) = +100 at position 0, -100 elsewhere
    v = torch.randn(b, h, t, dh, generator=torch.Generator().manual_seed(0))
    q, k, v = q.to(kernel_device), k.to(kernel_device), v.to(kernel_device)
    ref = naive_attention(q, k, v, t)
    torch.testing.assert_close(ref, v[:, :, 0].double().cpu(), rtol=0, atol=1e-12)
    for backend in ("sdpa", "triton"):
        out = decode_attention(q, k, v, t, backend=backend)
        assert torch.isfinite(out).all(), backend
        torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-6, atol=1e-6, msg=backend)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_sdpa_answers_in_qs_half_dtype(dtype, tol):
    q, k, v = make(2, 2, 20, 8, seed=3, dtype=dtype)
    out = decode_attention(q, k, v, 13)
    assert out.dtype == dtype and out.shape == (2, 2, 8)
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, 13), rtol=tol, atol=tol)


def test_decode_attention_input_checks_are_one_clear_value_error():
    q, k, v = make(1, 2, 10, 8)
    cases = [
        ((q, k, v, torch.tensor(3, device="meta")), "length is on meta"),
        ((q, k, v.to("meta"), 5), "one device"),
        ((q, k.to("meta"), v, 5), "one device"),
        ((q, k, v[0], 5), "expected q"),
        ((q[None], k, v, 5), "expected q"),
        ((q, k, v, torch.tensor(3 + 0j)), "0-d integer"),
        ((q, k, v, True), "length must be an int"),  # a bool is no length
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match=msg) as err:
            decode_attention(*args)
        assert "\n" not in str(err.value), msg
