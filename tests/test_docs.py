"""Every command shown in the README and docs/ exists: parsed by the real CLI, files present."""

import re
import shlex
from pathlib import Path

import pytest

from metarec.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def commands(page: Path) -> list[str]:
    """Shell commands of a page's ```bash blocks, continuation lines joined."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.DOTALL):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                found.append(line)
    return found


ALL = [(page.name, command) for page in PAGES for command in commands(page)]


def test_the_pages_show_commands():
    assert {"README.md", "quickstart.md", "retrieval.md", "distributed.md"} <= {p for p, _ in ALL}


@pytest.mark.parametrize("page, command", ALL, ids=[f"{p}:{c[:50]}" for p, c in ALL])
def test_documented_command_exists(page, command):
    if "$" in command:  # shell loops over variables: their commands are checked by hand
        return
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value prefixes
        words = words[1:]
    if not words or words[0] in {"export", "cd", "git", "pip", "cat", "ls", "ln", "d=$(mktemp"}:
        return
    program = words[0]
    if program.endswith("metarec") or "metarec.cli" in words:
        argv = words[words.index("metarec.cli") + 1 :] if "metarec.cli" in words else words[1:]
        try:
            build_parser().parse_args(argv)
        except SystemExit as exit_:
            pytest.fail(f"{page}: `{command}` does not parse (exit {exit_.code})")
    elif program in {"python", "python3"} and words[1].endswith(".py"):
        assert (REPO / words[1]).is_file(), f"{page}: {words[1]} does not exist"
    elif program == "make":
        targets = re.findall(r"^([a-z-]+):", (REPO / "Makefile").read_text(), re.MULTILINE)
        assert set(words[1:]) <= set(targets), f"{page}: make {words[1:]}"
    elif "/" in program:
        assert (REPO / program).is_file(), f"{page}: {program} does not exist"
