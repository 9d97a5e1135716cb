"""Headless Chromium driven over the DevTools protocol, with the standard
library only: a small WebSocket client (RFC 6455: masked text frames out,
fragments, pings and close in) and the few protocol calls the web tests
use (navigate, evaluate, keys, the viewport).  Runtime.evaluate runs in the
page but is not subject to its Content-Security-Policy, so a test can read
the DOM, fill and submit forms, and run an audit such as axe-core, while
the page itself runs no script."""

import base64
import json
import os
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0"]


class WebSocket:
    def __init__(self, url, timeout=30):
        assert url.startswith("ws://"), url
        host, _, path = url[5:].partition("/")
        name, _, port = host.rpartition(":")
        self.sock = socket.create_connection((name, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the browser closed the connection during the handshake")
            head += chunk
        head, self.buffer = head.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head[:200]

    def _read(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the browser closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def send(self, text, opcode=1):
        data = text.encode() if isinstance(text, str) else text
        mask = os.urandom(4)
        n = len(data)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else
                                         bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                         bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def receive(self):
        """The next whole text message (fragments joined; pings answered)."""
        parts = []
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 9:
                self.send(data, 10)
                continue
            if opcode == 8:
                raise ConnectionError("the browser closed the WebSocket")
            if opcode in (0, 1, 2):
                parts.append(data)
                if b0 & 0x80:
                    return b"".join(parts).decode("utf-8")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Browser:
    """One headless Chromium with one page, in its own profile directory."""

    def __init__(self, exe, width=390, height=844):
        self.profile = tempfile.mkdtemp(prefix="redsky-chromium-")
        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, deadline = os.path.join(self.profile, "DevToolsActivePort"), time.monotonic() + 60
        while not (os.path.exists(port_file) and open(port_file).read().count("\n") >= 1):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.quit()
                raise RuntimeError("Chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port = open(port_file).read().split()[0]
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws, self.next_id, self.events = WebSocket(page["webSocketDebuggerUrl"]), 0, []
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.call(method)
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=True)

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.receive())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method, timeout=30):
        """The next event ``method`` (events already seen are kept in self.events)."""
        self.ws.sock.settimeout(timeout)
        while True:
            message = json.loads(self.ws.receive())
            self.events.append(message)
            if message.get("method") == method:
                return message

    def problems(self):
        """The console messages and log entries (a CSP violation, an error) since the last call; not
        the network's "failed to load" of a page answered 4xx on purpose."""
        found = [e for e in self.events if e.get("method") in ("Runtime.consoleAPICalled", "Log.entryAdded",
                                                               "Runtime.exceptionThrown")]
        self.events = []
        return [json.dumps(e["params"])[:300] for e in found
                if e.get("method") != "Log.entryAdded" or (e["params"]["entry"]["level"] in ("error", "warning")
                                                           and e["params"]["entry"]["source"] != "network")]

    def load(self, action):
        """Do ``action`` (a navigation or a form submitted), then wait until the new page loaded."""
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        action()
        self.wait_for("Page.loadEventFired")

    def open(self, url):
        self.load(lambda: self.call("Page.navigate", url=url))

    def js(self, expression, await_promise=False):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=await_promise)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def key(self, key, code=None, text=None):
        """A key pressed and released (Tab, Enter, ...)."""
        for kind in ("keyDown", "keyUp"):
            params = {"type": kind, "key": key, "code": code or key,
                      "windowsVirtualKeyCode": {"Tab": 9, "Enter": 13, " ": 32}.get(key, 0)}
            if kind == "keyDown" and text:
                params["text"] = text
            self.call("Input.dispatchKeyEvent", **params)

    def type(self, text):
        self.call("Input.insertText", text=text)

    def quit(self):
        if getattr(self, "ws", None):
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        import shutil
        shutil.rmtree(self.profile, ignore_errors=True)
