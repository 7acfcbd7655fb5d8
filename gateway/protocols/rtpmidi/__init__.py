"""RTP-MIDI door: RFC 6295 payload with recovery journal over AppleMIDI sessions."""
