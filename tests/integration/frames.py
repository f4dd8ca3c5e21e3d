"""Raw test frames (IEEE local experimental ethertype 0x88B5, which no stack answers).

  frames.py send IFNAME DST_MAC COUNT     send COUNT frames to DST_MAC out of IFNAME
  frames.py count IFNAME SECONDS          print how many such frames IFNAME received in SECONDS
"""

import select
import socket
import sys
import time

ETHERTYPE = 0x88B5


def send(ifname: str, dst: str, count: int) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ifname, 0))
    src = bytes.fromhex("02feedbeef01")
    frame = bytes.fromhex(dst.replace(":", "")) + src + ETHERTYPE.to_bytes(2, "big") + b"usbnetd test".ljust(46)
    for _ in range(count):
        s.send(frame)
        time.sleep(0.01)


def count(ifname: str, seconds: float) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
    s.bind((ifname, 0))
    print("ready", flush=True)
    n, deadline = 0, time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if select.select([s], [], [], left)[0]:
            _, addr = s.recvfrom(2048)
            if addr[2] != socket.PACKET_OUTGOING:
                n += 1
    print(n, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        count(sys.argv[2], float(sys.argv[3]))
