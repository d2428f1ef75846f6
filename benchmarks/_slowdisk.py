"""A slow disk without a slow disk: an LD_PRELOAD shim that delays fsync/fdatasync.

Cloud and network volumes take 1-20 ms to flush; this machine's disk takes 0.1 ms. The
shim (C, compiled here with the system compiler into a temporary directory) makes every
`fsync`, `fdatasync` and `sync_file_range` of a child process wait `FSYNC_DELAY_US`
microseconds before doing the real call, and, if `FSYNC_COUNT_FILE` is set, writes the
number of flushes there when the process exits. Only children started with the
environment from `env()` are affected.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["SlowDisk"]

_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long delay_us = -1;
static long flushes = 0;

static void slow(void) {
    if (delay_us < 0) {
        const char *text = getenv("FSYNC_DELAY_US");
        delay_us = text ? atol(text) : 0;
    }
    __atomic_add_fetch(&flushes, 1, __ATOMIC_RELAXED);
    if (delay_us > 0) {
        struct timespec t = {delay_us / 1000000, (delay_us % 1000000) * 1000};
        while (nanosleep(&t, &t) != 0) {}
    }
}

int fsync(int fd) {
    static int (*real)(int) = 0;
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int) = 0;
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow();
    return real(fd);
}

__attribute__((destructor)) static void report(void) {
    const char *path = getenv("FSYNC_COUNT_FILE");
    if (path) {
        FILE *f = fopen(path, "w");
        if (f) { fprintf(f, "%ld\n", flushes); fclose(f); }
    }
}
"""


class SlowDisk:
    """`with SlowDisk() as disk:` compiles the shim; `disk.env(delay_ms, count_file)`."""

    def __init__(self) -> None:
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.library: Path | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("gcc") is not None or shutil.which("cc") is not None

    def __enter__(self) -> SlowDisk:
        compiler = shutil.which("gcc") or shutil.which("cc")
        if compiler is None:
            raise RuntimeError("no C compiler: the slow-disk shim cannot be built")
        self._dir = tempfile.TemporaryDirectory(prefix="slowdisk-")
        source = Path(self._dir.name) / "slowdisk.c"
        source.write_text(_SOURCE)
        self.library = Path(self._dir.name) / "slowdisk.so"
        subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(self.library),
                        str(source), "-ldl"], check=True, capture_output=True, timeout=120)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._dir is not None:
            self._dir.cleanup()

    def env(self, delay_ms: float, count_file: Path | None = None) -> dict[str, str]:
        """Environment additions for a child whose flushes take `delay_ms` longer."""
        assert self.library is not None
        env = {"LD_PRELOAD": str(self.library), "FSYNC_DELAY_US": str(int(delay_ms * 1000))}
        if count_file is not None:
            env["FSYNC_COUNT_FILE"] = str(count_file)
        return env
