# Compile-time declarations for stream.py (see setup.py and journal_state.pxd).
from gateway.protocols.rtpmidi.journal_sender cimport JournalSender

cdef class PreparedPacket:
    cdef public object section, journalled_section, messages

cdef class OutgoingStream:
    cdef public object ssrc, sequence, last_midi_time, _guards_sent, marker, payload_type
    cdef public JournalSender journal

    cpdef packet(self, prepared, timestamp, now)
