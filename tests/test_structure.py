"""The layout keeps the architecture visible: a top-level module is a command (or shared vocabulary),
the library lives in rooms that import only downward, data and models do not import each other, KerasTuner
internals stay in one module, and every command that trains takes the same flags."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "keras_digits"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


# The rooms, lowest first: a module may import its own room, the shared vocabulary and rooms listed before
# its own (rooms on one line stand side by side and import neither way).
LAYERS = (
    ("utils",),
    ("runtime",),
    ("data", "models", "recipes"),
    ("reporting",),
    ("evaluation",),
    ("training",),
    ("serving",),
    ("studies",),
    ("explain", "tune"),
    ("app",),
)
VOCABULARY = {"config", "errors"}
COMMANDS = {"train", "evaluate", "report", "export", "predict", "submit", "ensemble", "sweep", "experiment", "demo"}


def _package_modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _own_imports(path: Path, known: set[str]) -> set[str]:
    found = set()
    for name in imported_modules(path):
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != "keras_digits":
            found.add(name)
    return found


def _level(room: str) -> int:
    return next(i for i, rooms in enumerate(LAYERS) if room in rooms)


def test_top_level_holds_only_commands_and_vocabulary():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert top <= COMMANDS | VOCABULARY, (
        f"library modules directly in keras_digits/: {sorted(top - COMMANDS - VOCABULARY)}"
    )
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert rooms == {r for layer in LAYERS for r in layer}, rooms


def test_commands_import_no_command_and_rooms_import_downward():
    modules = _package_modules()
    known = set(modules)

    def room(name: str) -> str | None:  # None: a module directly in keras_digits/
        path = modules[name]
        return None if path.parent == PACKAGE and path.name != "__init__.py" else name.split(".")[1]

    bad = []
    for name, path in sorted(modules.items()):
        if name == "keras_digits":
            continue
        for target in sorted(_own_imports(path, known) - {name}):
            here, there = room(name), room(target)
            if there is None and target.split(".")[1] in COMMANDS:
                bad.append(f"{name} imports the command {target}")
            elif here is not None and there is None and target.split(".")[1] not in VOCABULARY:
                bad.append(f"{name} imports {target}, which is neither a room nor shared vocabulary")
            elif here is not None and there is not None and here != there and _level(there) >= _level(here):
                bad.append(f"{name} ({here}) imports {target} ({there}), which is not below it")
    assert not bad, "\n".join(bad)


def test_house_check_finds_no_circle_and_no_command_used_as_a_library():
    tool = REPO.parent / "shared" / "tools" / "house_check.py"
    if not tool.is_file():
        pytest.skip("../shared/tools/house_check.py is not beside this checkout")
    proc = subprocess.run([sys.executable, str(tool), str(PACKAGE)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_python_m_keras_digits_lists_every_command():
    proc = subprocess.run([sys.executable, "-m", "keras_digits"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in COMMANDS | {"explain", "tune"}:
        assert f"  {name} " in proc.stdout, name


@pytest.mark.parametrize("layer,other", [("data", "models"), ("models", "data")])
def test_data_and_models_do_not_import_each_other(layer, other):
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        bad = sorted(
            m for m in imported_modules(path) if m == f"keras_digits.{other}" or m.startswith(f"keras_digits.{other}.")
        )
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_only_runtime_oracle_touches_keras_tuner_internals():
    users = sorted(
        str(p.relative_to(REPO))
        for p in PACKAGE.rglob("*.py")
        if any(m.startswith("keras_tuner.src") for m in imported_modules(p))
    )
    assert users == ["keras_digits/runtime/oracle.py"]


def _help(module: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _parsers():
    from keras_digits.experiment import build_parser as experiment
    from keras_digits.sweep import build_parser as sweep
    from keras_digits.train import build_parser as train
    from keras_digits.tune.cli import build_parser as tune

    return {"train": train(), "tune": tune(), "sweep": sweep(), "experiment": experiment()}


def test_every_command_that_trains_lists_the_same_training_flags():
    from keras_digits.training.flags import FLAGS

    seen: dict[str, dict[str, str]] = {}
    for name, parser in _parsers().items():
        options = [o for a in parser._actions for o in a.option_strings]
        assert len(options) == len(set(options)), f"{name} lists a flag twice"
        helps = {o: a.help for a in parser._actions for o in a.option_strings}
        for flag in FLAGS:
            assert flag.option in helps, f"{name} lacks {flag.option}"
        assert "--config" in helps
        seen[name] = {flag.option: helps[flag.option] for flag in FLAGS}
    assert seen["tune"] == seen["train"] == seen["sweep"] == seen["experiment"]  # same help, same default
    assert "(default: 15)" in seen["train"]["--epochs"] and "(default: 0.001)" in seen["train"]["--lr"]
    assert "--val-split" in _help("keras_digits.tune")  # and from a real process (the others: same parsers)


def test_boolean_flags_sit_in_their_groups():
    from keras_digits.train import build_parser

    text = build_parser().format_help()
    groups = re.split(r"\n(?=[a-z ]+:\n)", text)
    runtime = next(g for g in groups if g.startswith("runtime:"))
    how = next(g for g in groups if g.startswith("how to train:"))
    assert "--deterministic" in runtime and "--jit-compile" in runtime and "--evaluate-test" in runtime
    assert "--early-stopping" in how and "--freeze-base" in how


def test_importing_the_tune_package_starts_no_tensorflow():
    code = "import sys, keras_digits.tune; print('tensorflow' in sys.modules, 'keras_tuner' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.stdout.split() == ["False", "False"], proc.stderr
