"""The sans-IO unit tests pass on the compiled hot path, not only on its source.

setup.py compiles gateway.build.HOT_MODULES with Cython. Compiled code is the
same source, but a compiler can still differ (integer and exception edge
cases), so the unit tests of those modules run again in a child pytest that
imports the installed package: from a copy of tests/, without the checkout on
its path. So do the tests of their callers on the packet path, the bus and the
RTP-MIDI door, which run as Python: a compiled class refuses an attribute its
.pxd does not name, whichever module sets it.
"""

import os
import shutil
import subprocess

from tests.conftest import REPO, environ_without_checkout, installed_gateway_python

UNIT_TESTS = [
    # gateway.build.CODEC_MODULES
    "tests/test_midi.py",
    "tests/rtpmidi/test_payload.py",
    "tests/rtpmidi/test_journal.py",
    "tests/rtpmidi/test_journal_wireshark.py",
    "tests/rtpmidi/test_stream.py",
    "tests/rtpmidi/test_media.py",
    # Their callers on the packet path.
    "tests/bus/test_contract.py",
    "tests/rtpmidi/test_door.py",
    "tests/doors/test_rtpmidi_against_bus.py",
    "tests/sip/test_server.py",
    "tests/doors/test_sip_against_bus.py",
]


def test_unit_tests_of_the_hot_modules_pass_compiled(tmp_path):
    python = installed_gateway_python()
    shutil.copytree(os.path.join(REPO, "tests"), tmp_path / "tests",
                    ignore=shutil.ignore_patterns("node_modules", "__pycache__", "peers"))
    shutil.copy(os.path.join(REPO, "setup.cfg"), tmp_path)   # the pytest configuration
    # The child proves which gateway it tested before it runs the tests.
    script = ("import sys, pytest, gateway.build as b;"
              "assert b.compiled_modules() == list(b.HOT_MODULES), b.compiled_modules();"
              "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider'] + sys.argv[1:]))")
    result = subprocess.run([python, "-c", script] + UNIT_TESTS, cwd=tmp_path,
                            env=environ_without_checkout(os.environ),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary
