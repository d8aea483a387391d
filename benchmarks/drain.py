"""The cheapest possible upload endpoint: read the body, discard it, answer 200.

Used once per benchmark run to check the sandbox is not the bottleneck: curl
to the sandbox is compared with curl to this. Run as
``python -m benchmarks.drain PORT``.
"""

from __future__ import annotations

import socket
import socketserver
import sys

ANSWER = b'{"code":200,"message":"success","data":{"type":"video","download_url":"http://x/y","filename":"f","size":0}}'


class Drain(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            length = None
            while (line := self.rfile.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
                if line.lower().startswith(b"expect: 100-continue"):
                    self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if not line:
                return
            buffer = bytearray(1 << 20)
            view = memoryview(buffer)
            left = length or 0
            while left:
                got = self.rfile.readinto(view[: min(left, len(buffer))])
                if not got:
                    return
                left -= got
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(ANSWER)}\r\n\r\n"
            self.wfile.write(head.encode() + ANSWER)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Drain).serve_forever()
