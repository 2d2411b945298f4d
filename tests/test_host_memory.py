"""reuse_freed_memory: after it, a freed 64 MB buffer is reused by the next one (no page faults);
without it (VIVI_MALLOC=default) glibc maps and faults every one afresh. Run in subprocesses: the
setting is process-wide."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

PROBE = """
import ctypes, resource
from vivi.train.host_memory import reuse_freed_memory
print(reuse_freed_memory())
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 64 * 2**20
def fill_and_free():
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
fill_and_free()  # the first buffer is new memory either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    fill_and_free()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(malloc: str | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIVI_MALLOC", "GLIBC_TUNABLES")}
    if malloc:
        env["VIVI_MALLOC"] = malloc
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


def test_freed_buffers_are_reused():
    applied, faults = _probe(None)
    assert applied == "True"
    assert faults < 1000  # 4 x 64 MB of 4 KiB pages would be ~65,000


def test_default_malloc_faults_every_buffer_and_is_left_alone():
    applied, faults = _probe("default")
    assert applied == "False"
    assert faults > 4 * 64 * 2**20 // 4096 // 2  # every buffer mapped anew: the control that makes the test bite
