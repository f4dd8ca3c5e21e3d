"""A tiny TCP stream tool for tests (no iperf3 needed natively): `serve PORT` (`serve6 PORT`: IPv6) /
`send HOST PORT BYTES`.

The server prints how many bytes it received and a SHA-256 of them; the sender prints the same for what it
sent, so a test can compare byte counts and content end to end.
"""

import hashlib
import socket
import sys


def serve(port: int, v6: bool = False) -> None:
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if v6 else "0.0.0.0", port))
    s.listen(1)
    print("listening", flush=True)
    s.settimeout(60)
    conn, _ = s.accept()
    conn.settimeout(60)
    h, n = hashlib.sha256(), 0
    while True:
        data = conn.recv(1 << 16)
        if not data:
            break
        h.update(data)
        n += len(data)
    print(n, h.hexdigest(), flush=True)


def send(host: str, port: int, total: int) -> None:
    block = bytes(range(256)) * 256
    h, n = hashlib.sha256(), 0
    s = socket.create_connection((host, port), timeout=60)
    while n < total:
        chunk = block[: min(len(block), total - n)]
        s.sendall(chunk)
        h.update(chunk)
        n += len(chunk)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()
    print(n, h.hexdigest(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] in ("serve", "serve6"):
        serve(int(sys.argv[2]), sys.argv[1] == "serve6")
    else:
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
