"""The package's imports point down only (docs/design.md, "Layers"), and no module takes a private name
of another: read from the source (every import, module-level or inside a function), nothing imported."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "fromscratch"

# lower number = lower layer; a module may import its own layer and the ones below it
LAYERS = {"base": 0, "data": 1, "models": 2, "evaluation": 3, "engine": 4, "study": 5, "cli": 6}
BASE = {"errors", "utils", "config", "comm", "log", "visualize", "__init__"}


def layer_of(module: str) -> str:
    """``fromscratch.engine.trainer`` -> "engine"; the bottom modules -> "base"."""
    parts = module.split(".")[1:]
    if not parts or parts[0] in BASE:
        return "base"
    if parts[0] in ("cli", "__main__"):
        return "cli"
    return parts[0]


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(source: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every ``fromscratch`` import in a file's source."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fromscratch"):
            names = [a.name for a in node.names]
            # `from fromscratch import comm` imports a module, not a name
            if all((PKG.joinpath(*node.module.split(".")[1:], n + ".py")).exists()
                   or (PKG.joinpath(*node.module.split(".")[1:], n)).is_dir() for n in names):
                out += [(node.lineno, f"{node.module}.{n}", []) for n in names]
            else:
                out.append((node.lineno, node.module, names))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("fromscratch")]
    return sorted(out)


FILES = sorted(PKG.rglob("*.py"))


def test_the_package_is_all_read():
    assert len(FILES) > 40 and {layer_of(module_name(f)) for f in FILES} == set(LAYERS)


def problems(path: Path, source: str) -> list[str]:
    me = module_name(path)
    mine = LAYERS[layer_of(me)]
    wrong = []
    for line, target, names in imports(source):
        there = layer_of(target)
        if me != "fromscratch.__main__" and there == "cli":
            wrong.append(f"line {line}: imports the CLI ({target})")
        elif LAYERS[there] > mine:
            wrong.append(f"line {line}: {layer_of(me)} imports {there} ({target})")
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        if private:
            wrong.append(f"line {line}: private name(s) {private} of {target}")
    return wrong


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_down(path):
    wrong = problems(path, path.read_text())
    assert not wrong, f"{path.relative_to(PKG)}:\n" + "\n".join(wrong)


def test_the_checker_catches_upward_private_and_cli_imports():
    src = ("def f():\n    from fromscratch.engine.trainer import train\n"
           "from fromscratch.data.validate import _x\nimport fromscratch.cli\n")
    wrong = problems(PKG / "data" / "probe.py", src)
    assert wrong == ["line 2: data imports engine (fromscratch.engine.trainer)",
                     "line 3: private name(s) ['_x'] of fromscratch.data.validate",
                     "line 4: imports the CLI (fromscratch.cli)"]
