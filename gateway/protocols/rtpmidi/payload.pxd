# Compile-time declarations for payload.py (see setup.py and journal_state.pxd).
cimport cython

cdef class RtpMidiPacket:
    cdef public object sequence, timestamp, ssrc, marker, payload_type, commands, phantom
    cdef public object _journal, _journal_octets, midi_list

@cython.locals(packet=RtpMidiPacket)
cpdef _parse_packet(data, lazy_journal)
# Positions and octets are C integers here; data is always bytes (_parse_packet makes it so).
@cython.locals(needed=Py_ssize_t, status=int)
cpdef _parse_midi_list(bytes data, Py_ssize_t pos, Py_ssize_t end, first_has_delta)
