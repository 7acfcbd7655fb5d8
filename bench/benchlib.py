"""What the benchmarks share: CPU pinning and CPU time of the server under test.

Wall-clock rates and tail latencies move a lot on these shared 2-core
machines; the CPU time a server spends per message is the steadier figure,
so every benchmark prints it next to the rates.
"""

import os
import subprocess


def cpu_seconds(pid):
    """User + system CPU time the process has used (all its threads)."""
    with open(f"/proc/{pid}/stat") as stream:
        fields = stream.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin_to_cpu0(pid):
    """Keep the server on CPU 0 (all threads); generators run on CPU 1."""
    subprocess.run(["taskset", "-a", "-p", "-c", "0", str(pid)], check=True,
                   stdout=subprocess.DEVNULL)


def run_generator_on_cpu1():
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
