"""netgateway: one jam session, many network-MIDI protocols."""

__version__ = "0.1.0"
