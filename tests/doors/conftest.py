"""What the door suites share: each module's ``Gateway`` (its door on a recording bus)."""

import pytest


@pytest.fixture
def gateway(request):
    """The test module's ``Gateway()``, its door stopped afterwards if the test did not."""
    gateway = request.module.Gateway()
    yield gateway
    if gateway.door.running:
        gateway.door.stopService()
