# Compile-time declarations for midi.py (see setup.py and journal_state.pxd).

cdef class MidiEvent:
    cdef public object data, time

cdef class NoteTracker:
    cdef public object _notes, _pedals

    cpdef observe(self, data)
