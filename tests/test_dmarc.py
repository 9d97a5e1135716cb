"""DMARC: posts from p=reject/quarantine domains get munge_from or wrap_message."""

import pytest

from conftest import parse, post


LIST_OPTIONS = ("--access", "open", "--subject-tag", "[t]")


def prepare_list(rs):
    rs.dns.records.update({
        "_dmarc.strict.example": ["v=DMARC1; p=reject; rua=mailto:d@strict.example"],
        "_dmarc.quarantine.example": ["v=DMARC1; p=quarantine"],
        "_dmarc.relaxed.example": ["v=DMARC1; p=none"],
        "_dmarc.parent.example": ["v=DMARC1; p=none; sp=reject"],
    })


def delivered(rs, sender, **kw):
    rs.queue(post(sender=sender, **kw), sender=sender, check=0)
    rs.run("send", check=0)
    return rs.sent()[-1][1]


@pytest.mark.parametrize("sender", ["ann@strict.example", "ann@quarantine.example", "ann@mail.parent.example"])
def test_protected_domains_get_munged_from(lst, sender):
    msg = parse(delivered(lst, sender))
    assert msg["From"] == "Alice via test <test@lists.example.org>"
    assert msg["Reply-To"] == f"Alice <{sender}>" and msg["X-Original-From"] == f"Alice <{sender}>"
    assert msg["Subject"] == "[t] Hello"


@pytest.mark.parametrize("sender", ["ann@relaxed.example", "ann@unlisted.example"])
def test_other_domains_are_left_alone(lst, sender):
    assert parse(delivered(lst, sender))["From"] == f"Alice <{sender}>"


def test_lookups_are_cached(lst):
    before = len(lst.dns.queries)
    delivered(lst, "ann@strict.example", subject="one")
    delivered(lst, "ann@strict.example", subject="two")
    assert lst.dns.queries[before:] == ["_dmarc.strict.example"]


def test_wrap_message_keeps_the_original_byte_intact(lst):
    lst.run("set", "test@lists.example.org", "dmarc_action", "wrap_message", check=0)
    original = post(sender="ann@strict.example", body="Signed by strict.example.\n")
    lst.queue(original, sender="ann@strict.example", check=0)
    lst.run("send", check=0)
    data = lst.sent()[-1][1]
    msg = parse(data)
    assert msg["From"] == "Alice via test <test@lists.example.org>" and msg["Subject"] == "[t] Hello"
    (part,) = msg.get_payload()
    assert part.get_content_type() == "message/rfc822"
    assert original in data                         # byte for byte, its own From and DKIM-signed fields
    assert part.get_payload()[0]["From"] == "Alice <ann@strict.example>"


def test_policy_forced_per_list(lst):
    lst.run("set", "test@lists.example.org", "dmarc", "always", check=0)
    assert parse(delivered(lst, "ann@relaxed.example"))["From"] == "Alice via test <test@lists.example.org>"
    lst.run("set", "test@lists.example.org", "dmarc", "never", check=0)
    before = len(lst.dns.queries)
    assert parse(delivered(lst, "ann@strict.example", subject="x"))["From"] == "Alice <ann@strict.example>"
    assert lst.dns.queries[before:] == []


def test_dns_failure_never_blocks_a_post(lst):
    from smtpsink import free_port
    lst.write_config(dmarc={"nameserver": f"127.0.0.1:{free_port()}", "timeout": "0.2s"})
    r = lst.run("queue", "--recipient", "test@lists.example.org", "--sender", "ann@strict.example", "--explain",
                input=post(sender="ann@strict.example"))
    assert r.returncode == 0 and "DMARC lookup failed" in r.out and "fallback none" in r.out
    lst.write_config(dmarc={"fallback": "munge_from"})
    lst.queue(post(sender="ann@strict.example", subject="again"), sender="ann@strict.example", check=0)
    lst.run("send", check=0)
    assert parse(lst.sent()[-1][1])["From"] == "Alice via test <test@lists.example.org>"


def test_bad_settings(lst):
    assert lst.run("set", "test@lists.example.org", "dmarc", "sometimes").returncode == 64
    assert lst.run("set", "test@lists.example.org", "dmarc_action", "drop").returncode == 64


# -- the DNS client believes only its server's answer to its question -------------

@pytest.fixture
def hostile_dns(request):
    from fakedns import HostileDNS
    server = HostileDNS(request.param)
    yield server
    server.close()


@pytest.mark.parametrize("hostile_dns", ["other-port", "wrong-question", "not-a-reply", "truncated", "flood"],
                         indirect=True)
def test_the_dns_client_refuses_what_its_server_did_not_answer(hostile_dns):
    import time
    import redsky
    start = time.monotonic()
    with pytest.raises(OSError):
        redsky.dns_txt("_dmarc.victim.example", hostile_dns.address, 1.0)
    assert time.monotonic() - start < 2.5          # one deadline, however many packets arrive


@pytest.mark.parametrize("hostile_dns", ["tc"], indirect=True)
def test_a_truncated_udp_answer_is_asked_again_over_tcp(hostile_dns):
    import redsky
    assert redsky.dns_txt("_dmarc.big.example", hostile_dns.address, 2.0) == ["v=DMARC1; p=reject"]
    assert hostile_dns.tcp_queries == 1


@pytest.mark.parametrize("hostile_dns", ["other-port", "truncated", "not-a-reply"], indirect=True)
def test_a_forged_or_broken_answer_is_never_cached_and_never_stops_a_post(lst, hostile_dns):
    lst.write_config(dmarc={"nameserver": hostile_dns.address, "timeout": "1s"})
    r = lst.queue(post(sender="ann@victim.example"), sender="ann@victim.example")
    assert r.returncode == 0, r.err
    assert lst.db().execute("SELECT count(*) FROM dmarc_cache").fetchone()[0] == 0
    lst.run("send", check=0)
    copy = parse(lst.sent()[-1][1])
    assert "ann@victim.example" in copy["From"]     # not munged on a forged p=reject


# --- the organisational domain (RFC 7489 3.2) and dmarc_addresses ---------------------------

def psl(rs, text):
    path = rs.home / "psl.dat"
    path.write_text(text)
    rs.write_config(dmarc={"public_suffix_list": str(path)})


@pytest.mark.parametrize("domain, expected", [
    ("mail.example.co.uk", "example.co.uk"), ("a.b.example.co.uk", "example.co.uk"), ("example.co.uk", "example.co.uk"),
    ("co.uk", "co.uk"), ("mail.example.com", "example.com"), ("example.com", "example.com"), ("com", "com"),
    ("x.y.kawasaki.jp", "x.y.kawasaki.jp"), ("shop.city.kawasaki.jp", "city.kawasaki.jp"),
    ("www.ck", "www.ck"), ("a.www.ck", "www.ck"), ("b.a.foo.ck", "a.foo.ck"),
    ("MAIL.Example.CO.UK.", "example.co.uk"), ("host.example.github.io", "example.github.io"),
])
def test_organizational_domain_follows_the_public_suffix_list(tmp_path, domain, expected):
    import redsky
    path = tmp_path / "psl.dat"
    path.write_text("// comment\n\ncom\nuk\nco.uk\njp\n*.kawasaki.jp\n!city.kawasaki.jp\n*.ck\n!www.ck\n"
                    "// ===BEGIN PRIVATE DOMAINS===\ngithub.io\n")
    assert redsky.organizational_domain(domain, str(path)) == expected


@pytest.mark.parametrize("domain, expected", [("mail.example.co.uk", "example.co.uk"),
                                              ("a.b.example.com.au", "example.com.au"),
                                              ("mail.example.org", "example.org")])
def test_organizational_domain_without_a_list_uses_the_built_in_suffixes(tmp_path, domain, expected):
    import redsky
    assert redsky.organizational_domain(domain, str(tmp_path / "missing.dat")) == expected


def test_debian_public_suffix_list_when_installed():
    import os
    import redsky
    path = redsky.DEFAULTS["dmarc"]["public_suffix_list"]
    if not os.path.exists(path):
        pytest.skip("package publicsuffix is not installed")
    assert redsky.organizational_domain("mail.example.co.uk", path) == "example.co.uk"
    assert redsky.organizational_domain("a.b.example.k12.ca.us", path) == "example.k12.ca.us"
    assert redsky.organizational_domain("x.example.city.kawasaki.jp", path) == "city.kawasaki.jp"   # !rule
    assert redsky.organizational_domain("a.b.c.kawasaki.jp", path) == "b.c.kawasaki.jp"            # *.rule


def test_a_subdomain_of_a_multi_label_suffix_finds_its_organisational_record(lst):
    psl(lst, "uk\nco.uk\n")
    lst.dns.records["_dmarc.example.co.uk"] = ["v=DMARC1; p=reject"]
    msg = parse(delivered(lst, "bob@mail.example.co.uk"))
    assert msg["From"] == "Alice via test <test@lists.example.org>"
    assert "_dmarc.co.uk" not in lst.dns.queries


def test_the_trace_tells_no_record_from_p_none(lst):
    for sender, says in (("ann@unlisted.example", "no DMARC record"), ("ann@relaxed.example", "DMARC p=none")):
        lst.queue(post(sender=sender, subject=sender), sender=sender, check=0)
        msgid = post(sender=sender, subject=sender).split(b"Message-ID: ")[1].split(b"\n")[0].decode()
        assert says in lst.run("trace", msgid, check=0).out


@pytest.mark.parametrize("setting, sender, munged", [
    ("gmail.example", "ann@gmail.example", True), ("*@gmail.example", "Ann@GMAIL.example", True),
    ("ann@gmail.example", "ann@gmail.example", True), ("ann@gmail.example", "bob@gmail.example", False),
    (r"^.*@(mail|smtp)\.example$", "x@smtp.example", True), ("gmail.example, other.example", "z@other.example", True),
    ("gmail.example", "ann@sub.gmail.example", False),
])
def test_dmarc_addresses_are_always_mitigated(lst, setting, sender, munged):
    lst.run("set", "test@lists.example.org", "dmarc_addresses", setting, check=0)
    before = len(lst.dns.queries)
    msg = parse(delivered(lst, sender))
    assert (msg["From"] == "Alice via test <test@lists.example.org>") == munged
    if munged:
        assert lst.dns.queries[before:] == []           # no lookup needed


@pytest.mark.parametrize("value", ["bad value", "^(a+)+$"])
def test_dmarc_addresses_refuse_bad_patterns(lst, value):
    assert lst.run("set", "test@lists.example.org", "dmarc_addresses", value).returncode == 65


@pytest.mark.parametrize("action", ["munge_from", "wrap_message"])
def test_archive_and_digest_keep_the_authors_from(lst, action):
    list_ = "test@lists.example.org"
    lst.run("set", list_, "dmarc_action", action, check=0)
    lst.run("set", list_, "archive", "private", check=0)
    lst.run("subscribe", list_, "dig@example.net", check=0)
    lst.run("set-member", list_, "dig@example.net", "digest", "on", check=0)
    lst.run("set", list_, "digest_size_threshold", "1", check=0)
    lst.queue(post(sender="yuri@strict.example", subject="from yuri", body="x" * 2000 + "\n"),
              sender="yuri@strict.example", check=0)
    lst.run("send", check=0)
    sent = {argv[-1]: parse(d) for argv, d in lst.sent()}
    assert sent["bob@example.net"]["From"] == "Alice via test <test@lists.example.org>"     # the copies: rewritten
    index = lst.run("archive", list_, check=0).out
    assert "via test" not in index and "Alice" in index
    exported = lst.run("archive", "export", list_, check=0).out
    assert "\nFrom: Alice <yuri@strict.example>\n" in exported
    digest = sent["dig@example.net"]
    text = digest.as_string()
    assert "via test" not in text and "yuri@strict.example" in text
