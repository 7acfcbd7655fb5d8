"""A real, non-editable install into a fresh virtualenv: the twistd dropin, package data, and
the compiled hot path (or pure Python when no compiler works)."""

import os
import subprocess
import venv

import pytest

from gateway.build import HOT_MODULES
from tests.conftest import REPO, build_report, need_external


def install_from_clean_clone(root, environ=None):
    """A fresh virtualenv under ``root`` with netgateway pip-installed from a clean clone."""
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    # Build from a copy so the checkout's build/ and egg-info never leak in.
    subprocess.run(["git", "clone", "-q", "--no-local", REPO, str(root / "src")], check=True)
    subprocess.run(["git", "-C", REPO, "diff", "HEAD", "--binary"],
                   stdout=open(root / "wip.patch", "wb"), check=True)
    if os.path.getsize(root / "wip.patch"):
        subprocess.run(["git", "-C", str(root / "src"), "apply", str(root / "wip.patch")],
                       check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", str(root / "src")], check=True,
                   timeout=900, env=environ)
    subprocess.run([python, "-m", "gateway.plugincache"], check=True, cwd=str(root))
    return env_dir


def compiled_modules(env_dir):
    return build_report(str(env_dir / "bin" / "python"))[0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    return install_from_clean_clone(tmp_path_factory.mktemp("install"))


def test_twistd_lists_netgateway_after_install(installed):
    twistd = str(installed / "bin" / "twistd")
    result = subprocess.run([twistd, "--help"], capture_output=True, text=True, cwd="/",
                            env={"PATH": os.environ["PATH"]}, timeout=60)
    assert result.returncode == 0
    assert "netgateway" in result.stdout


def test_installed_package_carries_its_data(installed):
    python = str(installed / "bin" / "python")
    script = ("import os, gateway.tap, gateway.web.site as s;"
              "print(os.path.exists(gateway.tap.DEFAULT_CONFIG),"
              " os.path.exists(os.path.join(s.STATIC_DIR, 'index.html')))")
    result = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd="/")
    assert result.stdout.split() == ["True", "True"]


def test_plugin_cache_was_regenerated(installed):
    plugins = next(installed.glob("lib/python*/site-packages/twisted/plugins"))
    assert (plugins / "netgateway_plugin.py").exists()
    cache = plugins / "dropin.cache"
    assert cache.exists()
    assert cache.stat().st_mtime >= (plugins / "netgateway_plugin.py").stat().st_mtime


def test_the_install_compiles_the_hot_path(installed):
    need_external(compiled_modules(installed) == list(HOT_MODULES),
                  "the hot path did not compile (a C compiler and the Python headers are needed)")


def test_without_a_compiler_the_package_installs_as_pure_python(tmp_path):
    # CC=false makes every compile fail: the extensions are optional, the install is not.
    env_dir = install_from_clean_clone(tmp_path, dict(os.environ, CC="false"))
    assert compiled_modules(env_dir) == []
    twistd = str(env_dir / "bin" / "twistd")
    result = subprocess.run([twistd, "netgateway", "--help"], capture_output=True, text=True,
                            cwd="/", env={"PATH": os.environ["PATH"]}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout
