"""Fixtures of the deploy checks: the rendered overlays, read once per session."""

from __future__ import annotations

from typing import Any, Final

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from tests.deploy.tools import REPO, explain, require_tool, run

K8S: Final = REPO / "deploy" / "k8s"
OVERLAYS: Final = sorted(path.name for path in (K8S / "overlays").iterdir() if path.is_dir())

Manifest = dict[str, Any]


@pytest.fixture(scope="session")
def kubectl() -> str:
    return require_tool("kubectl")


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, str]:
    """`kubectl kustomize` output of every overlay, by overlay name."""
    out: dict[str, str] = {}
    for overlay in OVERLAYS:
        result = run([kubectl, "kustomize", str(K8S / "overlays" / overlay)])
        assert result.returncode == 0, explain(result)
        out[overlay] = result.stdout
    return out


@pytest.fixture(scope="session")
def manifests(rendered: dict[str, str]) -> dict[str, list[Manifest]]:
    return {
        overlay: [doc for doc in yaml.safe_load_all(text) if doc]
        for overlay, text in rendered.items()
    }


def by_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[Manifest], kind: str, component: str | None = None) -> Manifest:
    found = [
        doc
        for doc in by_kind(docs, kind)
        if component is None
        or doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {kind} {component or ''}, found {len(found)}"
    return found[0]
