"""The Dockerfile, built for real without a registry: a Debian base made by `debootstrap`
from Debian's packages, the image built by `buildah` on it, then, in a container of it as
its unprivileged user, `rrmm db upgrade` and `/readyz` of `rrmm api`.

Opt-in (`RRMM_TEST_IMAGE=1`, or `make test-image`): on the 2-core CI machine the base takes
about 2 min 15 s and the build about 2 min 20 s, which `make test` does not spend on every
run. No Docker engine runs on these machines, and podman's runc cannot start a container
here (it is refused setting rlimits), so `buildah run` (chroot isolation) runs the image
and the read-only root filesystem is checked as what the user may write, not with
`--read-only`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.netutil import free_port

ROOT = Path(__file__).parents[2]
TOOLS = ("buildah", "debootstrap")
missing = [tool for tool in TOOLS if shutil.which(tool) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(
        os.environ.get("RRMM_TEST_IMAGE") != "1",
        reason="building the image takes ~5 min of CI (debootstrap base + build): "
        "RRMM_TEST_IMAGE=1 or `make test-image` runs it",
    ),
    pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}"),
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and buildah need root here"),
]
# What the machine's pip needs to reach its package index, lent to the build's RUN steps
# (read-only) when present: the Dockerfile itself stays the same as anywhere else.
PIP_MOUNTS = (
    "/etc/pip.conf",
    "/etc/xdg/pip",
    "/opt/wheels",
    "/opt/pypi",
    "/opt/pypi-more",
    "/etc/ssl/certs/ca-certificates.crt",
)


class Buildah:
    """buildah with a storage of its own, in the test's temporary directory."""

    def __init__(self, directory: Path) -> None:
        self.options = [
            "--root",
            str(directory / "storage"),
            "--runroot",
            str(directory / "run"),
            "--storage-driver",
            "vfs",
        ]

    def argv(self, *args: str) -> list[str]:
        return ["buildah", *self.options, *args]

    def __call__(self, *args: str, timeout: float = 600) -> str:
        result = subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, check=False
        )
        assert result.returncode == 0, f"buildah {args[0]}: {result.stderr[-3000:]}"
        return result.stdout.strip()


@pytest.fixture
def buildah(tmp_path: Path) -> Iterator[Buildah]:
    tool = Buildah(tmp_path)
    try:
        yield tool
    finally:
        subprocess.run(tool.argv("rm", "--all"), capture_output=True, check=False)
        subprocess.run(tool.argv("rmi", "--all", "--force"), capture_output=True, check=False)


def test_the_image_builds_migrates_and_answers_readyz_as_an_unprivileged_user(
    buildah: Buildah, tmp_path: Path, settings_broker: str
) -> None:
    rootfs = tmp_path / "rootfs"
    base = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,python-is-python3,ca-certificates",
            "bookworm",
            str(rootfs),
            "http://deb.debian.org/debian",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert base.returncode == 0, base.stderr[-3000:]
    scratch = buildah("from", "scratch")
    buildah("copy", scratch, str(rootfs), "/")
    buildah("commit", "-q", scratch, "localhost/rrmm-base:bookworm")

    volumes = [
        arg
        for path in PIP_MOUNTS
        if os.path.exists(path)
        for arg in ("--volume", f"{path}:{path}:ro")
    ]
    buildah(
        "bud",
        "--isolation",
        "chroot",
        "--layers=false",
        "--build-arg",
        "PYTHON_IMAGE=localhost/rrmm-base:bookworm",
        *volumes,
        "-t",
        "localhost/rrmm:test",
        str(ROOT),
        timeout=1200,
    )
    container = buildah("from", "localhost/rrmm:test")
    env = [
        "-e",
        f"RRMM_SECRET_KEY={secrets.token_hex(32)}",
        "-e",
        "RRMM_DATABASE_URL=sqlite:////var/lib/rrmm/rrmm.db",
        "-e",
        f"RRMM_BROKER_URL={settings_broker}",
    ]
    run = ["run", "--isolation", "chroot", "--user", "rrmm:rrmm", *env, container, "--"]

    assert buildah(*run, "id", "-un") == "rrmm"
    assert (
        "database at head"
        in subprocess.run(
            buildah.argv(*run, "rrmm", "db", "upgrade"),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stderr
    )
    # Read-only root filesystem friendly: the service user writes only /var/lib/rrmm.
    writes = buildah(
        *run,
        "sh",
        "-c",
        "for d in / /app /opt/venv /etc /var/lib/rrmm; do touch $d/.w 2>/dev/null && echo $d; done",
    )
    assert writes.split() == ["/var/lib/rrmm"]

    port = free_port()
    api = subprocess.Popen(
        buildah.argv(*run, "rrmm", "api", "--host", "127.0.0.1", "--port", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert api.poll() is None, api.stderr.read() if api.stderr else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, "the API in the image did not answer"
                time.sleep(0.5)
        assert '"database":"ok"' in body
        assert '"broker":"ok"' in body
    finally:
        os.killpg(api.pid, signal.SIGTERM)
        try:
            api.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(api.pid, signal.SIGKILL)
            api.wait(10)
        if api.stderr is not None:
            api.stderr.close()


@pytest.fixture
def settings_broker(broker_url: str) -> str:
    """A broker the container can reach: the test's Redis over TCP (a socket file of the
    bundled redis-server is outside the container's root)."""
    if broker_url.startswith("redis+socket://"):
        pytest.skip("the image test needs a TCP broker: set RRMM_TEST_BROKER_URL")
    return broker_url
