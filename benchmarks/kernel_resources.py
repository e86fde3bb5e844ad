"""What each VQ-lookup autotune tile costs on a GPU, compiled here without one (ptxas ships with triton).

    PYTHONPATH=. python3 benchmarks/kernel_resources.py [--d 256] [--arch 90]

For every config the autotuner would try at codebook dimension D, in each mode (fp32 exact, TF32, bf16):
registers per thread, bytes spilled to the stack, shared memory, and whether that fits the 227 KiB an
sm_90 block may use. A spilling or oversized tile is a poor candidate before any timing; timings need the GPU
(benchmarks/gpu_kernels.py).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from reference.kernels.vq_lookup import _triton_kernel  # noqa: E402

MODES = (("fp32", "ieee"), ("fp32", "tf32"), ("bf16", "ieee"))
SMEM_LIMIT = 227 * 1024


def signature(kernel, dtype: str) -> dict:
    """The kernel's parameters, read from it, typed as vq_lookup calls it with `dtype` inputs."""
    pointers = {"z_ptr": "*" + dtype, "e_ptr": "*" + dtype, "esq_ptr": "*fp32", "idx_ptr": "*i32",
                "best_ptr": "*fp32"}
    return {name: "constexpr" if i in kernel.constexprs else pointers.get(name, "i32")
            for i, name in enumerate(kernel.arg_names)}


def registers_and_spill(cubin: bytes) -> tuple[int, int]:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True).stdout
    reg, stack = re.search(r"REG:(\d+).*STACK:(\d+)", out).groups()
    return int(reg), int(stack)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=256, help="codebook dimension D (the paper's VQGAN: 256)")
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (H100/H200: 90)")
    a = ap.parse_args()
    kernel, tuned = _triton_kernel(False)
    target = GPUTarget("cuda", a.arch, 32)
    print(f"{'tile':<44} {'mode':<10} {'regs':>4} {'spill':>6} {'smem':>6}")
    for cfg in tuned.early_config_prune(tuned.configs, {"D": a.d}):
        k = cfg.kwargs
        tile = (f"{'whole-D' if k['WHOLE_D'] else 'stepped'} {k['BLOCK_N']}x{k['BLOCK_K']}x{k['BLOCK_D']} "
                f"w{cfg.num_warps} s{cfg.num_stages}")
        for dtype, precision in MODES:
            src = ASTSource(kernel, signature(kernel, dtype), constexprs={**k, "PRECISION": precision})
            compiled = triton.compile(src, target=target,
                                      options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
            reg, spill = registers_and_spill(compiled.asm["cubin"])
            smem = compiled.metadata.shared
            mode = "bf16" if dtype == "bf16" else precision
            flag = "" if smem <= SMEM_LIMIT else "  too much shared memory"
            print(f"{tile:<44} {mode:<10} {reg:>4} {spill:>6} {smem // 1024:>5}K{flag}")


if __name__ == "__main__":
    main()
