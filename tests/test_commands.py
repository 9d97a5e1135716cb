"""Acting by email: -request commands, -join/-leave, confirmations, moderation, owner mail."""

import re

import pytest

from conftest import inbox, mail, parse, post

LIST = "test@lists.example.org"
OWNER = "owner@example.org"


LIST_OPTIONS = ("--owner", OWNER)


def token_in(msg):
    return re.search(r"confirm\+([0-9a-f]{32})@", msg["Reply-To"]).group(1)


def members(rs):
    return set(rs.members(LIST))


# -- subscribe and unsubscribe -------------------------------------------------------

def test_subscribe_confirm_by_reply_then_welcome(lst):
    mail(lst, "test-join@lists.example.org", "new@example.com")
    assert "new@example.com" not in members(lst)
    (confirmation,) = inbox(lst, "new@example.com")
    token = token_in(confirmation)
    assert confirmation["Subject"] == f"confirm {token}"
    assert confirmation["Auto-Submitted"] == "auto-replied"
    assert confirmation["From"] == "test-request@lists.example.org"
    assert "new@example.com" in confirmation.get_content()
    # "reply" is enough: to the Reply-To address, with whatever subject and body
    mail(lst, f"test-confirm+{token}@lists.example.org", "new@example.com", subject=f"Re: confirm {token}")
    assert "new@example.com" in members(lst)
    welcome = inbox(lst, "new@example.com")[-1]
    assert welcome["Subject"] == "Welcome to test@lists.example.org"
    assert "test-leave@lists.example.org" in welcome.get_content()


def test_subscribe_by_request_command_and_confirm_command(lst):
    mail(lst, "test-request@lists.example.org", "new@example.com", subject="", body="subscribe\n")
    (confirmation,) = inbox(lst, "new@example.com")
    token = token_in(confirmation)
    # a reply to -request (client ignored Reply-To): the token is in the subject
    mail(lst, "test-request@lists.example.org", "new@example.com", subject=f"Re: confirm {token}",
         body="> quoted text\n")
    assert "new@example.com" in members(lst)


def test_subscribe_command_in_subject(lst):
    mail(lst, "test-request@lists.example.org", "new@example.com", subject="subscribe")
    assert len(inbox(lst, "new@example.com")) == 1


@pytest.mark.parametrize("prefix", ["Antw: ", "WG: AW: ", "TR:", "Re[2]: Fwd: ", "Sv: [test] ", "RE: FW: "])
def test_a_command_in_a_subject_behind_any_reply_prefix(lst, prefix):
    """One list of reply and forward prefixes serves commands and threads alike."""
    mail(lst, "test-request@lists.example.org", "new@example.com", subject=prefix + "subscribe")
    (confirmation,) = inbox(lst, "new@example.com")
    assert confirmation["Subject"].startswith("confirm ")
    import redsky
    assert redsky.normalized_subject(prefix + "Zürich Meeting") == "zürich meeting"


def test_unsubscribe_confirm_goodbye(lst):
    mail(lst, "test-leave@lists.example.org", "bob@example.net")
    assert "bob@example.net" in members(lst)
    (confirmation,) = inbox(lst, "bob@example.net")
    mail(lst, f"test-confirm+{token_in(confirmation)}@lists.example.org", "bob@example.net")
    assert "bob@example.net" not in members(lst)
    goodbye = inbox(lst, "bob@example.net")[-1]
    assert goodbye["Subject"] == "Goodbye from test@lists.example.org"


def test_unsubscribe_alias_and_non_member(lst):
    mail(lst, "test-unsubscribe@lists.example.org", "stranger@example.com")
    (reply,) = inbox(lst, "stranger@example.com")
    assert "not subscribed" in reply.get_content()


def test_token_is_single_use(lst):
    mail(lst, "test-join@lists.example.org", "new@example.com")
    token = token_in(inbox(lst, "new@example.com")[0])
    mail(lst, f"test-confirm+{token}@lists.example.org", "new@example.com")
    lst.run("unsubscribe", LIST, "new@example.com", check=0)
    mail(lst, f"test-confirm+{token}@lists.example.org", "new@example.com")
    assert "new@example.com" not in members(lst)
    assert "unknown or was already used" in inbox(lst, "new@example.com")[-1].get_content()


def test_expired_token(lst):
    lst.write_config(commands={"confirm_expiry": "0s"})
    mail(lst, "test-join@lists.example.org", "new@example.com")
    token = token_in(inbox(lst, "new@example.com")[0])
    mail(lst, f"test-confirm+{token}@lists.example.org", "new@example.com")
    assert "new@example.com" not in members(lst)
    assert "expired" in inbox(lst, "new@example.com")[-1].get_content()


def test_token_for_another_list_does_nothing(lst):
    lst.newlist("other@lists.example.org")
    mail(lst, "other-join@lists.example.org", "new@example.com")
    token = token_in(inbox(lst, "new@example.com")[0])
    mail(lst, f"test-confirm+{token}@lists.example.org", "new@example.com")
    assert "new@example.com" not in members(lst)
    assert "new@example.com" not in set(lst.members("other@lists.example.org"))


def test_token_is_bound_to_its_address(lst):
    mail(lst, "test-join@lists.example.org", "new@example.com")
    token = token_in(inbox(lst, "new@example.com")[0])
    mail(lst, f"test-confirm+{token}@lists.example.org", "mallory@evil.example")
    assert "mallory@evil.example" not in members(lst)          # only the token's address can join
    assert "new@example.com" in members(lst)


def test_forged_from_only_sends_the_victim_a_confirmation(lst):
    mail(lst, "test-join@lists.example.org", "victim@example.com", envelope="mallory@evil.example")
    assert "victim@example.com" not in members(lst)
    (confirmation,) = inbox(lst, "victim@example.com")
    assert "If you did not ask for this" in confirmation.get_content()
    assert inbox(lst, "mallory@evil.example") == []


def test_unknown_token_address(lst):
    mail(lst, "test-confirm+" + "0" * 32 + "@lists.example.org", "new@example.com")
    assert "unknown" in inbox(lst, "new@example.com")[-1].get_content()
    assert mail(lst, "test-confirm@lists.example.org", "new@example.com", check=None).returncode == 67


def test_rate_limits(lst):
    for _ in range(5):                                    # a repeat while pending: the same token again
        mail(lst, "test-join@lists.example.org", "new@example.com")
    got = inbox(lst, "new@example.com")                   # 3 a day, then one notice of until when
    assert len({token_in(m) for m in got[:3]}) == 1 and len(got) == 4 and "ignored until" in got[3]["Subject"]
    for name in ("a", "b", "c", "d"):                     # at most 3 confirmations a day per address
        lst.newlist(f"{name}@lists.example.org")
        mail(lst, f"{name}-join@lists.example.org", "other@example.com")
    assert len(inbox(lst, "other@example.com")) == 3 + 1


def test_help_and_unknown_commands_get_help(lst):
    mail(lst, "test-request@lists.example.org", "new@example.com", subject="help")
    mail(lst, "test-request@lists.example.org", "other@example.com", subject="what is this", body="hello?\n")
    for address in ("new@example.com", "other@example.com"):
        (reply,) = inbox(lst, address)
        assert "test-join@lists.example.org" in reply.get_content()
        assert reply["In-Reply-To"]


def test_replies_are_capped_per_day(lst):
    lst.write_config(commands={"max_replies": "2"})
    for i in range(4):
        mail(lst, "test-request@lists.example.org", "chatty@example.com", subject=f"help {i}")
    got = inbox(lst, "chatty@example.com")                # 2, then one notice that the rest are ignored
    assert len(got) == 3 and "ignored until" in got[-1]["Subject"]


@pytest.mark.parametrize("extra,envelope,sender", [
    ("Auto-Submitted: auto-replied\n", None, "new@example.com"),
    ("Precedence: bulk\n", None, "new@example.com"),
    ("Precedence: list\n", None, "new@example.com"),
    ("", "", "new@example.com"),
    ("", None, "MAILER-DAEMON@example.com"),
    ("", None, "other-bounces@lists.example.com"),
])
def test_robots_are_never_answered(lst, extra, envelope, sender):
    for to in ("test-request@lists.example.org", "test-join@lists.example.org"):
        r = mail(lst, to, sender, subject="subscribe", extra=extra, envelope=envelope)
        assert "discard" in r.err
    lst.run("send", check=0)
    assert lst.sent() == []
    assert lst.run("pending", check=0).out == ""


# -- policies -----------------------------------------------------------------------

def test_policy_open_subscribes_at_once(lst):
    lst.run("set", LIST, "subscribe_policy", "open", check=0)
    mail(lst, "test-join@lists.example.org", "new@example.com")
    assert "new@example.com" in members(lst)
    assert inbox(lst, "new@example.com")[0]["Subject"].startswith("Welcome")


def test_policy_closed(lst):
    lst.run("set", LIST, "subscribe_policy", "closed", check=0)
    mail(lst, "test-join@lists.example.org", "new@example.com")
    assert "new@example.com" not in members(lst)
    assert "does not take subscriptions" in inbox(lst, "new@example.com")[0].get_content()


def test_policy_confirm_and_approve(lst):
    lst.run("set", LIST, "subscribe_policy", "confirm+approve", check=0)
    mail(lst, "test-join@lists.example.org", "new@example.com")
    token = token_in(inbox(lst, "new@example.com")[0])
    mail(lst, f"test-confirm+{token}@lists.example.org", "new@example.com")
    assert "new@example.com" not in members(lst)
    (request,) = inbox(lst, OWNER)
    assert "new@example.com asks to join" in request["Subject"]
    assert "waiting for the list owners" in inbox(lst, "new@example.com")[-1].get_content()
    mail(lst, f"test-confirm+{token_in(request)}@lists.example.org", OWNER, body="approve\n")
    assert "new@example.com" in members(lst)


def test_policy_approve_rejected(lst):
    lst.run("set", LIST, "subscribe_policy", "approve", check=0)
    mail(lst, "test-join@lists.example.org", "new@example.com")
    (request,) = inbox(lst, OWNER)
    mail(lst, "test-request@lists.example.org", OWNER, body=f"reject {token_in(request)} not a colleague\n")
    assert "new@example.com" not in members(lst)
    assert "not a colleague" in inbox(lst, "new@example.com")[-1].get_content()


def test_custom_welcome_text(lst):
    lst.run("set", LIST, "subscribe_policy", "open", check=0)
    lst.run("set", LIST, "welcome", "Hi $address, read the rules at $post_address.", check=0)
    mail(lst, "test-join@lists.example.org", "new@example.com")
    assert inbox(lst, "new@example.com")[0].get_content().strip() == \
        "Hi new@example.com, read the rules at test@lists.example.org."


# -- moderation by email ----------------------------------------------------------------

def held_notice(rs):
    (notice,) = inbox(rs, OWNER)
    return notice


def test_held_post_notice_approve_by_email_distributed_once(lst):
    mail(lst, LIST, "stranger@example.com", subject="Let me in", body="A post from outside.\n")
    notice = held_notice(lst)
    assert "held" in notice["Subject"] and notice["Auto-Submitted"] == "auto-generated"
    texts, attached = notice.get_payload()          # the text (and its HTML alternative), the post
    text = notice.get_body(("plain",)).get_content()
    assert texts.get_content_type() == "multipart/alternative"
    assert "not a member" in text and "Let me in" in text and "A post from outside." in text
    assert attached.get_content_type() == "message/rfc822"
    assert attached.get_payload()[0]["Subject"] == "Let me in"
    token = token_in(notice)
    mail(lst, f"test-confirm+{token}@lists.example.org", OWNER, subject="Re: " + notice["Subject"],
         body="approve\n\n> the notice\n")
    assert lst.status()["held"] == 0
    got = inbox(lst, "bob@example.net")
    assert [m["Subject"] for m in got] == ["Let me in"]
    # a second approval (replayed) does nothing
    mail(lst, f"test-confirm+{token}@lists.example.org", OWNER, body="approve\n")
    assert [m["Subject"] for m in inbox(lst, "bob@example.net")] == ["Let me in"]


def test_an_approval_by_email_releases_the_post_after_its_own_chain(lst):
    """The approving message's chain ends (commands: consumed), then the held
    post is released: the trace shows one read and a release step last."""
    import json
    mail(lst, LIST, "stranger@example.com", subject="Let me in")
    token = token_in(held_notice(lst))
    to = f"test-confirm+{token}@lists.example.org"
    lst.queue(post(subject="Re: held", body="approve\n", sender=OWNER, to=to, msgid="<approval-1@example.org>"),
              recipient=to, sender=OWNER, check=0)
    (event,) = json.loads(lst.run("trace", "<approval-1@example.org>", "--json", check=0).out)["events"]
    steps = [name for name, _ in event["trace"]]
    assert steps.count("read") == 1 and steps[-1] == "release" and event["outcome"] == "consumed"
    assert "released" in event["trace"][-1][1] and "1 recipients" in event["trace"][-1][1]
    assert [m["Subject"] for m in inbox(lst, "bob@example.net")] == ["Let me in"]


def test_approve_with_token_to_request(lst):
    mail(lst, LIST, "stranger@example.com", subject="via request")
    token = token_in(held_notice(lst))
    mail(lst, "test-request@lists.example.org", OWNER, subject="", body=f"approve {token}\n")
    assert [m["Subject"] for m in inbox(lst, "bob@example.net")] == ["via request"]


def test_reject_by_email_notifies_the_sender(lst):
    mail(lst, LIST, "stranger@example.com", subject="Spammy")
    token = token_in(held_notice(lst))
    mail(lst, f"test-confirm+{token}@lists.example.org", OWNER, body="reject Off topic here, sorry\n")
    assert lst.status()["held"] == 0
    (notice,) = inbox(lst, "stranger@example.com")
    assert "Off topic here, sorry" in notice.get_content() and "Spammy" in notice.get_content()
    assert inbox(lst, "bob@example.net") == []


def test_discard_by_email_is_silent(lst):
    mail(lst, LIST, "stranger@example.com", subject="Spam")
    token = token_in(held_notice(lst))
    mail(lst, f"test-confirm+{token}@lists.example.org", OWNER, body="discard\n")
    assert lst.status()["held"] == 0
    assert inbox(lst, "stranger@example.com") == []


def test_non_moderator_approval_refused(lst):
    mail(lst, LIST, "stranger@example.com", subject="Sneaky")
    token = token_in(held_notice(lst))
    mail(lst, f"test-confirm+{token}@lists.example.org", "stranger@example.com", body="approve\n")
    assert lst.status()["held"] == 1
    assert inbox(lst, "bob@example.net") == []
    assert "Only the moderators" in inbox(lst, "stranger@example.com")[-1].get_content()


def test_passphrase_lets_a_non_owner_moderate(lst):
    lst.run("set", LIST, "passphrase", "s3cret", check=0)
    mail(lst, LIST, "stranger@example.com", subject="With pass")
    token = token_in(held_notice(lst))
    mail(lst, f"test-confirm+{token}@lists.example.org", "helper@example.org",
         extra="Approved: s3cret\n", body="approve\n")
    assert [m["Subject"] for m in inbox(lst, "bob@example.net")] == ["With pass"]


def test_cli_discard_and_pending(lst):
    mail(lst, LIST, "stranger@example.com", subject="one")
    pending = lst.run("pending", check=0).out
    assert "moderate" in pending and "held post 1" in pending
    lst.run("discard", "1", check=0)
    assert lst.status()["held"] == 0 and lst.run("pending", check=0).out == ""


def test_held_posts_expire_and_moderators_are_reminded_daily(lst):
    lst.write_config(commands={"held_expiry": "3d"})
    mail(lst, LIST, "stranger@example.com", subject="old one")
    mail(lst, LIST, "stranger@example.com", subject="older one")
    mail(lst, LIST, "stranger@example.com", subject="fresh one")
    with lst.db() as db:
        db.execute("UPDATE held SET received = received - 2 * 86400 WHERE subject = 'old one'")
        db.execute("UPDATE held SET received = received - 4 * 86400 WHERE subject = 'older one'")
    notices = inbox(lst, OWNER)                 # 3 held notices + 1 reminder
    reminder = [m for m in notices if "waiting" in m["Subject"]]
    text = reminder[0].get_body(("plain",)).get_content()
    assert len(reminder) == 1 and "old one" in text and "fresh one" not in text
    assert lst.status()["held"] == 2            # "older one" expired
    assert len(inbox(lst, OWNER)) == len(notices)   # at most one reminder a day


# -- owner mail -------------------------------------------------------------------------

def test_owner_mail_goes_to_owners_only(lst):
    mail(lst, "test-owner@lists.example.org", "someone@example.com", subject="A question")
    lst.run("send", check=0)
    ((argv, data),) = lst.sent()
    assert argv[-1] == OWNER and parse(data)["Subject"] == "A question"
    assert parse(data)["X-Loop"] == "test-owner@lists.example.org"
    # it cannot loop back
    lst.queue(data, recipient="test-owner@lists.example.org", check=0)
    lst.run("send", check=0)
    assert len(lst.sent()) == 1


def test_chain_without_commands_never_distributes_command_mail(lst):
    lst.write_config(queue={"filters": "read getinfo loopdetect getsubscribers access queuer"})
    r = mail(lst, "test-request@lists.example.org", "bob@example.net", subject="unsubscribe")
    assert "no filter in the chain handles it" in r.err
    assert lst.status()["queued_posts"] == 0


def test_list_headers_point_to_working_addresses(lst):
    lst.run("set", LIST, "access", "open", check=0)
    mail(lst, LIST, "bob@example.net", subject="hi")
    (copy,) = inbox(lst, "bob@example.net")
    leave = re.search(r"<mailto:([^>]+)>", copy["List-Unsubscribe"]).group(1)
    mail(lst, leave, "bob@example.net")                  # personal: one click is enough
    assert "bob@example.net" not in members(lst)
    assert "Goodbye" in inbox(lst, "bob@example.net")[-1]["Subject"]
    for header in ("List-Subscribe", "List-Help", "List-Owner"):
        address = re.search(r"<mailto:([^>?]+)", copy[header]).group(1)
        assert mail(lst, address, "someone@example.com", subject="help").returncode == 0


@pytest.mark.parametrize("to", ["test-request", "test-join", "test-leave", "test-owner",
                                "test-confirm+" + "a" * 32, "test-confirm+../../etc"])
@pytest.mark.parametrize("data", [
    b"From: =?utf-8?b?!!!?= <new@example.com>\nSubject: =?x-unknown?q?subscribe?=\n\n\xff\xfe\x00junk\n",
    b"From: new@example.com\nSubject: " + b"subscribe " * 2000 + b"\nContent-Type: text/plain; charset=x-bad\n"
    b"Content-Transfer-Encoding: base64\n\n!!!!\n",
    b"From: <>\nSubject: help\n\nhelp\n",
    b"From: \"-oQ/tmp/x\"@example.com\nSubject: subscribe\n\nsubscribe\n",
    b"From: new@example.com\nContent-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: text/plain\n\nconfirm "
    + b"b" * 32 + b"\n",
])
def test_hostile_command_mail_gets_a_clear_outcome(lst, to, data):
    r = lst.queue(data, recipient=f"{to}@lists.example.org", sender="new@example.com")
    assert r.returncode in (0, 65, 67) and "Traceback" not in r.err and "internal error" not in r.err, r.err
    lst.run("send", check=0)
    assert all(argv[-2] == "--" for argv, _ in lst.sent())


# -- one-click unsubscribe -----------------------------------------------------------------

def personal_leave(rs, member):
    (copy,) = [parse(d) for argv, d in rs.sent() if member in argv[argv.index("--") + 1:]
               and parse(d)["Subject"] == "hi"]
    return re.fullmatch(r"<mailto:([^>]+)>", copy["List-Unsubscribe"]).group(1)


def test_personal_list_unsubscribe_leaves_at_once(lst):
    lst.run("subscribe", LIST, "carl@example.com", check=0)
    lst.run("set", LIST, "access", "open", check=0)
    mail(lst, LIST, "bob@example.net", subject="hi")
    lst.run("send", check=0)
    bob, carl = personal_leave(lst, "bob@example.net"), personal_leave(lst, "carl@example.com")
    assert re.fullmatch(r"test-leave\+[0-9a-f]{16}@lists\.example\.org", bob) and bob != carl
    mail(lst, bob, "whoever@client.example")           # the mail client's one click, any From
    assert "bob@example.net" not in members(lst) and "carl@example.com" in members(lst)
    assert inbox(lst, "bob@example.net")[-1]["Subject"] == "Goodbye from test@lists.example.org"
    assert inbox(lst, "whoever@client.example") == []


def test_forged_leave_token_only_asks_the_sender_to_confirm(lst):
    mail(lst, "test-leave+" + "0" * 16 + "@lists.example.org", "bob@example.net")
    assert "bob@example.net" in members(lst)
    assert inbox(lst, "bob@example.net")[-1]["Subject"].startswith("confirm ")


def test_batched_delivery_keeps_the_generic_address(lst):
    lst.run("subscribe", LIST, "carl@example.com", check=0)
    lst.run("set", LIST, "access", "open", check=0)
    lst.write_config(send={"verp": "off"})
    mail(lst, LIST, "bob@example.net", subject="hi")
    lst.run("send", check=0)
    assert personal_leave(lst, "bob@example.net") == "test-leave@lists.example.org"
