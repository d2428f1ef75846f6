"""The benchmark command runs end to end on tiny sizes and writes its figures (1-8;
figure 9, the million-row file, runs only with `--big`).

Timings are never asserted: this only proves that `python -m benchmarks --quick`
works (servers start, every figure runs, every subprocess ends) and fills the table.
"""

from __future__ import annotations

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
