"""Which of the hot-path modules this installation runs compiled.

setup.py compiles :data:`HOT_MODULES` with Cython when it can; each one that
did not compile (no C compiler, another interpreter) runs as the same Python
source. ``/status`` reports the result, so a benchmark or an operator can
tell which build they are looking at.

Kept free of imports from the rest of the package: setup.py reads this file
before the package is installed.
"""

import importlib.machinery
import importlib.util

HOT_MODULES = (
    # Only the sans-IO codecs every forwarded RTP-MIDI packet runs through, and
    # the MIDI helpers they and the bus share: compiling the bus, the door and
    # the AppleMIDI session core too was not 15% faster (README, "Speed").
    "gateway.midi",
    "gateway.protocols.rtpmidi.payload",
    "gateway.protocols.rtpmidi.journal_wire",
    "gateway.protocols.rtpmidi.journal_state",
    "gateway.protocols.rtpmidi.journal_sender",
    "gateway.protocols.rtpmidi.journal_receiver",
    "gateway.protocols.rtpmidi.stream",
    "gateway.protocols.rtpmidi.media",
)


def is_compiled(module_name):
    """Whether ``module_name`` is imported from an extension module rather than source."""
    spec = importlib.util.find_spec(module_name)
    return spec is not None and spec.origin is not None and spec.origin.endswith(
        tuple(importlib.machinery.EXTENSION_SUFFIXES))


def compiled_modules():
    """The hot-path modules that run compiled here."""
    return [name for name in HOT_MODULES if is_compiled(name)]
