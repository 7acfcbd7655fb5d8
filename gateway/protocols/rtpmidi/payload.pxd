# Compile-time declarations for payload.py (see setup.py and journal.pxd).
cimport cython

cdef class RtpMidiPacket:
    cdef public object sequence, timestamp, ssrc, marker, payload_type, commands, phantom
    cdef public object _journal, _journal_octets, midi_list

@cython.locals(packet=RtpMidiPacket)
cpdef _parse_packet(data, lazy_journal)
cpdef _parse_midi_list(data, pos, end, first_has_delta)
