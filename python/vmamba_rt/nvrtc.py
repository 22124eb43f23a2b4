"""Compile the CUDA kernels to PTX with NVRTC through ctypes, without a GPU.

Used by the tests on machines without CUDA, so a broken kernel is caught
before it reaches a GPU. Needs the pip packages ``nvidia-cuda-nvrtc-cu12``
(the compiler) and ``nvidia-cuda-runtime-cu12`` (the fp16/bf16 headers).
"""

from __future__ import annotations

import ctypes
import os


class NvrtcError(RuntimeError):
    pass


def _package_dir(name: str) -> str:
    import importlib

    mod = importlib.import_module(name)
    return list(mod.__path__)[0]


def load_library() -> ctypes.CDLL:
    lib_dir = os.path.join(_package_dir("nvidia.cuda_nvrtc"), "lib")
    # The builtins library is loaded by libnvrtc from its own folder.
    return ctypes.CDLL(os.path.join(lib_dir, "libnvrtc.so.12"))


def include_dir() -> str:
    return os.path.join(_package_dir("nvidia.cuda_runtime"), "include")


def compile_ptx(source: str, arch: str, name_expressions=(), include_dirs=(), options=()) -> tuple[str, dict]:
    """PTX for ``arch`` (e.g. "compute_90") and the lowered name of each expression."""
    lib = load_library()
    prog = ctypes.c_void_p()
    check = lambda rc, what: _check(lib, prog, rc, what)  # noqa: E731
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"vmamba_rt.cu", 0, None, None), "create")
    try:
        for n in name_expressions:
            check(lib.nvrtcAddNameExpression(prog, n.encode()), f"name expression {n}")
        opts = [f"--gpu-architecture={arch}", "--std=c++17", *(f"-I{d}" for d in (include_dir(), *include_dirs)), *options]
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
        if rc != 0:
            raise NvrtcError(f"NVRTC failed for {arch}:\n{_log(lib, prog)}")
        size = ctypes.c_size_t()
        check(lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "ptx size")
        buf = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetPTX(prog, buf), "ptx")
        lowered = {}
        for n in name_expressions:
            out = ctypes.c_char_p()
            check(lib.nvrtcGetLoweredName(prog, n.encode(), ctypes.byref(out)), f"lowered name {n}")
            lowered[n] = out.value.decode()
        return buf.value.decode(), lowered
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _log(lib, prog) -> str:
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, buf)
    return buf.value.decode(errors="replace")


def _check(lib, prog, rc: int, what: str) -> None:
    if rc != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise NvrtcError(f"NVRTC {what}: {lib.nvrtcGetErrorString(rc).decode()}")
