"""Owners and moderators by email, no shell needed (issue 31): an owner's commands to
LIST-request, confirmed by the owner; one-tap moderation links; the daily summary; and every
forgery: a forged From, a Reply-To or envelope sender of an outsider, a token of another list or
another owner, a replayed token, a moderator or an outsider trying an owner's command."""

import re
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from conftest import inbox, parse, post

LIST = "test@lists.example.org"
REQUEST = "test-request@lists.example.org"
OWNER, BOSS, MOD = "owner@example.org", "boss@example.org", "mod@example.org"
MALLORY = "mallory@evil.example"
LIST_OPTIONS = ("--owner", OWNER, "--owner", BOSS)
MEMBERS = ("bob@example.net", "carol@example.net")


def prepare_list(rs):
    rs.run("set", LIST, "moderators", MOD, check=0)
    rs.run("set", LIST, "dmarc", "never", check=0)


def send(rs, body, sender, envelope=None, subject=None, to=REQUEST, extra=""):
    """A mail to ``to`` whose Subject is ``subject`` (default: the first line of ``body``)."""
    subject = body.splitlines()[0] if subject is None and body else subject or ""
    data = f"From: {sender}\nTo: {to}\nSubject: {subject}\n{extra}Message-ID: <{hash((body, sender, to, extra))}@x>\n\n{body}\n"
    return rs.queue(data.encode(), recipient=to, sender=sender if envelope is None else envelope, check=0)


def text(msg):
    return msg.get_body(("plain",)).get_content()


def new_mail(rs, address, seen):
    """The messages ``address`` got since ``seen`` (a list of earlier ones, extended)."""
    got = inbox(rs, address)[len(seen):]
    seen += got
    return got


def token_of(msg):
    return re.search(r"confirm\+([0-9a-f]{32})@", msg["Reply-To"]).group(1)


def reply(rs, msg, sender, body=""):
    """Reply to ``msg`` (to its Reply-To, as a mail program does)."""
    return send(rs, body, sender, subject=f"Re: {msg['Subject']}", to=msg["Reply-To"])


def all_links(msg):
    """[(label, (to, subject, body))] of the one-tap links of a notice, from its HTML part."""
    html = msg.get_body(("html",)).get_content()
    out = []
    for url, label in re.findall(r'<a href="(mailto:[^"]+)">([^<]+)</a>', html):
        parts = urlsplit(url.replace("&amp;", "&"))
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        out.append((label, (unquote(parts.path), query.get("subject", ""), query.get("body", ""))))
    return out


def links(msg):
    """{label: (to, subject, body)} of a notice about one thing."""
    found = all_links(msg)
    assert len({label for label, _ in found}) == len(found)
    return dict(found)


def nth(msg, label, n=0):
    """The ``n``th link labelled ``label`` of a notice about several things."""
    return [link for l, link in all_links(msg) if l == label][n]


def tap(rs, link, sender, edit=None):
    """Open a mailto: link in a mail program and send the message (``edit``: the body changed)."""
    to, subject, body = link
    return send(rs, edit if edit is not None else body, sender, subject=subject, to=to)


def members(rs):
    return set(rs.members(LIST))


def held_count(rs):
    return rs.status()["held"]


def hold(rs, sender="stranger@example.com", subject="Let me in"):
    rs.queue(post(subject=subject, sender=sender), sender=sender, check=0)


# -- an owner's changes, confirmed by the owner ---------------------------------------------

@pytest.mark.parametrize("verb", ["invite", "subscribe"])
def test_an_owner_invites_each_address_asks_to_confirm_never_the_owner(lst, verb):
    seen = []
    send(lst, f"{verb} dave@example.org <erin@example.org>, not-an-address", OWNER)
    got = new_mail(lst, OWNER, seen)
    confirmation = next(m for m in got if m["Subject"].startswith("confirm "))
    assert "invite dave@example.org, erin@example.org" in text(confirmation)
    answer = next(m for m in got if m is not confirmation)          # the problem is answered at once
    assert "not-an-address: not a valid address" in text(answer)
    assert inbox(lst, "dave@example.org") == [] and OWNER not in members(lst)
    reply(lst, confirmation, OWNER)
    (done,) = new_mail(lst, OWNER, seen)
    assert "dave@example.org is invited" in text(done) and "erin@example.org is invited" in text(done)
    (invitation,) = inbox(lst, "dave@example.org")
    assert "invited to join" in invitation.get_content() and "dave@example.org" not in members(lst)
    reply(lst, invitation, "dave@example.org")
    assert "dave@example.org" in members(lst) and OWNER not in members(lst)


def test_an_owner_removes_bans_and_unbans(lst):
    seen = []
    send(lst, "remove bob@example.net nobody@example.org\nban *@spam.example\nunban *@never.example", OWNER)
    (confirmation,) = new_mail(lst, OWNER, seen)
    assert "bob@example.net" in members(lst) and lst.run("ban", LIST, check=0).out == ""
    reply(lst, confirmation, OWNER)
    (done,) = new_mail(lst, OWNER, seen)
    assert "bob@example.net" not in members(lst) and lst.run("ban", LIST, check=0).out.split() == ["*@spam.example"]
    for line in ("bob@example.net is removed, and told", "nobody@example.org is not a member",
                 "*@spam.example is banned", "*@never.example was not banned"):
        assert line in text(done)
    assert "removed from the test@lists.example.org mailing list" in inbox(lst, "bob@example.net")[-1].get_content()
    send(lst, "unban *@spam.example\nunsubscribe carol@example.net", OWNER)
    (confirmation,) = new_mail(lst, OWNER, seen)
    tap(lst, links(confirmation)["confirm"], OWNER)               # the confirmation's one-tap link
    assert lst.run("ban", LIST, check=0).out == "" and members(lst) == set()


def test_an_owner_sets_and_shows_list_settings(lst):
    seen = []
    send(lst, "set subject_tag [team %d]\nset passphrase s3cret\nset access bogus", OWNER)
    got = new_mail(lst, OWNER, seen)
    confirmation = next(m for m in got if m["Subject"].startswith("confirm "))
    assert "set subject_tag to: [team %d]\n    (now: (empty))" in text(confirmation)
    assert "s3cret" not in text(confirmation)
    assert "access must be one of" in text(next(m for m in got if m is not confirmation))
    assert "s3cret" not in str([dict(r) for r in lst.db().execute("SELECT * FROM pending")])
    assert lst.run("lists", "--json", check=0).out.count("[team %d]") == 0
    reply(lst, confirmation, OWNER)
    new_mail(lst, OWNER, seen)
    send(lst, "show", OWNER)
    (shown,) = new_mail(lst, OWNER, seen)
    assert "subject_tag = [team %d]" in text(shown) and "passphrase = (set)" in text(shown)
    assert "access = subscribers" in text(shown) and "pbkdf2" not in text(shown)
    send(lst, "set owners", OWNER)                      # nobody left to run the list: refused at once
    assert "name at least one owner" in text(new_mail(lst, OWNER, seen)[0])


def test_an_owner_s_reports_go_to_the_owner_s_own_address_only(lst):
    lst.run("set-member", LIST, "carol@example.net", "digest", "on", check=0)
    seen = []
    hold(lst, subject="held one")
    send(lst, "who\nbounces\npending\nheld\nshow", OWNER, envelope=MALLORY, extra=f"Reply-To: {MALLORY}\n")
    (answer,) = [m for m in new_mail(lst, OWNER, seen) if "answers" in m["Subject"]]
    body = text(answer)
    assert "has 2 members" in body and "bob@example.net  enabled" in body
    assert "carol@example.net  enabled  digest" in body and "Subject: held one" in body
    assert "whose mail bounces" in body and "Join requests waiting" in body and "access = subscribers" in body
    lst.run("send", check=0)
    assert MALLORY not in [argv[-1] for argv, _ in lst.sent()]


def test_one_confirmation_for_every_change_of_a_message_and_one_reply_for_the_rest(lst):
    seen = []
    send(lst, "who\nremove bob@example.net\nhelp\nban *@spam.example", OWNER)
    got = new_mail(lst, OWNER, seen)
    assert len(got) == 2
    confirmation = next(m for m in got if m["Subject"].startswith("confirm "))
    (answers,) = [m for m in got if m is not confirmation]
    assert answers["Subject"] == f"{LIST}: answers to your 4 commands"
    assert "bob@example.net" in text(answers) and "remove ADDRESS" in text(answers)
    assert text(answers).count(": waits for your confirmation.") == 2
    assert "remove bob@example.net" in text(confirmation) and "ban *@spam.example" in text(confirmation)


# -- forgeries: nothing done, nothing revealed --------------------------------------------

OWNER_COMMANDS = ["who", "pending", "bounces", "show", "admin", "remove bob@example.net", "invite x@example.org",
                  "ban bob@example.net", "unban *@x.example", "set access open", "subscribe x@example.org",
                  "delete 1"]


@pytest.mark.parametrize("command", OWNER_COMMANDS)
def test_a_moderator_or_an_outsider_trying_an_owner_s_command_gets_nothing(lst, command):
    before = (members(lst), lst.run("lists", "--json", check=0).out, lst.run("ban", LIST, check=0).out)
    for sender in (MOD, MALLORY, "bob@example.net"):
        send(lst, command, sender)
    lst.run("send", check=0)
    after = (members(lst), lst.run("lists", "--json", check=0).out, lst.run("ban", LIST, check=0).out)
    assert after == before and lst.run("pending", check=0).out == ""
    answers = {argv[-1]: parse(d) for argv, d in lst.sent()}
    assert set(answers) == {MOD, MALLORY, "bob@example.net"}        # no owner, no member, nobody else
    # the same answer whoever asks: it reveals nothing about owners or members
    assert len({text(m).replace(a, "ADDR") for a, m in answers.items()}) == 1
    assert "is for the owners" in text(answers[MALLORY])


@pytest.mark.parametrize("command", ["remove bob@example.net", "set access open", "ban bob@example.net",
                                     "invite x@example.org", "delete 1"])
def test_a_forged_from_only_sends_the_owner_a_confirmation(lst, command):
    before = (members(lst), lst.run("lists", "--json", check=0).out)
    send(lst, command, OWNER, envelope=MALLORY, extra=f"Reply-To: {MALLORY}\n")
    lst.run("send", check=0)
    assert [argv[-1] for argv, _ in lst.sent()] == [OWNER]
    assert (members(lst), lst.run("lists", "--json", check=0).out) == before
    assert "If you did not ask for this" in text(parse(lst.sent()[0][1]))


def test_an_owner_s_token_works_for_that_owner_at_that_list_once(lst):
    lst.newlist("other@lists.example.org", "--owner", OWNER, members=("bob@example.net",))
    seen = []
    send(lst, "remove bob@example.net", OWNER)
    (confirmation,) = new_mail(lst, OWNER, seen)
    token = token_of(confirmation)
    # another owner, an outsider, the right owner at another list: nothing
    for sender, to in ((BOSS, f"test-confirm+{token}@lists.example.org"), (MALLORY, REQUEST),
                       (OWNER, "other-request@lists.example.org"), (MOD, REQUEST)):
        send(lst, f"confirm {token}", sender, to=to)
    send(lst, f"approve {token}", BOSS)
    assert "bob@example.net" in members(lst) and "bob@example.net" in lst.members("other@lists.example.org")
    lst.run("send", check=0)
    for argv, d in lst.sent():
        if argv[-1] in (BOSS, MALLORY, MOD):
            assert "unknown or was already used" in text(parse(d)), argv
    # the owner: done; replayed after bob is back: nothing
    send(lst, f"confirm {token}", OWNER)
    assert "bob@example.net" not in members(lst)
    lst.run("subscribe", LIST, "bob@example.net", check=0)
    reply(lst, confirmation, OWNER)
    assert "bob@example.net" in members(lst)


def test_an_owner_removed_before_confirming_can_no_longer_confirm(lst):
    seen = []
    send(lst, "remove bob@example.net", BOSS)
    (confirmation,) = new_mail(lst, BOSS, seen)
    lst.run("set", LIST, "owners", OWNER, check=0)
    reply(lst, confirmation, BOSS)
    assert "bob@example.net" in members(lst)


# -- moderation in one tap ---------------------------------------------------------------

def test_each_link_of_a_held_notice_does_what_it_says(lst):
    for n in range(3):
        hold(lst, subject=f"held {n}")
    notices = inbox(lst, MOD)               # a moderator gets the notices too
    assert len(notices) == 3 and len(inbox(lst, OWNER)) == 3
    first, second, third = (links(m) for m in notices)
    assert set(first) == {"approve", "reject (edit the reason first)", "drop it silently",
                          "approve and always accept stranger@example.com"}
    assert first["approve"][0] == REQUEST
    tap(lst, first["approve"], MOD)
    tap(lst, second["reject (edit the reason first)"], OWNER,
        edit=second["reject (edit the reason first)"][2].replace("This post does not fit the list.", "Off topic."))
    tap(lst, third["drop it silently"], BOSS)
    assert held_count(lst) == 0
    assert [m["Subject"] for m in inbox(lst, "bob@example.net")] == ["held 0"]
    (told,) = inbox(lst, "stranger@example.com")
    assert "Off topic." in told.get_content() and "held 1" in told.get_content()
    # each moderator heard what was done
    assert "approved; it goes to the members now" in text(inbox(lst, MOD)[-1])
    assert "rejected, the sender is told why" in text(inbox(lst, OWNER)[-1])
    # a link tapped again, or by an outsider: nothing
    tap(lst, first["approve"], MOD)
    assert [m["Subject"] for m in inbox(lst, "bob@example.net")] == ["held 0"]


def test_approve_and_always_accept_lets_the_sender_s_next_posts_through(lst):
    hold(lst, subject="first")
    (notice,) = inbox(lst, OWNER)
    tap(lst, links(notice)["approve and always accept stranger@example.com"], OWNER)
    assert "may post from now on" in text(inbox(lst, OWNER)[-1])
    hold(lst, subject="second")                         # not held any more
    assert [m["Subject"] for m in inbox(lst, "bob@example.net")] == ["first", "second"] and held_count(lst) == 0
    # a member whose posts are held (option moderate): the option is turned off
    lst.run("set-member", LIST, "carol@example.net", "moderate", "on", check=0)
    hold(lst, sender="carol@example.net", subject="carol one")
    notice = inbox(lst, OWNER)[-1]
    tap(lst, links(notice)["approve and always accept carol@example.net"], OWNER)
    assert lst.members(LIST)["carol@example.net"]["moderate"] is False


def test_a_moderator_cannot_always_accept_where_it_does_not_apply(lst):
    hold(lst, sender="*@gmail.example", subject="a glob")        # a valid address, but a pattern in the acl
    (notice,) = inbox(lst, OWNER)
    assert set(links(notice)) == {"approve", "reject (edit the reason first)", "drop it silently"}
    tap(lst, links(notice)["approve"][:1] + (links(notice)["approve"][1] + " always", ""), OWNER)
    assert "does not apply" in text(inbox(lst, OWNER)[-1]) and lst.run("acl", LIST, check=0).out == ""
    lst.run("set", LIST, "access", "moderated", check=0)
    hold(lst, sender="bob@example.net", subject="from a member")
    notice = inbox(lst, OWNER)[-1]
    assert "approve and always accept bob@example.net" not in links(notice)


def test_an_unclear_answer_gets_the_whole_notice_again_and_it_works(lst):
    hold(lst, subject="Unclear")
    (notice,) = inbox(lst, MOD)
    reply(lst, notice, MOD, body="Looks fine to me, thanks")
    again = inbox(lst, MOD)[-1]
    body = text(again)
    assert "From:    stranger@example.com" in body and "Subject: Unclear" in body
    assert re.search(r"Size: +\d+ bytes", body) and re.search(r"dropped on \d{4}-\d\d-\d\d", body)
    assert token_of(again) == token_of(notice) and token_of(notice) in body
    attached = [p for p in again.iter_attachments() if p.get_content_type() == "message/rfc822"]
    assert "The post is attached." in body and attached[0].get_content()["Subject"] == "Unclear"
    assert set(links(again)) == set(links(notice))
    reply(lst, again, MOD, body="approve")
    assert [m["Subject"] for m in inbox(lst, "bob@example.net")] == ["Unclear"]


def test_moderation_by_someone_off_the_team_does_nothing(lst):
    hold(lst, subject="Sneaky")
    (notice,) = inbox(lst, OWNER)
    approve = links(notice)["approve"]
    tap(lst, approve, MALLORY)                                          # a leaked link
    send(lst, approve[1], MALLORY, envelope=OWNER)                      # with the owner as envelope sender
    send(lst, approve[1], "bob@example.net", extra=f"Reply-To: {OWNER}\n")
    assert held_count(lst) == 1 and inbox(lst, "bob@example.net")[-1]["Subject"] != "Sneaky"
    lst.newlist("other@lists.example.org", "--owner", OWNER)            # the token at another list
    send(lst, approve[1], OWNER, to="other-request@lists.example.org")
    # a forged From of the owner with a made-up token, a token of another list, or none at all
    lst.run("set", "other@lists.example.org", "access", "moderated", check=0)
    lst.queue(post(subject="other's", sender=OWNER, to="other@lists.example.org"), recipient="other@lists.example.org",
              sender=OWNER, check=0)
    (elsewhere,) = [m for m in inbox(lst, OWNER) if "other's" in m["Subject"]]
    before = inbox(lst, MALLORY)
    assert {m["Subject"] for m in before} == {f"{LIST}: not a moderator"}
    for command in ("approve " + "0" * 32, f"approve {token_of(elsewhere)}", "approve", "approve always"):
        send(lst, command, OWNER, envelope=MALLORY)
    assert held_count(lst) == 2 and len(inbox(lst, MALLORY)) == len(before)


def test_join_requests_have_links_and_pending_lists_them(lst):
    lst.run("set", LIST, "subscribe_policy", "approve", check=0)
    for who in ("dave@example.org", "erin@example.org"):
        send(lst, "subscribe", who, to="test-join@lists.example.org")
    requests = inbox(lst, MOD)
    assert len(requests) == 2 and "asks to join" in text(requests[0])
    tap(lst, links(requests[0])["approve"], MOD)
    assert "dave@example.org" in members(lst)
    send(lst, "pending", OWNER)
    report = inbox(lst, OWNER)[-1]
    assert "erin@example.org asks to join" in text(report) and "dave@example.org asks" not in text(report)
    tap(lst, links(report)["reject (edit the reason first)"], OWNER)
    assert "erin@example.org" not in members(lst)
    assert "This post does not fit the list." in inbox(lst, "erin@example.org")[-1].get_content()


def test_held_by_email_lists_every_held_post_with_its_links(lst):
    hold(lst, subject="one")
    hold(lst, sender="x@example.com", subject="two")
    for sender in (OWNER, MOD):                             # a moderator may ask for it too
        send(lst, "held", sender)
        report = inbox(lst, sender)[-1]
        assert "Posts held on test@lists.example.org: 2" in text(report)
        assert "Subject: one" in text(report) and "Subject: two" in text(report)
    tap(lst, nth(report, "approve", 1), MOD)
    assert [m["Subject"] for m in inbox(lst, "bob@example.net")] == ["two"]


def test_a_held_post_without_a_token_gets_one_when_listed(lst):
    lst.run("set", LIST, "owners", "", check=0)
    lst.run("set", LIST, "moderators", "", check=0)
    hold(lst, subject="orphan")                             # nobody to tell: no token
    lst.run("set", LIST, "owners", OWNER, check=0)
    send(lst, "held", OWNER)
    tap(lst, links(inbox(lst, OWNER)[-1])["approve"], OWNER)
    assert [m["Subject"] for m in inbox(lst, "bob@example.net")] == ["orphan"]


def test_a_post_s_markup_and_links_stay_text_in_the_notice(lst):
    hold(lst, subject='<a href="mailto:evil@evil.example?subject=approve">click</a>')
    (notice,) = inbox(lst, OWNER)
    html = notice.get_body(("html",)).get_content()
    assert "evil@evil.example" in html and '<a href="mailto:evil' not in html
    assert set(links(notice)) == {"approve", "reject (edit the reason first)", "drop it silently",
                                  "approve and always accept stranger@example.com"}


# -- help, admin -------------------------------------------------------------------------

def test_help_names_what_each_may_do(lst):
    for sender in (OWNER, MOD, "bob@example.net"):
        send(lst, "help", sender)
    owner, mod, bob = (text(inbox(lst, a)[-1]) for a in (OWNER, MOD, "bob@example.net"))
    assert "remove ADDRESS" in owner and "approve TOKEN" in owner and "set nomail on" in owner
    assert "remove ADDRESS" not in mod and "approve TOKEN" in mod
    assert "remove ADDRESS" not in bob and "approve TOKEN" not in bob


def test_admin_mails_the_web_admins_sign_in_link_to_the_owner_only(lst):
    send(lst, "admin", OWNER)
    assert "web admin of test@lists.example.org is not set up on this host" in text(inbox(lst, OWNER)[-1])
    lst.write_config(web={"base_url": "https://lists.example.org/redsky"})
    send(lst, "admin", OWNER)
    assert re.search(r"https://lists.example.org/redsky/test@lists.example.org/admin/signin\?who=\S+&token=\S+",
                     text(inbox(lst, OWNER)[-1]))
    for sender in (MOD, "bob@example.net"):             # no link for anyone else
        send(lst, "admin", sender)
        assert "/signin?" not in text(inbox(lst, sender)[-1])


# -- the daily summary ----------------------------------------------------------------------

def test_the_daily_summary_names_what_waits_with_its_links(lst):
    lst.run("set", LIST, "subscribe_policy", "approve", check=0)
    lst.newlist("quiet@lists.example.org", "--owner", OWNER)
    hold(lst, subject="old post")
    send(lst, "subscribe", "dave@example.org", to="test-join@lists.example.org")
    hold(lst, subject="fresh post")
    with lst.db() as db:
        db.execute("UPDATE held SET received = received - 2 * 86400 WHERE subject = 'old post'")
        db.execute("UPDATE pending SET created = created - 2 * 86400 WHERE action = 'approve-subscribe'")
    for who in (OWNER, MOD):
        (summary,) = [m for m in inbox(lst, who) if "waiting" in m["Subject"]]
        body = text(summary)
        assert "old post" in body and "dave@example.org asks to join" in body and "fresh post" not in body
        assert summary["Subject"] == f"{LIST}: 1 held post(s), 1 join request(s) waiting"
    lst.run("send", check=0)                    # once a day
    assert len([m for m in inbox(lst, OWNER) if "waiting" in m["Subject"]]) == 1
    assert all("quiet@" not in m["Subject"] for m in inbox(lst, OWNER))
    tap(lst, nth(summary, "approve", 0), MOD)
    assert [m["Subject"] for m in inbox(lst, "bob@example.net")] == ["old post"]


def test_an_archive_made_public_by_email_is_published_then_taken_down(lst):
    lst.queue(post(subject="archived", sender="bob@example.net"), sender="bob@example.net", check=0)
    folder = lst.home / "pages" / LIST
    seen = []
    for value in ("public", "private"):
        send(lst, f"set archive {value}", OWNER)
        (confirmation,) = new_mail(lst, OWNER, seen)
        assert folder.exists() is (value == "private")          # nothing changes before the owner confirms
        reply(lst, confirmation, OWNER)
        assert "set archive" in text(new_mail(lst, OWNER, seen)[0])
        assert (folder / "index.html").exists() is (value == "public")


def test_an_envelope_sender_alone_makes_nobody_an_owner(lst):
    lst.queue(b"To: test-request@lists.example.org\nSubject: who\n\nwho\n", recipient=REQUEST, sender=OWNER, check=0)
    lst.queue(b"From: <>\nSubject: held\n\nheld\n", recipient=REQUEST, sender=MOD, check=0)
    for address in (OWNER, MOD):
        (answer,) = inbox(lst, address)
        assert "is for the owners" in text(answer) and "bob@example.net" not in text(answer)


def test_replies_are_capped_whatever_the_spelling_and_for_the_team_too(rs):
    """A forged From in another case got past the daily cap (30 replies instead of 10); the owners'
    reports had no cap at all, and one message asked for `who` ten times."""
    rs.newlist("team@lists.example.org", "--owner", "owner@example.org",
               members=[f"m{i}@example.org" for i in range(5)])
    rs.write_config(commands={"max_replies": "3"})
    for n in range(8):
        victim = "".join(c.upper() if (n >> i) & 1 else c for i, c in enumerate("victim")) + "@example.org"
        rs.queue(f"From: {victim}\nTo: team-request@lists.example.org\nSubject: help\n"
                 f"Message-ID: <cap{n}@x>\n\nhelp\n".encode(), recipient="team-request@lists.example.org",
                 sender=victim, check=0)
    assert rs.db().execute("SELECT count(*) FROM deliveries WHERE lower(address) = 'victim@example.org'"
                           ).fetchone()[0] == 3 + 1                 # and one notice: the rest are ignored
    asked = "\n".join(["who"] + [f"who {n}" for n in range(1, 10)])
    for n in range(40):
        rs.queue(f"From: owner@example.org\nTo: team-request@lists.example.org\nSubject: x\n"
                 f"Message-ID: <who{n}@x>\n\n{asked}\n".encode(), recipient="team-request@lists.example.org",
                 sender="owner@example.org", check=0)
    rows = rs.db().execute("SELECT count(*) FROM deliveries WHERE address = 'owner@example.org'").fetchone()[0]
    assert rows == 1 + 30 + 1       # "requests refused" (victim's, once a day), ten times the cap, "ignored"


def test_a_confirmation_shows_the_whole_value_and_the_one_it_replaces(lst):
    """A value cut at 200 characters hid an owner added at its end: the confirmation showed
    `set owners owner@example.org, ...` and the reply made mallory an owner."""
    long_value = ", ".join([OWNER] * 12 + ["mallory@evil.example"])
    seen = []
    send(lst, f"set owners {long_value}", OWNER)
    (confirmation,) = new_mail(lst, OWNER, seen)
    body = text(confirmation)
    assert f"set owners to: {OWNER}, mallory@evil.example\n" in body          # each once, all of it
    assert f"(now: {OWNER}" in body
    send(lst, "set footer " + "x" * 2100, OWNER)
    assert "too long to confirm by email" in text(new_mail(lst, OWNER, seen)[0])


def archived(rs):
    import json
    return {a["number"]: a["subject"] for a in json.loads(rs.run("archive", LIST, "--json", check=0).out)}


def test_an_owner_deletes_archived_posts_by_email_once_confirmed(lst):
    """delete N... (issue 33): checked now, done once the owner confirms, each number left as a gap
    whose page says the owners removed the post; an outsider's or a forged delete removes nothing."""
    import html
    lst.run("set", LIST, "archive", "public", check=0)
    for n in range(1, 5):
        lst.queue(post(subject=f"Number {n}", msgid=f"<d{n}@example.org>", sender="bob@example.net"),
                  sender="bob@example.net", check=0)
    seen = []
    send(lst, "delete 3", MALLORY)
    send(lst, "delete 3", OWNER, envelope=MALLORY, extra=f"Reply-To: {MALLORY}\n")     # forged: the owner is asked
    forged = [m for m in new_mail(lst, OWNER, seen) if m["Subject"].startswith("confirm ")]
    assert len(forged) == 1 and archived(lst) == {n: f"Number {n}" for n in range(1, 5)}
    send(lst, "delete 2 9 two 4", OWNER)
    got = new_mail(lst, OWNER, seen)
    confirmation = next(m for m in got if m["Subject"].startswith("confirm "))
    assert "delete post 2, 9, 4 from the archive" in text(confirmation)
    assert "delete two: not a post's number" in text(next(m for m in got if m is not confirmation))
    assert len(archived(lst)) == 4                                  # nothing before the owner confirms
    reply(lst, confirmation, OWNER)
    (done,) = new_mail(lst, OWNER, seen)
    assert "post 2 is removed from the archive" in text(done) and "post 9 is not in the archive" in text(done)
    assert archived(lst) == {1: "Number 1", 3: "Number 3"}
    pages = lst.home / "pages" / LIST
    assert "by the list's owners" in html.unescape((pages / "2.html").read_text())
    assert "Number 2" not in (pages / "index.html").read_text() and not (pages / "4.eml").exists()
    reply(lst, confirmation, OWNER)                                 # the token works once
    assert archived(lst) == {1: "Number 1", 3: "Number 3"}
    send(lst, "delete 2", OWNER)                                    # removed already: said so, number kept
    reply(lst, next(m for m in new_mail(lst, OWNER, seen) if m["Subject"].startswith("confirm ")), OWNER)
    assert "post 2 is not in the archive (or removed already)" in text(new_mail(lst, OWNER, seen)[-1])
    lst.queue(post(subject="Number 5", msgid="<d5@example.org>", sender="bob@example.net"),
              sender="bob@example.net", check=0)
    assert max(archived(lst)) == 5


def test_the_web_admin_deletes_a_post_with_the_email_command_s_code(lst):
    """The hook the web admin calls: plan_owner_action("delete") then Admin.carry_out, as for its
    other changes (apply_owner_actions), committed, then the pages."""
    import redsky
    lst.run("set", LIST, "archive", "public", check=0)
    for n in range(1, 3):
        lst.queue(post(subject=f"Number {n}", msgid=f"<w{n}@example.org>", sender="bob@example.net"),
                  sender="bob@example.net", check=0)
    config = redsky.Config(str(lst.config))
    store = redsky.open_store(config)
    try:
        list_row = store.require_list(LIST)
        action, problems = redsky.plan_owner_action(list_row, "delete", ["1"])
        assert problems == []
        admin = redsky.Admin(config, store, {"REMOTE_ADDR": "192.0.2.1"}, list_row,
                             {"address": OWNER, "kind": "owner"})
        lines = admin.carry_out([action])
    finally:
        store.close()
    assert "post 1 is removed" in "".join(lines) and archived(lst) == {2: "Number 2"}
    assert "by the list's owners" in (lst.home / "pages" / LIST / "1.html").read_text().replace("&#x27;", "'")


def test_forged_owner_commands_spend_only_what_anyone_could_and_the_owner_is_told(rs):
    """F12 for owners: changes forged in an owner's name took every confirmation of the owner's day,
    and the owner's own changes then got "nothing was done" until the next day.  Now the owner is
    told once until when, and the owner's mail that the MTA authenticated has its own allowance."""
    rs.newlist(LIST, *LIST_OPTIONS, members=MEMBERS)
    rs.write_config(commands={"max_replies": "1", "authserv_id": "mx.lists.example.org"})   # 5 a day
    seen = []
    for n in range(7):
        send(rs, f"ban spammer{n}@evil.example", OWNER, envelope=MALLORY)
    got = new_mail(rs, OWNER, seen)
    assert [m["Subject"].startswith("confirm ") for m in got[:5]] == [True] * 5
    assert any("ignored until" in m["Subject"] for m in got[5:])
    assert sum("ignored until" in m["Subject"] for m in got) == 1
    told = [m for m in inbox(rs, BOSS) if "requests refused" in m["Subject"]]
    assert len(told) == 1 and OWNER in text(told[0])
    send(rs, "ban spammer9@evil.example", OWNER, envelope=MALLORY)     # forged: nothing at all now
    assert [m for m in new_mail(rs, OWNER, seen) if m["Subject"].startswith("confirm ")] == []
    send(rs, "ban spammer8@evil.example", OWNER,                         # the owner, authenticated
         extra="Authentication-Results: mx.lists.example.org; dmarc=pass header.from=example.org\n")
    (confirmation,) = [m for m in new_mail(rs, OWNER, seen) if m["Subject"].startswith("confirm ")]
    reply(rs, confirmation, OWNER)
    assert "spammer8@evil.example" in rs.run("ban", LIST, check=0).out
