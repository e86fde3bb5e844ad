"""GPU checks and timings of reference/kernels (standalone; run on a CUDA machine).

    PYTHONPATH=. python3 benchmarks/gpu_kernels.py [--out DIR] [--skip-pytest]

(a) VQ lookup at N=65536, K=16384, D=256: correctness of `triton` against `full`
    in exact fp32 (TF32 off) and the fast-mode tolerance (TF32, bf16); then
    times of triton / full / torch and of the dense matmul ceiling (TF32, bf16)
    measured with torch on the same machine.
(b) decode attention, triton against SDPA at a few shapes, correctness first.
(d) pytest -m cuda on the kernel tests.
Writes DIR/gpu-<device>.json (DIR: $OUT, else results/benchmarks) and prints a table.
Timings: triton.testing.do_bench, median.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from reference.kernels import decode_attention, vq_lookup  # noqa: E402
from reference.kernels.vq_lookup import distance_error_bound  # noqa: E402


def bench_ms(fn) -> float:
    return float(do_bench(fn, warmup=50, rep=300, return_mode="median"))


def tuned_vq_config() -> str:
    """The autotuner's pick for the last VQ shape and dtype it tuned (which tile wins in which mode)."""
    from reference.kernels.vq_lookup import _triton_kernel

    return str(getattr(_triton_kernel(False)[1], "best_config", None))


def check_rows(z, e, idx, idx_ref, mode, rows=2048):
    """The documented promise on a sample of rows, with fp64 exact distances."""
    sel = torch.arange(rows, device=z.device)
    z64, e64 = z[sel].double(), e.double()
    exact = (z64 * z64).sum(1, keepdim=True) - 2 * z64 @ e64.T + (e64 * e64).sum(1)  # [rows,K]
    bound = 2 * distance_error_bound(z[sel].float(), e.float(), mode)
    chosen = exact.gather(1, idx[sel, None]).squeeze(1)
    two = exact.topk(2, dim=1, largest=False).values
    excess = chosen - two[:, 0]
    clear = (two[:, 1] - two[:, 0]) > bound
    out = {"rows_checked": rows, "within_tolerance": bool((excess <= bound).all()),
           "max_excess_over_bound": float((excess / bound).max())}
    if idx_ref is not None:
        out["clear_rows"] = int(clear.sum())
        out["clear_rows_equal_to_full"] = bool(torch.equal(idx[sel][clear], idx_ref[sel][clear]))
    return out


def section_vq(res):
    n, k, d = 65536, 16384, 256
    flops = 2.0 * n * k * d
    g = torch.Generator(device="cuda").manual_seed(0)
    z = torch.randn(n, d, device="cuda", generator=g)
    e = torch.randn(k, d, device="cuda", generator=g)
    out = {"shape": {"N": n, "K": k, "D": d}}
    res["vq"] = out

    # --- correctness, exact fp32 (TF32 off)
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = vq_lookup(z, e, backend="full")
    tri = vq_lookup(z, e, backend="triton")
    tor = vq_lookup(z, e, backend="torch")
    out["exact_fp32"] = {
        "triton_equal_full_fraction": float((tri == ref).float().mean()),
        "torch_equal_full_fraction": float((tor == ref).float().mean()),
        "triton_check": check_rows(z, e, tri, ref, "exact"),
        "torch_check": check_rows(z, e, tor, ref, "exact"),
    }
    t_tri_ieee = bench_ms(lambda: vq_lookup(z, e, backend="triton"))
    t_full_ieee = bench_ms(lambda: vq_lookup(z, e, backend="full"))
    out["exact_fp32"]["ms"] = {"triton": t_tri_ieee, "full": t_full_ieee}
    out["exact_fp32"]["triton_config"] = tuned_vq_config()
    out["exact_fp32"]["full_over_triton"] = t_full_ieee / t_tri_ieee
    del ref, tri, tor
    torch.cuda.empty_cache()

    # --- TF32
    torch.backends.cuda.matmul.allow_tf32 = True
    tri = vq_lookup(z, e, backend="triton")
    full = vq_lookup(z, e, backend="full")
    out["tf32"] = {"triton_check": check_rows(z, e, tri, None, "tf32"),
                   "full_check": check_rows(z, e, full, None, "tf32")}
    del tri, full
    torch.cuda.empty_cache()
    ms = {
        "matmul": bench_ms(lambda: z @ e.T),
        "triton": bench_ms(lambda: vq_lookup(z, e, backend="triton")),
        "full": bench_ms(lambda: vq_lookup(z, e, backend="full")),
        "torch": bench_ms(lambda: vq_lookup(z, e, backend="torch")),
    }
    out["tf32"]["ms"] = ms
    out["tf32"]["triton_config"] = tuned_vq_config()
    out["tf32"]["matmul_tflops"] = flops / ms["matmul"] / 1e9
    out["tf32"]["triton_tflops"] = flops / ms["triton"] / 1e9
    out["tf32"]["triton_fraction_of_matmul"] = ms["matmul"] / ms["triton"]
    out["tf32"]["full_over_triton"] = ms["full"] / ms["triton"]
    out["tf32"]["torch_over_triton"] = ms["torch"] / ms["triton"]
    torch.cuda.empty_cache()

    # --- bf16 inputs, fp32 accumulation
    zb, eb = z.bfloat16(), e.bfloat16()
    tri = vq_lookup(zb, eb, backend="triton")
    out["bf16"] = {"triton_check": check_rows(z, e, tri, None, "bfloat16")}
    ms = {"matmul": bench_ms(lambda: zb @ eb.T), "triton": bench_ms(lambda: vq_lookup(zb, eb, backend="triton"))}
    out["bf16"]["ms"] = ms
    out["bf16"]["triton_config"] = tuned_vq_config()
    out["bf16"]["matmul_tflops"] = flops / ms["matmul"] / 1e9
    out["bf16"]["triton_tflops"] = flops / ms["triton"] / 1e9
    out["bf16"]["triton_fraction_of_matmul"] = ms["matmul"] / ms["triton"]
    out["bf16"]["full_tf32_over_triton_bf16"] = out["tf32"]["ms"]["full"] / ms["triton"]
    torch.backends.cuda.matmul.allow_tf32 = False


def section_attention(res):
    shapes = [(64, 16, 256, 64), (1, 1, 16, 64), (8, 8, 32, 64), (4, 16, 2048, 128), (256, 16, 256, 64)]
    rows = []
    res["decode_attention"] = rows
    for (b, h, t, dh) in shapes:
        for dtype in (torch.bfloat16, torch.float32):
            g = torch.Generator(device="cuda").manual_seed(b * t)
            q = torch.randn(b, h, dh, device="cuda", generator=g).to(dtype)
            kc = torch.randn(b, h, t, dh, device="cuda", generator=g).to(dtype)
            vc = torch.randn(b, h, t, dh, device="cuda", generator=g).to(dtype)
            for length in (t, t // 2 + 1):
                ref = decode_attention(q.double(), kc.double(), vc.double(), length)
                out_s = decode_attention(q, kc, vc, length)
                out_t = decode_attention(q, kc, vc, length, backend="triton")
                err_t = float((out_t.double() - ref).norm() / ref.norm())
                err_s = float((out_s.double() - ref).norm() / ref.norm())
                ms_s = bench_ms(lambda: decode_attention(q, kc, vc, length))
                ms_t = bench_ms(lambda: decode_attention(q, kc, vc, length, backend="triton"))
                byts = 2 * b * h * length * dh * kc.element_size()
                rows.append({"B": b, "H": h, "T": t, "Dh": dh, "length": length, "dtype": str(dtype).split(".")[-1],
                             "rel_err_triton": err_t, "rel_err_sdpa": err_s,
                             "ms_sdpa": ms_s, "ms_triton": ms_t, "sdpa_over_triton": ms_s / ms_t,
                             "triton_GBps": byts / ms_t / 1e6})


def run_pytest(extra, timeout):
    t0 = time.time()
    cmd = [sys.executable, "-m", "pytest", "tests/test_kernels_vq.py", "tests/test_kernels_attention.py",
           "-q", "-p", "no:cacheprovider", "--noconftest", *extra]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": "."})
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, text = "timeout", (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else str(exc.stdout)
    return {"rc": rc, "tail": text.strip().splitlines()[-30:], "seconds": time.time() - t0}


def section_pytest(res):
    res["pytest_cuda"] = run_pytest(["-m", "cuda"], timeout=200)
    # every kernel test, compiled kernels on CUDA tensors (the interpreter is off here)
    res["pytest_all_kernels"] = run_pytest([], timeout=150)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT") or "results/benchmarks")
    ap.add_argument("--skip-pytest", action="store_true")
    ap.add_argument("--only", default="vq,attention,pytest")
    args = ap.parse_args()
    name = torch.cuda.get_device_name()
    res = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                       "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
                       "device_name": name, "cpu_count": os.cpu_count()},
           "errors": {}}
    sections = {"vq": section_vq, "attention": section_attention, "pytest": section_pytest}
    for key in args.only.split(","):
        if key == "pytest" and args.skip_pytest:
            continue
        t0 = time.time()
        try:
            sections[key](res)
        except Exception:  # keep going: partial results are still worth bringing back
            res["errors"][key] = traceback.format_exc()[-4000:]
            print(res["errors"][key], file=sys.stderr)
        res.setdefault("seconds", {})[key] = time.time() - t0
        torch.cuda.empty_cache()
    os.makedirs(args.out, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
    path = os.path.join(args.out, f"gpu-{slug}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=2)
    # short table
    vq = res.get("vq", {})
    for mode in ("exact_fp32", "tf32", "bf16"):
        if mode in vq:
            print(mode, json.dumps({k: v for k, v in vq[mode].items() if not k.endswith("check")}))
            print("   checks", json.dumps({k: v for k, v in vq[mode].items() if k.endswith("check")}))
    for r in res.get("decode_attention", []):
        print("attn B{B} H{H} T{T} Dh{Dh} L{length} {dtype}: sdpa {ms_sdpa:.4f} ms triton {ms_triton:.4f} ms "
              "ratio {sdpa_over_triton:.2f} err t {rel_err_triton:.1e} s {rel_err_sdpa:.1e}".format(**r))
    for key in ("pytest_cuda", "pytest_all_kernels"):
        if key in res:
            print(key, res[key]["rc"], res[key]["tail"][-1] if res[key]["tail"] else "")
    print("errors:", list(res["errors"]))
    print("wrote", path)


if __name__ == "__main__":
    main()
