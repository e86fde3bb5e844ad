"""Nearest-code lookup: every backend against the plain `full` twin.

What is asserted is exactly what reference/kernels/vq_lookup.py promises:
- exactly duplicated codes: every backend returns the lowest index among them;
- fp32 exact mode: indices equal `full` on every row whose exact best and
  second-best distances differ by more than 2 * distance_error_bound, and the
  chosen code's exact (fp64) distance is within 2 * bound of the minimum;
- well-separated codes: every backend returns exactly the same indices;
- fast modes (TF32, bf16, fp16): the chosen code's exact distance is within
  2 * distance_error_bound(mode) of the minimum.

On CPU the triton kernel runs under the triton interpreter (TRITON_INTERPRET=1,
set by the `kernel_device` fixture before the kernel is first built); with CUDA
the same tests run the compiled kernel, and the `cuda` tests add larger shapes
and the fast modes.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from reference.kernels import vq_lookup
from reference.kernels.vq_lookup import distance_error_bound

# the submodule (the package attribute `vq_lookup` is the function of the same name)
vq_mod = importlib.import_module("reference.kernels.vq_lookup")

HAS_CUDA = torch.cuda.is_available()
cuda_only = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]


@pytest.fixture(autouse=True)
def exact_fp32():
    """Exact mode: TF32 off for the duration of a test (restored afterwards)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def exact_distances(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    z64, e64 = z.double().cpu(), codebook.double().cpu()
    return ((z64[:, None, :] - e64[None, :, :]) ** 2).sum(-1)  # [N,K]


def check_guarantee(z, codebook, idx, idx_full, mode="exact"):
    """The documented promise, row by row; returns how many rows were 'clear'."""
    exact = exact_distances(z.float(), codebook.float())
    bound = 2 * distance_error_bound(z.float().cpu(), codebook.float().cpu(), mode)
    idx, idx_full = idx.cpu(), idx_full.cpu()
    chosen = exact.gather(1, idx[:, None]).squeeze(1)
    dmin = exact.min(1).values
    assert (chosen - dmin <= bound).all(), f"max excess {(chosen - dmin - bound).max().item()}"
    if exact.shape[1] >= 2:
        two = exact.topk(2, dim=1, largest=False).values
        clear = (two[:, 1] - two[:, 0]) > bound
    else:
        clear = torch.ones(exact.shape[0], dtype=torch.bool)
    assert torch.equal(idx[clear], idx_full[clear])
    return int(clear.sum())


def backends(device):
    """(name, callable) for every backend and a few chunk sizes of the torch one."""
    return [
        ("full", lambda z, e: vq_lookup(z, e, backend="full")),
        ("torch", lambda z, e: vq_lookup(z, e, backend="torch")),
        ("torch-chunk1", lambda z, e: vq_lookup(z, e, backend="torch", chunk_size=1)),
        ("torch-chunk7", lambda z, e: vq_lookup(z, e, backend="torch", chunk_size=7)),
        ("triton", lambda z, e: vq_lookup(z, e, backend="triton")),
    ]


SHAPES = [(1, 1, 1), (7, 1, 5), (33, 17, 3), (50, 129, 33), (64, 64, 16), (3, 200, 70), (17, 31, 2)]


@pytest.mark.parametrize("n,k,d", SHAPES)
def test_backends_keep_the_promise_on_random_shapes(kernel_device, n, k, d):
    g = torch.Generator().manual_seed(n * 1000 + k * 10 + d)
    z = torch.randn(n, d, generator=g).to(kernel_device)
    e = torch.randn(k, d, generator=g).to(kernel_device)
    ref = vq_lookup(z, e, backend="full")
    assert ref.dtype == torch.int64 and ref.shape == (n,)
    for name, fn in backends(kernel_device):
        idx = fn(z, e)
        assert idx.dtype == torch.int64 and idx.shape == (n,), name
        clear = check_guarantee(z, e, idx, ref)
        # random gaussian codes are far apart next to fp32 rounding: the promise
        # must cover (almost) every row, or the test would say little
        assert clear >= n - 1, (name, clear, n)


def well_separated(n, k, d, seed, scale=1.0, offset=0.0, device="cpu"):
    """Codes spread out, z a small perturbation of a known code: the answer is `target`."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(k, d, generator=g) * 3.0
    target = torch.randint(0, k, (n,), generator=g)
    z = e[target] + 0.01 * torch.randn(n, d, generator=g)
    return (z * scale + offset).to(device), (e * scale + offset).to(device), target.to(device)


@pytest.mark.parametrize("n,k,d", [(40, 37, 9), (5, 1, 3), (64, 100, 48), (19, 65, 1)])
@pytest.mark.parametrize("scale,offset", [(1.0, 0.0), (1e4, 0.0), (1.0, 30.0)])
def test_every_backend_finds_the_known_code(kernel_device, n, k, d, scale, offset):
    z, e, target = well_separated(n, k, d, seed=k + d, scale=scale, offset=offset, device=kernel_device)
    if d == 1:  # 1-d codes may coincide up to noise; fix them on a grid
        e = (torch.arange(k, dtype=torch.float32)[:, None] * scale + offset).to(kernel_device)
        z = e[target] + 0.01 * scale
    for name, fn in backends(kernel_device):
        assert torch.equal(fn(z, e), target), name


@pytest.mark.parametrize("whole", [True, False], ids=["whole-d", "stepped-d"])
@pytest.mark.parametrize("n,k,d", [(33, 70, 20), (5, 40, 3), (40, 100, 32)])
def test_triton_whole_d_and_stepped_tiles_both_keep_the_promise(kernel_device, whole, n, k, d):
    """The kernel's two forms (z tile loaded once and one tl.dot per code tile, or D walked in steps) on the
    same inputs, whatever the autotuner would pick."""
    meta = {"BLOCK_N": 16, "BLOCK_K": 32, "BLOCK_D": vq_mod._whole_d_block(d) if whole else 16, "WHOLE_D": whole}
    g = torch.Generator().manual_seed(n + k + d)
    z, e = torch.randn(n, d, generator=g).to(kernel_device), torch.randn(k, d, generator=g).to(kernel_device)
    idx, dist = vq_mod._lookup_triton(z, e, meta)
    assert check_guarantee(z, e, idx, vq_lookup(z, e, backend="full")) >= n - 1
    torch.testing.assert_close(dist.cpu(), exact_distances(z, e).gather(1, idx.cpu()[:, None]).squeeze(1).float(),
                               rtol=1e-4, atol=1e-4)
    zs, es, target = well_separated(n, k, d, seed=3, device=kernel_device)
    assert torch.equal(vq_mod._lookup_triton(zs, es, meta)[0].long(), target)
    if whole and d > 16:  # a whole-D tile narrower than D would read only part of each vector
        with pytest.raises(ValueError, match="BLOCK_D >= D"):
            vq_mod._lookup_triton(z, e, {**meta, "BLOCK_D": 16})


@pytest.mark.parametrize("k", [70, 300])
def test_duplicated_codes_tie_to_the_lowest_index(kernel_device, k):
    g = torch.Generator().manual_seed(3)
    distinct = torch.randn(5, 12, generator=g) * 4.0
    # k codes (several triton tiles of 32 in the interpreter; with 300 several
    # argmax blocks of the torch backend): copies of 5 distinct codes at shuffled positions
    owner = torch.arange(k) % 5
    owner = owner[torch.randperm(k, generator=g)]
    codebook = distinct[owner]
    which = torch.randint(0, 5, (45,), generator=g)
    z = distinct[which] + 0.05 * torch.randn(45, 12, generator=g)
    z[:5] = distinct[which[:5]]  # some rows sit exactly on a code: distance 0 ties
    first = torch.tensor([int((owner == c).nonzero()[0]) for c in range(5)])
    expected = first[which]
    for name, fn in backends(kernel_device):
        assert torch.equal(fn(z.to(kernel_device), codebook.to(kernel_device)).cpu(), expected), name


def test_codes_that_only_look_alike_are_not_merged(kernel_device):
    # rows that are permutations of each other share the integer checksum the
    # duplicate detection starts from, yet they are different codes
    base = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [2.0, 3.0, 1.0], [1.0, 3.0, 2.0]]) * 5
    codebook = torch.cat([base, base[:1]]).to(kernel_device)  # and one true duplicate of code 0
    z = torch.cat([base, base]).to(kernel_device) + 0.01
    expected = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    for name, fn in backends(kernel_device):
        assert torch.equal(fn(z, codebook).cpu(), expected), name


@pytest.mark.parametrize("budget", [1, 300, 1000])
def test_torch_backend_tiled_over_codes_equals_one_tile(monkeypatch, budget):
    """A scores budget this small splits the codes into many GEMM tiles (down to
    one argmax block each, the last one short): the running best across tiles
    must give the one-tile answer, exact ties across tile boundaries included."""
    g = torch.Generator().manual_seed(budget)
    n, k, d = 37, 700, 9  # 700 codes: argmax blocks of 128, the last one padded
    e = torch.randn(k, d, generator=g)
    e[650] = e[5]  # exact duplicates far apart: lowest index wins
    e[400] = e[390]
    z = torch.randn(n, d, generator=g)
    z[:4] = e[torch.tensor([5, 650, 390, 699])]  # rows sitting exactly on codes
    one_tile = vq_lookup(z, e, backend="torch", return_distances=True)
    monkeypatch.setattr(vq_mod, "_TORCH_CHUNK_ELEMS", budget)
    for rows in (None, 1, 5):
        idx, dist = vq_lookup(z, e, backend="torch", chunk_size=rows, return_distances=True)
        assert torch.equal(idx, one_tile[0]), rows
        assert torch.allclose(dist, one_tile[1], rtol=0, atol=1e-4), rows
    assert idx[:4].tolist() == [5, 5, 390, 699]
    check_guarantee(z, e, idx, vq_lookup(z, e, backend="full"))


@pytest.mark.parametrize("k", [300, 1000])
@pytest.mark.parametrize("d", [3, 40])
def test_padded_code_blocks_never_win_even_when_every_score_is_negative(kernel_device, k, d):
    """K >= 256 and not a multiple of 128: the torch backend pads the codebook to whole argmax blocks with rows
    (0, -inf) whose score must lose to every real code. With z far from all codes every real score
    z.e - ||e||^2/2 is negative, so a padding row scoring 0 would win and return an index >= K. (The triton
    kernel masks its last code tile the same way, with ||e||^2 = +inf past K.)"""
    assert k % vq_mod._ARGMAX_BLOCK != 0  # the padded path
    g = torch.Generator().manual_seed(k + d)
    e = (torch.randn(k, d, generator=g) + 3.0).to(kernel_device)
    cases = {"z=0": torch.zeros(6, d).to(kernel_device), "random": torch.randn(20, d, generator=g).to(kernel_device)}
    for case, z in cases.items():
        ref = vq_lookup(z, e, backend="full")
        assert (ref < k).all()
        for name, fn in backends(kernel_device):
            idx = fn(z, e)
            assert (idx < k).all(), (case, name, idx.max().item())
            assert torch.equal(idx, ref), (case, name)


def test_a_codebook_of_one_repeated_code_always_answers_zero(kernel_device):
    codebook = torch.randn(1, 6).repeat(40, 1).to(kernel_device)
    z = torch.randn(9, 6).to(kernel_device) * 100
    for name, fn in backends(kernel_device):
        assert torch.equal(fn(z, codebook).cpu(), torch.zeros(9, dtype=torch.int64)), name


def test_large_magnitudes_keep_the_promise(kernel_device):
    g = torch.Generator().manual_seed(11)
    z = (torch.randn(30, 20, generator=g) * 1e3 + 5e3).to(kernel_device)  # far from every code
    e = (torch.randn(90, 20, generator=g) * 1e3).to(kernel_device)
    ref = vq_lookup(z, e, backend="full")
    for name, fn in backends(kernel_device):
        check_guarantee(z, e, fn(z, e), ref)


def test_non_contiguous_inputs_give_the_contiguous_answer(kernel_device):
    g = torch.Generator().manual_seed(5)
    z_wide = torch.randn(23, 2 * 11, generator=g).to(kernel_device)
    z = z_wide[:, ::2]  # [23,11], column stride 2
    e = torch.randn(11, 41, generator=g).to(kernel_device).t()  # [41,11], transposed
    assert not z.is_contiguous() and not e.is_contiguous()
    for name, fn in backends(kernel_device):
        assert torch.equal(fn(z, e), fn(z.contiguous(), e.contiguous())), name
    check_guarantee(z, e, vq_lookup(z, e, backend="triton"), vq_lookup(z, e, backend="full"))


def test_distances_are_the_squared_distance_to_the_chosen_code(kernel_device):
    g = torch.Generator().manual_seed(8)
    z = torch.randn(25, 10, generator=g).to(kernel_device)
    e = torch.randn(60, 10, generator=g).to(kernel_device)
    exact = exact_distances(z, e)
    bound = distance_error_bound(z.cpu(), e.cpu())
    for backend in ("full", "torch", "triton"):
        idx, dist = vq_lookup(z, e, backend=backend, return_distances=True)
        assert dist.dtype == torch.float32 and dist.shape == (25,)
        chosen = exact.gather(1, idx.cpu()[:, None]).squeeze(1)
        assert ((dist.cpu().double() - chosen).abs() <= bound).all(), backend
        assert (dist >= 0).all()


def test_half_precision_inputs_stay_within_the_fast_mode_tolerance(kernel_device):
    g = torch.Generator().manual_seed(9)
    z = torch.randn(40, 24, generator=g)
    e = torch.randn(70, 24, generator=g)
    ref = vq_lookup(z, e, backend="full")
    idx = vq_lookup(z.half().to(kernel_device), e.half().to(kernel_device), backend="triton")
    assert idx.shape == ref.shape
    # the promise for fast modes is about distances only (indices may differ on near ties)
    exact = exact_distances(z, e)
    chosen = exact.gather(1, idx.cpu()[:, None]).squeeze(1)
    assert (chosen - exact.min(1).values <= 2 * distance_error_bound(z, e, "float16")).all()


def test_auto_uses_torch_on_cpu_and_never_the_kernel(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("auto must not pick triton for CPU tensors")

    monkeypatch.setattr(vq_mod, "_lookup_triton", refuse)
    z, e = torch.randn(8, 4), torch.randn(16, 4)
    assert torch.equal(vq_lookup(z, e), vq_lookup(z, e, backend="full"))


def test_empty_input_gives_empty_output():
    idx, dist = vq_lookup(torch.randn(0, 4), torch.randn(3, 4), return_distances=True)
    assert idx.shape == (0,) and idx.dtype == torch.int64 and dist.shape == (0,)


@pytest.mark.parametrize("z,e,kwargs,msg", [
    (torch.randn(3, 4), torch.randn(5, 3), {}, "D=4"),
    (torch.randn(3, 4), torch.randn(0, 4), {}, "empty"),
    (torch.randn(3), torch.randn(5, 3), {}, "expected z"),
    (torch.randn(3, 4), torch.randn(5, 4), {"backend": "cuda"}, "unknown backend"),
    (torch.randn(3, 4), torch.randn(5, 4), {"chunk_size": 0}, "chunk_size"),
    (torch.ones(3, 4, dtype=torch.int64), torch.randn(5, 4), {}, "floating point"),
])
def test_user_mistakes_raise_one_clear_value_error(z, e, kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        vq_lookup(z, e, **kwargs)


def test_triton_on_cpu_without_the_interpreter_says_how_to_fix_it(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        vq_lookup(torch.randn(3, 4), torch.randn(5, 4), backend="triton")


# ---------------------------------------------------------------------------
# CUDA only: larger shapes, auto = triton, and the fast modes
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n,k,d", [(4096, 1024, 64), (1000, 16384, 256), (777, 333, 100)])
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_exact_mode_keeps_the_promise(n, k, d):
    g = torch.Generator().manual_seed(n + k + d)
    z = torch.randn(n, d, generator=g).cuda()
    e = torch.randn(k, d, generator=g).cuda()
    ref = vq_lookup(z, e, backend="full")
    assert torch.equal(vq_lookup(z, e), vq_lookup(z, e, backend="triton"))  # auto = triton on CUDA
    for backend in ("torch", "triton"):
        check_guarantee(z, e, vq_lookup(z, e, backend=backend), ref)
    zs, es, target = well_separated(n, k, d, seed=1, device="cuda")
    assert torch.equal(vq_lookup(zs, es, backend="triton"), target)


@pytest.mark.parametrize("mode", ["tf32", "bfloat16", "float16"])
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_fast_modes_stay_within_the_stated_tolerance(mode):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2048, 128, generator=g).cuda()
    e = torch.randn(4096, 128, generator=g).cuda()
    exact = exact_distances(z, e)
    if mode == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True  # restored by the exact_fp32 fixture
        runs = {b: vq_lookup(z, e, backend=b) for b in ("full", "torch", "triton")}
    else:
        dt = getattr(torch, mode)
        runs = {"triton": vq_lookup(z.to(dt), e.to(dt), backend="triton")}
    bound = 2 * distance_error_bound(z.cpu(), e.cpu(), mode)
    for name, idx in runs.items():
        chosen = exact.gather(1, idx.cpu()[:, None]).squeeze(1)
        assert (chosen - exact.min(1).values <= bound).all(), (mode, name)


@pytest.mark.parametrize("mode", ["exact", "tf32", "bfloat16"])
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_every_autotune_config_keeps_the_promise(mode):
    """Each tile the autotuner may pick at the paper's D=256, launched on its own (the autotuner would skip a
    config that fails to compile or launch without a word): it runs or is out of resources, and keeps the promise."""
    from triton.runtime.errors import OutOfResources

    g = torch.Generator().manual_seed(5)
    z, e = torch.randn(1000, 256, generator=g), torch.randn(3000, 256, generator=g)
    exact = exact_distances(z, e)
    bound = 2 * distance_error_bound(z, e, mode)
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"  # restored by the exact_fp32 fixture
    dt = torch.bfloat16 if mode == "bfloat16" else torch.float32
    zc, ec = z.to(dt).cuda(), e.to(dt).cuda()
    tuned = vq_mod._triton_kernel(False)[1]
    ran = []
    for c in tuned.early_config_prune(tuned.configs, {"D": 256}):
        try:
            idx, _ = vq_mod._lookup_triton(zc, ec, {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages})
        except OutOfResources:
            continue
        chosen = exact.gather(1, idx.long().cpu()[:, None]).squeeze(1)
        assert (chosen - exact.min(1).values <= bound).all(), (mode, c)
        ran.append(c.kwargs["WHOLE_D"])
    assert any(ran) and not all(ran), ran  # both forms ran on this device
