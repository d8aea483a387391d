"""A TCP relay that can go silent: a network that stops carrying packets, with every connection left open.

``SilentRelay(port)`` listens on a free loopback port and relays each connection to
``port`` on 127.0.0.1. ``silence()`` stops it reading either side: nothing is answered,
nothing is refused or reset, bytes sent wait in the kernel's buffers as unacknowledged
segments wait on a dead link (a client blocks on a reply that does not come; new
connections are accepted and then hear nothing). ``restore()`` resumes, and what
waited is delivered, as TCP retransmits once a link comes back.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

POLL = 0.05
"""Seconds a pump waits for bytes before it looks whether it should stop or go silent."""


class SilentRelay:
    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._pumps: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._listener.settimeout(POLL)
        self._acceptor = threading.Thread(target=self._accept, name="relay-accept", daemon=True)
        self._acceptor.start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def silence(self) -> None:
        self._flowing.clear()

    def restore(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        """Ends every connection (its peers see them closed) and stops the relay's threads before returning."""
        self._closed.set()
        self._flowing.set()  # wakes the pumps so that they see the relay closed
        self._acceptor.join()
        with self._lock:
            sockets, self._sockets = self._sockets, []
            pumps, self._pumps = self._pumps, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # a pump waiting in select wakes up to an end
        for pump in pumps:
            pump.join()
        for sock in [self._listener, *sockets]:
            sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()  # the target is away: the client sees its connection end
                continue
            pumps = [
                threading.Thread(target=self._pump, args=(source, sink), name="relay-pump", daemon=True)
                for source, sink in ((client, upstream), (upstream, client))
            ]
            with self._lock:
                self._sockets += [client, upstream]
                self._pumps += pumps
            for pump in pumps:
                pump.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                self._flowing.wait()
                readable, _, _ = select.select([source], [], [], POLL)
                if not readable or not self._flowing.is_set():
                    continue  # silenced while waiting: what came stays unread
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
