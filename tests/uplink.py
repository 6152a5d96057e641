"""A shop's internet uplink for tests: a TCP relay between a shop broker and the central
one that can be cut and restored while both brokers keep running.

Killing the central broker would also stop the workers' sessions; a cut uplink is what
a shop actually sees: its own broker and kiosks carry on, the central side carries on,
and only the link between them is gone until it comes back.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


class Uplink:
    """Listens on a free loopback port and relays each connection to `target`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener: socket.socket | None = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._up = True
        self._closed = False
        #: Connections relayed so far (a reconnect after a restore counts anew).
        self.connections = 0
        self._listen(self._listener)

    def _listen(self, listener: socket.socket) -> None:
        threading.Thread(target=self._accept, args=(listener,), name="uplink", daemon=True).start()

    def cut(self) -> None:
        """Drop every relayed connection and refuse new ones (nothing listens on the port:
        a connect fails at once, as it does when a shop's router has no line)."""
        with self._lock:
            self._up = False
            listener, self._listener = self._listener, None
            doomed, self._open = self._open, set()
        if listener is not None:
            listener.close()
        for s in doomed:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        """Listen on the same port again."""
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR on POSIX
        with self._lock:
            self._up, self._listener = True, listener
        self._listen(listener)

    def close(self) -> None:
        self._closed = True
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed:
            try:
                inside, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                up = self._up
            if not up:
                inside.close()
                continue
            try:
                outside = socket.create_connection(self.target, timeout=5)
                outside.settimeout(None)
            except OSError:
                inside.close()
                continue
            with self._lock:
                if not self._up:  # cut while connecting
                    inside.close()
                    outside.close()
                    continue
                self._open |= {inside, outside}
                self.connections += 1
            for a, b in ((inside, outside), (outside, inside)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            src.close()  # the other pump closes its own source when this one ends it


@contextlib.contextmanager
def uplink(target: tuple[str, int]) -> Iterator[Uplink]:
    link = Uplink(target)
    try:
        yield link
    finally:
        link.close()
