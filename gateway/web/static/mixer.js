// The page's own sound: one channel strip per player (volume, pan, mute, solo) in front of a
// master bus. A strip plays its notes with its instrument; every strip has the same simple
// one today, and a per-player instrument (a soundfont chosen by Program Change) only has to
// provide the same start(context, destination, note, velocity) -> { stop(when) }.

function noteFrequency(note) {
  return 440 * 2 ** ((note - 69) / 12);
}

/** A triangle wave with a short attack and a decay towards a sustain level. */
export class TriangleInstrument {
  start(context, destination, note, velocity) {
    const now = context.currentTime;
    const peak = 0.05 + 0.2 * (velocity / 127);
    const oscillator = context.createOscillator();
    const envelope = context.createGain();
    oscillator.type = 'triangle';
    oscillator.frequency.value = noteFrequency(note);
    envelope.gain.setValueAtTime(0, now);
    envelope.gain.linearRampToValueAtTime(peak, now + 0.012);
    envelope.gain.setTargetAtTime(peak * 0.45, now + 0.012, 0.35);
    oscillator.connect(envelope);
    envelope.connect(destination);
    oscillator.start(now);
    return {
      stop(when) {
        const gain = envelope.gain;
        if (gain.cancelAndHoldAtTime) {
          gain.cancelAndHoldAtTime(when);
        } else {
          gain.cancelScheduledValues(when);
          gain.setValueAtTime(gain.value, when);
        }
        gain.setTargetAtTime(0, when, 0.06);
        oscillator.stop(when + 0.5);
      },
    };
  }
}

const VOICE_LIMIT = 32;
const LEVEL_WINDOW = 2048;

/**
 * One player's strip: instrument -> volume -> pan -> mute/solo gate -> analyser -> master.
 * The analyser sits after the gate, so it hears exactly what this player adds to the mix.
 */
class PlayerStrip {
  constructor(mixer, name) {
    this.mixer = mixer;
    this.name = name;
    this.volume = 1;
    this.pan = 0;
    this.muted = false;
    this.solo = false;
    this.instrument = new TriangleInstrument();
    this.nodes = null;
  }

  /** The strip's Web Audio nodes, made with the context (which waits for a user gesture). */
  connect(context, destination) {
    if (this.nodes) return this.nodes;
    const volume = context.createGain();
    const pan = context.createStereoPanner();
    const gate = context.createGain();
    const analyser = context.createAnalyser();
    analyser.fftSize = LEVEL_WINDOW;
    volume.connect(pan);
    pan.connect(gate);
    gate.connect(analyser);
    analyser.connect(destination);
    this.nodes = { volume, pan, gate, analyser, samples: new Float32Array(LEVEL_WINDOW) };
    this.apply();
    return this.nodes;
  }

  /** Whether this strip is heard now, given every strip's solo. */
  get audible() {
    return !this.muted && (!this.mixer.anySolo() || this.solo);
  }

  apply() {
    if (!this.nodes) return;
    const now = this.nodes.gate.context.currentTime;
    this.nodes.volume.gain.setTargetAtTime(this.volume, now, 0.01);
    this.nodes.pan.pan.setTargetAtTime(this.pan, now, 0.01);
    // Set, not ramped: a mute must be silent at once, and tests read the value back.
    this.nodes.gate.gain.value = this.audible ? 1 : 0;
  }

  disconnect() {
    if (!this.nodes) return;
    this.nodes.analyser.disconnect();
    this.nodes = null;
  }
}

export class Mixer {
  constructor() {
    this.context = null;
    this.output = null;
    this.masterMuted = false;
    this.strips = new Map(); // player name -> PlayerStrip (names are unique in a session)
    this.voices = new Map(); // voice key -> { voice, strip }
  }

  /** Called from user gestures only: browsers keep an AudioContext made elsewhere suspended. */
  wake() {
    if (!this.context) {
      const AudioContextClass = window.AudioContext || window.webkitAudioContext;
      if (!AudioContextClass) return;
      try {
        this.context = new AudioContextClass();
      } catch {
        return;
      }
      const compressor = this.context.createDynamicsCompressor();
      this.output = this.context.createGain();
      this.output.gain.value = 0.6;
      this.output.connect(compressor);
      compressor.connect(this.context.destination);
      for (const strip of this.strips.values()) strip.connect(this.context, this.output);
    }
    if (this.context.state === 'suspended') {
      this.context.resume().catch(() => {});
    }
  }

  strip(name) {
    let strip = this.strips.get(name);
    if (!strip) {
      strip = new PlayerStrip(this, name);
      this.strips.set(name, strip);
      if (this.context) strip.connect(this.context, this.output);
    }
    return strip;
  }

  /** Keeps the strips of ``names`` (and their settings), drops the others'. */
  keepOnly(names) {
    const wanted = new Set(names);
    for (const [name, strip] of [...this.strips]) {
      if (wanted.has(name)) continue;
      this.silenceWhere((voiceKey, owner) => owner === strip);
      strip.disconnect();
      this.strips.delete(name);
    }
    for (const name of names) this.strip(name);
    this.applyAll();
  }

  anySolo() {
    for (const strip of this.strips.values()) if (strip.solo) return true;
    return false;
  }

  applyAll() {
    for (const strip of this.strips.values()) strip.apply();
  }

  set(name, settings) {
    const strip = this.strip(name);
    Object.assign(strip, settings);
    // A solo or mute changes what every other strip lets through.
    this.applyAll();
  }

  noteOn(name, voiceKey, note, velocity) {
    if (!this.context || this.masterMuted) return;
    this.noteOff(voiceKey);
    const strip = this.strip(name);
    const { volume } = strip.connect(this.context, this.output);
    const voice = strip.instrument.start(this.context, volume, note, velocity);
    this.voices.set(voiceKey, { voice, strip });
    if (this.voices.size > VOICE_LIMIT) this.noteOff(this.voices.keys().next().value);
  }

  noteOff(voiceKey) {
    const playing = this.voices.get(voiceKey);
    if (!playing) return;
    this.voices.delete(voiceKey);
    playing.voice.stop(this.context.currentTime);
  }

  silenceWhere(predicate) {
    for (const [voiceKey, playing] of [...this.voices]) {
      if (predicate(voiceKey, playing.strip)) this.noteOff(voiceKey);
    }
  }

  setMasterMuted(muted) {
    this.masterMuted = muted;
    if (muted) this.silenceWhere(() => true);
  }

  /** What a strip lets through now: volume times its mute/solo gate (0 when silenced). */
  gain(name) {
    const strip = this.strips.get(name);
    if (!strip) return null;
    return strip.audible ? strip.volume : 0;
  }

  /** RMS of what a strip adds to the mix right now (its analyser, after mute and solo). */
  level(name) {
    const nodes = this.strips.get(name)?.nodes;
    if (!nodes) return 0;
    nodes.analyser.getFloatTimeDomainData(nodes.samples);
    let sum = 0;
    for (const sample of nodes.samples) sum += sample * sample;
    return Math.sqrt(sum / nodes.samples.length);
  }
}
