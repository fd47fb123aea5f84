"""Build and call the Ascend C Skiparse kernels compiled for the host CPU through the Ascend C API shim.

The kernel sources in `kernels/ascend_c/op_kernel/` are compiled unchanged with g++ against
`kernels/ascend_c/cpu_shim/` into a shared library cached under `kernels/ascend_c/build/` (rebuilt when a source
or the flags change) and called with ctypes. This is a correctness harness for the NPU kernels, not a fast CPU path.
Set `ASCENDC_SHIM_STRICT=1` to abort on any Ascend C rule violation (misaligned or truncated copies, queue misuse).
"""
from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import torch

ASCENDC_DIR = Path(os.environ.get("OSP_ASCENDC_DIR", Path(__file__).resolve().parents[3] / "kernels" / "ascend_c"))
CXX_FLAGS = ["-O2", "-std=c++17", "-fPIC", "-shared", "-Wall", "-DASCENDC_CPU_SHIM"]
SOURCES = ["cpu_shim/skiparse_shim_launch.cpp", "cpu_shim/shim_selftest.cpp"]
DTYPE_KEYS = {torch.float16: 0, torch.bfloat16: 1}


def _source_files() -> list[Path]:
    files = []
    for sub in ("cpu_shim", "op_kernel", "op_host"):
        files += sorted(p for p in (ASCENDC_DIR / sub).rglob("*") if p.suffix in (".h", ".cpp"))
    return files


def compiler() -> Optional[str]:
    return os.environ.get("CXX") or shutil.which("g++")


def shim_available() -> bool:
    return compiler() is not None and (ASCENDC_DIR / SOURCES[0]).exists()


def build_library() -> Path:
    """Compile (or reuse) the shim library; returns its path."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("the ascendc_shim backend needs a C++17 compiler with _Float16 (g++ >= 12); set CXX")
    digest = hashlib.sha256(" ".join([cxx] + CXX_FLAGS).encode())
    for f in _source_files():
        digest.update(f.relative_to(ASCENDC_DIR).as_posix().encode())
        digest.update(f.read_bytes())
    build_dir = ASCENDC_DIR / "build"
    build_dir.mkdir(parents=True, exist_ok=True)
    lib = build_dir / f"libskiparse_shim-{digest.hexdigest()[:16]}.so"
    if lib.exists():
        return lib
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one compile when several processes start at once
        if lib.exists():
            return lib
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=build_dir)
        os.close(fd)
        cmd = [cxx, *CXX_FLAGS, f"-I{ASCENDC_DIR / 'cpu_shim'}", f"-I{ASCENDC_DIR / 'op_kernel'}",
               f"-I{ASCENDC_DIR / 'op_host'}", *[str(ASCENDC_DIR / s) for s in SOURCES], "-o", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            os.unlink(tmp)
            raise RuntimeError(f"building the Ascend C shim library failed:\n{' '.join(cmd)}\n{result.stderr}")
        os.replace(tmp, lib)
        for stale in build_dir.glob("libskiparse_shim-*.so"):  # builds of older sources
            if stale != lib:
                stale.unlink(missing_ok=True)
    return lib


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build_library()))
    p, u, f = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_float
    lib.skiparse_shim_forward.argtypes = [ctypes.c_int] + [p] * 9 + [u] * 7 + [f] + [u] * 3
    lib.skiparse_shim_backward.argtypes = [ctypes.c_int] + [p] * 15 + [u] * 7 + [f] + [u] * 3
    lib.shim_selftest_copy.argtypes = [p, p, u]
    lib.skiparse_shim_violations.restype = ctypes.c_long
    lib.skiparse_shim_truncated_copies.restype = ctypes.c_long
    return lib


def _ptr(t: Optional[torch.Tensor]):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


class _ShimSkiparse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, text_k, text_v, key_mask, sparsity, group, scale, tiles):
        b, h, n, d = q.shape
        length = 0 if text_k is None else text_k.shape[2]
        out = torch.empty_like(q)
        stat_max = torch.empty(b, h, n, 8, dtype=torch.float32)
        stat_sum = torch.empty_like(stat_max)
        rc = library().skiparse_shim_forward(
            DTYPE_KEYS[q.dtype], _ptr(q), _ptr(k), _ptr(v), _ptr(text_k), _ptr(text_v), _ptr(key_mask), _ptr(out),
            _ptr(stat_max), _ptr(stat_sum), b, h, n, length, d, sparsity, int(group), scale, *tiles)
        if rc:
            raise RuntimeError("ascendc_shim SkiparseAttention rejected the shape (see stderr)")
        ctx.save_for_backward(q, k, v, text_k, text_v, key_mask, out, stat_max, stat_sum)
        ctx.args = (sparsity, group, scale, tiles)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, text_k, text_v, key_mask, out, stat_max, stat_sum = ctx.saved_tensors
        sparsity, group, scale, tiles = ctx.args
        b, h, n, d = q.shape
        length = 0 if text_k is None else text_k.shape[2]
        dout = dout.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dtk = None if text_k is None else torch.empty_like(text_k)
        dtv = None if text_v is None else torch.empty_like(text_v)
        rc = library().skiparse_shim_backward(
            DTYPE_KEYS[q.dtype], _ptr(q), _ptr(k), _ptr(v), _ptr(text_k), _ptr(text_v), _ptr(key_mask), _ptr(out),
            _ptr(dout), _ptr(stat_max), _ptr(stat_sum), _ptr(dq), _ptr(dk), _ptr(dv), _ptr(dtk), _ptr(dtv),
            b, h, n, length, d, sparsity, int(group), scale, *tiles)
        if rc:
            raise RuntimeError("ascendc_shim SkiparseAttentionGrad rejected the shape (see stderr)")
        return dq, dk, dv, dtk, dtv, None, None, None, None, None


def shim_skiparse_attention(q, k, v, *, sparsity: int, group: bool, scale: float, text_k=None, text_v=None,
                            key_mask: Optional[torch.Tensor] = None, block_rows: int = 0, block_cols: int = 0,
                            block_dim: int = 4) -> torch.Tensor:
    """Skiparse attention through the Ascend C kernels on the CPU shim (BNSD, original token order).

    `key_mask` is uint8 (B, N + L), 1 = masked, over video then text keys. `block_rows/cols` force the tile size
    (0 = the tiling's choice); `block_dim` is the number of kernel blocks (run one after another).
    """
    if q.device.type != "cpu":
        raise RuntimeError(f"the ascendc_shim backend runs on CPU tensors only, got {q.device}")
    if q.dtype not in DTYPE_KEYS:
        raise TypeError(f"the Ascend C Skiparse kernel takes float16/bfloat16 inputs, got {q.dtype}; cast q/k/v first")
    tensors = [t.contiguous() if t is not None else None for t in (q, k, v, text_k, text_v)]
    if key_mask is not None:
        key_mask = key_mask.to(torch.uint8).contiguous()
    return _ShimSkiparse.apply(*tensors, key_mask, sparsity, group, scale, (block_rows, block_cols, block_dim))
