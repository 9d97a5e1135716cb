"""Hostile input: every parser of untrusted text runs in linear time.

Each parser gets half a megabyte of each adversarial pattern (tests/hostile.py)
and must finish within a CPU budget that a linear parser meets many times
over and a quadratic one misses by minutes.  `python3 tests/bench.py
--hostile` prints the slowest input per parser at 1 MB."""

import pytest

import hostile
from conftest import post

SIZE = 512 * 1024
BUDGET = 1.5             # CPU seconds for SIZE bytes; linear parsers take 0.001-0.6 s here
INPUTS = hostile.patterns(SIZE)


@pytest.mark.parametrize("parser", sorted(hostile.PARSERS))
def test_every_parser_is_linear_on_hostile_input(parser):
    fn = hostile.PARSERS[parser]
    slow = {name: round(seconds, 2) for name, text in INPUTS.items()
            for seconds in [hostile.cpu(fn, text)] if seconds > BUDGET}
    assert not slow, f"{parser} took more than {BUDGET} s of CPU for {SIZE} bytes of {slow}"


def test_the_budget_catches_a_quadratic_parser():
    """The check above can fail: the email package's own RFC 2047 decoder
    (which redsky replaced) blows the budget on unclosed encoded-words."""
    from email.header import decode_header
    assert hostile.cpu(decode_header, "=?utf-8?q?a" * 6_000) > BUDGET       # 66 KB: ~3 s


@pytest.mark.parametrize("parser", sorted(hostile.PARSERS))
def test_deep_mime_nesting_never_crashes_a_parser(parser):
    data = hostile.nested(1500).decode()
    hostile.cpu(hostile.PARSERS[parser], data)    # RecursionError and ValueError are handled as done


@pytest.mark.parametrize("to", ["test-bounces", "test-request", "test", "test-join"])
def test_deeply_nested_mail_is_answered_not_retried(lst, to):
    """1,500 levels of multipart: an outcome, never 75 on every retry."""
    r = lst.queue(hostile.nested(1500), recipient=f"{to}@lists.example.org", sender="a@example.org")
    assert r.returncode in (0, 65), r.err
    assert "internal error" not in r.err


@pytest.mark.parametrize("address", ["test-bounces", "test-request", "test"])
def test_a_megabyte_of_one_character_is_handled_in_seconds(lst, address):
    import time
    body = "a" * 1_000_000
    start = time.monotonic()
    r = lst.queue(post(subject="Undelivered Mail Returned to Sender " + "a" * 50_000, body=body),
                  recipient=f"{address}@lists.example.org", sender="")
    assert r.returncode == 0, r.err
    assert time.monotonic() - start < 20     # was 44 s for 100 KB to -bounces


def test_absurdly_nested_json_in_a_report_is_no_crash():
    """An Amazon SES notification is read as JSON, which recurses."""
    import redsky
    for text in ('"bouncedRecipients" ' + "[" * 100_000, '{"Message": "' + "{" * 100_000 + '"} bouncedRecipients'):
        raw = hostile.message("Subject", "AWS Notification", text)
        assert redsky.find_failures(redsky.parse_report(raw)) is not None
