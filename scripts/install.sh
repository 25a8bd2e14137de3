#!/usr/bin/env bash
# Installs qwen2-edge and everything it needs into ./.venv (or $QWEN2_EDGE_VENV).
#   scripts/install.sh          runtime dependencies
#   scripts/install.sh --dev    plus test/lint tools
# torch is pinned to the CPU build first, so no resolver ever pulls a CUDA build.
# llama-cpp-python compiles llama.cpp from source (7-15 min on 2 cores); the wheel is
# cached under ~/.cache/qwen2-edge/wheels keyed by version and CPU flags, so this is paid once.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${QWEN2_EDGE_VENV:-$here/.venv}
python=${PYTHON:-python3}
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"

LLAMA_CPP_VERSION=0.3.36
TORCH_VERSION=2.13.0

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade "pip>=24" >/dev/null

# 1. CPU torch (the machine's find-links carry the +cpu wheel; elsewhere use PyTorch's CPU index).
if ! "$venv/bin/python" -c "import torch,sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
  "${pip[@]}" install "torch==$TORCH_VERSION" || \
    "${pip[@]}" install "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
fi

# 2. llama-cpp-python, built once per CPU-flag set and cached.
# llama.cpp's default -march=native enables its AMX matmul, which dies with SIGILL on the
# first quantized prefill on some AMX Xeons (measured). We build without -march=native and
# turn on exactly the SIMD extensions /proc/cpuinfo reports, AMX always off.
cmake_args="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
has() { [[ " $flags " == *" $1 "* ]]; }
for pair in sse4_2:SSE42 f16c:F16C fma:FMA bmi2:BMI2 avx:AVX avx2:AVX2 avx_vnni:AVX_VNNI \
            avx512f:AVX512 avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
  if has "${pair%%:*}"; then cmake_args+=" -DGGML_${pair##*:}=ON"; else cmake_args+=" -DGGML_${pair##*:}=OFF"; fi
done
key=$(printf '%s %s' "$LLAMA_CPP_VERSION" "$cmake_args" | sha256sum | cut -c1-16)
cache=${QWEN2_EDGE_CACHE:-$HOME/.cache/qwen2-edge}/wheels/llama-cpp-python-$LLAMA_CPP_VERSION-$key
if ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null || [ "$(cat "$venv/.llama_cpp_key" 2>/dev/null)" != "$key" ]; then
  if ! ls "$cache"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $LLAMA_CPP_VERSION from source (one time, 7-15 min; cached in $cache)"
    mkdir -p "$cache.tmp"
    CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      "${pip[@]}" wheel --no-deps --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_VERSION" -w "$cache.tmp"
    rm -rf "$cache"; mv "$cache.tmp" "$cache"
  fi
  "${pip[@]}" install --no-deps --force-reinstall "$cache"/llama_cpp_python-*.whl
  echo "$key" > "$venv/.llama_cpp_key"
fi

# 3. The package and the rest of its (pinned) dependencies.
"${pip[@]}" install -e "$here$extra"
