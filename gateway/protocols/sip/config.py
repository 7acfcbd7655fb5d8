"""SIP door: configuration (the ``sip`` section).

Imports nothing from Twisted or prometheus_client, so a configuration is
validated without them; the door itself is :mod:`gateway.protocols.sip.door`.
"""

import dataclasses
import ipaddress
import os
import typing

from gateway import tls
from gateway.tls import TlsConfig
from gateway.schema import bounded, port
from gateway.protocols.sip import channels

# sfront refuses a member whose c= is one of these (shared/protocols/sfront.md §2.3).
_REFUSED_MEDIA_HOSTS = ("127.0.0.1", "0.0.0.0", "255.255.255.255")
INVITE_TRANSPORTS = ("udp", "tcp", "tls")


@dataclasses.dataclass
class InviteConfig:
    """A SIP user agent the gateway calls (it is the caller): its peer joins ``session``."""

    session: str = bounded(doc="a session declared in 'sessions'; the called peer joins it")
    uri: str = bounded(doc="sip:user@host:port (sips: for TLS) of the peer; host an IP address")
    transport: typing.Optional[str] = bounded(
        None, choices=INVITE_TRANSPORTS,
        doc="udp, tcp or tls; null: the URI's transport parameter, else tls for sips:"
            " and udp for sip:")
    name: typing.Optional[str] = bounded(None, doc="the peer's name in the session; null:"
                                                   " user@host of the URI")
    username: str = bounded("netgateway", doc="our From user, and the digest user name"
                                              " answering the peer's challenges")
    password: typing.Optional[str] = bounded(
        None, doc="digest password for 401/407 challenges (another netgateway: its session"
                  " passphrase); null: none, and a challenge fails the call")
    tls_ca: typing.Optional[str] = bounded(
        None, doc="PEM file of the CA certificates a tls peer is verified against; null:"
                  " the system's")
    retry: float = bounded(5.0, minimum=0.5, maximum=3600.0,
                           doc="seconds before calling again after a call ends or fails;"
                               " doubled by each failure in a row")
    retry_max: float = bounded(300.0, minimum=1.0, maximum=86400.0,
                               doc="the longest wait between attempts")
    ring_timeout: float = bounded(60.0, minimum=5.0, maximum=600.0,
                                  doc="seconds a ringing call may stay unanswered before the"
                                      " gateway cancels it")

    def target(self):
        """``(scheme, user, host, port, transport)`` of the URI; ValueError if unusable."""
        from gateway.protocols.sip.uac import parse_target
        return parse_target(self.uri, self.transport)

    @property
    def display_name(self):
        if self.name:
            return self.name
        _, user, host, _, _ = self.target()
        return f"{user}@{host}" if user else host


@dataclasses.dataclass
class MediaConfig:
    host: str = bounded("127.0.0.5", doc="IPv4 address of the gateway's media ports as"
                                         " clients reach it; not 127.0.0.1 (sfront refuses it)")
    port_min: int = port(6000, doc="first media port; declared session k uses"
                                   " port_min + 2k (RTP) and the next (RTCP)")
    port_max: int = port(6127, doc="last media port")


@dataclasses.dataclass
class UasMediaConfig:
    host: typing.Optional[str] = bounded(None, doc="IPv4 address of the call media ports as"
                                                   " callers reach it; null: sip.host")
    port_min: int = port(6200, doc="first media port; each call takes an even RTP port and"
                                   " the next for RTCP")
    port_max: int = port(6263, doc="last media port")


@dataclasses.dataclass
class UasPhoneConfig:
    """Phones: audio-only calls (PCMU/PCMA), keypad in, the jam's sound out."""

    enabled: bool = bounded(True, doc="answer audio-only offers; false: 488 Not Acceptable")
    keypad: typing.Optional[dict] = bounded(
        None, doc="DTMF key -> note (60, C4, F#3, Bb5) or octave_down, octave_up, sustain,"
                  " none; keys not given keep the default map (1-9: C4 ... D5, 0: E5,"
                  " *: octave down, #: octave up, A-D: F5 G5 A5 B5)")
    channel: int = bounded(1, minimum=1, maximum=16, doc="MIDI channel of the keys' notes")
    velocity: int = bounded(100, minimum=1, maximum=127, doc="velocity of the keys' notes")
    hear_keys: bool = bounded(True, doc="callers hear their own keys (the session never"
                                        " sends a member's notes back to it)")
    max_voices: int = bounded(16, minimum=1, maximum=64,
                              doc="notes the synthesizer plays at once for one caller")

    def keypad_map(self):
        """The :class:`~gateway.protocols.sip.phone_dtmf.KeypadMap`; ValueError naming keys."""
        from gateway.protocols.sip.phone_dtmf import KeypadMap
        return KeypadMap.from_config(self.keypad)


@dataclasses.dataclass
class UasConfig:
    """Standard SIP user agents: softphones, SIP libraries, RTP-MIDI endpoints (RFC 3261)."""

    enabled: bool = True
    udp_port: typing.Optional[int] = bounded(
        None, minimum=1, maximum=65535,
        doc="null: sip.port, shared with sfront clients (their datagrams are told apart"
            " by dialect); or a port of its own")
    tcp_port: typing.Optional[int] = bounded(5060, minimum=1, maximum=65535,
                                             doc="SIP over TCP; null: none")
    tls_port: typing.Optional[int] = bounded(
        None, minimum=1, maximum=65535,
        doc="SIP over TLS (sips:, usually 5061); needs uas.tls or web.tls; null: none")
    tls: typing.Optional[TlsConfig] = None
    realm: str = bounded("netgateway", doc="digest realm softphones show")
    media: UasMediaConfig = dataclasses.field(default_factory=UasMediaConfig)
    max_calls: int = bounded(32, minimum=1, maximum=10000,
                             doc="calls at once (also bounded by the media ports); more are"
                                 " answered 503")
    max_connections: int = bounded(256, minimum=1, maximum=100000,
                                   doc="TCP and TLS connections at once; more are closed")
    max_registrations: int = bounded(4096, minimum=1, maximum=1000000,
                                     doc="registered contacts at once")
    media_timeout: float = bounded(60.0, minimum=5.0, maximum=86400.0,
                                   doc="seconds without RTP or RTCP from a caller before the"
                                       " gateway hangs up")
    nonce_lifetime: float = bounded(300.0, minimum=10.0, maximum=86400.0,
                                    doc="seconds a digest nonce stays fresh")
    phone: UasPhoneConfig = dataclasses.field(default_factory=UasPhoneConfig)


@dataclasses.dataclass
class Config:
    enabled: bool = True
    host: typing.Optional[str] = bounded(
        None, doc="IPv4 address sfront clients were built with (-sip_ip) and user agents"
                  " dial; replies leave from exactly it; null: network.bind")

    IPV4_ONLY = True     # sfront and the SDP the door writes are IPv4
    port: int = bounded(5060, minimum=1, maximum=65534,
                        doc="SIP port of clients' RTP sockets (-sip_port); their RTCP"
                            " sockets use port + 1")
    media: MediaConfig = dataclasses.field(default_factory=MediaConfig)
    channels: str = bounded(channels.KEEP, choices=channels.POLICIES,
                            doc="keep: remote players keep their channels; per_player:"
                                " each remote player gets a channel of its own")
    latetime: float = bounded(1.0, minimum=0.001, maximum=60.0,
                              doc="seconds; later note-ons are dropped and counted")
    journal: bool = bounded(True, doc="send the RFC 6295 recovery journal to clients")
    max_clients: int = bounded(64, minimum=1, maximum=10000,
                               doc="sfront clients at once; more are refused with 503")
    invite: typing.List[InviteConfig] = bounded(
        default_factory=list, doc="SIP user agents the gateway calls (it is the caller);"
                                  " needs uas.enabled")
    uas: UasConfig = dataclasses.field(default_factory=UasConfig)

    def media_ports(self, sessions):
        """The RTP media port of each declared session, by name."""
        return {session.name: self.media.port_min + 2 * index
                for index, session in enumerate(sessions)}

    def listening_ports(self, path):
        ports = [(f"{path}.port", "udp", self.port), (f"{path}.port", "udp", self.port + 1)]
        ports += [(f"{path}.media.port_min-port_max", "udp", number)
                  for number in range(self.media.port_min, self.media.port_max + 1)]
        uas = self.uas
        if uas.enabled:
            if uas.udp_port is not None and uas.udp_port != self.port:
                ports.append((f"{path}.uas.udp_port", "udp", uas.udp_port))
            if uas.tcp_port is not None:
                ports.append((f"{path}.uas.tcp_port", "tcp", uas.tcp_port))
            if uas.tls_port is not None:
                ports.append((f"{path}.uas.tls_port", "tcp", uas.tls_port))
            ports += [(f"{path}.uas.media.port_min-port_max", "udp", number)
                      for number in range(uas.media.port_min, uas.media.port_max + 1)]
        return ports

    @property
    def uas_udp_port(self):
        """The UDP port standard user agents use (sip.port when shared with sfront)."""
        return self.port if self.uas.udp_port is None else self.uas.udp_port

    @property
    def uas_media_host(self):
        return self.uas.media.host or self.host

    def check(self, name, config):
        problems = []
        # Listening on 0.0.0.0 is fine (answers leave from the address written to), but
        # SIP headers and SDP need one address: network.public_address.
        public_ipv4 = _is_ipv4(config.network.public_address or "")
        if not _is_ipv4(self.host) or self.host == "0.0.0.0" and not public_ipv4:
            problems.append(f"{name}.host: expected the one IPv4 address clients were built"
                            f" with and dial, got {self.host!r} (0.0.0.0 needs an IPv4"
                            " network.public_address: SIP and SDP carry the address)")
        media = self.media
        advertised_media = config.network.advertised(media.host) or media.host
        if not _is_ipv4(media.host) or advertised_media in _REFUSED_MEDIA_HOSTS:
            problems.append(f"{name}.media.host: expected an IPv4 address other than "
                            + ", ".join(_REFUSED_MEDIA_HOSTS)
                            + f" (sfront refuses those), got {media.host!r}")
        if media.port_min % 2:
            problems.append(f"{name}.media.port_min: expected an even port (RTP even, RTCP"
                            f" the next), got {media.port_min}")
        needed = 2 * len(config.sessions)
        if media.port_max - media.port_min + 1 < needed:
            problems.append(f"{name}.media.port_max: expected at least"
                            f" {media.port_min + needed - 1} (two ports for each of the"
                            f" {len(config.sessions)} declared sessions), got {media.port_max}")
        if self.uas.enabled:
            problems += self._check_uas(name, config, public_ipv4)
        problems += self._check_invite(name, config)
        return problems

    def _check_invite(self, name, config):
        problems = []
        declared = {session.name for session in config.sessions}
        streams = {}
        for index, entry in enumerate(self.invite):
            path = f"{name}.invite[{index}]"
            if not self.uas.enabled:
                problems.append(f"{path}: calling out uses the standard user agents' ports"
                                f" and media; expected {name}.uas.enabled: true")
            if entry.session not in declared:
                problems.append(f"{path}.session: expected a session declared in 'sessions'"
                                f" (a called peer cannot create one), got {entry.session!r}")
            try:
                _, _, host, number, transport = entry.target()
            except ValueError as error:
                problems.append(f"{path}.uri: {error}")
            else:
                if transport != "UDP" and (transport, host, number) in streams:
                    problems.append(f"{path}.uri: {streams[transport, host, number]} already"
                                    f" calls {host}:{number} over {transport.lower()}; expected"
                                    " one tcp or tls call per peer address")
                streams.setdefault((transport, host, number), f"{name}.invite[{index}]")
            if entry.retry_max < entry.retry:
                problems.append(f"{path}.retry_max: expected at least retry ({entry.retry}),"
                                f" got {entry.retry_max}")
            if entry.tls_ca is not None and not os.access(entry.tls_ca, os.R_OK):
                problems.append(f"{path}.tls_ca: expected a readable PEM file, cannot read"
                                f" {entry.tls_ca!r}")
        return problems

    def _check_uas(self, name, config, public_ipv4):
        problems = []
        uas = self.uas
        path = f"{name}.uas"
        if uas.udp_port == self.port + 1:
            problems.append(f"{path}.udp_port: {uas.udp_port} is the RTCP side of sfront"
                            f" clients ({name}.port + 1); expected null ({name}.port,"
                            " shared) or another port")
        host = uas.media.host
        if host is not None and (not _is_ipv4(host) or host == "0.0.0.0" and not public_ipv4):
            problems.append(f"{path}.media.host: expected an IPv4 address callers can reach"
                            f" (written in SDP answers), got {host!r}")
        if uas.media.port_min % 2:
            problems.append(f"{path}.media.port_min: expected an even port (RTP even, RTCP"
                            f" the next), got {uas.media.port_min}")
        if uas.media.port_max < uas.media.port_min + 1:
            problems.append(f"{path}.media.port_max: expected at least"
                            f" {uas.media.port_min + 1} (one RTP/RTCP pair), got"
                            f" {uas.media.port_max}")
        if not uas.realm or '"' in uas.realm or "\\" in uas.realm:
            problems.append(f"{path}.realm: expected a non-empty name without quotes or"
                            f" backslashes, got {uas.realm!r}")
        if uas.tls_port is not None and uas.tls is None and config.web.tls is None:
            problems.append(f"{path}.tls_port: SIP over TLS needs a certificate; expected"
                            f" {path}.tls ({{certificate, key}}) or web.tls to be set"
                            " (or tls_port: null)")
        if uas.phone.keypad is not None:
            try:
                uas.phone.keypad_map()
            except ValueError as error:
                problems += [f"{path}.phone.keypad.{line}" for line in str(error).splitlines()]
        if uas.tls is not None:
            problems += tls.problems(f"{path}.tls", uas.tls)
        return problems


def _is_ipv4(host):
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv4Address)
    except ValueError:
        return False
