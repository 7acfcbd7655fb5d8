# Compile-time declarations for journal.py (see setup.py): the per-packet
# classes as extension types, so that their attributes and methods are
# reached directly. The .py file stays the source; keep the attribute lists
# in step with it (the compiled unit tests fail on a missing one).
cimport cython

cdef class ChannelState:
    cdef public object velocities, on_stamps, off_stamps, on_times, note_stamps
    cdef public object controllers, controller_stamps, program, bank_msb, bank_lsb
    cdef public object bank_valid, program_stamp, pitch, pitch_stamp, pressure
    cdef public object pressure_stamp, poly_pressure, poly_stamps, last_stamp

    cpdef apply(self, message, stamp, time=*)

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

cdef class JournalReceiver:
    cdef public object sound_late_notes, channels, lost_packets, late_packets
    cdef public object repaired_gaps, unrecoverable_gaps, _highest

    @cython.locals(state=ChannelState)
    cpdef receive(self, packet)
