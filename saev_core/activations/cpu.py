"""Process-wide CPU settings that make large-tensor training loops fast."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.cache
def reuse_freed_memory() -> bool:
    """Let glibc's malloc keep freed large blocks for reuse instead of unmapping them.

    By default every tensor above 32 MiB is a fresh ``mmap``, and the kernel zero-fills each of its
    pages on first touch: at d_sae 8192 that made a simple ReLU over one batch's pre-activations
    6x slower than the arithmetic (bench/RESULTS.md, "Sparse training step"). Raising the mmap
    and trim thresholds (what ``MALLOC_MMAP_THRESHOLD_`` does at start-up) serves those tensors
    from the heap, whose pages stay mapped between steps; the process's resident memory stays at
    its peak instead of shrinking. Returns False where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    limit = ctypes.c_int(2**31 - 1)
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))


@functools.cache
def parallel_decode_pool() -> str:
    """Make jemalloc Arrow's default memory pool (where pyarrow ships it), for readers that decode
    row groups in several threads; returns the backend in use.

    With pyarrow's default, mimalloc, two threads decoding 64 MB row groups at once ran at
    1.1-1.4 GB/s together against 7.3 GB/s from one thread; with jemalloc at 5.5 GB/s
    (bench/RESULTS.md, issue 31). An ``ARROW_DEFAULT_MEMORY_POOL`` the user set is kept.
    """
    import pyarrow as pa

    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        except NotImplementedError:  # a pyarrow built without jemalloc
            pass
    return pa.default_memory_pool().backend_name
