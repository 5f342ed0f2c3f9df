"""The shape of the house: arrows point down, rooms do not import each other in a circle.

Every Python module under ``metarec/``, ``train/`` and ``retrieval/`` is read with `ast`
(nothing is imported) and each ``import x`` / ``from x import y`` it holds, at module level or
inside a function, relative ones resolved, becomes an arrow from its room to the imported
module's room. `ROOMS` below places every room on a floor (docs/architecture.md). The checks:

- no arrow points to a room on a higher floor;
- no arrow is one of `FORBIDDEN` (same floor, still not allowed: e.g. ``metarec/eval/`` sits
  under the methods, ``metarec/distributed/`` never imports ``metarec/meta/``);
- no cycle between rooms of one floor;
- every module is placed by `ROOMS` (a new module must be given a room) and every import of
  the project names a module that exists.

``bench/`` and ``tests/`` are outside the floors and may import anything.

The docs rule: every module is named in docs/architecture.md by its full path from the
repository root (``metarec/jobs/evaluate.py``, never a shortened ``jobs/evaluate.py``), and
every path there that starts with a top-level folder of the repository exists.
"""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("metarec", "train", "retrieval")

# room -> floor. A room ending in "/" is a folder (every module under it); otherwise one file.
ROOMS: dict[str, float] = {
    # 0: base helpers, importable by all
    "metarec/__init__.py": 0,
    "metarec/errors.py": 0,
    "metarec/atomic.py": 0,
    "metarec/hashing.py": 0,
    "metarec/config.py": 0,
    "metarec/provenance.py": 0,
    "metarec/device.py": 0,
    # 1: the ground
    "metarec/data/": 1,
    "metarec/models/": 1,
    "metarec/distributed/": 1,
    "metarec/checkpoint.py": 1,
    # 2: the math
    "metarec/eval/": 2,
    "metarec/meta/": 2,
    "metarec/baselines/": 2,
    "metarec/rl/": 2,
    # 2.5: the one owner of a trained run
    "metarec/trained_run.py": 2.5,
    # 3: jobs, one module per command
    "metarec/options.py": 3,
    "metarec/jobs/": 3,
    "train/": 3,
    "retrieval/": 3,
    # 4: the command line
    "metarec/cli.py": 4,
    "metarec/__main__.py": 4,
}

# Arrows between rooms that the floors alone would allow, and why they are not.
FORBIDDEN: dict[tuple[str, str], str] = {
    ("metarec/distributed/", "metarec/meta/"): "the engine receives the objective from the recipe",
    ("metarec/eval/", "metarec/meta/"): "eval measures; the methods sit above it",
    ("metarec/eval/", "metarec/baselines/"): "eval measures; the methods sit above it",
    ("metarec/eval/", "metarec/rl/"): "eval measures; the methods sit above it",
    ("train/", "metarec/jobs/"): "recipes do not call the other jobs",
    ("retrieval/", "metarec/jobs/"): "retrieval does not call the other jobs",
    ("metarec/options.py", "metarec/jobs/"): "shared options import no job",
    ("metarec/options.py", "train/"): "shared options import no job",
    ("metarec/options.py", "retrieval/"): "shared options import no job",
}


@dataclass(frozen=True)
class Arrow:
    """One import: ``path:line`` (of the importing module) imports ``target`` (dotted)."""

    path: str
    line: int
    target: str
    source_room: str | None
    target_room: str | None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source_room} -> {self.target_room} ({self.target})"


def modules(root: Path) -> dict[str, str]:
    """Dotted module name -> path relative to ``root``, for every module of the packages."""
    found = {}
    for package in PACKAGES:
        for file in sorted((root / package).rglob("*.py")):
            relative = file.relative_to(root).as_posix()
            parts = relative[: -len(".py")].split("/")
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = relative
    return found


def room_of(path: str, rooms: dict[str, float]) -> str | None:
    """The room a module's path belongs to: its file, or the longest folder holding it."""
    if path in rooms:
        return path
    folders = [room for room in rooms if room.endswith("/") and path.startswith(room)]
    return max(folders, key=len, default=None)


def imported_names(tree: ast.Module, module: str, is_package: bool) -> list[tuple[int, str, str]]:
    """(line, dotted name, fallback) of every import in the tree, relative imports resolved.
    ``from x import y`` gives ``x.y`` with fallback ``x`` (``y`` may be a name, not a module);
    ``import x.y`` gives ``x.y`` with no fallback."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names += [(node.lineno, f"{base}.{alias.name}", base) for alias in node.names]
    return names


def arrows(root: Path, rooms: dict[str, float] = ROOMS) -> list[Arrow]:
    """Every import of a project module by a project module, with both rooms."""
    known = modules(root)
    found = []
    for module, path in known.items():
        tree = ast.parse((root / path).read_text(), filename=path)
        is_package = path.endswith("__init__.py")
        for line, name, fallback in imported_names(tree, module, is_package):
            if name.split(".")[0] not in PACKAGES:
                continue
            target = name if name in known else fallback  # missing: reported by `violations`
            target_path = known.get(target)
            found.append(
                Arrow(
                    path,
                    line,
                    target,
                    room_of(path, rooms),
                    room_of(target_path, rooms) if target_path else None,
                )
            )
    return found


def violations(root: Path, rooms: dict[str, float] = ROOMS) -> dict[str, list[str]]:
    """What breaks the rules, by kind: ``up``, ``forbidden``, ``cycle``, ``unplaced``,
    ``missing``; each entry names the file and line of the import."""
    found: dict[str, list[str]] = {
        k: [] for k in ("up", "forbidden", "cycle", "unplaced", "missing")
    }
    known = modules(root)
    for path in known.values():
        if room_of(path, rooms) is None:
            found["unplaced"].append(path)
    same_floor: dict[tuple[str, str], list[Arrow]] = {}
    for arrow in arrows(root, rooms):
        source, target = arrow.source_room, arrow.target_room
        if source is None:
            continue  # its module is reported as unplaced
        if arrow.target not in known:
            found["missing"].append(f"{arrow.path}:{arrow.line}: imports {arrow.target}")
        elif target is None or source == target:
            continue
        elif rooms[target] > rooms[source]:
            found["up"].append(str(arrow))
        elif (source, target) in FORBIDDEN:
            found["forbidden"].append(f"{arrow}: {FORBIDDEN[source, target]}")
        elif rooms[target] == rooms[source]:
            same_floor.setdefault((source, target), []).append(arrow)
    for cycle in cycles(set(same_floor)):
        edges = [edge for edge in same_floor if set(edge) <= cycle]
        inside = sorted(str(arrow) for edge in edges for arrow in same_floor[edge])
        found["cycle"].append(" <-> ".join(sorted(cycle)) + ": " + "; ".join(inside))
    return found


def cycles(edges: set[tuple[str, str]]) -> list[set[str]]:
    """The groups of rooms that reach each other through ``edges`` (strongly connected
    components of more than one room), each a set."""
    rooms = sorted({room for edge in edges for room in edge})
    reach = {room: {t for s, t in edges if s == room} for room in rooms}
    changed = True
    while changed:  # transitive closure: the graphs here have a few dozen rooms
        changed = False
        for room in rooms:
            more = set().union(*(reach[r] for r in reach[room])) - reach[room]
            if more:
                reach[room] |= more
                changed = True
    groups = []
    for room in rooms:
        group = {room} | {other for other in reach[room] if room in reach[other]}
        if len(group) > 1 and group not in groups:
            groups.append(group)
    return groups


@pytest.fixture(scope="module")
def found() -> dict[str, list[str]]:
    return violations(REPO)


@pytest.mark.parametrize("kind", ["up", "forbidden", "cycle", "unplaced", "missing"])
def test_the_house_keeps_its_shape(found, kind):
    assert found[kind] == [], f"{kind}:\n" + "\n".join(found[kind])


def test_distributed_never_imports_meta():
    wrong = [
        str(a)
        for a in arrows(REPO)
        if a.source_room == "metarec/distributed/" and a.target.startswith("metarec.meta")
    ]
    assert wrong == []


def test_the_walk_sees_imports_everywhere():
    """Function-level imports count, and the walk finds the arrows it should."""
    seen = {(a.path, a.target) for a in arrows(REPO)}
    assert ("metarec/cli.py", "metarec.options") in seen
    assert ("metarec/__main__.py", "metarec.cli") in seen
    assert len(seen) > 100


def plant(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        file = root / relative
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
    return root


FAKE_BASE = {
    "metarec/__init__.py": "",
    "metarec/data/__init__.py": "",
    "metarec/meta/__init__.py": "y = 1\n",
    "metarec/baselines/__init__.py": "",
    "train/__init__.py": "",
    "retrieval/__init__.py": "",
}


def test_a_planted_upward_import_is_caught(tmp_path):
    root = plant(
        tmp_path,
        {
            **FAKE_BASE,
            "metarec/data/x.py": "import os\n\n\ndef f():\n    from metarec.meta import y\n",
            "metarec/meta/ok.py": "from metarec.data import x\n",
        },
    )
    found = violations(root)
    assert found["up"] == ["metarec/data/x.py:5: metarec/data/ -> metarec/meta/ (metarec.meta)"]
    assert [k for k, v in found.items() if v] == ["up"]


def test_a_planted_relative_upward_import_is_caught(tmp_path):
    root = plant(tmp_path, {**FAKE_BASE, "metarec/data/x.py": "from ..meta import y\n"})
    assert violations(root)["up"] == [
        "metarec/data/x.py:1: metarec/data/ -> metarec/meta/ (metarec.meta)"
    ]


def test_a_planted_cycle_is_caught(tmp_path):
    root = plant(
        tmp_path,
        {
            **FAKE_BASE,
            "metarec/meta/a.py": "from metarec.baselines.b import g\n\n\ndef f():\n    pass\n",
            "metarec/baselines/b.py": "def g():\n    from metarec.meta import a\n",
        },
    )
    found = violations(root)
    assert found["cycle"] == [
        "metarec/baselines/ <-> metarec/meta/: "
        "metarec/baselines/b.py:2: metarec/baselines/ -> metarec/meta/ (metarec.meta.a); "
        "metarec/meta/a.py:1: metarec/meta/ -> metarec/baselines/ (metarec.baselines.b)"
    ]
    assert [k for k, v in found.items() if v] == ["cycle"]


def test_planted_forbidden_unplaced_and_missing_are_caught(tmp_path):
    root = plant(
        tmp_path,
        {
            **FAKE_BASE,
            "metarec/distributed/engine.py": "import metarec.meta\n",
            "metarec/newroom/z.py": "",
            "train/r.py": "from metarec.dist import engine\n",
        },
    )
    found = violations(root)
    assert found["up"] == [
        "metarec/distributed/engine.py:1: metarec/distributed/ -> metarec/meta/ (metarec.meta)"
    ]
    assert found["unplaced"] == ["metarec/newroom/z.py"]
    assert found["missing"] == ["train/r.py:1: imports metarec.dist"]


def test_a_planted_same_floor_forbidden_arrow_is_caught(tmp_path):
    root = plant(tmp_path, {**FAKE_BASE, "metarec/eval/m.py": "from metarec.meta import y\n"})
    assert violations(root)["forbidden"] == [
        "metarec/eval/m.py:1: metarec/eval/ -> metarec/meta/ (metarec.meta): "
        "eval measures; the methods sit above it"
    ]


def test_cli_is_a_short_registry():
    cli = REPO / "metarec" / "cli.py"
    assert len(cli.read_text().splitlines()) <= 150


def test_every_command_module_is_found():
    from metarec.cli import COMMANDS

    for name, (module, _help) in COMMANDS.items():
        command = importlib.import_module(module)
        for function in ("add_arguments", "config_from_args", "run"):
            assert callable(getattr(command, function, None)), f"{name}: {module}.{function}"


DOC = REPO / "docs" / "architecture.md"


def test_every_module_is_in_the_architecture_doc():
    text = DOC.read_text()
    named = set(re.findall(r"(?<![\w/.-])((?:[\w-]+/)+[\w-]+\.py)\b", text))
    absent = sorted(set(modules(REPO).values()) - named)
    assert absent == [], f"not in {DOC.name} by full path: {absent}"


def test_every_path_in_the_architecture_doc_exists():
    tops = {entry.name for entry in REPO.iterdir() if not entry.name.startswith(".")}
    paths = re.findall(r"(?<![\w/.<>-])((?:[\w-]+/)+(?:[\w-]+\.\w+)?)(?![\w/.-])", DOC.read_text())
    wrong = sorted({p for p in paths if p.split("/")[0] in tops and not (REPO / p).exists()})
    assert wrong == [], f"{DOC.name} names paths that do not exist: {wrong}"
