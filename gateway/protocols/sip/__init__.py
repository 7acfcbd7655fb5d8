"""SIP door: the session server of sfront networking (message model, SDP, sfront dialect)."""
