"""featinv.allocator: with the policy on, large blocks come from the heap and are reused without page faults."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the policy applies to glibc only")

# In a fresh process: is a 24 MiB block served from the heap (below the program break) or mmapped?
# Then hold eight 16 MiB tensors at once and free them, as a network's activations come and go, and
# count the minor page faults of 4 rounds after 4 warm-up rounds.
PROBE = """
import ctypes, json, resource, torch
from featinv.allocator import keep_freed_memory
policy = keep_freed_memory()
libc = ctypes.CDLL(None)
libc.sbrk.restype = ctypes.c_void_p
libc.sbrk.argtypes = [ctypes.c_ssize_t]
x = torch.ones(6 * 2**20)
on_heap = x.data_ptr() < libc.sbrk(0)
del x
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def round_():
    xs = [torch.ones(4 * 2**20) for _ in range(8)]
    del xs
for _ in range(4):
    round_()
start = faults()
for _ in range(4):
    round_()
print(json.dumps({"policy": policy, "on_heap": on_heap, "faults": faults() - start}))
"""


def probe(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "FEATINV_MALLOC"}
    if env_value is not None:
        env["FEATINV_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_large_blocks_come_from_the_heap_and_are_reused_without_page_faults():
    kept = probe(None)
    default = probe("default")
    assert kept["policy"] == "glibc, freed memory kept (mmap above 32 MiB, trim above 2 GiB)"
    assert default["policy"] == "glibc default (FEATINV_MALLOC=default)"
    assert kept["on_heap"] and not default["on_heap"]  # glibc's default mmaps anything above 128 KiB at first
    # With the policy nothing is handed back, so the steady state faults in nothing. (Whether glibc's
    # default trims this pattern depends on the heap's layout: it faults ~98,000 pages in some runs,
    # none in others, so only the policy's side is asserted.)
    pages = 4 * 128 * 2**20 // 4096  # 4 rounds of 128 MiB in 4 KiB pages
    assert kept["faults"] < pages // 100


def test_every_featinv_command_applies_the_policy():
    from featinv.config import REPO_ROOT

    env = {k: v for k, v in os.environ.items() if k != "FEATINV_MALLOC"}
    out = subprocess.run([sys.executable, "-m", "featinv", "-v", "validate", str(REPO_ROOT / "params.yaml")],
                         env=env, capture_output=True, text=True, check=True)
    assert "allocator: glibc, freed memory kept (mmap above 32 MiB, trim above 2 GiB)" in out.stderr
