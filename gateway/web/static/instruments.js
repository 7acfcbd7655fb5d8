// How the jam page sounds a player: a General MIDI instrument from a SoundFont, played by
// spessasynth_lib (vendor/README.md says which files, which bank and why), one synthesizer
// per player so that each player keeps a mixer strip of their own, or, where that cannot
// run, a small oscillator synth. Both take the player's MIDI bytes as they come: notes,
// Program Change, the sustain pedal (CC 64), pitch bend, all-notes-off.
//
// The player's Program Change picks the instrument; the listener can override it per player
// (``setOverride``), which this page alone hears.

export const BANK_URL = new URL('vendor/sf_GMbank.sf2', import.meta.url).href;
const LIBRARY_URL = new URL('vendor/spessasynth_lib.js', import.meta.url).href;
const PROCESSOR_URL = new URL('vendor/spessasynth_processor.min.js', import.meta.url).href;

export const DRUM_CHANNEL = 9;
const SUSTAIN = 64;
const ALL_SOUND_OFF = 120;
const RESET_CONTROLLERS = 121;
const ALL_NOTES_OFF = 123;
const BEND_RANGE_SEMITONES = 2;
const FALLBACK_VOICE_LIMIT = 32;

/** The 128 General MIDI Level 1 program names, program 0 first. */
export const GM_PROGRAMS = [
  'Acoustic Grand Piano', 'Bright Acoustic Piano', 'Electric Grand Piano', 'Honky-tonk Piano',
  'Electric Piano 1', 'Electric Piano 2', 'Harpsichord', 'Clavi',
  'Celesta', 'Glockenspiel', 'Music Box', 'Vibraphone', 'Marimba', 'Xylophone', 'Tubular Bells', 'Dulcimer',
  'Drawbar Organ', 'Percussive Organ', 'Rock Organ', 'Church Organ', 'Reed Organ', 'Accordion', 'Harmonica',
  'Tango Accordion',
  'Acoustic Guitar (nylon)', 'Acoustic Guitar (steel)', 'Electric Guitar (jazz)', 'Electric Guitar (clean)',
  'Electric Guitar (muted)', 'Overdriven Guitar', 'Distortion Guitar', 'Guitar Harmonics',
  'Acoustic Bass', 'Electric Bass (finger)', 'Electric Bass (pick)', 'Fretless Bass', 'Slap Bass 1',
  'Slap Bass 2', 'Synth Bass 1', 'Synth Bass 2',
  'Violin', 'Viola', 'Cello', 'Contrabass', 'Tremolo Strings', 'Pizzicato Strings', 'Orchestral Harp',
  'Timpani',
  'String Ensemble 1', 'String Ensemble 2', 'Synth Strings 1', 'Synth Strings 2', 'Choir Aahs', 'Voice Oohs',
  'Synth Voice', 'Orchestra Hit',
  'Trumpet', 'Trombone', 'Tuba', 'Muted Trumpet', 'French Horn', 'Brass Section', 'Synth Brass 1',
  'Synth Brass 2',
  'Soprano Sax', 'Alto Sax', 'Tenor Sax', 'Baritone Sax', 'Oboe', 'English Horn', 'Bassoon', 'Clarinet',
  'Piccolo', 'Flute', 'Recorder', 'Pan Flute', 'Blown Bottle', 'Shakuhachi', 'Whistle', 'Ocarina',
  'Lead 1 (square)', 'Lead 2 (sawtooth)', 'Lead 3 (calliope)', 'Lead 4 (chiff)', 'Lead 5 (charang)',
  'Lead 6 (voice)', 'Lead 7 (fifths)', 'Lead 8 (bass + lead)',
  'Pad 1 (new age)', 'Pad 2 (warm)', 'Pad 3 (polysynth)', 'Pad 4 (choir)', 'Pad 5 (bowed)', 'Pad 6 (metallic)',
  'Pad 7 (halo)', 'Pad 8 (sweep)',
  'FX 1 (rain)', 'FX 2 (soundtrack)', 'FX 3 (crystal)', 'FX 4 (atmosphere)', 'FX 5 (brightness)',
  'FX 6 (goblins)', 'FX 7 (echoes)', 'FX 8 (sci-fi)',
  'Sitar', 'Banjo', 'Shamisen', 'Koto', 'Kalimba', 'Bagpipe', 'Fiddle', 'Shanai',
  'Tinkle Bell', 'Agogo', 'Steel Drums', 'Woodblock', 'Taiko Drum', 'Melodic Tom', 'Synth Drum',
  'Reverse Cymbal',
  'Guitar Fret Noise', 'Breath Noise', 'Seashore', 'Bird Tweet', 'Telephone Ring', 'Helicopter', 'Applause',
  'Gunshot',
];

/**
 * The sound bank and the library, fetched once per page as soon as it loads: by the time a
 * player joins they are here, and a fetch never outlives a gateway that stops mid-jam.
 * ``state`` is loading | loaded | failed.
 */
export class SoundBank {
  constructor(url = BANK_URL) {
    this.url = url;
    this.state = 'loading';
    this.error = null;
    this.library = null;
    this.buffer = null;
    this.ready = this.load();
  }

  async load() {
    try {
      const [library, buffer] = await Promise.all([
        import(LIBRARY_URL),
        fetch(this.url).then((response) => {
          if (!response.ok) throw new Error(`HTTP ${response.status}`);
          return response.arrayBuffer();
        }),
      ]);
      this.library = library;
      this.buffer = buffer;
      this.state = 'loaded';
      return true;
    } catch (error) {
      this.error = String(error && error.message ? error.message : error);
      this.state = 'failed';
      return false;
    }
  }
}

/** What a player's MIDI set on one channel, whatever renders it: program, pedal, bend. */
class ChannelState {
  constructor() {
    this.program = 0;
    this.sustain = false;
    this.bend = 8192;
  }
}

// Held notes and voices are keyed "channel|note".
function noteKey(channel, note) {
  return `${channel}|${note}`;
}

function channelAndNote(key) {
  return key.split('|').map(Number);
}

function noteFrequency(note) {
  return 440 * 2 ** ((note - 69) / 12);
}

/** A waveform per GM family, so that the fallback still tells a flute from a bass. */
function fallbackWave(program, channel) {
  if (channel === DRUM_CHANNEL) return 'square';
  if (program >= 16 && program < 24) return 'square'; // organs
  if (program >= 40 && program < 72) return 'sawtooth'; // strings, ensembles, brass, reeds
  if (program >= 72 && program < 80) return 'sine'; // pipes
  return 'triangle';
}

/**
 * The page's own synth, used until the SoundFont is ready or where it cannot run: an
 * oscillator per note with a short attack and a decay towards a sustain level, the pedal
 * holding note-offs, pitch bend as detune (two semitones each way, the GM default).
 */
export class FallbackRenderer {
  constructor(context, destination) {
    this.kind = 'synth';
    this.context = context;
    this.destination = destination;
    this.voices = new Map(); // "channel|note" -> voice
  }

  noteOn(channel, note, velocity, program, bend) {
    this.noteOff(channel, note);
    const context = this.context;
    const now = context.currentTime;
    const peak = 0.05 + 0.2 * (velocity / 127);
    const oscillator = context.createOscillator();
    const envelope = context.createGain();
    oscillator.type = fallbackWave(program, channel);
    oscillator.frequency.value = noteFrequency(note);
    oscillator.detune.value = this.detune(bend);
    envelope.gain.setValueAtTime(0, now);
    envelope.gain.linearRampToValueAtTime(peak, now + 0.012);
    envelope.gain.setTargetAtTime(peak * 0.45, now + 0.012, channel === DRUM_CHANNEL ? 0.05 : 0.35);
    oscillator.connect(envelope);
    envelope.connect(this.destination);
    oscillator.start(now);
    this.voices.set(noteKey(channel, note), { oscillator, envelope, channel });
    if (this.voices.size > FALLBACK_VOICE_LIMIT) {
      const [oldest] = this.voices.keys();
      this.noteOff(...channelAndNote(oldest));
    }
  }

  noteOff(channel, note) {
    const key = noteKey(channel, note);
    const voice = this.voices.get(key);
    if (!voice) return;
    this.voices.delete(key);
    const when = this.context.currentTime;
    const gain = voice.envelope.gain;
    if (gain.cancelAndHoldAtTime) {
      gain.cancelAndHoldAtTime(when);
    } else {
      gain.cancelScheduledValues(when);
      gain.setValueAtTime(gain.value, when);
    }
    gain.setTargetAtTime(0, when, 0.06);
    voice.oscillator.stop(when + 0.5);
  }

  detune(bend) {
    return ((bend - 8192) / 8192) * BEND_RANGE_SEMITONES * 100;
  }

  pitchBend(channel, bend) {
    const now = this.context.currentTime;
    for (const voice of this.voices.values()) {
      if (voice.channel === channel) voice.oscillator.detune.setTargetAtTime(this.detune(bend), now, 0.005);
    }
  }

  // The pedal and programs are kept by the Instrument; this synth has nothing else to set.
  sustain() {}

  program() {}

  voiceCount() {
    return this.voices.size;
  }

  silence() {
    for (const key of [...this.voices.keys()]) this.noteOff(...channelAndNote(key));
  }

  destroy() {
    this.silence();
  }
}

/** A spessasynth WorkletSynthesizer of the player's own, fed the player's MIDI. */
class SoundFontRenderer {
  constructor(synth) {
    this.kind = 'soundfont';
    this.synth = synth;
  }

  noteOn(channel, note, velocity) {
    this.synth.noteOn(channel, note, velocity);
  }

  noteOff(channel, note) {
    this.synth.noteOff(channel, note);
  }

  pitchBend(channel, bend) {
    this.synth.pitchWheel(channel, bend);
  }

  sustain(channel, down) {
    this.synth.controllerChange(channel, SUSTAIN, down ? 127 : 0);
  }

  program(channel, program) {
    this.synth.programChange(channel, program);
  }

  voiceCount() {
    return this.synth.voiceCount;
  }

  silence() {
    this.synth.stopAll(true);
  }

  destroy() {
    this.synth.stopAll(true);
    this.synth.destroy();
  }
}

/**
 * One player's instrument: reads their MIDI bytes, keeps what they mean (programs, pedal,
 * bend, held notes) and plays them on the current renderer. The renderer can change under
 * it (the fallback until the SoundFont is ready): the held notes and settings carry over.
 */
export class Instrument {
  constructor(context, destination, onChange = () => {}) {
    this.context = context;
    this.destination = destination;
    this.onChange = onChange;
    this.channels = Array.from({ length: 16 }, () => new ChannelState());
    this.override = null; // the listener's program, or null for the player's own
    this.lastChannel = 0;
    this.held = new Map(); // "channel|note" -> velocity: keys down
    this.sustained = new Set(); // "channel|note": released while the pedal was down
    this.notesStarted = 0;
    this.renderer = new FallbackRenderer(context, destination);
  }

  /** The program heard on ``channel``: the listener's override, else the player's. */
  programOn(channel) {
    if (channel === DRUM_CHANNEL) return null;
    return this.override ?? this.channels[channel].program;
  }

  /** What the mixer row shows: the player's last channel's program (null for drums). */
  get program() {
    return this.programOn(this.lastChannel);
  }

  get playerProgram() {
    return this.lastChannel === DRUM_CHANNEL ? null : this.channels[this.lastChannel].program;
  }

  /** Takes one complete MIDI channel message; anything else is ignored. */
  midi(bytes) {
    const [status, data1 = 0, data2 = 0] = bytes;
    if (status < 0x80 || status >= 0xf0) return;
    const kind = status & 0xf0;
    const channel = status & 0x0f;
    const state = this.channels[channel];
    if (kind === 0x90 && data2 > 0) {
      const key = noteKey(channel, data1);
      this.sustained.delete(key);
      this.held.set(key, data2);
      this.notesStarted += 1;
      if (this.lastChannel !== channel) {
        this.lastChannel = channel;
        this.onChange();
      }
      this.renderer.noteOn(channel, data1, data2, this.programOn(channel) ?? 0, state.bend);
    } else if (kind === 0x80 || kind === 0x90) {
      const key = noteKey(channel, data1);
      if (!this.held.delete(key)) return;
      if (state.sustain) {
        this.sustained.add(key);
        // The SoundFont synth keeps the note for its own pedal; the fallback is told nothing.
        if (this.renderer.kind === 'soundfont') this.renderer.noteOff(channel, data1);
      } else {
        this.renderer.noteOff(channel, data1);
      }
    } else if (kind === 0xc0) {
      state.program = data1;
      if (this.override === null) this.renderer.program(channel, data1);
      this.onChange();
    } else if (kind === 0xe0) {
      state.bend = (data2 << 7) | data1;
      this.renderer.pitchBend(channel, state.bend);
    } else if (kind === 0xb0) {
      this.controller(channel, data1, data2);
    }
  }

  controller(channel, number, value) {
    const state = this.channels[channel];
    if (number === SUSTAIN) {
      const down = value >= 64;
      if (down === state.sustain) return;
      state.sustain = down;
      this.renderer.sustain(channel, down);
      if (!down) this.releaseSustained(channel);
    } else if (number === ALL_SOUND_OFF || number === ALL_NOTES_OFF) {
      for (const key of [...this.held.keys(), ...this.sustained]) {
        const [held, note] = channelAndNote(key);
        if (held !== channel) continue;
        this.held.delete(key);
        this.sustained.delete(key);
        this.renderer.noteOff(channel, note);
      }
    } else if (number === RESET_CONTROLLERS) {
      this.controller(channel, SUSTAIN, 0);
      state.bend = 8192;
      this.renderer.pitchBend(channel, state.bend);
    } else if (this.renderer.kind === 'soundfont') {
      this.renderer.synth.controllerChange(channel, number, value); // volume, bank select, modulation…
    }
  }

  releaseSustained(channel) {
    for (const key of [...this.sustained]) {
      const [held, note] = channelAndNote(key);
      if (held !== channel) continue;
      this.sustained.delete(key);
      if (this.renderer.kind !== 'soundfont') this.renderer.noteOff(channel, note);
    }
  }

  /** The listener's choice for this player: a GM program, or null for the player's own. */
  setOverride(program) {
    this.override = program === null || program === undefined ? null : Number(program);
    for (let channel = 0; channel < 16; channel += 1) {
      if (channel !== DRUM_CHANNEL) this.renderer.program(channel, this.programOn(channel));
    }
    this.onChange();
  }

  /** Plays on ``renderer`` from now on, with the programs, pedal, bend and held notes so far. */
  use(renderer) {
    const previous = this.renderer;
    this.renderer = renderer;
    this.channels.forEach((state, channel) => {
      if (channel !== DRUM_CHANNEL) renderer.program(channel, this.programOn(channel));
      if (state.bend !== 8192) renderer.pitchBend(channel, state.bend);
      if (state.sustain) renderer.sustain(channel, true);
    });
    for (const [key, velocity] of this.held) {
      const [channel, note] = channelAndNote(key);
      renderer.noteOn(channel, note, velocity, this.programOn(channel) ?? 0, this.channels[channel].bend);
    }
    previous.destroy();
    this.onChange();
  }

  /** Everything off at once (a mute of the whole page, a player leaving). */
  silence() {
    this.held.clear();
    this.sustained.clear();
    this.renderer.silence();
  }

  destroy() {
    this.held.clear();
    this.sustained.clear();
    this.renderer.destroy();
  }
}

/**
 * Makes SoundFont renderers once the bank is here and the context can run an AudioWorklet:
 * ``ready`` resolves to true, or to false (and ``reason`` says why) for the fallback.
 */
export class SoundFontFactory {
  constructor(bank, context) {
    this.bank = bank;
    this.context = context;
    this.state = 'loading';
    this.reason = '';
    this.ready = this.prepare();
  }

  async prepare() {
    if (!this.context.audioWorklet) {
      return this.fail('this page cannot run an AudioWorklet (it needs https or localhost)');
    }
    if (!(await this.bank.ready)) return this.fail(`the sound bank did not load: ${this.bank.error}`);
    try {
      await this.context.audioWorklet.addModule(PROCESSOR_URL);
    } catch (error) {
      return this.fail(`the synthesizer did not start (${error && error.message ? error.message : error})`);
    }
    this.state = 'ready';
    return true;
  }

  fail(reason) {
    this.state = 'failed';
    this.reason = reason;
    return false;
  }

  /** A new synthesizer with its own copy of the bank, playing into ``destination``. */
  async create(destination) {
    const synth = new this.bank.library.WorkletSynthesizer(this.context);
    synth.connect(destination);
    await synth.soundBankManager.addSoundBank(this.bank.buffer.slice(0), 'gm');
    await synth.isReady;
    return new SoundFontRenderer(synth);
  }
}
