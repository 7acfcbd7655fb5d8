# Compile-time declarations for journal_sender.py (see setup.py and journal_state.pxd).
cimport cython

from gateway.protocols.rtpmidi.journal_state cimport ChannelState

cdef class JournalSender:
    cdef public object late_note_ticks, max_history, channels
    cdef public object _recent_channels, _checkpoint, _last_sent, _forgotten_before, _forget_step

    cpdef send(self, sequence, timestamp, messages)
    cpdef _extend(self, sequence)
    @cython.locals(state=ChannelState)
    cpdef _octets(self, current, timestamp)
    cpdef _channel_octets(self, channel, ChannelState state, checkpoint, previous, timestamp,
                          final)
    cpdef _append_note_chapter(self, out, ChannelState state, checkpoint, previous, timestamp,
                               ends_journal)
    @cython.locals(state=ChannelState)
    cpdef _record(self, current, timestamp, messages)
