"""Length-prefixed frames on raw file descriptors, for the programs that run INSIDE a sandbox: the local
fork-server (`_forkserver.py`) and the docker exec server (`_docker_tool.py serve`).

A frame is a 4-byte big-endian length, a JSON header, then the raw payloads whose lengths the header names.
Standard library only. Those programs are sent as source (`python -c`), where the project cannot be
imported: `program_source` puts this file's source before theirs.
"""
import json
import os
import struct

LEN = struct.Struct(">I")


def read_exact(fd, n):
    """n bytes from fd, or None at end of file."""
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def write_frame(header, *payloads):
    """One frame on fd 1 (stdout), whole."""
    data = json.dumps(header).encode()
    view = memoryview(b"".join([LEN.pack(len(data)), data] + list(payloads)))
    while view:
        view = view[os.write(1, view):]


def program_source(name):
    """What `python -c` runs in a sandbox: this file's source, then the program `name` beside it."""
    here = os.path.dirname(os.path.abspath(__file__))
    with open(__file__) as f, open(os.path.join(here, name)) as g:
        return f.read() + "\n\n" + g.read()
