"""The archive (per list, maildir or mbox; `archive`, `archive export`,
List-Archive, index/get by email) and digests (MIME and RFC 1153)."""

import email
import html
import json
import mailbox
import re
import shutil
from email import policy

import pytest

import redsky
from conftest import parse, post, request, wsgi

LIST = "test@lists.example.org"
LIST_OPTIONS = ("--access", "open")                 # the `team` fixture: this list, DMARC rewriting off
MEMBERS = ("bob@example.net", "dana@example.net", "erin@example.net")


def posts_with_attachment(n):
    """n posts; the third carries a binary attachment."""
    out = []
    for i in range(1, n + 1):
        if i == 3:
            out.append((f"From: Zoë <zoe@example.org>\nTo: {LIST}\nSubject: =?utf-8?q?Caf=C3=A9_{i}?=\n"
                        f"Message-ID: <p{i}@example.org>\nDate: Wed, 2{i} Nov 2026 10:00:00 +0000\nMIME-Version: 1.0\n"
                        "Content-Type: multipart/mixed; boundary=XYZ\n\n--XYZ\nContent-Type: text/plain; charset=utf-8\n"
                        "Content-Transfer-Encoding: 8bit\n\nthe plan, attached: café\n--XYZ\n"
                        "Content-Type: application/octet-stream; name=plan.bin\nContent-Transfer-Encoding: base64\n\n"
                        "AAECAwQFBgcICQoL/w==\n--XYZ--\n").encode())
        else:
            out.append(post(subject=f"Post {i}", body=f"Body of post {i}, word{i}.\n", msgid=f"<p{i}@example.org>",
                            sender="alice@example.org").replace(b"25 Nov", f"2{i} Nov".encode()))
    return out


# --- archive -----------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_archive_round_trip(team, fmt):
    team.write_config(archive={"format": fmt})
    for data in posts_with_attachment(5):
        team.queue(data, check=0)
    listing = team.run("archive", LIST, check=0).out.splitlines()
    assert [line.split()[0] for line in listing] == ["1", "2", "3", "4", "5"]
    assert "Café 3" in listing[2] and "Post 5" in listing[4]
    found = json.loads(team.run("archive", LIST, "--search", "WORD4", "--json", check=0).out)
    assert [p["number"] for p in found] == [4]
    assert [p["number"] for p in json.loads(team.run("archive", LIST, "--search", "café", "--json", check=0).out)] == [3]
    since = json.loads(team.run("archive", LIST, "--since", "2026-11-24", "--json", check=0).out)
    assert [p["number"] for p in since] == [4, 5]
    out = team.home / "export.mbox"
    team.run("archive", "export", LIST, "--output", str(out), check=0)
    box = mailbox.mbox(str(out))
    messages = list(box)
    assert [m["Message-ID"] for m in messages] == [f"<p{i}@example.org>" for i in range(1, 6)]
    attachment = [p for p in messages[2].walk() if p.get_filename() == "plan.bin"][0]
    assert attachment.get_payload(decode=True) == bytes(range(12)) + b"\xff"
    assert messages[0]["List-Id"] == "<test.lists.example.org>"        # the copy as distributed
    # export to stdout is the same mbox
    assert team.run("archive", "export", LIST, check=0).stdout == out.read_bytes()


def test_archive_is_the_distributed_copy_and_off_stores_nothing(team):
    team.run("set", LIST, "subject_tag", "[t]", check=0)
    team.queue(post(subject="one"), check=0)
    team.run("set", LIST, "archive", "off", check=0)
    team.queue(post(subject="two"), check=0)
    listing = team.run("archive", LIST, check=0).out
    assert "one" in listing and "[t]" not in listing and "two" not in listing     # the list's tag not repeated
    assert b"Subject: [t] one" in team.run("archive", "export", LIST, check=0).stdout    # kept as distributed


def test_archive_usage_errors(team):
    assert team.run("archive", "export").returncode == 64
    assert team.run("archive", "nosuch@lists.example.org").returncode == 67
    assert team.run("archive", LIST, "--since", "yesterday").returncode == 64
    assert team.run("set", LIST, "archive", "everyone").returncode == 64
    assert team.run("set", LIST, "archive_url", "javascript:alert(1)").returncode == 65


def test_list_archive_header_only_with_a_url_and_an_archive(team):
    team.queue(post(subject="a"), check=0)
    team.run("set", LIST, "archive_url", "https://lists.example.org/archive/test/", check=0)
    team.queue(post(subject="b"), check=0)
    team.run("set", LIST, "archive", "off", check=0)
    team.queue(post(subject="c"), check=0)
    team.run("send", check=0)
    headers = {parse(d)["Subject"]: parse(d)["List-Archive"] for _, d in team.sent()}
    assert headers == {"a": None, "b": "<https://lists.example.org/archive/test/>", "c": None}


def test_a_broken_archive_never_stops_a_post(team):
    (team.home / "archive").write_text("not a directory")
    r = team.queue(post())
    assert r.returncode == 0 and "cannot archive" in r.err
    team.run("send", check=0)
    assert len(team.sent()) == 3


@pytest.mark.parametrize("policy_, member_ok, stranger_ok", [("public", True, True), ("private", True, False),
                                                            ("off", False, False)])
def test_index_and_get_by_email_follow_the_archive_policy(team, policy_, member_ok, stranger_ok):
    for data in posts_with_attachment(3):
        team.queue(data, check=0)
    team.run("send", check=0)
    before = len(team.sent())
    team.run("set", LIST, "archive", policy_, check=0)
    for sender, ok in (("bob@example.net", member_ok), ("stranger@example.com", stranger_ok)):
        request(team, "index", sender).check_returncode()
        request(team, "get 3", sender).check_returncode()
    team.run("send", check=0)
    replies = {}
    for argv, data in team.sent()[before:]:
        replies.setdefault(argv[-1], []).append(email.message_from_bytes(data, policy=policy.default))
    for sender, ok in (("bob@example.net", member_ok), ("stranger@example.com", stranger_ok)):
        index, got = replies[sender]
        if ok:
            assert "archive index" in index["Subject"] and "Café 3" in index.get_body().get_content()
            attached = [p for p in got.iter_attachments()][0].get_content()
            assert attached["Message-ID"] == "<p3@example.org>"
            assert [p for p in attached.walk() if p.get_filename() == "plan.bin"]
        else:
            assert "members only" in index.get_body().get_content() or "is off" in index.get_body().get_content()
            assert not list(got.iter_attachments())


def test_get_a_post_that_is_not_there(team):
    team.run("set", LIST, "archive", "public", check=0)
    request(team, "get 42", "bob@example.net").check_returncode()
    team.run("send", check=0)
    (reply,) = [parse(d) for argv, d in team.sent() if argv[-1] == "bob@example.net"]
    assert "no post number 42" in reply.get_body().get_content()



def replies_to(rs, body, sender="stranger@example.com"):
    """The replies `body` mailed to -request gets: [(text, [Message-ID of each attached post])]."""
    rs.run("send", check=0)
    before = len(rs.sent())
    request(rs, body, sender).check_returncode()
    rs.run("send", check=0)
    got = []
    for argv, data in rs.sent()[before:]:
        if argv[-1] == sender:
            msg = email.message_from_bytes(data, policy=policy.default)
            got.append((msg.get_body(("plain",)).get_content(),
                        [p.get_content()["Message-ID"] for p in msg.iter_attachments()]))
    return got


@pytest.mark.parametrize("asked, sent, rest", [
    ("get 1-500", range(1, 11), ["11-500"]),                     # a range: ten, and what is left
    ("get 3-5 7,9 14-12", None, None),                            # a backwards range: not understood
    ("get 3-5 7,9", [3, 4, 5, 7, 9], []),
    ("get 12-20", [12, 13, 14, 15], []),                          # beyond the last post: what there is
    ("\n".join(f"get {n}" for n in range(15, 5, -1)), range(6, 16), []),   # ten lines: ten posts
    ("get 1-8 11-12 14-15", [*range(1, 9), 11, 12], ["14-15"]),
    ("get 2\nget 4-30\nget 1", [2, *range(4, 13)], ["13-30", "1"]),  # lines share the ten
    ("get 16-99", [], None),
])
def test_one_command_mail_gets_at_most_ten_posts_and_is_told_the_rest(team, asked, sent, rest):
    """`get` takes numbers and ranges; one mail, however many get lines it holds, gets at most
    GET_POSTS posts (and GET_BYTES), and the reply names what it did not send, to ask again."""
    team.run("set", LIST, "archive", "public", check=0)
    team.write_config(commands={"max_replies": "100"})
    for data in numbered_posts(15):
        team.queue(data, check=0)
    (text, ids), = replies_to(team, asked, "bob@example.net")
    if sent is None:
        assert ids == [] and "has no post number" in text
        return
    assert sorted(ids) == sorted(f"<n{n}@example.org>" for n in sent), text
    assert len(ids) <= redsky.GET_POSTS
    if rest:
        assert all(f"  get {r}\n" in text for r in rest) and "at most 10 posts" in text, text
    else:
        assert "Not sent" not in text
    if not sent:
        assert "no post" in text and "16-99" in text


def test_the_bytes_of_one_reply_are_capped_too(team, monkeypatch):
    team.run("set", LIST, "archive", "public", check=0)
    team.write_config(commands={"max_replies": "100"})
    big = "x" * 70 + "\n"
    for n in range(1, 5):
        team.queue(post(subject=f"big {n}", body=big * 4000, msgid=f"<big{n}@example.org>"), check=0)
    monkeypatch.setattr(redsky, "GET_BYTES", 600_000)          # two posts of 290 KB fit, not three
    (text, ids), = replies_to(team, "get 1-4", "bob@example.net")
    assert ids == ["<big1@example.org>", "<big2@example.org>"] and "get 3-4\n" in text
    monkeypatch.setattr(redsky, "GET_BYTES", 1000)              # one post larger than the cap still goes
    (text, ids), = replies_to(team, "get 3\nget 4", "bob@example.net")
    assert ids == ["<big3@example.org>"] and "get 4\n" in text


@pytest.mark.parametrize("asked, sent, rest", [("get 1-12", [1], "2-12"), ("get 5\nget 6\nget 7", [5], "6"),
                                               ("get 3", [], "3"), ("get 2-3", [2], "3")])
def test_an_address_that_is_not_a_member_gets_one_small_post_a_mail(team, asked, sent, rest):
    """Anyone can put any address in a From:, so `get` for one that is not a member of the list
    sends one post of at most GET_BYTES_OUTSIDER (a forged `get 1-12` mailed 9.4 MB to a stranger);
    the reply says why and what to ask for again.  Post 3 is larger than that: never to a stranger."""
    team.run("set", LIST, "archive", "public", check=0)
    team.write_config(commands={"max_replies": "100"})
    for n in range(1, 13):
        body = ("y" * 70 + "\n") * (16000 if n == 3 else 10)
        team.queue(post(subject=f"post {n}", body=body, msgid=f"<o{n}@example.org>"), check=0)
    (text, ids), = replies_to(team, asked, "victim@else.example")
    assert ids == [f"<o{n}@example.org>" for n in sent], text
    assert f"  get {rest}\n" in text and "not a member" in text and "at most 1 posts and 1 MB" in text.replace("\n", " ")
    # a member asking the same gets what a member gets
    (text, ids), = replies_to(team, "get 1-12", "bob@example.net")
    assert len(ids) == 10 and "not a member" not in text

# --- digest ------------------------------------------------------------------------------

def digests(rs, address):
    return [email.message_from_bytes(d, policy=policy.default) for argv, d in rs.sent()
            if argv[-1] == address and "Digest" in parse(d)["Subject"]]


def test_five_posts_one_mime_digest_with_all_five_intact(team):
    team.run("set-member", LIST, "dana@example.net", "digest", "on", check=0)
    team.run("set-member", LIST, "erin@example.net", "digest", "on", check=0)
    originals = posts_with_attachment(5)
    for data in originals:
        team.queue(data, check=0)
    team.run("send", check=0)                       # not due yet: 30 KB / one day
    assert digests(team, "dana@example.net") == []
    assert sorted(team.sent_to()) == ["bob@example.net"] * 5    # regular member: every post, once
    with team.db() as db:                           # a day later
        db.execute("UPDATE digest_posts SET received = received - 86401")
    team.run("send", check=0)
    for member in ("dana@example.net", "erin@example.net"):
        (digest,) = digests(team, member)
        assert digest["Subject"] == "test Digest, Vol 1, Issue 1"
        assert digest.get_content_type() == "multipart/mixed"
        masthead, toc, bundle = list(digest.iter_parts())[:3]
        assert "Today's Topics (5 messages)" == toc["Content-Description"]
        assert "3. Café 3 (Zoë <zoe@example.org>)" in toc.get_content()
        assert bundle.get_content_type() == "multipart/digest"
        inner = [p.get_content() for p in bundle.iter_parts()]
        assert [m["Message-ID"] for m in inner] == [f"<p{i}@example.org>" for i in range(1, 6)]
        plan = [p for p in inner[2].walk() if p.get_filename() == "plan.bin"][0]
        assert plan.get_content() == bytes(range(12)) + b"\xff"
        assert "List-Unsubscribe" in digest and "leave+" in digest["List-Unsubscribe"]
    assert team.sent_to().count("bob@example.net") == 5          # no digest for a regular member
    team.run("send", check=0)
    assert len(digests(team, "dana@example.net")) == 1          # sent once


def test_numbering_and_size_threshold(team):
    team.run("set-member", LIST, "dana@example.net", "digest", "on", check=0)
    team.run("set", LIST, "digest_size_threshold", "2", check=0)
    for n in range(1, 4):
        team.queue(post(subject=f"big {n}", body="x" * 2500 + "\n"), check=0)
        team.run("send", check=0)
    assert [d["Subject"] for d in digests(team, "dana@example.net")] == [
        "test Digest, Vol 1, Issue 1", "test Digest, Vol 1, Issue 2", "test Digest, Vol 1, Issue 3"]
    with team.db() as db:                           # the last digest went out last year
        db.execute("UPDATE lists SET digest_last = digest_last - 366 * 86400")
    team.queue(post(subject="new year", body="x" * 2500 + "\n"), check=0)
    team.run("send", check=0)
    assert digests(team, "dana@example.net")[-1]["Subject"] == "test Digest, Vol 2, Issue 1"


def test_plain_rfc1153_digest(team):
    team.run("set-member", LIST, "dana@example.net", "digest", "on", check=0)
    team.run("set", LIST, "digest_format", "plain", check=0)
    team.run("set", LIST, "digest_interval", "1s", check=0)
    for data in posts_with_attachment(3):
        team.queue(data, check=0)
    team.queue(post(subject="sneaky", body="above\n" + "-" * 30 + "\nbelow\n"), check=0)
    import time
    time.sleep(1.1)
    team.run("send", check=0)
    (digest,) = digests(team, "dana@example.net")
    assert digest.get_content_type() == "text/plain"
    text = digest.get_content()
    topics, rest = text.split("\n" + "-" * 70 + "\n\n", 1)
    assert "Today's Topics:" in topics and "3. Café 3 (Zoë <zoe@example.org>)" in topics
    messages = rest.split("\n" + "-" * 30 + "\n\n")
    assert messages[0].startswith("Date: Wed, 21 Nov 2026 10:00:00 +0000\nFrom: Alice <alice@example.org>\nSubject: Post 1\n")
    assert "the plan, attached: café" in messages[2] and "[attachment not included: plan.bin" in messages[2]
    assert " " + "-" * 30 + "\nbelow" in messages[3]              # a separator lookalike is escaped
    assert messages[-1].strip().splitlines() == ["End of test Digest, Vol 1, Issue 1",
                                                 "*" * len("End of test Digest, Vol 1, Issue 1")]


def test_digest_only_list_queues_no_single_copies(rs):
    rs.newlist(LIST, "--access", "open", members=("dana@example.net",))
    rs.run("set", LIST, "dmarc", "never", check=0)
    rs.run("set-member", LIST, "dana@example.net", "digest", "on", check=0)
    r = rs.queue(post())
    assert r.returncode == 0 and "discard" not in r.err.lower()
    rs.run("send", check=0)
    assert rs.sent() == []
    assert rs.db().execute("SELECT count(*) FROM digest_posts").fetchone()[0] == 1


def test_set_digest_by_email(team):
    request(team, "set digest on", "bob@example.net").check_returncode()
    assert team.members(LIST)["bob@example.net"]["digest"] is False     # it delays bob's mail: he confirms
    team.run("send", check=0)
    (confirmation,) = [parse(d) for argv, d in team.sent() if argv[-1] == "bob@example.net"]
    request(team, confirmation["Subject"], "bob@example.net").check_returncode()
    assert team.members(LIST)["bob@example.net"]["digest"] is True
    request(team, "set digest off", "bob@example.net").check_returncode()
    assert team.members(LIST)["bob@example.net"]["digest"] is False
    request(team, "set digest on", "stranger@example.com").check_returncode()
    request(team, "set digest sometimes", "dana@example.net").check_returncode()
    assert team.members(LIST)["dana@example.net"]["digest"] is False
    team.run("send", check=0)
    by = {}
    for argv, d in team.sent():
        by.setdefault(argv[-1], []).append(parse(d)["Subject"])
    assert by["bob@example.net"][1:] == [f"{LIST}: digest on", f"{LIST}: digest off"]
    on = [parse(d) for argv, d in team.sent() if parse(d)["Subject"] == f"{LIST}: digest on"][0]
    assert "sent when 30 KB of posts are waiting, or 1 day after the last one" in on.get_body().get_content()
    assert by["stranger@example.com"] == [f"{LIST}: not subscribed"]
    assert by["dana@example.net"] == [f"{LIST}: help"]


def test_set_member_cli_errors(team):
    assert team.run("set-member", LIST, "nobody@example.net", "digest", "on").returncode == 65
    assert team.run("set-member", LIST, "bob@example.net", "digest", "maybe").returncode == 64
    assert team.run("set", LIST, "digest_interval", "soon").returncode == 64
    assert team.run("set", LIST, "digest_size_threshold", "0").returncode == 64


def test_leaving_digest_mode_delivers_the_waiting_posts_singly(team):
    team.run("set-member", LIST, "dana@example.net", "digest", "on", check=0)
    team.run("set-member", LIST, "erin@example.net", "digest", "on", check=0)
    for n in (1, 2):
        team.queue(post(subject=f"waiting {n}"), check=0)
    assert team.status()["digest_posts"] == 2
    team.run("set-member", LIST, "dana@example.net", "digest", "off", check=0)      # by the CLI
    request(team, "set digest off", "erin@example.net").check_returncode()          # by email
    team.run("send", check=0)
    for member in ("dana@example.net", "erin@example.net"):
        got = sorted(parse(d)["Subject"] for argv, d in team.sent() if argv[-1] == member)
        assert [g for g in got if g.startswith("waiting")] == ["waiting 1", "waiting 2"], member
    with team.db() as db:                           # the digest would be due now: nobody is left for it
        db.execute("UPDATE digest_posts SET received = received - 86401")
    team.run("send", check=0)
    assert digests(team, "dana@example.net") == [] and team.status()["digest_posts"] == 0


ODD_POSTS = [
    b"From: a@example.org\nTo: test@lists.example.org\n\nno subject, no date\n",
    b"From: a@example.org\nSubject: broken\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=q\n\n--q\n"
    b"Content-Type: text/plain; charset=x-unknown-charset\n\n\xff\xfe text\n",
    b"From: J\xfcrgen <a@example.org>\nSubject: Gr\xfc\xdfe\nContent-Type: text/plain; charset=latin-1\n\n\xe9t\xe9\n",
    b"From: a@example.org\r\nSubject: crlf\r\n\r\nline one\r\n--===============redsky-lookalike==\r\n",
    b"From: a@example.org\nSubject: b64\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
    b"!!!not base64!!!\n",
]


@pytest.mark.parametrize("fmt", ["mime", "plain"])
def test_odd_posts_make_a_digest_without_stopping_send(team, fmt):
    team.run("set-member", LIST, "dana@example.net", "digest", "on", check=0)
    team.run("set", LIST, "digest_format", fmt, check=0)
    for data in ODD_POSTS:
        team.queue(data, check=0)
    with team.db() as db:
        db.execute("UPDATE digest_posts SET received = received - 86401")
    r = team.run("send", check=0)
    assert "Traceback" not in r.err
    (digest,) = digests(team, "dana@example.net")
    if fmt == "mime":
        bundle = list(digest.iter_parts())[2]
        assert len(list(bundle.iter_parts())) == len(ODD_POSTS)
    else:
        text = digest.get_content()
        assert text.count("\n" + "-" * 30 + "\n") == len(ODD_POSTS)
        assert "(no subject)" in text.split("-" * 70)[0]
    assert team.sent_to().count("bob@example.net") == len(ODD_POSTS)


def test_plain_digest_shows_html_posts_as_text_and_prefers_the_plain_alternative(team):
    team.run("set-member", LIST, "dana@example.net", "digest", "on", check=0)
    team.run("set", LIST, "digest_format", "plain", check=0)
    html_only = (b"From: h@example.org\nSubject: html only\nContent-Type: text/html; charset=utf-8\n\n"
                 b"<html><head><style>p {color: red}</style></head><body><p>Hello &amp; welcome,</p>"
                 b"<p>caf&eacute; at <b>noon</b><br>bring snacks</p><script>alert(1)</script></body></html>\n")
    both = (b"From: h@example.org\nSubject: both\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=a\n\n"
            b"--a\nContent-Type: text/plain\n\nthe plain words\n--a\nContent-Type: text/html\n\n<p>the html words</p>\n"
            b"--a--\n")
    team.queue(html_only, check=0)
    team.queue(both, check=0)
    with team.db() as db:
        db.execute("UPDATE digest_posts SET received = received - 86401")
    team.run("send", check=0)
    (digest,) = digests(team, "dana@example.net")
    text = digest.get_content()
    assert "Hello & welcome,\ncafé at noon\nbring snacks" in text
    assert "<p>" not in text and "color: red" not in text and "alert(1)" not in text
    assert "the plain words" in text and "the html words" not in text
    found = json.loads(team.run("archive", LIST, "--search", "café at noon", "--json", check=0).out)
    assert len(found) == 1


@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_parallel_queue_runs_archive_every_post_once_and_whole(team, fmt):
    from concurrent.futures import ThreadPoolExecutor
    team.write_config(archive={"format": fmt})
    bodies = [f"From: alice@example.org\nSubject: parallel {i}\nMessage-ID: <par{i}@example.org>\n\n"
              + ("From the start, line %d\n" % i) * 50 for i in range(12)]
    with ThreadPoolExecutor(12) as pool:          # twelve processes at once, as the MTA runs them
        results = list(pool.map(lambda b: team.queue(b.encode(), subprocess=True), bodies))
    assert all(r.returncode == 0 for r in results)
    out = team.home / "all.mbox"
    team.run("archive", "export", LIST, "--output", str(out), check=0)
    messages = list(mailbox.mbox(str(out)))
    assert sorted(m["Message-ID"] for m in messages) == sorted(f"<par{i}@example.org>" for i in range(12))
    for m in messages:                   # whole: every line, and "From " at line start survives quoting
        assert m.get_payload().count("From the start, line") == 50


def test_a_hostile_envelope_sender_cannot_break_the_mbox(team):
    team.write_config(archive={"format": "mbox"})
    team.queue(post(subject="first"), sender="evil\nFrom x Mon Jan  1 00:00:00 2024\n@example.org", check=0)
    team.queue(post(subject="second"), sender="a b@example.org", check=0)
    box = mailbox.mbox(str(team.home / "archive" / "test@lists.example.org.mbox"))
    assert [m["Subject"] for m in box] == ["first", "second"]
    assert all(m.get_from().startswith("MAILER-DAEMON ") for m in box)


def test_plain_digest_has_the_footer_once_at_the_end(team):
    """Each post carries the footer as distributed; the RFC 1153 digest shows it once, at the end."""
    team.run("set", LIST, "footer", "Unsubscribe: $unsubscribe", check=0)
    team.run("set-member", LIST, "dana@example.net", "digest", "on", check=0)
    team.run("set", LIST, "digest_format", "plain", check=0)
    team.run("set", LIST, "digest_interval", "1s", check=0)
    for n in range(3):
        team.queue(post(subject=f"footer {n}", body=f"Post number {n}.\n"), check=0)
    import time
    time.sleep(1.1)
    team.run("send", check=0)
    (digest,) = digests(team, "dana@example.net")
    text = digest.get_content()
    assert text.count("Unsubscribe: ") == 1 and all(f"Post number {n}." in text for n in range(3))
    assert text.index("Unsubscribe: ") > text.index("Post number 2.")


# --- permanent numbers ---------------------------------------------------------------------

def listing(rs):
    """{number: subject} of `archive LIST`."""
    return {r["number"]: r["subject"] for r in json.loads(rs.run("archive", LIST, "--json", check=0).out)}


def got(rs, number, sender="bob@example.net"):
    """What `get N` by email answers: the attached post's Message-ID, or the reply's text."""
    rs.run("send", check=0)
    before = len(rs.sent())
    request(rs, f"get {number}", sender).check_returncode()
    rs.run("send", check=0)
    (reply,) = [email.message_from_bytes(d, policy=policy.default) for argv, d in rs.sent()[before:]
                if argv[-1] == sender]
    attached = list(reply.iter_attachments())
    return attached[0].get_content()["Message-ID"] if attached else reply.get_body().get_content()


def numbered_posts(n, authors=("alice@example.org",)):
    return [post(subject=f"Number {i}", body=f"Post number {i}.\n", msgid=f"<n{i}@example.org>",
                 sender=authors[(i - 1) % len(authors)]).replace(b"25 Nov", f"{10 + i} Nov".encode())
            for i in range(1, n + 1)]


@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_forgetting_an_author_leaves_gaps_and_renumbers_nothing(team, fmt):
    team.write_config(archive={"format": fmt})
    team.run("set", LIST, "archive", "public", check=0)
    for data in numbered_posts(6, authors=("alice@example.org", "carol@example.com", "dave@example.org")):
        team.queue(data, check=0)
    assert "archive 2" in team.run("forget", "carol@example.com", "--archive", check=0).out
    assert listing(team) == {1: "Number 1", 3: "Number 3", 4: "Number 4", 6: "Number 6"}
    assert got(team, 4) == "<n4@example.org>" and got(team, 6) == "<n6@example.org>"
    assert "was removed" in got(team, 5) and "no post number 7" in got(team, 7)
    before = len(team.sent())
    request(team, "index", "erin@example.net").check_returncode()
    team.run("send", check=0)
    (answer,) = [parse(d) for argv, d in team.sent()[before:] if argv[-1] == "erin@example.net"]
    assert re.findall(r"(?m)^ +(\d+) ", answer.get_body().get_content()) == ["1", "3", "4", "6"]
    folder = team.home / "pages" / LIST
    assert "removed from this archive at its author's request" in html.unescape((folder / "2.html").read_text())
    assert "<h1>Number 4</h1>" in (folder / "4.html").read_text() and not (folder / "5.eml").exists()
    # a post archived after the gap takes the next number, never a freed one
    team.queue(post(subject="Number 7", msgid="<n7@example.org>"), check=0)
    assert max(listing(team)) == 7 and got(team, 7) == "<n7@example.org>"
    feed = (folder / "atom.xml").read_text()
    assert 'href="7.html"' in feed and 'href="2.html"' not in feed and 'href="5.html"' not in feed


def test_an_owner_deletes_one_post_and_its_number_stays_a_gap(team):
    team.run("set", LIST, "archive", "public", check=0)
    for data in numbered_posts(3):
        team.queue(data, check=0)
    r = team.run("archive", "delete", LIST, "2", check=0)
    assert "post 2 removed" in r.out
    assert team.run("archive", "delete", LIST, "2").returncode == 65          # gone already
    assert team.run("archive", "delete", LIST, "9").returncode == 65          # never there
    assert team.run("archive", "delete", LIST, "two").returncode == 64
    assert team.run("archive", "delete", LIST).returncode == 64
    assert listing(team) == {1: "Number 1", 3: "Number 3"}
    assert "was removed" in got(team, 2)
    page = (team.home / "pages" / LIST / "2.html").read_text()
    assert "by the list's owners" in html.unescape(page) and "Number 2" not in page
    assert "Number 2" not in (team.home / "pages" / LIST / "2026-11.html").read_text()
    # the function the owners' email command and the web admin call
    store = redsky.open_store(redsky.Config.find(str(team.config)))
    try:
        row = store.require_list(LIST)
        config = redsky.Config.find(str(team.config))
        assert redsky.archive_delete(config, store, row, 3, "owner@example.org") is True
        assert redsky.archive_delete(config, store, row, 3, "owner@example.org") is False
    finally:
        store.close()
    assert listing(team) == {1: "Number 1"}


def test_a_rebuild_keeps_every_number_and_gap(team):
    team.run("set", LIST, "archive", "public", check=0)
    for data in numbered_posts(5):
        team.queue(data, check=0)
    team.run("archive", "delete", LIST, "1", "3", check=0)
    folder = team.home / "pages" / LIST
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}
    shutil.rmtree(folder)
    assert "3 posts" in team.run("archive", "html", LIST, check=0).out
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before
    assert listing(team) == {2: "Number 2", 4: "Number 4", 5: "Number 5"}
    # what `archive` numbers, `get`, the pages and the feed say are the same
    for n in (2, 4, 5):
        assert got(team, n) == f"<n{n}@example.org>"
        assert f"Message-ID: <n{n}@example.org>" in (folder / f"{n}.eml").read_text()


@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_parallel_queue_runs_number_like_archive_get_and_the_pages(team, fmt):
    from concurrent.futures import ThreadPoolExecutor
    team.write_config(archive={"format": fmt}, web={"base_url": "https://lists.example.org/redsky"})
    team.run("set", LIST, "archive", "public", check=0)
    team.queue(post(subject="first", msgid="<first@example.org>"), check=0)         # pages exist
    bodies = [post(subject=f"parallel {i}", msgid=f"<par{i}@example.org>") for i in range(10)]
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda b: team.queue(b, subprocess=True), bodies))
    assert all(r.returncode == 0 for r in results), [r.err for r in results]
    numbers = listing(team)
    assert sorted(numbers) == list(range(1, 12))
    folder = team.home / "pages" / LIST
    for n, subject in numbers.items():
        msgid = "<first@example.org>" if subject == "first" else f"<par{subject.split()[1]}@example.org>"
        assert f"Message-ID: {msgid}" in (folder / f"{n}.eml").read_text()
        assert f"<h1>{subject}</h1>" in (folder / f"{n}.html").read_text()
        status, headers, _ = wsgi(team, f"/archive/{LIST}/msgid/{msgid.strip('<>')}")
        assert status == 301 and headers["Location"].endswith(f"/{n}.html")
    for n in (2, 7, 11):
        assert got(team, n) == re.search(r"Message-ID: (\S+)", (folder / f"{n}.eml").read_text()).group(1)
    assert "(11 posts)" in (folder / "index.html").read_text()



@pytest.mark.parametrize("umask", ["007", "077"])
def test_the_pages_are_readable_by_the_web_server_whatever_the_umask(team, umask):
    """The README's static nginx block serves the pages as the web server's user: every page is
    0644 and every folder 0755 however they were made (a post, a rebuild, a removal), the rest of
    redsky's files as [redsky] umask says."""
    import os
    import stat
    team.write_config(redsky={"umask": umask})
    team.run("set", LIST, "archive", "public", check=0)
    root = team.home / "pages"

    def modes():
        found = {p: stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")] if p.name != ".lock"}
        assert any(p.suffix == ".mbox" for p in found) and any(p.parent.name == "att" for p in found)
        return {p.relative_to(root): oct(m) for p, m in found.items()
                if m != (0o755 if p.is_dir() else 0o644)}
    for data in posts_with_attachment(3):
        team.queue(data, check=0)
    assert modes() == {}
    team.run("archive", "delete", LIST, "1", check=0)
    assert modes() == {}
    os.chmod(root / LIST, 0o770)                    # as an older redsky left them
    os.chmod(root, 0o770)
    team.queue(post(subject="after"), check=0)
    assert modes() == {}
    assert team.run("archive", "html", LIST).returncode == 0
    assert modes() == {}
    private = stat.S_IMODE((team.home / "redsky.db").stat().st_mode)
    assert private & 0o007 == 0, oct(private)      # the database stays closed to others

# --- what must not be archived ---------------------------------------------------------------

@pytest.mark.parametrize("header", ["X-No-Archive: yes", "x-no-archive: YES", "X-No-Archive: Yes; reason",
                                    "X-Archive: No", "Archive: no; filename=x", "ARCHIVE: NO",
                                    "X-No-Archive: no\nX-No-Archive: yes", "X-Archive: no (please)",
                                    "Archive: No (a comment)", "X-Archive: =?utf-8?q?no?=",
                                    "Archive: (why (not)) NO", "X-Archive: yes\nX-Archive: no"])
def test_a_post_that_asks_not_to_be_archived_is_delivered_and_kept_nowhere(team, header):
    team.write_config(web={"base_url": "https://lists.example.org/redsky"})
    team.run("set", LIST, "archive", "public", check=0)
    team.run("set-member", LIST, "dana@example.net", "digest", "on", check=0)
    team.queue(post(subject="kept", msgid="<kept@example.org>"), check=0)
    r = team.queue(post(subject="secret", msgid="<secret@example.org>", extra=header + "\n"), check=0)
    assert "not archived" in team.run("trace", "<secret@example.org>", check=0).out
    team.queue(post(subject="kept too", msgid="<kept2@example.org>"), check=0)
    team.run("send", check=0)
    copies = {parse(d)["Subject"]: parse(d) for argv, d in team.sent() if argv[-1] == "bob@example.net"}
    assert set(copies) == {"kept", "secret", "kept too"}                       # delivered
    assert copies["secret"]["Archived-At"] is None and copies["kept"]["Archived-At"] is not None
    assert listing(team) == {1: "kept", 2: "kept too"}                         # not archived, no gap
    folder = team.home / "pages" / LIST
    everything = b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())
    assert b"secret" not in everything
    found = wsgi(team, f"/archive/{LIST}/search", query="q=secret")[2]
    assert "0 found" in found
    with team.db() as db:                            # the digest has it, without an archive link
        db.execute("UPDATE digest_posts SET received = received - 86401")
    team.run("send", check=0)
    (digest,) = digests(team, "dana@example.net")
    inner = {m["Subject"]: m for m in (p.get_content() for p in list(digest.iter_parts())[2].iter_parts())}
    assert inner["secret"]["Archived-At"] is None and inner["kept"]["Archived-At"] is not None
    assert r.returncode == 0


def test_a_plain_digest_links_the_archived_posts_only(team):
    team.write_config(web={"base_url": BASE})
    team.run("set", LIST, "archive", "public", check=0)
    team.run("set", LIST, "digest_format", "plain", check=0)
    team.run("set-member", LIST, "dana@example.net", "digest", "on", check=0)
    team.queue(post(subject="linked", msgid="<linked@example.org>"), check=0)
    team.queue(post(subject="unlinked", msgid="<unlinked@example.org>", extra="X-No-Archive: yes\n"), check=0)
    with team.db() as db:
        db.execute("UPDATE digest_posts SET received = received - 86401")
    team.run("send", check=0)
    (digest,) = digests(team, "dana@example.net")
    text = digest.get_content()
    assert text.count("Archived-At:") == 1
    assert f"Archived-At: <{BASE}/archive/{LIST}/msgid/linked@example.org>" in text


def test_x_no_archive_no_is_archived(team):
    team.queue(post(subject="keep me", extra="X-No-Archive: no\nX-Archive: yes\n"), check=0)
    assert listing(team) == {1: "keep me"}


# --- from a mail to its page and back; threads ------------------------------------------------

BASE = "https://lists.example.org/redsky"


def test_every_copy_carries_archived_at_which_finds_its_page(team):
    team.write_config(web={"base_url": BASE})
    team.run("set", LIST, "archive", "public", check=0)
    team.queue(post(subject="before", msgid="<b@example.org>"), check=0)
    odd = "<odd/id+%41?#x@ex.example>"                  # the Message-ID's own / % ? # must survive the URL
    forged = f"Archived-At: <https://evil.example/{LIST}/1>\n"
    team.queue(post(subject="odd one", msgid=odd, extra=forged), check=0)
    team.run("send", check=0)
    copies = [parse(d) for argv, d in team.sent() if parse(d)["Subject"] == "odd one"]
    assert len(copies) == 3 and all(len(c.get_all("Archived-At")) == 1 for c in copies)
    url = copies[0]["Archived-At"].strip("<>")
    assert {c["Archived-At"] for c in copies} == {f"<{url}>"} and "evil" not in url
    assert url.startswith(f"{BASE}/archive/{LIST}/msgid/") and "%2F" in url and "%25" in url and "%3F" in url
    from urllib.parse import unquote
    status, headers, _ = wsgi(team, unquote(url[len(BASE):]).encode("utf-8").decode("latin-1"))
    assert status == 301 and headers["Location"] == f"{BASE}/archive/{LIST}/2.html"
    assert wsgi(team, f"/archive/{LIST}/2.html")[0] == 200
    assert wsgi(team, f"/archive/{LIST}/msgid/nothing@example.org")[0] == 404
    # a private list's copies carry none: nothing there to point at
    team.run("set", LIST, "archive", "private", check=0)
    before = len(team.sent())
    team.queue(post(subject="private"), check=0)
    team.run("send", check=0)
    assert all(parse(d)["Archived-At"] is None for _, d in team.sent()[before:])


def _archived_at_of(team, subject):
    team.run("send", check=0)
    (url,) = {parse(d)["Archived-At"] for _, d in team.sent() if parse(d)["Subject"] == subject}
    return url


def _follow(team, url):
    from urllib.parse import unquote
    status, headers, _ = wsgi(team, unquote(url.strip("<>")[len(BASE):]).encode("utf-8").decode("latin-1"))
    return status, headers.get("Location", "")


@pytest.mark.parametrize("removal", ["owner", "forget"])
@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_a_removed_posts_message_id_link_never_passes_to_a_later_post(team, removal, fmt):
    """Issue 33 review: after a removal (and the duplicate window), a post with the same Message-ID
    got the msgid/ link.  The link stays the first post's (its gap); a later one has its own."""
    team.write_config(web={"base_url": BASE}, archive={"format": fmt})
    team.run("set", LIST, "archive", "public", check=0)
    team.queue(post(subject="original", msgid="<orig.1234@mail.example.org>", sender="carol@example.com"), check=0)
    team.queue(post(subject="kept", msgid="<kept@example.org>"), check=0)
    if removal == "owner":
        team.run("archive", "delete", LIST, "1", check=0)
    else:
        assert "archive 1" in team.run("forget", "carol@example.com", "--archive", check=0).out
    with team.db() as db:
        db.execute("DELETE FROM recent_posts")                     # as after [queue] duplicate_window
        assert b"orig.1234" not in repr(list(db.execute("SELECT * FROM archived_posts"))).encode()
    for attempt in ("taker", "taker again"):
        team.queue(post(subject=attempt, body=attempt + "\n", msgid="<orig.1234@mail.example.org>"), check=0)
        with team.db() as db:
            db.execute("DELETE FROM recent_posts")
    assert listing(team) == {2: "kept", 3: "taker", 4: "taker again"}
    assert _follow(team, f"<{BASE}/archive/{LIST}/msgid/orig.1234@mail.example.org>") == \
        (301, f"{BASE}/archive/{LIST}/1.html")                    # the gap, still
    assert "removed" in wsgi(team, f"/archive/{LIST}/1.html")[2]
    for n, attempt in ((3, "taker"), (4, "taker again")):        # each later post: a link of its own
        url = _archived_at_of(team, attempt)
        assert "orig.1234" not in url and _follow(team, url) == (301, f"{BASE}/archive/{LIST}/{n}.html")
    # a present post keeps its link against a later one with its Message-ID too
    team.queue(post(subject="again", body="other\n", msgid="<kept@example.org>"), check=0)
    with team.db() as db:
        db.execute("DELETE FROM recent_posts")
    assert _follow(team, f"<{BASE}/archive/{LIST}/msgid/kept@example.org>")[1].endswith("/2.html")
    assert "kept@example.org" not in _archived_at_of(team, "again")


def test_a_removed_post_whose_message_id_names_its_author_keeps_nothing_of_it(team):
    """forget --archive removes personal data: a Message-ID made of the author's address is not kept
    even hashed, so msgid/ cannot confirm that this person's post was removed."""
    team.write_config(web={"base_url": BASE})
    team.run("set", LIST, "archive", "public", check=0)
    team.queue(post(subject="mine", msgid="<1700000000.Carol.X@Example.com>", sender="carol.x@example.com"), check=0)
    team.queue(post(subject="other", msgid="<other@example.org>"), check=0)
    team.run("forget", "carol.x@example.com", "--archive", check=0)
    with team.db() as db:
        assert [r[0] for r in db.execute("SELECT message_id FROM archived_posts ORDER BY number")] == \
            ["", "<other@example.org>"]
    assert wsgi(team, f"/archive/{LIST}/msgid/1700000000.Carol.X@Example.com")[0] == 404


@pytest.mark.parametrize("header", ["<c1@example.org> (a comment)", "foo.bar@example.org",
                                    "<two1@example.org> <two2@example.org>", "junk <p1@example.org>",
                                    "<a b@example.org>", "<" + "x" * 260 + "@example.org>",
                                    "(comment first) <cf@example.org>", "<>", "<@>"])
def test_every_archived_at_resolves_whatever_the_message_id(team, header):
    """Issue 33 review: Archived-At was made of the raw header, the archive's row of the parsed ID
    (or ''): a comment, no brackets, two IDs, a space, 260 characters gave links that 404."""
    team.write_config(web={"base_url": BASE})
    team.run("set", LIST, "archive", "public", check=0)
    team.queue(post(subject="first", msgid="<first@example.org>"), check=0)
    team.queue(post(subject="odd", msgid=header), check=0)
    assert listing(team) == {1: "first", 2: "odd"}
    url = _archived_at_of(team, "odd")
    assert _follow(team, url) == (301, f"{BASE}/archive/{LIST}/2.html")
    assert wsgi(team, f"/archive/{LIST}/2.html")[0] == 200


def test_the_raw_message_and_the_mboxes_of_a_post_its_thread_and_its_month(team):
    team.run("set", LIST, "archive", "public", check=0)
    first = post(subject="Plan", body="From the start: a line mbox must quote.\n", msgid="<t1@example.org>")
    team.queue(first, check=0)
    team.queue(post(subject="Re: Plan", body="Agreed.\n", msgid="<t2@example.org>",
                    extra="In-Reply-To: <t1@example.org>\n"), check=0)
    team.queue(post(subject="Other", body="Elsewhere.\n", msgid="<o1@example.org>"), check=0)
    page = wsgi(team, f"/archive/{LIST}/2.html")[2]
    assert 'href="2.eml"' in page and 'href="thread/1.html"' in page and 'href="thread/1.mbox"' in page
    status, headers, raw = wsgi(team, f"/archive/{LIST}/1.eml")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert parse(raw.encode())["Message-ID"] == "<t1@example.org>" and "Received:" not in raw
    status, headers, thread = wsgi(team, f"/archive/{LIST}/thread/1.mbox")
    assert headers["Content-Disposition"].startswith("attachment") and headers["Content-Type"] == "application/mbox"
    path = team.home / "t.mbox"
    path.write_text(thread)
    box = list(mailbox.mbox(str(path)))
    assert [m["Message-ID"] for m in box] == ["<t1@example.org>", "<t2@example.org>"]
    assert box[0].get_payload().startswith(">From the start")           # quoted in the file: one message
    month = wsgi(team, f"/archive/{LIST}/2026-11.mbox")[2]
    path.write_text(month)
    assert [m["Message-ID"] for m in mailbox.mbox(str(path))] == ["<t1@example.org>", "<t2@example.org>",
                                                                  "<o1@example.org>"]
    assert 'href="2026-11.mbox"' in wsgi(team, f"/archive/{LIST}/2026-11.html")[2]


def test_a_thread_is_whole_across_months_and_a_month_links_its_start(team):
    team.run("set", LIST, "archive", "public", check=0)
    team.run("set", LIST, "subject_tag", "[old]", check=0)
    november = post(subject="Budget", body="The November words.\n", msgid="<nov@example.org>")
    december = post(subject="Re: [old] Budget", body="The December words.\n", msgid="<dec@example.org>",
                    extra="In-Reply-To: <nov@example.org>\n").replace(b"25 Nov 2026", b"03 Dec 2026")
    by_subject = post(subject="RE: budget", body="Joined by its subject.\n",
                      msgid="<jan@example.org>").replace(b"25 Nov 2026", b"05 Jan 2027")
    for data in (november, post(subject="Something else", msgid="<x@example.org>"), december, by_subject):
        team.queue(data, check=0)
    thread = wsgi(team, f"/archive/{LIST}/thread/1.html")[2]
    assert thread.index("The November words.") < thread.index("The December words.") \
        < thread.index("Joined by its subject.")
    assert "Something else" not in thread and "3 posts" in thread
    december_page = wsgi(team, f"/archive/{LIST}/2026-12.html")[2]
    assert re.search(r'continues <a href="thread/1.html">a thread</a> from <a href="2026-11.html">2026-11</a>',
                     december_page)
    for month in ("2026-11", "2026-12", "2027-01"):            # the list's tag is not on every line
        assert "[old]" not in wsgi(team, f"/archive/{LIST}/{month}.html")[2]
    assert "[old]" in (team.home / "pages" / LIST / "3.eml").read_text()    # the post itself keeps it
    index = wsgi(team, f"/archive/{LIST}/")[2]
    latest = re.findall(r'<li><a href="(\d+)\.html"><bdi>', index)
    assert latest == ["4", "3", "2", "1"] and "Latest posts" in index


# --- search ------------------------------------------------------------------------------------

SEARCHED = [
    ("Ann Example <ann@example.org>", "Zürich budget meeting", "The budget for the meeting in Zürich is ready.",
     "15 Jan 2026"),
    ("Bob <bob.smith@example.net>", "Meeting notes", "The meeting about the budget went well.", "10 Feb 2026"),
    ("Zoë <zoe@example.org>", "\ufb01nance report", "Ελληνικά: Άλφα. CAFÉ au lait.", "05 Mar 2026"),
    ("Ann Example <ann@example.org>", "Old post", "We need a budget meeting soon.", "31 Dec 2025"),
]


@pytest.fixture(params=["fts5", "fallback"])
def searchable(team, request, monkeypatch):
    """The list, public, with SEARCHED archived, its search by FTS5 or by the fallback scan."""
    if request.param == "fallback":
        monkeypatch.setattr(redsky, "FTS5", False)
    elif not redsky.fts5_available(team.db()):
        pytest.skip("this SQLite has no FTS5")
    team.run("set", LIST, "archive", "public", check=0)
    for i, (author, subject, body, day) in enumerate(SEARCHED, 1):
        data = (f"From: {author}\nTo: {LIST}\nSubject: {subject}\nMessage-ID: <s{i}@example.org>\n"
                f"Date: Thu, {day} 10:00:00 +0000\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
                f"Content-Transfer-Encoding: 8bit\n\n{body}\n").encode()
        team.queue(data, check=0)
    assert redsky.search_index_ready(team.db()) == (request.param == "fts5")
    return team


def search(rs, query, **more):
    from urllib.parse import urlencode
    status, headers, body = wsgi(rs, f"/archive/{LIST}/search", query=urlencode({"q": query, **more}))
    assert status == 200, body
    return body


def found(rs, query):
    return [int(n) for n in re.findall(r'<li><a href="(\d+)\.html">', search(rs, query))]


@pytest.mark.parametrize("query, expected", [
    ("zurich", [1]), ("ZÜRICH", [1]), ("zürich   budget", [1]), ('"budget meeting"', [1, 4]),
    ("budget meeting", [2, 1, 4]), ('"meeting budget"', []), ("finance", [3]), ("FINANCE", [3]),
    ("αλφα", [3]), ("ελληνικα", [3]), ("cafe", [3]), ("Café", [3]),
    ("from:bob", [2]), ("from:zoe", [3]), ('from:"ann example"', [1, 4]), ("from:example", [1, 4]),
    ("subject:meeting", [2, 1]), ("subject:budget", [1]), ("subject:ready", []),
    ("d:2026-01..2026-02 budget", [2, 1]), ("d:2026 budget", [2, 1]), ("d:..2025-12", [4]),
    ("d:2026-02-10", [2]), ("date:2026-01-16..", [3, 2]), ("d:2025 d:2026", []), ("", []), ('"', []),
])
def test_search_finds_phrases_folded_words_fields_and_dates_newest_first(searchable, query, expected):
    assert found(searchable, query) == expected


def test_search_results_have_snippets_a_feed_and_pages(searchable):
    page = search(searchable, "zurich")
    assert "<mark>Zürich</mark> is ready" in page and "1 found" in page
    for shown in (page, wsgi(searchable, f"/archive/{LIST}/")[2]):     # the syntax, on the page
        assert all(w in html.unescape(shown) for w in ('"a phrase"', "from:", "subject:", "d:2026-01..2026-03"))
    assert "d:2026-13" in search(searchable, "d:2026-13 budget") and "write a date as" in search(searchable, "d:1x")
    import xml.etree.ElementTree as ET
    status, headers, feed = wsgi(searchable, f"/archive/{LIST}/search", query="q=budget&format=atom")
    assert headers["Content-Type"].startswith("application/atom+xml")
    ns = {"a": "http://www.w3.org/2005/Atom"}
    entries = ET.fromstring(feed).findall("a:entry", ns)
    assert [e.find("a:title", ns).text for e in entries] == ["Meeting notes", "Zürich budget meeting", "Old post"]
    assert "budget" in entries[0].find("a:summary", ns).text
    for i in range(25):
        searchable.queue(post(subject=f"many {i}", body="a common word\n", msgid=f"<many{i}@example.org>"), check=0)
    first, second = search(searchable, "common"), search(searchable, "common", page=1)
    assert first.count("<li>") == 20 and "20+ found" in first and "page=1" in first
    assert second.count("<li>") == 5 and "page=0" in second


def test_the_search_index_follows_removals_and_catches_up(team, monkeypatch):
    team.run("set", LIST, "archive", "public", check=0)
    team.queue(post(subject="alpha", body="findable words\n", msgid="<a@example.org>"), check=0)
    team.queue(post(subject="beta", body="findable words\n", msgid="<b@example.org>"), check=0)
    fts = redsky.fts5_available(team.db())
    assert found(team, "findable") == [2, 1]
    team.run("archive", "delete", LIST, "1", check=0)
    assert found(team, "findable") == [2]
    monkeypatch.setattr(redsky, "FTS5", False)          # a process whose SQLite has no FTS5 archives one
    team.queue(post(subject="gamma", body="findable words\n", msgid="<c@example.org>"), check=0)
    monkeypatch.setattr(redsky, "FTS5", fts)
    assert not redsky.search_index_ready(team.db())     # left behind: the search reads the texts instead
    assert found(team, "findable") == [3, 2]
    team.queue(post(subject="delta", body="findable words\n", msgid="<d@example.org>"), check=0)
    assert redsky.search_index_ready(team.db()) == fts  # the next writer with FTS5 made it again
    assert found(team, "findable") == [4, 3, 2]
    team.run("set", LIST, "archive", "private", check=0)     # no public archive: no texts to search
    assert team.db().execute("SELECT count(*) FROM archive_texts").fetchone()[0] == 0


def test_an_archive_file_is_answered_a_chunk_at_a_time(team):
    """Issue 33 review: WebApp read each file whole (CGI and any WSGI server too): the answer is
    an iterator of chunks read as it is sent, whatever the file (an mbox, a page, an attachment)."""
    import redsky
    team.run("set", LIST, "archive", "public", check=0)
    for data in posts_with_attachment(3):
        team.queue(data, check=0)
    folder = team.home / "pages" / LIST
    (folder / "2020-01.mbox").write_bytes(b"x" * 3_000_000)
    for name in ("2020-01.mbox", "1.html", next(p.name for p in (folder / "att").iterdir())):
        path = folder / ("att/" + name if not (folder / name).exists() else name)
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/archive/{LIST}/{path.relative_to(folder)}",
                   "SCRIPT_NAME": "", "QUERY_STRING": "", "REMOTE_ADDR": "192.0.2.1"}
        seen = {}
        result = redsky.WebApp(redsky.Config.find(str(team.config)))(environ, lambda s, h: seen.update(h))
        assert not isinstance(result, list) or len(result) == 0 or result[0] == b""
        chunks = list(result)
        result.close()
        assert b"".join(chunks) == path.read_bytes() and seen["Content-Length"] == str(path.stat().st_size)
        assert max(map(len, chunks)) <= 262144


def test_a_thread_page_has_a_byte_cap_and_links_what_it_leaves_out(team, monkeypatch):
    """Issue 33 review: 300 posts of 400 KB made one thread page of 228 MB, written again on every
    reply: a thread page shows texts up to THREAD_PAGE_BYTES, the rest as links, and says so."""
    import redsky
    monkeypatch.setattr(redsky, "THREAD_PAGE_BYTES", 60_000)
    team.run("set", LIST, "archive", "public", check=0)
    big = "".join(f"line {i} of a long post in a long thread\n" for i in range(500))      # ~20 KB
    team.queue(post(subject="Long", body=big, msgid="<l0@example.org>"), check=0)
    for i in range(1, 8):
        team.queue(post(subject="Re: Long", body=f"reply {i}\n" + big, msgid=f"<l{i}@example.org>",
                        extra="In-Reply-To: <l0@example.org>\n"), check=0)
    page = (team.home / "pages" / LIST / "thread" / "1.html").read_text()
    assert len(page.encode()) < 100_000 and page.count("line 499 of a long post") < 5
    assert "stand as links" in page and '<a href="../8.html">post 8</a>' in page
    assert "reply 1" in page
