"""The layer rule of src/mnistcnn (pyproject's import-linter contract, docs/architecture.md):
the package keeps it, and a lower layer importing a higher one breaks it."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(src: Path) -> subprocess.CompletedProcess:
    """import-linter on the package found in src, with the project's contract."""
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"),
                           "--no-cache"], cwd=src, env={"PYTHONPATH": str(src)},
                          capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_layers():
    result = lint_imports(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "src" / "mnistcnn", tmp_path / "mnistcnn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    errors = tmp_path / "mnistcnn" / "base" / "errors.py"
    errors.write_text(errors.read_text() + "\nfrom mnistcnn.runs import lifecycle  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "mnistcnn.base.errors -> mnistcnn.runs.lifecycle" in result.stdout
