"""Real SIP user agents (PyPI pjsua2-python, pyVoIP) driven in a process of their own.

Each runs in a subprocess because both keep threads and global state (pjsua2
aborts its process when objects outlive ``libDestroy``) and prints one JSON
line with what it saw, for tests/integration/test_sip_ua_e2e.py::

    python -m tests.integration.sip_ua_clients pjsua2 register|call udp|tls PORT USER PASSWORD [CA]
    python -m tests.integration.sip_ua_clients pyvoip register PORT SESSION PASSWORD SIP_PORT
"""

import json
import sys
import time

MIDI_SDP_MEDIA = ("m=audio {port} RTP/AVP 96\r\nc=IN IP4 127.0.0.1\r\na=rtcp:{rtcp}\r\n"
                  "a=rtpmap:96 rtp-midi/44100\r\na=sendrecv\r\n")


def pjsua2_main(mode, transport, port, user, password, ca=None):
    import pjsua2 as pj

    result = {"states": [], "reg_codes": []}
    ep = pj.Endpoint()
    ep.libCreate()
    config = pj.EpConfig()
    config.logConfig.level = 3
    config.logConfig.consoleLevel = 3
    config.uaConfig.threadCnt = 0
    config.uaConfig.mainThreadOnly = True
    ep.libInit(config)
    ep.audDevManager().setNullDev()
    transport_config = pj.TransportConfig()
    transport_config.port = 0
    transport_config.boundAddress = "127.0.0.1"     # loopback only, media included
    transport_config.publicAddress = "127.0.0.1"
    kind = pj.PJSIP_TRANSPORT_UDP
    if transport == "tls":
        kind = pj.PJSIP_TRANSPORT_TLS
        transport_config.tlsConfig.CaListFile = ca
        transport_config.tlsConfig.verifyServer = True
    ep.transportCreate(kind, transport_config)
    ep.libStart()
    suffix = ";transport=tls" if transport == "tls" else ""

    class Account(pj.Account):
        def onRegState(self, prm):
            result["reg_codes"].append(prm.code)

    class Call(pj.Call):
        def onCallState(self, prm):
            info = self.getInfo()
            result["states"].append(info.stateText)
            result["last_status"] = info.lastStatusCode
            result["last_reason"] = info.lastReason

        def onCallSdpCreated(self, prm):
            # Offer RTP-MIDI instead of pjsua2's audio (shared/protocols/sip-clients.md §2.4).
            sdp = prm.sdp.wholeSdp
            head = sdp.split("m=audio", 1)[0]
            port = sdp.split("m=audio ", 1)[1].split(" ", 1)[0]
            prm.sdp.wholeSdp = head + MIDI_SDP_MEDIA.format(port=port, rtcp=int(port) + 1)

    account_config = pj.AccountConfig()
    account_config.idUri = f"sip:demo@127.0.0.1:{port}{suffix}"
    account_config.regConfig.registrarUri = f"sip:127.0.0.1:{port}{suffix}"
    account_config.regConfig.registerOnAdd = mode == "register"
    account_config.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    account_config.mediaConfig.transportConfig.publicAddress = "127.0.0.1"
    account_config.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", user, 0, password))
    account = Account()
    account.create(account_config)
    call = None
    deadline = time.monotonic() + 15
    if mode == "register":
        while time.monotonic() < deadline and not result["reg_codes"]:
            ep.libHandleEvents(20)
        account.setRegistration(False)
        for _ in range(25):
            ep.libHandleEvents(20)
    else:
        call = Call(account)
        call.makeCall(f"sip:demo@127.0.0.1:{port}{suffix}", pj.CallOpParam(True))
        while time.monotonic() < deadline and "DISCONNECTED" not in result["states"]:
            ep.libHandleEvents(20)
    print(json.dumps(result), flush=True)
    del call                # before libDestroy, or pjsua2 aborts the process
    del account
    ep.libDestroy()


def pyvoip_main(port, session, password, sip_port):
    from pyVoIP.VoIP import PhoneStatus, VoIPPhone

    phone = VoIPPhone("127.0.0.1", int(port), session, password, myIP="127.0.0.1",
                      sipPort=int(sip_port), rtpPortLow=int(sip_port) + 2,
                      rtpPortHigh=int(sip_port) + 40)
    phone.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and phone.get_status() != PhoneStatus.REGISTERED:
        time.sleep(0.1)
    status = str(phone.get_status())
    phone.stop()
    print(json.dumps({"status": status}), flush=True)


if __name__ == "__main__":
    program, *arguments = sys.argv[1:]
    if program == "pjsua2":
        pjsua2_main(*arguments)
    else:
        pyvoip_main(*arguments[1:])
