// The page's own sound: one channel strip per player (volume, pan, mute, solo) in front of a
// master bus. A strip plays its player's MIDI on that player's instrument (instruments.js):
// a General MIDI SoundFont synthesizer of its own once the bank is loaded, the oscillator
// synth before that and wherever the SoundFont cannot run.

import { GM_PROGRAMS, Instrument, SoundBank, SoundFontFactory } from './instruments.js';

export { GM_PROGRAMS };

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
    this.override = null; // the listener's program for this player, kept across reconnects
    this.instrument = null; // made with the context
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
    this.instrument = new Instrument(context, volume, () => this.mixer.changed(this.name));
    this.instrument.setOverride(this.override);
    this.apply();
    this.mixer.upgrade(this);
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

  /** ``soundfont`` or ``synth``: what plays this player's notes now. */
  get renderer() {
    return this.instrument ? this.instrument.renderer.kind : null;
  }

  disconnect() {
    if (!this.nodes) return;
    this.instrument.destroy();
    this.instrument = null;
    this.nodes.analyser.disconnect();
    this.nodes = null;
  }
}

export class Mixer {
  constructor({ bankUrl } = {}) {
    this.context = null;
    this.output = null;
    this.masterMuted = false;
    this.strips = new Map(); // player name -> PlayerStrip (names are unique in a session)
    // Fetched with the page, so that it is here when the player joins.
    this.bank = new SoundBank(bankUrl);
    this.soundfonts = null;
    this.onChange = () => {};
  }

  /** What plays the players' notes: loading (the synth meanwhile), soundfont, or synth. */
  get renderer() {
    if (!this.soundfonts) return this.bank.state === 'failed' ? 'synth' : 'loading';
    return { loading: 'loading', ready: 'soundfont', failed: 'synth' }[this.soundfonts.state];
  }

  /** Why the page plays its own synth instead of the SoundFont, if it does. */
  get fallbackReason() {
    if (this.soundfonts?.state === 'failed') return this.soundfonts.reason;
    return this.bank.state === 'failed' ? `the sound bank did not load: ${this.bank.error}` : '';
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
      this.soundfonts = new SoundFontFactory(this.bank, this.context);
      this.soundfonts.ready.then(() => {
        for (const strip of this.strips.values()) this.upgrade(strip);
        this.changed(null);
      });
      for (const strip of this.strips.values()) strip.connect(this.context, this.output);
    }
    if (this.context.state === 'suspended') {
      this.context.resume().catch(() => {});
    }
  }

  /** Gives ``strip`` a SoundFont synthesizer of its own, once they can be made. */
  upgrade(strip) {
    const factory = this.soundfonts;
    if (!factory || factory.state !== 'ready' || !strip.instrument || strip.upgrading) return;
    if (strip.instrument.renderer.kind === 'soundfont') return;
    const { instrument } = strip;
    strip.upgrading = true;
    factory.create(strip.nodes.volume).then((renderer) => {
      strip.upgrading = false;
      if (strip.instrument !== instrument) {
        renderer.destroy(); // the player left while the synthesizer started
        return;
      }
      instrument.use(renderer);
    }, () => {
      strip.upgrading = false; // this strip keeps the synth
    });
  }

  changed(name) {
    this.onChange(name);
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

  /** One complete MIDI channel message that ``name`` played, sounded on their strip. */
  midi(name, bytes) {
    if (!this.context) return;
    const isNoteOn = (bytes[0] & 0xf0) === 0x90 && bytes[2] > 0;
    if (this.masterMuted && isNoteOn) return;
    const strip = this.strip(name);
    strip.connect(this.context, this.output);
    strip.instrument.midi(bytes);
  }

  /** The listener's instrument for ``name`` (a GM program number), or null for the player's. */
  setOverride(name, program) {
    const strip = this.strip(name);
    strip.override = program === null || program === '' || program === undefined ? null : Number(program);
    if (strip.instrument) strip.instrument.setOverride(strip.override);
    else this.changed(name);
  }

  setMasterMuted(muted) {
    this.masterMuted = muted;
    if (muted) for (const strip of this.strips.values()) strip.instrument?.silence();
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
