"""`pip install .` gives a CLI that starts: the wheel carries everything, configs included.

The wheel is built from a copy of the source tree and installed, without its dependencies,
into a fresh virtual environment that borrows this environment's packages (torch, Hydra, ...)
through a .pth file: a .pth line adds a folder to sys.path without running the .pth files in
it, so this environment's editable install of mnistcnn stays out. The commands then run from
an empty folder with no PYTHONPATH, so only the installed wheel can answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT


def build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "--quiet", "-w", str(dist), str(source)],
                   check=True, capture_output=True, text=True)
    (wheel,) = dist.glob("mnistcnn-*.whl")
    return wheel


def fresh_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)
    borrowed = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(site.stdout.strip()) / "borrowed.pth").write_text("\n".join(borrowed) + "\n")
    return venv


@pytest.mark.slow
def test_an_installed_wheel_finds_its_configs_and_trains(tmp_path, synthetic_dir):
    wheel = build_wheel(tmp_path)
    shipped = set(zipfile.ZipFile(wheel).namelist())
    assert {"mnistcnn/conf/config.yaml", "mnistcnn/conf/model/tiny.yaml",
            "mnistcnn/conf/experiment/pooling.yaml"} <= shipped
    venv = fresh_venv(tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
                   check=True, capture_output=True, text=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=300)

    where = run(str(venv / "bin" / "python"), "-c", "import mnistcnn; print(mnistcnn.__file__)")
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr

    job = run(str(venv / "bin" / "mnistcnn"), "train", "--cfg", "job")
    assert job.returncode == 0, job.stderr
    assert "model:" in job.stdout and "trainer:" in job.stdout

    trained = run(str(venv / "bin" / "python"), "-m", "mnistcnn", "train", "model=tiny",
                  f"data.dir={synthetic_dir}", "data.limit=300", "data.val_size=100",
                  "trainer.epochs=1", "trainer.device=cpu", "report.enabled=false",
                  "hydra.run.dir=run")
    assert trained.returncode == 0, trained.stderr
    summary = json.loads((elsewhere / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 1
