"""A headless Chromium driven over the DevTools protocol through a pipe (`--remote-debugging-pipe`: JSON
messages ending in NUL on fds 3 and 4), so a test can load a page, read its console errors, evaluate
expressions and take a screenshot with no websocket library, port or driver download.

    with Chromium() as browser:
        page = browser.open("file:///tmp/view.html")
        page.errors, page.requests, page.eval("document.title"), page.screenshot()
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

BINARY = "/usr/bin/chromium"   # Debian's package (scripts/ensure_system.sh installs it)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--hide-scrollbars", "--window-size=1200,900", "--remote-debugging-pipe"]


def chromium_missing() -> str | None:
    """Why no browser test can run here, or None."""
    if not (os.path.exists(BINARY) and os.access(BINARY, os.X_OK)):
        return f"{BINARY} not found (Debian's `chromium` package; `bash scripts/ensure_system.sh` installs it)"
    return None


def _above_4(fd: int) -> int:
    """`fd` moved to a number above 4, so that putting the pipes at 3 and 4 cannot close one of them."""
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Page:
    """One tab: the console errors, exceptions and requests seen since it opened."""

    def __init__(self, browser: "Chromium", session: str):
        self.browser, self.session = browser, session
        self.errors: list[str] = []
        self.requests: list[str] = []

    def call(self, method: str, timeout: float = 60.0, **params) -> dict:
        return self.browser.call(method, params, session=self.session, timeout=timeout)

    def eval(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression!r} threw: {res['exceptionDetails'].get('text')}")
        return res["result"].get("value")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"])

    def note(self, msg: dict) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            self.errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
            self.errors.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description")))
                                                                  for a in p.get("args", [])))
        elif method == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
            self.errors.append(f"log {p['entry'].get('source')}: {p['entry'].get('text')}")
        elif method == "Network.requestWillBeSent":
            self.requests.append(p["request"]["url"])


class Chromium:
    """The browser process, a fresh profile in a temp dir; `close()` ends both (also on `with` exit)."""

    def __init__(self, binary: str = BINARY):
        self.profile = tempfile.mkdtemp(prefix="cwm-chromium-")
        to_browser_r, self._w = os.pipe()
        self._r, from_browser_w = os.pipe()
        to_browser_r, from_browser_w = _above_4(to_browser_r), _above_4(from_browser_w)
        # the protocol wants its pipes at fds 3 (commands in) and 4 (replies out); bash puts them there
        script = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        self.proc = subprocess.Popen(["bash", "-c", script, binary, *FLAGS, f"--user-data-dir={self.profile}",
                                      "about:blank"], pass_fds=(to_browser_r, from_browser_w),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)   # its own process group: killed whole if need be
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf, self._next, self._events = b"", 0, []
        self.pages: dict[str, Page] = {}

    def _send(self, msg: dict) -> None:
        os.write(self._w, json.dumps(msg).encode() + b"\0")

    def _recv(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed its pipe (exit {self.proc.poll()})")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        msg = json.loads(raw)
        if "method" in msg and msg.get("sessionId") in self.pages:
            self.pages[msg["sessionId"]].note(msg)
        return msg

    def call(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout: float = 60.0) -> dict:
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._send(msg)
        deadline = time.monotonic() + timeout
        while True:
            reply = self._recv(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self._events):
                if ev["method"] == method and ev.get("sessionId") == session:
                    return self._events.pop(i)
            self._events.append(self._recv(deadline))

    def open(self, url: str, timeout: float = 60.0) -> Page:
        """A new tab that has loaded `url` (its load event fired), with console, log and network watched."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = self.pages[session] = Page(self, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.call(f"{domain}.enable")
        self._events.clear()
        page.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired", session, timeout)
        return page

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("Browser.close", timeout=10)
            except Exception:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)   # the browser and its renderer, zygote, ...
                self.proc.wait()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
