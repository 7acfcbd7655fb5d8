"""The session bus: the one contract between doors and sessions.

:mod:`gateway.interfaces` states it (``ISessionBus``, ``IMembership``,
``IMember``, ``IDropSink``), :mod:`gateway.bus.values` holds the values that
cross it, and :mod:`gateway.bus.local` is the in-process implementation.
README.rst, "Writing a door", draws the path of one note through it.
"""
