#!/usr/bin/env bash
# Issue 4's "On a GPU" list in one device call (at most 9 minutes, inside one 10-minute run):
#   (a) VQ lookup at N=65536, K=16384, D=256 and (b) decode attention: benchmarks/gpu_kernels.py
#   (c) paper-preset sampling, random weights, batch 64, cached / bf16 / compiled: benchmarks/gpu_sampling.py
#   (d) the kernel tests, CUDA-only ones included, on the compiled kernels
# Each part has its own time limit and writes under $OUT as soon as it has numbers, so a part that runs long
# costs only itself. Uses the machine's own python3 (its PyTorch and Triton); nothing is installed.
#
#   run(command="bash benchmarks/gpu_session.sh", timeout_s=570)
# then copy the JSON files from the reply's files_at into results/benchmarks/.
set -u
cd "$(dirname "$0")/.."
out="${OUT:-results/benchmarks}"
mkdir -p "$out"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi -L
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
echo "== (a, b) kernels"
timeout 150 python3 benchmarks/gpu_kernels.py --out "$out" --only vq,attention
echo "== (c) sampling"
timeout 240 python3 benchmarks/gpu_sampling.py --out "$out"
echo "== (d) kernel tests on the compiled kernels: the cuda-marked ones and every kernel_device test (ties broken"
echo "   left and the fp64 cast bite only compiled); the kernel files alone, the others import packages it lacks"
timeout 150 python3 -m pytest -q -p no:cacheprovider \
  tests/test_kernels_vq.py tests/test_kernels_attention.py tests/test_kernels_semantics.py 2>&1 \
  | tee "$out/gpu-pytest-cuda.log" | tail -15
echo "== done"
