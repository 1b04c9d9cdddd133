"""The structure the code must keep (docs/architecture.md), checked like any behaviour.

One-way layers (import-linter's contract in pyproject.toml), ruff's lint and format,
functions that fit on a screen, one home per idea (no repeated blocks) and one table of
Hugging Face jobs, not a file per family.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "theseus"
MAX_FUNCTION_LINES = 60
MAX_TRAINER_LINES = 150
MIN_REPEATED_LINES = 6
# run the import-linter installed with this Python, whatever is on PATH; --no-cache writes nothing
LINT_IMPORTS = [
    sys.executable,
    "-c",
    "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())",
]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package below `cwd` (that copy first on the path), with cwd's pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([*LINT_IMPORTS, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_imports_follow_the_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, f"lint-imports (pyproject.toml [tool.importlinter]):\n{result.stdout}{result.stderr}"


def test_a_model_module_importing_training_breaks_the_layers(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "theseus", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    module = tmp_path / "theseus" / "model" / "axes.py"
    lines = [*module.read_text().splitlines(), "from theseus.training import BaseTrainer  # the wrong way"]
    module.write_text("\n".join(lines) + "\n")
    result = lint_imports(tmp_path)
    report = result.stdout + result.stderr
    assert result.returncode != 0, report
    assert "theseus layers: imports go one way, downward BROKEN" in report, report
    assert "theseus.model is not allowed to import theseus.training" in report, report
    # the line just added, so it is the copy that was analysed
    assert f"theseus.model.axes -> theseus.training (l.{len(lines)})" in report, report


@pytest.mark.parametrize(
    "command", [["check", "--output-format=concise"], ["format", "--check"]], ids=["check", "format"]
)
def test_ruff(command):
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "--no-cache", "theseus", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"ruff {' '.join(command)}:\n{result.stdout}{result.stderr}"


def package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_functions_fit_on_a_screen():
    long = []
    for path in package_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # the def line through the last line
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{where(path, node.lineno)} {node.name}: {lines} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_the_base_trainer_is_short():
    found = [
        (path, node)
        for path in sorted((PACKAGE / "training").rglob("*.py"))
        for node in ast.parse(path.read_text(), str(path)).body
        if isinstance(node, ast.ClassDef) and node.name == "BaseTrainer"
    ]
    assert len(found) == 1, f"BaseTrainer is defined {len(found)} times in theseus/training"
    path, node = found[0]
    lines = node.end_lineno - node.lineno + 1
    assert lines < MAX_TRAINER_LINES, f"{where(path, node.lineno)} BaseTrainer: {lines} lines"


# Lines too thin to make two blocks one idea: imports and lone punctuation (brackets, `*,`, a docstring's quotes).
THIN = re.compile(r"(import \S.*|from \S+ import .*|[()\[\]{},:;*\"']*)")
# A comment saying why both copies stay, on the line before one of them.
KEPT = re.compile(r"#.*\b(same as|because)\b", re.IGNORECASE)


def significant_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, whitespace-folded text) of the lines that count: no blanks, comments or thin lines.
    A comment saying why a block stays is kept as a line like no other, so no run reaches across it."""
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = " ".join(line.split())
        if KEPT.match(text):
            lines.append((number, f"{path}:{number}"))
        elif text and not text.startswith("#") and not THIN.fullmatch(text):
            lines.append((number, text))
    return lines


def explained(path: Path, first: int) -> bool:
    """Whether a comment in the comment lines just above line `first` (blanks between allowed) says why."""
    lines = path.read_text().splitlines()[: first - 1]
    while lines and (not lines[-1].strip() or lines[-1].strip().startswith("#")):
        if KEPT.match(lines.pop().strip()):
            return True
    return False


Place = tuple[Path, int, int]  # a file, the first and the last line of a block


def repeated_blocks(files: list[Path], size: int) -> list[tuple[Place, Place]]:
    """Pairs of places that share a run of `size` or more significant lines, each run at its longest."""
    lines = {path: significant_lines(path) for path in files}
    places: dict[tuple[str, ...], list[tuple[Path, int]]] = {}
    for path, numbered in lines.items():
        for start in range(len(numbered) - size + 1):
            window = tuple(text for _, text in numbered[start : start + size])
            places.setdefault(window, []).append((path, start))
    pairs = set()
    for found in places.values():
        for i, (a, start_a) in enumerate(found):
            for b, start_b in found[i + 1 :]:
                if a != b or start_b >= start_a + size:  # two places, not one run overlapping itself
                    pairs.add(((a, start_a), (b, start_b)))
    runs = []
    for (a, start_a), (b, start_b) in sorted(pairs, key=lambda pair: (str(pair[0][0]), pair[0][1], str(pair[1][0]))):
        if ((a, start_a - 1), (b, start_b - 1)) in pairs:
            continue  # inside a longer run, reported from where that one starts
        length = size
        while ((a, start_a + length - size + 1), (b, start_b + length - size + 1)) in pairs:
            length += 1
        runs.append(
            (
                (a, lines[a][start_a][0], lines[a][start_a + length - 1][0]),
                (b, lines[b][start_b][0], lines[b][start_b + length - 1][0]),
            )
        )
    return runs


def test_no_block_is_written_twice():
    unexplained = [
        f"{where(a, first_a)}-{last_a} ~ {where(b, first_b)}-{last_b}"
        for (a, first_a, last_a), (b, first_b, last_b) in repeated_blocks(package_files(), MIN_REPEATED_LINES)
        if not (explained(a, first_a) or explained(b, first_b))
    ]
    assert not unexplained, (
        f"blocks of {MIN_REPEATED_LINES}+ identical lines in two places (give the idea one home, or say why both "
        "stay in a comment on the line before one: `# same as ... because ...`):\n" + "\n".join(unexplained)
    )


def test_the_repeat_detector_finds_a_copied_block_and_accepts_an_explained_one(tmp_path):
    block = "\n".join(f"    total = total + values[{i}] * {i}" for i in range(MIN_REPEATED_LINES))
    (tmp_path / "a.py").write_text(f"import os\n\n\ndef a(values):\n    total = 0\n{block}\n    return total\n")
    (tmp_path / "b.py").write_text(f"def b(values):\n    total = 1\n\n{block}\n    return -total\n")
    (tmp_path / "c.py").write_text(f"def c(values):\n{block[: block.rindex(chr(10))]}\n")  # one line short
    files = sorted(tmp_path.glob("*.py"))
    runs = [
        (a.name, first_a, last_a, b.name, first_b, last_b)
        for (a, first_a, last_a), (b, first_b, last_b) in repeated_blocks(files, MIN_REPEATED_LINES)
    ]
    assert runs == [("a.py", 6, 11, "b.py", 4, 9)]
    assert not explained(tmp_path / "a.py", 6) and not explained(tmp_path / "b.py", 4)
    (tmp_path / "b.py").write_text(f"def b(values):\n    # same as a() because b starts at 1\n\n{block}\n")
    assert explained(tmp_path / "b.py", 4)
    (tmp_path / "a.py").write_text(f"def a(values):\n{block[:200]}\n    # same as b() because...\n{block[200:]}\n")
    assert repeated_blocks(files, MIN_REPEATED_LINES) == [], "a run reached across the comment that explains it"


def test_hugging_face_jobs_come_from_one_table_not_a_file_per_family():
    from theseus.model.convert import FAMILIES

    per_family = [
        str(path.relative_to(ROOT)) for path in sorted((PACKAGE / "experiments").rglob("*.py")) if path.stem in FAMILIES
    ]
    assert not per_family, f"per-family job files (make them rows of the family table): {', '.join(per_family)}"
