"""twistd dropin for ``twistd netgateway``; kept import-cheap on purpose."""

from twisted.application.service import ServiceMaker

netgateway = ServiceMaker(
    "netgateway",
    "gateway.tap",
    "Network-MIDI gateway: WebSocket, RTP-MIDI, OSCgroups and more in one jam session",
    "netgateway",
)
