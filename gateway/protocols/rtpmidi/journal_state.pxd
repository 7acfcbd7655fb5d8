# Compile-time declarations for journal_state.py (see setup.py): the per-packet
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
