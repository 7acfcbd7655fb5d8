"""What the door suites share: each module's ``Gateway`` (its door on a recording bus),
and doors that need autobahn on Twisted imported with txaio switched to it."""

import contextlib
import importlib

import pytest


@contextlib.contextmanager
def txaio_on_twisted():
    """txaio on Twisted inside, as it was outside.

    autobahn's txaio serves one framework per process, and the integration tests
    use autobahn's asyncio client in this one: a door built on autobahn's
    Twisted side (the WebSocket door, the RTMP door's FLV over WebSocket) is
    imported and run with txaio switched to Twisted, and switched back after.
    """
    import txaio
    framework = txaio._explicit_framework
    saved = {name: getattr(txaio, name) for name in txaio.__all__ if hasattr(txaio, name)}
    txaio._explicit_framework = None
    txaio.use_twisted()
    try:
        yield
    finally:
        txaio._explicit_framework = framework
        for name, value in saved.items():
            setattr(txaio, name, value)


def import_on_twisted(name):
    """A module-scoped fixture body: ``name`` imported while txaio is on Twisted."""
    with txaio_on_twisted():
        yield importlib.import_module(name)


@pytest.fixture
def gateway(request):
    """The test module's ``Gateway()``, its door stopped afterwards if the test did not."""
    gateway = request.module.Gateway()
    yield gateway
    if gateway.door.running:
        gateway.door.stopService()
