"""Message helpers: raw header edits, subject tags, footers, DSN parsing."""

import base64
import email
import quopri
from email import policy

import pytest

import redsky
from conftest import dsn, parse

LIST = {"id": 1, "name": "test", "domain": "lists.example.org", "footer": "", "subject_tag": ""}


def raw(text):
    return text.encode("utf-8") if isinstance(text, str) else text


# -- RawMessage --------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"From: a@b.c\nSubject: x\n\nbody\n",
    b"From: a@b.c\r\nSubject: folded\r\n  more\r\n\r\nbody\r\n.\r\n",
    b"Subject: no body",
    b"Subject: only header\n",
    b"X-8bit: caf\xc3\xa9 \xff\nSubject: s\n\n\x00\xff binary body",
    b"Subject: s\nnot a header line\nmore\n",
])
def test_rawmessage_round_trip_is_byte_identical(data):
    assert bytes(redsky.RawMessage(data)) == data


def test_rawmessage_reads_folded_and_8bit_values():
    m = redsky.RawMessage(b"Subject: one\n two\nX-Name: caf\xc3\xa9\n\nbody")
    assert m.get("subject") == "one two"
    assert m.get("X-Name") == "café"
    assert m.body == b"body"


def test_rawmessage_edits_only_named_fields():
    data = b"From: a@b.c\nReturn-Path: <x@y>\nSubject: s\n\nbody\n"
    m = redsky.RawMessage(data)
    m.remove("return-path")
    m.append("X-Loop", "test@lists.example.org")
    assert bytes(m) == b"From: a@b.c\nSubject: s\nX-Loop: test@lists.example.org\n\nbody\n"


def test_rawmessage_append_to_header_without_final_newline():
    m = redsky.RawMessage(b"Subject: s")
    m.append("X-Loop", "l@d")
    assert bytes(m) == b"Subject: s\nX-Loop: l@d\n\n"


def test_rawmessage_keeps_crlf():
    m = redsky.RawMessage(b"Subject: s\r\n\r\nbody\r\n")
    m.append("Precedence", "list")
    assert bytes(m) == b"Subject: s\r\nPrecedence: list\r\n\r\nbody\r\n"


# -- addresses and VERP --------------------------------------------------------

@pytest.mark.parametrize("address,ok", [
    ("user@example.org", True), ("first.last+tag@sub.example.co.uk", True),
    ('"odd name"@example.org', True), ("u@[127.0.0.1]", True), ("o'brien@example.ie", True),
    ("-oQ/tmp@example.org", False), ("no-at-sign", False), ("a@b@c", False), ("a b@example.org", False),
    ("user@-bad.example", False), ("user@example.org\n", False), ("", False), ("user@", False),
    ("x" * 250 + "@example.org", False), ("a..b@example.org", False),
])
def test_valid_address(address, ok):
    assert redsky.valid_address(address) is ok


def test_verp_round_trip():
    encoded = redsky.verp_encode(LIST, "a=b+c@Example.net")
    assert encoded == "test-bounces+a=b+c=Example.net@lists.example.org"      # as Postfix's XVERP writes it
    extension = encoded.split("@")[0].split("+", 1)[1]
    assert redsky.verp_decode(extension) == ("a=b+c@Example.net", "")
    assert redsky.verp_decode("nothing") == (None, "")


def test_signed_verp_round_trip():
    keyed = dict(LIST, verp_key="k" * 32)
    encoded = redsky.verp_encode(keyed, "deadbeef+x@Example.net")
    sig = redsky.verp_signature("k" * 32, LIST, "deadbeef+x@example.net")
    assert encoded == f"test-bounces+{sig}+deadbeef+x=Example.net@lists.example.org"
    extension = encoded.split("@")[0].split("+", 1)[1]
    assert redsky.verp_decode(extension, LIST, "k" * 32) == ("deadbeef+x@Example.net", "verp")
    assert redsky.verp_decode(extension, LIST, "other-key") == (f"{sig}+deadbeef+x@Example.net", "")
    # an unsigned address that merely looks signed decodes as it is
    assert redsky.verp_decode("deadbeef+x=example.net", LIST, "k" * 32) == ("deadbeef+x@example.net", "")


def test_probe_addresses_are_signed_apart_from_post_addresses():
    probe = redsky.probe_address(LIST, "k" * 32, "bob@example.net")
    extension = probe.split("@")[0].split("+", 1)[1]
    assert extension.startswith("p") and probe.endswith("+bob=example.net@lists.example.org")
    assert redsky.verp_decode(extension, LIST, "k" * 32) == ("bob@example.net", "probe")
    # a post's signature is not a probe's, nor the other way round
    post_sig = redsky.verp_signature("k" * 32, LIST, "bob@example.net")
    assert redsky.verp_decode(f"p{post_sig}+bob=example.net", LIST, "k" * 32)[1] == ""
    assert redsky.verp_decode(extension[1:], LIST, "k" * 32)[1] == ""


# -- subject tag ---------------------------------------------------------------

def tagged(data, tag="[test]"):
    m = redsky.RawMessage(raw(data))
    changed = redsky.with_subject_tag(m, tag)
    return changed, m


def test_subject_tag_added_once():
    changed, m = tagged("Subject: Hello\n\nx")
    assert changed and str(parse(bytes(m))["subject"]) == "[test] Hello"
    again, m2 = tagged(bytes(m))
    assert not again and bytes(m2) == bytes(m)


def test_subject_reply_with_tag_stays():
    changed, m = tagged("Subject: Re: [TEST] Hello\n\nx")
    assert not changed and m.get("Subject") == "Re: [TEST] Hello"


def test_subject_missing_or_empty():
    for data in ("From: a@b.c\n\nx", "Subject:\nFrom: a@b.c\n\nx", "Subject:   \n\nx"):
        _, m = tagged(data)
        assert str(parse(bytes(m))["subject"]) == "[test] (no subject)"
        assert len(m.get_all("Subject")) == 1


@pytest.mark.parametrize("encoded,text", [
    ("=?iso-8859-1?q?caf=E9_cr=E8me?=", "café crème"),
    ("=?UTF-8?B?0J/RgNC40LLQtdGC?=", "Привет"),
    ("=?koi8-r?b?8NLJ18XU?= world", "Привет world"),
])
def test_subject_tag_rfc2047_keeps_charset(encoded, text):
    _, m = tagged(f"Subject: {encoded}\n\nx")
    assert str(parse(bytes(m))["subject"]) == f"[test] {text}"
    assert encoded.encode() in bytes(m)          # the original encoded-word is untouched


def test_subject_tag_non_ascii_tag_before_encoded_word():
    _, m = tagged("Subject: =?iso-8859-1?q?caf=E9?=\n\nx", tag="[liste é]")
    assert str(parse(bytes(m))["subject"]) == "[liste é] café"
    _, m = tagged("Subject: plain\n\nx", tag="[liste é]")
    assert str(parse(bytes(m))["subject"]) == "[liste é] plain"


def test_subject_tag_on_8bit_subject():
    _, m = tagged(b"Subject: caf\xc3\xa9\n\nx")
    assert m.raw_value("Subject") == b"[test] caf\xc3\xa9"


# -- footers -------------------------------------------------------------------

FOOTER = "-- \nTest list: test@lists.example.org"


def footed(data, footer=FOOTER):
    m = redsky.RawMessage(raw(data))
    how = redsky.add_footer(m, footer)
    return how, bytes(m)


def text_of(data):
    msg = parse(data)
    return [p.get_content() for p in msg.walk() if p.get_content_maintype() == "text"]


def test_footer_plain_7bit():
    how, out = footed("Subject: s\n\nHello\n")
    assert how == "appended"
    assert out == b"Subject: s\n\nHello\n-- \nTest list: test@lists.example.org\n"


def test_footer_plain_without_final_newline():
    how, out = footed("Subject: s\n\nHello")
    assert out.endswith(b"Hello\n-- \nTest list: test@lists.example.org\n")


def test_footer_in_body_charset_latin1_8bit():
    data = b"Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\ncaf\xe9\n"
    how, out = footed(data, "Liste \u00e9t\u00e9")
    assert how == "appended"
    assert text_of(out) == ["café\nListe été\n"]


def test_footer_quoted_printable_kept_encoded():
    body = quopri.encodestring("crème brûlée ".encode("utf-8") * 10 + b"\n")
    data = (b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n" + body)
    how, out = footed(data, "pied de page é")
    assert how == "appended"
    assert out.startswith(data)                       # original encoded bytes untouched
    assert text_of(out)[0] == ("crème brûlée " * 10) + "\npied de page é\n"


def test_footer_quoted_printable_soft_break_at_end():
    data = b"Content-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: quoted-printable\n\nabc=\n"
    _, out = footed(data, "foot")
    assert text_of(out)[0].endswith("abc\nfoot\n")


def test_footer_base64_reencoded_whole():
    text = "Grüße aus Köln\r\n" * 20
    data = (b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
            + base64.encodebytes(text.encode()))
    how, out = footed(data, "Fuß")
    assert how == "appended"
    assert text_of(out)[0].replace("\r\n", "\n") == (text + "Fuß\r\n").replace("\r\n", "\n")
    assert all(len(line) <= 76 for line in out.split(b"\n\n", 1)[1].splitlines())


def test_footer_broken_base64_wraps_original_intact():
    body = b"SGVsbG8gd29ybGQ=\n!!!not base64!!!\n"
    data = b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n" + body
    how, out = footed(data)
    assert how == "wrapped"
    msg = parse(out)
    first, second = msg.get_payload()
    assert first.get_payload(decode=False).encode() == body
    assert "Test list" in second.get_content()


def test_footer_non_encodable_in_body_charset_wraps():
    data = b"Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\ncaf\xe9\n"
    how, out = footed(data, "Привет")
    assert how == "wrapped"
    assert text_of(out) == ["café\n", "Привет\n"]


def test_footer_non_ascii_footer_on_7bit_ascii_wraps():
    how, out = footed("Subject: s\n\nplain ascii\n", "Grüße")
    assert how == "wrapped"
    assert text_of(out) == ["plain ascii\n", "Grüße\n"]


MIXED = b"""\
Subject: s
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="XYZ"

preamble
--XYZ
Content-Type: text/plain

text part
--XYZ
Content-Type: application/pdf
Content-Transfer-Encoding: base64

JVBERi0xLjQK
--XYZ--
epilogue
"""


def test_footer_multipart_mixed_gets_new_part():
    how, out = footed(MIXED)
    assert how == "part"
    msg = parse(out)
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "application/pdf", "text/plain"]
    assert "Test list" in parts[2].get_content()
    assert out.startswith(MIXED.split(b"--XYZ--")[0])        # everything before the close untouched
    assert out.endswith(b"--XYZ--\nepilogue\n")
    assert not msg.defects


def test_footer_multipart_mixed_without_closing_boundary_wraps():
    broken = MIXED.replace(b"--XYZ--\n", b"")
    how, out = footed(broken)
    assert how == "wrapped"
    assert broken.split(b"\n\n", 1)[1] in out                # original body byte-intact inside


@pytest.mark.parametrize("ctype", ["multipart/alternative", 'multipart/signed; protocol="application/pgp-signature"; micalg=pgp-sha256',
                                   "multipart/encrypted", "text/html"])
def test_footer_wraps_alternative_signed_encrypted_html(ctype):
    body = (b"--B1\nContent-Type: text/plain\n\nsigned text\n--B1\nContent-Type: application/pgp-signature\n\n"
            b"-----BEGIN PGP SIGNATURE-----\nabc\n-----END PGP SIGNATURE-----\n--B1--\n")
    if ctype == "text/html":
        body = b"<p>hello</p>\n"
    head = (f"From: a@b.c\nSubject: s\nMIME-Version: 1.0\nContent-Type: {ctype}; boundary=\"B1\"\n"
            f"Content-Transfer-Encoding: 7bit\n").encode()
    how, out = footed(head + b"\n" + body)
    assert how == "wrapped"
    msg = parse(out)
    assert msg.get_content_type() == "multipart/mixed"
    inner, foot = msg.get_payload()
    assert inner.get_content_type() == ctype.split(";")[0]
    # the original entity (its Content-* fields and body) is byte-intact inside
    assert (f"Content-Type: {ctype}; boundary=\"B1\"\nContent-Transfer-Encoding: 7bit\n\n").encode() + body in out
    assert "Test list" in foot.get_content()
    assert out.count(b"MIME-Version") == 1


def test_footer_placeholders():
    row = dict(LIST, footer="$list at $domain: post to $post_address, leave: $unsubscribe, $unknown")
    text = redsky.footer_text(row)
    assert text == ("test at lists.example.org: post to test@lists.example.org, leave: "
                    "mailto:test-leave@lists.example.org, $unknown")


# -- DSN parsing ---------------------------------------------------------------

def test_parse_dsn_failed():
    reports = redsky.parse_dsn(email.message_from_bytes(dsn(), policy=policy.compat32))
    assert reports == [{"recipient": "bob@example.net", "action": "failed", "status": "5.1.1",
                        "diagnostic": "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown",
                        "reporting_mta": "mx.example.net"}]


def test_parse_dsn_delayed_and_none():
    reports = redsky.parse_dsn(email.message_from_bytes(dsn("delayed", "4.4.1"), policy=policy.compat32))
    assert [r["action"] for r in reports] == ["delayed"]
    assert redsky.parse_dsn(email.message_from_bytes(b"Subject: out of office\n\naway", policy=policy.compat32)) == []


# -- passphrases ---------------------------------------------------------------

def test_passphrase_hash_and_check():
    stored = redsky.hash_passphrase("s3cret", iterations=1000)
    assert "s3cret" not in stored
    assert redsky.check_passphrase("s3cret", stored)
    assert not redsky.check_passphrase("S3cret", stored)
    assert not redsky.check_passphrase("s3cret", "garbage")


def test_approved_line_removed_from_plain_and_mixed_bodies():
    m = redsky.RawMessage(b"Subject: s\n\nApproved: pw\n\nreal text\n")
    assert redsky._take_approved_line(m) == "pw"
    assert m.body == b"real text\n"
    mixed = MIXED.replace(b"\ntext part", b"\nApproved: pw2\ntext part")
    m = redsky.RawMessage(mixed)
    assert redsky._take_approved_line(m) == "pw2"
    assert bytes(m) == MIXED


def nested_mixed(inner):
    """A multipart/mixed post (boundary XYZ) whose first part is a multipart with boundary ``inner``."""
    bare = inner.strip('"')
    body = (f"--XYZ\nContent-Type: multipart/alternative;\n\tboundary={inner}\n\n"
            f"--{bare}\nContent-Type: text/plain\n\nhello\n--{bare}--\n"
            "--XYZ\nContent-Type: text/plain\n\nsecond\n--XYZ--\n").encode()
    return body, b'Subject: s\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="XYZ"\n\n' + body


@pytest.mark.parametrize("inner", ["XYZ", "XYZ-inner", '"XYZ"'])
def test_footer_on_a_mixed_post_whose_nested_part_reuses_the_boundary_wraps_it_intact(inner):
    """A nested multipart that reuses its parent's boundary (or one that
    begins the same) makes the structure ambiguous: the post is wrapped
    byte-intact and the footer is a part of its own, where every reader shows it."""
    body, data = nested_mixed(inner)
    how, out = footed(data)
    assert how == "wrapped"
    first, second = parse(out).get_payload()
    assert first.get_content_type() == "multipart/mixed" and "Test list" in second.get_content()
    assert body in out                                                  # the original, byte for byte
    assert footed(nested_mixed("OTHER")[1])[0] == "part"                # unambiguous: a part of its own


def test_one_rule_picks_the_part_of_an_alternative_everywhere():
    """Pages, digests and search (text_of), and collapse_alternatives show the
    same part of a multipart/alternative: its text/plain part, else its first."""
    import email
    import redsky

    def alternative(*kinds):
        parts = "".join(f"--b\nContent-Type: {k}\n\n{k} body\n" for k in kinds)
        return (f"From: a@example.org\nSubject: s\nMIME-Version: 1.0\n"
                f"Content-Type: multipart/alternative; boundary=b\n\n{parts}--b--\n").encode()
    for kinds, shown in ((("text/html", "text/plain"), "text/plain"), (("text/html", "text/enriched"), "text/html"),
                         (("text/enriched", "text/html"), "text/enriched")):
        data = alternative(*kinds)
        leaves = list(redsky.message_leaves(email.message_from_bytes(data)))
        assert [p.get_content_type() for p in leaves] == [shown]
        assert f"{shown} body" in redsky.text_of(data) or shown == "text/html"
        assert all(f"{k} body" not in redsky.text_of(data) for k in kinds if k != shown)


# --- what the archive publishes: addresses hidden, dates read ---------------------------------

@pytest.mark.parametrize("text, shown", [
    ("write to robert@example.org now", "write to ro\u2026@example.org now"),
    ("bob@example.org", "b\u2026@example.org"),                      # never the whole of a short one
    ("b@x.example", "\u2026@x.example"),
    ("<jean.dupont+list@mail.example.fr>", "<je\u2026@mail.example.fr>"),
    ('"Jean Dupont"@example.org', '"J\u2026@example.org'),
    ("josé.müller@exämple.de", "jo\u2026@exämple.de"),               # letters beyond ASCII
    ("https://x.example/?to=someone%40example.org&a=1", "https://x.example/?t\u2026%40example.org&a=1"),
    ("someone&#64;example.org", "so\u2026&#64;example.org"),
    ("ｓｏｍｅｏｎｅ＠example.org", "ｓｏ\u2026＠example.org"),
    ("root@[192.0.2.1]", "ro\u2026@[192.0.2.1]"),
    ("no address @ here, nor @example.org, nor user@", "no address @ here, nor @example.org, nor user@"),
])
def test_hide_addresses_leaves_no_address_whole(text, shown):
    hidden = redsky.hide_addresses(text)
    assert hidden == shown
    assert redsky.hide_addresses(hidden) == hidden                  # hiding twice changes nothing


@pytest.mark.parametrize("value", ["Wed, 25 Nov 2026 10:00:00 +0000", "25 Nov 2026 10:00 -0730",
                                   "Thu, 1 Jan 70 00:00:00 GMT", "Mon, 5 Feb 2024 23:59:59 EST",
                                   "Tue,  3 Mar 2026 12:00:00 +0100 (CET)", "Sun, 31 Dec 2023 23:00:00 Z"])
def test_parse_date_reads_rfc5322_dates_as_the_email_package_does(value):
    from email.utils import parsedate_to_datetime
    assert redsky.parse_date(value) == parsedate_to_datetime(value).timestamp()


@pytest.mark.parametrize("value", ["", "yesterday", "32 Nov 2026 10:00:00", "25 Foo 2026 10:00:00",
                                   "25 Nov 2026 25:00:00"])
def test_parse_date_refuses_what_is_no_date(value):
    assert redsky.parse_date(value) is None


def test_a_published_copy_keeps_what_a_reader_needs_and_never_fails():
    data = (b"Received: from mx.example by lists (for <bob@example.net>)\nDKIM-Signature: v=1; a=rsa\n"
            b"From: Bob <bob.smith@example.net>\nTo: list@example.org\nSubject: hi\nMessage-ID: <k@example.org>\n"
            b"References: <ref@example.org>\nX-Mailer: thing\n\nbody of bob.smith@example.net\n")
    copy = parse(redsky.published_copy(data))
    assert set(copy.keys()) == {"From", "To", "Subject", "Message-ID", "References", "MIME-Version",
                                "Content-Type", "Content-Transfer-Encoding"}
    assert copy["From"] == "Bob <bo\u2026@example.net>" and copy["Message-ID"] == "<k@example.org>"
    assert copy.get_content() == "body of bo\u2026@example.net\n"
    broken = b"From: a@example.org\nContent-Type: multipart/mixed; boundary=\"\n\n\x00\xff bob.smith@example.net"
    assert b"bob.smith" not in redsky.published_copy(broken)
