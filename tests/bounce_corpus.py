"""A corpus of bounce messages, written for the tests after the formats that
real MTAs and mail services send.  Each entry: (name, expected, recipient,
message).  expected is "failed" (a permanent failure of ``recipient``),
"delayed" (a warning) or "auto-reply"; neither of the last two may count.
Every message returns the post <post1@example.org> so evidence can be checked.
"""

ORIGINAL = """From: Alice <alice@example.org>
To: test@lists.example.org
Subject: the post
Message-ID: <post1@example.org>
List-Id: <test.lists.example.org>

body of the post
"""


def dsn(mta, recipient, action, status, diagnostic, text, subject="Undelivered Mail Returned to Sender",
        frm="MAILER-DAEMON@mx.example.net", rfc822="message/rfc822", extra=""):
    return f"""From: {frm}
To: test-bounces@lists.example.org
Subject: {subject}
Auto-Submitted: auto-replied
MIME-Version: 1.0
{extra}Content-Type: multipart/report; report-type=delivery-status; boundary="BOUNDARY"

--BOUNDARY
Content-Type: text/plain; charset=us-ascii

{text}

--BOUNDARY
Content-Type: message/delivery-status

Reporting-MTA: dns; {mta}
X-Postfix-Queue-ID: 3F2A1C0042
Arrival-Date: Wed, 25 Nov 2026 10:00:00 +0000

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Diagnostic-Code: {diagnostic}

--BOUNDARY
Content-Type: {rfc822}

{ORIGINAL}
--BOUNDARY--
"""


def plain(subject, body, frm="MAILER-DAEMON@mx.example.net", extra=""):
    return f"""From: {frm}
To: test-bounces@lists.example.org
Subject: {subject}
{extra}
{body}"""


CORPUS = [
    # -- RFC 3464 DSNs ----------------------------------------------------------------
    ("postfix-user-unknown", "failed", "ann@example.net", dsn(
        "mx.example.net", "ann@example.net", "failed", "5.1.1",
        "smtp; 550 5.1.1 <ann@example.net>: Recipient address rejected: User unknown in virtual mailbox table",
        "This is the mail system at host mx.example.net.\n\nI'm sorry to have to inform you that your message could not\n"
        "be delivered to one or more recipients.")),
    ("postfix-mailbox-full", "failed", "ben@example.net", dsn(
        "mx.example.net", "ben@example.net", "failed", "5.2.2", "smtp; 552 5.2.2 Mailbox full",
        "This is the mail system at host mx.example.net.")),
    ("postfix-host-not-found", "failed", "cid@nosuchdomain.example", dsn(
        "mx.example.net", "cid@nosuchdomain.example", "failed", "5.4.4",
        "X-Postfix; Host or domain name not found. Name service error for name=nosuchdomain.example type=MX",
        "This is the mail system at host mx.example.net.")),
    ("postfix-delay-warning", "delayed", "dan@example.net", dsn(
        "mx.example.net", "dan@example.net", "delayed", "4.4.1",
        "X-Postfix; connect to mx.example.net[192.0.2.1]:25: Connection timed out",
        "This is the mail system at host mx.example.net.\n\n####################################################################\n"
        "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n"
        "####################################################################", subject="Delayed Mail (still being retried)")),
    ("exim-dsn", "failed", "eve@example.com", dsn(
        "mail.example.com", "eve@example.com", "failed", "5.0.0",
        "smtp; 550 No such user here", "This message was created automatically by mail delivery software.",
        subject="Mail delivery failed: returning message to sender", frm="Mail Delivery System <Mailer-Daemon@mail.example.com>",
        extra="X-Failed-Recipients: eve@example.com\n")),
    ("sendmail-dsn", "failed", "fay@example.edu", dsn(
        "mail.example.edu", "fay@example.edu", "failed", "5.1.1", "SMTP; 550 5.1.1 <fay@example.edu>... User unknown",
        "The original message was received at Wed, 25 Nov 2026 10:00:00 GMT\n\n   ----- The following addresses had permanent fatal errors -----\n<fay@example.edu>",
        subject="Returned mail: see transcript for details", rfc822="text/rfc822-headers")),
    ("sendmail-dsn-warning", "delayed", "gus@example.edu", dsn(
        "mail.example.edu", "gus@example.edu", "delayed", "4.4.7", "SMTP; 451 4.4.7 try again later",
        "**********************************************\n**      THIS IS A WARNING MESSAGE ONLY      **\n"
        "**  YOU DO NOT NEED TO RESEND YOUR MESSAGE  **\n**********************************************",
        subject="Warning: could not send message for past 4 hours")),
    ("exchange-o365-dsn", "failed", "hal@contoso.example", dsn(
        "DM6PR01MB1234.namprd01.prod.outlook.com", "hal@contoso.example", "failed", "5.1.10",
        "smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient hal@contoso.example not found by SMTP address lookup",
        "Your message to hal@contoso.example couldn't be delivered.\nhal wasn't found at contoso.example.",
        subject="Undeliverable: the post", frm="postmaster@contoso.example")),
    ("exchange-o365-quota", "failed", "ida@contoso.example", dsn(
        "DM6PR01MB1234.namprd01.prod.outlook.com", "ida@contoso.example", "failed", "5.2.2",
        "smtp;554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException",
        "Your message to ida@contoso.example couldn't be delivered.", subject="Undeliverable: the post",
        frm="postmaster@contoso.example")),
    ("exchange-delay", "delayed", "jay@contoso.example", dsn(
        "DM6PR01MB1234.namprd01.prod.outlook.com", "jay@contoso.example", "delayed", "4.4.7",
        "smtp;400 4.4.7 Message delayed", "Delivery is delayed to these recipients or groups: jay@contoso.example",
        subject="Delivery delayed:the post", frm="postmaster@contoso.example")),
    ("gmail-dsn", "failed", "kim@gmail.example", dsn(
        "mx.google.example", "kim@gmail.example", "failed", "5.1.1",
        "smtp; 550-5.1.1 The email account that you tried to reach does not exist.",
        "** Address not found **\n\nYour message wasn't delivered to kim@gmail.example because the address couldn't be found.",
        subject="Delivery Status Notification (Failure)", frm="Mail Delivery Subsystem <mailer-daemon@googlemail.example>")),
    ("gmail-delay", "delayed", "lee@gmail.example", dsn(
        "mx.google.example", "lee@gmail.example", "delayed", "4.2.1",
        "smtp; 450-4.2.1 The user you are trying to contact is receiving mail too quickly.",
        "** Delivery incomplete **\n\nThere was a temporary problem delivering your message to lee@gmail.example. Gmail will retry for 47 more hours.",
        subject="Delivery Status Notification (Delay)", frm="Mail Delivery Subsystem <mailer-daemon@googlemail.example>")),
    ("yahoo-dsn", "failed", "max@yahoo.example", dsn(
        "mta1.mail.yahoo.example", "max@yahoo.example", "failed", "5.0.0", "smtp; 554 delivery error: dd This user doesn't have a yahoo.example account",
        "Sorry, we were unable to deliver your message to the following address.\n\n<max@yahoo.example>:",
        subject="Failure Notice", frm="MAILER-DAEMON@yahoo.example")),
    ("dsn-policy-dmarc", "failed", "ned@strict.example", dsn(
        "mx.strict.example", "ned@strict.example", "failed", "5.7.1",
        "smtp; 550 5.7.1 Unauthenticated email from example.org is not accepted due to domain's DMARC policy",
        "This is the mail system at host mx.example.net.")),
    ("dsn-crlf-and-unfolded", "failed", "oli@example.net", dsn(
        "mx.example.net", "oli@example.net", "failed", "5.1.1", "smtp; 550 unknown",
        "This is the mail system.").replace("\n", "\r\n")),
    ("dsn-no-original", "failed", "pam@example.net", dsn(
        "mx.example.net", "pam@example.net", "failed", "5.1.1", "smtp; 550 unknown", "This is the mail system.",
        rfc822="text/plain")),
    # -- X-Failed-Recipients and Exim plain text ---------------------------------------------
    ("exim-plain", "failed", "quin@example.com", plain(
        "Mail delivery failed: returning message to sender",
        "This message was created automatically by mail delivery software.\n\nA message that you sent could not be "
        "delivered to one or more of its\nrecipients. This is a permanent error. The following address(es) failed:\n\n"
        "  quin@example.com\n    SMTP error from remote mail server after RCPT TO:<quin@example.com>:\n"
        "    host mx.example.com [192.0.2.7]: 550 5.1.1 User unknown\n\n------ This is a copy of the message, including all the headers. ------\n\n"
        + ORIGINAL, frm="Mail Delivery System <Mailer-Daemon@mail.example.com>", extra="X-Failed-Recipients: quin@example.com\nAuto-Submitted: auto-replied\n")),
    ("exim-plain-no-header", "failed", "rae@example.com", plain(
        "Mail delivery failed: returning message to sender",
        "This message was created automatically by mail delivery software.\n\nA message that you sent could not be "
        "delivered to one or more of its\nrecipients. This is a permanent error. The following address(es) failed:\n\n"
        "  rae@example.com\n    Unrouteable address\n\n------ This is a copy of the message, including all the headers. ------\n\n"
        + ORIGINAL, frm="Mail Delivery System <Mailer-Daemon@mail.example.com>")),
    ("exim-delay", "delayed", "sam@example.com", plain(
        "Warning: message 1qAbCd-000123-Xy delayed 24 hours",
        "This message was created automatically by mail delivery software.\n\nA message that you sent has not yet been "
        "delivered to one or more of its\nrecipients after more than 24 hours on the queue on mail.example.com.\n\n"
        "The message identifier is:     1qAbCd-000123-Xy\n\nThe address to which the message has not yet been delivered is:\n\n"
        "  sam@example.com\n    Delay reason: SMTP error from remote mail server after RCPT TO:<sam@example.com>:\n"
        "    451 4.7.1 Greylisted, please try again later\n\nNo action is required on your part. Delivery attempts will continue "
        "for some time, and this warning may be repeated at intervals if the message remains undelivered.\n"
        "------ This is a copy of the message's headers. ------\n\n" + ORIGINAL,
        frm="Mail Delivery System <Mailer-Daemon@mail.example.com>", extra="X-Failed-Recipients: sam@example.com\n")),
    ("x-failed-recipients-only", "failed", "tom@example.org", plain(
        "Delivery failure", "Your message could not be delivered.\n\n" + ORIGINAL,
        extra="X-Failed-Recipients: tom@example.org\n")),
    # -- qmail -------------------------------------------------------------------------------
    ("qmail-user-unknown", "failed", "uma@example.net", plain(
        "failure notice",
        "Hi. This is the qmail-send program at mail.example.net.\nI'm afraid I wasn't able to deliver your message to the "
        "following addresses.\nThis is a permanent error; I've given up. Sorry it didn't work out.\n\n<uma@example.net>:\n"
        "Sorry, no mailbox here by that name. (#5.1.1)\n\n--- Below this line is a copy of the message.\n\n" + ORIGINAL,
        frm="MAILER-DAEMON@mail.example.net")),
    ("qmail-remote-550", "failed", "vic@remote.example", plain(
        "failure notice",
        "Hi. This is the qmail-send program at mail.example.net.\nI'm afraid I wasn't able to deliver your message to the "
        "following addresses.\nThis is a permanent error; I've given up. Sorry it didn't work out.\n\n<vic@remote.example>:\n"
        "192.0.2.9 does not like recipient.\nRemote host said: 550 5.1.1 <vic@remote.example>: Recipient address rejected\n"
        "Giving up on 192.0.2.9.\n\n--- Below this line is a copy of the message.\n\n" + ORIGINAL,
        frm="MAILER-DAEMON@mail.example.net")),
    ("qmail-no-host", "failed", "wyn@gone.example", plain(
        "failure notice",
        "Hi. This is the qmail-send program at mail.example.net.\nI'm afraid I wasn't able to deliver your message to the "
        "following addresses.\nThis is a permanent error; I've given up. Sorry it didn't work out.\n\n<wyn@gone.example>:\n"
        "Sorry, I couldn't find any host named gone.example. (#5.1.2)\n\n--- Below this line is a copy of the message.\n\n" + ORIGINAL,
        frm="MAILER-DAEMON@mail.example.net")),
    # -- old Sendmail (no DSN) ---------------------------------------------------------------
    ("sendmail-old-plain", "failed", "xia@old.example", plain(
        "Returned mail: User unknown",
        "The original message was received at Wed, 25 Nov 2026 10:00:00 GMT\nfrom lists.example.org [192.0.2.2]\n\n"
        "   ----- The following addresses had permanent fatal errors -----\n<xia@old.example>\n\n"
        "   ----- Transcript of session follows -----\n... while talking to mail.old.example.:\n>>> RCPT To:<xia@old.example>\n"
        "<<< 550 <xia@old.example>... User unknown\n550 <xia@old.example>... User unknown\n\n"
        "   ----- Original message follows -----\n\n" + ORIGINAL, frm="Mail Delivery Subsystem <MAILER-DAEMON@old.example>")),
    ("sendmail-old-warning", "delayed", "yan@old.example", plain(
        "Warning: could not send message for past 4 hours",
        "    **********************************************\n    **      THIS IS A WARNING MESSAGE ONLY      **\n"
        "    **  YOU DO NOT NEED TO RESEND YOUR MESSAGE  **\n    **********************************************\n\n"
        "The original message was received at Wed, 25 Nov 2026 10:00:00 GMT\n\n   ----- Transcript of session follows -----\n"
        "<yan@old.example>... Deferred: Connection timed out with mail.old.example.\nWarning: message still undelivered after 4 hours\n"
        "Will keep trying until message is 5 days old\n\n   ----- Original message follows -----\n\n" + ORIGINAL,
        frm="Mail Delivery Subsystem <MAILER-DAEMON@old.example>")),
    # -- Lotus Domino, GroupWise, Exchange legacy ----------------------------------------------
    ("domino", "failed", "zed@corp.example", plain(
        "DELIVERY FAILURE: User zed (zed@corp.example) not listed in Domino Directory",
        "Your message\n\n  Subject: the post\n\nwas not delivered to:\n\n  zed@corp.example\n\nbecause:\n\n"
        "  User zed (zed@corp.example) not listed in Domino Directory\n\n" + "-" * 10 + " Original message " + "-" * 10 + "\n" + ORIGINAL,
        frm="Postmaster@corp.example")),
    ("domino-multipart", "failed", "abe@corp.example", plain(
        "DELIVERY FAILURE: Error transferring to mail.corp.example; Maximum hop count exceeded",
        "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"0__=DOMINO\"\n\n--0__=DOMINO\nContent-Type: text/plain\n\n"
        "Your message\n\n  Subject: the post\n\nwas not delivered to:\n\n  abe@corp.example\n\nbecause:\n\n"
        "  Error transferring to mail.corp.example; Maximum hop count exceeded.\n\n--0__=DOMINO\nContent-Type: message/rfc822\n\n"
        + ORIGINAL + "\n--0__=DOMINO--\n", frm="Postmaster@corp.example").replace("\n\nMIME-Version", "\nMIME-Version", 1)),
    ("groupwise", "failed", "bea@gw.example", plain(
        "Message status - undeliverable",
        "The message that you sent was undeliverable to the following:\n\tbea@gw.example (user not found)\n\n"
        "Possible causes: the e-mail address may be incorrect.\n\n Original Message Header\n" + ORIGINAL,
        frm="Mail Delivery System <postmaster@gw.example>")),
    ("exchange-legacy-undeliverable", "failed", "cal@legacy.example", plain(
        "Undeliverable: the post",
        "Your message did not reach some or all of the intended recipients.\n\n      Subject:\tthe post\n"
        "      Sent:\t11/25/2026 10:00 AM\n\nThe following recipient(s) could not be reached:\n\n"
        "      cal@legacy.example on 11/25/2026 10:01 AM\n            The e-mail account does not exist at the organization "
        "this message was sent to.\n            <mail.legacy.example #5.1.1 smtp;550 5.1.1 RESOLVER.ADR.RecipNotFound; not found>\n\n"
        + ORIGINAL, frm="System Administrator <postmaster@legacy.example>")),
    ("exchange-legacy-html", "failed", "dee@legacy.example", plain(
        "Undeliverable: the post",
        "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"X\"\n\n--X\nContent-Type: text/html; charset=utf-8\n\n"
        "<html><body><p>Delivery has failed to these recipients or groups:</p><p><a href=\"mailto:dee@legacy.example\">"
        "dee@legacy.example</a><br>The email address you entered couldn't be found.</p><p>Diagnostic: Remote Server "
        "returned '550 5.1.1 RESOLVER.ADR.RecipNotFound; not found'</p></body></html>\n--X\nContent-Type: message/rfc822\n\n"
        + ORIGINAL + "\n--X--\n", frm="postmaster@legacy.example").replace("\n\nMIME-Version", "\nMIME-Version", 1)),
    ("generic-undeliverable-text", "failed", "eli@smallhost.example", plain(
        "Undelivered Mail",
        "Message could not be delivered to the following recipient:\n\neli@smallhost.example: mailbox unavailable (550)\n\n"
        "-----Original Message-----\n" + ORIGINAL, frm="mailer@smallhost.example")),
    ("german-mailer", "failed", "fritz@beispiel.example", plain(
        "Unzustellbar: the post",
        "Ihre Nachricht konnte nicht zugestellt werden.\n\nfritz@beispiel.example: 550 5.1.1 user unknown / Benutzer unbekannt\n\n"
        "--- Original message ---\n" + ORIGINAL, frm="MAILER-DAEMON@beispiel.example")),
    ("quota-text", "failed", "gil@host.example", plain(
        "Mail System Error - Returned Mail",
        "This message was not delivered.\n\ngil@host.example: quota exceeded, mailbox is full (#5.2.2)\n\n" + ORIGINAL,
        frm="MAILER-DAEMON@host.example")),
    ("account-disabled", "failed", "hue@host.example", plain(
        "Delivery Status Notification (Failure)",
        "Delivery to the following recipient failed permanently:\n\n     hue@host.example\n\nTechnical details of permanent failure:\n"
        "The account is disabled. 550 5.2.1\n\n----- Original message -----\n\n" + ORIGINAL, frm="mailer-daemon@host.example")),
    # -- warnings without a DSN ------------------------------------------------------------------
    ("plain-delay-notice", "delayed", None, plain(
        "Delivery delayed: the post",
        "This is an automatically generated Delivery Status Notification.\n\nTHIS IS A WARNING MESSAGE ONLY.\n"
        "Delivery to the following recipients has been delayed.\n\n       ivy@slow.example\n\nThe server will retry for 2 more days.\n"
        + ORIGINAL, frm="postmaster@slow.example")),
    ("greylist-retry", "delayed", None, plain(
        "Mail delivery delayed",
        "Your message to jim@grey.example has not yet been delivered. 451 4.7.1 greylisted; it will be retried.\n" + ORIGINAL,
        frm="MAILER-DAEMON@grey.example")),
    # -- auto-replies: never failures ---------------------------------------------------------------
    ("vacation-rfc3834", "auto-reply", None, plain(
        "Auto: the post", "I am on vacation until Monday and will read your mail then.\n",
        frm="kai@example.net", extra="Auto-Submitted: auto-replied\n")),
    ("out-of-office-exchange", "auto-reply", None, plain(
        "Automatic reply: the post", "I'm out of the office with limited access to e-mail.\n",
        frm="Lou <lou@contoso.example>", extra="X-Auto-Response-Suppress: All\nX-MS-Exchange-Inbox-Rules-Loop: lou@contoso.example\n")),
    ("out-of-office-subject", "auto-reply", None, plain(
        "Out of Office: the post", "I will be back on 1 December. For urgent matters call the office.\n",
        frm="mia@example.org")),
    ("abwesenheitsnotiz", "auto-reply", None, plain(
        "Abwesenheitsnotiz: the post", "Ich bin bis zum 30.11. nicht im Büro.\n", frm="nils@beispiel.example")),
    ("x-autoreply-header", "auto-reply", None, plain(
        "Re: the post", "Thanks for your mail, I will answer soon.\n", frm="otto@example.org", extra="X-Autoreply: yes\n")),
    ("precedence-auto-reply", "auto-reply", None, plain(
        "Re: the post", "This mailbox is not monitored.\n", frm="noreply@example.org", extra="Precedence: auto_reply\n")),
    ("autoresponse-french", "auto-reply", None, plain(
        "Réponse automatique: the post", "Je suis absent jusqu'au lundi.\n", frm="paul@exemple.example",
        extra="Auto-Submitted: auto-replied\n")),
    ("vacation-mentioning-undeliverable", "auto-reply", None, plain(
        "Out of office", "I am away. Mail sent to my old address may be undeliverable; use the new one.\n",
        frm="quinn@example.org", extra="Auto-Submitted: auto-replied\n")),
]
