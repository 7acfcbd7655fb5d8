"""``twistd netgateway``: command-line options and the service maker."""

import os
import sys

from twisted.python import usage

from gateway.config import ConfigError, load

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "data", "config.yaml")


class Options(usage.Options):
    synopsis = "[--check] [-c CONFIG.yaml]"
    longdesc = ("Start the netgateway network-MIDI gateway: every door enabled in the"
                " configuration (WebSocket, RTP-MIDI, OSCgroups, ...) joins its peers"
                " into sessions on one session bus. Without --config the built-in"
                " default is used: everything on 127.0.0.1 with a demo and a mirror"
                " session.")
    optParameters = [
        ["config", "c", None,
         "YAML configuration file (default: the built-in config/config.yaml)."],
    ]
    optFlags = [
        ["check", None, "Validate the configuration, say whether it is valid and exit"
                        " (status 0 if it is, 2 if not) without starting."],
    ]

    def postOptions(self):
        if self["config"] is None:
            self["config"] = DEFAULT_CONFIG
        if self["check"]:
            # Here, before twistd writes a pid file, starts logging or opens a port.
            from twisted.internet import reactor
            gateway = build_or_exit(self["config"], reactor, "not valid", start_logging=False)
            config = gateway.context.config
            doors = ", ".join(config.enabled_doors()) or "none"
            sys.stdout.write(f"netgateway: {self['config']} is valid"
                             f" ({len(config.sessions)} sessions, doors: {doors})\n")
            sys.stdout.flush()
            raise SystemExit(0)


def makeService(options, reactor=None):
    """Load and validate the config, then build the gateway service.

    A bad config ends start-up with one line per problem on stderr and exit
    status 2, before any port is opened.
    """
    if reactor is None:
        from twisted.internet import reactor
    return build_or_exit(options["config"], reactor, "not starting", start_logging=True)


def build_or_exit(path, reactor, verdict, start_logging):
    """The gateway service of the config at ``path``, built but not started.

    What cannot serve ends the process with exit status 2: one line per
    problem on stderr, the last ending ``; VERDICT``. ``start_logging`` also
    opens ``logging.file``.
    """
    from gateway import log as gatewaylog
    from gateway.service import make_gateway

    try:
        config = load(path)
        logging = config.logging
        if start_logging and logging.file is not None:
            try:
                gatewaylog.write_to_file(logging.file, logging.rotate_bytes, logging.max_files)
            except OSError as error:
                _exit_2([f"logging.file: cannot write {logging.file}"
                         f" ({error.strerror or error})"], verdict)
        # Building it reads the certificates, which OpenSSL may still refuse.
        gateway, _ = make_gateway(config, reactor)
    except ConfigError as error:
        _exit_2([f"config error: {problem}" for problem in error.problems]
                + [f"{len(error.problems)} problem(s) in {path}"], verdict)
    return gateway


def _exit_2(lines, verdict):
    """Exit with status 2: one line per problem on stderr, no traceback."""
    for line in lines[:-1]:
        sys.stderr.write(f"netgateway: {line}\n")
    sys.stderr.write(f"netgateway: {lines[-1]}; {verdict}\n")
    sys.stderr.flush()
    raise SystemExit(2)
