"""Building and running the image with podman: no Docker engine, no registry.

Storage and engine settings live in a scratch folder (`PAYSTEP_PODMAN_ROOT`, default
~/.cache/paystep/podman) that is kept between runs, so the base image and the
dependency layer are built once per machine. The base image cannot be pulled here:
`ensure_base_image` makes a stand-in with debootstrap (Debian's Python 3.11, as in
the official image) and gives it the official image's name, which is all the
Dockerfile refers to.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from tests.deploy.tools import REPO, explain, require_tool, run

BASE_IMAGE: Final = "docker.io/library/python:3.11-slim"
DEBIAN_SUITE: Final = "bookworm"
# What the container's processes may open; the sandbox refuses podman's defaults.
CONTAINERS_CONF: Final = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=20000:20000"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def podman_root() -> Path:
    default = Path.home() / ".cache" / "paystep" / "podman"
    return Path(os.environ.get("PAYSTEP_PODMAN_ROOT", default))


def debian_mirror() -> str:
    """The mirror apt uses on this machine (the only one reachable)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        for line in sources.read_text("utf-8").splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    listing = Path("/etc/apt/sources.list")
    if listing.is_file():
        for line in listing.read_text("utf-8").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    pytest.fail("no Debian mirror configured for apt: debootstrap needs one", pytrace=False)


@dataclass(frozen=True)
class Container:
    podman: Podman
    name: str

    def logs(self) -> str:
        result = self.podman("logs", self.name)
        return result.stdout + result.stderr

    def state(self) -> tuple[bool, int]:
        """(running, exit code)."""
        result = self.podman(
            "inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", self.name
        )
        assert result.returncode == 0, explain(result)
        running, code = result.stdout.split()
        return running == "true", int(code)

    def wait_http(self, url: str, timeout_s: float = 60) -> tuple[int, bytes]:
        """Status and body of the first answer from `url`; fails if the container exits."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(url, timeout=3) as response:
                    return int(response.status), response.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                running, code = self.state()
                if not running:
                    pytest.fail(
                        f"container exited with {code} before {url} answered:\n{self.logs()}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail(f"{url} did not answer in {timeout_s} s ({exc}):\n{self.logs()}")
                time.sleep(0.25)

    def stop(self, timeout_s: int = 30) -> int:
        """SIGTERM, as the kubelet sends it; the exit code once the process is gone."""
        result = self.podman("stop", "--time", str(timeout_s), self.name, timeout_s=timeout_s + 30)
        assert result.returncode == 0, explain(result)
        return self.state()[1]


@dataclass(frozen=True)
class Podman:
    executable: str
    root: Path

    @classmethod
    def create(cls) -> Podman:
        for tool in ("podman", "runc"):
            require_tool(tool)
        root = podman_root()
        root.mkdir(parents=True, exist_ok=True)
        (root / "containers.conf").write_text(CONTAINERS_CONF, "utf-8")
        (root / "storage.conf").write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'runroot = "{root / "run"}"\n'
            f'graphroot = "{root / "graph"}"\n',
            "utf-8",
        )
        return cls(require_tool("podman"), root)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONTAINERS_CONF": str(self.root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf"),
        }

    def __call__(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return run([self.executable, *args], env=self.env, timeout_s=timeout_s)

    def ensure_base_image(self) -> None:
        if self("image", "exists", BASE_IMAGE).returncode == 0:
            return
        debootstrap = require_tool("debootstrap")
        rootfs = self.root / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        try:
            result = run(
                [
                    debootstrap,
                    "--variant=minbase",
                    "--include=python3,python3-venv,ca-certificates",
                    DEBIAN_SUITE,
                    str(rootfs),
                    debian_mirror(),
                ],
                timeout_s=900,
            )
            assert result.returncode == 0, explain(result)
            (rootfs / "usr/bin/python").symlink_to("python3")
            # The builder stage's pip reaches the package index through this machine's
            # proxy, whose CA only the host trusts.
            for cert in Path("/usr/local/share/ca-certificates").glob("*.crt"):
                shutil.copy(cert, rootfs / "usr/local/share/ca-certificates" / cert.name)
            result = run(["chroot", str(rootfs), "update-ca-certificates"])
            assert result.returncode == 0, explain(result)
            with subprocess.Popen(
                ["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
            ) as tar:
                imported = subprocess.run(
                    [self.executable, "import", "--change", 'CMD ["/bin/bash"]', "-", BASE_IMAGE],
                    stdin=tar.stdout,
                    env=self.env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=False,
                )
            assert imported.returncode == 0, explain(imported)
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)

    def build(self, tag: str, context: Path = REPO) -> None:
        # Docker format: the OCI image config has no HEALTHCHECK.
        result = self(
            "build",
            "--format",
            "docker",
            "--pull=never",
            "--tag",
            tag,
            "--file",
            str(context / "Dockerfile"),
            str(context),
            timeout_s=900,
        )
        assert result.returncode == 0, explain(result, tail_chars=12_000)
        # Old builds pile up ~100 MB each; a day's worth stays as the layer cache.
        self("image", "prune", "--force", "--filter", "until=24h")

    @contextlib.contextmanager
    def container(
        self,
        image: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        publish: Mapping[int, int] | None = None,
        host_network: bool = False,
    ) -> Iterator[Container]:
        """Run like Kubernetes does (deploy/k8s): read-only root, /tmp the only
        writable path, no capabilities, no privilege escalation."""
        name = f"paystep-test-{uuid.uuid4().hex[:8]}"
        argv = [
            "run",
            "--detach",
            "--name",
            name,
            "--read-only",
            "--tmpfs",
            "/tmp:rw,size=32m,mode=1777",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            # No systemd here to run the timer; tests run the healthcheck themselves.
            "--health-interval",
            "disable",
        ]
        if host_network:
            argv += ["--network", "host"]
        for host_port, container_port in (publish or {}).items():
            argv += ["--publish", f"127.0.0.1:{host_port}:{container_port}"]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        result = self(*argv, image, *args)
        assert result.returncode == 0, explain(result)
        try:
            yield Container(self, name)
        finally:
            self("rm", "--force", "--time", "5", name)
