"""The server caps glibc's malloc arenas (memory under many request threads)."""

from __future__ import annotations

import platform

from medlens.serving.heap import cap_malloc_arenas


def test_the_malloc_arenas_are_capped_on_glibc():
    assert cap_malloc_arenas() == (platform.libc_ver()[0] == "glibc")
