"""Real SIP user agents (PyPI pjsua2-python, pyVoIP) driven in a process of their own.

Each runs in a subprocess because both keep threads and global state (pjsua2
aborts its process when objects outlive ``libDestroy``) and prints one JSON
line with what it saw, for tests/integration/test_sip_ua_e2e.py::

    python -m tests.integration.sip_ua_clients pjsua2 register|call udp|tls PORT USER PASSWORD [CA]
    python -m tests.integration.sip_ua_clients pjsua2 phone udp|tls PORT USER PASSWORD CA DIGITS
    python -m tests.integration.sip_ua_clients pyvoip register PORT SESSION PASSWORD SIP_PORT
    python -m tests.integration.sip_ua_clients pyvoip hold PORT SESSION PASSWORD SIP_PORT

``pjsua2 call`` rewrites its offer to rtp-midi; ``pjsua2 phone`` keeps pjsua2's own
audio offer and, once the call's media is up, sends DIGITS as RFC 4733 events
(``sendDtmf`` with PJSUA_DTMF_METHOD_RFC2833), one every 0.4 s, then hangs up.
``pyvoip hold`` registers, calls ``sip:SESSION@127.0.0.1`` on PORT (pyVoIP meets
a 401 on both), and once answered holds key 5 down (telephone-event packets
without the E bit, every 50 ms, from pyVoIP's own RTP socket to where pyVoIP
sends its audio) until it hangs up; it prints ``"holding"`` when it starts.
"""

import json
import sys
import time

MIDI_SDP_MEDIA = ("m=audio {port} RTP/AVP 96\r\nc=IN IP4 127.0.0.1\r\na=rtcp:{rtcp}\r\n"
                  "a=rtpmap:96 rtp-midi/44100\r\na=sendrecv\r\n")


def pjsua2_main(mode, transport, port, user, password, ca=None, digits=""):
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

        def onCallMediaState(self, prm):
            info = self.getInfo()
            result["media_active"] = any(media.status == pj.PJSUA_CALL_MEDIA_ACTIVE
                                         for media in info.media)

        def onCallSdpCreated(self, prm):
            if mode == "phone":
                return
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
            if mode == "phone" and result.get("media_active"):
                break
        if mode == "phone":
            result["digits_sent"] = ""
            for digit in digits:
                param = pj.CallSendDtmfParam()
                param.method = pj.PJSUA_DTMF_METHOD_RFC2833
                param.digits = digit
                call.sendDtmf(param)
                result["digits_sent"] += digit
                until = time.monotonic() + 0.4
                while time.monotonic() < until:
                    ep.libHandleEvents(10)
            until = time.monotonic() + 0.5
            while time.monotonic() < until:
                ep.libHandleEvents(10)
            call.hangup(pj.CallOpParam(True))
            until = time.monotonic() + 5
            while time.monotonic() < until and "DISCONNECTED" not in result["states"]:
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


def pyvoip_hold(port, session, password, sip_port):
    import socket
    import struct

    from pyVoIP.VoIP import CallState, PhoneStatus, VoIPPhone

    result = {"states": []}
    phone = VoIPPhone("127.0.0.1", int(port), session, password, myIP="127.0.0.1",
                      sipPort=int(sip_port), rtpPortLow=int(sip_port) + 2,
                      rtpPortHigh=int(sip_port) + 40)
    phone.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and phone.get_status() != PhoneStatus.REGISTERED:
            time.sleep(0.05)
        result["status"] = str(phone.get_status())
        call = phone.call(session)            # INVITE sip:SESSION@127.0.0.1
        while time.monotonic() < deadline and call.state != CallState.ANSWERED:
            time.sleep(0.05)
        result["states"].append(str(call.state))
        if call.state == CallState.ANSWERED:
            rtp = call.RTPClients[0]
            target = (rtp.outIP, rtp.outPort)
            print(json.dumps({"holding": True}), flush=True)
            ssrc, timestamp = 0x5EED, 80000
            for index in range(30):                     # 1.5 s of key 5 held down
                duration = min(0xFFFF, 160 * (index + 1))
                packet = struct.pack("!BBHII", 0x80, 101 | (0x80 if index == 0 else 0),
                                     1000 + index, timestamp, ssrc)
                packet += struct.pack("!BBH", 5, 10, duration)
                try:
                    rtp.sout.sendto(packet, target)
                except (OSError, socket.error) as error:
                    result["send_error"] = str(error)
                time.sleep(0.05)
            call.hangup()
            result["states"].append(str(call.state))
    finally:
        phone.stop()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    program, *arguments = sys.argv[1:]
    if program == "pjsua2":
        pjsua2_main(*arguments)
    elif arguments[0] == "hold":
        pyvoip_hold(*arguments[1:])
    else:
        pyvoip_main(*arguments[1:])
