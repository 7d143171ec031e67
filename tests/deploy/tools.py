"""Finding the external tools the deploy checks shell out to, and running them.

A missing tool fails its test: these checks are part of CI, and a skip would let an
unchecked manifest through. `.ci/deploy-tools.sh` installs every one of them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

REPO: Final = Path(__file__).resolve().parents[2]
INSTALL_HINT: Final = "run .ci/deploy-tools.sh (as root) to install the deploy check tools"


def find_tool(name: str) -> str | None:
    """Beside this interpreter (where deploy-tools.sh pip-installs), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        if name == "kubectl":
            pytest.fail(
                "kubectl is not installed: it comes with the machine image (no package "
                "registry here provides it)",
                pytrace=False,
            )
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}", pytrace=False)
    return path


def run(
    argv: Sequence[str],
    *,
    cwd: Path = REPO,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    timeout_s: float = 240,
) -> subprocess.CompletedProcess[str]:
    """Runs a tool in its own process group; a tool that outlives `timeout_s` fails
    the test with what it printed, and its whole group (forked helpers too) is killed,
    so a hang cannot hold the pipes open past the test's own timeout."""
    with subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=None if env is None else dict(env),
        stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(input_text, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            hung = subprocess.CompletedProcess(process.args, -9, stdout, stderr)
            pytest.fail(f"no answer within {timeout_s:.0f} s: {explain(hung)}", pytrace=False)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def explain(result: subprocess.CompletedProcess[str], tail_chars: int = 6000) -> str:
    """What a failed command said, for an assertion message."""
    argv = " ".join(str(arg) for arg in result.args)
    return (
        f"`{argv}` exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-tail_chars:]}\n"
        f"--- stderr ---\n{result.stderr[-tail_chars:]}"
    )


class CloudFormationLoader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]
    """Reads CloudFormation YAML: short-form intrinsics become `{"Fn::X": value}`."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CloudFormationLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: Path) -> dict[str, Any]:
    template: dict[str, Any] = yaml.load(path.read_text("utf-8"), Loader=CloudFormationLoader)
    return template
