# Compile-time declarations for journal_receiver.py (see setup.py and journal_state.pxd).
cimport cython

from gateway.protocols.rtpmidi.journal_state cimport ChannelState

cdef class JournalReceiver:
    cdef public object sound_late_notes, channels, lost_packets, late_packets
    cdef public object repaired_gaps, unrecoverable_gaps, _highest

    @cython.locals(state=ChannelState)
    cpdef receive(self, packet)
