"""The Dockerfile lints clean, and the lock it installs from matches pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from typing import Final

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.tools import REPO, explain, require_tool, run

LOCK: Final = REPO / "requirements.lock"
PIN: Final = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\]+)")


def test_hadolint_is_clean() -> None:
    tool = require_tool("hadolint")
    result = run([tool, "Dockerfile"])
    assert result.returncode == 0, explain(result)


def locked() -> dict[str, str]:
    """Package -> pinned version; asserts every pin carries hashes."""
    pins: dict[str, str] = {}
    entries = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text("utf-8"))
    for entry in entries:
        match = PIN.match(entry)
        if match:
            assert "--hash=sha256:" in entry, f"{match.group(1)} is locked without a hash"
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def test_lock_satisfies_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]
    pins = locked()
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, (
            f"{requirement.name} is in pyproject.toml but not in requirements.lock: "
            "regenerate the lock (command in its header)"
        )
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, pyproject.toml wants "
            f"{requirement.specifier}: regenerate the lock"
        )
