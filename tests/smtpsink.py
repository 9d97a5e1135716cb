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
    def __init__(self, replies=None, pipelining=True, xverp=False, drop_after=None, then_refuse=False,
                 chunking=False):
        self.replies = dict(replies or {})
        self.pipelining, self.xverp, self.chunking = pipelining, xverp, chunking
        self.drop_after = drop_after    # close the connection instead of answering this DATA (1-based)
        self.then_refuse = then_refuse  # after that drop, greet every new connection with 421
        self.greeting = "220 sink ESMTP"
        self.messages = []          # (mail_from, [rcpts], data bytes)
        self.mail_params = []       # what followed MAIL FROM:<...>, e.g. "XVERP"
        self.grouped = 0            # MAIL commands that arrived together with their RCPT/DATA
        self.connections = 0
        self.lock = threading.Lock()
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            wbufsize = 65536        # replies wait in the buffer until reply() flushes
            def handle(self):
                sink._session(self.rfile, self.wfile, self.connection)

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

    def _session(self, rfile, wfile, sock=None):
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def reply(text):
            # Like Postfix's smtpd: replies to pipelined commands are sent
            # together, once the input is drained (RFC 2920 3.2).
            wfile.write(text.encode() + b"\r\n")
            if sock is None or not self._buffered(rfile, sock):
                wfile.flush()

        reply(self.greeting)
        if self.greeting.startswith("4"):
            return
        with self.lock:
            self.connections += 1
        mail_from, rcpts = None, []
        while True:
            line = rfile.readline()
            if not line:
                return
            cmd = line.decode("utf-8", "replace").strip()
            verb = cmd[:4].upper()
            if verb == "EHLO":
                extensions = (["sink"] + ["PIPELINING"] * self.pipelining + ["XVERP"] * self.xverp
                              + ["CHUNKING"] * self.chunking + ["8BITMIME"])
                reply("\r\n".join(f"250-{e}" for e in extensions[:-1]) + f"\r\n250 {extensions[-1]}")
            elif verb == "HELO":
                reply("250 sink")
            elif verb == "MAIL" and mail_from is not None:
                reply("503 5.5.1 Error: nested MAIL command")      # as Postfix: a transaction is open
            elif verb == "MAIL":
                words = cmd.split(":", 1)[1].strip().split()
                mail_from, rcpts = words[0].strip("<>"), []
                with self.lock:
                    self.mail_params.append(" ".join(words[1:]))
                    if sock is not None and self._buffered(rfile, sock):   # RCPT/DATA came with it
                        self.grouped += 1
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
                if self.drop_after is not None and len(self.messages) + 1 >= self.drop_after:
                    self.drop_after = None
                    if self.then_refuse:
                        self.greeting = "421 4.3.2 shutting down"
                    return                          # connection dropped before the final reply
                chunks = []
                while True:
                    line = rfile.readline()
                    if not line or line in (b".\r\n", b".\n"):
                        break
                    chunks.append(line[1:] if line.startswith(b".") else line)
                with self.lock:
                    self.messages.append((mail_from, rcpts, b"".join(chunks)))
                mail_from, rcpts = None, []
                reply("250 queued")
            elif verb == "BDAT" and self.chunking:             # RFC 3030
                size, last = int(cmd.split()[1]), cmd.upper().endswith(" LAST")
                chunk = rfile.read(size)
                if not rcpts:
                    reply("554 5.5.1 Error: no valid recipients")  # the transaction stays open
                    continue
                body = getattr(self, "_body", b"") + chunk
                if not last:
                    self._body = body
                    reply(f"250 2.0.0 {size} bytes")
                    continue
                self._body = b""
                if self.drop_after is not None and len(self.messages) + 1 >= self.drop_after:
                    self.drop_after = None
                    if self.then_refuse:
                        self.greeting = "421 4.3.2 shutting down"
                    return
                with self.lock:
                    self.messages.append((mail_from, rcpts, body))
                mail_from, rcpts = None, []
                reply("250 2.0.0 queued")
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


    @staticmethod
    def _buffered(rfile, sock):
        """Whether more input is already here, without waiting for it."""
        sock.setblocking(False)
        try:
            return len(rfile.peek(1)) > 0
        except BlockingIOError:
            return False
        finally:
            sock.setblocking(True)


def free_port():
    """A loopback port with nothing listening on it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
