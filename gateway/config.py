"""YAML configuration -> validated, typed objects.

Every section is a dataclass; its type hints and ``field(metadata=...)``
bounds are the schema (:mod:`gateway.schema`). :func:`load` collects *every*
problem (unknown key, wrong type, value out of range, duplicate port, short
passphrase) as one line each that names the key path and what is expected,
and raises :class:`ConfigError` with all of them, so a user fixes the file in
one go.

Door sections (``websocket``, ``rtpmidi``, ...) are declared by the doors
themselves (see :mod:`gateway.doors`); this module knows only the shape.
"""

import dataclasses
import ipaddress
import typing

import yaml

from gateway import beatclock
from gateway import doors
from gateway import tls
from gateway.tls import TlsConfig
from gateway.schema import bounded, describe_value, load_section, port, suggestion
from gateway.addresses import is_address, is_loopback, is_wildcard


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` holds one line per fault."""

    def __init__(self, problems):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclasses.dataclass
class MirrorConfig:
    """Makes a session echo every note back to its player, transposed."""
    interval: int = bounded(7, minimum=-48, maximum=48, doc="semitones; 7 = a perfect fifth")
    delay: float = bounded(0.0, minimum=0.0, maximum=10.0, doc="seconds before the echo")


@dataclasses.dataclass
class TempoConfig:
    """The session's tempo: the gateway sends MIDI beat clock to its members."""
    bpm: float = bounded(120.0, minimum=beatclock.MIN_BPM, maximum=beatclock.MAX_BPM,
                         doc="quarter notes per minute; 24 clocks each")
    running: bool = bounded(True, doc="start the song when the first member joins;"
                                      " false: stopped until someone with the right starts it")
    beats_per_bar: int = bounded(4, minimum=1, maximum=16,
                                 doc="for metronomes: the first beat of each bar is accented")
    control_passphrase: typing.Optional[str] = bounded(
        None, doc="the second secret a member shows to change bpm, start, stop or continue"
                  " (the session passphrase lets you play, not conduct); null: nobody may")


@dataclasses.dataclass
class SessionConfig:
    name: str = bounded(doc="session name peers join by")
    passphrase: str = bounded(doc="shared secret; see limits.min_passphrase_length")
    max_members: typing.Optional[int] = bounded(None, minimum=1, maximum=1024,
                                                doc="overrides limits.max_members_per_session")
    mirror: typing.Optional[MirrorConfig] = None
    tempo: typing.Optional[TempoConfig] = None
    allow_addresses: typing.List[str] = bounded(
        default_factory=list,
        doc="CIDRs allowed for doors without authentication of their own (AppleMIDI)")
    public: bool = bounded(False, doc="listed by GET /sessions, so the jam page offers it")


@dataclasses.dataclass
class LimitsConfig:
    min_passphrase_length: int = bounded(20, minimum=1, maximum=1024)
    max_members_per_session: int = bounded(8, minimum=1, maximum=1024)
    max_sessions: int = bounded(64, minimum=1, maximum=100000)
    allow_session_creation: bool = True
    events_per_second: int = bounded(1000, minimum=1, maximum=1000000,
                                     doc="per member; excess is dropped and counted")
    velocity_cap: typing.Optional[int] = bounded(None, minimum=1, maximum=127)
    idle_timeout: float = bounded(120.0, minimum=1.0, maximum=86400.0,
                                  doc="seconds without traffic before a member expires")
    join_failures_before_throttle: int = bounded(
        3, minimum=1, maximum=1000,
        doc="wrong passphrases (or unknown sessions) per source and session before back-off")
    join_throttle_seconds: float = bounded(
        1.0, minimum=0.01, maximum=3600.0,
        doc="first back-off; each further failure doubles it")
    join_throttle_max_seconds: float = bounded(300.0, minimum=0.01, maximum=86400.0,
                                               doc="longest back-off")
    connections_per_second: float = bounded(
        20.0, minimum=0.01, maximum=100000.0,
        doc="new TCP connections (page, WebSocket, RTMP, SIP) per second per source address")
    connection_burst: int = bounded(40, minimum=1, maximum=100000,
                                    doc="new connections a source may open at once")
    network_connections_per_second: float = bounded(
        100.0, minimum=0.01, maximum=100000.0,
        doc="new connections per second per /24 (IPv4) or /64 (IPv6)")
    network_connection_burst: int = bounded(200, minimum=1, maximum=100000)
    concurrent_connections_per_source: int = bounded(64, minimum=1, maximum=100000)
    total_connections_per_second: float = bounded(
        200.0, minimum=0.01, maximum=1000000.0,
        doc="new connections per second from every address not exempt, together: what"
            " holds a flood from many networks")
    total_connection_burst: int = bounded(400, minimum=1, maximum=1000000)
    datagrams_per_second: float = bounded(
        2000.0, minimum=0.01, maximum=10000000.0,
        doc="datagrams per second per source address at each UDP door (OSCgroups, AppleMIDI,"
            " SIP and their media); more are dropped unread and counted")
    datagram_burst: int = bounded(4000, minimum=1, maximum=10000000)
    network_datagrams_per_second: float = bounded(
        8000.0, minimum=0.01, maximum=10000000.0,
        doc="datagrams per second per /24 (IPv4) or /64 (IPv6) at each UDP door")
    network_datagram_burst: int = bounded(16000, minimum=1, maximum=10000000)
    pre_join_messages_per_second: float = bounded(
        2.0, minimum=0.01, maximum=100000.0,
        doc="WebSocket messages a connection may send per second before it has joined")
    pre_join_message_burst: int = bounded(10, minimum=1, maximum=100000)
    pre_join_bytes_per_second: float = bounded(
        4096.0, minimum=1.0, maximum=100000000.0,
        doc="bytes a WebSocket or RTMP connection may send per second before it has joined,"
            " and a SIP connection (signalling only) at any time")
    pre_join_byte_burst: int = bounded(65536, minimum=1, maximum=100000000)
    source_limits_exempt: typing.List[str] = bounded(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        doc="CIDRs never limited per source (a reverse proxy on this host, tests)")


@dataclasses.dataclass
class NetworkConfig:
    """Where the doors listen and what address they tell remote players to use."""
    bind: str = bounded("127.0.0.1", doc="address every door listens on unless its own host"
                                         " says otherwise; 0.0.0.0 or :: for every address")
    public_address: typing.Optional[str] = bounded(
        None, doc="the address remote players reach the gateway at (a NAT's or cloud VM's"
                  " public address), which doors advertise: OSCgroups relay ports, the"
                  " bridge's endpoint; null: each door's own address")

    def advertised(self, host):
        """The address a door listening on ``host`` gives out (None: a wildcard, no public one).

        A door kept on a loopback address stays local: nobody reaches it at the public one.
        """
        if self.public_address is not None and not is_loopback(host):
            return self.public_address
        return None if is_wildcard(host) else host


@dataclasses.dataclass
class WebConfig:
    enabled: bool = True
    host: typing.Optional[str] = bounded(None, doc="address of the page, /ws and /status;"
                                                   " null: network.bind")
    port: int = port(8080)
    tls: typing.Optional[TlsConfig] = None
    redirect_http_port: typing.Optional[int] = bounded(
        None, minimum=1, maximum=65535,
        doc="plain HTTP port that redirects every request to https (needs web.tls); null: none")

    def listening_ports(self, path):
        return [(f"{path}.port", "tcp", self.port),
                (f"{path}.redirect_http_port", "tcp", self.redirect_http_port)]


ADMIN_TOKEN_MIN_LENGTH = 16


@dataclasses.dataclass
class StatusConfig:
    """Who sees ``/status`` in full: a client sending ``Authorization: Bearer TOKEN``.

    Everyone else gets a summary without member names or addresses.
    """
    admin_token: typing.Optional[str] = bounded(
        None, doc=f"at least {ADMIN_TOKEN_MIN_LENGTH} printable ASCII characters, no spaces;"
                  " null: nobody sees full status")
    admin_token_file: typing.Optional[str] = bounded(
        None, doc="a file holding the token instead (read at start-up), so the config file"
                  " can be world-readable")


@dataclasses.dataclass
class MetricsConfig:
    """Where Prometheus scrapes ``/metrics``."""
    host: str = bounded("127.0.0.1", doc="the address metrics.port listens on")
    port: typing.Optional[int] = port(None, doc="its own port, and /metrics leaves the web"
                                                " site; null: /metrics is on the web site")

    def listening_ports(self, path):
        return [(f"{path}.port", "tcp", self.port)]


@dataclasses.dataclass
class LoggingConfig:
    level: str = bounded("info", choices=("debug", "info", "warn", "error", "critical"))
    drop_log_interval: float = bounded(
        10.0, minimum=0.0, maximum=3600.0,
        doc="log dropped/malformed input at most once per peer per this many seconds")
    file: typing.Optional[str] = bounded(
        None, doc="log file the gateway rotates itself; null: twistd's own log (stdout with"
                  " -n, or --logfile, whose rotation keeps every file)")
    rotate_bytes: int = bounded(10_000_000, minimum=1000, maximum=10**12,
                                doc="logging.file is rotated when it reaches this size")
    max_files: int = bounded(5, minimum=1, maximum=1000,
                             doc="rotated files kept besides logging.file; older ones go")
    access_line_burst: int = bounded(
        100, minimum=1, maximum=10**9,
        doc="access-log lines a web client gets at once; past it, and its rate, requests"
            " are counted and one summary line per drop_log_interval says how many")
    access_lines_per_second: float = bounded(2.0, minimum=0.01, maximum=10**9)


@dataclasses.dataclass
class GatewayConfig:
    sessions: typing.List[SessionConfig] = dataclasses.field(default_factory=list)
    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)
    limits: LimitsConfig = dataclasses.field(default_factory=LimitsConfig)
    web: WebConfig = dataclasses.field(default_factory=WebConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    status: StatusConfig = dataclasses.field(default_factory=StatusConfig)
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)
    doors: typing.Dict[str, typing.Any] = dataclasses.field(default_factory=dict)

    def enabled_doors(self):
        return {name: section for name, section in self.doors.items()
                if section is not None and section.enabled}

    def listening_ports(self):
        """``(key path, transport, number)`` of every port the enabled parts listen on."""
        sections = [("web", self.web)] if self.web.enabled else []
        sections += [("metrics", self.metrics)]
        sections += list(self.enabled_doors().items())
        return [entry for path, section in sections for entry in section.listening_ports(path)
                if entry[2] is not None]

    def port_key(self, number):
        """The key path of the setting that asks for port ``number`` (for error lines)."""
        for key_path, _, listed in self.listening_ports():
            if listed == number:
                return key_path
        return f"port {number}"


def _check_sessions(config, problems):
    minimum = config.limits.min_passphrase_length
    seen = set()
    for index, session in enumerate(config.sessions):
        path = f"sessions[{index}]"
        if session.name is not None:
            if not session.name.strip():
                problems.append(f"{path}.name: expected a non-empty name")
            elif session.name in seen:
                problems.append(f"{path}.name: session {session.name!r} is declared twice")
            seen.add(session.name)
        # Never echo a passphrase: only its length.
        if session.passphrase is not None and len(session.passphrase) < minimum:
            problems.append(f"{path}.passphrase: expected at least {minimum} characters"
                            f" (limits.min_passphrase_length), got {len(session.passphrase)}")
        _check_cidrs(f"{path}.allow_addresses", session.allow_addresses, problems)
        if session.tempo is not None:
            _check_tempo(f"{path}.tempo", session, minimum, problems)


def _check_tempo(path, session, minimum, problems):
    """The control passphrase is a right only if it is long and not the session's own."""
    secret = session.tempo.control_passphrase
    if secret is None:
        return
    if len(secret) < minimum:
        problems.append(f"{path}.control_passphrase: expected at least {minimum} characters"
                        f" (limits.min_passphrase_length), got {len(secret)}")
    elif secret == session.passphrase:
        problems.append(f"{path}.control_passphrase: expected a secret other than the"
                        " session's passphrase (every player knows that one)")


def _check_cidrs(path, cidrs, problems):
    for index, cidr in enumerate(cidrs or ()):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except (TypeError, ValueError):
            problems.append(f"{path}[{index}]: expected an address or CIDR such as"
                            f" 127.0.0.0/8, got {describe_value(cidr)}")


def _check_network(config, problems):
    _check_cidrs("limits.source_limits_exempt", config.limits.source_limits_exempt, problems)
    network = config.network
    if not is_address(network.bind):
        problems.append("network.bind: expected an IP address (0.0.0.0 or :: for every"
                        f" address), got {describe_value(network.bind)}")
    public = network.public_address
    if public is not None and (not is_address(public) or is_wildcard(public)):
        problems.append("network.public_address: expected the one IP address remote players"
                        f" reach, got {describe_value(public)}")


def _listen_on_bind(config):
    """Every ``host: null`` (web and doors) listens on network.bind.

    A door that speaks IPv4 only (its ``IPV4_ONLY``) takes ``::`` as
    ``0.0.0.0``: a dual-stack socket would hand it IPv4 peers as mapped IPv6
    addresses its wire format cannot carry.
    """
    bind = config.network.bind
    for section in [config.web, *config.doors.values()]:
        if section is not None and getattr(section, "host", ...) is None:
            ipv4_only = getattr(section, "IPV4_ONLY", False)
            section.host = "0.0.0.0" if ipv4_only and bind == "::" else bind


def _check_admin_token(config, problems):
    """Read ``status.admin_token_file`` into ``admin_token``; check the token's shape.

    Problems name the key and the token's length, never the token.
    """
    status = config.status
    key = "status.admin_token"
    if status.admin_token_file is not None:
        if status.admin_token is not None:
            problems.append("status.admin_token_file: expected admin_token or"
                            " admin_token_file, not both")
            return
        key = "status.admin_token_file"
        try:
            with open(status.admin_token_file, encoding="ascii") as stream:
                status.admin_token = stream.read().strip()
        except OSError as error:
            problems.append(f"{key}: cannot read {status.admin_token_file!r}"
                            f" ({error.strerror})")
            return
        except UnicodeDecodeError:
            problems.append(f"{key}: expected printable ASCII in"
                            f" {status.admin_token_file!r}, got other bytes")
            return
        if not status.admin_token:
            problems.append(f"{key}: {status.admin_token_file!r} is empty; expected the token")
            return
    token = status.admin_token
    if token is None:
        return
    # It travels in an HTTP header: visible ASCII only, as RFC 6750's b64token.
    if not (token.isascii() and token.isprintable()) or " " in token:
        problems.append(f"{key}: expected printable ASCII without spaces")
    elif len(token) < ADMIN_TOKEN_MIN_LENGTH:
        problems.append(f"{key}: expected at least {ADMIN_TOKEN_MIN_LENGTH} characters,"
                        f" got {len(token)}")


def _check_tls(config, problems):
    web = config.web
    if not web.enabled:
        return
    if web.tls is None:
        if web.redirect_http_port is not None:
            problems.append("web.redirect_http_port: the redirect leads to https; expected"
                            " web.tls to be set (or redirect_http_port: null)")
        return
    problems += tls.problems("web.tls", web.tls)


def _check_ports(config, problems):
    owners = {}
    for key_path, transport, number in config.listening_ports():
        other = owners.setdefault((transport, number), key_path)
        if other != key_path:
            problems.append(f"{key_path}: {transport} port {number} is already used by"
                            f" {other}; expected a free port")


def parse(data):
    """Validate an already-loaded YAML document; return a GatewayConfig."""
    problems = []
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["(top level): expected a mapping of sections,"
                           f" got {describe_value(data)}"])
    door_sections = doors.config_classes()
    fixed = {field.name for field in dataclasses.fields(GatewayConfig)} - {"doors"}
    base = {key: value for key, value in data.items() if key in fixed}
    for key in data:
        if key not in fixed and key not in door_sections:
            problems.append(f"{key}: unknown section"
                            f"{suggestion(key, fixed | set(door_sections))}")
    config = load_section(GatewayConfig, base, "", problems)
    # A door whose section is absent stays off and opens no port.
    config.doors = {name: load_section(cls, data[name], name, problems)
                    for name, cls in door_sections.items() if name in data}
    _check_sessions(config, problems)
    _check_network(config, problems)
    _listen_on_bind(config)
    _check_admin_token(config, problems)
    _check_tls(config, problems)
    _check_ports(config, problems)
    if not problems:
        for name, section in config.enabled_doors().items():
            check = getattr(section, "check", None)
            if check is not None:
                problems.extend(check(name, config))
    if problems:
        raise ConfigError(problems)
    return config


def load(path):
    """Read and validate the YAML file at ``path``."""
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the configuration file ({exc.strerror})"])
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{path}: not valid YAML{where}: {problem}"])
    return parse(data)
