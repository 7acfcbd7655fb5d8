"""pjsua2 (PyPI pjsua2-python) as the callee of the gateway's ``sip.invite``.

Runs in a process of its own (pjsua2 keeps threads and global state and aborts
its process when objects outlive ``libDestroy``) and prints one JSON line::

    python -m tests.integration.sip_outbound_callee PORT SECONDS

It listens on UDP 127.0.0.1:PORT with an account that answers every call it
is offered (180, then 200). pjsua2 has no codec for the gateway's rtp-midi
offer, and it checks an incoming offer against its own codecs before the
application hears of the call (``onIncomingCall``, and ``onCallSdpCreated``,
which could rewrite the answer, come after ``pjsip_inv_verify_request3``): it
answers 488 Not Acceptable Here with ``Warning: 399 ... No suitable codec for
remote offer``. What it reports, from its message log: each request and
response it received and sent (method or status), and the calls it was told of.
"""

import json
import re
import sys
import time

_MESSAGE = re.compile(r"\b(RX|TX) \d+ bytes (Request|Response) msg ([^ ]+?)/cseq=(\d+)")


def main(port, seconds):
    import pjsua2 as pj

    result = {"received": [], "sent": [], "calls": 0, "warnings": []}

    class Log(pj.LogWriter):
        def write(self, entry):
            for line in entry.msg.splitlines():
                line = line.strip()
                match = _MESSAGE.search(line)
                if match:
                    direction, _, what, cseq = match.groups()
                    key = "received" if direction == "RX" else "sent"
                    result[key].append(f"{what} {cseq}")
                elif line.startswith("Warning:"):
                    result["warnings"].append(line)

    ep = pj.Endpoint()
    ep.libCreate()
    config = pj.EpConfig()
    writer = Log()
    config.logConfig.writer = writer
    config.logConfig.level = 5
    config.logConfig.consoleLevel = 5
    config.logConfig.msgLogging = True
    config.uaConfig.threadCnt = 0
    config.uaConfig.mainThreadOnly = True
    ep.libInit(config)
    ep.audDevManager().setNullDev()
    transport_config = pj.TransportConfig()
    transport_config.port = int(port)
    transport_config.boundAddress = "127.0.0.1"
    transport_config.publicAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport_config)
    ep.libStart()
    calls = []

    class Account(pj.Account):
        def onIncomingCall(self, prm):
            call = pj.Call(self, prm.callId)
            calls.append(call)
            result["calls"] += 1
            for status in (180, 200):
                answer = pj.CallOpParam()
                answer.statusCode = status
                call.answer(answer)

    account_config = pj.AccountConfig()
    account_config.idUri = f"sip:callee@127.0.0.1:{port}"
    account_config.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    account_config.mediaConfig.transportConfig.publicAddress = "127.0.0.1"
    account = Account()
    account.create(account_config)
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        ep.libHandleEvents(20)
    print(json.dumps(result), flush=True)
    calls.clear()                       # before libDestroy, or pjsua2 aborts the process
    del account
    ep.libDestroy()
    del writer


if __name__ == "__main__":
    main(*sys.argv[1:3])
