"""Which of the hot-path modules this installation runs compiled.

setup.py compiles :data:`HOT_MODULES` with Cython when it can; each one that
did not compile (no C compiler, another interpreter) runs as the same Python
source. ``/status`` reports the result, so a benchmark or an operator can
tell which build they are looking at.

``NETGATEWAY_COMPILE`` chooses another set at install time, to measure it
against the default (bench/compare_builds.py): a name of :data:`COMPILE_SETS`
or module names, comma-separated, e.g. ``all`` or
``codecs,gateway.protocols.rtpmidi.session``.

Kept free of imports from the rest of the package: setup.py reads this file
before the package is installed.
"""

import importlib.machinery
import importlib.util

# The sans-IO codecs every forwarded RTP-MIDI packet runs through: bytes in,
# values out, and the MIDI helpers they and the bus share. The default set.
CODEC_MODULES = (
    "gateway.midi",
    "gateway.protocols.rtpmidi.payload",
    "gateway.protocols.rtpmidi.journal_wire",
    "gateway.protocols.rtpmidi.journal_state",
    "gateway.protocols.rtpmidi.journal_sender",
    "gateway.protocols.rtpmidi.journal_receiver",
    "gateway.protocols.rtpmidi.stream",
    "gateway.protocols.rtpmidi.media",
)
# The session bus, and the RTP-MIDI door with its AppleMIDI session core: per
# packet they look up, count and hand on, and the session core's one
# per-packet method is reached through the door. Compiled as well they
# forwarded no more (README, "Speed"); NETGATEWAY_COMPILE=all compiles them,
# now without declarations, to measure that again.
ADAPTER_MODULES = (
    "gateway.bus.local",
    "gateway.protocols.rtpmidi.session",
    "gateway.protocols.rtpmidi.door",
)
COMPILE_SETS = {
    "codecs": CODEC_MODULES,
    "all": CODEC_MODULES + ADAPTER_MODULES,
}
DEFAULT_COMPILE_SET = "codecs"   # "all" was not 15% faster (README, "Speed")
# Every module a build may compile, in a fixed order.
COMPILABLE = COMPILE_SETS["all"]

HOT_MODULES = COMPILE_SETS[DEFAULT_COMPILE_SET]


def compile_set(value):
    """The modules ``NETGATEWAY_COMPILE=value`` compiles, in :data:`COMPILABLE` order.

    Empty or None is :data:`HOT_MODULES`. Raises ValueError for a name that is
    neither a set nor a compilable module.
    """
    if not value:
        return HOT_MODULES
    chosen = set()
    for part in value.split(","):
        part = part.strip()
        names = COMPILE_SETS.get(part, (part,))
        unknown = [name for name in names if name not in COMPILABLE]
        if unknown:
            raise ValueError(f"NETGATEWAY_COMPILE: {part!r} is neither one of"
                             f" {', '.join(COMPILE_SETS)} nor a module of {COMPILABLE}")
        chosen.update(names)
    return tuple(name for name in COMPILABLE if name in chosen)


def is_compiled(module_name):
    """Whether ``module_name`` is imported from an extension module rather than source."""
    spec = importlib.util.find_spec(module_name)
    return spec is not None and spec.origin is not None and spec.origin.endswith(
        tuple(importlib.machinery.EXTENSION_SUFFIXES))


def compiled_modules():
    """The modules that run compiled here: :data:`HOT_MODULES`, or the set it was built with."""
    return [name for name in COMPILABLE if is_compiled(name)]
