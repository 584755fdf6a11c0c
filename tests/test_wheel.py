"""`pip install` from the repository works: build the wheel offline, install it in a fresh venv.

The wheel is built from a copy of the sources (so no build/ or *.egg-info lands in the
checkout) with ``pip wheel --no-deps --no-build-isolation`` (offline: it uses this
environment's setuptools). It is installed with ``--no-deps`` into a new venv, which then
imports the package *from the wheel*, not from the checkout, and finds the weights it ships.

The new venv must still see torch, numpy, ... without downloading them. ``python -m venv
--system-site-packages`` would only expose the base interpreter's packages, not this
environment's, so the venv gets a ``.pth`` line naming this environment's site-packages
instead: a plain path line, so this environment's own ``.pth`` files (among them the editable
install of the checkout) are *not* run, and the venv's own site-packages come first.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO


def _run(cmd, cwd, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    env["PIP_NO_INDEX"] = "1"  # offline: nothing may come from a package index
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools installed")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "transcam_nb", src / "transcam_nb",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), "."],
         cwd=src)
    wheels = list((tmp / "dist").glob("transcam_nb-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_ships_the_package_and_its_weights(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "transcam_nb/__init__.py" in names
    assert "transcam_nb/weights/tiny_pretrained.pt" in names
    assert "transcam_nb/weights/tiny_pretrained.json" in names
    assert "transcam_nb/weights/tiny_classifier_grouped.pt" in names  # the book's contrast arm, finished
    assert "transcam_nb/weights/tiny_classifier_grouped.json" in names
    assert not [n for n in names if n.startswith(("tests/", "notebooks/"))]
    entry = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert entry and "transcam-nb = transcam_nb.cli:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()


def test_wheel_installs_into_a_fresh_venv_and_finds_its_weights(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    # this environment's packages (torch, numpy, ...) behind the venv's own, see the module doc
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    Path(purelib, "outer_env.pth").write_text("\n".join(sorted(ours)) + "\n")
    _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    probe = (
        "import json, transcam_nb, transcam_nb.weights as w\n"
        "p = w.resolve_checkpoint('package:tiny_pretrained.pt')\n"
        "print(json.dumps({'module': transcam_nb.__file__, 'weights': str(p), 'is_file': p.is_file(),\n"
        "                  'manifest': sorted(w.read_manifest('tiny_pretrained.json'))}))\n"
    )
    out = _run([str(py), "-c", probe], cwd=tmp_path)
    got = json.loads(out.strip().splitlines()[-1])
    assert got["module"].startswith(purelib), f"imported from {got['module']}, not from the installed wheel"
    assert got["weights"].startswith(purelib) and got["is_file"], got
    assert got["manifest"], "the shipped weights' manifest is empty"
    # the console script is installed too
    assert (venv / "bin" / "transcam-nb").is_file()
