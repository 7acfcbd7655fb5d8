"""Structured logging on twisted.logger with a configurable level.

Every gateway module logs through :func:`logger`, whose events pass one
shared level filter, so ``logging.level`` in the config applies to the whole
gateway without touching twistd's own observers.
"""

from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
                            Logger, globalLogPublisher, textFileLogObserver)
from twisted.python.logfile import LogFile

_level_filter = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_level_filter])


def logger(namespace):
    return Logger(namespace=namespace, observer=_observer)


def set_level(name):
    _level_filter.defaultLogLevel = LogLevel.levelWithName(name)


def write_to_file(path, rotate_bytes, max_files):
    """Write every log event, Twisted's and the gateway's, to ``path`` (``logging.file``).

    The lines are twistd's, so the fail2ban filter reads either. The file is
    rotated at ``rotate_bytes`` to ``path.1``, ``path.2``, ... and only
    ``max_files`` rotated files are kept: twistd's own ``--logfile`` keeps
    every one. Raises OSError when the file cannot be opened.
    """
    logfile = LogFile.fromFullPath(path, rotateLength=rotate_bytes, maxRotatedFiles=max_files)
    globalLogPublisher.addObserver(textFileLogObserver(logfile))
    return logfile


class DropLog:
    """Logs dropped or refused input at most once per key (peer) per interval, and at most
    ``max_lines`` first lines per interval in all.

    The first drop from a peer is logged at once; later ones within the
    interval are only counted, and when the interval ends a summary line
    (the last drop's text with "N more like this not logged") says how many,
    so a flood that stops leaves its count in the log too. A flood from more
    peers than ``max_lines`` an interval (addresses walked, or spoofed) gets
    its first ``max_lines`` lines and one line saying how many peers' lines
    were left out. ``clock`` is the reactor (or a task.Clock) that times the
    summaries.
    """

    def __init__(self, log, interval, clock, max_keys=4096, max_lines=50):
        self.log = log
        self.interval = interval
        self.clock = clock
        self.max_keys = max_keys
        self.max_lines = max_lines
        self._last = {}        # key -> [time logged, drops suppressed since, text, fields]
        self._lines = []       # times of the first lines logged in the last interval
        self._left_out = 0     # first lines not logged for want of room, since the summary

    def dropped(self, key, now, text, **fields):
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.interval:
            if not entry[1]:
                self.clock.callLater(entry[0] + self.interval - now, self._summarise, key)
            entry[1] += 1
            entry[2], entry[3] = text, fields
            return
        if not self._room(now):
            if not self._left_out:
                self.clock.callLater(self.interval, self._summarise_left_out)
            self._left_out += 1
            return
        if len(self._last) >= self.max_keys:
            # Forget the quiet ones; those still counting have a summary coming.
            self._last = {key: entry for key, entry in self._last.items() if entry[1]}
        self._last[key] = [now, 0, text, fields]
        self.log.warn(text, **fields)

    def _room(self, now):
        lines = self._lines
        while lines and now - lines[0] >= self.interval:
            lines.pop(0)
        if len(lines) >= self.max_lines:
            return False
        lines.append(now)
        return True

    def _summarise(self, key):
        entry = self._last.get(key)
        if entry is None or not entry[1]:
            return
        _, suppressed, text, fields = entry
        self._last[key] = [self.clock.seconds(), 0, text, fields]
        self.log.warn(text + " ({suppressed} more like this not logged)",
                      suppressed=suppressed, **fields)

    def _summarise_left_out(self):
        left_out, self._left_out = self._left_out, 0
        self.log.warn("netgateway: {left_out} more drops or refusals from other peers not"
                      " logged (more than {max_lines} peers in {interval} s)",
                      left_out=left_out, max_lines=self.max_lines, interval=self.interval)


class BoundedLogger(Logger):
    """A Logger for a library's own per-connection and per-request messages (twisted.web's
    "Timing out client", its HEAD warnings): each message, by its format, at most once per
    interval through a :class:`DropLog`, then one summary. Errors pass unbounded."""

    def __init__(self, namespace, drop_log):
        super().__init__(namespace=namespace, observer=_observer)
        self.drop_log = drop_log

    def __get__(self, instance, owner=None):
        # Logger is a descriptor that makes a logger per instance; this one is
        # shared on purpose, with its bound.
        return self

    def emit(self, level, format=None, **kwargs):
        if level >= LogLevel.error:
            super().emit(level, format, **kwargs)
            return
        self.drop_log.dropped((self.namespace, format), self.drop_log.clock.seconds(),
                              self.namespace + ": " + (format or ""), **kwargs)
