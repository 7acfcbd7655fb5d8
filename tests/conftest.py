"""Shared fixtures: a real ``twistd -n netgateway`` process on free ports."""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from hypothesis import settings

# Property tests check behaviour, not speed (speed lives in bench/): no
# per-example deadline, which a loaded 2-core CI machine would trip at random.
settings.register_profile("netgateway", deadline=None)
settings.load_profile("netgateway")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ON_CI = os.environ.get("CI", "").lower() == "true"

# Tests read /status in full: their gateways know this admin token and
# GatewayProcess.status() sends it (without it /status is a public summary).
ADMIN_TOKEN = "tests-read-full-status"

BASE_CONFIG = {
    "sessions": [
        {"name": "demo", "passphrase": "play along with netgateway demo",
         "allow_addresses": ["127.0.0.0/8"], "public": True},
        {"name": "mirror", "passphrase": "mirror mirror on the wall",
         "mirror": {"interval": 7, "delay": 0.0}, "public": True},
    ],
    "web": {"host": "127.0.0.1"},
    "websocket": {"ping_interval": 1.0},
    "logging": {"level": "debug"},
    "status": {"admin_token": ADMIN_TOKEN},
}


def need_external(available, reason):
    """Skip when a real external tool is missing, but fail under CI=true."""
    if available:
        return
    if ON_CI:
        pytest.fail(f"{reason} (CI=true: the test command must install it)")
    pytest.skip(reason)


def free_port(kind=socket.SOCK_STREAM, even=False):
    """A port the OS says is free now (for UDP pairs: an even one with port+1 free)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind(("127.0.0.1", 0))
            number = probe.getsockname()[1]
        if not even:
            return number
        if number % 2 == 0 and number < 65535:
            try:
                with socket.socket(socket.AF_INET, kind) as first, \
                        socket.socket(socket.AF_INET, kind) as second:
                    first.bind(("127.0.0.1", number))
                    second.bind(("127.0.0.1", number + 1))
            except OSError:
                continue
            return number
    raise RuntimeError("no free port found")


def twistd_command():
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.path.exists(twistd):
        twistd = shutil.which("twistd")
    return [twistd, "-n", "--pidfile=", "netgateway"]


def merge(base, override):
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_report(python):
    """``(compiled, hot_modules, site-packages)`` of the netgateway installed for ``python``.

    Raises RuntimeError when ``python`` has none.
    """
    script = ("import json, os, gateway.build as b;"
              "print(json.dumps([b.compiled_modules(), list(b.HOT_MODULES),"
              " os.path.dirname(os.path.dirname(b.__file__))]))")
    result = subprocess.run([python, "-c", script], capture_output=True, text=True,
                            cwd="/", env=environ_without_checkout(os.environ), timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"netgateway is not installed for {python}:"
                           f" run scripts/setup-python test\n{result.stderr}")
    return json.loads(result.stdout)


def installed_build():
    """``(compiled, hot_modules)`` of the package scripts/setup-python installed.

    Raises RuntimeError when it is missing or its sources differ from the
    checkout's, so that nothing measures or tests a stale build.
    """
    compiled, hot_modules, site = build_report(sys.executable)
    for name in hot_modules:
        relative = name.replace(".", os.sep) + ".py"
        with open(os.path.join(REPO, relative), "rb") as ours, \
                open(os.path.join(site, relative), "rb") as installed:
            if ours.read() != installed.read():
                raise RuntimeError(f"the installed {relative} differs from the checkout's:"
                                   " run scripts/setup-python test")
    return compiled, hot_modules


def installed_gateway_python():
    """The interpreter whose installed build has every hot module compiled and up to date.

    Fails under CI=true, and skips elsewhere, when a module runs uncompiled.
    """
    try:
        compiled, hot_modules = installed_build()
    except RuntimeError as error:
        pytest.fail(str(error))
    need_external(compiled == hot_modules,
                  f"only {len(compiled)} of the {len(hot_modules)} hot modules are compiled in"
                  " the installed build (installing needs a C compiler and the Python headers)")
    return sys.executable


def environ_without_checkout(environ):
    """``environ`` without PYTHONPATH, so that ``gateway`` comes from site-packages."""
    return {key: value for key, value in environ.items() if key != "PYTHONPATH"}


class GatewayProcess:
    """A running gateway; ``web_url``/``ws_url`` point at it.

    It runs the checkout's sources, or with ``installed`` the package
    scripts/setup-python installed (compiled where it could be).
    """

    def __init__(self, config, workdir, installed=False, ca=None):
        self.config = config
        self.workdir = workdir
        self.installed = installed
        self.config_path = os.path.join(workdir, "config.yaml")
        with open(self.config_path, "w") as stream:
            yaml.safe_dump(config, stream)
        self.log_path = os.path.join(workdir, "twistd.log")
        tls = config["web"].get("tls")
        secure = "s" if tls else ""
        self.web_url = f"http{secure}://127.0.0.1:{config['web']['port']}"
        self.ws_url = f"ws{secure}://127.0.0.1:{config['web']['port']}/ws"
        # A self-signed certificate is its own CA; a chain's root is given as ``ca``.
        self.ssl_context = ssl.create_default_context(cafile=ca or tls["certificate"]) \
            if tls else None
        self.process = None

    def start(self, timeout=20.0):
        if self.installed:
            env = environ_without_checkout(os.environ)
        else:
            env = dict(os.environ,
                       PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command(), cwd=self.workdir, env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"twistd exited with {self.process.returncode}:\n{self.log}")
            try:
                self.status()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"twistd did not answer /status within {timeout}s:\n{self.log}")

    def command(self):
        return twistd_command() + ["-c", self.config_path]

    def status(self):
        """``/status``: in full when the config has an admin token, else the public summary."""
        token = self.config.get("status", {}).get("admin_token")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(self.web_url + "/status", headers=headers)
        with urllib.request.urlopen(request, timeout=2, context=self.ssl_context) as response:
            return json.loads(response.read())

    def wait_for_status(self, predicate, timeout=5.0):
        """The first ``/status`` that ``predicate`` accepts; fails with the last one after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                pytest.fail(f"/status never met the condition in {timeout}s; last: {status}")
            time.sleep(0.05)

    def get(self, path):
        with urllib.request.urlopen(self.web_url + path, timeout=5,
                                    context=self.ssl_context) as response:
            return response.status, response.headers, response.read()

    @property
    def log(self):
        with open(self.log_path) as stream:
            return stream.read()

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._log.close()


@pytest.fixture
def gateway_factory(tmp_path):
    """Call with a config override dict; returns a started GatewayProcess.

    ``installed=True`` runs the installed build (see installed_gateway_python).
    """
    started = []

    def start(override=None, installed=False, ca=None):
        config = merge(BASE_CONFIG, {"web": {"port": free_port()}})
        config = merge(config, override or {})
        workdir = tmp_path / f"gateway{len(started)}"
        workdir.mkdir()
        if installed:
            installed_gateway_python()
        process = GatewayProcess(config, str(workdir), installed, ca)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def gateway(gateway_factory):
    """A gateway on the base config: sessions 'demo' and 'mirror', WebSocket on."""
    return gateway_factory()
