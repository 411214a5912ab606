"""The host's end of commands in a container: Docker's multiplexed exec stream (`pump`, `drain`) and the
client of the exec server that runs in each container (`ExecServer`, see `_docker_tool.py serve`).

A command through the exec server is a fork, a switch to the sandbox's user and an exec, not a new
`docker exec`, on which the engine alone spends ~50 ms. The server sends a heartbeat while a command runs, so
a server that a command stopped or killed (root may) is noticed within a second or two.
"""
from __future__ import annotations

import json
import select
import socket
import struct
import threading
import time

from cwm_envs.sandbox import _docker_tool
from cwm_envs.sandbox._frames import program_source

MARKER = _docker_tool.MARKER
DRAIN_FACTOR = _docker_tool.DRAIN_FACTOR   # past the cap, output is read and dropped up to 16x the cap
SILENCE_S = 1.0        # no heartbeat for this long: look at the server (stopped?); heartbeats come every 0.2 s
SILENCE_REMOTE_S = 5.0  # ... and where this host cannot see the container's processes, give up after this
TOOL_SOURCE = program_source("_docker_tool.py")
ISOLATED = ("-I", "-S")       # how our own programs start: no site, no user site, no cwd, no PYTHON* variables


def split_frames(buf: bytearray):
    """The complete frames of Docker's multiplexed exec stream in `buf`, as (stream, payload), removed from it
    (stream 1 is stdout, 2 stderr); a partial frame stays for the next read."""
    while len(buf) >= 8:
        stream, size = struct.unpack(">BxxxL", buf[:8])
        if len(buf) < 8 + size:
            return
        payload = bytes(buf[8:8 + size])
        del buf[:8 + size]
        yield stream, payload


def pump(sock, stdin: bytes | None, deadline: float, cap: int) -> tuple[bytes, bytes, bool, str | None]:
    """Read Docker's multiplexed exec stream until EOF, the deadline, or too much output.

    Returns (stdout, stderr, truncated, stop) where stop is None (EOF), "timeout" or "output".
    """
    raw = getattr(sock, "_sock", sock)
    raw.setblocking(False)
    outs = {1: bytearray(), 2: bytearray()}
    seen, truncated, buf = 0, False, bytearray()
    pending = memoryview(stdin) if stdin is not None else None
    if pending is not None and not pending:
        raw.shutdown(socket.SHUT_WR)
        pending = None
    poller = select.poll()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(outs[1]), bytes(outs[2]), truncated, "timeout"
        poller.register(raw, select.POLLIN | (select.POLLOUT if pending is not None else 0))
        events = poller.poll(left * 1000)
        for _fd, ev in events:
            if ev & select.POLLOUT and pending is not None:
                try:
                    n = raw.send(pending[:1 << 16])
                    pending = pending[n:]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:                   # the command exited without reading its stdin
                    pending = memoryview(b"")
                if not pending:
                    try:
                        raw.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    pending = None
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    data = raw.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    continue
                if not data:
                    return bytes(outs[1]), bytes(outs[2]), truncated, None
                buf += data
                for stream, payload in split_frames(buf):
                    out = outs.get(stream, outs[1])
                    room = cap - len(out)
                    if len(payload) > room:
                        truncated = True
                    out += payload[:max(0, room)]
                    seen += len(payload)
                if seen > DRAIN_FACTOR * cap + 2 * cap:
                    return bytes(outs[1]), bytes(outs[2]), True, "output"
        poller.unregister(raw)


class ServerGone(Exception):
    """The exec server's stream ended, or it fell silent (`stalled`: stopped by a command, say); `started`
    says whether the command may have begun."""

    def __init__(self, started: bool, why: str, stalled: bool = False):
        super().__init__(why)
        self.started, self.stalled = started, stalled


class ExecServer:
    """The host's end of one container's exec server: a `docker exec` of `_docker_tool serve` as root, whose
    commands run as the sandbox's user; it lives as long as the container and takes one request at a time
    (`lock`). `stalled(silence_s)` tells whether a server silent for that long is surely stuck."""

    def __init__(self, api, container_id: str, python: str, ids: tuple[int, int], marker: str,
                 stalled, ready_s: float = 60.0):
        self.marker, self.stalled = marker, stalled
        argv = [python, *ISOLATED, "-c", TOOL_SOURCE, "serve", str(ids[0]), str(ids[1])]
        exec_id = api.exec_create(container_id, argv, stdin=True, user="0", workdir="/",
                                  environment={MARKER: marker})["Id"]
        self.sock = api.exec_start(exec_id, socket=True)
        self.raw = getattr(self.sock, "_sock", self.sock)
        self.raw.setblocking(False)
        self.lock = threading.Lock()
        self._frames = bytearray()           # Docker's multiplexed stream, not yet split
        self._out = bytearray()              # the server's stdout, not yet consumed
        self.heard = time.monotonic()
        try:
            ready = self._frame(time.monotonic() + ready_s)[0]
        except (ServerGone, TimeoutError):
            self.close()
            raise
        self.pid = ready["pid"]              # in the container's pid namespace
        self.host_pid: int | None = None     # on this host, once looked up (Box.server_host_pid)

    def _fill(self, deadline: float, started: bool) -> None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the exec server did not answer in time")
            if select.select([self.raw], [], [], min(left, SILENCE_S))[0]:
                break
            silent = time.monotonic() - self.heard
            if silent >= SILENCE_S and self.stalled(silent):
                raise ServerGone(started, f"it fell silent for {silent:.1f} s", stalled=True)
        try:
            data = self.raw.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            raise ServerGone(started, f"its stream failed: {exc}") from exc
        if not data:
            raise ServerGone(started, "its stream ended")
        self.heard = time.monotonic()
        self._frames += data
        for stream, payload in split_frames(self._frames):
            if stream == 1:                  # stderr (2) is the server's own, sent to /dev/null anyway
                self._out += payload

    def _take(self, n: int, deadline: float, started: bool = True) -> bytes:
        while len(self._out) < n:
            self._fill(deadline, started)
        data = bytes(self._out[:n])
        del self._out[:n]
        return data

    def _frame(self, deadline: float) -> tuple[dict, list[bytes]]:
        head = json.loads(self._take(struct.unpack(">I", self._take(4, deadline))[0], deadline))
        payloads = [self._take(head[k], deadline) for k in ("stdout_len", "stderr_len") if k in head]
        return head, payloads

    def call(self, request: dict, stdin: bytes | None, deadline: float) -> tuple[dict, bytes, bytes]:
        """Send one request and wait for its reply; ServerGone when the server is gone or stuck, TimeoutError
        when it has not answered by the deadline."""
        body = json.dumps({**request, "stdin_len": -1 if stdin is None else len(stdin)}).encode()
        try:
            self.raw.settimeout(max(1.0, deadline - time.monotonic()))
            self.raw.sendall(struct.pack(">I", len(body)) + body + (stdin or b""))
        except OSError as exc:               # includes a send timeout: the server is not reading
            raise ServerGone(False, f"it does not take requests: {exc}") from exc
        finally:
            self.raw.setblocking(False)
        self.heard = time.monotonic()
        if self._take(1, deadline, started=False) != _docker_tool.ACK:   # from here on the command may run
            raise ServerGone(False, "it answered out of turn")
        while (tag := self._take(1, deadline)) == _docker_tool.BEAT:
            pass
        if tag != _docker_tool.REPLY:
            raise ServerGone(True, "its reply is garbled")
        head, (out, err) = self._frame(deadline)
        return head, out, err

    def close(self) -> None:
        try:
            self.sock.close()                # the server reads EOF and exits
        except OSError:
            pass


def drain(sock, deadline: float) -> None:
    """Read what a killed command still sends, so its exec finishes; give up at the deadline."""
    raw = getattr(sock, "_sock", sock)
    poller = select.poll()
    poller.register(raw, select.POLLIN)
    while (left := deadline - time.monotonic()) > 0:
        if not poller.poll(left * 1000):
            return
        try:
            if not raw.recv(1 << 16):
                return
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            return
