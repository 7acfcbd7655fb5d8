# Compile-time declarations for registry.py (see setup.py and journal.pxd).
from gateway.midi cimport NoteTracker

cdef class FanOutCache:
    cdef public object _events, _value

cdef class _RateLimit:
    cdef public object rate, tokens, stamp

    cpdef refill(self, now)

cdef class Membership:
    cdef public object registry, session, member, id, joined_at, last_seen, active
    cdef public NoteTracker notes
    cdef public _RateLimit _limit
