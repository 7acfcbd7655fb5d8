// The jam page's live stream listener: plays the audio a performer publishes to the
// gateway (RTMP in, HTTP-FLV or FLV over WebSocket out) next to the keyboard.
//
// mpegts.js (vendor/, see vendor/README.md) demuxes the FLV into MSE; the <audio>
// element it feeds goes through the page's AudioContext (createMediaElementSource), so
// an AnalyserNode sees the signal and a GainNode sets the volume.

export const MPEGTS_VERSION = '1.8.2';
const MPEGTS_SRC = new URL('./vendor/mpegts.js', import.meta.url).href;
export const DEFAULT_STREAM = 'live';
// Seconds before each new try while no one publishes or the stream cannot be reached.
const RETRY_DELAYS_S = [3, 3, 5, 10];
const TICK_MS = 250;
// RMS above which a stream counts as sounding (a -40 dBFS signal is 0.01).
const SIGNAL_RMS = 0.01;
const LOG_LIMIT = 50;

/**
 * The URL of a live stream, built in this one place.
 *
 * `server` is the WebSocket URL the page joined through (ws://HOST:PORT/ws); the stream
 * is on the same gateway's web site: http(s)://HOST:PORT/live/SESSION/STREAM.flv
 * ?passphrase=PASSPHRASE, or ws(s)://… with `transport` 'websocket'.
 *
 * `template` (the page's `?live_url=` parameter, for tests and debugging) replaces the
 * gateway's URL: `{session}` and `{stream}` in it are filled in, and a relative one is
 * taken from the gateway. The passphrase is only ever added for the gateway's own host,
 * so a crafted link cannot send it elsewhere.
 */
export function liveStreamUrl({ server, session, stream, passphrase, transport = 'http', template = '' }) {
  const gateway = new URL(server);
  gateway.protocol = gateway.protocol === 'wss:' || gateway.protocol === 'https:' ? 'https:' : 'http:';
  const part = (text) => encodeURIComponent(text);
  const url = template
    ? new URL(template.replaceAll('{session}', part(session)).replaceAll('{stream}', part(stream)), gateway)
    : new URL(`/live/${part(session)}/${part(stream)}.flv`, gateway);
  if (url.host === gateway.host) {
    // %20, not URLSearchParams's '+', so that any query parser reads spaces back.
    url.searchParams.delete('passphrase');
    const query = url.search.replace(/^\?/, '');
    url.search = `${query ? `${query}&` : ''}passphrase=${part(passphrase)}`;
  }
  if (transport === 'websocket') {
    if (url.protocol === 'http:') url.protocol = 'ws:';
    else if (url.protocol === 'https:') url.protocol = 'wss:';
  }
  return url.href;
}

let mpegtsLoading = null;

/** Loads vendor/mpegts.js once (a UMD bundle: a classic script that sets window.mpegts). */
function loadMpegts() {
  if (window.mpegts) return Promise.resolve(window.mpegts);
  if (!mpegtsLoading) {
    mpegtsLoading = new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = MPEGTS_SRC;
      script.addEventListener('load', () => {
        if (!window.mpegts) {
          reject(new Error('vendor/mpegts.js loaded but defined no player'));
          return;
        }
        quietLogging(window.mpegts);
        resolve(window.mpegts);
      });
      script.addEventListener('error', () => {
        mpegtsLoading = null;
        script.remove();
        reject(new Error('could not load the stream player (vendor/mpegts.js)'));
      });
      document.head.append(script);
    });
  }
  return mpegtsLoading;
}

const playerLog = [];

/** mpegts.js logs every refused request with console.error; the status line says it instead. */
function quietLogging(mpegts) {
  const control = mpegts.LoggingControl;
  control.applyConfig({
    ...control.getConfig(),
    enableVerbose: false, enableDebug: false, enableInfo: false, enableWarn: false,
    enableError: false, enableCallback: true,
  });
  control.addLogListener((level, text) => {
    if (level !== 'error' && level !== 'warn') return;
    playerLog.push(`${level}: ${text}`);
    if (playerLog.length > LOG_LIMIT) playerLog.shift();
  });
}

function rms(analyser, buffer) {
  analyser.getFloatTimeDomainData(buffer);
  let sum = 0;
  for (const sample of buffer) sum += sample * sample;
  return Math.sqrt(sum / buffer.length);
}

/**
 * One live stream listener. `elements`: the page's controls; `context()` returns the
 * page's AudioContext (woken by the click that starts listening) or null; `joined()`
 * returns {server, session, passphrase} of the session the page is in.
 */
export class LiveListener {
  constructor({ elements, context, joined, template = '', transport = 'http', remember, remembered }) {
    this.el = elements;
    this.context = context;
    this.joined = joined;
    this.template = template;
    this.transport = transport;
    this.remember = remember;
    this.phase = 'idle'; // idle | loading | connecting | playing | waiting | failed
    this.wanted = false;
    this.player = null;
    this.url = '';
    this.stream = '';
    this.graph = null;
    this.retryTimer = null;
    this.tickTimer = null;
    this.gotMedia = false;
    this.retries = 0;
    this.generation = 0; // bumped by every teardown, so a late start() knows it is stale
    this.timings = {};

    const { form, stream, toggle, volume, media } = this.el;
    stream.value = remembered('liveStream') || DEFAULT_STREAM;
    const volumeValue = Number(remembered('liveVolume'));
    if (remembered('liveVolume') !== null && volumeValue >= 0 && volumeValue <= 100) volume.value = String(volumeValue);
    toggle.addEventListener('click', () => (this.wanted ? this.stop() : this.listen()));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.listen();
    });
    volume.addEventListener('input', () => {
      this.applyVolume();
      this.remember('liveVolume', volume.value);
    });
    media.addEventListener('playing', () => this.onPlaying());
    media.addEventListener('waiting', () => {
      if (this.phase === 'playing') this.setStatus('Buffering…');
    });
    this.render();
  }

  /* ------------------------------------------------------------ for tests and the page */

  mediaTime() {
    return this.player ? this.el.media.currentTime : 0;
  }

  /** RMS of the stream as it arrives (before the volume), 0 when nothing plays. */
  level() {
    return this.graph && this.player ? rms(this.graph.input, this.graph.buffer) : 0;
  }

  /** RMS of what the page plays out (after the volume). */
  outputLevel() {
    return this.graph && this.player ? rms(this.graph.output, this.graph.buffer) : 0;
  }

  /** Seconds of audio buffered ahead of the playhead: how far behind live the page plays. */
  behind() {
    const { buffered, currentTime } = this.el.media;
    if (!this.player || buffered.length === 0) return 0;
    return Math.max(0, buffered.end(buffered.length - 1) - currentTime);
  }

  get log() {
    return [...playerLog];
  }

  /* ------------------------------------------------------------ listening */

  /** From a click or Enter: starts (or restarts with a new stream name) listening. */
  listen() {
    const stream = this.el.stream.value.trim();
    if (!stream) {
      this.setStatus('Name the stream to listen to (the performer publishes to “live” unless told otherwise).');
      this.el.stream.focus();
      return;
    }
    if (this.wanted && stream === this.stream && this.phase !== 'failed') return;
    this.teardown();
    this.wanted = true;
    this.stream = stream;
    this.remember('liveStream', stream === DEFAULT_STREAM ? null : stream);
    this.timings = { listen: performance.now() };
    this.retries = 0;
    this.connectGraph();
    this.start();
  }

  /** Stops listening; `text` replaces the status line. */
  stop(text = 'Stopped.') {
    this.wanted = false;
    this.teardown();
    this.phase = 'idle';
    this.setStatus(text);
    this.render();
  }

  connectGraph() {
    if (this.graph) return;
    const context = this.context();
    if (!context) return; // no Web Audio: the element plays by itself, its volume set directly
    const source = context.createMediaElementSource(this.el.media);
    const input = context.createAnalyser();
    const gain = context.createGain();
    const output = context.createAnalyser();
    input.fftSize = 2048;
    output.fftSize = 2048;
    source.connect(input);
    input.connect(gain);
    gain.connect(output);
    output.connect(context.destination);
    this.graph = { context, input, gain, output, buffer: new Float32Array(input.fftSize) };
    this.applyVolume();
  }

  applyVolume() {
    const fraction = Number(this.el.volume.value) / 100;
    const gain = fraction * fraction; // closer to how loud it sounds than a linear slider
    if (this.graph) {
      this.graph.gain.gain.setTargetAtTime(gain, this.graph.context.currentTime, 0.02);
      this.el.media.volume = 1;
    } else {
      this.el.media.volume = gain;
    }
    this.el.volume.setAttribute('aria-valuetext', `${this.el.volume.value} percent`);
  }

  async start() {
    this.retryTimer = null;
    const generation = this.generation;
    const joined = this.joined();
    if (!joined) {
      this.stop('Join a session to listen to its stream.');
      return;
    }
    try {
      this.url = liveStreamUrl({ ...joined, stream: this.stream, transport: this.transport, template: this.template });
    } catch {
      this.stop('Cannot build the stream address from the server address.');
      return;
    }
    this.phase = 'loading';
    this.setStatus('Loading the stream player…');
    this.render();
    let mpegts;
    try {
      mpegts = await loadMpegts();
    } catch (error) {
      if (this.wanted && generation === this.generation) this.fail(`Cannot listen: ${error.message}.`);
      return;
    }
    if (!this.wanted || generation !== this.generation) return;
    if (!mpegts.getFeatureList().mseLivePlayback) {
      this.fail('This browser cannot play live streams (it lacks Media Source Extensions or streaming fetch).');
      return;
    }
    this.phase = 'connecting';
    this.gotMedia = false;
    this.setStatus(`Connecting to “${this.stream}”…`);
    this.render();
    const player = mpegts.createPlayer(
      { type: 'flv', isLive: true, url: this.url, hasAudio: true, hasVideo: false },
      {
        enableWorker: false,
        enableStashBuffer: false, // hand data to MSE as it arrives: lower latency
        lazyLoad: false,
        autoCleanupSourceBuffer: true, // the stream never ends: drop what was played
        liveSync: true, // play a little faster (pitch kept) to catch up, no jumps
        liveSyncMaxLatency: 1.5,
        liveSyncTargetLatency: 0.8,
        liveSyncPlaybackRate: 1.1,
        liveBufferLatencyChasing: true, // jump only when far behind
        liveBufferLatencyMaxLatency: 5,
        liveBufferLatencyMinRemain: 0.8,
      },
    );
    this.player = player;
    const mine = (handler) => (...args) => { if (this.player === player) handler(...args); };
    player.on(mpegts.Events.ERROR, mine((type, detail, info) => this.onPlayerError(mpegts, type, detail, info)));
    player.on(mpegts.Events.LOADING_COMPLETE, mine(() => this.onStreamEnded()));
    player.on(mpegts.Events.MEDIA_INFO, mine(() => { this.gotMedia = true; }));
    player.attachMediaElement(this.el.media);
    player.load();
    const playing = player.play();
    if (playing && playing.catch) {
      playing.catch(mine((error) => {
        // AbortError: torn down before it played; NotAllowedError: autoplay refused.
        if (error && error.name === 'NotAllowedError') this.fail('The browser did not let the stream play: click Listen again.');
      }));
    }
    this.startTicking();
  }

  onPlaying() {
    if (!this.player) return;
    if (this.timings.playing === undefined) this.timings.playing = performance.now();
    this.phase = 'playing';
    this.setStatus(`Playing “${this.stream}”.`);
    this.render();
  }

  onPlayerError(mpegts, type, detail, info) {
    const { ErrorTypes, ErrorDetails } = mpegts;
    const code = info && info.code;
    if (type === ErrorTypes.NETWORK_ERROR && detail === ErrorDetails.NETWORK_STATUS_CODE_INVALID) {
      if (code === 403) {
        this.fail('Wrong passphrase for this session’s stream.');
      } else if (code === 429) {
        this.fail('The gateway refuses this address for a while after wrong passphrases. Try again later.');
      } else if (code === 404) {
        this.retry(`No one is publishing “${this.stream}” in this session yet.`);
      } else {
        this.retry(`The gateway answered ${code}${info.msg ? ` ${info.msg}` : ''}.`);
      }
    } else if (type === ErrorTypes.NETWORK_ERROR) {
      // A WebSocket the gateway refuses (no one publishing, wrong passphrase) only fails.
      const refused = this.url.startsWith('ws') ? ' (or the gateway refused it: no one publishing yet?)' : '';
      this.retry(this.gotMedia ? 'The stream broke off.' : `Cannot reach the stream${refused}.`);
    } else if (detail === ErrorDetails.MEDIA_CODEC_UNSUPPORTED) {
      this.fail(`This browser cannot play the stream’s codec${info && info.msg ? ` (${info.msg})` : ''}.`);
    } else {
      this.fail(`The stream cannot be played${info && info.msg ? `: ${info.msg}` : ''}.`);
    }
  }

  onStreamEnded() {
    // A live stream only ends when the gateway ends it: the performer stopped publishing
    // (or, over WebSocket, the gateway refused the stream, which it can only say by closing).
    this.retry(this.gotMedia ? `“${this.stream}” ended: the performer stopped publishing.`
      : `The gateway closed “${this.stream}” before any audio (no one publishing yet?).`);
  }

  retry(reason) {
    this.retries = this.gotMedia ? 0 : this.retries + 1;
    this.teardown();
    if (!this.wanted) return;
    const delay = RETRY_DELAYS_S[Math.min(Math.max(this.retries - 1, 0), RETRY_DELAYS_S.length - 1)];
    this.phase = 'waiting';
    this.setStatus(`${reason} Trying again in ${delay} s…`);
    this.render();
    this.retryTimer = setTimeout(() => this.start(), delay * 1000);
  }

  fail(text) {
    this.teardown();
    this.wanted = false;
    this.phase = 'failed';
    this.setStatus(text);
    this.render();
  }

  teardown() {
    this.generation += 1;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.stopTicking();
    const player = this.player;
    this.player = null;
    if (player) {
      try {
        player.pause();
        player.unload();
        player.detachMediaElement();
        player.destroy();
      } catch {
        // A player that failed half-way may refuse some of these; it is dropped anyway.
      }
    }
    this.el.time.textContent = '–';
    this.el.level.value = 0;
  }

  /* ------------------------------------------------------------ display */

  startTicking() {
    this.stopTicking();
    this.tickTimer = setInterval(() => this.tick(), TICK_MS);
  }

  stopTicking() {
    clearInterval(this.tickTimer);
    this.tickTimer = null;
  }

  tick() {
    if (!this.player) return;
    const level = this.level();
    this.el.level.value = Math.min(1, level * 3);
    if (level > SIGNAL_RMS && this.timings.signal === undefined) this.timings.signal = performance.now();
    if (this.phase === 'playing') {
      this.el.time.textContent = `${this.mediaTime().toFixed(1)} s, ${this.behind().toFixed(1)} s behind live`;
    }
  }

  setStatus(text) {
    this.el.status.textContent = text;
  }

  render() {
    const active = this.wanted;
    this.el.toggle.textContent = active ? 'Stop' : 'Listen';
    this.el.toggle.classList.toggle('button--active', active);
    this.el.root.dataset.phase = this.phase;
  }
}
