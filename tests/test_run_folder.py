"""The run folder's file names are spelled once, in base/run_folder.py: any other module of
the package names them through its constants and RunFolder, so a new literal cannot creep
back (docstrings and comments may still name files)."""

import ast
from pathlib import Path

from mnistcnn.base import run_folder
from mnistcnn.base.config import CONF_DIR

RUN_FOLDER = Path(run_folder.__file__).resolve()
PACKAGE = RUN_FOLDER.parents[1]


def file_names() -> set[str]:
    """run_folder's name constants and each part of those in a folder (".hydra",
    "hydra.yaml"), less a part that also names a file of the package's conf/ (config.yaml)."""
    names = {v for k, v in vars(run_folder).items() if k.isupper() and isinstance(v, str)}
    parts = {part for name in names for part in Path(name).parts}
    return names | (parts - {p.name for p in CONF_DIR.iterdir()})


def docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of a module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def literals(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, literal) of each string literal of source (an f-string's parts too) that is
    one of names, docstrings left out."""
    tree = ast.parse(source)
    skipped = docstrings(tree)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value in names and id(node) not in skipped]


def test_run_folder_file_names_are_spelled_only_in_run_folder():
    names = file_names()
    assert {"summary.json", ".hydra/config.yaml", ".hydra", "hydra.yaml", "plots"} <= names
    assert "config.yaml" not in names  # also conf/config.yaml, the package's own config
    spelled = [f"{path.relative_to(PACKAGE)}:{line} {value!r}"
               for path in sorted(PACKAGE.rglob("*.py")) if path != RUN_FOLDER
               for line, value in literals(path.read_text(), names)]
    assert not spelled, "name run-folder files through base/run_folder: " + "; ".join(spelled)


def test_the_scan_skips_docstrings_and_reads_f_string_parts():
    source = ('"""Writes summary.json."""\n'
              'def f(run, name):\n'
              '    """summary.json"""\n'
              '    return run / "summary.json", f"plots", f"{name}/model.pt", f"{name}"\n')
    assert literals(source, file_names()) == [(4, "summary.json"), (4, "plots")]
