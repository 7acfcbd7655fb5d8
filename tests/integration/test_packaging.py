"""A real, non-editable install into a fresh virtualenv: the twistd dropin, package data, and
the compiled hot path (or pure Python when no compiler works)."""

import os
import subprocess
import sys
import venv

import pytest

from gateway.build import COMPILABLE, HOT_MODULES
from tests.conftest import REPO, build_report, need_external


def clean_clone(root):
    """``root``/src: a clone of the checkout with its uncommitted changes, and no build/."""
    # Build from a copy so the checkout's build/ and egg-info never leak in.
    subprocess.run(["git", "clone", "-q", "--no-local", REPO, str(root / "src")], check=True)
    subprocess.run(["git", "-C", REPO, "diff", "HEAD", "--binary"],
                   stdout=open(root / "wip.patch", "wb"), check=True)
    if os.path.getsize(root / "wip.patch"):
        subprocess.run(["git", "-C", str(root / "src"), "apply", str(root / "wip.patch")],
                       check=True)
    return root / "src"


def install_from_clean_clone(root, environ=None):
    """A fresh virtualenv under ``root`` with netgateway pip-installed from a clean clone."""
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    source = clean_clone(root)
    subprocess.run([python, "-m", "pip", "install", "-q", str(source)], check=True,
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


# The jam page's instruments: the page's module, the vendored synthesizer, its licences and
# the General MIDI bank (gateway/web/static/vendor/README.md).
INSTRUMENT_FILES = ["instruments.js"] + [f"vendor/{name}" for name in (
    "spessasynth_lib.js", "spessasynth_core.js", "stb-vorbis.js", "spessasynth_processor.min.js",
    "spessasynth_lib.LICENSE", "spessasynth_core.LICENSE", "stb-vorbis.LICENSE",
    "sf_GMbank.sf2", "README.md")]


def test_installed_package_carries_its_data(installed):
    python = str(installed / "bin" / "python")
    script = ("import os, gateway.tap, gateway.web.site as s;"
              "print(os.path.exists(gateway.tap.DEFAULT_CONFIG),"
              " os.path.exists(os.path.join(s.STATIC_DIR, 'index.html')),"
              " os.path.exists(os.path.join(s.STATIC_DIR, 'vendor', 'mpegts.js')));"
              f"print(*[os.path.getsize(os.path.join(s.STATIC_DIR, f)) for f in {INSTRUMENT_FILES!r}])")
    result = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd="/")
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["True", "True", "True"], result.stderr
    sizes = dict(zip(INSTRUMENT_FILES, map(int, lines[1].split())))
    assert sizes["vendor/sf_GMbank.sf2"] == 4191916, sizes
    assert all(size > 0 for size in sizes.values()), sizes


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


def test_a_build_ships_only_the_extensions_it_compiled(installed, tmp_path):
    # pip builds in the source tree, whose build/lib still holds every module
    # the fixture compiled; a build of another set must not ship them.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    source = installed.parent / "src"
    environ = dict(os.environ, NETGATEWAY_COMPILE=HOT_MODULES[0])
    subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                    str(source)], check=True, timeout=900, env=environ)
    compiled = compiled_modules(env_dir)
    need_external(compiled, "the hot path did not compile (a C compiler and the Python headers"
                            " are needed)")
    assert compiled == [HOT_MODULES[0]]
    leftovers = [path.name for path in env_dir.glob("lib/python*/site-packages/gateway/**/*.so")]
    assert len(leftovers) == 1, leftovers


def run_setup_python(source, env_dir, environ):
    environ = dict(environ, NETGATEWAY_VENV=str(env_dir), PYTHON=sys.executable)
    for name in ("NETGATEWAY_PURE_PYTHON", "NETGATEWAY_COMPILE", "PYTHONPATH"):
        environ.pop(name, None)
    result = subprocess.run([str(source / "scripts" / "setup-python")], capture_output=True,
                            text=True, env=environ, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if line.startswith("setup-python: ")]


def test_setup_python_says_what_it_does_and_installs_pure_python_without_a_compiler(tmp_path):
    source = clean_clone(tmp_path)
    env_dir = tmp_path / "venv"
    steps = run_setup_python(source, env_dir, dict(os.environ, CC="false"))
    assert len(steps) == 5, steps
    assert steps[0].startswith("setup-python: creating the virtualenv")
    assert steps[1].startswith("setup-python: installing dependencies")
    assert f"compiling {len(HOT_MODULES)} hot modules with Cython" in steps[2]
    assert "NETGATEWAY_PURE_PYTHON=1 skips this" in steps[2]
    assert steps[3] == "setup-python: writing the Twisted plugin cache"
    assert steps[4].startswith(f"setup-python: done; hot path compiled: 0 of {len(HOT_MODULES)}")
    assert compiled_modules(env_dir) == []
    result = subprocess.run([str(env_dir / "bin" / "twistd"), "netgateway", "--help"],
                            capture_output=True, text=True, cwd="/",
                            env={"PATH": os.environ["PATH"]}, timeout=60)
    assert result.returncode == 0, result.stderr
    # The same sources and settings again: kept, not rebuilt.
    assert run_setup_python(source, env_dir, dict(os.environ, CC="false")) == []


def test_every_compile_set_names_compilable_modules():
    from gateway import build
    assert build.compile_set(None) == HOT_MODULES
    assert build.compile_set("all") == COMPILABLE
    assert set(HOT_MODULES) <= set(COMPILABLE)
    assert build.compile_set("codecs," + COMPILABLE[-1]) == build.CODEC_MODULES + COMPILABLE[-1:]
    with pytest.raises(ValueError):
        build.compile_set("gateway.web.site")
