// The netgateway jam page: joins a session over the gateway's WebSocket door and plays
// notes with an on-screen keyboard (mouse, touch, Tab and Space), the computer keyboard and
// Web MIDI devices; mixer.js voices each player on its own strip, live.js plays the
// session's live audio stream beside them, invite.js builds and reads invite links.

import { inviteLink, readInvite } from './invite.js';
import { LiveListener, liveStreamUrl } from './live.js';
import { GM_PROGRAMS, Mixer } from './mixer.js';

const NOTE_NAMES = ['C', 'C♯', 'D', 'D♯', 'E', 'F', 'F♯', 'G', 'G♯', 'A', 'A♯', 'B'];
const SPOKEN_NOTE_NAMES = ['C', 'C sharp', 'D', 'D sharp', 'E', 'F', 'F sharp', 'G', 'G sharp', 'A', 'A sharp', 'B'];
const BLACK_PITCH_CLASSES = new Set([1, 3, 6, 8, 10]);

const KEYBOARD_SPAN = 24;
// Phones and small tablets: one octave, so that every key stays at least 40 px wide.
const NARROW_KEYBOARD_SPAN = 12;
const NARROW_SCREEN = window.matchMedia('(max-width: 600px), (max-height: 500px)');
// A phone on its side: the piano is scrolled fully into view once joined.
const SHORT_LANDSCAPE = window.matchMedia('(max-height: 500px) and (orientation: landscape)');
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
// Keys that play the focused piano key, as Space and Enter press a button.
const PLAY_FOCUSED_CODES = new Set(['Space', 'Enter', 'NumpadEnter']);

const PING_INTERVAL_MS = 5000;
const RETRY_DELAYS_S = [1, 2, 4, 8, 10];
const LOG_LIMIT = 60;
const STORAGE_PREFIX = 'netgateway.';
// As many colours (each with its own pattern, see jam.css) as a session has players by default.
const PALETTE_SIZE = 8;

const ERROR_TEXT = {
  wrong_passphrase: 'Wrong passphrase for this session.',
  session_full: 'This session is full. Try again later or pick another session.',
  gateway_full: 'The gateway is full right now. Try again later.',
  unknown_session: 'There is no session with that name.',
  passphrase_too_short: 'That passphrase is too short for a new session.',
  throttled: 'Too many failed attempts from here.',
  bad_name: 'That name cannot be used.',
  bad_request: 'The gateway did not understand the request. Check the fields and try again.',
  not_joined: 'You are not in a session yet.',
  already_joined: 'You are already in a session.',
  rate_limited: 'You are playing faster than the gateway allows; some notes were dropped.',
};
// Codes whose server message says what the plain text cannot: which character, how many.
const CODES_WITH_DETAIL = new Set(['bad_name', 'bad_request', 'passphrase_too_short']);
const JOIN_ERROR_CODES = new Set([
  'wrong_passphrase', 'session_full', 'gateway_full', 'unknown_session', 'passphrase_too_short',
  'throttled', 'bad_name', 'name_taken', 'bad_request', 'already_joined',
]);
const CLOSE_REASONS = {
  1000: 'closed normally',
  1001: 'the gateway is stopping',
  1006: 'the connection dropped',
  1008: 'too many messages before joining',
  1009: 'a message was too big',
  4001: 'idle for too long',
  4002: 'you were removed from the session',
};
const CLOSE_CODES_WITHOUT_RETRY = new Set([1000, 4002]);

const $ = (selector) => document.querySelector(selector);

const state = {
  phase: 'idle', // idle | connecting | joining | joined | retrying
  wantJoined: false,
  // Joined since the last press of Join: a lost connection is then a reconnect, and the
  // keyboard, the players and the mixer stay on screen while the page tries again.
  joinedSinceSubmit: false,
  server: '',
  session: '',
  name: '',
  me: null,
  members: [],
  mirror: false,
  recording: false, // this member's recording of the session is running on the gateway
  lowestNote: DEFAULT_LOWEST_NOTE,
  focusNote: DEFAULT_LOWEST_NOTE + 12,
  channel: 0,
  velocity: 100,
  // The GM program this player chose (sent as Program Change), or null: never chosen, none sent.
  program: null,
  sustain: false,
  bend: 8192,
  rttMs: null,
  // "source|channel|note" -> note; local sources are "pointer:ID", "key:CODE", "focus:CODE", "midi".
  localNotes: new Map(),
  // "memberId|channel|note" -> { note, name }
  remoteNotes: new Map(),
  retryAttempt: 0,
  // Why the connection was lost, kept while the page tries again: a retry that fails
  // (the gateway is still down) says nothing new about what happened.
  lostReason: null,
  // Note-ons played while not connected: heard here only, so the page says so.
  unsentNotes: 0,
  publicSessions: [],
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

const mixer = new Mixer();
// player name -> palette slot; names are unique in a session, ids change on a reconnect.
const colourSlots = new Map();

window.netgateway = {
  state,
  mixer,
  get socket() { return socket; },
  colourOf: (name) => colourSlots.get(name),
  instrumentOf: (name) => describeInstrument(name),
};

/* ---------------------------------------------------------------- note helpers */

function noteName(note) {
  return `${NOTE_NAMES[note % 12]}${Math.floor(note / 12) - 1}`;
}

function spokenNoteName(note) {
  return `${SPOKEN_NOTE_NAMES[note % 12]} ${Math.floor(note / 12) - 1}`;
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

/** ``text`` goes to the live region, only when it changes; ``detail`` (a countdown) is never read out. */
function setStatus(text, detail = '') {
  const status = $('#status');
  if (status.textContent !== text) status.textContent = text;
  $('#status-detail').textContent = detail;
}

function showError(text, { fadeAfterMs = 0 } = {}) {
  clearTimeout(errorClearTimer);
  $('#error').textContent = text;
  if (fadeAfterMs) errorClearTimer = setTimeout(() => showError(''), fadeAfterMs);
}

function sentence(text) {
  const trimmed = text.trim();
  if (!trimmed) return '';
  const capitalised = trimmed[0].toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(capitalised) ? capitalised : `${capitalised}.`;
}

/** What the player reads for an error: the page's own words, the gateway's only where they add. */
function errorText(code, serverMessage) {
  if (code === 'name_taken') {
    return `Someone in “${state.session}” is already called “${state.name}”. Choose another name.`;
  }
  // The gateway's words alone: they say how long to wait, and the page's would repeat them.
  if (code === 'throttled' && serverMessage) return sentence(serverMessage);
  const plain = ERROR_TEXT[code];
  if (!plain) return serverMessage ? `The gateway refused: ${sentence(serverMessage)}` : 'The gateway reported a problem.';
  return CODES_WITH_DETAIL.has(code) && serverMessage ? `${plain} ${sentence(serverMessage)}` : plain;
}

function plural(count, word) {
  return `${count} ${word}${count === 1 ? '' : 's'}`;
}

function joinedStatus() {
  const players = plural(state.members.length, 'player');
  const mirror = state.mirror ? ' (mirror: you hear yourself a fifth up)' : '';
  return `Joined “${state.session}” as ${state.me.name} — ${players}${mirror}`;
}

function reconnecting() {
  return state.wantJoined && state.joinedSinceSubmit && state.phase !== 'joined';
}

function setPhase(phase) {
  state.phase = phase;
  const busy = phase !== 'idle';
  for (const id of ['server', 'session', 'passphrase', 'name']) {
    document.getElementById(id).disabled = busy;
  }
  $('#try-mirror').disabled = busy;
  for (const button of document.querySelectorAll('#public-list button')) button.disabled = busy;
  $('#join').disabled = busy;
  // Leave is for a session joined or being joined; an idle page has nothing to leave.
  $('#leave').disabled = !busy;
  $('#jam').hidden = !(phase === 'joined' || reconnecting());
  if (phase === 'idle' && live && live.wanted) live.stop('Stopped: you are not in a session.');
  document.body.dataset.phase = phase;
  document.body.dataset.reconnecting = String(reconnecting());
  refreshUnsentNotice();
}

/* ---------------------------------------------------------------- players: colours */

/**
 * Gives every player of ``members`` a palette slot: the one it had, else the one its id
 * suggests (so that pages that saw the same roster agree), else the first one free.
 */
function assignColours(members) {
  const present = new Set(members.map((member) => member.name));
  for (const name of [...colourSlots.keys()]) if (!present.has(name)) colourSlots.delete(name);
  const used = new Set(colourSlots.values());
  for (const member of members) {
    if (colourSlots.has(member.name)) continue;
    const preferred = Math.abs(Number(member.id) || 0) % PALETTE_SIZE;
    let slot = preferred;
    for (let step = 0; step < PALETTE_SIZE && used.has(slot); step += 1) slot = (preferred + step) % PALETTE_SIZE;
    colourSlots.set(member.name, slot);
    used.add(slot);
  }
}

function colourSlot(name) {
  return colourSlots.get(name) ?? 0;
}

/** A colour patch that is also a pattern, so players differ without telling colours apart. */
function swatch(name) {
  const patch = document.createElement('span');
  patch.className = 'swatch';
  patch.dataset.slot = String(colourSlot(name));
  patch.setAttribute('aria-hidden', 'true');
  return patch;
}

/** Up to two letters of a name, shown on the keys a player sounds. */
function initials(name) {
  const letters = Array.from(name.trim());
  return letters.length ? (letters[0].toUpperCase() + (letters[1] || '')) : '?';
}

function myName() {
  return state.me ? state.me.name : state.name;
}

/* ---------------------------------------------------------------- keyboard view */

function keyboardSpan() {
  return NARROW_SCREEN.matches ? NARROW_KEYBOARD_SPAN : KEYBOARD_SPAN;
}

function keyElement(note) {
  return $(`#keyboard [data-note="${note}"]`);
}

/** Who sounds ``note`` now, in the order they started: ``you`` first, then the others. */
function playersOf(note) {
  const players = [];
  for (const value of state.localNotes.values()) {
    if (value === note) {
      players.push(myName());
      break;
    }
  }
  for (const { note: held, name } of state.remoteNotes.values()) {
    if (held === note && !players.includes(name)) players.push(name);
  }
  return players;
}

function refreshKey(note) {
  const key = keyElement(note);
  if (!key) return;
  const local = [...state.localNotes.values()].includes(note);
  const players = playersOf(note);
  const remote = players.length > (local ? 1 : 0);
  key.classList.toggle('key--local', local);
  key.classList.toggle('key--remote', remote);
  key.setAttribute('aria-pressed', String(local));
  // The latest player's colour and pattern, and everyone's initials: not colour alone.
  if (players.length) key.dataset.slot = String(colourSlot(players[players.length - 1]));
  else delete key.dataset.slot;
  key.querySelector('.key__players').textContent = players.map(initials).join(' ');
}

function renderKeyboard() {
  const keyboard = $('#keyboard');
  const hadFocus = keyboard.contains(document.activeElement);
  const span = keyboardSpan();
  const highest = state.lowestNote + span - 1;
  state.focusNote = Math.min(Math.max(state.focusNote, state.lowestNote), highest);
  keyboard.replaceChildren();
  const whiteCount = [...Array(span).keys()]
    .filter((offset) => !BLACK_PITCH_CLASSES.has((state.lowestNote + offset) % 12)).length;
  keyboard.style.setProperty('--white-keys', String(whiteCount));
  let whiteIndex = 0;
  for (let offset = 0; offset < span; offset += 1) {
    const note = state.lowestNote + offset;
    const black = BLACK_PITCH_CLASSES.has(note % 12);
    const key = document.createElement('button');
    key.type = 'button';
    key.className = `key ${black ? 'key--black' : 'key--white'}`;
    key.dataset.note = String(note);
    // One tab stop for the whole piano (a roving tabindex); the arrow keys move along it.
    key.tabIndex = note === state.focusNote ? 0 : -1;
    const computerKey = PIANO_KEY_CODES[offset]?.slice(3);
    // The key's name as text, not aria-label: its visible letters are hints, not its name.
    const spoken = document.createElement('span');
    spoken.className = 'visually-hidden';
    spoken.textContent = computerKey ? `${spokenNoteName(note)} (key ${computerKey})` : spokenNoteName(note);
    key.append(spoken);
    if (black) {
      key.style.setProperty('--left-white', String(whiteIndex));
    } else {
      whiteIndex += 1;
    }
    const players = document.createElement('span');
    players.className = 'key__players';
    players.setAttribute('aria-hidden', 'true');
    key.append(players);
    if (computerKey) {
      const hint = document.createElement('span');
      hint.className = 'key__hint';
      hint.setAttribute('aria-hidden', 'true');
      hint.textContent = computerKey;
      key.append(hint);
    }
    if (note % 12 === 0) {
      const label = document.createElement('span');
      label.className = 'key__name';
      label.setAttribute('aria-hidden', 'true');
      label.textContent = noteName(note);
      key.append(label);
    }
    keyboard.append(key);
    refreshKey(note);
  }
  $('#octave-range').textContent = `${noteName(state.lowestNote)}–${noteName(highest)}`;
  $('#octave-down').disabled = state.lowestNote - 12 < LOWEST_NOTE_MIN;
  $('#octave-up').disabled = state.lowestNote + 12 > LOWEST_NOTE_MAX;
  if (hadFocus) keyElement(state.focusNote)?.focus();
}

function shiftOctave(direction) {
  const lowest = state.lowestNote + 12 * direction;
  if (lowest < LOWEST_NOTE_MIN || lowest > LOWEST_NOTE_MAX) return;
  state.lowestNote = lowest;
  state.focusNote += 12 * direction;
  renderKeyboard();
}

function focusKey(note) {
  const key = keyElement(note);
  if (!key) return;
  keyElement(state.focusNote)?.setAttribute('tabindex', '-1');
  state.focusNote = note;
  key.tabIndex = 0;
  key.focus();
}

/* ---------------------------------------------------------------- sending */

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify(message));
  }
}

function sendMidi(bytes) {
  if (state.phase === 'joined') {
    send({ type: 'midi', data: bytes });
  } else if (describeNoteMessage(bytes)?.on) {
    state.unsentNotes += 1;
    refreshUnsentNotice();
  }
}

function refreshUnsentNotice() {
  const notice = $('#unsent');
  if (!notice) return;
  if (reconnecting()) {
    notice.textContent = state.unsentNotes
      ? `Not connected: the others do not hear you. ${plural(state.unsentNotes, 'note')} not sent.`
      : 'Not connected: what you play now is heard only by you.';
    notice.hidden = false;
  } else {
    notice.hidden = true;
  }
}

/** What this player plays: sent to the session and heard here, on their own strip, once. */
function playLocally(bytes) {
  sendMidi(bytes);
  mixer.midi(myName(), bytes);
}

function startLocalNote(source, note) {
  const noteKey = `${source}|${state.channel}|${note}`;
  if (state.localNotes.has(noteKey) || note < 0 || note > 127) return;
  state.localNotes.set(noteKey, note);
  playLocally([0x90 | state.channel, note, state.velocity]);
  refreshKey(note);
}

function stopLocalNotes(sourceMatches) {
  for (const [noteKey, note] of [...state.localNotes]) {
    const [source, channel] = noteKey.split('|');
    if (!sourceMatches(source)) continue;
    state.localNotes.delete(noteKey);
    playLocally([0x80 | Number(channel), note, 0]);
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
  mixer.wake();
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

function playable() {
  return state.phase === 'joined' || reconnecting();
}

function onKeyDown(event) {
  if (!playable() || event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
  if (isTypingTarget(event.target)) return;
  const offset = PIANO_KEY_CODES.indexOf(event.code);
  if (offset >= 0) {
    event.preventDefault();
    mixer.wake();
    startLocalNote(`key:${event.code}`, state.lowestNote + offset);
  } else if (event.code === OCTAVE_DOWN_CODE) {
    shiftOctave(-1);
  } else if (event.code === OCTAVE_UP_CODE) {
    shiftOctave(1);
  }
}

function onKeyUp(event) {
  stopLocalNotes((source) => source === `key:${event.code}` || source === `focus:${event.code}`);
}

/** Keys on a focused piano key: arrows move along the piano, Space and Enter play the key. */
function onPianoKeyDown(event) {
  const key = event.target.closest ? event.target.closest('.key') : null;
  if (!key || event.ctrlKey || event.metaKey || event.altKey) return;
  const note = Number(key.dataset.note);
  const lowest = state.lowestNote;
  const highest = lowest + keyboardSpan() - 1;
  const moves = { ArrowRight: note + 1, ArrowUp: note + 1, ArrowLeft: note - 1, ArrowDown: note - 1,
    Home: lowest, End: highest };
  if (event.key in moves) {
    event.preventDefault();
    focusKey(Math.min(Math.max(moves[event.key], lowest), highest));
  } else if (PLAY_FOCUSED_CODES.has(event.code)) {
    // Not the button's click: the note lasts as long as the key is held.
    event.preventDefault();
    if (!event.repeat) {
      mixer.wake();
      startLocalNote(`focus:${event.code}`, note);
    }
  }
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
  who.append(swatch(from.name), memberLabel(from));
  const what = document.createElement('span');
  what.className = 'log__what';
  what.textContent = `${noteName(noteEvent.note)} · ch ${noteEvent.channel + 1} · vel ${noteEvent.velocity}`;
  entry.append(who, what);
  log.append(entry);
  while (log.children.length > LOG_LIMIT) log.firstElementChild.remove();
  log.scrollTop = log.scrollHeight;
}

function stopRemoteNotes(matches) {
  for (const [noteKey, { note, name }] of [...state.remoteNotes]) {
    if (!matches(noteKey)) continue;
    state.remoteNotes.delete(noteKey);
    const channel = Number(noteKey.split('|')[1]);
    mixer.midi(name, [0x80 | channel, note, 0]);
    refreshKey(note);
  }
}

function onRemoteMidi(message) {
  const bytes = Array.isArray(message.data) ? message.data : [];
  const from = message.from || { id: '?', name: 'someone' };
  if (bytes.length === 0) return;
  // Others' notes sound once: on the MIDI output when there is one, else on this page.
  if (midiDevices.output) midiDevices.forward(bytes);
  else if (bytes[0] >= 0x80 && bytes[0] < 0xf0) mixer.midi(from.name, bytes);
  if (isAllNotesOff(bytes)) {
    const prefix = `${from.id}|${bytes[0] & 0x0f}|`;
    stopRemoteNotes((noteKey) => noteKey.startsWith(prefix));
    return;
  }
  const noteEvent = describeNoteMessage(bytes);
  if (!noteEvent) return;
  const noteKey = `${from.id}|${noteEvent.channel}|${noteEvent.note}`;
  if (noteEvent.on) {
    state.remoteNotes.set(noteKey, { note: noteEvent.note, name: from.name });
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
    item.dataset.slot = String(colourSlot(member.name));
    const name = document.createElement('span');
    name.className = 'member__name';
    name.append(swatch(member.name), member.name);
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
  renderMixer();
}

/* ---------------------------------------------------------------- mixer */

function mixerToggle(className, text, label) {
  const button = document.createElement('button');
  button.type = 'button';
  button.className = `button button--small ${className}`;
  button.textContent = text;
  button.setAttribute('aria-label', label);
  button.setAttribute('aria-pressed', 'false');
  return button;
}

function mixerSlider(className, label, min, max, value) {
  const slider = document.createElement('input');
  slider.type = 'range';
  slider.className = className;
  slider.min = String(min);
  slider.max = String(max);
  slider.value = String(value);
  slider.setAttribute('aria-label', label);
  return slider;
}

function mixerRow(name) {
  const strip = mixer.strip(name);
  const row = document.createElement('li');
  row.className = 'mixer__row';
  row.dataset.name = name;
  const label = document.createElement('span');
  label.className = 'mixer__name';
  label.append(swatch(name), name);
  const volume = mixerSlider('mixer__volume', `Volume of ${name}`, 0, 100, Math.round(strip.volume * 100));
  const pan = mixerSlider('mixer__pan', `Pan of ${name}, left to right`, -100, 100, Math.round(strip.pan * 100));
  const mute = mixerToggle('mixer__mute', 'Mute', `Mute ${name}`);
  const solo = mixerToggle('mixer__solo', 'Solo', `Solo ${name}`);
  volume.addEventListener('input', () => mixer.set(name, { volume: Number(volume.value) / 100 }));
  pan.addEventListener('input', () => mixer.set(name, { pan: Number(pan.value) / 100 }));
  mute.addEventListener('click', () => {
    mixer.wake();
    mixer.set(name, { muted: !mixer.strip(name).muted });
    renderMixer();
  });
  solo.addEventListener('click', () => {
    mixer.wake();
    mixer.set(name, { solo: !mixer.strip(name).solo });
    renderMixer();
  });
  const volumeLabel = document.createElement('span');
  volumeLabel.className = 'mixer__label';
  volumeLabel.textContent = 'Vol';
  volumeLabel.setAttribute('aria-hidden', 'true');
  const panLabel = document.createElement('span');
  panLabel.className = 'mixer__label';
  panLabel.textContent = 'L–R';
  panLabel.setAttribute('aria-hidden', 'true');
  const instrument = document.createElement('select');
  instrument.className = 'mixer__instrument';
  instrument.setAttribute('aria-label', `Instrument of ${name} on this page`);
  instrument.append(new Option('', ''), ...programOptions());
  instrument.value = strip.override === null ? '' : String(strip.override);
  instrument.addEventListener('change', () => {
    mixer.wake();
    mixer.setOverride(name, instrument.value === '' ? null : Number(instrument.value));
  });
  row.append(label, volumeLabel, volume, panLabel, pan, mute, solo, instrument);
  refreshInstrumentRow(row);
  return row;
}

function programName(program) {
  return program === null ? 'Drums' : `${program + 1} ${GM_PROGRAMS[program]}`;
}

/** The 128 GM programs as the options of a select, valued by program number. */
function programOptions() {
  return GM_PROGRAMS.map((_, program) => new Option(programName(program), String(program)));
}

/** What a player sounds like here, for the row and for tests: renderer, programs, pedal, bend. */
function describeInstrument(name) {
  const strip = mixer.strips.get(name);
  if (!strip) return null;
  const instrument = strip.instrument;
  const described = {
    renderer: strip.renderer,
    override: strip.override,
    program: instrument ? instrument.program : strip.override ?? 0,
    playerProgram: instrument ? instrument.playerProgram : 0,
    notesStarted: instrument ? instrument.notesStarted : 0,
    voices: instrument ? instrument.renderer.voiceCount() : 0,
    held: instrument ? instrument.held.size : 0,
    sustained: instrument ? instrument.sustained.size : 0,
    channel: instrument ? instrument.lastChannel : 0,
  };
  described.name = described.program === null ? 'Drums' : GM_PROGRAMS[described.program];
  if (instrument && instrument.renderer.kind === 'soundfont') {
    // Read back from the synthesizer's own thread: what it was told, not what the page meant.
    const channel = instrument.renderer.synth.midiChannels[described.channel];
    described.synth = {
      program: channel.patch.program,
      isDrum: channel.patch.isDrum,
      pitchWheel: channel.midiParameters.pitchWheel,
      voices: channel.voiceCount,
    };
  }
  return described;
}

/** The row's instrument select: the player's own program as its first choice, kept current. */
function refreshInstrumentRow(row) {
  const name = row.dataset.name;
  const described = describeInstrument(name);
  if (!described) return;
  const select = row.querySelector('.mixer__instrument');
  select.options[0].textContent = `As played: ${programName(described.playerProgram)}`;
  const wanted = described.override === null ? '' : String(described.override);
  if (select.value !== wanted) select.value = wanted;
  row.dataset.program = described.program === null ? 'drums' : String(described.program);
  row.dataset.renderer = described.renderer || 'none';
}

function onInstrumentChange(name) {
  if (name === null) refreshInstrumentStatus();
  for (const row of document.querySelectorAll('#mixer .mixer__row')) {
    if (name === null || row.dataset.name === name) refreshInstrumentRow(row);
  }
}

function refreshInstrumentStatus() {
  const status = $('#instrument-status');
  const renderer = mixer.renderer;
  status.dataset.renderer = renderer;
  if (renderer === 'soundfont') status.textContent = 'Instruments: General MIDI SoundFont.';
  else if (renderer === 'synth') status.textContent = `Instruments: the page's simple synth (${mixer.fallbackReason}).`;
  else status.textContent = 'Instruments: loading the General MIDI sounds…';
}

/** One row per player, kept (with its focus and settings) while the player stays. */
function renderMixer() {
  const list = $('#mixer');
  const names = state.members.map((member) => member.name);
  const rows = new Map([...list.children].map((row) => [row.dataset.name, row]));
  const ordered = names.map((name) => rows.get(name) || mixerRow(name));
  for (const [name, row] of rows) if (!names.includes(name)) row.remove();
  ordered.forEach((row, index) => {
    if (list.children[index] !== row) list.insertBefore(row, list.children[index] || null);
    const strip = mixer.strip(row.dataset.name);
    row.querySelector('.swatch').dataset.slot = String(colourSlot(row.dataset.name));
    row.querySelector('.mixer__mute').setAttribute('aria-pressed', String(strip.muted));
    row.querySelector('.mixer__solo').setAttribute('aria-pressed', String(strip.solo));
    row.classList.toggle('mixer__row--silent', !strip.audible);
    refreshInstrumentRow(row);
  });
}

function setMembers(members) {
  state.members = members;
  assignColours(members);
  mixer.keepOnly(members.map((member) => member.name));
  renderMembers();
}

function onMembers(message) {
  // A newcomer has not heard the Program Change this player sent before: send it again.
  if (message.change === 'join' && message.member && state.me && message.member.id !== state.me.id) {
    sendProgram();
  }
  if (message.change === 'leave' && message.member) {
    // The gateway sends note-offs for a leaver's notes; this only guards the display.
    const prefix = `${message.member.id}|`;
    stopRemoteNotes((noteKey) => noteKey.startsWith(prefix));
  }
  setMembers(Array.isArray(message.members) ? message.members : []);
  // A latency update changes nobody's presence: the status (and what it said about notes
  // not sent while reconnecting) stays as it is.
  if (state.phase === 'joined' && message.change !== 'update') setStatus(joinedStatus());
}

function onJoined(message) {
  if (!state.wantJoined) return;
  const unsent = state.unsentNotes;
  state.me = message.member;
  state.mirror = Boolean(message.mirror);
  state.session = message.session || state.session;
  state.retryAttempt = 0;
  state.lostReason = null;
  state.unsentNotes = 0;
  state.joinedSinceSubmit = true;
  showError('');
  setMembers(message.members || []);
  setPhase('joined');
  renderKeyboard();
  if (SHORT_LANDSCAPE.matches) $('#keyboard').scrollIntoView({ block: 'nearest' });
  setStatus(unsent
    ? `${joinedStatus()}. ${plural(unsent, 'note')} you played while disconnected ${unsent === 1 ? 'was' : 'were'} not sent.`
    : joinedStatus());
  refreshInvite();
  sendProgram();
  startPinging();
}

/* ---------------------------------------------------------------- this player's instrument */

/** This player's chosen program, as a Program Change on their channel (none if never chosen). */
function sendProgram() {
  if (state.program === null) return;
  const bytes = [0xc0 | state.channel, state.program];
  if (state.phase === 'joined') send({ type: 'midi', data: bytes });
  mixer.midi(myName(), bytes);
}

function setSustain(down) {
  if (state.sustain === down) return;
  state.sustain = down;
  const pedal = $('#sustain');
  pedal.setAttribute('aria-pressed', String(down));
  pedal.textContent = down ? 'Pedal down' : 'Pedal up';
  if (playable()) playLocally([0xb0 | state.channel, 64, down ? 127 : 0]);
}

function setBend(value) {
  const bend = Math.max(0, Math.min(16383, Math.round(value)));
  if (bend === state.bend) return;
  state.bend = bend;
  const slider = $('#bend');
  if (Number(slider.value) !== bend) slider.value = String(bend);
  if (playable()) playLocally([0xe0 | state.channel, bend & 0x7f, bend >> 7]);
}

function setUpInstrument() {
  const select = $('#instrument');
  select.append(...programOptions());
  const stored = remembered('program');
  if (stored !== null && /^\d+$/.test(stored) && Number(stored) < 128) {
    state.program = Number(stored);
    select.value = stored;
  }
  select.addEventListener('change', () => {
    mixer.wake();
    state.program = Number(select.value);
    remember('program', select.value);
    sendProgram();
  });
  $('#sustain').addEventListener('click', () => {
    mixer.wake();
    setSustain(!state.sustain);
  });
  // A wheel that springs back to the middle when let go, as a keyboard's does.
  const bend = $('#bend');
  bend.addEventListener('input', () => setBend(Number(bend.value)));
  for (const end of ['pointerup', 'pointercancel', 'keyup', 'blur']) {
    bend.addEventListener(end, () => setBend(8192));
  }
  mixer.onChange = onInstrumentChange;
  mixer.bank.ready.then(refreshInstrumentStatus);
  refreshInstrumentStatus();
}

function onServerError(message) {
  const text = errorText(message.code, message.message);
  if (state.phase === 'joining' && JOIN_ERROR_CODES.has(message.code)) {
    if (message.code === 'name_taken' && reconnecting()) {
      // Our previous connection may still be listed until the gateway notices it is gone.
      scheduleRetry('your previous connection is still in the session');
      return;
    }
    showError(text);
    // The gateway keeps the socket open after a refused join so the user can correct and retry.
    state.wantJoined = false;
    state.joinedSinceSubmit = false;
    clearSessionView();
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
    case 'recording': onRecording(message); break;
    case 'error': onServerError(message); break;
    default: break;
  }
}

/* ---------------------------------------------------------------- recording */

function setRecording(on, status) {
  state.recording = on;
  const toggle = $('#record-toggle');
  toggle.textContent = on ? 'Stop recording' : 'Record';
  toggle.setAttribute('aria-pressed', String(on));
  if (status) $('#record-status').textContent = status;
}

function toggleRecording() {
  if (state.phase !== 'joined') return;
  send({ type: 'record', action: state.recording ? 'stop' : 'start' });
}

function onRecording(message) {
  if (message.state === 'on') {
    $('#record-download').hidden = true;
    setRecording(true, 'Recording what you hear and play…');
    return;
  }
  const link = $('#record-download');
  link.href = new URL(message.url, sessionsUrl(socketServer)).href;
  link.download = `${state.session || 'session'}.mid`;
  link.hidden = false;
  const players = message.players.length ? ` from ${message.players.join(', ')}` : '';
  setRecording(false, `Recorded ${plural(message.events, 'MIDI message')}${players}. `
    + 'The gateway keeps the file for ten minutes.');
}

/** A recording lives in the connection: one that ends takes it along. */
function recordingLost() {
  if (state.recording) setRecording(false, 'The recording stopped when the connection ended.');
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
  if (!reconnecting()) setStatus(`Joining “${state.session}”…`);
  send({ type: 'join', session: state.session, passphrase, name: state.name, midi: 'json' });
}

/** What belonged to the connection: its pings and the notes others were sounding. */
function dropConnectionState() {
  recordingLost();
  stopPinging();
  state.rttMs = null;
  $('#rtt').textContent = '–';
  stopRemoteNotes(() => true);
}

/** Everything of the session, once the player is out of it for good. */
function clearSessionView() {
  dropConnectionState();
  state.me = null;
  state.unsentNotes = 0;
  state.lostReason = null;
  setMembers([]);
}

function connect() {
  setPhase('connecting');
  if (!reconnecting()) setStatus(`Connecting to ${state.server}…`);
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
  dropConnectionState();
  if (!state.wantJoined) {
    clearSessionView();
    setPhase('idle');
    setStatus('Not connected');
    return;
  }
  if (CLOSE_CODES_WITHOUT_RETRY.has(event.code)) {
    state.wantJoined = false;
    state.joinedSinceSubmit = false;
    releaseHeldKeysAndPointers();
    clearSessionView();
    setPhase('idle');
    setStatus(`Disconnected: ${closeReason(event.code)}.`);
    return;
  }
  scheduleRetry(closeReason(event.code));
}

/**
 * Tries again after the next delay: joins on the open socket, else connects anew. The
 * status says once why (the first reason of this outage); only the countdown beside it,
 * outside the live region, changes every second.
 */
function scheduleRetry(reason) {
  clearTimeout(retryTimer); // one countdown at a time, whatever asked for this one
  if (state.lostReason === null) state.lostReason = reason;
  const delay = RETRY_DELAYS_S[Math.min(state.retryAttempt, RETRY_DELAYS_S.length - 1)];
  state.retryAttempt += 1;
  const attempt = state.retryAttempt;
  setPhase('retrying');
  const status = state.joinedSinceSubmit
    ? `Connection lost (${state.lostReason}). Reconnecting…`
    : `Cannot reach ${state.server} (${state.lostReason}). Trying again…`;
  let remaining = delay;
  const tick = () => {
    if (remaining <= 0) {
      retryTimer = null;
      $('#status-detail').textContent = `attempt ${attempt + 1}…`;
      if (socket && socket.readyState === WebSocket.OPEN) sendJoin();
      else connect();
      return;
    }
    setStatus(status, `next attempt in ${remaining} s`);
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
  mixer.wake();
  showError('');
  readForm();
  state.wantJoined = true;
  state.joinedSinceSubmit = false;
  state.retryAttempt = 0;
  state.lostReason = null;
  state.unsentNotes = 0;
  if (socket && socket.readyState === WebSocket.OPEN && socketServer === state.server) {
    sendJoin();
    return;
  }
  if (socket) socket.close(1000);
  connect();
}

function leave() {
  state.wantJoined = false;
  state.joinedSinceSubmit = false;
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
  loadPublicSessions();
}

/* ---------------------------------------------------------------- public sessions and invites */

/** The gateway's GET /sessions beside its WebSocket endpoint (ws://HOST/ws -> http://HOST/sessions). */
function sessionsUrl(server) {
  const url = new URL('sessions', server);
  url.protocol = url.protocol === 'wss:' || url.protocol === 'https:' ? 'https:' : 'http:';
  url.search = '';
  url.hash = '';
  return url.href;
}

function describePublicSession(session) {
  if (session.mirror) return 'plays back what you play';
  const players = plural(session.players, 'player');
  return session.players >= session.max_players ? `${players}, full` : players;
}

function renderPublicSessions() {
  const sessions = state.publicSessions;
  $('#session-suggestions').replaceChildren(...sessions.map((session) => new Option(session.name, session.name)));
  $('#public-list').replaceChildren(...sessions.map((session) => {
    const item = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'button public__session';
    button.dataset.session = session.name;
    button.disabled = state.phase !== 'idle';
    const name = document.createElement('span');
    name.className = 'public__name';
    name.textContent = session.name;
    const about = document.createElement('span');
    about.className = 'public__about';
    about.textContent = describePublicSession(session);
    button.append(name, about);
    button.addEventListener('click', () => pickSession(session.name));
    item.append(button);
    return item;
  }));
  $('#public-sessions').hidden = sessions.length === 0;
  const mirror = sessions.find((session) => session.mirror);
  $('#mirror-hint').hidden = !mirror;
  if (mirror) $('#try-mirror').textContent = mirror.name;
  const field = $('#session');
  if (!field.value && sessions.length) field.value = sessions.find((session) => !session.mirror)?.name || sessions[0].name;
}

function pickSession(name) {
  $('#session').value = name;
  $('#passphrase').focus();
}

async function loadPublicSessions() {
  let url;
  try {
    url = sessionsUrl($('#server').value.trim());
  } catch {
    state.publicSessions = [];
    renderPublicSessions();
    return;
  }
  try {
    const response = await fetch(url, { cache: 'no-store' });
    const body = response.ok ? await response.json() : { sessions: [] };
    state.publicSessions = Array.isArray(body.sessions) ? body.sessions : [];
  } catch {
    state.publicSessions = []; // an older gateway, or another one that does not list its sessions
  }
  renderPublicSessions();
}

function currentInviteLink() {
  return inviteLink(location.href, {
    server: state.server,
    defaultServer: defaultServerUrl(),
    session: state.session,
    passphrase: $('#invite-passphrase').checked ? passphrase : null,
  });
}

function refreshInvite() {
  $('#invite-link').value = state.session ? currentInviteLink() : '';
  $('#invite-status').textContent = '';
}

async function copyInvite() {
  refreshInvite();
  const field = $('#invite-link');
  const withPassphrase = $('#invite-passphrase').checked;
  try {
    await navigator.clipboard.writeText(field.value);
    $('#invite-status').textContent = withPassphrase
      ? 'Invite link copied, with the passphrase.' : 'Invite link copied (without the passphrase).';
  } catch {
    field.select();
    $('#invite-status').textContent = 'The browser did not let the page copy: the link is selected, copy it from the field.';
  }
}

/** Fills the join form from an invite link, then takes the passphrase out of the address bar. */
function acceptInvite() {
  const invite = readInvite(location.hash);
  if (!invite.session) return false;
  if (invite.server) $('#server').value = invite.server;
  $('#session').value = invite.session;
  if (invite.passphrase) $('#passphrase').value = invite.passphrase;
  // Out of the history and of any link copied from the address bar.
  history.replaceState(null, '', location.pathname + location.search);
  return true;
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
  // Heard here once, on this player's strip: the device's notes, pedal, bend and programs.
  if (bytes[0] >= 0x80 && bytes[0] < 0xf0) playLocally(bytes);
  else sendMidi(bytes);
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
  const invited = acceptInvite();
  if (!invited) $('#session').value = remembered('session') || '';
  $('#name').value = remembered('name') || '';
  if (invited) {
    $('#name').focus();
    // Another gateway than this page's is said out loud: the passphrase typed goes there.
    const server = $('#server').value;
    const where = server === defaultServerUrl() ? '' : ` on ${server}`;
    setStatus(`Invited to “${$('#session').value}”${where}: enter your name and press Join.`);
  }
  $('#join-form').addEventListener('submit', onJoinSubmit);
  $('#leave').addEventListener('click', leave);
  $('#try-mirror').addEventListener('click', () => pickSession($('#try-mirror').textContent));
  $('#server').addEventListener('change', loadPublicSessions);
  $('#invite-passphrase').addEventListener('change', refreshInvite);
  $('#invite-copy').addEventListener('click', copyInvite);
  $('#record-toggle').addEventListener('click', toggleRecording);
  loadPublicSessions();
}

function setUpControls() {
  const channelSelect = $('#channel');
  for (let channel = 0; channel < 16; channel += 1) {
    channelSelect.append(new Option(String(channel + 1), String(channel)));
  }
  channelSelect.addEventListener('change', () => {
    state.channel = Number(channelSelect.value);
    sendProgram(); // the chosen instrument follows the player to the new channel
  });
  const velocity = $('#velocity');
  velocity.addEventListener('input', () => {
    state.velocity = Number(velocity.value);
    $('#velocity-value').textContent = velocity.value;
  });
  $('#octave-down').addEventListener('click', () => shiftOctave(-1));
  $('#octave-up').addEventListener('click', () => shiftOctave(1));
  const mute = $('#mute');
  mute.addEventListener('click', () => {
    mixer.wake();
    mixer.setMasterMuted(!mixer.masterMuted);
    mute.setAttribute('aria-pressed', String(mixer.masterMuted));
    mute.textContent = mixer.masterMuted ? 'Muted' : 'Sound on';
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
  keyboard.addEventListener('keydown', onPianoKeyDown);
  keyboard.addEventListener('contextmenu', (event) => event.preventDefault());
  window.addEventListener('pointerup', onPointerEnd);
  window.addEventListener('pointercancel', onPointerEnd);
  window.addEventListener('keydown', onKeyDown);
  window.addEventListener('keyup', onKeyUp);
  // Without this, switching tabs mid-chord leaves notes sounding for everyone.
  window.addEventListener('blur', releaseHeldKeysAndPointers);
  NARROW_SCREEN.addEventListener('change', () => {
    releaseHeldKeysAndPointers();
    renderKeyboard();
  });
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
      mixer.wake(); // the Listen click is a user gesture
      return mixer.context;
    },
    joined: () => (state.phase === 'joined' || reconnecting()) && state.session
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
setUpInstrument();
setPhase('idle');
midiDevices.offer();
