# Compile-time declarations for door.py (see setup.py and journal.pxd).
cimport cython

from gateway.protocols.rtpmidi.journal_receiver cimport JournalReceiver
from gateway.protocols.rtpmidi.payload cimport RtpMidiPacket
from gateway.protocols.rtpmidi.session cimport AppleMidiSession
from gateway.protocols.rtpmidi.stream cimport OutgoingStream

cdef class SessionEndpoint

cdef class RtpMidiMember:
    cdef public object peer, name, membership, data_addr, _sendto, sysex
    cdef public object packets_received, late_dropped
    cdef public SessionEndpoint endpoint
    cdef public OutgoingStream stream
    cdef public JournalReceiver journal_receiver

    @cython.locals(receiver=JournalReceiver, packet=RtpMidiPacket, endpoint=SessionEndpoint)
    cpdef rtp_received(self, data, now)
    @cython.locals(stream=OutgoingStream, endpoint=SessionEndpoint)
    cpdef deliver(self, delivery)

cdef class SessionEndpoint:
    cdef public object door, entry, config, reactor, bus, late_ticks, members
    cdef public object control_port, data_port, data_socket, _invite_targets, _invited
    cdef public object _reinvitations
    cdef public AppleMidiSession session

    @cython.locals(member=RtpMidiMember)
    cpdef rtp_received(self, data, addr)
