"""The benchmark command runs end to end on tiny sizes and writes its figures (1-8;
figure 9, the million-row file, runs only with `--big`).

Timings are never asserted: this only proves that `python -m benchmarks --quick`
works (servers start, every figure runs, every subprocess ends) and fills the table.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_writes_all_figures(tmp_path: Path) -> None:
    output = tmp_path / "README.md"
    output.write_text("# Results\n\nintro\n\n<!-- results:start -->\nPREVIOUS-RESULTS\n"
                      "<!-- results:end -->\n\nafter\n", encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    text = output.read_text(encoding="utf-8")
    assert text.startswith("# Results\n\nintro\n") and text.endswith("\nafter\n")
    block = text.split("<!-- results:start -->", 1)[1].split("<!-- results:end -->", 1)[0]
    assert "PREVIOUS-RESULTS" not in block
    summary = [line for line in block.splitlines() if line.startswith("| ")]
    numbers = {line.split("|")[1].strip() for line in summary}
    assert {"1", "2", "3", "4", "5", "6", "7", "8"} <= numbers and "9" not in numbers
    for number in range(1, 9):
        assert f"#### {number}. " in block
    assert "error:" not in block
    assert "aiohttp" in block and "cores" in block


def test_big_adds_a_third_size_to_figure_8(tmp_path: Path) -> None:
    """`--big` runs figure 8 at a third size too (10,000 requests; 240 with `--quick`),
    so that the table shows where its ratio goes past 5,000 requests."""
    output = tmp_path / "README.md"
    output.write_text("<!-- results:start -->\n<!-- results:end -->\n", encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--big", "--only", "8",
         "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    block = output.read_text(encoding="utf-8").split("#### 8. ", 1)[1]
    sizes = [line.split("|")[1].strip() for line in block.splitlines()
             if line.startswith("| ") and line.split("|")[1].strip()[:1].isdigit()]
    assert sizes == ["60", "120", "240"]
    assert "at 120 and at 240 requests within 1.1x of the one at 60" in block


def test_fresh_bytecode_compiles_stale_modules() -> None:
    """The figures measure the library as installed, compiled: a module whose cached
    bytecode is missing gets it written (even where imports do not write bytecode), so
    that no measured process pays for compiling it."""
    import importlib.util

    import mirakl_cancel._stores.sqlite as module

    cached = Path(importlib.util.cache_from_source(module.__file__))
    cached.unlink(missing_ok=True)
    completed = subprocess.run(
        [sys.executable, "-c", "import sys; from benchmarks._common import fresh_bytecode; "
         "sys.exit(0 if fresh_bytecode() else 1)"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert cached.exists()
    source_mtime = int(Path(module.__file__).stat().st_mtime)
    assert int.from_bytes(cached.read_bytes()[8:12], "little") == source_mtime & 0xFFFFFFFF
