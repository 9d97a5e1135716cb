"""Hostile inputs for every parser of untrusted text, shared by
tests/test_hostile.py (how each parser's CPU grows) and tests/bench.py (the
slowest input per parser).  Each input is about SIZE bytes of one
adversarial pattern; each parser is called the way redsky calls it."""

import email
import io
import time
from email import policy

import redsky

SIZE = 1_000_000


def patterns(size=SIZE):
    """name -> text: long runs of one character, repeated openers that
    never close, encoded-word tricks, NUL, 8-bit, CR-only line ends."""
    def rep(unit):
        return unit * (size // len(unit))
    return {
        "a-run": rep("a"), "space-run": rep(" "), "tab-run": rep("\t"), "dot-run": rep("."),
        "at-run": rep("@"), "dash-run": rep("-"), "lt-run": rep("<"), "paren-open": rep("("),
        "quote-run": rep('"'), "bracket-open": rep("["), "backslash-run": rep("\\"),
        "a@": rep("a@"), "a.": rep("a."), "re-prefix": "re" + rep(" ") + "x", "re-colons": rep("re: "),
        "ew-unclosed": rep("=?utf-8?q?a"), "ew-open": rep("=?utf-8?b?"), "ew-words": rep("=?utf-8?q?a?= "),
        "nul": rep("\x00"), "8bit": rep("\xe9"), "cr-only": rep("x\r"), "crlf": rep("\r\n"),
        "lf-run": rep("\n"), "ip-ish": rep("1.2.3."), "received-ish": rep("from [1.2.3.4] ("),
        "html-open": rep("<a "), "status-ish": rep("5.1."), "approved": rep("Approved: x\n"),
        "by-run": rep("by "), "mixed": rep("a <b@c> (d) \"e\" =?x?q?f?= "),
    }


def message(header="Subject", value="", body=""):
    return f"From: a@example.org\n{header}: {value}\nMessage-ID: <h@example.org>\n\n{body}".encode(
        "utf-8", "surrogateescape")


def nested(levels):
    """A message ``levels`` multiparts deep."""
    head = "".join(f"--b{i}\nContent-Type: multipart/mixed; boundary=b{i + 1}\n\n" for i in range(levels))
    tail = "".join(f"\n--b{i}--\n" for i in reversed(range(levels)))
    return ("From: a@example.org\nSubject: deep\nMIME-Version: 1.0\n"
            "Content-Type: multipart/mixed; boundary=b0\n\n" + head + "text\n" + tail).encode()


def dsn(text):
    """A delivery-status report with ``text`` as its human-readable part and
    its Diagnostic-Code."""
    return ("From: MAILER-DAEMON@example.org\nSubject: failed\nMIME-Version: 1.0\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=B\n\n"
            "--B\nContent-Type: text/plain\n\n" + text + "\n--B\nContent-Type: message/delivery-status\n\n"
            "Reporting-MTA: dns; mx.example.org\n\nFinal-Recipient: rfc822; b@example.org\nAction: failed\n"
            "Status: 5.1.1\nDiagnostic-Code: smtp; " + text + "\n\n--B--\n").encode("utf-8", "surrogateescape")


def _parsed(data):
    return email.message_from_bytes(data, policy=policy.compat32)


LIST = {"id": 1, "name": "test", "domain": "lists.example.org", "footer": "", "subject_tag": "[t]"}

# parser name -> function of one adversarial text; each places it where
# hostile mail would put it
PARSERS = {
    "web_form_multipart": lambda t: redsky.form_fields(
        ('--B\r\nContent-Disposition: form-data; name="a"\r\n' + t).encode("utf-8", "surrogateescape"),
        "multipart/form-data; boundary=B"),
    "web_form_multipart_names": lambda t: redsky.form_fields(
        ('name="a"\r\n' * (len(t) // 10)).encode(), "multipart/form-data; boundary=B"),
    "web_form_urlencoded": lambda t: redsky.form_fields(t.encode("utf-8", "surrogateescape"),
                                                        "application/x-www-form-urlencoded"),
    "RawMessage": lambda t: redsky.RawMessage(message("X-Long", t, t)),
    "decode_header_text": lambda t: redsky.decode_header_text(t),
    "addresses_in": lambda t: redsky.addresses_in([t]),
    "valid_address": lambda t: (redsky.valid_address(t), redsky.normalize_address(t)),
    "command_lines": lambda t: redsky.command_lines(message("Subject", t, t)),
    "parse_command": lambda t: redsky.parse_command(t),
    "subject_tag": lambda t: redsky.with_subject_tag(redsky.RawMessage(message("Subject", t)), "[t]"),
    "relay_ip": lambda t: redsky.relay_ip(t),
    "find_failures": lambda t: redsky.find_failures(
        redsky.parse_report(message("Subject", "Mail delivery failed: " + t, t))),
    "parse_dsn": lambda t: redsky.find_failures(redsky.parse_report(dsn(t))),
    "ses_json": lambda t: redsky.find_failures(redsky.parse_report(message("Subject", "AWS Notification",
                                                                           '"bouncedRecipients" {' + t))),
    "broken_dsn": lambda t: redsky.find_failures(redsky.parse_report(message(
        "Content-Type", "multipart/report; boundary=nowhere", "Final-Recipient: rfc822; " + t))),
    "bounce_cause": lambda t: redsky.bounce_cause("failed", "5.0.0", t, False, t),
    "returned_headers": lambda t: list(redsky.returned_headers(redsky.parse_report(message(
        "Content-Type", "text/rfc822-headers", "Return-Path: <" + t)))),
    "without_prefixes": lambda t: redsky.without_prefixes("Re: [x] " + t),
    "message_leaves": lambda t: list(redsky.message_leaves(_parsed(message(
        "Content-Type", "multipart/alternative; boundary=b", "--b\n" + t + "\n--b--\n")))),
    "bounced_message_ids": lambda t: redsky.bounced_message_ids(_parsed(message("Subject", "x", t)),
                                                                message("Subject", "x", t)),
    "take_approved": lambda t: redsky._take_approved_line(redsky.RawMessage(message("Subject", "x", t))),
    "add_footer": lambda t: redsky.add_footer(redsky.RawMessage(message("Subject", "x", t)), "-- \nfooter"),
    "add_footer_mixed": lambda t: redsky.add_footer(redsky.RawMessage(message(
        "Content-Type", "multipart/mixed; boundary=b", "--b\n\n" + t + "\n--b--\n")), "-- \nfooter"),
    "summary": lambda t: redsky.summary(message("Subject", t)),
    "subscribe_lines": lambda t: redsky.addresses_from_args(["Name <" + t + ">", t]),
    "text_of": lambda t: redsky.text_of(message("Content-Type", "text/html", t)),
    "is_robot": lambda t: redsky.is_robot(redsky.RawMessage(message("Precedence", t)), t),
    "verp_decode": lambda t: redsky.verp_decode(t, LIST, "key"),
    "list_address_roles": lambda t: redsky.ROLE_ADDRESS.fullmatch(t),
    "munge_from": lambda t: redsky.munge_from(redsky.RawMessage(message("From", t)), LIST, "a@example.org"),
    "subject_tag_numbered": lambda t: redsky.with_subject_tag(redsky.RawMessage(message("Subject", "Re: [t 1] " + t)),
                                                              "[t 2]", r"\[t \d+\]"),
    "content_filter": lambda t: redsky._filter_part(_compat32(message(
        "Content-Type", "multipart/mixed; boundary=b", "--b\nContent-Type: text/html; name=" + t[:1000] + "\n\n"
        + t + "\n--b\nContent-Type: multipart/alternative; boundary=c\n\n--c\n\n" + t + "\n--b--\n")),
        {"pass_types": [], "filter_types": ["application/*"], "pass_extensions": [], "filter_extensions": ["exe"]},
        {"collapse_alternatives": 1, "convert_html_to_plaintext": 1}, []),
    "ban_patterns": lambda t: redsky.matches_any(["*@x.example", r"^spam\d+@"], [t]),
    # what an import is handed: an mbox, member lines, mlmmj's addresses in a footer
    "mbox_posts": lambda t: redsky.mbox_posts(("From " + t + "\n\nFrom " + t.replace(".", "\nFrom "))
                                              .encode("utf-8", "surrogateescape")),
    "import_member_lines": lambda t: [redsky.name_addr(line) for line in redsky.text_lines(
        t.encode("utf-8", "surrogateescape"))],
    "mlmmj_addresses": lambda t: [redsky.mlmmj_addresses(
        dict(redsky.new_plan(address), settings={"footer": "a+" + t, "subject_tag": t}), [address], delimiter,
        True) for address, delimiter in (("a@a.a", "+"), ("a-b@a", "-"))],
    # the archive pages: an HTML part, a text part, the addresses hidden, the thread key, a whole post
    "sanitize_html": lambda t: redsky.sanitize_html(t),
    "sanitize_html_attributes": lambda t: redsky.sanitize_html("<a href=" + t + "><td colspan=" + t + ">"),
    "text_html": lambda t: redsky.text_html(t),
    "normalized_subject": lambda t: redsky.normalized_subject(t),
    # what is published and searched: addresses hidden, a copy made, dates read, queries and snippets
    "hide_addresses": lambda t: redsky.hide_addresses(t),
    "published_copy": lambda t: redsky.published_copy(message("Content-Type", "multipart/mixed; boundary=b",
                                                              "--b\nContent-Type: text/plain\n\n" + t + "\n--b--\n")),
    "html_shown": lambda t: (redsky.html_shown(t), redsky.html_shown(t, lines=True)),
    "published_copy_html": lambda t: redsky.published_copy(message("Content-Type", "text/html", t + "a@b.c")),
    "post_facts": lambda t: redsky.post_facts(message("Subject", t, t), LIST),
    "parse_date": lambda t: redsky.parse_date(t),
    "search_fold": lambda t: redsky.search_fold(t),
    "parse_query": lambda t: redsky.parse_query(t),
    "date_span": lambda t: redsky.date_span(t),
    "snippet": lambda t: redsky.snippet(t, [["a"], ["a", "b"], ["x", "y", "z"]]),
    "get_ranges": lambda t: redsky.get_ranges(t.split()) or redsky.get_ranges([t]),
    # an owner's commands by email (their words and a set's value), the tokens of a reply, a notice's HTML
    "owner_command": lambda t: [redsky.plan_owner_action(LIST, verb, words, value) for verb, words, value in
                                (("invite", t.split(), ""), ("ban", t.split(), ""), ("set", ["footer"], t),
                                 ("set", ["owners"], t))],
    "token_in": lambda t: redsky.token_in(t.split() + [t]),
    "notice_html": lambda t: redsky.notice_html(t, [("approve", "mailto:" + t[:200])]),
    "post_page": lambda t: redsky.post_parts(message("Content-Type", "multipart/mixed; boundary=b",
                                                     "--b\nContent-Type: text/html\n\n" + t + "\n--b\n"
                                                     "Content-Disposition: attachment; filename=" + t[:5000]
                                                     + "\n\n" + t + "\n--b--\n")),
    # the web's forms: a signed form token, the client behind X-Forwarded-For
    "check_token": lambda t: redsky.check_token("key", "subscribe", "test@lists.example.org", "", t, 0, 3600),
    "client_network": lambda t: redsky.client_network(redsky.Config(None), {
        "REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": t + ", " + t[:1000]}),
    # the limits: the mailbox an address counts as, the MTA's Authentication-Results on a request
    "mailbox_key": lambda t: (redsky.mailbox_key(t), redsky.mailbox_key('"' + t + '"@' + t)),
    "authentication_results": lambda t: redsky.from_authenticated(redsky.RawMessage(message(
        "Authentication-Results", "mx; dkim=pass header.d=" + t + "; dmarc=pass header.from=" + t + " (" + t)),
        "a@example.org", "mx"),
    # the servers: an HTTP request head (strict, uncapped here to show it is linear), the same bytes
    # as `web --listen` takes them in pieces, and LMTP's DATA lines
    "http_head": lambda t: _each(redsky.parse_http_head, [
        ("GET /" + t + " HTTP/1.1\r\nHost: a\r\n").encode("utf-8", "surrogateescape"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: " + t).encode("utf-8", "surrogateescape"),
        ("GET / HTTP/1.1\r\n" + "".join(f"X-{i}: {t[i:i + 200]}\r\n" for i in range(0, len(t), 200))
         ).encode("utf-8", "surrogateescape")], limit=None),
    "http_request_stream": lambda t: _fed(redsky.RequestReader().feed, (
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\nX: " + t).encode("utf-8", "surrogateescape"), 512),
    "lmtp_data": lambda t: _lmtp_data(t.encode("utf-8", "surrogateescape")),
    # the web admin: a POSTed form, the session cookie, a day typed in
    "read_form": lambda t: redsky.read_form({"CONTENT_LENGTH": str(len(t.encode())),
                                             "wsgi.input": io.BytesIO(t.encode())}, limit=1 << 30),
    "cookie_values": lambda t: redsky.cookie_values({"HTTP_COOKIE": t + "; redsky_owner=" + t}, "redsky_owner"),
    "utc_day": lambda t: redsky.utc_day(t),
    # what the log keeps of a request target, and where a sign-in POST comes from
    "log_target": lambda t: redsky.log_target("/x@y/admin/held/" + t + "?token=" + t + "&q=" + t),
    "own_origin": lambda t: (redsky.own_origin("https://" + t), redsky.own_origin("http://[" + t + "]:1/" + t)),
}


def _each(fn, inputs, **kwargs):
    """fn over every input, its refusals (ValueError) taken as answers."""
    for data in inputs:
        try:
            fn(data, **kwargs)
        except ValueError:
            pass


def _fed(feed, data, piece):
    for i in range(0, len(data), piece):
        feed(data[i:i + piece])


def _lmtp_data(data):
    """The lines of DATA as the server reads them (each up to its LF), then the end."""
    reader = redsky.LMTPData(len(data) * 2)
    for line in (data + b"\r\n.\r\n").split(b"\n")[:-1]:
        if reader.add(line + b"\n"):
            break


def _compat32(data):
    import email
    from email import policy
    return email.message_from_bytes(data, policy=policy.compat32)


def cpu(fn, *args):
    """CPU seconds (user + system) of fn(*args); an exception counts as done."""
    start = time.process_time()
    try:
        fn(*args)
    except (RecursionError, ValueError, LookupError, UnicodeError):
        pass
    return time.process_time() - start


def worst(size=SIZE):
    """{parser: (seconds, input name)} of the slowest input for each parser."""
    inputs = patterns(size)
    return {name: max((cpu(fn, text), key) for key, text in inputs.items()) for name, fn in PARSERS.items()}
