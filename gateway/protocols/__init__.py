"""One package per protocol door: a sans-IO core and a thin Twisted adapter."""
