"""One-shot zstd frames through the system's libzstd (Debian's libzstd1), loaded with ctypes, so
file transfers need no Python package beyond protobuf."""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Optional

from ._errors import ProtocolError, SandboxDependencyError

_lib: Optional[ctypes.CDLL] = None


def _zstd() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("zstd") or "libzstd.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            raise SandboxDependencyError(
                f"file transfers need libzstd ({name}): {e} (Debian: libzstd1)") from None
        lib.ZSTD_compressBound.restype = ctypes.c_size_t
        lib.ZSTD_compressBound.argtypes = [ctypes.c_size_t]
        lib.ZSTD_compress.restype = ctypes.c_size_t
        lib.ZSTD_compress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p,
                                      ctypes.c_size_t, ctypes.c_int]
        lib.ZSTD_decompress.restype = ctypes.c_size_t
        lib.ZSTD_decompress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p,
                                        ctypes.c_size_t]
        lib.ZSTD_isError.restype = ctypes.c_uint
        lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
        lib.ZSTD_getErrorName.restype = ctypes.c_char_p
        lib.ZSTD_getErrorName.argtypes = [ctypes.c_size_t]
        _lib = lib
    return _lib


def compress(data: bytes, level: int = 3) -> bytes:
    lib = _zstd()
    cap = lib.ZSTD_compressBound(len(data))
    buf = ctypes.create_string_buffer(cap)
    n = lib.ZSTD_compress(buf, cap, data, len(data), level)
    if lib.ZSTD_isError(n):
        raise SandboxDependencyError("zstd: " + lib.ZSTD_getErrorName(n).decode())
    return buf.raw[:n]


def decompress(frame: bytes, max_size: int) -> bytes:
    """The content of one frame, which must not exceed max_size bytes."""
    lib = _zstd()
    buf = ctypes.create_string_buffer(max(max_size, 1))
    n = lib.ZSTD_decompress(buf, max_size, frame, len(frame))
    if lib.ZSTD_isError(n):
        raise ProtocolError("a file chunk from sbxd does not decompress: " +
                            lib.ZSTD_getErrorName(n).decode())
    return buf.raw[:n]
