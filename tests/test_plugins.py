"""Your own filters: [redsky] plugins loads Python files whose
@redsky.chain_filter functions join the registry."""

import textwrap

import pytest

from conftest import post

# The README's worked example, word for word (a test below checks that).
TOO_MANY = textwrap.dedent('''\
    import redsky

    MAX_RECIPIENTS = 3

    @redsky.chain_filter("message", needs=("read",))
    def toomanyrecipients(ctx):
        """Hold a message that names more than MAX_RECIPIENTS addresses in To and Cc."""
        named = redsky.addresses_in(ctx.msg.get_all("To") + ctx.msg.get_all("Cc"))
        if len(named) > MAX_RECIPIENTS:
            raise redsky.Hold(f"{len(named)} recipients in To/Cc")
        ctx.note(f"{len(named)} recipients in To/Cc")
''')

MANY = "Cc: a@example.org, b@example.org,\n c@example.org\n"      # with To: the list, 4


@pytest.fixture
def plugged(rs):
    (rs.home / "toomany.py").write_text(TOO_MANY)
    rs.write_config(redsky={"log": "stderr", "plugins": "toomany.py"})
    return rs


def test_plugin_filter_runs_in_the_queue_chain(plugged):
    plugged.write_config(queue={"filters": "read getinfo loopdetect bouncehandler commands ownermail getsubscribers"
                                           " toomanyrecipients access subjecttag addfooter queuer"})
    plugged.newlist("test@lists.example.org", "--access", "open", members=("bob@example.net",))
    plugged.queue(post(extra=MANY), check=0)
    held = plugged.run("held", "--json", check=0).out
    assert "4 recipients in To/Cc" in held
    plugged.queue(post(subject="few"), check=0)
    plugged.run("send", check=0)
    assert len(plugged.sent()) == 1


def test_plugin_filter_runs_in_filter_mode(plugged):
    plugged.write_config(filter={"filters": "read toomanyrecipients out"})
    r = plugged.run("filter", "--sender", "alice@example.org", input=post(extra=MANY))
    assert r.returncode == 99 and r.stdout == b"" and "4 recipients in To/Cc" in r.err
    r = plugged.run("filter", "--sender", "alice@example.org", "--explain", input=post())
    assert r.returncode == 0 and r.stdout == post()
    assert "toomanyrecipients 1 recipients in To/Cc" in " ".join(r.err.split())


def test_the_readme_shows_the_tested_plugin():
    from conftest import ROOT
    assert TOO_MANY in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("source, message", [
    (None, "cannot read it"),
    ("import redsky\ndef broken(:\n", "SyntaxError"),
    ("import redsky\nraise RuntimeError('boom')\n", "line 2"),
    ("import redsky\n@redsky.chain_filter('message')\ndef access(ctx):\n    pass\n", "'access' is already defined"),
    ("import redsky\ndef helper(ctx):\n    pass\n", "defines no filter"),
])
def test_a_bad_plugin_is_a_configuration_error_at_start_up(rs, source, message):
    if source is not None:
        (rs.home / "bad.py").write_text(source)
    rs.write_config(redsky={"log": "stderr", "plugins": "bad.py"})
    for args in (["filter"], ["queue", "--recipient", "test@lists.example.org"], ["lists"]):
        r = rs.run(*args, input=post())
        assert r.returncode == 78, (args, r.err)
        assert message in r.err and "Traceback" not in r.err and r.stdout == b""


def test_two_plugins_cannot_define_the_same_filter(rs):
    (rs.home / "one.py").write_text(TOO_MANY)
    (rs.home / "two.py").write_text(TOO_MANY)
    rs.write_config(redsky={"log": "stderr", "plugins": "one.py, two.py"})
    r = rs.run("lists")
    assert r.returncode == 78 and "two.py" in r.err and "already defined" in r.err


def test_a_plugin_check_is_skipped_for_whitelisted_senders(rs):
    (rs.home / "strict.py").write_text(textwrap.dedent('''\
        import redsky

        @redsky.chain_filter("message", check=True)
        def nobody(ctx):
            raise redsky.Reject("nobody may send")
    '''))
    rs.write_config(redsky={"log": "stderr", "plugins": str(rs.home / "strict.py")},
                    filter={"filters": "read whitelist nobody out"}, whitelist={"senders": "example.org"})
    assert rs.run("filter", "--sender", "alice@example.org", input=post()).returncode == 0
    r = rs.run("filter", "--sender", "eve@evil.test", input=post())
    assert r.returncode == 65 and "nobody may send" in r.err


@pytest.mark.parametrize("body", ["raise redsky.TryLater('disk hiccup')", "raise RuntimeError('bug')",
                                  "raise redsky.Hold('too late')"])
def test_nothing_after_queuer_can_undo_or_repeat_a_queued_post(rs, body):
    """A filter after queuer that fails or gives a verdict must not turn an
    accepted post into 75 (the MTA would deliver it again) or a held copy."""
    (rs.home / "late.py").write_text(textwrap.dedent(f'''\
        import redsky

        @redsky.chain_filter("message", needs=("queuer",))
        def late(ctx):
            {body}
    '''))
    rs.write_config(redsky={"log": "stderr", "plugins": "late.py"},
                    queue={"filters": "read getinfo getsubscribers access queuer late"})
    rs.newlist("test@lists.example.org", "--access", "open", members=("bob@example.net",))
    data = post()
    r = rs.queue(data)
    assert r.returncode == 0 and "after the post was queued (ignored)" in r.err
    assert rs.status()["held"] == 0
    rs.run("send", check=0)
    assert rs.sent_to() == ["bob@example.net"]
    trace = rs.run("trace", data.msgid, check=0).out
    assert "ignored after queueing" in trace


@pytest.mark.parametrize("log", ["stderr", "redsky.log"])
def test_a_bug_is_one_line_on_stderr_and_its_traceback_is_logged(rs, log):
    """An unexpected exception: exit 75 (the MTA retries), one line on stderr
    saying where, and the whole traceback at ERROR in a log file."""
    (rs.home / "bug.py").write_text(textwrap.dedent('''\
        import redsky

        @redsky.chain_filter("message", needs=("read",))
        def buggy(ctx):
            return {}["missing"]
    '''))
    rs.write_config(redsky={"log": log, "plugins": "bug.py"},
                    queue={"filters": "read getinfo buggy getsubscribers access queuer"})
    rs.newlist("test@lists.example.org", "--access", "open", members=("bob@example.net",))
    r = rs.queue(post())
    assert r.returncode == 75 and len(r.err.strip().splitlines()) == 1
    assert "internal error in queue: KeyError" in r.err and "bug.py:5 buggy" in r.err
    if log != "stderr":
        text = (rs.home / log).read_text()
        assert "ERROR" in text and "Traceback (most recent call last)" in text and 'return {}["missing"]' in text
    assert rs.status()["queued_posts"] == 0
