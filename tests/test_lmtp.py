"""`redsky.py lmtp`: LMTP intake (RFC 2033) with the queue chain in-process."""

import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import as_nobody, ledger_view, REDSKY_MAIN, post
from smtpsink import free_port

pytestmark = pytest.mark.server         # every test runs `redsky.py lmtp` in a subprocess

LIST_OPTIONS = ("--access", "open")
MEMBERS = ("bob@example.net", "carol@example.com")


class Client:
    """A plain LMTP client that shows every reply as it comes."""

    def __init__(self, port, timeout=20, source="127.0.0.1"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
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


# --- SMTP smuggling: only <CRLF>.<CRLF> ends DATA -----------------------------------

def spooled(rs):
    return [p.read_bytes() for p in sorted((rs.home / "spool").glob("*.eml"))]


def open_transaction(c, recipient="test@lists.example.org"):
    c.command("LHLO client.example")
    assert c.command("MAIL FROM:<alice@example.org>").startswith("250")
    assert c.command(f"RCPT TO:<{recipient}>").startswith("250")
    assert c.command("DATA").startswith("354")


SMUGGLED = (b"MAIL FROM:<mallory@example.org>\r\nRCPT TO:<test@lists.example.org>\r\nDATA\r\n"
            b"From: mallory@example.org\r\nSubject: smuggled\r\nMessage-ID: <smuggled@example.org>\r\n\r\n"
            b"I was never sent.\r\n")


@pytest.mark.parametrize("end", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r",
                                 b"\r\n.\r\r\n", b"\n..\n", b"\n.\n.\n"],
                         ids=["LF.LF", "LF.CRLF", "CRLF.LF", "CR.CR", "CR.CRLF", "CRLF.CR", "CRLF.CRCRLF",
                              "LF..LF", "LF.LF.LF"])
def test_no_other_end_of_data_lets_a_second_message_through(server, end):
    """The bytes after LF.LF, LF.CRLF, CRLF.LF, CR.CR … are the message's,
    never commands: one message is queued, with them in its body."""
    c = Client(server.lmtp_port)
    open_transaction(c)
    c.sock.sendall(b"From: alice@example.org\r\nSubject: first\r\nMessage-ID: <first@example.org>\r\n\r\nhello"
                   + end + SMUGGLED + b".\r\nNOOP\r\nQUIT\r\n")       # the real end, then pipelined commands
    replies = [c.reply(), c.reply(), c.reply()]
    assert replies[0].startswith("250 2.0.0 <test@lists.example.org>"), replies
    assert replies[1].startswith("250 2.0.0 ok") and replies[2].startswith("221"), replies
    assert queued(server) == ["<first@example.org>"]
    body = spooled(server)[0]
    assert b"MAIL FROM:<mallory@example.org>" in body and b"I was never sent." in body
    assert b"\r" not in body                    # stored with LF line ends, no stray CR left


def test_a_dot_next_to_a_bare_lf_is_dropped_and_bare_lf_is_a_line_end(server):
    c = Client(server.lmtp_port)
    open_transaction(c)
    c.sock.sendall(b"From: alice@example.org\nSubject: mixed\r\nMessage-ID: <mixed@example.org>\n\n"
                   b"one\nodd\rcr\r\n..stuffed\r\n.\nlast\r\n.\r\n")
    assert c.reply().startswith("250 2.0.0")
    body = spooled(server)[0]
    assert b"one\nodd cr\n.stuffed\nlast\n" in body and b"\n.\n" not in body


def test_the_end_of_data_split_at_every_byte_still_ends_it(server):
    """The final dot and dot-stuffed lines cut across TCP segments anywhere."""
    message = (b"From: alice@example.org\r\nSubject: cut\r\nMessage-ID: <cut@example.org>\r\n\r\n"
               b"..one\r\n.\r\n")
    c = Client(server.lmtp_port)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    open_transaction(c)
    for i in range(0, len(message)):
        c.sock.sendall(message[i:i + 1])
        if i > len(message) - 15:
            time.sleep(0.05)                # each of the last bytes a segment of its own
    assert c.reply().startswith("250 2.0.0")
    assert c.command("NOOP").startswith("250")
    assert queued(server) == ["<cut@example.org>"] and b"\n.one\n" in spooled(server)[0]


def test_commands_ending_in_bare_lf_work_and_a_bare_cr_is_refused(server):
    c = Client(server.lmtp_port)
    c.sock.sendall(b"LHLO client.example\n")
    assert c.reply()[-1].startswith("250 ")
    assert c.command("NOOP\rRSET").startswith("500 5.5.2")
    assert c.command("MAIL FROM:<alice@example.org>\rRCPT TO:<x@y>").startswith("500 5.5.2")
    assert c.command("MAIL FROM:<alice@example.org>").startswith("250")


# --- one peer cannot take every session; NOOP does not keep one alive ------------

def hup(server, **lmtp):
    server.write_config(lmtp=lmtp)
    os.kill(server.lmtp_proc.pid, signal.SIGHUP)
    time.sleep(0.5)


def test_one_peer_holds_at_most_its_share_of_sessions(server):
    """On loopback every client is 127.0.0.1: the local user tells the MTA
    from someone else on the host, whatever loopback address they use."""
    hup(server, sessions="20", sessions_per_peer="3")
    mine = [Client(server.lmtp_port) for _ in range(3)]
    assert all(c.greeting.startswith("220") for c in mine)
    assert Client(server.lmtp_port).greeting.startswith("421 4.7.0")
    assert Client(server.lmtp_port, source="127.0.0.2").greeting.startswith("421 4.7.0")
    code = ("import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); f = s.makefile('rb');"
            " print(f.readline().decode().strip()); s.sendall(b'LHLO x\\r\\nQUIT\\r\\n');"
            " print([line.decode().strip() for line in f][-1])")
    r = as_nobody(code, str(server.lmtp_port))                          # another user gets in
    assert r.stdout.startswith("220 ") and r.stdout.rstrip().endswith("221 2.0.0 bye"), (r.stdout, r.stderr)
    mine[0].command("QUIT")
    time.sleep(0.2)
    _, replies = Client(server.lmtp_port).deliver("alice@example.org", ["test@lists.example.org"],
                                                  post(msgid="<freed@example.org>"))
    assert replies[0].startswith("250")                               # a freed session is its again


def test_noop_and_rset_do_not_keep_a_session_alive(server):
    hup(server, idle_timeout="1s")
    c = Client(server.lmtp_port)
    c.command("LHLO x")
    start, answers = time.monotonic(), []
    keepalives = ["RSET", "NOOP", "MAIL FROM:<alice@example.org>", "VRFY bob", "RCPT TO:<nosuch@lists.example.org>"]
    with pytest.raises((ConnectionError, OSError)):
        while time.monotonic() - start < 5:
            answers.append(c.command(keepalives[len(answers) % len(keepalives)]))
            time.sleep(0.2)
    assert answers[-1].startswith("421 4.4.2") and time.monotonic() - start < 2.5, answers
    # real progress keeps it: a message every 0.6 s, for longer than idle_timeout
    c = Client(server.lmtp_port)
    for i in range(3):
        _, replies = c.deliver("alice@example.org", ["test@lists.example.org"], post(msgid=f"<keep{i}@example.org>"))
        assert replies[0].startswith("250")
        time.sleep(0.6)


def test_a_flood_of_commands_without_mail_is_cut(server):
    import redsky
    c = Client(server.lmtp_port)
    c.command("LHLO x")
    c.sock.sendall(b"NOOP\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<test@lists.example.org>\r\n" * 150)
    answers = []
    try:
        while True:
            answers.append(c.reply())
    except (ConnectionError, OSError):
        pass
    # an accepted RCPT is free, NOOP and MAIL cost one each: the 100th is the 50th MAIL, then 421
    limit = redsky.LMTP_JUNK_LIMIT
    assert answers[-1].startswith("421 4.7.0") and len(answers) == 3 * (limit // 2 - 1) + 2 + 1, \
        (len(answers), answers[-3:])
    # a delivered message starts the count again; a transaction takes 1,000 recipients, then 452
    c = Client(server.lmtp_port)
    for _ in range(3):
        _, replies = c.deliver("alice@example.org", ["test@lists.example.org"] * 60, post())
        assert all(r.startswith("250") for r in replies)
    c.command("MAIL FROM:<alice@example.org>")
    c.sock.sendall(b"RCPT TO:<test@lists.example.org>\r\n" * (redsky.LMTP_MAX_RECIPIENTS + 1))
    rcpt = [c.reply() for _ in range(redsky.LMTP_MAX_RECIPIENTS + 1)]
    assert all(r.startswith("250") for r in rcpt[:-1]) and rcpt[-1].startswith("452 4.5.3"), rcpt[-2:]


def test_lmtp_listens_on_ipv6_and_a_unix_socket(lst, tmp_path):
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 on loopback")
    port = free_port()
    path = tmp_path / "lmtp.sock"
    for listen, address, family in ((f"[::1]:{port}", ("::1", port), socket.AF_INET6),
                                    (f"unix:{path}", str(path), socket.AF_UNIX)):
        proc = subprocess.Popen([*REDSKY_MAIN, "-c", str(lst.config), "lmtp", "--listen", listen],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.time() + 20
            while True:
                try:
                    with socket.socket(family) as s:
                        s.settimeout(5)
                        s.connect(address)
                        assert s.makefile("rb").readline().startswith(b"220 ")
                        break
                except (ConnectionRefusedError, FileNotFoundError):
                    assert time.time() < deadline, proc.stderr.read1(4000)
                    time.sleep(0.05)
        finally:
            proc.terminate()
            assert proc.wait(10) == 0


# --- [redsky] umask after SIGHUP -----------------------------------------------------

def test_a_reloaded_umask_applies_to_what_lmtp_writes_next(server):
    server.write_config(redsky={"umask": "077"})
    os.kill(server.lmtp_proc.pid, signal.SIGHUP)
    time.sleep(0.5)
    _, replies = Client(server.lmtp_port).deliver("alice@example.org", ["test@lists.example.org"],
                                                  post(msgid="<masked@example.org>"))
    assert replies[0].startswith("250")
    modes = {p.stat().st_mode & 0o777 for p in (server.home / "spool").glob("*.eml")}
    assert modes == {0o600}, [oct(m) for m in modes]
