"""The MIDI state of one channel, as both ends of a journalled stream follow it.

# implements RFC 6295 Appendix A's channel state (what each channel command sets, and the
#   packet that last changed it: the history the chapters are written from and checked against)
# implements RFC 6295 §4's sequence-number extension (16-bit RTP sequence numbers unwrapped,
#   so checkpoint history is ordered across wrap-around)

The sender (journal_sender.py) keeps one :class:`ChannelState` per channel to
know what to journal; the receiver (journal_receiver.py) keeps one to know what
a journal must repair.

Sans-IO: sequence numbers and RTP timestamps are passed in; nothing here reads the time.
"""

from gateway.midi import (
    CC_SUSTAIN, CHANNEL_PRESSURE, CONTROL_CHANGE, NOTE_OFF, NOTE_ON, PITCH_BEND,
    POLY_PRESSURE, PROGRAM_CHANGE,
)

__all__ = ["ChannelState", "extend_sequence", "UNSET"]

CC_BANK_MSB = 0
CC_BANK_LSB = 32
CC_ALL_SOUND_OFF = 120
CC_RESET_ALL_CONTROLLERS = 121
CC_ALL_NOTES_OFF = 123
PITCH_CENTER = 0x2000
UNSET = -1

# Controllers that end every note on the channel (MIDI 1.0 channel mode messages);
# the journal records their effect in chapter N rather than replaying them.
_NOTES_OFF_CONTROLLERS = frozenset((CC_ALL_SOUND_OFF, CC_ALL_NOTES_OFF, 124, 125, 126, 127))
# Commands, not state: a receiver must never replay them as a repair.
COMMAND_CONTROLLERS = frozenset((CC_ALL_SOUND_OFF, CC_RESET_ALL_CONTROLLERS, CC_ALL_NOTES_OFF))
# What Reset All Controllers sets (MIDI RP-015).
_RESET_CONTROLLER_VALUES = ((1, 0), (11, 127), (CC_SUSTAIN, 0), (65, 0), (66, 0), (67, 0),
                            (98, 127), (99, 127), (100, 127), (101, 127))

_SEQUENCE_MODULUS = 1 << 16
HALF_SEQUENCE = 1 << 15


def extend_sequence(sequence, reference):
    """Unwrap a 16-bit sequence number to the extended number nearest ``reference``."""
    difference = (sequence - reference) & 0xFFFF
    if difference >= HALF_SEQUENCE:
        difference -= _SEQUENCE_MODULUS
    return reference + difference


class ChannelState:
    """What one MIDI channel's messages have set, with the sequence number of each change.

    Both ends keep one per channel: the sender to know what to journal (the
    ``*_stamps`` say which packet last changed each item), the receiver to
    know what a journal must repair.
    """

    __slots__ = ("velocities", "on_stamps", "off_stamps", "on_times", "note_stamps",
                 "controllers", "controller_stamps", "program", "bank_msb", "bank_lsb",
                 "bank_valid", "program_stamp", "pitch", "pitch_stamp", "pressure",
                 "pressure_stamp", "poly_pressure", "poly_stamps", "last_stamp")

    def __init__(self):
        self.velocities = bytearray(128)          # 0 = off
        self.on_stamps = [UNSET] * 128
        self.off_stamps = [UNSET] * 128
        self.on_times = [0] * 128
        self.note_stamps = {}                     # note -> last change, insertion-ordered
        self.controllers = [UNSET] * 128
        self.controller_stamps = {}
        self.program = UNSET
        self.bank_msb = 0
        self.bank_lsb = 0
        self.bank_valid = False
        self.program_stamp = UNSET
        self.pitch = UNSET
        self.pitch_stamp = UNSET
        self.pressure = UNSET
        self.pressure_stamp = UNSET
        self.poly_pressure = {}                   # note -> pressure
        self.poly_stamps = {}
        self.last_stamp = UNSET

    def apply(self, message, stamp, time=0):
        """Update the state for one channel message sent in packet ``stamp`` at ``time``."""
        kind = message[0] & 0xF0
        self.last_stamp = stamp
        if kind == NOTE_ON and message[2]:
            note = message[1]
            self.velocities[note] = message[2]
            self.on_stamps[note] = stamp
            self.on_times[note] = time
            self.note_stamps[note] = stamp
        elif kind == NOTE_OFF or kind == NOTE_ON:
            self._note_off(message[1], stamp)
        elif kind == PITCH_BEND:
            self.pitch = message[1] | (message[2] << 7)
            self.pitch_stamp = stamp
        elif kind == CONTROL_CHANGE:
            self._control_change(message[1], message[2], stamp)
        elif kind == PROGRAM_CHANGE:
            self.program = message[1]
            msb, lsb = self.controllers[CC_BANK_MSB], self.controllers[CC_BANK_LSB]
            self.bank_valid = msb != UNSET or lsb != UNSET
            self.bank_msb = max(msb, 0)
            self.bank_lsb = max(lsb, 0)
            self.program_stamp = stamp
        elif kind == CHANNEL_PRESSURE:
            self.pressure = message[1]
            self.pressure_stamp = stamp
        elif kind == POLY_PRESSURE:
            self.poly_pressure[message[1]] = message[2]
            self.poly_stamps[message[1]] = stamp

    def _note_off(self, note, stamp):
        self.velocities[note] = 0
        self.off_stamps[note] = stamp
        self.note_stamps[note] = stamp

    def _control_change(self, number, value, stamp):
        if number in _NOTES_OFF_CONTROLLERS:
            for note in range(128):
                if self.velocities[note]:
                    self._note_off(note, stamp)
            if number in COMMAND_CONTROLLERS:
                return
        if number == CC_RESET_ALL_CONTROLLERS:
            for controller, default in _RESET_CONTROLLER_VALUES:
                self.controllers[controller] = default
                self.controller_stamps[controller] = stamp
            self.pitch = PITCH_CENTER
            self.pitch_stamp = stamp
            self.pressure = 0
            self.pressure_stamp = stamp
            for note in self.poly_pressure:
                self.poly_pressure[note] = 0
                self.poly_stamps[note] = stamp
            return
        self.controllers[number] = value
        self.controller_stamps[number] = stamp

    def snapshot(self):
        """Comparable summary: sounding notes, controllers, program, pitch, pressures."""
        return {
            "notes": frozenset(note for note, velocity in enumerate(self.velocities) if velocity),
            "controllers": {number: value for number, value in enumerate(self.controllers)
                            if value != UNSET},
            "program": (self.program, self.bank_valid, self.bank_msb, self.bank_lsb)
            if self.program != UNSET else None,
            "pitch": self.pitch,
            "pressure": self.pressure,
            "poly_pressure": {note: value for note, value in self.poly_pressure.items() if value},
        }
