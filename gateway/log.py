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
    """Logs dropped or refused input at most once per key (peer) per interval.

    The first drop from a peer is logged at once; later ones within the
    interval are only counted, and the count is reported with the next line.
    """

    def __init__(self, log, interval, max_keys=4096):
        self.log = log
        self.interval = interval
        self.max_keys = max_keys
        self._last = {}        # key -> (time logged, drops suppressed since)

    def dropped(self, key, now, text, **fields):
        logged_at, suppressed = self._last.get(key, (None, 0))
        if logged_at is not None and now - logged_at < self.interval:
            self._last[key] = (logged_at, suppressed + 1)
            return
        if len(self._last) >= self.max_keys:
            self._last.clear()
        self._last[key] = (now, 0)
        if suppressed:
            text += " ({suppressed} similar not logged)"
        self.log.warn(text, suppressed=suppressed, **fields)
