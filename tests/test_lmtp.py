"""`redsky.py lmtp`: LMTP intake (RFC 2033) with the queue chain in-process."""

import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import ledger_view, REDSKY_MAIN, post
from smtpsink import free_port

pytestmark = pytest.mark.server         # every test runs `redsky.py lmtp` in a subprocess

LIST_OPTIONS = ("--access", "open")
MEMBERS = ("bob@example.net", "carol@example.com")


class Client:
    """A plain LMTP client that shows every reply as it comes."""

    def __init__(self, port, timeout=20):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self):
        lines = []
        while True:
            line = self.file.readline().decode().rstrip("\r\n")
            if not line:
                raise ConnectionError("closed")
            lines.append(line)
            if line[3:4] != "-":
                return line if len(lines) == 1 else lines

    def command(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        return self.reply()

    def deliver(self, sender, recipients, data):
        """LHLO, MAIL, RCPT… and DATA; returns (RCPT replies, per-recipient replies after DATA)."""
        self.command("LHLO client.example")
        assert self.command(f"MAIL FROM:<{sender}>").startswith("250")
        rcpt = [self.command(f"RCPT TO:<{r}>") for r in recipients]
        accepted = [r for r, reply in zip(recipients, rcpt) if reply.startswith("250")]
        if not accepted:
            return rcpt, []
        assert self.command("DATA").startswith("354")
        body = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        body = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in body.split(b"\r\n"))
        self.sock.sendall(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        return rcpt, [self.reply() for _ in accepted]

    def close(self):
        self.sock.close()


@pytest.fixture
def server(lst):
    port = free_port()
    proc = subprocess.Popen([*REDSKY_MAIN, "-c", str(lst.config), "lmtp", "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    lst.lmtp_port, lst.lmtp_proc = port, proc
    yield lst
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def queued(rs):
    return [r[0] for r in rs.db().execute("SELECT message_id FROM messages WHERE kind = 'post' ORDER BY id")]


def test_each_recipient_gets_its_own_reply_and_unknown_addresses_are_refused_at_rcpt(server):
    c = Client(server.lmtp_port)
    assert c.greeting.startswith("220 ")
    rcpt, replies = c.deliver("alice@example.org", ["test@lists.example.org", "nosuch@lists.example.org",
                                                    "test-request@lists.example.org"],
                              post(msgid="<lmtp1@example.org>", subject="help"))
    assert rcpt[0].startswith("250") and rcpt[1].startswith("550 5.1.1") and rcpt[2].startswith("250")
    assert len(replies) == 2 and all(r.startswith("250 2.0.0") for r in replies), replies
    assert "<test@lists.example.org>" in replies[0] and "<test-request@lists.example.org>" in replies[1]
    assert queued(server) == ["<lmtp1@example.org>"]
    # a bad message is refused for that recipient only, with the reason
    rcpt, replies = c.deliver("alice@example.org", ["test@lists.example.org"], b"no header at all\n")
    assert replies[0].startswith("554 5.6.0") and "no header" in replies[0]
    assert c.command("QUIT").startswith("221")


def test_the_trace_is_the_same_as_queue(server):
    Client(server.lmtp_port).deliver("alice@example.org", ["test@lists.example.org"],
                                     post(msgid="<traced-lmtp@example.org>"))
    out = server.run("trace", "traced-lmtp@example.org", check=0).out
    assert "=> queued" in out and "getsubscribers  2 enabled of 2 members" in out


def test_concurrent_sessions_all_queue(server):
    results = []

    def one(i):
        c = Client(server.lmtp_port)
        _, replies = c.deliver("alice@example.org", ["test@lists.example.org"], post(msgid=f"<c{i}@example.org>"))
        results.append(replies[0])
        c.close()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8 and all(r.startswith("250") for r in results), results
    assert sorted(queued(server)) == sorted(f"<c{i}@example.org>" for i in range(8))


def test_a_client_gone_mid_data_queues_nothing(server):
    c = Client(server.lmtp_port)
    c.command("LHLO x")
    c.command("MAIL FROM:<alice@example.org>")
    c.command("RCPT TO:<test@lists.example.org>")
    c.command("DATA")
    c.sock.sendall(b"From: alice@example.org\r\nSubject: half\r\n\r\nhalf a messa")
    c.close()
    time.sleep(0.5)
    assert queued(server) == []
    # the server goes on serving
    _, replies = Client(server.lmtp_port).deliver("alice@example.org", ["test@lists.example.org"], post())
    assert replies[0].startswith("250")


def test_what_was_accepted_survives_a_killed_server(server):
    _, replies = Client(server.lmtp_port).deliver("alice@example.org", ["test@lists.example.org"],
                                                  post(msgid="<kept@example.org>"))
    assert replies[0].startswith("250")
    server.lmtp_proc.send_signal(signal.SIGKILL)
    server.lmtp_proc.wait(10)
    assert queued(server) == ["<kept@example.org>"]
    assert len(ledger_view(server.db())) == 2
    assert server.run("send", check=0).returncode == 0
    assert len(server.sent()) == 2


def test_size_limit_and_sigterm(server):
    server.write_config(lmtp={"max_size": "2K"})
    os.kill(server.lmtp_proc.pid, signal.SIGHUP)            # takes the new limit
    time.sleep(0.5)
    c = Client(server.lmtp_port)
    c.command("LHLO x")
    assert c.command("MAIL FROM:<a@example.org> SIZE=999999").startswith("552")
    _, replies = c.deliver("alice@example.org", ["test@lists.example.org"], post(body="x" * 5000))
    assert replies[0].startswith("552 5.3.4")
    assert queued(server) == []
    idle = Client(server.lmtp_port)
    server.lmtp_proc.send_signal(signal.SIGTERM)
    assert server.lmtp_proc.wait(20) == 0
    with pytest.raises((ConnectionError, OSError)):
        idle.command("NOOP")
        idle.command("NOOP")


def test_a_port_in_use_is_a_clear_78(lst):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = lst.run("lmtp", "--listen", f"127.0.0.1:{port}", timeout=30, subprocess=True)     # a server
    assert r.returncode == 78 and "cannot listen" in r.err and "Traceback" not in r.err


def test_session_limit_and_idle_timeout(server):
    server.write_config(lmtp={"sessions": "2", "idle_timeout": "1s"})
    os.kill(server.lmtp_proc.pid, signal.SIGHUP)
    time.sleep(0.5)
    first, second = Client(server.lmtp_port), Client(server.lmtp_port)
    third = Client(server.lmtp_port)
    assert third.greeting.startswith("421")
    assert first.greeting.startswith("220") and second.greeting.startswith("220")
    time.sleep(1.5)                                   # silent for longer than idle_timeout
    assert first.reply().startswith("421 4.4.2")
    _, replies = Client(server.lmtp_port).deliver("alice@example.org", ["test@lists.example.org"], post())
    assert replies[0].startswith("250")


def test_a_line_longer_than_asyncio_reads_at_once_is_fine(server):
    """asyncio's readline stops at 64 KB; a 300 KB line (base64 with no line
    breaks, as some mailers send) must not kill the session."""
    long_line = "x" * 300_000
    _, replies = Client(server.lmtp_port).deliver("alice@example.org", ["test@lists.example.org"],
                                                  post(msgid="<long@example.org>", body=long_line))
    assert replies[0].startswith("250"), replies
    spool = next((server.home / "spool").glob("*.eml")).read_bytes()
    assert long_line.encode() in spool
    c = Client(server.lmtp_port)
    assert c.command("NOOP " + "y" * 100_000)[:3] in ("250", "500")      # a reply, not a dead session
    assert c.command("NOOP").startswith("250")
