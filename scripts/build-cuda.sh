#!/usr/bin/env bash
# Build `cbs` with the `cuda` feature, on any Linux x86-64 machine (no GPU needed):
#   scripts/build-cuda.sh            # → target/cuda/release/cbs (stripped), compute capability 9.0
#   CUDA_COMPUTE_CAP=80 scripts/build-cuda.sh    # another GPU generation
#
# 1. Installs the pinned CUDA 13.0 toolchain from PyPI wheels into target/cuda-toolchain (once;
#    idempotent). 13.0 because newer nvcc releases make cudarc's build script fail, and the
#    GPU machines this targets run a CUDA 13.0 driver.
# 2. Adds the unversioned library links the linker looks for (the wheels ship libX.so.N only)
#    and a link-time stub of the driver library (`libcuda.so`, soname libcuda.so.1) exporting one
#    dummy symbol per driver function cudarc binds: PyPI has no driver. At run time the real
#    driver is loaded.
# 3. Builds with its own target directory (the CPU build's artifacts stay valid) and strips the
#    binary.
#
# Run-time libraries: libcuda.so.1 (the NVIDIA driver), libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10, libnvrtc.so.13, libcudart.so.13 and libnccl.so.2 (a CUDA 13 install or
# PyTorch's wheels provide them; point LD_LIBRARY_PATH at their directories).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

TOOLS=${CBS_CUDA_TOOLCHAIN:-target/cuda-toolchain}
WHEELS=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85 nvidia-nvvm==13.0.88
  # NCCL 2.30: the version of cudarc's default NCCL bindings (its `nccl` feature).
  nvidia-nccl-cu13==2.30.7
)
stamp="$TOOLS/installed-$(printf '%s\n' "${WHEELS[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  rm -rf "$TOOLS"
  mkdir -p "$TOOLS"
  python3 -m pip install --quiet --no-deps --target "$TOOLS/py" "${WHEELS[@]}"
  touch "$stamp"
fi
CUDA=$(realpath "$TOOLS/py/nvidia/cu13")
[ -x "$CUDA/bin/nvcc" ] || { echo "nvcc missing in $CUDA/bin (broken toolchain in $TOOLS?)" >&2; exit 1; }

# Unversioned links for the linker.
NCCL=$(realpath "$TOOLS/py/nvidia/nccl")
for lib in cublas cublasLt curand nvrtc cudart nccl; do
  dir="$CUDA/lib"
  [ "$lib" = nccl ] && dir="$NCCL/lib"
  real=$(ls "$dir/lib$lib.so."* 2>/dev/null | sort | head -1 || true)
  [ -n "$real" ] || { echo "lib$lib.so.* missing in $dir" >&2; exit 1; }
  ln -sf "$(basename "$real")" "$dir/lib$lib.so"
done

# The driver stub: every `cu*` function of cudarc's driver bindings, as a dummy.
STUB="$TOOLS/stub"
mkdir -p "$STUB"
if [ ! -f "$STUB/libcuda.so" ]; then
  src=$(cargo metadata --format-version 1 --features cbs-cli/cuda 2>/dev/null |
    python3 -c 'import json,sys; m=json.load(sys.stdin); print(next(p["manifest_path"] for p in m["packages"] if p["name"]=="cudarc"))')
  sys_rs="$(dirname "$src")/src/driver/sys/mod.rs"
  grep -o '^pub unsafe fn cu[A-Za-z0-9_]*' "$sys_rs" | sed 's/^pub unsafe fn //' | sort -u |
    sed 's/.*/int &(void) { return 999; }/' > "$STUB/cuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB/libcuda.so" "$STUB/cuda_stub.c"
fi

. scripts/cuda-env.sh
cargo build --release -p cbs-cli --features cuda --target-dir target/cuda
strip target/cuda/release/cbs
ls -l target/cuda/release/cbs
