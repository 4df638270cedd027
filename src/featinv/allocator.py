"""Keep freed host memory in the process (glibc only), so CPU work stops page-faulting.

PyTorch's CPU allocator is plain ``malloc``. glibc serves blocks above a (dynamic) mmap threshold
with a fresh ``mmap``, unmaps them on ``free`` and trims the heap top once more than twice that
threshold is free, so every denoising step maps its activations anew and faults them in page by
page: the demo sampler took ~450,000 minor faults (~1.7 GB of first touches) per batch of 32 images,
~20% of its time. ``keep_freed_memory`` fixes the mmap threshold at glibc's maximum (32 MiB) and the
trim threshold at 2 GiB: blocks up to 32 MiB are reused from the heap, larger ones are still mapped
and unmapped (so a huge buffer never stays behind), and up to 2 GiB of freed heap is kept for reuse
rather than handed back. Turning mmap off altogether saves ~4% more but lets the heap fragment to
several times a large buffer's size. This is the dependency-free form of the jemalloc/tcmalloc advice
in PyTorch's CPU performance guide. ``FEATINV_MALLOC=default`` leaves glibc's policy alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 2**31 - 1
ENV = "FEATINV_MALLOC"


def keep_freed_memory() -> str:
    """Apply the policy where glibc is the allocator; returns what was done (for logs and benchmarks)."""
    if os.environ.get(ENV, "") == "default":
        return f"glibc default ({ENV}=default)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "system default (not glibc)"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "glibc default (mallopt refused)"
    return "glibc, freed memory kept (mmap above 32 MiB, trim above 2 GiB)"
