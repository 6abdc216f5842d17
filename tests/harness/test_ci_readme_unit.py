"""`.ci/run` runs exactly the README's test command (the bubblewrap set-up included)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("2. Run the tests", 1)[1]
    block = re.search(r"```bash\n(.*?)\n\s*```", section, re.S)
    assert block is not None, "README: no bash block under '2. Run the tests'"
    return block.group(1).strip()


def test_ci_runs_the_readme_test_command():
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    command = _readme_test_command()
    assert command in lines, (command, lines)
    assert "apt-get install -y -qq bubblewrap" in command  # the eval sandbox's tool
