"""The README's "gate from Python" example, run as a user runs it: a script in the repo root, no pytest."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

MARKED = re.compile(r"<!-- python-api-example -->\n```python\n(.*?)```\n<!-- /python-api-example -->", re.S)


def test_the_readme_python_example_gates_the_zoo_without_pytest():
    example = MARKED.search((REPO / "README.md").read_text())
    assert example, "README lost its marked Python API example"
    done = subprocess.run([sys.executable, "-c", example.group(1)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pytest" not in {name.split(".")[0] for name in _modules_loaded(example.group(1))}
    failures = [line for line in done.stdout.splitlines() if line.startswith("FAIL ")]
    # int2-default quantized the shared expert (auto-round's default): its policy must fail; the variant
    # that keeps the fragile layers must fail nothing.
    assert any(line.startswith("FAIL int2 keep-shared-expert policy:") for line in failures), done.stdout
    assert not [line for line in failures if line.startswith("FAIL int4 ")], done.stdout
    assert "int4" in done.stdout and "bf16" in done.stdout  # the verdict table names every model


def _modules_loaded(code: str) -> list[str]:
    """Modules a fresh interpreter holds after importing what the example imports (not running it)."""
    imports = "\n".join(line for line in code.splitlines() if line.startswith(("from ", "import ")))
    probe = f"{imports}\nimport sys\nprint('\\n'.join(sys.modules))"
    return subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.split()
