"""The wheel installs one import name, ``wsupload``, and works beside an application's own ``config`` and ``tasks``.

A Django or Flask backend very likely has packages called ``config`` or
``tasks``. The wheel is built from this checkout and installed into a fresh
venv (its dependencies reached through a path entry, offline), next to an
application with both; the application enqueues through ``wsupload.Producer``
and waits for a real worker to finish the job. The wheel carries every Lua script
(``tasks/store/lua/*.lua``), and the installed package reads them from itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import uuid
import zipfile
from pathlib import Path

import pytest

from tests.integration.conftest import producer_env
from wsupload.tasks.store import lua
from wsupload.worker.dev.local_services import WorkerProcess
from wsupload.worker.dev.samples import png_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]

APP = """
import json, os, sys
import config, tasks                       # the application's own packages
from wsupload import Producer, Settings    # the façade

producer = Producer(Settings.from_env())
jobs = producer.enqueue([sys.argv[1]])
outcome = producer.wait([job.job_id for job in jobs], timeout=60)
import wsupload
print(json.dumps({
    "config": config.OWNER, "tasks": tasks.OWNER, "wsupload": wsupload.__file__, "version": wsupload.__version__,
    "status": [doc["status"] for doc in outcome.docs],
}))
"""

LOAD_SCRIPTS = """
import json, sys
from importlib import resources
from wsupload.tasks.store import lua
print(json.dumps({"from": str(resources.files(lua)), "scripts": {name: lua.load(name) for name in sys.argv[1:]}}))
"""


def build_wheel(out: Path) -> Path:
    # From a copy of the checkout without its build/ directory: setuptools reuses build/lib,
    # so a module deleted since the last local build would still ship in the wheel.
    source = out.parent / "source"
    junk = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "node_modules", "*cache*")
    shutil.copytree(ROOT, source, symlinks=True, ignore=junk)
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(out),
        ".",
    ]
    subprocess.run(command, cwd=source, check=True, capture_output=True)
    (wheel,) = out.glob("wsupload-*.whl")
    return wheel


def fresh_venv(where: Path, wheel: Path) -> Path:
    """A venv with only the wheel installed; dependencies come from this venv's site-packages, by path."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    target = Path(purelib)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)]
    subprocess.run(pip, check=True, capture_output=True)
    # A plain path line: this venv's packages become importable, but not its .pth files,
    # so the checkout's editable install of wsupload stays out.
    ours = sysconfig.get_paths()["purelib"]
    (target / "deps.pth").write_text(ours + "\n")
    return python


def test_the_wheel_works_beside_an_application_named_config_and_tasks(
    worker: WorkerProcess, worker_env: dict[str, str], media_root: Path, tmp_path: Path
) -> None:
    wheel = build_wheel(tmp_path / "dist")
    scripts = sorted(path.stem for path in (ROOT / "tasks" / "store" / "lua").glob("*.lua"))
    with zipfile.ZipFile(wheel) as built:
        files = built.namelist()
        (entry_points,) = [name for name in files if name.endswith(".dist-info/entry_points.txt")]
        registered = built.read(entry_points).decode()
    # What a Celery client's result_backend="wsupload+redis://…" is found by.
    assert "[celery.result_backends]\nwsupload = wsupload.celery_backend:WsuploadBackend" in registered
    assert "wsupload/worker/dev/sandbox.py" in files  # `wsupload sandbox` and `demo` ship their tools
    assert "wsupload/worker/dev/rabbit.py" not in files  # a test fixture: tests/integration/rabbit.py
    shipped = sorted(Path(name).stem for name in files if name.startswith("wsupload/tasks/store/lua/"))
    assert scripts  # a glob that finds nothing would prove nothing
    assert [name for name in shipped if name != "__init__"] == scripts
    python = fresh_venv(tmp_path / "venv", wheel)
    loaded = subprocess.run(
        [str(python), "-c", LOAD_SCRIPTS, *scripts], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    installed = json.loads(loaded.stdout)
    assert installed["from"].startswith(str(tmp_path / "venv"))  # the wheel's files, not the checkout's
    assert installed["scripts"] == {name: lua.load(name) for name in scripts}  # --!include lines expanded alike
    app = tmp_path / "app"
    for name in ("config", "tasks"):
        (app / name).mkdir(parents=True)
        (app / name / "__init__.py").write_text(f'OWNER = "the application\'s {name}"\n')
    (app / "main.py").write_text(textwrap.dedent(APP))
    png = media_root / f"wheel-{uuid.uuid4().hex[:6]}.png"
    png.write_bytes(png_bytes())

    # cwd=app: the application's packages come first on sys.path, as in a real project.
    done = subprocess.run(
        [str(python), "main.py", str(png)],
        cwd=app,
        env=producer_env(worker_env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout)
    assert seen["config"] == "the application's config"
    assert seen["tasks"] == "the application's tasks"
    assert seen["wsupload"].startswith(str(tmp_path / "venv"))  # the wheel's copy, not the checkout
    assert seen["status"] == ["succeeded"]
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert seen["version"] == declared  # wsupload.__version__, from the installed wheel's metadata
