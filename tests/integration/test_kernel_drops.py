"""Datagrams the kernel drops before the gateway reads them show on /status and /metrics.

The gateway is stopped (SIGSTOP) while 3,000 datagrams reach its OSCgroups
server port: the socket's receive queue (the system default, about 200 KB)
holds a few hundred of them and the kernel drops the rest, which no counter
of the door can see. After SIGCONT the gateway answers /status with the
kernel's count for that socket, as /proc/net/udp has it.
"""

import os
import signal
import socket
import time

from tests.conftest import free_port

SENT = 3000


def test_kernel_receive_drops_of_a_door_socket_are_counted(gateway_factory):
    server = free_port(socket.SOCK_DGRAM)
    gateway = gateway_factory({"oscgroups": {"port": server, "bridge": {"enabled": False},
                                             "relay": {"policy": "never"}}})
    before = gateway.status()["kernel_drops"]
    assert before["oscgroups"] == {str(server): 0}, before
    os.kill(gateway.process.pid, signal.SIGSTOP)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flooder:
            for _ in range(SENT):
                flooder.sendto(b"not OSC at all", ("127.0.0.1", server))
    finally:
        os.kill(gateway.process.pid, signal.SIGCONT)
    time.sleep(0.5)
    status = gateway.status()
    kernel = status["kernel_drops"]["oscgroups"][str(server)]
    read = sum(status["drops"].get("oscgroups", {}).values())
    # Every datagram is either dropped by the kernel or read and counted as malformed.
    assert kernel > SENT // 2, status["kernel_drops"]
    assert kernel + read == SENT, (kernel, read, status["drops"])
    _, _, metrics = gateway.get("/metrics")
    assert (f'netgateway_udp_kernel_drops_total{{door="oscgroups",port="{server}"}}'
            f" {float(kernel)}").encode() in metrics

