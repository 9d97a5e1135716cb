"""A small SMTP server on 127.0.0.1 for the tests (and bench.py).

It speaks enough of RFC 5321 for redsky's client: EHLO/HELO, MAIL, RCPT,
DATA (with dot-unstuffing), RSET, NOOP, QUIT, and advertises PIPELINING.
``replies`` maps a recipient address to the reply its RCPT gets (e.g.
"550 5.1.1 no such user"), so tests can mix outcomes.
"""

import socket
import socketserver
import threading


class SMTPSink:
    def __init__(self, replies=None):
        self.replies = dict(replies or {})
        self.messages = []          # (mail_from, [rcpts], data bytes)
        self.lock = threading.Lock()
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                sink._session(self.rfile, self.wfile)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _session(self, rfile, wfile):
        def reply(text):
            wfile.write(text.encode() + b"\r\n")
            wfile.flush()

        reply("220 sink ESMTP")
        mail_from, rcpts = None, []
        while True:
            line = rfile.readline()
            if not line:
                return
            cmd = line.decode("utf-8", "replace").strip()
            verb = cmd[:4].upper()
            if verb == "EHLO":
                reply("250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000")
            elif verb == "HELO":
                reply("250 sink")
            elif verb == "MAIL":
                mail_from, rcpts = cmd.split(":", 1)[1].strip().split()[0].strip("<>"), []
                reply("250 ok")
            elif verb == "RCPT":
                rcpt = cmd.split(":", 1)[1].strip().split()[0].strip("<>")
                answer = self.replies.get(rcpt, "250 ok")
                if answer.startswith("2"):
                    rcpts.append(rcpt)
                reply(answer)
            elif verb == "DATA":
                if not rcpts:
                    reply("554 no valid recipients")
                    continue
                reply("354 go ahead")
                chunks = []
                while True:
                    line = rfile.readline()
                    if not line or line in (b".\r\n", b".\n"):
                        break
                    chunks.append(line[1:] if line.startswith(b".") else line)
                with self.lock:
                    self.messages.append((mail_from, rcpts, b"".join(chunks)))
                reply("250 queued")
            elif verb == "RSET":
                mail_from, rcpts = None, []
                reply("250 ok")
            elif verb == "NOOP":
                reply("250 ok")
            elif verb == "QUIT":
                reply("221 bye")
                return
            else:
                reply("502 unknown command")


def free_port():
    """A loopback port with nothing listening on it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
