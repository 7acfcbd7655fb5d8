"""``twistd netgateway``: command-line options and the service maker."""

import os
import sys

from twisted.python import usage

from gateway.config import ConfigError, load

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "data", "config.yaml")


class Options(usage.Options):
    synopsis = "[-c CONFIG.yaml]"
    longdesc = ("Start the netgateway network-MIDI gateway: every door enabled in the"
                " configuration (WebSocket, RTP-MIDI, OSCgroups, ...) joins its peers"
                " into sessions on one session bus. Without --config the built-in"
                " default is used: everything on 127.0.0.1 with a demo and a mirror"
                " session.")
    optParameters = [
        ["config", "c", None,
         "YAML configuration file (default: the built-in config/config.yaml)."],
    ]

    def postOptions(self):
        if self["config"] is None:
            self["config"] = DEFAULT_CONFIG


def makeService(options, reactor=None):
    """Load and validate the config, then build the gateway service.

    A bad config ends start-up with one line per problem on stderr and exit
    status 2, before any port is opened.
    """
    if reactor is None:
        from twisted.internet import reactor
    from gateway import log as gatewaylog
    from gateway.service import make_gateway

    try:
        config = load(options["config"])
        logging = config.logging
        if logging.file is not None:
            try:
                gatewaylog.write_to_file(logging.file, logging.rotate_bytes, logging.max_files)
            except OSError as error:
                _not_starting([f"logging.file: cannot write {logging.file}"
                               f" ({error.strerror or error})"])
        # Building it reads the certificates, which OpenSSL may still refuse.
        gateway, _ = make_gateway(config, reactor)
    except ConfigError as error:
        _not_starting([f"config error: {problem}" for problem in error.problems]
                      + [f"{len(error.problems)} problem(s) in {options['config']}"])
    return gateway


def _not_starting(lines):
    """End start-up with exit status 2: one line per problem on stderr, no traceback."""
    for line in lines[:-1]:
        sys.stderr.write(f"netgateway: {line}\n")
    sys.stderr.write(f"netgateway: {lines[-1]}; not starting\n")
    sys.stderr.flush()
    raise SystemExit(2)
