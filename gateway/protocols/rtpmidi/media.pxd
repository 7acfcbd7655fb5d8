# Compile-time declarations for media.py (see setup.py and journal_state.pxd).
cimport cython

from gateway.protocols.rtpmidi.journal_receiver cimport JournalReceiver
from gateway.protocols.rtpmidi.payload cimport RtpMidiPacket
from gateway.protocols.rtpmidi.stream cimport OutgoingStream

cdef class RtpMidiStream:
    cdef public object clock_rate, clock_base, late_ticks, clock_offset, sysex
    cdef public object packets_received, late_dropped
    cdef public OutgoingStream outgoing
    cdef public JournalReceiver journal_receiver

    @cython.locals(receiver=JournalReceiver, packet=RtpMidiPacket)
    cpdef receive(self, packet, now)
    cpdef packet(self, prepared, timestamp, now)
