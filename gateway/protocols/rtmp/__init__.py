"""RTMP door: handshake, chunk stream, AMF0 and the MIDI-over-RTMP service."""
