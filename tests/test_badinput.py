"""Hostile and odd input: every message gets a clear outcome, never a traceback."""

import base64

import pytest

from conftest import parse, post

FOOTER = "-- \\nList footer é"


LIST_OPTIONS = ("--access", "open", "--subject-tag", "[t]", "--footer", FOOTER)


def queue_then_send(rs, data, **kw):
    """Queue ``data`` (never a traceback) and, when it was taken, run send; the queue's result."""
    r = rs.queue(data, **kw)
    assert "Traceback" not in r.err
    if r.returncode == 0:
        rs.run("send", check=0)
    return r


@pytest.mark.parametrize("data,why", [
    (b"", "empty"),
    (b"\n\n\n  \n", "empty"),
    (bytes(range(256)) * 40, "no header fields"),
    (b"\x00\x01\x02garbage\xff\xfe", "no header fields"),
    (b"\nJust a body without any header\n", "no header fields"),
    (b"This is not a header\nSubject: x\n\nbody", "no header fields"),
    (b"Subject: x\x00y\n\nbody", "NUL byte"),
])
def test_rejected_with_65_and_one_line(lst, data, why):
    r = queue_then_send(lst, data)
    assert r.returncode == 65 and why in r.err and r.err.count("\n") == 1
    assert lst.status()["queued_posts"] == 0


def test_30mb_message_is_rejected_by_default_and_delivered_intact_when_allowed(lst):
    body = (b"0123456789abcdef" * 64 + b"\n") * 30_000          # ~30 MB
    data = post(body="") + body
    assert len(data) > 30_000_000
    r = queue_then_send(lst, data)
    assert r.returncode == 65 and "larger than the limit" in r.err
    lst.write_config(queue={"max_size": "40M"})
    queue_then_send(lst, data)
    ((argv, sent),) = lst.sent()
    assert body in sent                                              # body intact
    parts = parse(sent).get_payload()                                # non-ASCII footer: wrapped
    assert parts[-1].get_content() == "-- \nList footer é\n"


def test_8bit_headers_delivered_intact(lst):
    data = ("From: Jürgen Müller <jm@example.de>\nTo: test@lists.example.org\nSubject: Grüße\n"
            "X-Weird: \xff\n\nHallo\n").encode("utf-8")
    queue_then_send(lst, data, check=0)
    ((_, sent),) = lst.sent()
    assert "From: Jürgen Müller <jm@example.de>".encode() in sent
    assert "Subject: [t] Grüße".encode() in sent


def test_broken_mime_boundaries_delivered_with_original_intact(lst):
    body = (b"--AAA\nContent-Type: text/plain\n\npart one\n--BBB\nContent-Type: text/html\n\n<b>x"
            b"\n(no closing boundary at all)\n")
    data = post(body="", extra='MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="AAA"\n') + body
    queue_then_send(lst, data, check=0)
    ((_, sent),) = lst.sent()
    assert body in sent
    msg = parse(sent)
    assert msg.get_content_type() == "multipart/mixed"
    assert "List footer é" in msg.get_payload()[-1].get_content()


def test_multipart_without_boundary_parameter(lst):
    data = post(body="whatever\n", extra="MIME-Version: 1.0\nContent-Type: multipart/mixed\n")
    queue_then_send(lst, data, check=0)
    ((_, sent),) = lst.sent()
    assert b"\nwhatever\n" in sent


def test_broken_base64_delivered_with_original_intact(lst):
    body = b"VGhpcyBpcyBmaW5l\n%%% not base64 at all %%%\n"
    data = post(body="", extra="MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
                               "Content-Transfer-Encoding: base64\n") + body
    queue_then_send(lst, data, check=0)
    ((_, sent),) = lst.sent()
    assert body in sent


def test_unknown_charset_and_encoding(lst):
    for extra in ("Content-Type: text/plain; charset=x-klingon\n",
                  "Content-Type: text/plain\nContent-Transfer-Encoding: x-uuencode\n",
                  "Content-Type: text/plain; charset=\"\n"):
        r = queue_then_send(lst, post(subject=extra[:20], body="odd\n", extra="MIME-Version: 1.0\n" + extra))
        assert r.returncode == 0, r.err
    assert len(lst.sent()) == 3


@pytest.mark.parametrize("data", [
    b"Subject: cr only\r\rbody\r",
    b"Subject: crlf\r\nFrom: a@example.org\r\n\r\nbody\r\n",
    b"Subject: " + b"x" * 5000 + b"\n\nvery long header line\n",
    b"Subject: no final newline",
    b"From: a@example.org\n\n" + b"\x00\xff binary body " * 100,
    b"Subject: =?utf-8?b?broken base64 in encoded word?=\n\nbody\n",
    b"Subject: =?unknown-charset?q?x?=\n\nbody\n",
    b"From: \"unbalanced <quote@example.org>\nSubject: s\n\nbody\n",
    b"Content-Type: multipart/alternative; boundary=\"x\"\nSubject: s\n\n--x\n--x--\n",
    b"Content-Type: message/rfc822\nSubject: s\n\nSubject: inner\n\ninner body\n",
    b"Received: x\n" * 10 + b"Subject: s\n\nbody\n",
])
def test_odd_but_valid_messages_are_delivered(lst, data):
    r = queue_then_send(lst, data)
    assert r.returncode == 0, r.err
    ((_, sent),) = lst.sent()
    assert b"List-Id: <test.lists.example.org>" in sent


def test_base64_text_part_gets_footer_in_base64(lst):
    text = "Zeile eins\nZeile zwei\n"
    data = post(body="", extra="MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
                               "Content-Transfer-Encoding: base64\n") + base64.encodebytes(text.encode())
    queue_then_send(lst, data, check=0)
    ((_, sent),) = lst.sent()
    assert parse(sent).get_content() == text + "-- \nList footer é\n"


def test_a_closed_pipe_ends_a_command_quietly(lst):
    """`redsky.py members LIST | head -1`: the reader goes away; no traceback, no internal error."""
    import shlex
    import subprocess
    from conftest import REDSKY_MAIN
    db = lst.db()
    with db:
        db.executemany("INSERT INTO members (list_id, address, subscribed) VALUES (1, ?, 0)",
                       [(f"m{i:05}@example.net",) for i in range(5000)])
    cmd = shlex.join([*REDSKY_MAIN, "-c", str(lst.config), "members", "test@lists.example.org"])
    r = subprocess.run(f"{cmd} | head -1", shell=True, capture_output=True, text=True)
    assert r.stdout.count("\n") == 1 and r.stderr == "", r.stderr
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd} | head -1"], capture_output=True, text=True)
    assert r.returncode == 141 and r.stderr == ""
