"""Exponential back-off for failed joins, per source address and session.

A source may fail a few times (a typo) without cost. After that, every
further failure doubles the time it must wait before the bus even looks at
its next attempt; an attempt inside that time is refused as ``throttled``
without checking the credential, so a guesser learns nothing from it. A
success clears the record. Records are bounded: past ``max_entries`` the
oldest are forgotten, which only ever makes the throttle more lenient.
"""

import collections


class JoinThrottle:
    def __init__(self, free_failures=3, base_delay=1.0, max_delay=300.0, max_entries=10000):
        self.free_failures = free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_entries = max_entries
        self._records = collections.OrderedDict()    # key -> [failures, blocked until]

    def blocked_for(self, key, now):
        """Seconds ``key`` must still wait (0 when it may try now)."""
        record = self._records.get(key)
        if record is None:
            return 0.0
        return max(0.0, record[1] - now)

    def failed(self, key, now):
        """Record a failure; return the back-off it starts (0 while failures are free)."""
        record = self._records.pop(key, None)
        if record is None:
            record = [0, 0.0]
        self._records[key] = record
        while len(self._records) > self.max_entries:
            self._records.popitem(last=False)
        record[0] += 1
        excess = record[0] - self.free_failures
        if excess <= 0:
            return 0.0
        delay = min(self.max_delay, self.base_delay * 2 ** (excess - 1))
        record[1] = now + delay
        return delay

    def succeeded(self, key):
        self._records.pop(key, None)

    def __len__(self):
        return len(self._records)
