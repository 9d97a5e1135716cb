"""What members and owners of a mature list expect (GNU Mailman parity):
member options (set-member, `set` by email, members --option) and the
list settings of `set LIST KEY VALUE`, end to end through the CLI."""

import json
import time

import pytest

from conftest import parse, post

LIST = "test@lists.example.org"
MEMBERS = ("alice@example.org", "bob@example.net", "carol@example.net")


@pytest.fixture
def team(rs):
    rs.newlist(LIST, "--access", "subscribers", members=MEMBERS)
    rs.run("set", LIST, "dmarc", "never", check=0)
    return rs


def request(rs, body, sender):
    return rs.queue(f"From: {sender}\nTo: test-request@lists.example.org\nSubject: {body.splitlines()[0]}\n"
                    f"Message-ID: <{abs(hash((body, sender)))}@x>\n\n{body}\n".encode(),
                    recipient="test-request@lists.example.org", sender=sender)


def deliver(rs, message, sender="alice@example.org"):
    """Queue ``message``, run send; {recipient: [Subject, ...]} of what went out since."""
    before = len(rs.sent())
    rs.queue(message, sender=sender, check=0)
    rs.run("send", check=0)
    got = {}
    for argv, data in rs.sent()[before:]:
        got.setdefault(argv[-1], []).append(parse(data)["Subject"])
    return got


# --- member options -----------------------------------------------------------------------

def test_nomail_keeps_the_member_and_sends_nothing(team):
    team.run("set-member", LIST, "bob@example.net", "nomail", "on", check=0)
    got = deliver(team, post(subject="one"))
    assert sorted(got) == ["alice@example.org", "carol@example.net"]
    assert team.members(LIST)["bob@example.net"]["nomail"] is True
    # still a member: may post, and the others get it
    got = deliver(team, post(subject="from bob", sender="bob@example.net"), sender="bob@example.net")
    assert "bob@example.net" not in got and "carol@example.net" in got
    team.run("set-member", LIST, "bob@example.net", "nomail", "off", check=0)
    got = deliver(team, post(subject="three"))
    assert "bob@example.net" in got


def test_nomail_until_ends_by_itself(team):
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 3 * 86400))
    out = team.run("set-member", LIST, "bob@example.net", "nomail", "on", "--until", day, check=0).out
    assert f"until {day}" in out
    bob = team.members(LIST)["bob@example.net"]
    assert bob["nomail"] is True and bob["nomail_until"] > time.time()
    assert f"nomail until {day}" in team.run("members", LIST, check=0).out
    assert "bob@example.net" not in deliver(team, post(subject="during"))
    # the day passes: the next send's housekeeping resumes delivery before it delivers
    team.db().execute("UPDATE members SET disabled_until = ? WHERE address = 'bob@example.net'",
                      (time.time() - 1,)).connection.commit()
    team.run("send", check=0)
    assert team.members(LIST)["bob@example.net"]["nomail"] is False
    assert "bob@example.net" in deliver(team, post(subject="after"))


@pytest.mark.parametrize("args, code", [
    (("nomail", "on", "--until", "someday"), 64),
    (("nomail", "on", "--until", "2001-01-01"), 64),
    (("nomail", "off", "--until", "2099-01-01"), 64),
    (("digest", "on", "--until", "2099-01-01"), 64),
    (("sometimes", "on"), 64),
    (("ack", "maybe"), 64),
])
def test_set_member_bad_usage(team, args, code):
    proc = team.run("set-member", LIST, "bob@example.net", *args)
    assert proc.returncode == code and "Traceback" not in proc.err and proc.err.strip()
    assert team.members(LIST)["bob@example.net"]["nomail"] is False


def test_nomail_off_does_not_undo_a_bounce_disable(team):
    team.db().execute("UPDATE members SET status = 'disabled', disabled_reason = 'bounce'"
                      " WHERE address = 'bob@example.net'").connection.commit()
    team.run("set-member", LIST, "bob@example.net", "nomail", "off", check=0)
    bob = team.members(LIST)["bob@example.net"]
    assert bob["status"] == "disabled" and bob["nomail"] is False


@pytest.mark.parametrize("bob_digest", [False, True])
def test_notmetoo_poster_gets_no_copy(team, bob_digest):
    if bob_digest:
        team.run("set-member", LIST, "carol@example.net", "digest", "on", check=0)
    team.run("set-member", LIST, "bob@example.net", "notmetoo", "on", check=0)
    got = deliver(team, post(subject="mine", sender="bob@example.net"), sender="bob@example.net")
    assert "bob@example.net" not in got and "alice@example.org" in got
    # case does not matter, and others' posts still reach bob
    got = deliver(team, post(subject="mine again", sender="BOB@Example.NET"), sender="BOB@example.net")
    assert "bob@example.net" not in got
    assert "bob@example.net" in deliver(team, post(subject="alice's"))
    status = team.status()
    assert status["pending"] == 0
    # trace lists the members the post reached: not bob
    trace = team.run("trace", f"<{abs(hash(('mine', 'Hello list.' + chr(10), '')))}@example.org>", check=0).out
    reached = [line.split()[0] for line in trace.splitlines() if line.split()[1:2] == ["sent"]]
    assert "alice@example.org" in reached and "bob@example.net" not in reached, trace


def test_notmetoo_sole_member_discards_with_a_reason(rs):
    rs.newlist(LIST, "--access", "subscribers", members=("bob@example.net",))
    rs.run("set-member", LIST, "bob@example.net", "notmetoo", "on", check=0)
    proc = rs.queue(post(sender="bob@example.net"), sender="bob@example.net", check=0)
    rs.run("send", check=0)
    assert rs.sent() == []
    trace = rs.run("trace", f"<{abs(hash(('Hello', 'Hello list.' + chr(10), '')))}@example.org>", check=0).out
    assert "notmetoo" in trace


def test_ack_sends_a_short_note_with_the_post(team):
    team.run("set-member", LIST, "bob@example.net", "ack", "on", check=0)
    got = deliver(team, post(subject="Plans for Friday", sender="bob@example.net"), sender="bob@example.net")
    assert sorted(got["bob@example.net"]) == sorted(["Plans for Friday", f"{LIST}: your post was accepted"])
    note = next(parse(d) for _, d in team.sent() if parse(d)["Subject"].endswith("was accepted"))
    assert '"Plans for Friday"' in note.get_body().get_content() and note["Auto-Submitted"] == "auto-replied"
    # a held post is not acknowledged; nor is a post of a member without ack
    got = deliver(team, post(subject="from alice"))
    assert all("accepted" not in s for subjects in got.values() for s in subjects)


def test_moderate_holds_every_post_of_that_member(team):
    team.run("set-member", LIST, "bob@example.net", "moderate", "on", check=0)
    got = deliver(team, post(subject="bob speaks", sender="bob@example.net"), sender="bob@example.net")
    assert "alice@example.org" not in got
    held = team.run("held", LIST, check=0).out
    assert "member option moderate" in held
    assert "alice@example.org" in deliver(team, post(subject="alice speaks"))
    held_id = held.split()[0].rstrip(".")
    team.run("approve", held_id, check=0)
    team.run("send", check=0)
    assert any(parse(d)["Subject"] == "bob speaks" and argv[-1] == "carol@example.net" for argv, d in team.sent())


def test_members_option_filter_and_json(team):
    team.run("set-member", LIST, "bob@example.net", "nomail", "on", check=0)
    team.run("set-member", LIST, "carol@example.net", "ack", "on", check=0)
    team.run("set-member", LIST, "carol@example.net", "moderate", "on", check=0)
    assert team.run("members", LIST, "--option", "nomail", check=0).out.split()[0] == "bob@example.net"
    assert len(team.run("members", LIST, "--option", "nomail", check=0).out.splitlines()) == 1
    carol = json.loads(team.run("members", LIST, "--option", "moderate", "--json", check=0).out)
    assert [m["address"] for m in carol] == ["carol@example.net"]
    assert carol[0]["ack"] is True and carol[0]["moderate"] is True and carol[0]["nomail"] is False
    assert team.run("members", LIST, "--option", "notmetoo", check=0).out == ""
    assert "\tack\tmoderate" in team.run("members", LIST, check=0).out
    assert team.run("members", LIST, "--option", "bogus").returncode == 64


@pytest.mark.parametrize("command, option, value", [
    ("set nomail on", "nomail", True), ("SET NoMail ON", "nomail", True),
    ("set notmetoo on", "notmetoo", True), ("set ack on", "ack", True),
])
def test_set_option_by_email(team, command, option, value):
    request(team, command, "bob@example.net").check_returncode()
    assert team.members(LIST)["bob@example.net"][option] is value
    team.run("send", check=0)
    reply = [parse(d) for argv, d in team.sent() if argv[-1] == "bob@example.net"]
    assert [r["Subject"] for r in reply] == [f"{LIST}: {option} on"]
    assert f"{option} is now on for bob@example.net" in reply[0].get_body().get_content()


def test_moderate_cannot_be_set_by_the_member(team):
    team.run("set-member", LIST, "bob@example.net", "moderate", "on", check=0)
    request(team, "set moderate off", "bob@example.net").check_returncode()
    assert team.members(LIST)["bob@example.net"]["moderate"] is True
    request(team, "set nomail on", "stranger@example.com").check_returncode()
    team.run("send", check=0)
    subjects = {argv[-1]: parse(d)["Subject"] for argv, d in team.sent()}
    assert subjects["bob@example.net"] == f"{LIST}: help"
    assert subjects["stranger@example.com"] == f"{LIST}: not subscribed"


def test_options_survive_export_and_import(team, tmp_path):
    team.run("set-member", LIST, "bob@example.net", "notmetoo", "on", check=0)
    team.run("set-member", LIST, "bob@example.net", "moderate", "on", check=0)
    team.run("set-member", LIST, "carol@example.net", "nomail", "on", "--until", "2099-01-01", check=0)
    doc = tmp_path / "export.json"
    team.run("export", LIST, "--output", str(doc), check=0)
    team.run("dellist", LIST, check=0)
    team.run("import", "redsky", str(doc), check=0)
    members = team.members(LIST)
    assert members["bob@example.net"]["notmetoo"] and members["bob@example.net"]["moderate"]
    assert members["carol@example.net"]["nomail"] and members["carol@example.net"]["nomail_until"] > 4e9
