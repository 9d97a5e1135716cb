"""Content-filter mode (`redsky.py filter`) and its filters: out, whitelist,
dnsbl, autoreply; the exit codes proxsmtpd and Postfix act on."""

import email
import json
import socket
import uuid

import pytest

from conftest import parse, post

ME = "me@example.org"


def message(sender="bob@example.net", to=ME, extra="", subject="Lunch?", body="Are you in?\n"):
    return (f"From: Bob <{sender}>\nTo: {to}\nSubject: {subject}\nMessage-ID: <{uuid.uuid4().hex}@example.net>\n"
            f"Date: Wed, 25 Nov 2026 10:00:00 +0000\n{extra}\n{body}").encode()


def run_filter(rs, data, *args, sender="bob@example.net", recipient=ME, env=None):
    argv = ["filter"]
    if sender is not None:
        argv += [f"--sender={sender}"]
    if recipient is not None:
        argv += ["--recipient", recipient]
    return rs.run(*argv, *args, input=data, env=env)


def last_line(text):
    return text.strip().splitlines()[-1] if text.strip() else ""


@pytest.fixture
def zone(rs):
    """A DNS blocklist zone of this test's own on the fake resolver."""
    name = f"bl-{uuid.uuid4().hex[:8]}.test"
    rs.write_config(dnsbl={"zones": name})
    return name


LISTED = "81.2.69.142"          # a public address; only the fake resolver is ever asked about it


def listed(rs, zone, ip=LISTED, answer="127.0.0.2"):
    rs.dns.a_records[".".join(reversed(ip.split("."))) + "." + zone] = [answer]


# --- the runner in filter mode -------------------------------------------------

def test_a_message_passes_byte_for_byte_on_stdout_with_no_init(rs):
    data = message(extra="X-Odd:  two  spaces\n").replace(b"\n", b"\r\n") + b"\xff\xfe binary tail\r\n"
    r = run_filter(rs, data)
    assert r.returncode == 0, r.err
    assert r.stdout == data
    assert (rs.home / "redsky.db").exists()         # created on first use: a content filter needs no init


def test_missing_read_and_out_are_added_and_order_is_checked(rs):
    rs.write_config(filter={"filters": "whitelist"})
    r = run_filter(rs, message(), "--explain")
    assert r.returncode == 0 and r.stdout.startswith(b"From: Bob")
    assert [line.split()[0] for line in r.err.splitlines() if line.split()[0] in ("read", "whitelist", "out")] == \
        ["read", "whitelist", "out"]
    rs.write_config(filter={"filters": "read nosuch out"})
    r = run_filter(rs, message())
    assert r.returncode == 78 and "unknown filter 'nosuch'" in r.err and r.stdout == b""
    rs.write_config(filter={"filters": "read queuerunner out"})
    assert run_filter(rs, message()).returncode == 78


@pytest.mark.parametrize("data, why", [(b"", "empty message"), (b"\n\njust a body\n", "no header fields")])
def test_bad_input_is_rejected_65_with_an_smtp_line_and_no_output(rs, data, why):
    r = run_filter(rs, data)
    assert r.returncode == 65 and r.stdout == b""
    assert last_line(r.err).startswith("550 5.7.1") and why in last_line(r.err)


def test_a_message_over_max_size_is_rejected(rs):
    rs.write_config(filter={"max_size": "1k"})
    r = run_filter(rs, message(body="x" * 2000 + "\n"))
    assert r.returncode == 65 and r.stdout == b"" and "larger than the limit" in r.err


def test_output_that_cannot_be_written_is_a_temporary_failure(rs):
    import subprocess
    import sys
    from conftest import REDSKY
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, REDSKY, "-c", str(rs.config), "filter", "--sender", "bob@example.net"],
                           input=message(), stdout=full, stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 75
    assert last_line(r.stderr.decode()).startswith("451 4.3.0")


def test_an_unreadable_database_is_a_temporary_failure_not_a_bounce(rs):
    (rs.home / "redsky.db").mkdir()            # cannot be opened as a database
    r = run_filter(rs, message())
    assert r.returncode == 75 and r.stdout == b"" and "Traceback" not in r.err
    assert last_line(r.err).startswith("451 4.3.0")


def test_envelope_from_proxsmtpd_environment(rs):
    rs.write_config(autoreply={"addresses": ME, "text": "Away."})
    env = {"SENDER": "carol@example.com", "RECIPIENTS": f"other@example.org\n{ME}\n"}
    r = run_filter(rs, message(sender="carol@example.com"), "--explain", sender=None, recipient=None, env=env)
    assert r.returncode == 0
    assert f"to other@example.org, {ME}, from carol@example.com" in r.err
    assert rs.sent_to() == ["carol@example.com"]


# --- whitelist ---------------------------------------------------------------------

@pytest.mark.parametrize("pattern, sender, hit", [
    ("bob@example.net", "bob@example.net", True), ("BOB@Example.NET", "bob@example.net", True),
    ("example.net", "bob@example.net", True), ("@example.net", "bob@example.net", True),
    ("example.net", "bob@mail.example.net", False), ("*.example.net", "bob@mail.example.net", True),
    ("*.example.net", "bob@example.net", False), ("b*@example.net", "bob@example.net", True),
    ("alice@example.net", "bob@example.net", False), ("example.net", "bob@badexample.net", False)])
def test_whitelist_patterns(rs, zone, pattern, sender, hit):
    listed(rs, zone)
    rs.write_config(whitelist={"senders": f"nobody@nowhere.test, {pattern}"})
    r = run_filter(rs, message(sender=sender), "--client-address", LISTED, "--explain", sender=sender)
    assert (r.returncode == 0) is hit, r.err
    if hit:
        assert "dnsbl           skipped: sender whitelisted" in r.err


def test_whitelist_file_and_null_sender(rs, zone):
    listed(rs, zone)
    (rs.home / "white.txt").write_text("# friends\nexample.net  # all of it\n")
    rs.write_config(whitelist={"file": "white.txt"})
    assert run_filter(rs, message(), "--client-address", LISTED).returncode == 0
    r = run_filter(rs, message(), "--client-address", LISTED, sender="")
    assert r.returncode == 65                   # the null sender is never trusted
    rs.write_config(whitelist={"file": "missing.txt"})
    r = run_filter(rs, message())
    assert r.returncode == 78 and "missing.txt" in r.err


# --- dnsbl -----------------------------------------------------------------------------

def test_dnsbl_reject_with_the_client_address(rs, zone):
    listed(rs, zone)
    r = run_filter(rs, message(), "--client-address", LISTED)
    assert r.returncode == 65 and r.stdout == b""
    assert last_line(r.err) == f"550 5.7.1 client {LISTED} is listed in {zone} (127.0.0.2)"
    r = run_filter(rs, message(), env={"CLIENT_ADDRESS": LISTED})
    assert r.returncode == 65
    assert run_filter(rs, message(), "--client-address", "81.2.69.143").returncode == 0


def test_dnsbl_rejection_quotes_the_lists_txt_reason(rs, zone):
    listed(rs, zone)
    name = ".".join(reversed(LISTED.split("."))) + "." + zone
    rs.dns.records[name] = ["Listed by BL, see https://bl.example/query/81.2.69.142"]
    r = run_filter(rs, message(), "--client-address", LISTED)
    assert r.returncode == 65
    assert last_line(r.err) == (f"550 5.7.1 client {LISTED} is listed in {zone}"
                                " (127.0.0.2: Listed by BL, see https://bl.example/query/81.2.69.142)")


def test_dnsbl_finds_the_first_untrusted_relay_in_received(rs, zone):
    listed(rs, zone)
    received = ("Received: from mx2.example.org (mx2.example.org [10.1.2.3])\n\tby mx1.example.org (Postfix) with ESMTP;"
                " Wed, 25 Nov 2026 10:00:02 +0000\n"
                f"Received: from spammer.example (unknown [{LISTED}])\n\tby mx2.example.org (Postfix) with SMTP;"
                " Wed, 25 Nov 2026 10:00:01 +0000\n"
                "Received: from [81.2.69.1] by spammer.example; Wed, 25 Nov 2026 10:00:00 +0000\n")
    r = run_filter(rs, message(extra=received))
    assert r.returncode == 65 and LISTED in r.err
    # the MTA's own address (proxsmtpd's CLIENT is the local Postfix) is trusted: Received decides
    assert run_filter(rs, message(extra=received), env={"CLIENT": "127.0.0.1"}).returncode == 65
    # our relay is the listed one: trusted_networks says it is ours, so the next hop counts
    rs.write_config(dnsbl={"zones": zone, "trusted_networks": "81.2.69.0/24"})
    assert run_filter(rs, message(extra=received)).returncode == 0


def test_dnsbl_ipv6_nibble_query(rs, zone):
    ip = "2a01:4f8:c17:1::2"
    nibbles = ".".join(reversed("2a0104f80c170001" + "0" * 15 + "2"))
    rs.dns.a_records[f"{nibbles}.{zone}"] = ["127.0.0.4"]
    r = run_filter(rs, message(), "--client-address", ip)
    assert r.returncode == 65 and f"{ip} is listed in {zone} (127.0.0.4)" in r.err


def test_dnsbl_tag_and_hold(rs, zone):
    listed(rs, zone)
    rs.write_config(dnsbl={"zones": zone, "action": "tag"})
    r = run_filter(rs, message(), "--client-address", LISTED)
    assert r.returncode == 0
    assert parse(r.stdout)["X-Redsky-DNSBL"] == f"{LISTED} listed in {zone} (127.0.0.2)"
    rs.write_config(dnsbl={"zones": zone, "action": "hold"})
    data = message()
    r = run_filter(rs, data, "--client-address", LISTED)
    assert r.returncode == 99 and r.stdout == b"" and last_line(r.err).startswith("250 2.7.0 held in quarantine")
    (held,) = list((rs.home / "quarantine" / "new").iterdir())
    kept = held.read_bytes()
    assert kept.endswith(data) and kept.startswith(b"X-Redsky-Held: client 81.2.69.142 is listed")
    shown = rs.run("quarantine", check=0).out
    assert held.name in shown and "from bob@example.net to me@example.org: Lunch?" in shown
    assert "held: client 81.2.69.142 is listed" in shown
    rs.run("quarantine", "release", held.name, check=0)            # a false positive: deliver it
    ((argv, delivered),) = rs.sent()
    assert argv[-2:] == ["--", ME] and argv[argv.index("-f") + 1] == "bob@example.net" and delivered == data
    assert rs.run("quarantine", check=0).out == ""
    assert rs.run("quarantine", "release", held.name).returncode == 65


def test_dnsbl_answers_outside_127_8_and_refusals_are_not_listings(rs, zone):
    listed(rs, zone, answer="127.255.255.254")       # Spamhaus: query refused
    assert run_filter(rs, message(), "--client-address", LISTED).returncode == 0
    listed(rs, zone, ip="81.2.69.150", answer="10.0.0.1")
    assert run_filter(rs, message(), "--client-address", "81.2.69.150").returncode == 0


def test_dnsbl_answers_are_cached(rs, zone):
    listed(rs, zone)
    name = ".".join(reversed(LISTED.split("."))) + "." + zone
    assert run_filter(rs, message(), "--client-address", LISTED).returncode == 65
    first = rs.dns.queries.count(name)
    assert first == 2                                   # the A record and the TXT reason
    for _ in range(3):
        assert run_filter(rs, message(), "--client-address", LISTED).returncode == 65
    assert rs.dns.queries.count(name) == first


def test_a_dead_dnsbl_server_never_blocks_mail(rs, zone):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))                      # receives, never answers
    try:
        rs.write_config(dnsbl={"zones": zone, "nameserver": "127.0.0.1:%d" % silent.getsockname()[1],
                               "timeout": "0.3s"})
        r = run_filter(rs, message(), "--client-address", LISTED, "--explain")
        assert r.returncode == 0 and r.stdout.startswith(b"From: Bob")
        assert "lookup failed" in r.err
    finally:
        silent.close()


def test_private_and_loopback_clients_are_not_looked_up(rs, zone):
    before = len(rs.dns.queries)
    for ip in ("127.0.0.1", "10.0.0.8", "192.168.1.1", "::1", "fe80::1"):
        assert run_filter(rs, message(), "--client-address", ip).returncode == 0
    assert len(rs.dns.queries) == before


def test_dnsbl_in_the_queue_chain_before_access(rs, zone):
    listed(rs, zone)
    rs.write_config(queue={"filters": "read getinfo loopdetect bouncehandler commands ownermail dnsbl"
                                      " getsubscribers whitelist access subjecttag addfooter queuer"})
    rs.newlist(members=("alice@example.org",))
    r = rs.queue(post(extra=f"Received: from x (x [{LISTED}]) by mx.example.org; Wed, 25 Nov 2026 10:00:00 +0000\n"))
    assert r.returncode == 65 and "listed" in r.err
    assert rs.queue(post(subject="clean")).returncode == 0
    r = rs.run("queue", "--recipient", "test@lists.example.org", "--sender", "alice@example.org",
               "--client-address", LISTED, input=post(subject="by the pipe's word"))
    assert r.returncode == 65 and "listed" in r.err
    # whitelist after getsubscribers lets a non-member post to a subscribers-only list
    rs.write_config(whitelist={"senders": "partner.example"})
    assert rs.queue(post(subject="from partner", sender="pat@partner.example"), sender="pat@partner.example",
                    check=0)
    rs.run("send", check=0)
    subjects = sorted(parse(d)["Subject"] for _, d in rs.sent())
    assert subjects == ["clean", "from partner"]


def test_bad_dnsbl_settings_are_configuration_errors(rs):
    rs.write_config(dnsbl={"zones": "x.test", "action": "bounce"})
    assert run_filter(rs, message()).returncode == 78
    rs.write_config(dnsbl={"zones": "x.test", "action": "reject", "trusted_networks": "not-a-net"})
    r = run_filter(rs, message(), "--client-address", LISTED)
    assert r.returncode == 78 and "trusted_networks" in r.err


# --- autoreply (RFC 3834) ---------------------------------------------------------------

@pytest.fixture
def away(rs):
    rs.write_config(autoreply={"addresses": f"{ME}, boss@example.org", "text": "I am away until Monday.\\nAsk Carol.",
                               "interval": "7d"})
    return rs


def replies(rs):
    return [(argv, email.message_from_bytes(data)) for argv, data in rs.sent()]


def test_autoreply_follows_rfc_3834(away):
    original = message(extra="References: <earlier@example.net>\n", subject="=?utf-8?q?Caf=C3=A9?= tomorrow")
    r = run_filter(away, original)
    assert r.returncode == 0 and r.stdout == original       # the message itself goes on untouched
    ((argv, reply),) = replies(away)
    assert argv[argv.index("-f") + 1] == "<>"               # 3.3: null envelope sender
    assert argv[-1] == "bob@example.net"                    # 4: to the envelope sender
    msgid = email.message_from_bytes(original)["Message-ID"]
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["In-Reply-To"] == msgid
    assert reply["References"].split() == ["<earlier@example.net>", msgid]
    assert reply["From"] == ME and reply["To"] == "bob@example.net"
    assert str(email.header.make_header(email.header.decode_header(reply["Subject"]))) == "Auto: Café tomorrow"
    assert reply.get_payload(decode=True).decode() == "I am away until Monday.\nAsk Carol.\n"


def test_one_reply_per_sender_per_interval(away):
    for _ in range(3):
        assert run_filter(away, message()).returncode == 0
    assert len(away.sent()) == 1
    run_filter(away, message(sender="dave@example.net"), sender="dave@example.net")
    assert away.sent_to() == ["bob@example.net", "dave@example.net"]
    with away.db() as db:                                   # eight days later
        db.execute("UPDATE autoreplies SET sent = sent - 8 * 86400 WHERE sender = 'bob@example.net'")
    run_filter(away, message())
    assert away.sent_to() == ["bob@example.net", "dave@example.net", "bob@example.net"]


def test_each_away_address_answers_for_itself(away):
    run_filter(away, message(to=f"{ME}, boss@example.org"), recipient=None,
               env={"RECIPIENTS": f"{ME}\nboss@example.org"})
    assert sorted(m["From"] for _, m in replies(away)) == ["boss@example.org", ME]


@pytest.mark.parametrize("why, kwargs", [
    ("null sender", {"sender": ""}),
    ("auto-generated", {"extra": "Auto-Submitted: auto-generated\n"}),
    ("auto-replied", {"extra": "Auto-Submitted: auto-replied\n"}),
    ("bulk", {"extra": "Precedence: bulk\n"}),
    ("junk", {"extra": "Precedence: junk\n"}),
    ("list precedence", {"extra": "Precedence: list\n"}),
    ("list-id", {"extra": "List-Id: <team.lists.example.org>\n"}),
    ("list-unsubscribe", {"extra": "List-Unsubscribe: <mailto:leave@example.org>\n"}),
    ("mailer-daemon", {"sender": "MAILER-DAEMON@mx.example.net"}),
    ("bounce address", {"sender": "news-bounces@lists.example.net"}),
    ("owner address", {"sender": "owner-news@lists.example.net"}),
    ("report", {"extra": "Content-Type: multipart/report; report-type=delivery-status; boundary=x\n"}),
    ("suppress", {"extra": "X-Auto-Response-Suppress: OOF, AutoReply\n"}),
    ("x-autoreply", {"extra": "X-Autoreply: yes\n"}),
    ("x-autorespond", {"extra": "X-Autorespond: vacation\n"}),
    ("bcc", {"to": "someone@example.org"}),
    ("self", {"sender": ME}),
    ("not an envelope recipient", {"recipient": "other@example.org"}),
])
def test_no_reply_to_robots_lists_bounces_or_bcc(away, why, kwargs):
    sender = kwargs.pop("sender", "bob@example.net")
    recipient = kwargs.pop("recipient", ME)
    r = run_filter(away, message(sender=sender or "bob@example.net", **kwargs), sender=sender, recipient=recipient)
    assert r.returncode == 0 and r.stdout.startswith(b"From: Bob"), why
    assert away.sent() == [], why


def test_a_reply_that_cannot_be_sent_is_tried_next_time(away):
    (away.sendmail_dir / "fail_once").touch()
    assert run_filter(away, message()).returncode == 0     # the message is not held up
    assert away.sent() == []
    assert run_filter(away, message()).returncode == 0
    assert away.sent_to() == ["bob@example.net"]


def test_autoreply_over_smtp_uses_the_null_sender(away):
    from smtpsink import SMTPSink
    with SMTPSink() as sink:
        away.write_config(send={"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": str(sink.port)})
        assert run_filter(away, message()).returncode == 0
        ((sender, rcpts, data),) = sink.messages
    assert sender == "" and rcpts == ["bob@example.net"] and b"Auto-Submitted: auto-replied" in data


def test_autoreply_without_text_is_a_configuration_error(rs):
    rs.write_config(autoreply={"addresses": ME})
    r = run_filter(rs, message())
    assert r.returncode == 78 and "text" in r.err


def test_explain_comes_before_the_reply_line(rs, zone):
    listed(rs, zone)
    r = run_filter(rs, message(), "--client-address", LISTED, "--explain")
    assert r.returncode == 65
    assert "dnsbl" in r.err and last_line(r.err).startswith("550 5.7.1 client")


@pytest.mark.parametrize("sender", ["bob@example.net\nBcc: victim@example.com", "not an address", "<>",
                                    "-oQ/tmp@example.net"])
def test_autoreply_never_answers_a_hostile_envelope_sender(away, sender):
    r = run_filter(away, message(), sender=sender)
    assert r.returncode == 0 and r.stdout.startswith(b"From: Bob") and "Traceback" not in r.err
    assert away.sent() == []



# --- hostile and odd input through every filter -------------------------------------------

ODD = [
    b"From: a@example.net\nTo: me@example.org\nSubject: x\nContent-Type: multipart/mixed; boundary=\"nope\"\n\n"
    b"--nope\nContent-Type: text/plain\n\nunterminated",
    b"From: =?x-unknown?b?////?= <a@example.net>\nTo: me@example.org\nSubject: =?utf-8?b?invalid base64?=\n\nbody\n",
    b"From: J\xfcrgen <a@example.net>\nTo: me@example.org\nSubject: Gr\xfc\xdfe\n\n\xff\xfe\n",
    b"From: a@example.net\nTo: me@example.org\nSubject: " + b"long " * 3000 + b"\n\nbody\n",
    b"Received: from x (x [999.1.1.1])\nReceived: from y ([IPv6:::ffff:zz])\nReceived: garbage\n"
    b"From: a@example.net\nTo: me@example.org\n\nbody\n",
    b"Received: from z (z [IPv6:2a01:4f8::1])\n\tby mx; now\nFrom: a@example.net\nTo: me@example.org\n\nb\n",
    b"From: a@example.net\nTo: " + b", ".join(b"u%d@example.org" % i for i in range(2000)) + b", me@example.org\n"
    b"References: " + b" ".join(b"<r%d@x>" % i for i in range(500)) + b"\nMessage-ID: <m@x>\n\nbody\n",
    b"From: a@example.net\r\nTo: me@example.org\r\nSubject: crlf\r\n\r\nbody\r\n",
    b"From: a@example.net\rTo: me@example.org\rSubject: cr only\r\rbody\r",
    b"From: <>\nTo: me@example.org\nMessage-ID: <<<>>>\nSubject: \n\n",
]


@pytest.mark.parametrize("data", ODD, ids=range(len(ODD)))
def test_odd_mail_through_every_filter_passes_intact_or_is_refused_cleanly(rs, zone, data):
    rs.write_config(whitelist={"senders": "friend.example"},
                    autoreply={"addresses": ME, "text": "Away."})
    r = run_filter(rs, data, sender="a@example.net")
    assert "Traceback" not in r.err and "internal error" not in r.err
    assert r.returncode in (0, 65), r.err
    if r.returncode == 0:
        assert r.stdout == data
    else:
        assert r.stdout == b"" and last_line(r.err).startswith("550 ")


def test_autoreply_in_the_list_queue_chain(rs):
    """A list that acknowledges each post once per week and sender."""
    rs.newlist("test@lists.example.org", "--access", "open", members=("bob@example.net",))
    rs.run("set", "test@lists.example.org", "dmarc", "never", check=0)
    rs.write_config(queue={"filters": "read getinfo loopdetect bouncehandler commands ownermail getsubscribers"
                                      " access autoreply queuer"},
                    autoreply={"addresses": "test@lists.example.org", "text": "Thanks, your post is in."})
    rs.queue(post(subject="one"), check=0)
    rs.queue(post(subject="two"), check=0)
    acknowledgements = [(argv, parse(d)) for argv, d in rs.sent()]
    assert [a[-1] for a, _ in acknowledgements] == ["alice@example.org"]      # once, at queue time
    assert acknowledgements[0][1]["Subject"] == "Auto: one"
    rs.run("send", check=0)
    assert sorted(parse(d)["Subject"] for a, d in rs.sent() if a[-1] == "bob@example.net") == ["one", "two"]


def test_whitelisted_announcer_posts_to_a_moderated_list_others_are_held(rs):
    rs.newlist("test@lists.example.org", "--access", "moderated", members=("bob@example.net",))
    rs.run("set", "test@lists.example.org", "dmarc", "never", check=0)
    rs.write_config(queue={"filters": "read getinfo loopdetect bouncehandler commands ownermail getsubscribers"
                                      " whitelist access queuer"},
                    whitelist={"senders": "announce@example.org"})
    rs.queue(post(sender="announce@example.org", subject="news"), sender="announce@example.org", check=0)
    rs.queue(post(subject="chatter"), check=0)
    assert rs.status()["held"] == 1
    rs.run("send", check=0)
    assert [parse(d)["Subject"] for _, d in rs.sent()] == ["news"]


def test_a_post_held_by_dnsbl_is_distributed_when_a_moderator_approves(rs, zone):
    listed(rs, zone)
    rs.newlist("test@lists.example.org", "--access", "open", members=("bob@example.net",))
    rs.run("set", "test@lists.example.org", "dmarc", "never", check=0)
    rs.write_config(queue={"filters": "read getinfo loopdetect bouncehandler commands ownermail dnsbl"
                                      " getsubscribers access queuer"},
                    dnsbl={"zones": zone, "action": "hold"})
    received = f"Received: from x (x [{LISTED}]) by mx.example.org; Wed, 25 Nov 2026 10:00:00 +0000\n"
    rs.run("queue", "--recipient", "test@lists.example.org", "--sender", "alice@example.org",
           input=received.encode() + post(subject="false positive"), check=0)
    (held,) = json.loads(rs.run("held", "--json", check=0).out)
    assert "listed in" in held["reason"]
    rs.run("approve", str(held["id"]), check=0)
    rs.run("send", check=0)
    assert [parse(d)["Subject"] for _, d in rs.sent() if _[-1] == "bob@example.net"] == ["false positive"]


def test_caches_and_the_reply_log_stay_small(away, zone):
    listed(away, zone)
    run_filter(away, message(), "--client-address", "81.2.69.200")          # creates the tables
    with away.db() as db:
        db.executemany("INSERT INTO dnsbl_cache VALUES (?, '', 0)", [(f"old{i}",) for i in range(50)])
        db.executemany("INSERT INTO autoreplies VALUES (?, 'x@example.net', 0)", [(f"a{i}@x",) for i in range(50)])
    run_filter(away, message(sender="new@example.net"), "--client-address", "81.2.69.201", sender="new@example.net")
    db = away.db()
    assert db.execute("SELECT count(*) FROM dnsbl_cache WHERE expires = 0").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM autoreplies WHERE sent = 0").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM autoreplies").fetchone()[0] == 2      # bob and new


@pytest.mark.parametrize("field, ip", [
    ("from mail.example.com (mail.example.com [81.2.69.142]) by mx.example.org (Postfix) with ESMTPS id 4A", "81.2.69.142"),
    ("from [1.2.3.4] (unknown [81.2.69.142]) by mx.example.org (Postfix) with ESMTP id 4A", "81.2.69.142"),
    ("from mail.example.com (mail.example.com [IPv6:2a01:4f8:c17:1::2]) by mx (Postfix)", "2a01:4f8:c17:1::2"),
    ("from mail.example.com ([81.2.69.142] helo=[5.6.7.8]) by mx.example.org with esmtps (Exim 4.96)", "81.2.69.142"),
    ("from [81.2.69.142] (helo=mail.example.com) by mx.example.org with esmtp (Exim 4.96) (envelope-from <a@b>)",
     "81.2.69.142"),
    ("from unknown (HELO [5.6.7.8]) (81.2.69.142) by mx.example.org with SMTP; 25 Nov 2026", "81.2.69.142"),
    ("from EXCH01.corp.local (10.1.1.1) by EXCH02.corp.local (10.1.1.2) with Microsoft SMTP Server", "10.1.1.1"),
    ("from mail.example.com (mail.example.com [81.2.69.142])\n\t(using TLSv1.3) by mx.example.org (Postfix)",
     "81.2.69.142"),
    ("by mail.example.org (Postfix, from userid 1000) id 4A; Wed, 25 Nov 2026", None),
    ("from byte.example (byte.example [81.2.69.142]) by mx", "81.2.69.142"),
])
def test_relay_address_of_each_mta_s_received_format(field, ip):
    import redsky
    assert redsky.relay_ip(field) == ip


def test_a_forged_helo_literal_cannot_hide_the_listed_relay(rs, zone):
    listed(rs, zone)
    r = run_filter(rs, message(extra=f"Received: from [8.8.8.8] (unknown [{LISTED}]) by mx.example.org (Postfix)"
                                     " with ESMTP id 4A; Wed, 25 Nov 2026 10:00:00 +0000\n"))
    assert r.returncode == 65 and LISTED in r.err


def test_quarantine_delete_and_a_failed_release_keeps_it(rs, zone):
    listed(rs, zone)
    rs.write_config(dnsbl={"zones": zone, "action": "hold"})
    for n in range(2):
        assert run_filter(rs, message(subject=f"held {n}"), "--client-address", LISTED).returncode == 99
    keys = sorted(p.name for p in (rs.home / "quarantine" / "new").iterdir())
    (rs.sendmail_dir / "fail_once").touch()
    r = rs.run("quarantine", "release", keys[0])
    assert r.returncode == 75 and "kept" in r.err
    assert keys[0] in rs.run("quarantine", check=0).out
    rs.run("quarantine", "delete", *keys, check=0)
    assert rs.run("quarantine", check=0).out == "" and rs.sent() == []
    assert rs.run("quarantine", "release").returncode == 64


def test_a_partly_failed_release_keeps_it_for_the_others_only(rs, zone):
    listed(rs, zone)
    rs.write_config(dnsbl={"zones": zone, "action": "hold"})
    run_filter(rs, message(), "--client-address", LISTED, recipient=None,
               env={"RECIPIENTS": "me@example.org\nboss@example.org"})
    (rs.sendmail_dir / "permanent").write_text("boss@example.org\n")
    (key,) = [p.name for p in (rs.home / "quarantine" / "new").iterdir()]
    assert rs.run("quarantine", "release", key).returncode == 75
    (rs.sendmail_dir / "permanent").unlink()
    shown = rs.run("quarantine", check=0).out
    assert "to boss@example.org:" in shown and key not in shown
    rs.run("quarantine", "release", shown.split()[0], check=0)
    assert sorted(rs.sent_to()) == ["boss@example.org", "me@example.org"]          # each once
