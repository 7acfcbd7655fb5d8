// Test driver for the npm package `rtpmidi` 1.0.0: one AppleMIDI session.
//
//   node rtpmidi_peer.js PORT NAME
//
// Commands, one JSON object per stdin line:
//   {"cmd": "connect", "host": "127.0.0.1", "port": 5004}   invite a peer
//   {"cmd": "send", "data": [144, 60, 100]}                    send MIDI to every stream
//   {"cmd": "end"}                                             BY to every peer, then exit
// Reports, one JSON object per stdout line, each prefixed with MARK because
// the package logs to stdout too:
//   ready, joined {name, synced}, synced {name}, left {name}, midi {data, t}, ended,
//   error {message}

const readline = require('readline');
const Session = require('rtpmidi/src/Session');
const logger = require('rtpmidi/src/logger');

const MARK = 'RTPMIDI-PEER ';
const port = Number(process.argv[2]);
const name = process.argv[3] || 'node peer';

logger.silent = !process.env.RTPMIDI_PEER_VERBOSE;

function report(event, fields) {
  process.stdout.write(`${MARK}${JSON.stringify({ event, ...fields })}\n`);
}

const session = new Session(port, name, name, undefined, false, 4);
session.on('error', (error) => report('error', { message: String(error) }));
session.on('ready', () => report('ready', { port }));
// t: when it arrived, in seconds on this process's monotonic clock (for timing tests).
session.on('message', (deltaSeconds, bytes) => report('midi', {
  data: Array.from(bytes), t: Number(process.hrtime.bigint()) / 1e9,
}));
session.on('streamAdded', ({ stream }) => {
  // The package sends nothing until the stream has finished a CK exchange of
  // its own; report that moment so tests know when sending works.
  const waitForSync = setInterval(() => {
    if (stream.latency !== null && stream.timeDifference !== null) {
      clearInterval(waitForSync);
      report('synced', { name: stream.name });
    }
  }, 20);
  stream.on('disconnected', () => clearInterval(waitForSync));
  report('joined', { name: stream.name });
});
session.on('streamRemoved', ({ stream }) => report('left', { name: stream.name }));

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let command;
  try {
    command = JSON.parse(line);
  } catch (error) {
    report('error', { message: `not JSON: ${line}` });
    return;
  }
  if (command.cmd === 'connect') {
    session.connect({ address: command.host, port: command.port });
  } else if (command.cmd === 'send') {
    // Only this two-argument form with an Array works in 1.0.0.
    session.sendMessage(0, command.data);
  } else if (command.cmd === 'end') {
    session.end(() => {
      report('ended', {});
      process.exit(0);
    });
  } else {
    report('error', { message: `unknown command ${command.cmd}` });
  }
});

session.start();
