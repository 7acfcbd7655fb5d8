// The netgateway jam page: joins a session over the gateway's WebSocket door and plays
// notes with an on-screen keyboard, the computer keyboard and Web MIDI devices; live.js
// plays the session's live audio stream beside them.

import { LiveListener, liveStreamUrl } from './live.js';

const NOTE_NAMES = ['C', 'C♯', 'D', 'D♯', 'E', 'F', 'F♯', 'G', 'G♯', 'A', 'A♯', 'B'];
const SPOKEN_NOTE_NAMES = ['C', 'C sharp', 'D', 'D sharp', 'E', 'F', 'F sharp', 'G', 'G sharp', 'A', 'A sharp', 'B'];
const BLACK_PITCH_CLASSES = new Set([1, 3, 6, 8, 10]);

const KEYBOARD_SPAN = 24;
const DEFAULT_LOWEST_NOTE = 48;
const LOWEST_NOTE_MIN = 0;
const LOWEST_NOTE_MAX = 96; // C7, so the top key (B8) stays a valid MIDI note
// Physical key positions (KeyboardEvent.code), so the piano layout survives AZERTY/QWERTZ.
const PIANO_KEY_CODES = [
  'KeyA', 'KeyW', 'KeyS', 'KeyE', 'KeyD', 'KeyF', 'KeyT', 'KeyG',
  'KeyY', 'KeyH', 'KeyU', 'KeyJ', 'KeyK', 'KeyO', 'KeyL', 'KeyP',
];
const OCTAVE_DOWN_CODE = 'KeyZ';
const OCTAVE_UP_CODE = 'KeyX';

const PING_INTERVAL_MS = 5000;
const RETRY_DELAYS_S = [1, 2, 4, 8, 10];
const LOG_LIMIT = 60;
const STORAGE_PREFIX = 'netgateway.';

const ERROR_TEXT = {
  wrong_passphrase: 'Wrong passphrase for this session.',
  session_full: 'This session is full. Try again later or pick another session.',
  gateway_full: 'The gateway is full right now. Try again later.',
  unknown_session: 'There is no session with that name.',
  passphrase_too_short: 'That passphrase is too short.',
  bad_request: 'The gateway did not understand the request. Check the fields and try again.',
  not_joined: 'You are not in a session yet.',
  already_joined: 'You are already in a session.',
  rate_limited: 'You are playing faster than the gateway allows; some notes were dropped.',
};
const JOIN_ERROR_CODES = new Set([
  'wrong_passphrase', 'session_full', 'gateway_full', 'unknown_session',
  'passphrase_too_short', 'bad_request', 'already_joined',
]);
const CLOSE_REASONS = {
  1000: 'closed normally',
  1001: 'the gateway is stopping',
  1006: 'the connection dropped',
  1009: 'a message was too big',
  4001: 'idle for too long',
  4002: 'you were removed from the session',
};
const CLOSE_CODES_WITHOUT_RETRY = new Set([1000, 4002]);

const $ = (selector) => document.querySelector(selector);

const state = {
  phase: 'idle', // idle | connecting | joining | joined | retrying
  wantJoined: false,
  server: '',
  session: '',
  name: '',
  me: null,
  members: [],
  mirror: false,
  lowestNote: DEFAULT_LOWEST_NOTE,
  channel: 0,
  velocity: 100,
  rttMs: null,
  // "source|channel|note" -> note; local sources are "pointer:ID", "key:CODE" and "midi".
  localNotes: new Map(),
  // "memberId|channel|note" -> note
  remoteNotes: new Map(),
  retryAttempt: 0,
  joinedSinceSubmit: false,
};

let socket = null;
let socketServer = '';
let passphrase = '';
let pingTimer = null;
let nextPingId = 1;
let retryTimer = null;
let errorClearTimer = null;
let live = null;
// Debugging and tests only: ?live_url=URL replaces the gateway's live stream URL ({session}
// and {stream} are filled in), ?live_transport=websocket takes FLV over WebSocket.
const pageParams = new URLSearchParams(location.search);

window.netgateway = {
  state,
  get socket() { return socket; },
};

/* ---------------------------------------------------------------- note helpers */

function noteName(note) {
  return `${NOTE_NAMES[note % 12]}${Math.floor(note / 12) - 1}`;
}

function spokenNoteName(note) {
  return `${SPOKEN_NOTE_NAMES[note % 12]} ${Math.floor(note / 12) - 1}`;
}

function noteFrequency(note) {
  return 440 * 2 ** ((note - 69) / 12);
}

/** Classifies one complete MIDI message; returns null for anything that is not a note event. */
function describeNoteMessage(bytes) {
  const [status, data1, data2] = bytes;
  const kind = status & 0xf0;
  const channel = status & 0x0f;
  if (kind === 0x90 && bytes.length >= 3) {
    return { on: data2 > 0, channel, note: data1, velocity: data2 };
  }
  if (kind === 0x80 && bytes.length >= 3) {
    return { on: false, channel, note: data1, velocity: 0 };
  }
  return null;
}

function isAllNotesOff(bytes) {
  // CC 120 (all sound off) and CC 123 (all notes off) silence a whole channel.
  return (bytes[0] & 0xf0) === 0xb0 && (bytes[1] === 120 || bytes[1] === 123);
}

/* ---------------------------------------------------------------- synth */

class Synth {
  constructor() {
    this.context = null;
    this.output = null;
    this.voices = new Map();
    this.muted = false;
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
    }
    if (this.context.state === 'suspended') {
      this.context.resume().catch(() => {});
    }
  }

  get usable() {
    return this.context !== null && !this.muted;
  }

  noteOn(voiceKey, note, velocity) {
    if (!this.usable) return;
    this.noteOff(voiceKey);
    const now = this.context.currentTime;
    const peak = 0.05 + 0.2 * (velocity / 127);
    const oscillator = this.context.createOscillator();
    const envelope = this.context.createGain();
    oscillator.type = 'triangle';
    oscillator.frequency.value = noteFrequency(note);
    envelope.gain.setValueAtTime(0, now);
    envelope.gain.linearRampToValueAtTime(peak, now + 0.012);
    envelope.gain.setTargetAtTime(peak * 0.45, now + 0.012, 0.35);
    oscillator.connect(envelope);
    envelope.connect(this.output);
    oscillator.start(now);
    this.voices.set(voiceKey, { oscillator, envelope });
    const voiceLimit = 32;
    if (this.voices.size > voiceLimit) {
      this.noteOff(this.voices.keys().next().value);
    }
  }

  noteOff(voiceKey) {
    const voice = this.voices.get(voiceKey);
    if (!voice) return;
    this.voices.delete(voiceKey);
    const now = this.context.currentTime;
    const gain = voice.envelope.gain;
    if (gain.cancelAndHoldAtTime) {
      gain.cancelAndHoldAtTime(now);
    } else {
      gain.cancelScheduledValues(now);
      gain.setValueAtTime(gain.value, now);
    }
    gain.setTargetAtTime(0, now, 0.06);
    voice.oscillator.stop(now + 0.5);
  }

  silenceWhere(predicate) {
    for (const voiceKey of [...this.voices.keys()]) {
      if (predicate(voiceKey)) this.noteOff(voiceKey);
    }
  }

  setMuted(muted) {
    this.muted = muted;
    if (muted) this.silenceWhere(() => true);
  }
}

const synth = new Synth();

/* ---------------------------------------------------------------- storage */

function remembered(key) {
  try {
    return localStorage.getItem(STORAGE_PREFIX + key);
  } catch {
    return null; // storage can be disabled (private mode, file://)
  }
}

function remember(key, value) {
  try {
    if (value === null || value === '') localStorage.removeItem(STORAGE_PREFIX + key);
    else localStorage.setItem(STORAGE_PREFIX + key, value);
  } catch {
    // Remembering is a convenience; without storage the page still works.
  }
}

function defaultServerUrl() {
  if (!location.host) return '';
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}

/* ---------------------------------------------------------------- status and errors */

function setStatus(text) {
  $('#status').textContent = text;
}

function showError(text, { fadeAfterMs = 0 } = {}) {
  clearTimeout(errorClearTimer);
  $('#error').textContent = text;
  if (fadeAfterMs) errorClearTimer = setTimeout(() => showError(''), fadeAfterMs);
}

function errorText(code, serverMessage) {
  const plain = ERROR_TEXT[code] || 'The gateway reported a problem.';
  const addsDetail = serverMessage && !plain.toLowerCase().includes(serverMessage.toLowerCase().replace(/\.$/, ''));
  return addsDetail ? `${plain} (${serverMessage})` : plain;
}

function joinedStatus() {
  const count = state.members.length;
  const players = count === 1 ? '1 player' : `${count} players`;
  const mirror = state.mirror ? ' (mirror: you hear yourself a fifth up)' : '';
  return `Joined “${state.session}” as ${state.me.name} — ${players}${mirror}`;
}

function setPhase(phase) {
  state.phase = phase;
  const busy = phase !== 'idle';
  for (const id of ['server', 'session', 'passphrase', 'name']) {
    document.getElementById(id).disabled = busy;
  }
  $('#try-mirror').disabled = busy;
  $('#join').disabled = busy;
  $('#leave').disabled = !busy && !socket;
  $('#jam').hidden = phase !== 'joined' && phase !== 'retrying';
  if (phase === 'idle' && live && live.wanted) live.stop('Stopped: you are not in a session.');
  document.body.dataset.phase = phase;
}

/* ---------------------------------------------------------------- keyboard view */

function keyElement(note) {
  return $(`#keyboard [data-note="${note}"]`);
}

function hasNote(notes, note) {
  for (const value of notes.values()) {
    if (value === note) return true;
  }
  return false;
}

function refreshKey(note) {
  const key = keyElement(note);
  if (!key) return;
  const local = hasNote(state.localNotes, note);
  key.classList.toggle('key--local', local);
  key.classList.toggle('key--remote', hasNote(state.remoteNotes, note));
  key.setAttribute('aria-pressed', String(local));
}

function renderKeyboard() {
  const keyboard = $('#keyboard');
  keyboard.replaceChildren();
  const whiteCount = [...Array(KEYBOARD_SPAN).keys()]
    .filter((offset) => !BLACK_PITCH_CLASSES.has((state.lowestNote + offset) % 12)).length;
  keyboard.style.setProperty('--white-keys', String(whiteCount));
  let whiteIndex = 0;
  for (let offset = 0; offset < KEYBOARD_SPAN; offset += 1) {
    const note = state.lowestNote + offset;
    const black = BLACK_PITCH_CLASSES.has(note % 12);
    const key = document.createElement('div');
    key.className = `key ${black ? 'key--black' : 'key--white'}`;
    key.dataset.note = String(note);
    key.setAttribute('role', 'button');
    const computerKey = PIANO_KEY_CODES[offset]?.slice(3);
    key.setAttribute('aria-label', computerKey
      ? `${spokenNoteName(note)} (key ${computerKey})` : spokenNoteName(note));
    if (black) {
      key.style.setProperty('--left-white', String(whiteIndex));
    } else {
      whiteIndex += 1;
    }
    if (computerKey) {
      const hint = document.createElement('span');
      hint.className = 'key__hint';
      hint.textContent = computerKey;
      key.append(hint);
    }
    if (note % 12 === 0) {
      const label = document.createElement('span');
      label.className = 'key__name';
      label.textContent = noteName(note);
      key.append(label);
    }
    keyboard.append(key);
    refreshKey(note);
  }
  const highest = state.lowestNote + KEYBOARD_SPAN - 1;
  $('#octave-range').textContent = `${noteName(state.lowestNote)}–${noteName(highest)}`;
  $('#octave-down').disabled = state.lowestNote - 12 < LOWEST_NOTE_MIN;
  $('#octave-up').disabled = state.lowestNote + 12 > LOWEST_NOTE_MAX;
}

function shiftOctave(direction) {
  const lowest = state.lowestNote + 12 * direction;
  if (lowest < LOWEST_NOTE_MIN || lowest > LOWEST_NOTE_MAX) return;
  state.lowestNote = lowest;
  renderKeyboard();
}

/* ---------------------------------------------------------------- sending */

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify(message));
  }
}

function sendMidi(bytes) {
  if (state.phase === 'joined') send({ type: 'midi', data: bytes });
}

function startLocalNote(source, note) {
  const noteKey = `${source}|${state.channel}|${note}`;
  if (state.localNotes.has(noteKey) || note < 0 || note > 127) return;
  state.localNotes.set(noteKey, note);
  sendMidi([0x90 | state.channel, note, state.velocity]);
  synth.noteOn(`local|${noteKey}`, note, state.velocity);
  refreshKey(note);
}

function stopLocalNotes(sourceMatches) {
  for (const [noteKey, note] of [...state.localNotes]) {
    const [source, channel] = noteKey.split('|');
    if (!sourceMatches(source)) continue;
    state.localNotes.delete(noteKey);
    sendMidi([0x80 | Number(channel), note, 0]);
    synth.noteOff(`local|${noteKey}`);
    refreshKey(note);
  }
}

/* ---------------------------------------------------------------- pointer and computer keyboard */

const pointersDown = new Set();

function keyUnderPointer(event) {
  const target = event.target.closest ? event.target.closest('.key') : null;
  return target && $('#keyboard').contains(target) ? target : null;
}

function onPointerDown(event) {
  const key = keyUnderPointer(event);
  if (!key || (event.pointerType === 'mouse' && event.button !== 0)) return;
  event.preventDefault();
  synth.wake();
  // Touch pointers are captured implicitly; releasing lets a finger glide across keys.
  if (key.hasPointerCapture(event.pointerId)) key.releasePointerCapture(event.pointerId);
  pointersDown.add(event.pointerId);
  startLocalNote(`pointer:${event.pointerId}`, Number(key.dataset.note));
}

function onPointerOver(event) {
  const key = keyUnderPointer(event);
  if (key && pointersDown.has(event.pointerId)) {
    startLocalNote(`pointer:${event.pointerId}`, Number(key.dataset.note));
  }
}

function onPointerOut(event) {
  const key = keyUnderPointer(event);
  if (key && !key.contains(event.relatedTarget)) {
    stopLocalNotes((source) => source === `pointer:${event.pointerId}`);
  }
}

function onPointerEnd(event) {
  pointersDown.delete(event.pointerId);
  stopLocalNotes((source) => source === `pointer:${event.pointerId}`);
}

const NON_TEXT_INPUT_TYPES = new Set(['range', 'checkbox', 'radio', 'button', 'submit']);

function isTypingTarget(target) {
  if (target instanceof HTMLInputElement) return !NON_TEXT_INPUT_TYPES.has(target.type);
  return target instanceof HTMLTextAreaElement || (target instanceof HTMLElement && target.isContentEditable);
}

function onKeyDown(event) {
  if (state.phase !== 'joined' || event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
  if (isTypingTarget(event.target)) return;
  const offset = PIANO_KEY_CODES.indexOf(event.code);
  if (offset >= 0) {
    event.preventDefault();
    synth.wake();
    startLocalNote(`key:${event.code}`, state.lowestNote + offset);
  } else if (event.code === OCTAVE_DOWN_CODE) {
    shiftOctave(-1);
  } else if (event.code === OCTAVE_UP_CODE) {
    shiftOctave(1);
  }
}

function onKeyUp(event) {
  stopLocalNotes((source) => source === `key:${event.code}`);
}

function releaseHeldKeysAndPointers() {
  pointersDown.clear();
  stopLocalNotes((source) => source !== 'midi');
}

/* ---------------------------------------------------------------- incoming */

function memberLabel(member) {
  return member.door ? `${member.name} (${member.door})` : member.name;
}

function appendLog(from, noteEvent) {
  const log = $('#log');
  const entry = document.createElement('li');
  entry.dataset.from = from.name;
  entry.dataset.note = String(noteEvent.note);
  const who = document.createElement('span');
  who.className = 'log__who';
  who.textContent = memberLabel(from);
  const what = document.createElement('span');
  what.className = 'log__what';
  what.textContent = `${noteName(noteEvent.note)} · ch ${noteEvent.channel + 1} · vel ${noteEvent.velocity}`;
  entry.append(who, what);
  log.append(entry);
  while (log.children.length > LOG_LIMIT) log.firstElementChild.remove();
  log.scrollTop = log.scrollHeight;
}

function stopRemoteNotes(matches) {
  for (const [noteKey, note] of [...state.remoteNotes]) {
    if (!matches(noteKey)) continue;
    state.remoteNotes.delete(noteKey);
    synth.noteOff(`remote|${noteKey}`);
    refreshKey(note);
  }
}

function onRemoteMidi(message) {
  const bytes = Array.isArray(message.data) ? message.data : [];
  const from = message.from || { id: '?', name: 'someone' };
  if (bytes.length === 0) return;
  midiDevices.forward(bytes);
  if (isAllNotesOff(bytes)) {
    const prefix = `${from.id}|${bytes[0] & 0x0f}|`;
    stopRemoteNotes((noteKey) => noteKey.startsWith(prefix));
    return;
  }
  const noteEvent = describeNoteMessage(bytes);
  if (!noteEvent) return;
  const noteKey = `${from.id}|${noteEvent.channel}|${noteEvent.note}`;
  if (noteEvent.on) {
    state.remoteNotes.set(noteKey, noteEvent.note);
    synth.noteOn(`remote|${noteKey}`, noteEvent.note, noteEvent.velocity);
    refreshKey(noteEvent.note);
    appendLog(from, noteEvent);
  } else {
    stopRemoteNotes((key) => key === noteKey);
  }
}

function renderMembers() {
  const list = $('#members');
  list.replaceChildren(...state.members.map((member) => {
    const item = document.createElement('li');
    item.className = 'member';
    item.dataset.name = member.name;
    item.dataset.door = member.door;
    const name = document.createElement('span');
    name.className = 'member__name';
    name.textContent = member.name;
    if (state.me && member.id === state.me.id) {
      const you = document.createElement('span');
      you.className = 'member__you';
      you.textContent = ' (you)';
      name.append(you);
    }
    const door = document.createElement('span');
    door.className = `member__door member__door--${member.door}`;
    door.textContent = member.door;
    const latency = document.createElement('span');
    latency.className = 'member__rtt';
    latency.textContent = typeof member.rtt_ms === 'number' ? `${Math.round(member.rtt_ms)} ms` : '';
    item.append(name, door, latency);
    return item;
  }));
}

function onMembers(message) {
  state.members = Array.isArray(message.members) ? message.members : [];
  if (message.change === 'leave' && message.member) {
    // The gateway sends note-offs for a leaver's notes; this only guards the display.
    const prefix = `${message.member.id}|`;
    stopRemoteNotes((noteKey) => noteKey.startsWith(prefix));
  }
  renderMembers();
  if (state.phase === 'joined') setStatus(joinedStatus());
}

function onJoined(message) {
  if (!state.wantJoined) return;
  state.me = message.member;
  state.members = message.members || [];
  state.mirror = Boolean(message.mirror);
  state.session = message.session || state.session;
  state.retryAttempt = 0;
  state.joinedSinceSubmit = true;
  showError('');
  setPhase('joined');
  renderMembers();
  renderKeyboard();
  setStatus(joinedStatus());
  startPinging();
}

function onServerError(message) {
  const text = errorText(message.code, message.message);
  if (state.phase === 'joining' && JOIN_ERROR_CODES.has(message.code)) {
    showError(text);
    // The gateway keeps the socket open after a refused join so the user can correct and retry.
    state.wantJoined = false;
    setPhase('idle');
    setStatus('Not joined');
  } else {
    // Errors while playing (rate limits) are passing news, not something to fix in the form.
    showError(text, { fadeAfterMs: 6000 });
  }
}

function showRtt(rttMs) {
  state.rttMs = rttMs;
  $('#rtt').textContent = `${Math.round(rttMs)} ms`;
}

function onMessage(event) {
  if (typeof event.data !== 'string') return; // this page asks for MIDI as JSON
  let message;
  try {
    message = JSON.parse(event.data);
  } catch {
    return;
  }
  switch (message.type) {
    case 'midi': onRemoteMidi(message); break;
    case 'members': onMembers(message); break;
    case 'ping': send({ type: 'pong', id: message.id }); break;
    case 'pong':
      if (typeof message.client_time === 'number') showRtt(performance.now() - message.client_time * 1000);
      break;
    case 'joined': onJoined(message); break;
    case 'error': onServerError(message); break;
    default: break;
  }
}

/* ---------------------------------------------------------------- connection */

function startPinging() {
  stopPinging();
  const ping = () => send({ type: 'ping', id: nextPingId++, client_time: performance.now() / 1000 });
  ping();
  pingTimer = setInterval(ping, PING_INTERVAL_MS);
}

function stopPinging() {
  clearInterval(pingTimer);
  pingTimer = null;
}

function sendJoin() {
  setPhase('joining');
  setStatus(`Joining “${state.session}”…`);
  send({ type: 'join', session: state.session, passphrase, name: state.name, midi: 'json' });
}

function clearSessionView() {
  stopPinging();
  state.rttMs = null;
  $('#rtt').textContent = '–';
  stopRemoteNotes(() => true);
  state.members = [];
  state.me = null;
  renderMembers();
}

function connect() {
  setPhase('connecting');
  setStatus(`Connecting to ${state.server}…`);
  let opened;
  try {
    opened = new WebSocket(state.server);
  } catch {
    showError('That server address is not a valid WebSocket URL (it should start with ws:// or wss://).');
    state.wantJoined = false;
    setPhase('idle');
    setStatus('Not connected');
    return;
  }
  socket = opened;
  socketServer = state.server;
  opened.addEventListener('open', () => {
    if (socket === opened && state.wantJoined) sendJoin();
  });
  opened.addEventListener('message', (event) => {
    if (socket === opened) onMessage(event);
  });
  opened.addEventListener('close', (event) => {
    if (socket === opened) onClose(event);
  });
}

function closeReason(code) {
  return CLOSE_REASONS[code] || `code ${code}`;
}

function onClose(event) {
  socket = null;
  clearSessionView();
  if (!state.wantJoined) {
    setPhase('idle');
    setStatus('Not connected');
    return;
  }
  if (CLOSE_CODES_WITHOUT_RETRY.has(event.code)) {
    state.wantJoined = false;
    setPhase('idle');
    setStatus(`Disconnected: ${closeReason(event.code)}.`);
    return;
  }
  scheduleRetry(closeReason(event.code));
}

function scheduleRetry(reason) {
  const delay = RETRY_DELAYS_S[Math.min(state.retryAttempt, RETRY_DELAYS_S.length - 1)];
  state.retryAttempt += 1;
  setPhase('retrying');
  let remaining = delay;
  const tick = () => {
    if (remaining <= 0) {
      retryTimer = null;
      connect();
      return;
    }
    setStatus(state.joinedSinceSubmit
      ? `Connection lost, retrying in ${remaining} s… (${reason})`
      : `Cannot reach ${state.server}, retrying in ${remaining} s…`);
    remaining -= 1;
    retryTimer = setTimeout(tick, 1000);
  };
  tick();
}

function readForm() {
  state.server = $('#server').value.trim();
  state.session = $('#session').value.trim();
  state.name = $('#name').value.trim();
  passphrase = $('#passphrase').value;
  remember('server', state.server === defaultServerUrl() ? null : state.server);
  remember('session', state.session);
  remember('name', state.name);
}

function onJoinSubmit(event) {
  event.preventDefault();
  synth.wake();
  showError('');
  readForm();
  state.wantJoined = true;
  state.joinedSinceSubmit = false;
  state.retryAttempt = 0;
  if (socket && socket.readyState === WebSocket.OPEN && socketServer === state.server) {
    sendJoin();
    return;
  }
  if (socket) socket.close(1000);
  connect();
}

function leave() {
  state.wantJoined = false;
  clearTimeout(retryTimer);
  retryTimer = null;
  releaseHeldKeysAndPointers();
  if (socket) {
    send({ type: 'leave' });
    socket.close(1000);
    socket = null;
  }
  clearSessionView();
  $('#log').replaceChildren();
  setPhase('idle');
  setStatus('Left the session.');
}

/* ---------------------------------------------------------------- Web MIDI */

const midiDevices = {
  access: null,
  input: null,
  output: null,

  /* Says what stands in the way, if anything, and offers the button: the browser asks
     for permission only when the player presses it, so a refusal can be tried again. */
  offer() {
    const status = $('#midi-status');
    const button = $('#midi-enable');
    if (!window.isSecureContext) {
      // Browsers hide Web MIDI from pages served over plain http from another machine.
      status.textContent = 'Web MIDI needs a secure page: open this page over https '
        + '(or as http://localhost on the gateway\'s own machine).';
      return;
    }
    if (typeof navigator.requestMIDIAccess !== 'function') {
      status.textContent = 'Web MIDI not available in this browser.';
      return;
    }
    status.textContent = 'Web MIDI: press "Use MIDI devices" to choose a keyboard or synth.';
    button.disabled = false;
    button.addEventListener('click', () => this.start());
  },

  async start() {
    const status = $('#midi-status');
    const button = $('#midi-enable');
    button.disabled = true;
    try {
      this.access = await navigator.requestMIDIAccess({ sysex: false });
    } catch (error) {
      const reason = error && error.name ? error.name : 'refused';
      status.textContent = `Web MIDI was not allowed (${reason}); press the button to try again.`;
      button.disabled = false;
      return;
    }
    button.hidden = true;
    this.access.addEventListener('statechange', () => this.refresh());
    this.refresh();
  },

  refresh() {
    const inputs = [...this.access.inputs.values()];
    const outputs = [...this.access.outputs.values()];
    fillPortSelect($('#midi-in'), inputs, this.input?.id ?? remembered('midiIn'));
    fillPortSelect($('#midi-out'), outputs, this.output?.id ?? remembered('midiOut'));
    this.selectInput($('#midi-in').value);
    this.selectOutput($('#midi-out').value);
    const plural = (count, word) => `${count} ${word}${count === 1 ? '' : 's'}`;
    $('#midi-status').textContent = `Web MIDI ready: ${plural(inputs.length, 'input')}, ${plural(outputs.length, 'output')}.`;
  },

  selectInput(id) {
    const input = id ? this.access.inputs.get(id) || null : null;
    if (input === this.input) return;
    if (this.input) this.input.onmidimessage = null;
    stopLocalNotes((source) => source === 'midi');
    this.input = input;
    if (input) input.onmidimessage = (event) => onDeviceMidi(event.data);
  },

  selectOutput(id) {
    this.output = id ? this.access.outputs.get(id) || null : null;
  },

  forward(bytes) {
    if (!this.output) return;
    try {
      this.output.send(bytes);
    } catch {
      // A device unplugged mid-send; the statechange event will update the list.
    }
  },
};

function fillPortSelect(select, ports, selectedId) {
  const none = new Option('— none —', '');
  const options = ports.map((port) => new Option(port.name || port.id, port.id));
  select.replaceChildren(none, ...options);
  select.value = ports.some((port) => port.id === selectedId) ? selectedId : '';
  select.disabled = ports.length === 0;
}

function onDeviceMidi(data) {
  const bytes = Array.from(data);
  // Clock and active sensing arrive dozens of times a second and would trip the rate limit.
  if (bytes.length === 0 || bytes[0] === 0xf8 || bytes[0] === 0xfe) return;
  sendMidi(bytes);
  const noteEvent = describeNoteMessage(bytes);
  if (!noteEvent) return;
  const noteKey = `midi|${noteEvent.channel}|${noteEvent.note}`;
  if (noteEvent.on) state.localNotes.set(noteKey, noteEvent.note);
  else state.localNotes.delete(noteKey);
  refreshKey(noteEvent.note);
}

/* ---------------------------------------------------------------- setup */

function setUpForm() {
  $('#server').value = remembered('server') || defaultServerUrl();
  $('#session').value = remembered('session') || 'demo';
  $('#name').value = remembered('name') || '';
  $('#join-form').addEventListener('submit', onJoinSubmit);
  $('#leave').addEventListener('click', leave);
  $('#try-mirror').addEventListener('click', () => {
    $('#session').value = 'mirror';
    $('#passphrase').focus();
  });
}

function setUpControls() {
  const channelSelect = $('#channel');
  for (let channel = 0; channel < 16; channel += 1) {
    channelSelect.append(new Option(String(channel + 1), String(channel)));
  }
  channelSelect.addEventListener('change', () => { state.channel = Number(channelSelect.value); });
  const velocity = $('#velocity');
  velocity.addEventListener('input', () => {
    state.velocity = Number(velocity.value);
    $('#velocity-value').textContent = velocity.value;
  });
  $('#octave-down').addEventListener('click', () => shiftOctave(-1));
  $('#octave-up').addEventListener('click', () => shiftOctave(1));
  const mute = $('#mute');
  mute.addEventListener('click', () => {
    synth.wake();
    synth.setMuted(!synth.muted);
    mute.setAttribute('aria-pressed', String(synth.muted));
    mute.textContent = synth.muted ? 'Muted' : 'Sound on';
  });
  $('#midi-in').addEventListener('change', (event) => {
    midiDevices.selectInput(event.target.value);
    remember('midiIn', event.target.value);
  });
  $('#midi-out').addEventListener('change', (event) => {
    midiDevices.selectOutput(event.target.value);
    remember('midiOut', event.target.value);
  });
}

function setUpKeyboard() {
  const keyboard = $('#keyboard');
  keyboard.addEventListener('pointerdown', onPointerDown);
  keyboard.addEventListener('pointerover', onPointerOver);
  keyboard.addEventListener('pointerout', onPointerOut);
  keyboard.addEventListener('contextmenu', (event) => event.preventDefault());
  window.addEventListener('pointerup', onPointerEnd);
  window.addEventListener('pointercancel', onPointerEnd);
  window.addEventListener('keydown', onKeyDown);
  window.addEventListener('keyup', onKeyUp);
  // Without this, switching tabs mid-chord leaves notes sounding for everyone.
  window.addEventListener('blur', releaseHeldKeysAndPointers);
  renderKeyboard();
}

function setUpLive() {
  const template = pageParams.get('live_url') || '';
  live = new LiveListener({
    elements: {
      root: $('#live'),
      form: $('#live-form'),
      stream: $('#live-stream'),
      toggle: $('#live-toggle'),
      volume: $('#live-volume'),
      level: $('#live-level'),
      time: $('#live-time'),
      status: $('#live-status'),
      media: $('#live-audio'),
    },
    context: () => {
      synth.wake(); // the Listen click is a user gesture
      return synth.context;
    },
    joined: () => (state.phase === 'joined' || state.phase === 'retrying') && state.session
      ? { server: state.server, session: state.session, passphrase } : null,
    template,
    transport: pageParams.get('live_transport') === 'websocket' ? 'websocket' : 'http',
    remember,
    remembered,
  });
  if (template) $('#live-hint').textContent = `Debugging: streams come from ${template} (the page's live_url parameter).`;
  window.netgatewayLive = {
    mediaTime: () => live.mediaTime(),
    level: () => live.level(),
    outputLevel: () => live.outputLevel(),
    behind: () => live.behind(),
    get phase() { return live.phase; },
    get url() { return live.url; },
    get timings() { return { ...live.timings }; },
    get log() { return live.log; },
    liveStreamUrl,
  };
}

setUpForm();
setUpControls();
setUpKeyboard();
setUpLive();
setPhase('idle');
midiDevices.offer();
