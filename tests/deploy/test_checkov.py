"""checkov's policy checks on everything under deploy/ and on the Dockerfile.

The kustomize framework renders each overlay (with kubectl) and checks what would be
applied. The raw kubernetes framework is left out on purpose: it reads patches and
the base as if they were complete objects and reports what the overlays fix. The
base alone is not deployable (its AWS values come from an overlay), so it is only
checked through the overlays, one checkov run per overlay: given several overlays
whose base it does not scan, checkov 3.3 renders them in parallel into one shared
folder, and the interleaved files make its forked workers fail and hang. Every
skip is written next to what it skips, with a reason, and
`test_every_skip_has_a_reason` holds that.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from tests.deploy.conftest import OVERLAYS
from tests.deploy.tools import REPO, explain, load_template, require_tool, run

SKIP_ANNOTATION: Final = re.compile(r"^checkov\.io/skip\d+$")
SKIP_VALUE: Final = re.compile(r"^CKV2?_[A-Z0-9_]+=\S.{20,}", re.DOTALL)


def run_checkov(*args: str) -> subprocess.CompletedProcess[str]:
    require_tool("kubectl")  # without it the kustomize framework skips silently
    tool = require_tool("checkov")
    return run([tool, "--skip-download", "--compact", "--quiet", *args], timeout_s=180)


def checkov(*args: str) -> str:
    result = run_checkov(*args)
    assert result.returncode == 0, explain(result)
    return result.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes(overlay: str) -> None:
    out = checkov("--directory", f"deploy/k8s/overlays/{overlay}", "--framework", "kustomize")
    # A framework that found nothing to scan prints no results: make sure it ran.
    assert "kustomize scan results" in out, out


def test_aws_template_and_secrets_pass() -> None:
    out = checkov("--directory", "deploy", "--framework", "cloudformation", "secrets")
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


def test_a_failing_check_fails_the_run(tmp_path: Path) -> None:
    k8s = tmp_path / "k8s"
    shutil.copytree(REPO / "deploy" / "k8s", k8s)
    patches = k8s / "overlays" / "dev" / "patches.yaml"
    host_network = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "worker"},
        "spec": {"template": {"spec": {"hostNetwork": True}}},
    }
    patches.write_text(patches.read_text("utf-8") + "---\n" + yaml.safe_dump(host_network))
    overlay = str(k8s / "overlays" / "dev")
    result = run_checkov("--directory", overlay, "--framework", "kustomize")
    assert result.returncode == 1, explain(result)
    assert "CKV_K8S_19" in result.stdout, explain(result)
