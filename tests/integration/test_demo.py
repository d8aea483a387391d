"""The quick start's first command (README.md): `wsupload demo` on a machine with nothing configured."""

import subprocess
import sys

import pytest

from tests.integration.conftest import clean_env

pytestmark = pytest.mark.integration


@pytest.mark.usefixtures("redis_url")  # fails in CI / skips locally without redis-server, like the rest
def test_demo_runs_end_to_end_with_embedded_services() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wsupload.worker.cli", "demo"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Redis: started a private redis-server" in result.stdout
    # 3 files and an s3:// key through the binary endpoint, and one file through the direct flow.
    assert result.stdout.count("bytes at download_url match the source") == 5
    assert "(direct flow: a ticket, then a PUT)" in result.stdout
    assert "s3://wsupload-demo/photos/sunset.png" in result.stdout
    assert "does not look like a .png file" in result.stdout
    assert "Demo passed" in result.stdout
