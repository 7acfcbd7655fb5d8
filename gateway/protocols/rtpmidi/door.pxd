# Compile-time declarations for door.py (see setup.py and journal.pxd).
cimport cython

from gateway.protocols.rtpmidi.media cimport RtpMidiStream
from gateway.protocols.rtpmidi.payload cimport RtpMidiPacket
from gateway.protocols.rtpmidi.session cimport AppleMidiSession

cdef class SessionEndpoint

cdef class RtpMidiMember:
    cdef public object peer, name, membership, data_addr, _sendto
    cdef public SessionEndpoint endpoint
    cdef public RtpMidiStream stream

    cpdef rtp_received(self, packet, now)
    @cython.locals(stream=RtpMidiStream, endpoint=SessionEndpoint)
    cpdef deliver(self, delivery)

cdef class SessionEndpoint:
    cdef public object door, entry, config, reactor, bus, members
    cdef public object control_port, data_port, data_socket, _invite_targets, _invited
    cdef public object _reinvitations, carry_out
    cdef public AppleMidiSession session

    @cython.locals(member=RtpMidiMember, packet=RtpMidiPacket)
    cpdef rtp_received(self, data, addr)
