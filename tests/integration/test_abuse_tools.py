"""The abuse tools of bench/ in their --quick form, with the pass rules of issue 16.

Each tool starts its own real ``twistd netgateway`` (the checkout's sources)
and exits 0 only when its rules hold: the gateway alive with no Traceback
in its log, and for the churn soak 0 stuck notes and 0 leaked members, for
the flood no legit message lost, for the fuzzer every datagram answered or
counted. The three together take about 75 s on a shared two-core machine.
"""

import os
import subprocess
import sys

from tests.conftest import REPO


def run_tool(name, timeout):
    """Run bench/``name`` --quick on the sources; its output, after checking it passed."""
    result = subprocess.run([sys.executable, os.path.join(REPO, "bench", name), "--quick",
                             "--source"], capture_output=True, text=True, timeout=timeout,
                            cwd=REPO)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("PASS")
    return result.stdout


def test_churn_soak_leaves_no_stuck_note_and_no_member():
    output = run_tool("churn_soak.py", 120)
    assert "stuck notes: 0; leaked members: 0" in output


def test_flood_loses_no_legit_message():
    output = run_tool("flood.py", 150)
    phases = [line.split()[0] for line in output.splitlines()[2:-1]]
    assert phases == ["quiet", "frames", "json", "guesses", "oscgroups", "applemidi", "sip"]


def test_wire_fuzz_accounts_for_every_datagram():
    output = run_tool("wire_fuzz.py", 120)
    # A fuzzed port's row ends in its port, the datagrams sent and six outcome counts.
    rows = [line.split()[-8:] for line in output.splitlines()]
    fuzzed = [row for row in rows if len(row) == 8 and all(field.isdigit() for field in row)]
    assert len(fuzzed) >= 8          # every UDP port the gateway listens on without a call
    assert all(row[1] == "100" and row[-1] == "0" for row in fuzzed), fuzzed
