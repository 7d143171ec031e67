"""checkov's policy checks on everything under deploy/ and on the Dockerfile.

The kustomize framework renders each overlay (with kubectl) and checks what would be
applied. The raw kubernetes framework is left out on purpose: it reads patches and
the base as if they were complete objects and reports what the overlays fix. The
base alone is not deployable (its AWS values come from an overlay), so it is only
checked through the overlays. Every skip is written next to what it skips, with a
reason, and `test_every_skip_has_a_reason` holds that.
"""

from __future__ import annotations

import re
from typing import Any, Final

import yaml  # type: ignore[import-untyped,unused-ignore]

from tests.deploy.tools import REPO, explain, load_template, require_tool, run

SKIP_ANNOTATION: Final = re.compile(r"^checkov\.io/skip\d+$")
SKIP_VALUE: Final = re.compile(r"^CKV2?_[A-Z0-9_]+=\S.{20,}", re.DOTALL)


def checkov(*args: str) -> str:
    require_tool("kubectl")  # without it the kustomize framework skips silently
    tool = require_tool("checkov")
    result = run([tool, "--skip-download", "--compact", "--quiet", *args], timeout_s=600)
    assert result.returncode == 0, explain(result)
    return result.stdout


def test_deploy_folder_passes() -> None:
    out = checkov(
        "--directory",
        "deploy",
        "--framework",
        "kustomize",
        "cloudformation",
        "secrets",
        "--skip-path",
        "deploy/k8s/base",
    )
    # A framework that found nothing to scan prints no results: make sure both ran.
    assert "kustomize scan results" in out, out
    assert "cloudformation scan results" in out, out


def test_dockerfile_passes() -> None:
    out = checkov("--file", "Dockerfile", "--framework", "dockerfile")
    assert "dockerfile scan results" in out, out


def test_every_skip_has_a_reason() -> None:
    found = 0
    for path in sorted((REPO / "deploy" / "k8s").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text("utf-8")):
            annotations: dict[str, str] = (doc or {}).get("metadata", {}).get("annotations") or {}
            for key, value in annotations.items():
                if SKIP_ANNOTATION.match(key):
                    found += 1
                    assert SKIP_VALUE.match(value.strip()), f"{path}: {key}: {value!r}"
    for path in sorted((REPO / "deploy" / "aws").glob("*.yaml")):
        resources: dict[str, Any] = load_template(path)["Resources"]
        for name, resource in resources.items():
            for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
                found += 1
                assert len(skip.get("comment", "").strip()) > 20, f"{path}: {name}: {skip}"
    assert found, "no skips found: the reason check has nothing to look at"
