# Compile-time declarations for session.py (see setup.py and journal_state.pxd).
cimport cython

cdef class Peer:
    cdef public object local_role, token, control_addr, data_addr, ssrc, data_port_ssrc, name
    cdef public object state, rtt, clock_offset, last_sync_time, highest_rtp_seq
    cdef public object _feedback_due, _next_feedback_time, _attempts, _next_attempt_time
    cdef public object _state_since, _syncs_started, _next_sync_time, _outstanding_sync_ts1

cdef class AppleMidiSession:
    cdef public object name, ssrc, clock_base, accept, closed, counters, _peers, _rng
    cdef public object _joined_by_ssrc, _joined_by_data_port_ssrc

    @cython.locals(peer=Peer)
    cpdef rtp_source(self, ssrc, sequence, addr)
