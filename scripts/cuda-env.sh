# The environment of a CUDA build with the toolchain scripts/build-cuda.sh installs: source it
# (from the repository root) before `cargo ... --features cuda --target-dir target/cuda`, e.g.
#   . scripts/cuda-env.sh && cargo clippy -p cbs-kernels --features cuda --target-dir target/cuda
# Run scripts/build-cuda.sh once first (it installs the toolchain and the driver stub).
TOOLS=${CBS_CUDA_TOOLCHAIN:-target/cuda-toolchain}
CUDA=$(realpath "$TOOLS/py/nvidia/cu13")
export CUDA_HOME="$CUDA" CUDA_ROOT="$CUDA" CUDA_PATH="$CUDA"
export PATH="$CUDA/bin:$HOME/.cargo/bin:$PATH"
NCCL=$(realpath "$TOOLS/py/nvidia/nccl")
export LIBRARY_PATH="$CUDA/lib:$NCCL/lib:$(realpath "$TOOLS/stub")${LIBRARY_PATH:+:$LIBRARY_PATH}"
# cudarc's build script looks for nccl.h under $CUDA_PATH/include and /usr/local/include.
export CPATH="$NCCL/include${CPATH:+:$CPATH}"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
