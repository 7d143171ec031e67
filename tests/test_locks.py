"""The locks agree with pyproject.toml, so what the tests run on is what the image ships.

requirements.lock is the image's whole dependency set (the Dockerfile installs it with
`--require-hashes --no-deps`); requirements-dev.lock is that same set plus the dev
tools, and `make test` installs it the same way. `make lock` writes both.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

REPO: Final = Path(__file__).resolve().parents[1]
RELOCK: Final = "run make lock"
# The one platform both locks are compiled for (Makefile's `lock`): Python 3.11 on
# Debian bookworm, x86_64, as in the image and CI.
TARGET: Final = {
    "python_version": "3.11",
    "python_full_version": "3.11.0",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}


@dataclass(frozen=True)
class Pin:
    version: Version
    hashes: frozenset[str]


@dataclass(frozen=True)
class Lock:
    name: str
    pins: dict[NormalizedName, Pin]
    problems: tuple[str, ...]
    """Lines that are not an exact, hashed pin."""


def parse_lock(name: str, text: str) -> Lock:
    """The pins of a `--generate-hashes` requirements file, one per logical line."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += " " + line.removesuffix("\\")
        if not line.endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    if pending:
        logical.append(pending.strip())

    pins: dict[NormalizedName, Pin] = {}
    problems: list[str] = []
    for entry in logical:
        # Options follow the requirement; a marker (`; python_version < "3.12"`) may
        # hold spaces, so split on the options, not on whitespace.
        requirement_text, *options = (part.strip() for part in entry.split(" --"))
        if requirement_text.startswith("-"):
            problems.append(f"{name}: not a pin: {entry[:80]}")
            continue
        requirement = Requirement(requirement_text)
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==":
            problems.append(f"{name}: {requirement_text} is not pinned with ==")
            continue
        hashes = frozenset(o.removeprefix("hash=") for o in options if o.startswith("hash="))
        if not hashes:
            problems.append(f"{name}: {requirement_text} carries no --hash")
        pins[canonicalize_name(requirement.name)] = Pin(Version(specifiers[0].version), hashes)
    return Lock(name, pins, tuple(problems))


def applies(requirement: Requirement, extra: str = "") -> bool:
    return requirement.marker is None or requirement.marker.evaluate({**TARGET, "extra": extra})


def unmet(requirements: list[str], lock: Lock, extra: str = "") -> list[str]:
    """Each requirement of pyproject.toml the lock leaves out or pins outside its range."""
    found: list[str] = []
    for text in requirements:
        requirement = Requirement(text)
        if not applies(requirement, extra):
            continue
        pin = lock.pins.get(canonicalize_name(requirement.name))
        if pin is None:
            found.append(f"{lock.name}: {text} is not pinned; {RELOCK}")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            found.append(
                f"{lock.name}: {requirement.name}=={pin.version} is outside {text}; {RELOCK}"
            )
    return found


def lock_problems(pyproject: dict[str, Any], runtime: Lock, dev: Lock) -> list[str]:
    """Everything that makes the locks disagree with pyproject.toml or with each other."""
    project = pyproject["project"]
    dependencies: list[str] = project.get("dependencies", [])
    dev_extra: list[str] = project.get("optional-dependencies", {}).get("dev", [])
    problems = [*runtime.problems, *dev.problems]
    problems += unmet(dependencies, runtime)
    problems += unmet(dependencies, dev)
    problems += unmet(dev_extra, dev, extra="dev")
    for name, pin in sorted(runtime.pins.items()):
        other = dev.pins.get(name)
        if other != pin:
            if other is None:
                seen = "missing"
            elif other.version == pin.version:
                seen = "the same version with other hashes"
            else:
                seen = str(other.version)
            problems.append(
                f"{dev.name}: {name} must be {pin.version} as in {runtime.name}, is {seen}; {RELOCK}"
            )
    return problems


def read_lock(name: str) -> Lock:
    return parse_lock(name, (REPO / name).read_text("utf-8"))


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))


@pytest.fixture(scope="module")
def runtime() -> Lock:
    return read_lock("requirements.lock")


@pytest.fixture(scope="module")
def dev() -> Lock:
    return read_lock("requirements-dev.lock")


def with_dependency(pyproject: dict[str, Any], group: str, requirement: str) -> dict[str, Any]:
    project = dict(pyproject["project"])
    if group == "runtime":
        project["dependencies"] = [*project["dependencies"], requirement]
    else:
        extras = dict(project["optional-dependencies"])
        extras[group] = [*extras[group], requirement]
        project["optional-dependencies"] = extras
    return {**pyproject, "project": project}


def test_locks_agree_with_pyproject(pyproject: dict[str, Any], runtime: Lock, dev: Lock) -> None:
    assert lock_problems(pyproject, runtime, dev) == []


def test_locks_are_not_empty(runtime: Lock, dev: Lock) -> None:
    # A parser that read nothing would agree with everything.
    assert canonicalize_name("aioboto3") in runtime.pins
    assert {canonicalize_name("pytest"), canonicalize_name("uv")} <= set(dev.pins)
    assert len(dev.pins) > len(runtime.pins)


@pytest.mark.parametrize("group", ["runtime", "dev"])
def test_a_dependency_added_without_relocking_fails(
    pyproject: dict[str, Any], runtime: Lock, dev: Lock, group: str
) -> None:
    changed = with_dependency(pyproject, group, "tenacity>=8")
    problems = lock_problems(changed, runtime, dev)
    assert problems, "a new dependency with no pin went unnoticed"
    assert all("tenacity>=8 is not pinned" in problem for problem in problems)


def test_a_raised_lower_bound_without_relocking_fails(
    pyproject: dict[str, Any], runtime: Lock, dev: Lock
) -> None:
    project = dict(pyproject["project"])
    project["dependencies"] = [
        "stripe>=999" if Requirement(text).name == "stripe" else text
        for text in project["dependencies"]
    ]
    problems = lock_problems({**pyproject, "project": project}, runtime, dev)
    assert len(problems) == 2  # one per lock
    assert all("is outside stripe>=999" in problem for problem in problems)


def test_a_dependency_for_another_platform_needs_no_pin(
    pyproject: dict[str, Any], runtime: Lock, dev: Lock
) -> None:
    changed = with_dependency(pyproject, "runtime", "pywin32>=306; sys_platform == 'win32'")
    assert lock_problems(changed, runtime, dev) == []


@pytest.mark.parametrize(
    ("version", "hashes", "seen"),
    [
        ("1.0", None, "1.0"),
        (None, frozenset({"sha256:00"}), "the same version with other hashes"),
    ],
)
def test_runtime_pins_that_differ_between_the_locks_fail(
    pyproject: dict[str, Any],
    runtime: Lock,
    dev: Lock,
    version: str | None,
    hashes: frozenset[str] | None,
    seen: str,
) -> None:
    # yarl: a runtime package that pyproject.toml does not name (aiohttp needs it).
    name = canonicalize_name("yarl")
    pinned = runtime.pins[name]
    changed = Pin(Version(version) if version else pinned.version, hashes or pinned.hashes)
    drifted = Lock(dev.name, {**dev.pins, name: changed}, dev.problems)
    assert lock_problems(pyproject, runtime, drifted) == [
        f"requirements-dev.lock: yarl must be {pinned.version} as in requirements.lock, "
        f"is {seen}; {RELOCK}"
    ]


def test_a_pin_without_hash_or_exact_version_fails() -> None:
    lock = parse_lock(
        "x.lock",
        "# header\n"
        "good==1.0 \\\n    --hash=sha256:aa\n    # via x\n"
        "bare==2.0\n"
        "loose>=3 \\\n    --hash=sha256:bb\n"
        "-e .\n",
    )
    assert set(lock.pins) == {"good", "bare"}
    assert lock.pins[canonicalize_name("good")] == Pin(Version("1.0"), frozenset({"sha256:aa"}))
    assert lock.problems == (
        "x.lock: bare==2.0 carries no --hash",
        "x.lock: loose>=3 is not pinned with ==",
        "x.lock: not a pin: -e .",
    )
