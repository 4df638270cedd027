"""Keep freed host memory in the process (glibc only), so CPU work stops page-faulting.

PyTorch's CPU allocator is plain ``malloc``. glibc serves blocks above its mmap threshold with a fresh
``mmap`` and trims the heap top on ``free``, so every denoising step maps its large activations anew
and faults them in page by page: the demo sampler took ~450,000 minor faults per batch of 32 images
(~1.7 GB of first touches), ~20% of its time. ``keep_freed_memory`` switches both off (``M_MMAP_MAX``
0, ``M_TRIM_THRESHOLD`` 2 GiB): freed blocks are reused, and the process keeps its peak heap (the
peak RSS is unchanged; memory is not handed back until exit). glibc still falls back to ``mmap`` when
the heap cannot grow. This is the dependency-free form of the jemalloc/tcmalloc advice in PyTorch's
CPU performance guide. ``FEATINV_MALLOC=default`` leaves glibc's policy alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
ENV = "FEATINV_MALLOC"


def keep_freed_memory() -> str:
    """Apply the policy where glibc is the allocator; returns what was done (for logs and benchmarks)."""
    if os.environ.get(ENV, "") == "default":
        return f"glibc default ({ENV}=default)"
    libc_version = platform.libc_ver()
    if platform.system() != "Linux" or libc_version[0] != "glibc":
        return "system default (not glibc)"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if libc.mallopt(M_MMAP_MAX, 0) != 1 or libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1) != 1:
        return "glibc default (mallopt refused)"
    return "glibc, freed memory kept (no mmap, no trim)"
