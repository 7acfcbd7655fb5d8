"""RTMP door: RTMP clients (ffmpeg, OBS, rtmpdump, librtmp) in sessions, MIDI as AMF0 data."""
