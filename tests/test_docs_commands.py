"""Every `kdq ...` command line in README.md and docs/*.md parses, and its config (file < flags < --set) builds:
a renamed flag, a moved config field (DistillConfig's sections) or a bad value in the docs fails here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from kdq.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _command_lines(path: Path) -> list:
    """``(line number, argv)`` of each ``kdq`` command in the file's bash blocks (continuations joined,
    comments dropped)."""
    out, block, start = [], False, 0
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            block = line.strip() in ("```bash", "```sh", "```shell") if not block else False
            i += 1
            continue
        if block and line.lstrip().startswith("kdq "):
            start, text = i + 1, line
            while text.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i]
            out.append((start, shlex.split(text, comments=True)))
        i += 1
    return out


COMMANDS = [(f"{p.name}:{n}", argv) for p in DOCS for n, argv in _command_lines(p)]


def test_the_docs_hold_commands():
    assert len(COMMANDS) >= 15
    assert any(argv[1] == "sweep-lengths" for _, argv in COMMANDS)


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses_and_builds_its_config(where, argv):
    if "--help" in argv or "-h" in argv or "--config" in argv or len(argv) < 2 or argv[1] in ("--help",):
        pytest.skip("help, or a config file of the reader's")
    parser = build_parser()
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit as err:
        pytest.fail(f"{where}: `{shlex.join(argv)}` does not parse (exit {err.code})")
    spec = args.command_spec
    if spec.config is not None:
        spec.config_from(args)  # ValueError names the field: a moved or misspelt one fails here
    assert re.fullmatch(r"[a-z-]+", args.command)
