#!/usr/bin/env python3
"""redsky — a small mailing list manager built from a chain of filters.

The MTA pipes every message sent to a list address into ``redsky.py queue``.
redsky runs an ordered chain of small filters over it (read, getinfo,
loopdetect, bouncehandler, commands, ownermail, getsubscribers, access,
dmarc, subjecttag, addfooter, queuer, archive) and stores the post durably:
one spool file plus one delivery row per subscriber in SQLite.  Cron runs
``redsky.py send``, whose chain (singleinstance, housekeeping, digester,
queuebuilder, queuerunner) hands each post and digest to sendmail, to an
SMTP server or to a maildir, and records every recipient's outcome.  The
same runner is a stdin -> stdout content filter (``redsky.py filter``:
read, whitelist, dnsbl, autoreply, out), and ``[redsky] plugins`` adds
your own filters.

Commands::

    redsky.py demo                       try everything in a temp dir
    redsky.py init                       create the database and spool
    redsky.py newlist LIST@DOMAIN [--access open|subscribers|acl|passphrase|moderated]
                      [--passphrase P] [--subject-tag T] [--footer F] [--owner ADDR]
                      [--subscribe-policy open|confirm|approve|confirm+approve|closed]
    redsky.py lists [--json]             redsky.py set LIST KEY VALUE
    redsky.py dellist LIST [--dry-run]
    redsky.py subscribe [--welcome] LIST ADDR...|-   redsky.py unsubscribe LIST ADDR...|-
    redsky.py members LIST [--option OPT] [--json]   redsky.py acl LIST [add|del PATTERN...]
    redsky.py ban LIST [add|del PATTERN...]      redsky.py invite LIST ADDR...|-
    redsky.py set-member LIST ADDR digest|nomail|notmetoo|ack|moderate on|off [--until DATE]
    redsky.py archive LIST [--since DATE] [--search TEXT] | archive export LIST [--output FILE]
    redsky.py archive html LIST          (the web pages of a public archive, made again)
    redsky.py archive delete LIST N...   (posts removed; their numbers stay, as gaps)
    redsky.py held [LIST]                redsky.py approve ID
    redsky.py reject ID [--reason R]     redsky.py discard ID
    redsky.py pending [LIST]             redsky.py bounces LIST [--json]
    redsky.py enable LIST ADDR           redsky.py status [--json]
    redsky.py trace MESSAGE-ID           redsky.py doctor
    redsky.py config [--defaults|--changed]
    redsky.py backup FILE [--wait SECONDS]   redsky.py restore FILE
    redsky.py postfix-config [--write|--apply]   redsky.py schema
    redsky.py export LIST [--output FILE]
    redsky.py import mlmmj LISTDIR | mailman2 --config F --members F | mailman3 | redsky FILE [--dry-run]
                     [--into-existing] [--rewrite-addresses]
    redsky.py whois ADDR [--json]        redsky.py forget ADDR [--archive]
    redsky.py queue [--recipient ADDR] [--sender ADDR] [--client-address IP] [--explain] [--dry-run] < message
    redsky.py send
    redsky.py filter [--recipient ADDR]... [--sender ADDR] [--client-address IP] < message > message
    redsky.py lmtp --listen HOST:PORT|unix:PATH
    redsky.py web [--listen HOST:PORT]      (also a WSGI `application`, and a CGI script)
    redsky.py quarantine [release|delete KEY...]

Example: ``python3 redsky.py newlist team@lists.example.org`` then
``python3 redsky.py queue --recipient team@lists.example.org < post.eml``
and ``python3 redsky.py send`` (or just ``python3 redsky.py demo``).

Every command takes ``-c CONFIG`` (else $REDSKY_CONFIG, /etc/redsky/redsky.ini,
else built-in defaults; never the current directory) and ``--verbose``.
Exit codes follow sysexits(3): 0 done (also for discarded and held posts),
64 usage, 65 bad data, 67 unknown list, 75 try again later, 77 no
permission, 78 configuration error; ``filter`` adds 99, dropped on purpose.

Only the Python standard library is used: copy this file onto a host and run it.

Outline: the file is cut into sections in the order data flows; each
banner says what the section owns and what it may call (only sections
above it).  Find a behaviour here, then search for the banner.

     1. Imports and the plugin API       __all__, the import policy
     2. Exit codes, verdicts and errors  EX_*, Failure, StoreError, Discard, Hold, Reject, ...
     3. Configuration                    DEFAULTS (every option), Config, logging
     4. Store: schema and queries        SCHEMA, SQL (every statement, by name)
     5. Store: transactions and spool    Store, schema upgrades, spool files, Outbox, a post's members,
                                         the archive's search index (FTS5)
     6. Mail primitives                  RawMessage, addresses (hidden), list headers, dates, footers,
                                         subject tag, DMARC rewriting, is_robot, HTML to text, search folding,
                                         the SMTP wire form
     7. DNS and tokens                   DNS client and caches, DMARC and DNSBL look-ups, tokens,
                                         VERP, leave tokens, Personalizer
     8. Notices                          TEXTS, render, Notices, pending confirmations
     9. List and member options          SETTABLE, validate_setting, MEMBER_OPTIONS, ban patterns
    10. Bounce parsing and scoring       DSNs, feedback reports, free-text bounces, causes, scores
    11. The archive                      the archive's permanent numbers, a post's text, what is published
    12. The archive's pages              the static pages: posts, gaps, months, threads, mboxes, feed;
                                         removing a post
    13. The runner                       chain_filter, plugins, Context, run_chain, the trace
    14. Transports                       sendmail, SMTP (pipelining), maildir; outcomes; send_now
    15. Held posts and owners' actions   Approved:, hold and release, one-tap moderation links, an
                                         owner's changes and reports (email and web)
    16. Command mail                     Requests (-request, -join, -leave, -confirm)
    17. The queue chain                  read ... archive in chain order, finish_queue
    18. The content-filter chain         out, whitelist, dnsbl, autoreply, quarantine
    19. The ledger and the send chain    Ledger, singleinstance ... queuerunner, digests
    20. The web                          WebApp (WSGI `application`): one-click unsubscribe (RFC 8058),
                                         the subscribe page, archive pages, msgid/ and search
    21. The web server                   `web --listen` (event loop, deadlines, shares per peer), CGI
    22. Signing in and the member's pages  sign-in links, sessions, CSRF tokens, the page register;
                                         /manage/: a member's own options on every list
    23. The owner's pages                /LIST@DOMAIN/admin/: at a glance, settings, members, bans,
                                         held posts and requests, bounces
    24. Postfix and the list user        the Postfix map and settings, postfix-config, become_list_user
    25. Intake: queue, filter and LMTP   cmd_queue, cmd_filter, poison messages, the LMTP server, send
    26. Administration commands          lists, members, moderation, bounces, status, trace
    27. Moving in and out                export, import (mlmmj, Mailman 2/3, redsky), whois, forget
    28. Doctor                           every check of the installation
    29. Command line                     demo, the argument parser, main
"""


# ---------------------------------------------------------------------------
# 1. Imports and the plugin API
# Owns: the names a plugin may use (__all__); everything else may change.
# Calls: nothing.
# ---------------------------------------------------------------------------

#
# Import policy: the modules every run needs are imported here.  A module only some paths need
# (email, hashlib, hmac, smtplib-sized ones, mailbox, subprocess, socket ...) is imported inside the
# function that uses it, so that `queue` for a plain post, which runs once per message, does not pay
# for it.

import collections
import configparser
import errno
import fcntl
import itertools
import json
import logging
import os
import re
import sqlite3
import sys
import time
from contextlib import nullcontext

__version__ = "0.5.0"
__all__ = ["chain_filter", "Context", "RawMessage", "Config", "addresses_in", "normalize_address",
           "valid_address", "decode_header_text", "list_address", "log",
           "Verdict", "Discard", "Hold", "Consumed", "Reject", "TryLater", "Accept", "ConfigError"]


# ---------------------------------------------------------------------------
# 2. Exit codes, verdicts and errors
# Owns: the sysexits(3) codes, the errors commands report, the verdicts that end a chain, report().
# Calls: nothing of redsky's.
# ---------------------------------------------------------------------------

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78


class Failure(Exception):
    """An error a command reports in one line and exits with ``code``."""

    code = EX_SOFTWARE

    def __init__(self, message, code=None):
        super().__init__(message)
        if code is not None:
            self.code = code


class ConfigError(Failure):
    code = EX_CONFIG


class InsecureFile(ConfigError):
    """A config or plugin file that someone other than its owner and root
    could change (OpenSSH's StrictModes rule); ``fix`` says how to mend it."""

    def __init__(self, message, fix):
        super().__init__(f"{message}; fix: {fix}")
        self.fix = fix


class SchemaTooNew(ConfigError):
    """The database was made by a newer redsky: a command stops (78), and `queue` says "try
    later" (75) so that the MTA keeps the mail until the right redsky is back."""

    retry = True


class StoreError(Failure):
    """The database or the spool cannot be written now (disk full, locked, no permission): nothing
    was stored.  A filter's run ends in TryLater (run_chain), a command exits 75."""

    code = EX_TEMPFAIL


class Verdict(Exception):
    """Raised by a filter to end its chain; the runner logs it and maps it
    to an exit code.  ``reason`` is one line for the log."""

    code = EX_OK
    name = "verdict"

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class Discard(Verdict):
    """The message is dropped on purpose (a loop, a robot); exit 0."""
    name = "discard"


class Hold(Verdict):
    """The message is kept for a moderator; exit 0 so that a forged sender is not sent a bounce."""
    name = "hold"


class Consumed(Verdict):
    """The message was fully handled (a bounce was recorded); exit 0."""
    name = "consumed"


class Reject(Verdict):
    """The message is bad data; the MTA bounces it (65)."""
    code = EX_DATAERR
    name = "reject"


class UnknownList(Verdict):
    """No list has this address; the MTA bounces it (67)."""
    code = EX_NOUSER
    name = "unknown-list"


class TryLater(Verdict):
    """A temporary problem; the MTA keeps the message and retries (75)."""
    code = EX_TEMPFAIL
    name = "try-later"


class Accept(Verdict):
    """The sender is trusted (whitelist): the runner goes on, but skips the
    filters registered with ``check=True`` (dnsbl, and a plugin's checks);
    access lets the post through.  Never ends a chain."""
    name = "accept"


# content-filter mode only: "dropped on purpose, do not bounce" (qmail's
# convention); proxsmtpd reads the "250 ..." line on stderr the same way
EX_DISCARDED = 99


log = logging.getLogger("redsky")
_log_on_stderr = True


def report(message, level=logging.ERROR):
    """Tell the caller in one line on stderr (the MTA puts it in its bounce)
    and the log, once when the log is stderr."""
    print(f"redsky: {message}", file=sys.stderr)
    if not _log_on_stderr:
        log.log(level, "%s", message)


# ---------------------------------------------------------------------------
# 3. Configuration
# Owns: every setting with its default and its choices (DEFAULTS, Config), logging set-up.
# Calls: section 2.
# ---------------------------------------------------------------------------

QUEUE_CHAIN = ("read getinfo loopdetect bouncehandler commands ownermail getsubscribers access contentfilter"
               " replyto dmarc subjecttag addfooter queuer archive")
SEND_CHAIN = "singleinstance housekeeping digester queuebuilder queuerunner"
FILTER_CHAIN = "read whitelist dnsbl autoreply out"
# Every setting, in one flat table (mlmmj's TUNABLES): section, key, default,
# kind, one line of help.  A kind is text, path, chain, number, duration,
# size, flag, or the choices "a|b|c".  DEFAULTS, Config's checks, `redsky.py
# config`, redsky.ini.example and the README's table all come from it.
SETTINGS = (
    ("redsky", "data_dir", "", "path", "where the database, spool and locks live; empty: beside the"
     " config file, else ~/.local/share/redsky; relative paths below are relative to it"),
    ("redsky", "database", "redsky.db", "path", "the SQLite database (`redsky.py init` makes it)"),
    ("redsky", "spool", "spool", "path", "the spool directory of queued posts"),
    ("redsky", "log", "", "text", "syslog (facility mail), stderr, or a file; empty: syslog when /dev/log"
     " exists, else redsky.log in data_dir; stderr always gets the problems only, so cron mails nothing"
     " when all is well"),
    ("redsky", "busy_timeout", "10s", "duration", "how long to wait for a database another process has"
     " locked; then `queue` exits 75 and the MTA retries"),
    ("redsky", "umask", "007", "umask", "the file creation mask: database and spool 0660, closed to"
     " others; the group keeps read and write (the web server's user writes there with [web] cgi)"),
    ("redsky", "plugins", "", "text", "Python files with your own filters, comma-separated (README: Your"
     " own filters); one that fails to load stops every command with 78"),
    ("redsky", "templates", "", "path", "a directory of texts that replace redsky's own:"
     " LIST@DOMAIN/NAME.txt for one list, else NAME.txt, else the built-in text (NAME is a key of TEXTS),"
     " with the same $placeholders"),
    ("postfix", "map", "postfix-map.db", "path", "the list addresses for Postfix's sqlite: tables,"
     " rewritten atomically whenever lists change; empty: none"),
    ("postfix", "user", "", "text", "the pipe user postfix-config writes into master.cf; empty: the owner"
     " of data_dir; run as root, init creates a missing data_dir for it"),
    ("queue", "filters", QUEUE_CHAIN, "chain", "the filters `queue` runs, in order"),
    ("queue", "max_received", "30", "number", "more Received: fields than this is a loop, discarded"),
    ("queue", "max_size", "25M", "size", "larger messages are rejected (65); 0: no limit"),
    ("queue", "duplicate_window", "7d", "duration", "a post the list queued within this time (same"
     " Message-ID, or the same bytes) is dropped, exit 0: the MTA retried a delivery it never heard"
     " succeed"),
    ("queue", "max_failures", "3", "number", "a message failing this often with an unexpected error is"
     " quarantined, the owners told, exit 0"),
    ("lmtp", "max_size", "25M", "size", "`redsky.py lmtp`: the largest message (larger: 552 per"
     " recipient)"),
    ("lmtp", "sessions", "20", "number", "LMTP sessions at once (more are answered 421)"),
    ("lmtp", "sessions_per_peer", "10", "number", "LMTP sessions one client may hold (an IPv4 address, an"
     " IPv6 /64; on loopback and a Unix socket, each local user); more are answered 421"),
    ("lmtp", "idle_timeout", "5m", "duration", "how long an LMTP session may go without a message (from"
     " its start or its last one), whatever else it sends: NOOP, RSET and the like keep no session"
     " alive"),
    ("lmtp", "session_timeout", "30m", "duration", "how long an LMTP client may stay connected"),
    ("commands", "confirm_expiry", "3d", "duration", "confirmation tokens expire after this"),
    ("commands", "max_confirmations", "3", "number", "confirmations (and an open list's welcomes, join"
     " requests to the owners) to one mailbox a day, over all lists, at requests anyone could have made"
     " in its name; as many again at requests its own mail made (authserv_id); then one notice says"
     " until when the rest are ignored (a member's leave: one a day per list, then that notice with"
     " the member's own leave address)"),
    ("commands", "max_replies", "10", "number", "other replies (help, errors, reports) to one mailbox per"
     " list a day, whatever its spelling or +tag; ten times as many to the list's owners and moderators;"
     " then one notice says until when the rest are ignored"),
    ("commands", "authserv_id", "", "text", "the authserv-id of the Authentication-Results field your MTA"
     " adds (RFC 8601), only if it removes such fields that arrive from outside: a request whose From:"
     " it says passed DMARC or DKIM of that domain draws on the address's own allowances, which forged"
     " requests cannot spend; empty: a request by mail could be anyone's"),
    ("commands", "held_expiry", "14d", "duration", "held posts and join requests nobody answered are"
     " dropped after this"),
    ("commands", "notify_rejected", "yes", "flag", "`reject` tells the sender why (`discard` never does)"),
    ("bounces", "score_threshold", "5", "number", "the bounce score at which a member is disabled; only"
     " a report at the member's signed address, or redsky's own failed delivery, counts (README: Bounces)"),
    ("bounces", "info_stale_after", "7d", "duration", "a score not raised for this long restarts from"
     " zero"),
    ("bounces", "you_are_disabled_warnings", "3", "number", "warnings (with a re-enable token) to a"
     " disabled member; the owners are told once"),
    ("bounces", "warning_interval", "7d", "duration", "the time between those warnings"),
    ("bounces", "remove_after_warnings", "no", "flag", "remove a member whose last warning went"
     " unanswered"),
    ("bounces", "count_policy_rejections", "no", "flag", "let 5.7.x rejections (caused by the post, not"
     " the member) raise scores"),
    ("bounces", "keep_raw", "30d", "duration", "raw bounce messages are dropped after this (a report"
     " keeps its first 64 KB, only when it names a member; the evidence rows stay)"),
    ("bounces", "probe_interval", "7d", "duration", "at most one probe per member in this time: a report"
     " anyone could have written (no signed address) makes each member it names get a probe instead"),
    ("bounces", "feedback_action", "unsubscribe", "unsubscribe|disable|none", "what a feedback-loop (ARF)"
     " report that a signed address identifies does"),
    ("bounces", "policy_alert_threshold", "5", "number", "policy rejections from one domain in a day that"
     " make `send` alert the owners (once a day)"),
    ("dmarc", "nameserver", "", "text", "DNS server (host[:port]) for DMARC look-ups; empty: the first of"
     " /etc/resolv.conf"),
    ("dmarc", "timeout", "2s", "duration", "DMARC look-up timeout (a failed look-up never blocks a post)"),
    ("dmarc", "cache", "1d", "duration", "how long a looked-up DMARC policy is kept"),
    ("dmarc", "fallback", "none", "none|munge_from|wrap_message", "what a post gets when the look-up"
     " fails"),
    ("dmarc", "public_suffix_list", "/usr/share/publicsuffix/public_suffix_list.dat", "path", "the Public"
     " Suffix List (Debian: publicsuffix) that finds an organisational domain; unreadable: common"
     " suffixes built in"),
    ("filter", "filters", FILTER_CHAIN, "chain", "the content-filter chain (`redsky.py filter`); read is"
     " added first and out last when not named"),
    ("filter", "max_size", "50M", "size", "larger messages are rejected (65)"),
    ("filter", "quarantine", "quarantine", "path", "the Maildir where filter mode keeps what a filter"
     " holds"),
    ("whitelist", "senders", "", "text", "trusted senders: addresses, domains, *.domain, * patterns; they"
     " skip the checks after whitelist (dnsbl, plugins' checks)"),
    ("whitelist", "file", "", "path", "a file with more of them, one or more per line, # starts a comment"),
    ("dnsbl", "zones", "", "text", "blocklists, e.g. zen.spamhaus.org, bl.spamcop.net; empty: dnsbl does"
     " nothing"),
    ("dnsbl", "action", "reject", "reject|tag|hold", "what a listed client's message gets (tag: an"
     " X-Redsky-DNSBL field)"),
    ("dnsbl", "trusted_networks", "", "text", "your relays (CIDR), besides loopback and private networks"),
    ("dnsbl", "nameserver", "", "text", "DNS server (host[:port]); empty: the first of /etc/resolv.conf"
     " (Spamhaus refuses public resolvers)"),
    ("dnsbl", "timeout", "2s", "duration", "per query; a look-up that fails never blocks mail"),
    ("dnsbl", "cache", "1h", "duration", "how long an answer is kept"),
    ("autoreply", "addresses", "", "text", "the addresses that answer (a vacation message); empty:"
     " autoreply does nothing"),
    ("autoreply", "from", "", "text", "the reply's From; empty: the address that received the message"),
    ("autoreply", "subject", "Auto: $subject", "text", "the reply's Subject ($subject: the original one)"),
    ("autoreply", "text", "", "text", "the reply's text ('\\n' for a line break)"),
    ("autoreply", "text_file", "", "path", "or a file that holds it"),
    ("autoreply", "interval", "7d", "duration", "at most one reply per sender and address in this time"
     " (RFC 3834)"),
    ("archive", "format", "maildir", "maildir|mbox", "how a list's archive is kept"),
    ("archive", "dir", "archive", "path", "one mailbox per list inside: DIR/LIST@DOMAIN"),
    ("web", "base_url", "", "text", "where `redsky.py web` or the CGI script is published, e.g."
     " https://lists.example.org/redsky: copies then carry the one-click List-Unsubscribe (RFC 8058)"),
    ("web", "pages", "pages", "path", "the archive pages of public lists, one folder per list"
     " (PAGES/LIST@DOMAIN/)"),
    ("web", "user", "", "text", "the user your web server runs as (Debian: www-data) when it runs the"
     " CGI script or serves the archive pages itself: `doctor` checks that it can reach what it needs;"
     " empty: neither"),
    ("web", "cgi", "no", "flag", "yes: the web server runs redsky.py as a CGI script (or WSGI application)"
     " as [web] user, which must be in the list user's group; `init`, run as root, then shares data_dir"
     " and the spool with that group (set-group-ID, group-writable: README: As CGI)"),
    ("web", "timeout", "10s", "duration", "`web --listen`: the deadline for a client's whole request, head"
     " and body (then 408, closed), and again for taking the answer"),
    ("web", "workers", "4", "number", "`web --listen`: threads that run the pages; a request still arriving"
     " waits in the one event loop, not in a thread"),
    ("web", "connections", "256", "number", "`web --listen`: connections open at once (more are closed at"
     " once)"),
    ("web", "peer_connections", "8", "number", "`web --listen`: connections one client may have open (an"
     " IPv4 address, an IPv6 /64; on loopback, each local user); more are answered 503"),
    ("web", "dkim_signers", "/etc/opendkim.conf, /etc/rspamd/local.d/dkim_signing.conf,"
     " /etc/rspamd/override.d/dkim_signing.conf", "text", "where `doctor` reads the DKIM signer's settings"
     " (List-Unsubscribe and List-Unsubscribe-Post must be signed)"),
    ("web", "trusted_proxies", "127.0.0.0/8, ::1", "text", "proxies (CIDR, comma-separated) whose"
     " X-Forwarded-For names the client: the budgets below count that client, not the proxy"),
    ("web", "form_min_age", "3s", "duration", "a subscribe form sent back sooner than this after the"
     " page was served is refused with \"please try again\" (scripts are fast, people are not)"),
    ("web", "form_max_age", "1h", "duration", "an older form is refused with \"please try again\""),
    ("web", "subscribe_per_client", "5", "number", "subscribe requests one client network (an IPv4"
     " address, an IPv6 /64) may make in an hour, over all lists; more mail nobody; 0: no limit"),
    ("web", "subscribe_per_list", "30", "number", "subscribe requests from the web per list in an hour;"
     " more mail nobody; 0: no limit"),
    ("web", "subscribe_per_day", "100", "number", "subscribe requests from the web per list in a day"
     " that may mail someone (a confirmation, a welcome); past it the form mails nobody and the owners"
     " are told, once a day; 0: no limit"),
    ("web", "search_per_client", "30", "number", "archive searches one client network may make in a"
     " minute (more: 429); 0: no limit"),
    ("web", "link_max_age", "30m", "duration", "a sign-in link mailed to an owner or a member works this"
     " long, once"),
    ("web", "session_max_age", "12h", "duration", "how long a sign-in on the web lasts (signing out ends it"
     " at once)"),
    ("web", "signin_per_client", "10", "number", "sign-in links one client network may ask for in an hour"
     " (owners' and members' forms); more mail nobody; 0: no limit"),
    ("web", "signin_per_address", "3", "number", "sign-in links the web's forms may mail to one address in"
     " an hour at the asking of one client network, over all lists; more mail nobody; 0: no limit"),
    ("web", "signin_per_address_all", "20", "number", "sign-in links the web's forms may mail to one"
     " address in an hour at the asking of all client networks together (so that strangers cannot lock"
     " its owner out, nor flood it); more mail nobody; 0: no limit"),
    ("web", "admin_mail_per_day", "100", "number", "mails the web admin's actions may send per list in a"
     " day: invitations, welcomes, removal notices, answers to the senders of held posts and join"
     " requests, the posts a member missed while on digests; past it the page says what was not done;"
     " 0: no limit"),
    ("send", "filters", SEND_CHAIN, "chain", "the filters `send` runs, in order"),
    ("send", "transport", "sendmail", "sendmail|smtp|maildir", "how posts leave (maildir: one Maildir per"
     " recipient, for trying things out)"),
    ("send", "sendmail", "/usr/sbin/sendmail", "path", "the sendmail program (run as SENDMAIL -oi -f"
     " SENDER -- RECIPIENT)"),
    ("send", "smtp_host", "localhost", "text", "the SMTP server (pipelining, and BDAT when it offers"
     " CHUNKING)"),
    ("send", "smtp_port", "25", "number", "its port"),
    ("send", "smtp_timeout", "60s", "duration", "how long to wait for it"),
    ("send", "smtp_connections", "4", "number", "parallel connections for a large post (about one per 200"
     " recipients)"),
    ("send", "smtp_max_recipients", "100", "number", "recipients per transaction (or sendmail process)"
     " with verp = xverp or off"),
    ("send", "verp", "per-recipient", "per-recipient|xverp|off", "per-recipient: a signed envelope sender"
     " per recipient; xverp: the MTA writes it; off: batches, and every report is a claim (README:"
     " Bounces)"),
    ("send", "ledger_batch", "500", "number", "SMTP outcomes written per ledger transaction (at least"
     " every second)"),
    ("send", "maildir", "maildir", "path", "the base directory of transport = maildir"),
    ("send", "retry_delay", "600s", "duration", "the first retry after a temporary failure (0: the next"
     " run), doubling"),
    ("send", "retry_max_delay", "4h", "duration", "the cap of the doubling delay"),
    ("send", "max_age", "5d", "duration", "a delivery still failing after this expires (and counts as a"
     " bounce)"),
    ("send", "keep_deliveries", "30d", "duration", "then a finished post keeps its counts and the"
     " failures of current members only"),
)
DEFAULTS = {section: {key: default for s, key, default, *_ in SETTINGS if s == section}
            for section in dict.fromkeys(s for s, *_ in SETTINGS)}
# Never the current directory: a file there would decide, for whoever runs
# redsky in it (root included), which plugins are executed.
CONFIG_PATHS = ("/etc/redsky/redsky.ini",)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


FLAG_WORDS = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False,
              "0": False}


class Config:
    """The INI file merged over DEFAULTS, with typed accessors.

    Relative paths are taken relative to ``data_dir``, which defaults to the
    config file's directory, or to a per-user data directory when there is
    no config file at all (a first run needs none).
    """

    def __init__(self, path=None):
        self.path = os.path.abspath(path) if path else None
        self.ini = configparser.ConfigParser(interpolation=None)
        self.ini.read_dict(DEFAULTS)
        if path:
            refuse_if_others_can_write(path, "config")
            try:
                with open(path, encoding="utf-8") as fh:
                    self.ini.read_file(fh)
            except OSError as e:
                raise ConfigError(f"cannot read config {path}: {e.strerror}")
            except configparser.Error as e:
                raise ConfigError(f"bad config {path}: {str(e).splitlines()[0]}")
        data_dir = os.path.expanduser(self.get("redsky", "data_dir"))
        if path:
            data_dir = os.path.join(os.path.dirname(os.path.abspath(path)), data_dir)
        elif not data_dir:
            base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
            data_dir = os.path.join(base, "redsky")
        self.data_dir = os.path.abspath(data_dir)
        for section, key, _, kind, _ in SETTINGS:           # bad values fail at start-up
            value = self.get(section, key)
            if kind in ("number", "duration", "size", "flag"):
                getattr(self, kind)(section, key)
            elif "|" in kind and value not in kind.split("|"):
                raise ConfigError(f"[{section}] {key} = {value!r}: use one of {kind.replace('|', ', ')}")
            elif kind == "umask" and not re.fullmatch(r"0?[0-7]{3}", value):
                raise ConfigError(f"[redsky] umask = {value!r} is not an octal mode like 007")
        umask = self.get("redsky", "umask")
        self.umask = int(umask, 8)

    @classmethod
    def find(cls, explicit=None):
        """-c, then $REDSKY_CONFIG, then the standard places, then none."""
        if explicit:
            return cls(explicit)
        env = os.environ.get("REDSKY_CONFIG")
        if env:
            return cls(env)
        for candidate in CONFIG_PATHS:
            if os.path.isfile(candidate):
                return cls(candidate)
        return cls(None)

    def get(self, section, key):
        return self.ini.get(section, key, fallback="").strip()

    def path_of(self, section, key):
        value = self.get(section, key)
        return os.path.join(self.data_dir, os.path.expanduser(value)) if value else ""

    def number(self, section, key, units=None):
        raw = self.get(section, key).lower()
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]?)b?", raw)
        table = units or {"": 1}
        if not m or m.group(2) not in table:
            raise ConfigError(f"[{section}] {key} = {raw!r} is not a valid value")
        return float(m.group(1)) * table[m.group(2)]

    def flag(self, section, key):
        value = self.get(section, key).lower()
        if value not in FLAG_WORDS:
            raise ConfigError(f"[{section}] {key} = {value!r}: use yes or no")
        return FLAG_WORDS[value]

    def duration(self, section, key):
        return self.number(section, key, _DURATION_UNITS)

    def size(self, section, key):
        return int(self.number(section, key, _SIZE_UNITS))

    def chain(self, section):
        return self.get(section, "filters").replace(",", " ").split()

    @property
    def database(self):
        return self.path_of("redsky", "database")

    @property
    def spool(self):
        return self.path_of("redsky", "spool")


def refuse_if_others_can_write(path, what):
    """Raise InsecureFile unless ``path`` and its directory are owned by
    root or by us and writable by nobody else (group and others), a sticky
    directory excepted: whoever can change the file runs code as us."""
    try:
        st = os.stat(path)
    except OSError:
        return                      # reading it reports the real problem
    parent = os.path.dirname(os.path.abspath(path))
    for target, info, is_dir in ((path, st, False), (parent, os.stat(parent), True)):
        writable = info.st_mode & 0o022 and not (is_dir and info.st_mode & 0o1000)
        if info.st_uid not in (0, os.geteuid()) or writable:
            raise InsecureFile(f"{what} {target} can be changed by others than its owner and root (mode "
                               f"{info.st_mode & 0o7777:04o}, owner uid {info.st_uid}): refused",
                               f"chown root {target} && chmod go-w {target}")


class SyslogHandler(logging.Handler):
    """Records to syslog, facility mail, tagged redsky[PID], through the C library's syslog(3):
    logging.handlers would cost every `queue` run the socket, pickle and queue modules."""

    PRIORITIES = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}

    def __init__(self):
        import syslog
        super().__init__()
        self.syslog = syslog
        syslog.openlog("redsky", syslog.LOG_PID, syslog.LOG_MAIL)

    def emit(self, record):
        try:
            self.syslog.syslog(self.PRIORITIES.get(record.levelname, 6), self.format(record))
        except Exception:
            self.handleError(record)


def setup_logging(config, verbose=False):
    """Syslog (facility mail) when /dev/log exists, else DATA_DIR/redsky.log (or, before data_dir
    exists, warnings only on stderr): `send` under cron prints only problems.  ``[redsky] log`` =
    syslog | stderr | PATH overrides; --verbose adds debug to stderr."""
    global _log_on_stderr
    log.handlers.clear()
    log.propagate = False
    target = config.get("redsky", "log") or ("syslog" if os.path.exists("/dev/log") else "")
    fmt = "redsky[%(process)d]: %(levelname)s %(message)s"
    quiet = False
    if target == "syslog":
        handler = SyslogHandler() if os.path.exists("/dev/log") else logging.StreamHandler(sys.stderr)
    elif target == "stderr":
        handler = logging.StreamHandler(sys.stderr)
    else:                           # no syslog: data_dir/redsky.log, so cron mails only problems
        try:
            handler = logging.FileHandler(os.path.join(config.data_dir, target or "redsky.log"))
            fmt = "%(asctime)s " + fmt
        except OSError as e:        # before `init` made data_dir: problems only, on stderr
            if target and os.path.isdir(config.data_dir):
                raise ConfigError(f"cannot open log file {target}: {e.strerror}")
            handler, quiet = logging.StreamHandler(sys.stderr), True
    syslogged = isinstance(handler, SyslogHandler)       # syslog adds redsky[PID]: itself
    handler.setFormatter(logging.Formatter(fmt.split(": ", 1)[1] if syslogged else fmt))
    if quiet:
        handler.setLevel(logging.WARNING)
    _log_on_stderr = getattr(handler, "stream", None) is sys.stderr
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    if verbose:
        log.setLevel(logging.DEBUG)
        if not _log_on_stderr:
            extra = logging.StreamHandler(sys.stderr)
            extra.setFormatter(logging.Formatter(fmt))
            log.addHandler(extra)


# ---------------------------------------------------------------------------
# 4. Store: the schema and named queries
# Owns: the SQLite schema (SCHEMA) and every SQL statement (SQL), by name.
# Calls: nothing.
# ---------------------------------------------------------------------------

# The one source of the schema.  schema.sql is a copy of it for people who
# read or query the database (`redsky.py schema > schema.sql`); a test
# checks that the two agree.  Times are Unix seconds (REAL).
SCHEMA = """\
-- redsky database schema (SQLite).  Generated by `redsky.py schema`; do not edit.
PRAGMA user_version = 15;

-- Installation-wide values: 'verp_key' signs the VERP bounce addresses.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- A list is LIST@DOMAIN; LIST-bounces@DOMAIN is its bounce address.
CREATE TABLE lists (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL COLLATE NOCASE,
    domain          TEXT NOT NULL COLLATE NOCASE,
    access          TEXT NOT NULL DEFAULT 'subscribers'
                    CHECK (access IN ('open', 'subscribers', 'acl', 'passphrase', 'moderated')),
    passphrase_hash TEXT NOT NULL DEFAULT '',
    subject_tag     TEXT NOT NULL DEFAULT '',
    footer          TEXT NOT NULL DEFAULT '',
    owners          TEXT NOT NULL DEFAULT '',   -- comma-separated addresses: run the list, and moderate it
    moderators      TEXT NOT NULL DEFAULT '',   -- comma-separated addresses: act on held posts and join
                                                -- requests, nothing else
    subscribe_policy TEXT NOT NULL DEFAULT 'confirm'
                    CHECK (subscribe_policy IN ('open', 'confirm', 'approve', 'confirm+approve', 'closed')),
    welcome         TEXT NOT NULL DEFAULT '',   -- empty: the built-in text
    goodbye         TEXT NOT NULL DEFAULT '',
    last_reminder   REAL NOT NULL DEFAULT 0,    -- when the moderators were last sent the daily summary
    last_policy_alert REAL NOT NULL DEFAULT 0,  -- when the owners were last told of policy rejections
    dmarc           TEXT NOT NULL DEFAULT 'auto' CHECK (dmarc IN ('auto', 'always', 'never')),
    dmarc_action    TEXT NOT NULL DEFAULT 'munge_from' CHECK (dmarc_action IN ('munge_from', 'wrap_message')),
    created         REAL NOT NULL,
    archive         TEXT NOT NULL DEFAULT 'private' CHECK (archive IN ('public', 'private', 'off')),
    archive_url     TEXT NOT NULL DEFAULT '',   -- for List-Archive (RFC 2369); default: the web archive
    description     TEXT NOT NULL DEFAULT '',   -- one line for the subscribe and archive pages
    digest_format   TEXT NOT NULL DEFAULT 'mime' CHECK (digest_format IN ('mime', 'plain')),
    digest_size_threshold INTEGER NOT NULL DEFAULT 30,  -- KB of posts that make a digest due
    digest_interval REAL NOT NULL DEFAULT 86400,        -- seconds after which a digest is due anyway
    digest_volume   INTEGER NOT NULL DEFAULT 1,         -- a new volume each calendar year
    digest_issue    INTEGER NOT NULL DEFAULT 0,         -- the last digest sent in that volume
    digest_last     REAL NOT NULL DEFAULT 0,            -- when it was sent
    reply_to        TEXT NOT NULL DEFAULT 'none',       -- none (as sent), list, or an address
    reply_to_strip  INTEGER NOT NULL DEFAULT 0,         -- 1: drop the poster's own Reply-To first
    post_number     INTEGER NOT NULL DEFAULT 0,         -- the last number %d in subject_tag gave out
    max_size        INTEGER NOT NULL DEFAULT 0,         -- KB; a larger post is held (0: no limit)
    nonmember_action TEXT NOT NULL DEFAULT 'hold' CHECK (nonmember_action IN ('hold', 'reject', 'discard',
                                                                              'accept')),
    emergency       INTEGER NOT NULL DEFAULT 0,         -- 1: every post is held
    max_posts_per_day INTEGER NOT NULL DEFAULT 0,       -- per poster; over it, held (0: no limit)
    notify_owners   INTEGER NOT NULL DEFAULT 0,         -- 1: owners are told who joins and leaves
    dmarc_addresses TEXT NOT NULL DEFAULT '',           -- authors always given dmarc_action (comma-separated)
    -- content filtering (contentfilter): MIME types (type/sub, type/*) and file name extensions
    filter_content  INTEGER NOT NULL DEFAULT 0,
    pass_types      TEXT NOT NULL DEFAULT '',
    filter_types    TEXT NOT NULL DEFAULT '',
    pass_extensions TEXT NOT NULL DEFAULT '',
    filter_extensions TEXT NOT NULL DEFAULT '',
    convert_html_to_plaintext INTEGER NOT NULL DEFAULT 0,
    collapse_alternatives INTEGER NOT NULL DEFAULT 0,
    signed_posts    TEXT NOT NULL DEFAULT 'pass' CHECK (signed_posts IN ('pass', 'hold')),
    subscribe_question TEXT NOT NULL DEFAULT '',        -- asked on the web's subscribe form
    subscribe_answers TEXT NOT NULL DEFAULT '',         -- its right answers, separated by |
    advertised      INTEGER NOT NULL DEFAULT 0,         -- 1: named on the web's front page (/)
    UNIQUE (name, domain)
);

CREATE TABLE members (
    id           INTEGER PRIMARY KEY,
    list_id      INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    address      TEXT NOT NULL COLLATE NOCASE,
    status       TEXT NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    bounce_score REAL NOT NULL DEFAULT 0,
    last_bounce  REAL,                          -- when the score last rose
    disabled_reason TEXT NOT NULL DEFAULT '',   -- 'bounce' (the score reached the threshold),
                                                -- 'feedback' (marked a post as spam), 'nomail' (by choice)
    disabled_at  REAL,
    disabled_until REAL,                        -- nomail until then (NULL: until turned off)
    warnings     INTEGER NOT NULL DEFAULT 0,    -- "you are disabled" warnings sent since
    last_warning REAL,
    subscribed   REAL NOT NULL,
    digest       INTEGER NOT NULL DEFAULT 0,    -- 1: gets digests instead of single posts
    digest_changed REAL NOT NULL DEFAULT 0,     -- when digest last changed (see messages.to_members)
    name         TEXT NOT NULL DEFAULT '',      -- the member's name, when an import brought one
    notmetoo     INTEGER NOT NULL DEFAULT 0,    -- 1: no copy of their own posts
    ack          INTEGER NOT NULL DEFAULT 0,    -- 1: a short acknowledgement of each accepted post
    moderate     INTEGER NOT NULL DEFAULT 0,    -- 1: their posts are held for the moderators
    digest_format TEXT NOT NULL DEFAULT '' CHECK (digest_format IN ('', 'mime', 'plain')),
                                                -- their digests' format; '': the list's digest_format
    UNIQUE (list_id, address)
);
-- `queue` counts a post's audience from this index alone (getsubscribers)
CREATE INDEX members_audience ON members (list_id, status, digest);

-- Who may post to a list whose access is 'acl': addresses or *@domain patterns.
CREATE TABLE acl (
    list_id INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    pattern TEXT NOT NULL COLLATE NOCASE,
    PRIMARY KEY (list_id, pattern)
);

-- Who may neither post to a list nor join it: addresses, *@domain patterns, or
-- regular expressions starting with ^ (as Mailman's ban list).
CREATE TABLE bans (
    list_id INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    pattern TEXT NOT NULL,
    PRIMARY KEY (list_id, pattern)
);

-- One row per accepted post or generated notice; the bytes are in the spool file.
CREATE TABLE messages (
    id         INTEGER PRIMARY KEY,
    list_id    INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    kind       TEXT NOT NULL DEFAULT 'post' CHECK (kind IN ('post', 'notice', 'owner')),
    sender     TEXT NOT NULL DEFAULT '',        -- a probe's own envelope sender; '' = the list's
    message_id TEXT NOT NULL,
    spool      TEXT NOT NULL UNIQUE,            -- file name inside the spool directory
    size       INTEGER NOT NULL,
    state      TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'done')),
    created    REAL NOT NULL,
    -- after [send] keep_deliveries a finished post keeps only these counts
    -- and the failures of current members (summarized = 1)
    summarized INTEGER NOT NULL DEFAULT 0,
    sent_count INTEGER NOT NULL DEFAULT 0,
    failed_count INTEGER NOT NULL DEFAULT 0,
    expired_count INTEGER NOT NULL DEFAULT 0,
    -- a post to the list's members (to_members = 1) has no row per member: `send`
    -- reads the members it was for as it reaches them, in address order (AUDIENCE:
    -- subscribed before it, still enabled, taking single posts then), and
    -- member_cursor is the last one done ('' none yet, NULL all done).
    -- Only failures and deferrals get deliveries rows; sent_count counts the rest.
    to_members INTEGER NOT NULL DEFAULT 0,
    member_cursor TEXT,
    poster     TEXT NOT NULL DEFAULT ''         -- a member with notmetoo who sent it: not a recipient
);

-- The delivery ledger: one row per recipient of a post, ending in exactly
-- one final state (sent, failed, expired).
CREATE TABLE deliveries (
    message      INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    address      TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'sent', 'failed', 'expired')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_error   TEXT NOT NULL DEFAULT '',
    updated      REAL,
    PRIMARY KEY (message, address)
) WITHOUT ROWID;
CREATE INDEX deliveries_due ON deliveries (next_attempt, message) WHERE state = 'pending';

-- Bounce reports and permanent delivery failures, with the evidence.
CREATE TABLE bounces (
    id            INTEGER PRIMARY KEY,
    list_id       INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    address       TEXT NOT NULL COLLATE NOCASE,
    received      REAL NOT NULL,
    source        TEXT NOT NULL,                -- verp, probe, plain, unsigned, delivery, feedback
    action        TEXT NOT NULL DEFAULT '',     -- failed, delayed, ... (RFC 3464)
    status        TEXT NOT NULL DEFAULT '',
    diagnostic    TEXT NOT NULL DEFAULT '',
    reporting_mta TEXT NOT NULL DEFAULT '',
    counted       INTEGER NOT NULL DEFAULT 0,   -- 1 when it raised the bounce score
    why           TEXT NOT NULL DEFAULT '',     -- why it counted or not (the evidence)
    message_id    TEXT NOT NULL DEFAULT '',     -- the post it returned, else the last one sent to them
    raw           BLOB,
    cause         TEXT NOT NULL DEFAULT '',     -- userunknown, mailboxfull, policy, ... (bounce_cause)
    weight        REAL NOT NULL DEFAULT 0       -- what it adds to the score: 1 hard, 0.5 soft, 0
);
CREATE INDEX bounces_member ON bounces (list_id, address);

-- When a member was last sent a probe (a report anyone could forge named them).
CREATE TABLE probes (
    list_id INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    address TEXT NOT NULL COLLATE NOCASE,
    sent    REAL NOT NULL,
    PRIMARY KEY (list_id, address)
) WITHOUT ROWID;

-- Posts waiting for a moderator, with the envelope they arrived with.
CREATE TABLE held (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: `approve 3` from an old listing
    list_id    INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    received   REAL NOT NULL,
    sender     TEXT NOT NULL DEFAULT '',
    recipient  TEXT NOT NULL,
    from_addr  TEXT NOT NULL DEFAULT '',
    subject    TEXT NOT NULL DEFAULT '',
    message_id TEXT NOT NULL DEFAULT '',
    reason     TEXT NOT NULL,
    raw        BLOB NOT NULL
);

-- Confirmation tokens: bound to a list, an address and an action; single use
-- (used is set), and kept a while after use so that rate limits can count them.
-- 'set-option': a member's option change that stops or delays their mail (command: JSON
-- [option, "on"|"off"]); 'owner-command': an owner's changes by email, confirmed by that
-- owner (address; command: the JSON list of checked actions, see plan_owner_action).
CREATE TABLE pending (
    token    TEXT PRIMARY KEY,
    list_id  INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    address  TEXT NOT NULL COLLATE NOCASE,
    action   TEXT NOT NULL CHECK (action IN ('subscribe', 'unsubscribe', 'approve-subscribe', 'moderate',
                                         'reenable', 'set-option', 'owner-command')),
    held_id  INTEGER REFERENCES held(id) ON DELETE CASCADE,
    created  REAL NOT NULL,
    expires  REAL NOT NULL,
    used     REAL,
    command  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX pending_address ON pending (address, created);
CREATE INDEX pending_held ON pending (held_id) WHERE held_id IS NOT NULL;   -- a held post's token

-- DMARC policies looked up in DNS (p= of the _dmarc TXT record, '' for none).
CREATE TABLE dmarc_cache (
    domain  TEXT PRIMARY KEY,
    policy  TEXT NOT NULL,
    expires REAL NOT NULL
);

-- What the queue chain decided for each message it saw, filter by filter
-- (`redsky.py trace MESSAGE-ID`).  Pruned after 30 days.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY,
    received   REAL NOT NULL,
    message_id TEXT NOT NULL,
    list_id    INTEGER REFERENCES lists(id) ON DELETE SET NULL,
    recipient  TEXT NOT NULL DEFAULT '',
    sender     TEXT,
    outcome    TEXT NOT NULL,                  -- queued, discard, hold, consumed, reject, ...
    reason     TEXT NOT NULL DEFAULT '',
    trace      TEXT NOT NULL                   -- JSON list of [filter, note]
);
CREATE INDEX events_message_id ON events (message_id);

-- Posts waiting for the next digest of their list, as distributed.
CREATE TABLE digest_posts (
    id       INTEGER PRIMARY KEY,
    list_id  INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    received REAL NOT NULL,
    raw      BLOB NOT NULL
);
CREATE INDEX digest_posts_list ON digest_posts (list_id, id);

-- DNS blocklist answers: the 127.0.0.x address, '' when not listed.
CREATE TABLE dnsbl_cache (
    name    TEXT PRIMARY KEY,
    answer  TEXT NOT NULL,
    expires REAL NOT NULL
);

-- Who got an automatic reply from which address, and when (RFC 3834 2).
CREATE TABLE autoreplies (
    address TEXT NOT NULL COLLATE NOCASE,
    sender  TEXT NOT NULL COLLATE NOCASE,
    sent    REAL NOT NULL,
    PRIMARY KEY (address, sender)
);
CREATE INDEX messages_message_id ON messages (message_id);

-- Posts queued lately, by Message-ID (or "sha256:" of a post without one):
-- an MTA that retries a post redsky already queued gets it dropped, not
-- distributed twice ([queue] duplicate_window).
CREATE TABLE recent_posts (
    list_id  INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    key      TEXT NOT NULL,
    received REAL NOT NULL,
    poster   TEXT NOT NULL DEFAULT '' COLLATE NOCASE,  -- who sent it (max_posts_per_day)
    PRIMARY KEY (list_id, key)
) WITHOUT ROWID;

-- The posts of the lists' archives under their permanent numbers: a number is taken in the
-- transaction that records the post and never given again; a removed post keeps its row (removed
-- set, what it said cleared) as the gap that says so.  The bytes are in [archive] dir.
CREATE TABLE archived_posts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the search index names posts by it
    list_id     INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    number      INTEGER NOT NULL,
    message_id  TEXT NOT NULL DEFAULT '',
    archived    REAL NOT NULL,                      -- when it was archived
    date        REAL NOT NULL,                      -- its Date within reason: its month, the search's order
    month       TEXT NOT NULL,                      -- YYYY-MM of date (UTC)
    subject     TEXT NOT NULL DEFAULT '',           -- as published: the list's tag gone, addresses hidden
    author      TEXT NOT NULL DEFAULT '',           -- as published: the name, else the address hidden
    thread      INTEGER NOT NULL,                   -- the number of the thread's first post
    parent      INTEGER,                            -- the number of the post it answers
    subject_key TEXT NOT NULL DEFAULT '',           -- the subject without prefixes: threads by subject
    location    TEXT NOT NULL DEFAULT '',           -- the Maildir file's name ('' in an mbox)
    removed     REAL,                               -- when it was removed
    removed_by  TEXT NOT NULL DEFAULT '',           -- author (forget), owner, gone, import
    UNIQUE (list_id, number)
);
CREATE INDEX archived_posts_message_id ON archived_posts (list_id, message_id);
CREATE INDEX archived_posts_month ON archived_posts (list_id, month, number);
CREATE INDEX archived_posts_thread ON archived_posts (list_id, thread, number);
CREATE INDEX archived_posts_subject ON archived_posts (list_id, subject_key, number);
CREATE INDEX archived_posts_date ON archived_posts (list_id, date);

-- The text of each post of a public archive as published, for its search: subject, author and
-- body folded as the search matches them (search_fold), and the body as published (zlib) for
-- snippets and the feed.  The index over it (archive_fts: SQLite FTS5, where the host's SQLite
-- has it) is made at run time; the meta rows search_changes and search_indexed keep them in step.
CREATE TABLE archive_texts (
    post    INTEGER PRIMARY KEY REFERENCES archived_posts(id) ON DELETE CASCADE,
    subject TEXT NOT NULL DEFAULT '',
    author  TEXT NOT NULL DEFAULT '',
    body    TEXT NOT NULL DEFAULT '',
    text    BLOB
);

-- Messages whose processing failed with an unexpected error, by SHA-256:
-- after [queue] max_failures the message is quarantined, not retried forever.
CREATE TABLE failures (
    digest   TEXT PRIMARY KEY,
    count    INTEGER NOT NULL,
    first    REAL NOT NULL,
    last     REAL NOT NULL,
    reason   TEXT NOT NULL DEFAULT ''
);

-- The members' one-click leave tokens (leave_token: an HMAC of list and address), so that the
-- member a token names is one look-up away, and a made-up token costs no more.  leave_member adds
-- the tokens of the members who joined since (members.id above the newest here); a row goes with
-- its member.
CREATE TABLE leave_tokens (
    list_id   INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    token     BLOB NOT NULL,                      -- the 16 hex digits as 8 bytes
    member_id INTEGER NOT NULL REFERENCES members(id) ON DELETE CASCADE,
    PRIMARY KEY (list_id, token)
) WITHOUT ROWID;
CREATE INDEX leave_tokens_member ON leave_tokens (member_id);

-- What the web's forms and search have used of their budgets: a count per key (a client's
-- network, a list) in a window that began at since; and the form tokens already taken once.
CREATE TABLE web_budgets (
    key     TEXT PRIMARY KEY,           -- e.g. 'subscribe client 192.0.2.7', 'subscribe list 3'
    count   INTEGER NOT NULL,
    since   REAL NOT NULL,
    expires REAL NOT NULL               -- when the row may go
) WITHOUT ROWID;
CREATE INDEX web_budgets_expires ON web_budgets (expires);

-- Who is signed in on the web: an owner of one list (list_id), or a member (list_id NULL) for every
-- list of the address.  Only a hash of the session id the cookie holds is kept; a row goes when it
-- expires or its holder signs out.
CREATE TABLE web_sessions (
    id_hash TEXT PRIMARY KEY,           -- SHA-256 of the cookie's session id, hex
    kind    TEXT NOT NULL CHECK (kind IN ('owner', 'member')),
    list_id INTEGER REFERENCES lists(id) ON DELETE CASCADE,
    address TEXT NOT NULL COLLATE NOCASE,
    created REAL NOT NULL,
    expires REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX web_sessions_expires ON web_sessions (expires);
-- What requests made in a mailbox's name have had redsky mail it in the day that began at since
-- (Notices.within).  mailbox: the address without its +tag, in lower case (limit_mailbox).  kind:
-- 'confirm ORIGIN' (confirmations, an open list's welcomes, join requests, over all lists), 'reply
-- ORIGIN LIST_ID' (other replies of one list), 'leave ORIGIN LIST_ID' and 'owner ORIGIN LIST_ID' (a
-- member's leave confirmations, an owner's: mailbox is then that address) or 'refused LIST_ID' (the
-- owners were told that the list's requests are refused; mailbox ''); ORIGIN is 'anyone' (the web,
-- mail whose From: nobody vouched for) or 'own' (mail whose From: the MTA authenticated).
CREATE TABLE allowances (
    mailbox TEXT NOT NULL COLLATE NOCASE,
    kind    TEXT NOT NULL,
    count   INTEGER NOT NULL,
    since   REAL NOT NULL,
    told    INTEGER NOT NULL DEFAULT 0,     -- 1: the mailbox was told that the rest are ignored
    PRIMARY KEY (mailbox, kind)
) WITHOUT ROWID;
CREATE INDEX allowances_since ON allowances (since);

-- A post to the members has no row per member: who got it is worked out from the members as they
-- are.  A member who leaves, or stops getting mail, first gets a 'sent' row for each post that had
-- reached them, so that `trace` and `whois` still show those deliveries (not when a whole list goes).
CREATE TRIGGER members_leaving_keep_deliveries BEFORE DELETE ON members
WHEN EXISTS (SELECT 1 FROM lists WHERE id = OLD.list_id)
BEGIN
    INSERT OR IGNORE INTO deliveries (message, address, state, attempts, updated)
    SELECT m.id, OLD.address, 'sent', 1, m.created FROM messages m
    WHERE m.list_id = OLD.list_id AND m.to_members AND NOT m.summarized
      AND (m.member_cursor IS NULL OR OLD.address <= m.member_cursor COLLATE NOCASE)
      AND OLD.status = 'enabled' AND OLD.subscribed <= m.created
      AND (OLD.digest = 0) = (OLD.digest_changed <= m.created) AND OLD.address <> m.poster;
END;
CREATE TRIGGER members_stopping_keep_deliveries BEFORE UPDATE OF status ON members
WHEN OLD.status = 'enabled' AND NEW.status <> 'enabled'
BEGIN
    INSERT OR IGNORE INTO deliveries (message, address, state, attempts, updated)
    SELECT m.id, OLD.address, 'sent', 1, m.created FROM messages m
    WHERE m.list_id = OLD.list_id AND m.to_members AND NOT m.summarized
      AND (m.member_cursor IS NULL OR OLD.address <= m.member_cursor COLLATE NOCASE)
      AND OLD.status = 'enabled' AND OLD.subscribed <= m.created
      AND (OLD.digest = 0) = (OLD.digest_changed <= m.created) AND OLD.address <> m.poster;
END;
"""


SCHEMA_VERSION = 15
# Data migrations: {version: statements that make the data of the version before it right}, run
# by upgrade_schema after the tables have SCHEMA's form.
MIGRATIONS = {
    # the web's front page named the lists whose archive is public: they stay named (advertised)
    12: ["UPDATE lists SET advertised = 1 WHERE archive = 'public'"],
}
# SQL: post m to the members has reached member ?2 (or ?3 where so numbered); see messages.member_cursor
# SQL: member mb is a recipient of post m (queued at m.created): subscribed by then, enabled, and taking
# single posts then (a member who took digests then finds the post in the digest backlog), and not
# the poster who asked for no copy of their own posts (notmetoo: messages.poster)
AUDIENCE = ("mb.status = 'enabled' AND mb.subscribed <= {created}"
            " AND (mb.digest = 0) = (mb.digest_changed <= {created}) AND mb.address <> {poster}")
REACHED_MEMBER = ("m.to_members AND (m.member_cursor IS NULL OR {a} <= m.member_cursor COLLATE NOCASE)"
                  " AND EXISTS (SELECT 1 FROM members mb WHERE mb.list_id = m.list_id AND mb.address = {a}"
                  " AND " + AUDIENCE.format(created="m.created", poster="m.poster") + ")")
# a member's options (member_options()); nomail is status 'disabled' for disabled_reason 'nomail'
MEMBER_OPTION_COLUMNS = "digest, disabled_reason, disabled_until, notmetoo, ack, moderate, digest_format"
LIST_COLUMNS = ("id, name, domain, access, passphrase_hash, subject_tag, footer, owners, moderators,"
                " subscribe_policy,"
                " welcome, goodbye, last_reminder, last_policy_alert, dmarc, dmarc_action, created, archive,"
                " archive_url, digest_format, digest_size_threshold, digest_interval, digest_volume,"
                " digest_issue, digest_last, reply_to, reply_to_strip, post_number, max_size,"
                " nonmember_action, emergency, max_posts_per_day, notify_owners, dmarc_addresses,"
                " filter_content, pass_types, filter_types, pass_extensions, filter_extensions,"
                " convert_html_to_plaintext, collapse_alternatives, signed_posts, description,"
                " subscribe_question, subscribe_answers, advertised")
SQL = {
    # meta, lists, members, acl
    "meta": "SELECT value FROM meta WHERE key = ?",
    "schema_version": "PRAGMA user_version",
    "triggers_and_views": "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view')",
    "add_meta": "INSERT INTO meta VALUES (?, ?)",
    "set_meta": "INSERT OR REPLACE INTO meta VALUES (?, ?)",
    "list_by_address": f"SELECT {LIST_COLUMNS} FROM lists WHERE name = ? AND domain = ?",
    "list_by_id": f"SELECT {LIST_COLUMNS} FROM lists WHERE id = ?",
    "all_lists": f"SELECT {LIST_COLUMNS} FROM lists ORDER BY domain, name",
    "add_list": "INSERT INTO lists ({columns}) VALUES ({marks})",        # columns checked by Store.add_list
    "set_list": "UPDATE lists SET {column} = ? WHERE id = ?",            # column checked by Store.set_list
    "delete_list": "DELETE FROM lists WHERE id = ?",
    "set_last_reminder": "UPDATE lists SET last_reminder = ? WHERE id = ?",
    "set_last_policy_alert": "UPDATE lists SET last_policy_alert = ? WHERE id = ?",
    "members": "SELECT address, name, status, bounce_score, " + MEMBER_OPTION_COLUMNS
               + " FROM members WHERE list_id = ? ORDER BY address",
    "member_counts": "SELECT list_id, count(*) FROM members GROUP BY list_id",
    # the table of leave tokens (leave_member): the members it lacks are those above its newest
    "leave_tokens_newest": "SELECT max(member_id) FROM leave_tokens",
    "members_newest": "SELECT max(id) FROM members",
    "members_after": "SELECT mb.id, mb.list_id, mb.address, l.name, l.domain FROM members mb"
                     " JOIN lists l ON l.id = mb.list_id WHERE mb.id > ? ORDER BY mb.id",
    "add_leave_token": "INSERT OR REPLACE INTO leave_tokens (list_id, token, member_id) VALUES (?, ?, ?)",
    "leave_token_member": "SELECT mb.address FROM leave_tokens t JOIN members mb ON mb.id = t.member_id"
                          " AND mb.list_id = t.list_id WHERE t.list_id = ? AND t.token = ?",
    # the web's budgets (web_budget)
    "budget_get": "SELECT count, since FROM web_budgets WHERE key = ?",
    "budget_put": "INSERT OR REPLACE INTO web_budgets (key, count, since, expires) VALUES (?, ?, ?, ?)",
    "budget_prune": "DELETE FROM web_budgets WHERE expires < ?",
    # who is signed in on the web (web_sessions)
    "session_add": "INSERT INTO web_sessions (id_hash, kind, list_id, address, created, expires)"
                   " VALUES (?, ?, ?, ?, ?, ?)",
    "session_get": "SELECT kind, list_id, address, created, expires FROM web_sessions"
                   " WHERE id_hash = ? AND expires > ?",
    "session_end": "DELETE FROM web_sessions WHERE id_hash = ?",
    "session_prune": "DELETE FROM web_sessions WHERE expires < ?",
    # the web's pages for owners and members
    "member_lists": "SELECT list_id FROM members WHERE address = ? ORDER BY list_id",
    "set_digest_format": "UPDATE members SET digest_format = ? WHERE list_id = ? AND address = ?",
    "members_matching": "SELECT address, name, status, bounce_score, " + MEMBER_OPTION_COLUMNS
                        + " FROM members WHERE list_id = ? AND (address LIKE ? ESCAPE '\\'"
                        " OR name LIKE ? ESCAPE '\\') ORDER BY address LIMIT ?",
    "member_summary": "SELECT count(*), coalesce(sum(status = 'enabled'), 0), coalesce(sum(digest), 0),"
                      " coalesce(sum(bounce_score > 0 OR disabled_reason IN ('bounce', 'feedback')), 0)"
                      " FROM members WHERE list_id = ?",
    "recent_events": "SELECT received, message_id, sender, outcome, reason FROM events"
                     " WHERE list_id = ? AND recipient = ? ORDER BY id DESC LIMIT ?",
    # what requests in a mailbox's name have had it sent today (Notices.within)
    "allowance_get": "SELECT count, since, told FROM allowances WHERE mailbox = ? AND kind = ?",
    "allowance_put": "INSERT OR REPLACE INTO allowances (mailbox, kind, count, since, told)"
                     " VALUES (?, ?, ?, ?, ?)",
    "prune_allowances": "DELETE FROM allowances WHERE since < ?",
    # getsubscribers: how many members by status and digest, without loading them (members_audience)
    "audience": "SELECT status, digest, count(*) FROM members WHERE list_id = ? GROUP BY status, digest",
    "member_status": "SELECT status FROM members WHERE list_id = ? AND address = ?",
    # the members a post to the list goes to, read by `send` in chunks after its cursor
    "member_stream": "SELECT address FROM members mb WHERE list_id = ?1 AND "
                     + AUDIENCE.format(created="?2", poster="?3")
                     + " AND address > ?4 ORDER BY address LIMIT ?5",
    "member_stream_count": "SELECT count(*) FROM members mb WHERE list_id = ?1 AND "
                           + AUDIENCE.format(created="?2", poster="?3") + " AND address > ?4",
    "add_member": "INSERT OR IGNORE INTO members (list_id, address, subscribed) VALUES (?, ?, ?)",
    "add_member_named": "INSERT OR IGNORE INTO members (list_id, address, subscribed, name)"
                        " VALUES (?, ?, ?, ?)",
    # moving in and out (import, export) and personal data (whois, forget: ?1 address, ?2 %address%)
    "import_member": "INSERT OR IGNORE INTO members (list_id, address, name, status, digest, bounce_score,"
                     " last_bounce, disabled_reason, disabled_at, warnings, last_warning, subscribed,"
                     " disabled_until, notmetoo, ack, moderate)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "members_export": "SELECT address, name, status, digest, bounce_score, last_bounce, disabled_reason,"
                      " disabled_at, warnings, last_warning, subscribed, disabled_until, notmetoo, ack,"
                      " moderate FROM members WHERE list_id = ? ORDER BY address",
    "held_keys": "SELECT message_id, received FROM held WHERE list_id = ?",
    "held_export": "SELECT id, received, sender, recipient, from_addr, subject, message_id, reason, raw"
                   " FROM held WHERE list_id = ? ORDER BY id",
    "pending_export": "SELECT token, address, action, held_id, created, expires FROM pending"
                      " WHERE list_id = ? AND used IS NULL ORDER BY token",
    "whois_members": "SELECT l.name || '@' || l.domain AS list, m.address, m.name, m.status, m.digest,"
                     " m.bounce_score, m.subscribed FROM members m JOIN lists l ON l.id = m.list_id"
                     " WHERE m.address = ?1 AND ?2 IS NOT NULL",
    "forget_members": "DELETE FROM members WHERE address = ?1 AND ?2 IS NOT NULL",
    "whois_web_sessions": "SELECT kind, created, expires FROM web_sessions"
                          " WHERE address = ?1 AND ?2 IS NOT NULL",
    "forget_web_sessions": "DELETE FROM web_sessions WHERE address = ?1 AND ?2 IS NOT NULL",
    "whois_acl": "SELECT l.name || '@' || l.domain AS list, a.pattern FROM acl a"
                 " JOIN lists l ON l.id = a.list_id WHERE a.pattern = ?1 AND ?2 IS NOT NULL",
    "forget_acl": "DELETE FROM acl WHERE pattern = ?1 AND ?2 IS NOT NULL",
    # with the posts to the members that reached the address (no row of their own: REACHED_MEMBER)
    "whois_deliveries": "SELECT m.message_id, d.state, d.attempts, d.updated FROM deliveries d"
                        " JOIN messages m ON m.id = d.message WHERE d.address = ?1 COLLATE NOCASE"
                        " AND ?2 IS NOT NULL UNION ALL SELECT m.message_id, 'sent', 1, m.created"
                        " FROM messages m WHERE ?2 IS NOT NULL AND " + REACHED_MEMBER.format(a="?1") +
                        " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message = m.id"
                        " AND d.address = ?1 COLLATE NOCASE) ORDER BY 4",
    "forget_deliveries": "DELETE FROM deliveries WHERE address = ?1 COLLATE NOCASE AND ?2 IS NOT NULL",
    "whois_bounces": "SELECT received, source, action, status, cause, counted, why FROM bounces"
                     " WHERE address = ?1 AND ?2 IS NOT NULL ORDER BY id",
    "forget_bounces": "DELETE FROM bounces WHERE address = ?1 AND ?2 IS NOT NULL",
    "whois_probes": "SELECT sent FROM probes WHERE address = ?1 AND ?2 IS NOT NULL",
    "forget_probes": "DELETE FROM probes WHERE address = ?1 AND ?2 IS NOT NULL",
    "mentioning_held": "SELECT id, received, sender, from_addr, subject, reason FROM held"
                       " WHERE sender = ?1 COLLATE NOCASE OR from_addr LIKE ?2 ESCAPE '\\'",
    "whois_pending": "SELECT token, action, created, expires, used FROM pending"
                     " WHERE address = ?1 AND ?2 IS NOT NULL",
    "forget_pending": "DELETE FROM pending WHERE address = ?1 AND ?2 IS NOT NULL",
    "mentioning_events": "SELECT id, received, message_id, outcome, reason, sender, recipient, trace"
                         " FROM events WHERE sender = ?1 COLLATE NOCASE OR recipient = ?1 COLLATE NOCASE"
                         " OR trace LIKE ?2 ESCAPE '\\' OR reason LIKE ?2 ESCAPE '\\' ORDER BY id",
    "delete_event": "DELETE FROM events WHERE id = ?",
    "whois_autoreplies": "SELECT address, sent FROM autoreplies WHERE sender = ?1 AND ?2 IS NOT NULL",
    "forget_autoreplies": "DELETE FROM autoreplies WHERE sender = ?1 AND ?2 IS NOT NULL",
    "whois_recent_posts": "SELECT l.name || '@' || l.domain AS list, r.received FROM recent_posts r"
                          " JOIN lists l ON l.id = r.list_id WHERE r.poster = ?1 AND ?2 IS NOT NULL",
    "forget_recent_posts": "UPDATE recent_posts SET poster = '' WHERE poster = ?1 AND ?2 IS NOT NULL",
    "whois_messages": "SELECT message_id, created FROM messages WHERE poster = ?1 COLLATE NOCASE"
                      " AND ?2 IS NOT NULL",
    "forget_messages": "UPDATE messages SET poster = '' WHERE poster = ?1 COLLATE NOCASE AND ?2 IS NOT NULL",
    "whois_allowances": "SELECT kind, count, since, told FROM allowances"
                        " WHERE mailbox = ?1 AND ?2 IS NOT NULL",
    "forget_allowances": "DELETE FROM allowances WHERE mailbox = ?1 AND ?2 IS NOT NULL",
    "orphan_messages": "SELECT spool FROM messages m WHERE m.kind != 'post'"
                       " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message = m.id)",
    "delete_orphan_messages": "DELETE FROM messages WHERE kind != 'post'"
                              " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message = messages.id)",
    "digest_posts_all": "SELECT id, raw FROM digest_posts",
    "delete_digest_post": "DELETE FROM digest_posts WHERE id = ?",
    "delete_member": "DELETE FROM members WHERE list_id = ? AND address = ?",
    "member_address": "SELECT address FROM members WHERE list_id = ? AND address = ?",
    "reenable": "UPDATE members SET status = 'enabled', disabled_reason = '', disabled_at = NULL,"
                " disabled_until = NULL, warnings = 0, last_warning = NULL, bounce_score = 0"
                " WHERE list_id = ? AND address = ?",
    "set_digest": "UPDATE members SET digest = ?, digest_changed = (julianday('now') - 2440587.5) * 86400"
                  " WHERE list_id = ? AND address = ?",
    "member_options": "SELECT address, status, " + MEMBER_OPTION_COLUMNS
                      + " FROM members WHERE list_id = ? AND address = ?",
    "set_member_option": "UPDATE members SET {column} = ? WHERE list_id = ? AND address = ?",  # MEMBER_FLAGS
    "set_nomail": "UPDATE members SET status = 'disabled', disabled_reason = 'nomail', disabled_at = ?,"
                  " disabled_until = ?, warnings = 0 WHERE list_id = ? AND address = ?",
    "nomail_off": "UPDATE members SET status = 'enabled', disabled_reason = '', disabled_at = NULL,"
                  " disabled_until = NULL WHERE list_id = ? AND address = ? AND disabled_reason = 'nomail'",
    "nomail_ended": "UPDATE members SET status = 'enabled', disabled_reason = '', disabled_at = NULL,"
                    " disabled_until = NULL WHERE disabled_reason = 'nomail' AND disabled_until <= ?",
    "member_bounce_state": "SELECT status, bounce_score, last_bounce FROM members"
                           " WHERE list_id = ? AND address = ?",
    "score_bounce": "UPDATE members SET bounce_score = :score, last_bounce = :now,"
                    " status = CASE WHEN :disable THEN 'disabled' ELSE status END,"
                    " disabled_reason = CASE WHEN :disable THEN 'bounce' ELSE disabled_reason END,"
                    " disabled_at = CASE WHEN :disable THEN :now ELSE disabled_at END,"
                    " warnings = CASE WHEN :disable THEN 0 ELSE warnings END"
                    " WHERE list_id = :list_id AND address = :address",
    "members_to_warn": "SELECT m.* FROM members m"
                       " WHERE m.status = 'disabled' AND m.disabled_reason = 'bounce'"
                       " AND (m.last_warning IS NULL OR m.last_warning < ?)",
    "warned": "UPDATE members SET warnings = warnings + 1, last_warning = ?"
              " WHERE list_id = ? AND address = ?",
    "members_bounce_status": "SELECT address, status, bounce_score, disabled_reason, disabled_at, warnings"
                             " FROM members WHERE list_id = ?",
    "acl": "SELECT pattern FROM acl WHERE list_id = ? ORDER BY pattern",
    "acl_add": "INSERT OR IGNORE INTO acl (list_id, pattern) VALUES (?, ?)",
    "acl_del": "DELETE FROM acl WHERE list_id = ? AND pattern = ?",
    "bans": "SELECT pattern FROM bans WHERE list_id = ? ORDER BY pattern",
    "ban_add": "INSERT OR IGNORE INTO bans (list_id, pattern) VALUES (?, ?)",
    "ban_del": "DELETE FROM bans WHERE list_id = ? AND pattern = ?",
    # messages and the delivery ledger
    "add_message": "INSERT INTO messages (list_id, kind, message_id, spool, size, created, sender,"
                   " to_members, member_cursor, poster)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, CASE WHEN ? THEN '' END, ?)",
    "add_delivery": "INSERT OR IGNORE INTO deliveries (message, address, next_attempt) VALUES (?, ?, 0)",
    # messages that have at least one delivery due now
    "due_messages": "SELECT m.id, m.spool, m.message_id, m.created, m.sender, m.member_cursor, m.poster,"
                    " l.id AS list_id, l.name, l.domain FROM messages m JOIN lists l ON l.id = m.list_id"
                    " WHERE m.id IN (SELECT DISTINCT message FROM deliveries"
                    "                WHERE state = 'pending' AND next_attempt <= ?)"
                    " OR m.member_cursor IS NOT NULL ORDER BY m.id",
    "due_count": "SELECT count(*) FROM deliveries WHERE message = ? AND state = 'pending'"
                 " AND next_attempt <= ?",
    # keyset pagination keeps memory flat however long the list is
    "due_recipients": "SELECT address, attempts FROM deliveries"
                      " WHERE message = ? AND state = 'pending' AND next_attempt <= ? AND address > ?"
                      " ORDER BY address LIMIT ?",
    # a member reached by the member stream has no row yet: the first outcome inserts it
    "delivery_outcome": "INSERT INTO deliveries (state, attempts, next_attempt, last_error, updated, message,"
                        " address) VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (message, address)"
                        " DO UPDATE SET state = ?1, attempts = attempts + 1, next_attempt = ?2,"
                        " last_error = ?3, updated = ?4",
    "member_progress": "UPDATE messages SET member_cursor = ?, sent_count = sent_count + ? WHERE id = ?",
    "pending_count": "SELECT (SELECT count(*) FROM deliveries WHERE message = ?1 AND state = 'pending')"
                     " + (SELECT count(*) FROM messages WHERE id = ?1 AND member_cursor IS NOT NULL)",
    "message_done": "UPDATE messages SET state = 'done' WHERE id = ?",
    "queued_spools": "SELECT spool FROM messages WHERE state = 'queued'",
    # [send] keep_deliveries: count a finished post's outcomes, then drop the
    # rows of its deliveries that went out and of everyone no longer a member
    "summarize_posts": "UPDATE messages SET summarized = 1,"
                       " sent_count = sent_count + (SELECT count(*) FROM deliveries"
                       "               WHERE message = messages.id AND state = 'sent'),"
                       " failed_count = (SELECT count(*) FROM deliveries WHERE message = messages.id"
                       "                 AND state = 'failed'),"
                       " expired_count = (SELECT count(*) FROM deliveries WHERE message = messages.id"
                       "                  AND state = 'expired')"
                       " WHERE state = 'done' AND summarized = 0 AND created < ?",
    "prune_deliveries": "DELETE FROM deliveries"
                        " WHERE message IN (SELECT id FROM messages WHERE summarized = 1)"
                        " AND (state = 'sent' OR NOT EXISTS (SELECT 1 FROM members mb JOIN messages m"
                        " ON m.list_id = mb.list_id WHERE m.id = deliveries.message"
                        " AND mb.address = deliveries.address))",
    "list_spools": "SELECT spool FROM messages WHERE list_id = ?",
    "queued_spools": "SELECT spool FROM messages WHERE state = 'queued' ORDER BY id",
    "list_contents": "SELECT (SELECT count(*) FROM members WHERE list_id = ?1) AS members,"
                     " (SELECT count(*) FROM messages WHERE list_id = ?1 AND state = 'queued') AS queued,"
                     " (SELECT count(*) FROM held WHERE list_id = ?1) AS held,"
                     " (SELECT count(*) FROM pending WHERE list_id = ?1 AND used IS NULL) AS pending",
    # a post to the members reached ?3 when the cursor passed a member with no row of a failure
    "delivered_to": "SELECT 1 FROM messages m LEFT JOIN deliveries d ON d.message = m.id"
                    " AND d.address = ?3 COLLATE NOCASE WHERE m.list_id = ?1 AND m.message_id = ?2"
                    " AND (d.attempts > 0 OR (d.message IS NULL AND " + REACHED_MEMBER.format(a="?3") + "))",
    "deliveries_of": "SELECT m.id AS post, m.kind, l.name || '@' || l.domain AS list, d.address, d.state,"
                     " d.attempts, d.last_error, d.updated, d.next_attempt,"
                     " (SELECT b.id FROM bounces b WHERE b.list_id = m.list_id AND b.address = d.address"
                     "  AND b.message_id = m.message_id AND b.action = 'failed'"
                     "  AND b.source IN ('verp', 'probe') ORDER BY b.id DESC LIMIT 1) AS bounce"
                     " FROM deliveries d"
                     " JOIN messages m ON m.id = d.message JOIN lists l ON l.id = m.list_id"
                     " WHERE m.message_id IN (?1, ?2, ?3) AND (?4 IS NULL OR d.address = ?4)"
                     # a post to the members: those the cursor passed with no row of a failure got it
                     " UNION ALL SELECT m.id, m.kind, l.name || '@' || l.domain, mb.address, 'sent', 1, '',"
                     " NULL, 0, (SELECT b.id FROM bounces b WHERE b.list_id = m.list_id"
                     "  AND b.address = mb.address AND b.message_id = m.message_id AND b.action = 'failed'"
                     "  AND b.source IN ('verp', 'probe') ORDER BY b.id DESC LIMIT 1)"
                     " FROM messages m JOIN lists l ON l.id = m.list_id"
                     " JOIN members mb ON mb.list_id = m.list_id"
                     " AND " + AUDIENCE.format(created="m.created", poster="m.poster") +
                     " AND (m.member_cursor IS NULL OR mb.address <= m.member_cursor)"
                     " WHERE m.to_members AND m.message_id IN (?1, ?2, ?3)"
                     " AND (?4 IS NULL OR mb.address = ?4)"
                     " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message = m.id"
                     "  AND d.address = mb.address COLLATE NOCASE) ORDER BY 1, 4",
    "bounce_by_id": "SELECT received, source, status, cause, diagnostic FROM bounces WHERE id = ?",
    "status_counts": "SELECT (SELECT count(*) FROM messages WHERE state = 'queued'),"
                     " (SELECT count(*) FROM deliveries WHERE state = 'pending' AND attempts = 0)"
                     "  + (SELECT count(*) FROM messages m JOIN members mb ON mb.list_id = m.list_id"
                     "     WHERE m.member_cursor IS NOT NULL AND "
                     + AUDIENCE.format(created="m.created", poster="m.poster") +
                     "     AND mb.address > m.member_cursor),"
                     " (SELECT count(*) FROM deliveries WHERE state = 'pending' AND attempts > 0),"
                     " (SELECT count(*) FROM deliveries d JOIN messages m ON m.id = d.message"
                     "  WHERE d.state = 'sent' AND m.summarized = 0)"
                     "  + (SELECT coalesce(sum(sent_count), 0) FROM messages),"
                     " (SELECT count(*) FROM bounces"
                     "  WHERE action = 'failed' AND source IN ('verp', 'probe')),"
                     " (SELECT count(*) FROM deliveries d JOIN messages m ON m.id = d.message"
                     "  WHERE d.state = 'failed' AND m.summarized = 0)"
                     "  + (SELECT coalesce(sum(failed_count), 0) FROM messages WHERE summarized = 1),"
                     " (SELECT count(*) FROM deliveries d JOIN messages m ON m.id = d.message"
                     "  WHERE d.state = 'expired' AND m.summarized = 0)"
                     "  + (SELECT coalesce(sum(expired_count), 0) FROM messages WHERE summarized = 1),"
                     " (SELECT count(*) FROM held), (SELECT count(*) FROM digest_posts)",
    # bounces
    "add_bounce": "INSERT INTO bounces (list_id, address, received, source, action, status, diagnostic,"
                  " reporting_mta, counted, why, message_id, raw, cause, weight) VALUES (:list_id, :address,"
                  " :received, :source, :action, :status, :diagnostic, :reporting_mta, :counted, :why,"
                  " :message_id, :raw, :cause, :weight)",
    "probe_sent": "SELECT sent FROM probes WHERE list_id = ? AND address = ?",
    "probe_done": "INSERT OR REPLACE INTO probes (list_id, address, sent) VALUES (?, ?, ?)",
    "last_delivered": "SELECT message_id FROM (SELECT m.message_id, d.updated AS t FROM deliveries d"
                      " JOIN messages m ON m.id = d.message WHERE m.list_id = ?1 AND d.address = ?2"
                      " AND d.state = 'sent' AND m.kind = 'post' UNION ALL SELECT m.message_id, m.created"
                      " FROM messages m WHERE m.list_id = ?1 AND " + REACHED_MEMBER.format(a="?2")
                      + " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message = m.id"
                      " AND d.address = ?2 COLLATE NOCASE)) ORDER BY t DESC LIMIT 1",
    "disable_member": "UPDATE members SET status = 'disabled', disabled_reason = 'feedback', disabled_at = ?"
                      " WHERE list_id = ? AND address = ?",
    "unrecognised_since": "SELECT received, address, diagnostic FROM bounces WHERE list_id = ?"
                          " AND action = 'unrecognised' AND source IN ('verp', 'probe') AND received > ?"
                          " ORDER BY id LIMIT 50",
    "bounce_history": "SELECT received, address, source, action, status, diagnostic, reporting_mta, "
                      "counted, why, message_id, cause, weight FROM bounces WHERE list_id = ? ORDER BY id",
    "prune_raw_bounces": "UPDATE bounces SET raw = NULL WHERE raw IS NOT NULL AND received < ?",
    # the domain of a policy rejection is in its why: "policy rejection 5.7.1 at DOMAIN: ..."
    "policy_rejections": "SELECT b.list_id, substr(b.why, instr(b.why, ' at ') + 4,"
                         " instr(b.why, ':') - instr(b.why, ' at ') - 4) AS domain, count(*) AS n"
                         " FROM bounces b JOIN lists l ON l.id = b.list_id"
                         " WHERE b.why LIKE 'policy rejection %' AND b.received > ?"
                         " AND l.last_policy_alert < ? GROUP BY b.list_id, domain HAVING n >= ?",
    # held posts and confirmation tokens
    "add_held": "INSERT INTO held (list_id, received, sender, recipient, from_addr, subject, message_id,"
                " reason, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "held_by_id": "SELECT * FROM held WHERE id = ?",
    "delete_held": "DELETE FROM held WHERE id = ?",
    "expired_held": "SELECT id, list_id, message_id FROM held WHERE received < ?",
    "held_posts": "SELECT h.id, h.received, h.from_addr, h.sender, h.subject, h.reason,"
                  " length(h.raw) AS size, l.name, l.domain FROM held h JOIN lists l ON l.id = h.list_id"
                  " WHERE ? IS NULL OR h.list_id = ? ORDER BY h.id",
    "held_waiting": "SELECT h.id, h.received, h.from_addr, h.sender, h.subject, h.reason,"
                    " length(h.raw) AS size, (SELECT p.token FROM pending p WHERE p.held_id = h.id"
                    " AND p.used IS NULL AND p.expires > ?3 LIMIT 1) AS token FROM held h"
                    " WHERE h.list_id = ?1 AND h.received < ?2 ORDER BY h.id",
    "add_pending": "INSERT INTO pending (token, list_id, address, action, held_id, created, expires)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?)",
    "add_pending_command": "INSERT INTO pending (token, list_id, address, action, held_id, created, expires,"
                           " command) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "pending_by_token": "SELECT p.*, l.name || '@' || l.domain AS list FROM pending p"
                        " JOIN lists l ON l.id = p.list_id WHERE p.token = ?",
    "use_pending": "UPDATE pending SET used = ? WHERE token = ? AND used IS NULL",
    "open_request": "SELECT count(*) FROM pending WHERE list_id = ? AND address = ? AND action = ?"
                    " AND command = ? AND used IS NULL AND expires > ?",
    "open_request_token": "SELECT token FROM pending WHERE list_id = ? AND address = ? AND action = ?"
                          " AND command = ? AND used IS NULL AND expires > ? ORDER BY created DESC LIMIT 1",
    "renew_pending": "UPDATE pending SET expires = ? WHERE token = ? AND used IS NULL",
    # join requests waiting for the moderators (the daily summary, `pending` by email)
    "join_requests": "SELECT token, address, created, expires FROM pending WHERE list_id = ?"
                     " AND action = 'approve-subscribe' AND used IS NULL AND expires > ? AND created < ?"
                     " ORDER BY created",
    "open_pending": "SELECT p.token, p.action, p.address, p.held_id, p.created, p.expires,"
                    " l.name || '@' || l.domain AS list FROM pending p JOIN lists l ON l.id = p.list_id"
                    " WHERE p.used IS NULL AND p.expires > ? AND (? IS NULL OR p.list_id = ?)"
                    " ORDER BY p.created",
    "prune_pending": "DELETE FROM pending WHERE expires < ? AND created < ?",
    # the trace
    "add_event": "INSERT INTO events (received, message_id, list_id, recipient, sender, outcome,"
                 " reason, trace) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "events_of": "SELECT e.*, l.name || '@' || l.domain AS list FROM events e"
                 " LEFT JOIN lists l ON l.id = e.list_id WHERE e.message_id IN (?, ?, ?) ORDER BY e.id",
    "prune_events": "DELETE FROM events WHERE received < ?",
    # DNS caches and the automatic-reply log
    "dmarc_cache_get": "SELECT policy FROM dmarc_cache WHERE domain = ? AND expires > ?",
    "dmarc_cache_put": "INSERT OR REPLACE INTO dmarc_cache VALUES (?, ?, ?)",
    "dmarc_cache_prune": "DELETE FROM dmarc_cache WHERE expires < ?",
    "dnsbl_cache_get": "SELECT answer FROM dnsbl_cache WHERE name = ? AND expires > ?",
    "dnsbl_cache_put": "INSERT OR REPLACE INTO dnsbl_cache VALUES (?, ?, ?)",
    "dnsbl_cache_prune": "DELETE FROM dnsbl_cache WHERE expires < ?",
    "autoreply_last": "SELECT sent FROM autoreplies WHERE address = ? AND sender = ?",
    "autoreply_sent": "INSERT OR REPLACE INTO autoreplies VALUES (?, ?, ?)",
    "autoreplies_prune": "DELETE FROM autoreplies WHERE sent < ?",
    # digests
    "recent_post": "SELECT received FROM recent_posts WHERE list_id = ? AND key = ? AND received > ?",
    "add_recent_post": "INSERT OR REPLACE INTO recent_posts (list_id, key, received, poster)"
                       " VALUES (?, ?, ?, ?)",
    "posts_by": "SELECT count(*) FROM recent_posts WHERE list_id = ? AND poster = ? AND received > ?",
    # subject_tag %d: numbers are taken in a transaction of their own and never given out again
    "take_post_number": "UPDATE lists SET post_number = post_number + 1 WHERE id = ?",
    "post_number": "SELECT post_number FROM lists WHERE id = ?",
    "prune_recent_posts": "DELETE FROM recent_posts WHERE received < ?",
    "failure": "SELECT count FROM failures WHERE digest = ?",
    "add_failure": "INSERT INTO failures VALUES (?, 1, ?, ?, ?) ON CONFLICT (digest) DO UPDATE"
                   " SET count = count + 1, last = excluded.last, reason = excluded.reason",
    "prune_failures": "DELETE FROM failures WHERE last < ?",
    "add_digest_post": "INSERT INTO digest_posts (list_id, received, raw) VALUES (?, ?, ?)",
    "digest_backlog": "SELECT list_id, count(*) AS posts, sum(length(raw)) AS size, min(received) AS oldest,"
                      " max(id) AS last FROM digest_posts GROUP BY list_id",
    "digest_posts": "SELECT raw FROM digest_posts WHERE list_id = ? AND id <= ? ORDER BY id",
    "digest_members": "SELECT address, digest_format FROM members WHERE list_id = ? AND status = 'enabled'"
                      " AND digest = 1"
                      " ORDER BY address",
    "digest_done": "DELETE FROM digest_posts WHERE list_id = ? AND id <= ?",
    "digest_numbering": "UPDATE lists SET digest_volume = ?, digest_issue = ?, digest_last = ? WHERE id = ?",
    # the archive: permanent numbers (archived_posts) and the texts of the search (archive_texts)
    "archive_any": "SELECT 1 FROM archived_posts WHERE list_id = ? LIMIT 1",
    "archive_next": "SELECT coalesce(max(number), 0) + 1 FROM archived_posts WHERE list_id = ?",
    "add_archived_post": "INSERT INTO archived_posts (list_id, number, message_id, archived, date, month,"
                         " subject, author, thread, parent, subject_key, location, removed, removed_by)"
                         " VALUES (:list_id, :number, :message_id, :archived, :date, :month, :subject,"
                         " :author, :thread, :parent, :subject_key, :location, :removed, :removed_by)",
    "archive_drop": "DELETE FROM archived_posts WHERE id = ?",
    "archive_remove": "UPDATE archived_posts SET removed = ?, removed_by = ?, message_id = ?, subject = '',"
                      " author = '', subject_key = '' WHERE id = ?",
    "archived_post": "SELECT * FROM archived_posts WHERE list_id = ? AND number = ?",
    "archived_present": "SELECT * FROM archived_posts WHERE list_id = ? AND removed IS NULL ORDER BY number",
    "archived_removed": "SELECT * FROM archived_posts WHERE list_id = ? AND removed IS NOT NULL"
                        " ORDER BY number",
    "archived_by_message_id": "SELECT * FROM archived_posts WHERE list_id = ? AND message_id = ?"
                              " AND removed IS NULL ORDER BY number LIMIT 1",
    # msgid/: the first post ever archived under an ID (a removed one's by its gap_id)
    "archived_first_by_message_id": "SELECT * FROM archived_posts WHERE list_id = ? AND message_id IN (?, ?)"
                                    " ORDER BY number LIMIT 1",
    "archived_by_subject": "SELECT number, thread FROM archived_posts WHERE list_id = ? AND subject_key = ?"
                           " AND removed IS NULL AND date > ? ORDER BY number DESC LIMIT 1",
    "archived_month": "SELECT * FROM archived_posts WHERE list_id = ? AND month = ? AND removed IS NULL"
                      " ORDER BY number",
    "archived_thread": "SELECT * FROM archived_posts WHERE list_id = ? AND thread = ? AND removed IS NULL"
                       " ORDER BY number",
    "archived_thread_sizes": "SELECT thread, count(*) FROM archived_posts WHERE list_id = ?1"
                             " AND removed IS NULL AND thread IN (SELECT thread FROM archived_posts"
                             " WHERE list_id = ?1 AND month = ?2) GROUP BY thread",
    "archived_months": "SELECT month, count(*) FROM archived_posts WHERE list_id = ? AND removed IS NULL"
                       " GROUP BY month",
    "archived_latest": "SELECT * FROM archived_posts WHERE list_id = ? AND removed IS NULL"
                       " ORDER BY number DESC LIMIT ?",
    "archived_count": "SELECT count(*) FROM archived_posts WHERE list_id = ? AND removed IS NULL",
    "archived_range": "SELECT * FROM archived_posts WHERE list_id = ? AND removed IS NULL"
                      " AND number BETWEEN ? AND ? ORDER BY number LIMIT ?",
    "add_archive_text": "INSERT INTO archive_texts (post, subject, author, body, text)"
                        " VALUES (?, ?, ?, ?, ?)",
    "delete_archive_text": "DELETE FROM archive_texts WHERE post = ?",
    "archive_text": "SELECT text FROM archive_texts WHERE post = ?",
    "archive_texts_of_list": "SELECT t.post FROM archive_texts t JOIN archived_posts p ON p.id = t.post"
                             " WHERE p.list_id = ?",
    # the search index: FTS5 over archive_texts (external content), made at run time where SQLite has it
    "compile_options": "PRAGMA compile_options",
    "search_index_exists": "SELECT count(*) FROM sqlite_master WHERE name = 'archive_fts'",
    "create_search_index": "CREATE VIRTUAL TABLE IF NOT EXISTS archive_fts USING fts5(subject, author, body,"
                           " content='archive_texts', content_rowid='post', columnsize=0,"
                           " tokenize='unicode61 remove_diacritics 0')",
    "rebuild_search_index": "INSERT INTO archive_fts (archive_fts) VALUES ('rebuild')",
    "index_archive_text": "INSERT INTO archive_fts (rowid, subject, author, body) VALUES (?, ?, ?, ?)",
    "unindex_archive_text": "INSERT INTO archive_fts (archive_fts, rowid, subject, author, body)"
                            " SELECT 'delete', post, subject, author, body FROM archive_texts WHERE post = ?",
    # CROSS JOIN: the matches lead (else SQLite may walk every post by date and ask FTS5 of each)
    "search_index": "SELECT p.* FROM archive_fts f CROSS JOIN archived_posts p ON p.id = f.rowid"
                    " WHERE archive_fts MATCH ? AND p.list_id = ? AND p.removed IS NULL AND p.date >= ?"
                    " AND p.date < ? ORDER BY p.date DESC, p.number DESC LIMIT ? OFFSET ?",
    "search_scan": "SELECT p.*, t.subject AS s, t.author AS a, t.body AS b FROM archived_posts p"
                   " JOIN archive_texts t ON t.post = p.id WHERE p.list_id = ? AND p.removed IS NULL"
                   " AND p.date >= ? AND p.date < ? ORDER BY p.date DESC, p.number DESC",
    # the Postfix map, a database of its own (POSTFIX_MAP_SCHEMA)
    "map_clear_domains": "DELETE FROM domains",
    "map_clear_addresses": "DELETE FROM addresses",
    "map_domain": "INSERT OR IGNORE INTO domains VALUES (?)",
    "map_address": "INSERT OR IGNORE INTO addresses VALUES (?)",
}


# ---------------------------------------------------------------------------
# 5. Store: transactions, spool files and the Outbox
# Owns: Store (connections, transactions, schema upgrades), spool files, the Outbox (mail and the changes
#       that commit with it), a post's recipients (ListMembers, member_stream) and the archive's search
#       index (FTS5, kept in step with archive_texts).
# Calls: sections 2-4.
# ---------------------------------------------------------------------------

class Store:
    """The SQLite database: one connection, explicit transactions.  WAL lets
    ``queue`` processes write while ``send`` runs; the busy timeout makes
    concurrent writers wait instead of failing.  ``durable`` selects
    synchronous=FULL: ``queue`` must not say "accepted" before the post is
    on disk, while ``send`` only needs its outcomes to survive a killed
    process (WAL with synchronous=NORMAL), which is much cheaper."""

    def __init__(self, path, busy_timeout=10.0, durable=True, create=False):
        self.path = path
        if not create and not os.path.exists(path):
            raise ConfigError(f"database {path} does not exist; run 'redsky.py init' first")
        fresh = not os.path.exists(path)
        if create:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        self.db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        self.gave_up_waiting = False    # a wait hit busy_timeout: later ones do not wait again
        if fresh:                   # SQLite creates 0644 whatever the umask; [redsky] umask decides
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(path, 0o666 & ~mask)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            if not create:
                raise ConfigError(f"database {path} has no redsky schema; run 'redsky.py init'")
            self.db.execute("PRAGMA auto_vacuum = INCREMENTAL")     # freed pages go back (housekeeping)
            self.db.execute("PRAGMA journal_mode = WAL")
            with self.transaction():
                upgrade_schema(self.db)                 # from nothing: every table and index
                self.q("add_meta", "verp_key", os.urandom(16).hex())
        elif version < SCHEMA_VERSION:
            self.upgrade()
        elif version != SCHEMA_VERSION:
            raise SchemaTooNew(f"database {path} has schema version {version}, newer than this redsky"
                               f" {__version__} (schema {SCHEMA_VERSION}): install the redsky that made it"
                               f" again, or restore the copy its upgrade left ({path}.schema-*.bak)")

    def upgrade(self):
        """Upgrade an older database in place (upgrade_schema), under the write lock, so that of
        several processes that open it at once one upgrades and the others find it done; a copy
        of it as it was goes to DATABASE.schema-N.bak first (N: its schema version)."""
        self.db.execute("PRAGMA foreign_keys = OFF")
        with self.transaction():
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                backup = f"{self.path}.schema-{version}.bak"
                _unlink_quietly(backup)
                source, copy = sqlite3.connect(self.path), sqlite3.connect(backup)
                try:                # a second connection reads what is committed: the database as it was
                    source.backup(copy)
                finally:
                    copy.close()
                    source.close()
                upgrade_schema(self.db)
        self.db.execute("PRAGMA foreign_keys = ON")
        if version < SCHEMA_VERSION:
            if self.db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                self.db.execute("PRAGMA auto_vacuum = INCREMENTAL")
                self.db.execute("VACUUM")           # once: auto_vacuum takes effect only so
            self.db.execute("PRAGMA journal_mode = WAL")
            log.warning("database %s upgraded from schema version %d to %d (redsky %s); as it was: %s",
                        self.path, version, SCHEMA_VERSION, __version__, backup)

    def transaction(self):
        return _Transaction(self)

    @property
    def verp_key(self):
        row = self.q("meta", "verp_key").fetchone()
        return row[0] if row else ""

    def q(self, name, *args):
        return self.db.execute(SQL[name], args)

    def vacuum(self, pages=10_000):
        """Give up to ``pages`` free pages back to the file system (auto_vacuum = INCREMENTAL)."""
        self.db.execute(f"PRAGMA incremental_vacuum({int(pages)})").fetchall()

    def relax(self):
        """synchronous=NORMAL from now on: for writes worth no extra fsync (the trace)."""
        self.db.execute("PRAGMA synchronous = NORMAL")

    def list_by_id(self, list_id):
        return dict(self.q("list_by_id", list_id).fetchone())

    def held(self, held_id):
        row = self.q("held_by_id", held_id).fetchone()
        return dict(row) if row else None

    def add_list(self, db, values):
        unknown = set(values) - set(LIST_COLUMNS.replace(",", " ").split())
        assert not unknown, unknown
        return db.execute(SQL["add_list"].format(columns=", ".join(values),
                                                 marks=", ".join("?" * len(values))),
                          tuple(values.values())).lastrowid

    def set_list(self, db, list_id, column, value):
        assert column in LIST_COLUMNS.replace(",", " ").split() and column != "id", column
        db.execute(SQL["set_list"].format(column=column), (value, list_id))

    def list_by_address(self, address):
        """The list whose post address is ``address`` (case-insensitive), or None."""
        local, _, domain = address.rpartition("@")
        row = self.q("list_by_address", local, domain).fetchone()
        return dict(row) if row else None

    def require_list(self, address):
        row = self.list_by_address(address)
        if row is None:
            raise Failure(f"no such list: {address}", EX_NOUSER)
        return row

    def close(self):
        self.db.close()


def upgrade_schema(db):
    """Make the schema of the database SCHEMA, whatever redsky made it: a table or index it lacks
    is created; a table whose definition differs is made anew from SCHEMA with the data of the
    columns both have (SQLite cannot change a column or a constraint in place); an index that
    differs is made again; what SCHEMA no longer has goes.  Then each data migration newer than the
    database runs.  The caller holds the write lock, with foreign keys off (a table made anew must
    not cascade), and has backed the database up."""
    old_version = db.execute("PRAGMA user_version").fetchone()[0]
    have = {name: (kind, table, " ".join(sql.split())) for kind, name, table, sql in db.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL"
        " AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'archive_fts%'")}
    wanted = {}
    db.execute("PRAGMA legacy_alter_table = ON")    # a rename leaves other tables' REFERENCES alone
    for statement in _sql_statements(SCHEMA):
        created = re.match(r"CREATE (?:UNIQUE )?(TABLE|INDEX|TRIGGER) (\w+)", statement)
        if created is None:                 # PRAGMA user_version: set last
            continue
        kind, name = created.groups()
        wanted[name] = statement
        if have.get(name, (0, 0, ""))[2] == " ".join(statement.split()):
            continue
        if kind != "TABLE":
            db.execute(f"DROP {kind} IF EXISTS {name}")
            db.execute(statement)
        elif name not in have:
            db.execute(statement)
        else:
            db.execute(f"ALTER TABLE {name} RENAME TO redsky_old_{name}")
            db.execute(statement)
            old = {row[1] for row in db.execute(f"PRAGMA table_info(redsky_old_{name})")}
            columns = ", ".join(row[1] for row in db.execute(f"PRAGMA table_info({name})") if row[1] in old)
            db.execute(f"INSERT INTO {name} ({columns}) SELECT {columns} FROM redsky_old_{name}")
            db.execute(f"DROP TABLE redsky_old_{name}")
            have = {n: v for n, v in have.items() if v[0] == "table" or v[1] != name}  # gone with it
    for name, (kind, _, _) in have.items():
        if name not in wanted:
            quoted = '"' + name.replace('"', '""') + '"'       # a name as it is, whatever it holds
            db.execute(f"DROP {kind.upper()} IF EXISTS {quoted}")
    db.execute("PRAGMA legacy_alter_table = OFF")
    for version in range(old_version + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS.get(version, ()):
            db.execute(statement)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _column_definitions(create_table):
    """The column definitions of a CREATE TABLE as written in SCHEMA: one per
    line at four spaces, continued on more deeply indented lines."""
    columns = []
    for line in create_table.splitlines()[1:]:
        if re.match(r"    [a-z_]+ ", line):
            columns.append(line.strip())
        elif line.startswith("     ") and columns:
            columns[-1] += " " + line.strip()
    return [c.rstrip(",") for c in columns]


def schema_choices(table):
    """{column: allowed values} from the ``CHECK (column IN (...))``
    constraints of ``table`` in SCHEMA, the one source of those choices."""
    create = next(s for s in _sql_statements(SCHEMA) if s.startswith(f"CREATE TABLE {table} "))
    return {m.group(1): tuple(re.findall(r"'([^']*)'", m.group(2)))
            for m in re.finditer(r"CHECK \((\w+) IN \(([^)]*)\)\)", create)}


def _sql_statements(script):
    """Split the schema into statements (it holds no ';' inside strings; a trigger's ends at END)."""
    statements = []
    for piece in "\n".join(line.split("--", 1)[0] for line in script.splitlines()).split(";"):
        if statements and statements[-1].startswith("CREATE TRIGGER") and not statements[-1].endswith("END"):
            statements[-1] += ";\n" + piece.strip()
        elif piece.strip():
            statements.append(piece.strip())
    return statements


class _Transaction:
    """``with store.transaction():`` — BEGIN IMMEDIATE ... COMMIT, or ROLLBACK.
    Storage errors (disk full, locked, I/O) come out as StoreError.  A
    process waits for a locked database at most [redsky] busy_timeout in
    all: once a wait has run out, later transactions do not wait again (a
    `queue` that must say "try later" says it after busy_timeout, not after
    each of its writes has waited that long)."""

    def __init__(self, store):
        self.store, self.db = store, store.db

    def __enter__(self):
        if self.store.gave_up_waiting:
            self.db.execute("PRAGMA busy_timeout = 0")
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            if "locked" in str(e) or "busy" in str(e):
                self.store.gave_up_waiting = True
            raise StoreError(f"database {self.store.path}: {e}") from e
        return self.db

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise StoreError(f"database {self.store.path}: {e}") from e
            return False
        self._rollback()
        if issubclass(exc_type, sqlite3.Error) and not issubclass(exc_type, sqlite3.IntegrityError):
            raise StoreError(f"database {self.store.path}: {exc}") from exc     # full, locked, I/O
        return False

    def _rollback(self):
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def open_store(config, durable=True, create=False):
    """The database, with [redsky] umask in force first: whatever redsky writes (spool, archive,
    pages, the database) it writes after opening the store, so the mask is the config's in every
    mode, main() or not (CGI, a WSGI server's `application`, lmtp after SIGHUP)."""
    os.umask(config.umask)
    refuse_unshared_writes(config)
    try:
        return Store(config.database, config.duration("redsky", "busy_timeout"), durable, create)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open database {config.database}: {e}")
    except PermissionError as e:
        raise Failure(f"cannot open database {config.database}: {e.strerror}", EX_NOPERM)


# The search index: SQLite FTS5 over archive_texts where this SQLite has it (its compile options
# say so, at run time), kept in step in the transactions that change the texts; a process without
# FTS5 changes the texts alone, and the counters in meta tell an index left behind, which the
# search then does not use (search_index_ready) and the next writer with FTS5 makes again.
FTS5 = None         # None: ask SQLite; False: never (the tests force the fallback so)


def fts5_available(db):
    global FTS5
    if FTS5 is None:
        FTS5 = any(row[0] == "ENABLE_FTS5" for row in db.execute(SQL["compile_options"]))
    return FTS5


def _meta_number(db, key, default=0):
    row = db.execute(SQL["meta"], (key,)).fetchone()
    return int(row[0]) if row else default


def search_index_ready(db):
    """Whether the FTS5 index exists here and holds every change of the texts."""
    return fts5_available(db) and bool(db.execute(SQL["search_index_exists"]).fetchone()[0]) \
        and _meta_number(db, "search_indexed", -1) == _meta_number(db, "search_changes")


def _search_index(db):
    """Inside the caller's transaction: make the FTS5 index current (created, or made again from
    the texts when a process without FTS5 changed them); True when there is one to keep in step."""
    if not fts5_available(db):
        return False
    if not search_index_ready(db):
        db.execute(SQL["create_search_index"])
        db.execute(SQL["rebuild_search_index"])
        db.execute(SQL["set_meta"], ("search_indexed", str(_meta_number(db, "search_changes"))))
    return True


def _search_changed(db, indexed):
    changes = _meta_number(db, "search_changes") + 1
    db.execute(SQL["set_meta"], ("search_changes", str(changes)))
    if indexed:
        db.execute(SQL["set_meta"], ("search_indexed", str(changes)))


def index_texts(db, rows):
    """Add (post id, subject, author, body, text) rows to the search, in the caller's transaction."""
    indexed = _search_index(db)
    for row in rows:
        db.execute(SQL["add_archive_text"], row)
        if indexed:
            db.execute(SQL["index_archive_text"], row[:4])
    _search_changed(db, indexed)


def unindex_texts(db, post_ids):
    """Take posts' texts out of the search, in the caller's transaction."""
    indexed = _search_index(db)
    for post_id in post_ids:
        if indexed:
            db.execute(SQL["unindex_archive_text"], (post_id,))
        db.execute(SQL["delete_archive_text"], (post_id,))
    _search_changed(db, indexed)


def refuse_unshared_writes(config):
    """A process that is neither root nor the owner of data_dir (the web server's user running the
    CGI script) makes files the owner must then read and write: the database's -wal and -shm,
    spool files.  They take this process's group, unless data_dir is set-group-ID, and the mode
    [redsky] umask leaves.  When the owner could not use them, refuse before anything is written:
    a -wal file the owner cannot open stops every `queue` (README: As CGI)."""
    uid = os.geteuid()
    try:
        st = os.stat(config.data_dir)
    except OSError:
        return                                  # not there yet: opening the store says why
    if 0 in (uid, st.st_uid) or uid == st.st_uid or not config.umask & 0o006:
        return                                  # the owner, root (reads anything), or files anyone may use
    import grp
    import pwd

    def name_of(lookup, key):
        try:
            return lookup(key)[0]
        except (KeyError, TypeError):
            return str(key)
    setgid = st.st_mode & 0o2000
    group = st.st_gid if setgid else os.getegid()
    owner, me = name_of(pwd.getpwuid, st.st_uid), name_of(pwd.getpwuid, uid)
    gname = name_of(grp.getgrgid, group)
    try:
        owner_gid = pwd.getpwuid(st.st_uid).pw_gid
    except KeyError:
        owner_gid = None
    try:
        shared = owner_gid == group or owner in grp.getgrgid(group).gr_mem
    except KeyError:
        shared = False
    share = (f"set [web] user = {me} and [web] cgi = yes, then run `redsky.py init` as root (README: As CGI),"
             f" or run this as {owner}")
    if not setgid and not shared:
        why = f"{config.data_dir} is not set-group-ID, so they would be group {gname}, closed to {owner}"
    elif group != os.getegid() and group not in os.getgroups():
        why, share = (f"{me} is not in {config.data_dir}'s group {gname}",
                      f"run as root: adduser {me} {gname}, then restart the web server")
    elif not shared:
        why, share = (f"{owner} is not in {config.data_dir}'s group {gname}",
                      f"run as root: chgrp {name_of(grp.getgrgid, owner_gid)} {config.data_dir}, then"
                      " `redsky.py init`")
    elif config.umask & 0o060:
        why, share = (f"[redsky] umask = {config.umask:03o} closes them to the group",
                      "set [redsky] umask = 007")
    else:
        return
    raise Failure(f"{me} cannot share {config.data_dir} with {owner}, its owner, who must read and write"
                  f" what {me} would write there: {why}; {share}", EX_NOPERM)


# Postfix reads the list addresses from a small SQLite file of its own, never the live database:
# no WAL files it would need to write, no lock of ours it could meet, and members' addresses stay
# private.  redsky makes it once (write, fsync, rename) and then changes it in place, in one
# transaction: Postfix's daemons keep the file open, so a file replaced by rename would go on
# answering from the old lists until they restart, while a change in place is seen at their next
# lookup (SQLite rereads a file another process changed).
POSTFIX_MAP_SCHEMA = """\
CREATE TABLE domains (domain TEXT PRIMARY KEY);
CREATE TABLE addresses (address TEXT PRIMARY KEY);
"""


def write_postfix_map(path, domains, addresses):
    def fill(db):
        db.execute("BEGIN IMMEDIATE")
        db.execute(SQL["map_clear_domains"])
        db.execute(SQL["map_clear_addresses"])
        db.executemany(SQL["map_domain"], [(d,) for d in sorted(domains)])
        db.executemany(SQL["map_address"], [(a,) for a in sorted(addresses)])
        db.execute("COMMIT")
    if os.path.exists(path):
        db = sqlite3.connect(path, timeout=10, isolation_level=None)
        try:
            try:
                ours = db.execute("PRAGMA journal_mode").fetchone()[0] == "delete" and \
                    {r[0] for r in db.execute("SELECT name FROM sqlite_master")} >= {"domains", "addresses"}
            except sqlite3.DatabaseError:   # not a database: made anew below
                ours = False
            if ours:
                db.execute("PRAGMA synchronous = FULL")
                return fill(db)
        finally:
            db.close()
    tmp = f"{path}.{os.getpid()}.tmp"
    _unlink_quietly(tmp)
    db = sqlite3.connect(tmp, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = DELETE")
        db.executescript(POSTFIX_MAP_SCHEMA)
        fill(db)
    finally:
        db.close()
    os.chmod(tmp, 0o644)                   # Postfix's daemons (user postfix) read it
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.rename(tmp, path)


def write_synced(path, data):
    """Create ``path`` (it must not exist; [redsky] umask applies), write
    ``data`` and fsync it; on any failure nothing is left behind."""
    with open(path, "xb") as fh:
        try:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        except BaseException:
            _unlink_quietly(path)
            raise


def write_spool(spool_dir, data):
    """Write ``data`` to a new spool file atomically; return its name."""
    tmp_dir = os.path.join(spool_dir, "tmp")
    os.makedirs(tmp_dir, exist_ok=True)
    name = f"{time.time():.6f}.{os.getpid()}.{os.urandom(4).hex()}.eml"
    tmp = os.path.join(tmp_dir, name)
    write_synced(tmp, data)
    os.rename(tmp, os.path.join(spool_dir, name))
    dir_fd = os.open(spool_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return name


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


class Outbox:
    """Messages to queue together with a database change, atomically:
    ``commit`` writes the spool files first, then runs ``change(db)`` and
    every change (callables of db) and records every message with its
    deliveries, in one transaction.  If anything fails, the spool files are
    removed and nothing is recorded: an action and the notice that reports
    it happen together or not at all (StoreError)."""

    def __init__(self, dry_run=False):
        self.items = []             # (list_id, kind, message_id, data, recipients, sender)
        self.changes = []           # database changes that commit with them
        self.dry_run = dry_run      # --dry-run: decide everything, store nothing

    def add(self, list_id, kind, message_id, data, recipients, sender=""):
        """``recipients``: addresses, or ListMembers (no row per member)."""
        if recipients:
            self.items.append((list_id, kind, message_id, data,
                               recipients if isinstance(recipients, ListMembers) else list(recipients),
                               sender))

    def commit(self, store, spool, change=None):
        if self.dry_run:
            count, self.items, self.changes = len(self.items), [], []
            return [None] * count
        names = []
        try:
            for item in self.items:
                names.append(write_spool(spool, item[3]))
            with store.transaction() as db:
                for fn in [change] * (change is not None) + self.changes:
                    fn(db)
                ids = []
                for (list_id, kind, message_id, data, recipients, sender), name in zip(self.items, names):
                    to_members = isinstance(recipients, ListMembers)
                    cur = store.q("add_message", list_id, kind, message_id, name, len(data), time.time(),
                                  sender, int(to_members), to_members,
                                  recipients.poster if to_members else "")
                    if not to_members:
                        db.executemany(SQL["add_delivery"], ((cur.lastrowid, r) for r in recipients))
                    ids.append(cur.lastrowid)
        except BaseException as e:             # nothing recorded: no spool file may stay
            for name in names:
                _unlink_quietly(os.path.join(spool, name))
            if isinstance(e, OSError) and len(names) < len(self.items):    # a spool file failed
                raise StoreError(f"cannot write spool file in {spool}: {e.strerror}")
            if isinstance(e, (sqlite3.Error, OSError, StoreError)):
                raise StoreError(f"cannot record in the database: {e}") from e
            raise
        self.items, self.changes = [], []
        return ids


class ListMembers:
    """The recipients of a post to a list: its members enabled for single
    posts when `send` reaches them (messages.member_cursor), counted at
    queue time, never loaded: a post to 100,000 members costs one row."""

    def __init__(self, store, list_id, count, poster=""):
        self.store, self.list_id, self.count = store, list_id, count
        self.poster = poster        # a member with notmetoo who sent the post: not a recipient

    def __len__(self):
        return self.count

    def __iter__(self):
        return (address for address, _ in member_stream(self.store, self.list_id, time.time(), "",
                                                       self.poster))


class MemberLookup:
    """``address in members`` for one list, by the unique index (case-insensitive)."""

    def __init__(self, store, list_id):
        self.store, self.list_id = store, list_id

    def __contains__(self, address):
        return self.store.q("member_status", self.list_id, address).fetchone() is not None


def member_stream(store, list_id, created, after, poster="", chunk=1000):
    """(address, None) of the list's members enabled for single posts whose
    address sorts after ``after``, in address order, read in chunks (keyset
    pagination: memory stays flat however long the list), except ``poster``.
    None: the attempts of a recipient with no deliveries row yet."""
    while True:
        cursor = store.q("member_stream", list_id, created, poster, after, chunk)
        cursor.row_factory = None
        rows = cursor.fetchall()
        for (address,) in rows:
            yield address, None
        if len(rows) < chunk:
            return
        after = rows[-1][0]


def member_addresses(store, list_id):
    return [r["address"] for r in store.q("members", list_id)]


# ---------------------------------------------------------------------------
# 6. Mail primitives
# Owns: RawMessage, addresses (and hiding them), list headers, dates and Message-IDs, footers, the subject
#       tag, DMARC rewriting, is_robot, the SMTP wire form of a message, HTML to text, text folded for
#       searching.
# Calls: sections 2-5.
# ---------------------------------------------------------------------------

_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")     # RFC 5322 field name, then ':'
_ADDR_SPEC = re.compile(
    r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    # qtext and quoted-pair (RFC 5322 3.2.4), non-ASCII as RFC 6531 allows, but no control character:
    # an address goes into header fields, where CR, LF, VT, FF, NEL or U+2028 could end one
    r'|"(?:[ !#-\[\]-~\u00a0-\u2027\u202a-\U0010ffff]|\\[\t -~])+")'
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])")


def valid_address(address):
    """True for a plain addr-spec (RFC 5322 dot-atom or quoted local part)
    that cannot be mistaken for a command-line option."""
    return bool(address) and not address.startswith("-") and len(address) <= 254 \
        and _ADDR_SPEC.fullmatch(address) is not None


def normalize_address(address):
    """The one canonical form of an address, for every comparison and every
    stored address: the domain lower-cased, a quoted local part unquoted
    when it needs no quotes ("victim" and "vic\\tim" are victim, RFC 5321
    4.1.2).  The local part keeps its case (the receiver's business);
    stored addresses compare case-insensitively."""
    local, _, domain = address.strip().rpartition("@")
    if len(local) > 2 and local[0] == '"' and local[-1] == '"':
        inner = re.sub(r"\\(.)", r"\1", local[1:-1])
        if _DOT_ATOM.fullmatch(inner):
            local = inner
    return f"{local}@{domain.lower()}"


_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def mailbox_key(address):
    """The mailbox an address reaches, as every per-address limit counts it: the local part
    unquoted, without its subaddress (from the first '+': bob+lists@ and bob+1@ reach bob@, RFC
    5233), both parts in lower case.  Only limits fold; members stay their full address."""
    local, _, domain = address.strip().rpartition("@")
    if len(local) > 1 and local[0] == '"' and local[-1] == '"':
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    user = local.split("+", 1)[0] or "+"         # +1@ and +2@ are one mailbox too
    return f"{user.lower()}@{domain.lower()}"


_NOT_A_FOLD = re.compile(rb"\r?\n(?![ \t])|\r(?!\n)|\x00")


class RawMessage:
    """A message kept as bytes: the header fields exactly as received, and
    the body untouched.  Edits touch only the fields they name, so a message
    passed through without tag or footer keeps its original bytes."""

    def __init__(self, raw):
        nl = raw.find(b"\n")
        self.eol = b"\r\n" if nl > 0 and raw[nl - 1:nl] == b"\r" else b"\n"
        self.fields = []          # raw bytes of each field, continuation lines included
        pos, size, self.separator = 0, len(raw), b""
        while pos < size:
            end = raw.find(b"\n", pos)
            end = size if end < 0 else end + 1
            line = raw[pos:end]
            if line in (b"\n", b"\r\n"):
                self.separator, pos = line, end
                break
            if line[:1] in (b" ", b"\t") and self.fields:
                self.fields[-1] += line
            elif _FIELD.match(line):            # obsolete syntax (RFC 5322 4.5): read, never written
                colon = line.index(b":")
                self.fields.append(line if line[colon - 1:colon] not in (b" ", b"\t") else
                                   line[:colon].rstrip(b" \t") + line[colon:])
            else:
                break             # not a header line: the body starts here (as Postfix does)
            pos = end
        self.body = raw[pos:]

    def __bytes__(self):
        return b"".join(self.fields) + self.separator + self.body

    @staticmethod
    def name_of(field):
        return field.split(b":", 1)[0].strip().decode("ascii", "replace").lower()

    @staticmethod
    def value_of(field):
        """The unfolded field value as text (8-bit bytes read as UTF-8)."""
        value = field.split(b":", 1)[1].decode("utf-8", "replace")
        return re.sub(r"\r?\n(?=[ \t])", "", value).strip()

    def get_all(self, name):
        name = name.lower()
        return [self.value_of(f) for f in self.fields if self.name_of(f) == name]

    def get(self, name, default=None):
        return next(iter(self.get_all(name)), default)

    def remove(self, *names):
        names = {n.lower() for n in names}
        self.fields = [f for f in self.fields if self.name_of(f) not in names]

    def append(self, name, value):
        """Add a field at the end of the header (value is text, made one line
        by one_line; 8-bit is written as UTF-8, RFC 6532)."""
        if self.fields and not self.fields[-1].endswith(b"\n"):
            self.fields[-1] += self.eol
        self.fields.append(f"{name}: {one_line(value, 100_000)}".encode("utf-8") + self.eol)
        if not self.separator:
            self.separator = self.eol

    def replace_raw(self, name, raw_value):
        """Replace the first ``name`` field's value by ``raw_value`` bytes (folding kept as given;
        any other CR, LF or NUL becomes a space); add the field when missing."""
        raw_value = _NOT_A_FOLD.sub(b" ", raw_value)
        for i, f in enumerate(self.fields):
            if self.name_of(f) == name.lower():
                self.fields[i] = f.split(b":", 1)[0] + b": " + raw_value + self.eol
                return
        if self.fields and not self.fields[-1].endswith(b"\n"):
            self.fields[-1] += self.eol
        self.fields.append(name.encode("ascii") + b": " + raw_value + self.eol)

    def raw_value(self, name):
        return next((f.split(b":", 1)[1].strip(b" \t\r\n") for f in self.fields
                     if self.name_of(f) == name.lower()), None)

    def header_message(self):
        from email.parser import BytesHeaderParser
        from email import policy
        return BytesHeaderParser(policy=policy.compat32).parsebytes(b"".join(self.fields) + self.eol)


def decode_header_text(value):
    """An RFC 2047 header value as text, in linear time (the email package's decoder is quadratic on
    unclosed encoded-words): each encoded-word is decoded, white space between two of them is
    dropped (RFC 2047 6.2), and one that cannot be decoded stays as written."""
    value = str(value or "")
    if "=?" not in value:
        return value
    out, pos, after_word = [], 0, False
    for m in _ENCODED_WORD.finditer(value):
        between = value[pos:m.start()]
        if between and not (after_word and not between.strip()):
            out.append(between)
        text = _decode_word(*m.groups())
        out.append(m.group(0) if text is None else text)
        after_word, pos = text is not None, m.end()
    out.append(value[pos:])
    return "".join(out)


# charset (RFC 2231 may add *language), encoding, encoded text: no white
# space and no '?' inside, so a failed match costs a bounded scan
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,60})\?([bBqQ])\?([^?\s]*)\?=")


def _decode_word(charset, encoding, text):
    import binascii
    try:
        if encoding in "bB":
            data = binascii.a2b_base64(text + "=" * (-len(text) % 4))
        else:
            data = binascii.a2b_qp(text.replace("_", " "), header=True)
        return data.decode(charset.split("*", 1)[0], "replace")
    except (binascii.Error, LookupError, ValueError):
        return None


def addresses_in(values):
    """The plain addresses (normalize_address) in header values, in order."""
    return [address for _, address in mailboxes(values)]


def mailboxes(values):
    """(display name, address) of every mailbox in header values, read in linear time up to 64 KB
    each, comments removed: the addr-spec is what stands in <angle brackets>, else the whole
    element; elements are separated by commas outside quotes and brackets (RFC 5322 3.4)."""
    found = []
    for value in values:
        text, raw, angles = [], [], []
        for token in _MAILBOX_TOKEN.findall(_without_comments(str(value)[:65536])):
            if token == ",":
                found += _mailbox("".join(text), "".join(raw), angles)
                text, raw, angles = [], [], []
            elif token.startswith("<"):
                angles.append(token.strip("<>"))
            else:
                raw.append(token)
                text.append(re.sub(r"\\(.)", r"\1", token[1:-1]) if token.startswith('"') else token)
        found += _mailbox("".join(text), "".join(raw), angles)
    return found


_MAILBOX_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|<[^<>]*>?|,|[^",<]+|[<>]', re.S)


def _mailbox(text, raw, angles):
    if angles:
        name, address = one_line(text).strip('" '), re.sub(r"^(@[^:]*:)", "", angles[-1].strip())
    else:
        name, address = "", re.sub(r'^[^@"]*:', "", raw.strip()).rstrip(";").strip()
    return [(name, normalize_address(address))] if "@" in address else []


def _without_comments(value):
    """``value`` with its (nested) RFC 5322 comments removed, quoted strings kept."""
    if "(" not in value:
        return value
    out, depth, pos, quoted = [], 0, 0, False
    for m in re.finditer(r'\\.|[()"]', value, re.S):
        char = m.group(0)
        if depth == 0 and not (char == "(" and not quoted):
            out.append(value[pos:m.end()])
        if char == '"' and depth == 0:
            quoted = not quoted
        elif char == "(" and not quoted:
            if depth == 0:
                out.append(value[pos:m.start()] + " ")
            depth += 1
        elif char == ")" and not quoted and depth:
            depth -= 1
        pos = m.end()
    out.append(value[pos:] if depth == 0 else "")
    return "".join(out)


# Re: Fwd: AW: SV: WG: Antw: TR: [2]: and [tags], the prefixes mail clients and lists put before a subject
_SUBJECT_PREFIX = re.compile(
    r"[ \t]*(?:(?:re|aw|sv|fwd?|wg|antw|tr)[ \t]*(?:\[\d{1,4}\][ \t]*)?:|\[[^\]\r\n]{0,60}\]:?)", re.I)


def without_prefixes(subject):
    """``subject`` without its reply and forward prefixes and [tags], one at a time (linear)."""
    pos, m = 0, _SUBJECT_PREFIX.match(subject)
    while m is not None:
        pos = m.end()
        m = _SUBJECT_PREFIX.match(subject, pos)
    return subject[pos:].strip()


def one_line(text, limit=200):
    """The one sanitiser of text taken out of a message for a header field or a summary line: every
    run of white space and control characters (CR, LF, NUL ...) becomes one space, so it can neither
    start a field nor end the header (RFC 5322 2.2); at most ``limit`` characters."""
    return _NOT_ONE_LINE.sub(" ", str(text or "")).strip()[:limit]


_NOT_ONE_LINE = re.compile(r"[\s\x00-\x1f\x7f]+")


def is_robot(msg, sender, strict=True):
    """Why a message comes from a robot (RFC 3834 2), or None: the one robot detector of the
    program.  ``strict`` adds what redsky never answers and whose commands never count: bulk and
    list mail, auto-reply subjects, and MAILER-DAEMON, postmaster, -bounces and owner- senders."""
    if sender == "":
        return "null envelope sender"
    auto = (msg.get("Auto-Submitted") or "no").split(";")[0].strip().lower()
    if auto != "no":
        return f"Auto-Submitted: {auto}"
    if (msg.get("Content-Type") or "").lower().startswith("multipart/report"):
        return "a delivery or disposition report"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Vacation"):
        if msg.get(name) is not None:
            return f"an automatic reply ({name})"
    if strict:
        precedence = (msg.get("Precedence") or "").strip().lower()
        if precedence in ("bulk", "junk", "list", "auto_reply"):
            return f"Precedence: {precedence}"
        for name in ("List-Id", "List-Post", "List-Unsubscribe", "X-Loop"):
            if msg.get(name) is not None:
                return f"a list's copy ({name})"
        if AUTO_REPLY_SUBJECT.search(decode_header_text(msg.get("Subject") or "")):
            return f"an automatic reply (Subject: {one_line(decode_header_text(msg.get('Subject')), 60)})"
        for address in addresses_in(msg.get_all("From")) + ([sender] if sender else []):
            local = address.rpartition("@")[0].lower()
            if local in ("mailer-daemon", "postmaster") or "-bounces" in local or local.startswith("owner-"):
                return f"sent by {address}"
    return None


AUTO_REPLY_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|out of (the )?office|abwesenheit|absence|vacation|"
    r"on leave|r[ée]ponse automatique|away from)", re.I)


def from_authenticated(msg, address, authserv_id):
    """Whether an Authentication-Results field (RFC 8601) of ``authserv_id`` vouches for the domain
    of ``address`` (the From: address): dmarc=pass for header.from of that domain, or dkim=pass for
    a signature of that very domain (header.d, else the domain of header.i).  Only the receiving
    MTA's fields count, and it must remove those that arrive from outside with its id.  Read in
    linear time: 20 fields, 8 KB of each."""
    domain = address.rpartition("@")[2].lower()
    if not authserv_id or not domain:
        return False
    for value in msg.get_all("Authentication-Results")[:20]:
        parts = _without_comments(value[:8192]).split(";")
        if [w.strip('"').lower() for w in parts[0].split()[:1]] != [authserv_id.strip().lower()]:
            continue
        for part in parts[1:]:
            m = _AUTH_RESULT.match(part)
            if not m or m.group(2).lower() != "pass":
                continue
            found = {k.lower(): v.strip('"').lower() for k, v in _AUTH_PROPERTY.findall(part)}
            signer = found.get("header.d") or found.get("header.i", "").rpartition("@")[2]
            if (found.get("header.from") if m.group(1).lower() == "dmarc" else signer) == domain:
                return True
    return False


_AUTH_RESULT = re.compile(r"\s*(dkim|dmarc)\s*=\s*([A-Za-z]+)", re.I)
_AUTH_PROPERTY = re.compile(r"\b(header\.(?:from|d|i))\s*=\s*(\"[^\"]{0,300}\"|[^\s;\"]{1,300})", re.I)


# List addresses and headers --------------------------------------------------

# The one table of the addresses a list answers: LIST-suffix[+extension]@DOMAIN
# besides LIST@DOMAIN itself, and the role each gives a message.
ROLES = {"bounces": "bounces", "request": "request", "owner": "owner", "confirm": "confirm",
         "join": "join", "subscribe": "join", "leave": "leave", "unsubscribe": "leave"}
ROLE_ADDRESS = re.compile(r"(.+)-(%s)(?:\+(.+))?" % "|".join(ROLES), re.IGNORECASE | re.DOTALL)
LIST_SUFFIXES = ("",) + tuple(f"-{suffix}" for suffix in ROLES)


def list_address(list_row, suffix=""):
    return f"{list_row['name']}{suffix}@{list_row['domain']}"


def owners_of(list_row):
    return [o.strip() for o in list_row["owners"].split(",") if o.strip()]


def moderation_team(list_row):
    """Who may act on held posts and join requests: the owners, then the list's moderators (who
    may do nothing else).  Each address once, compared without case."""
    moderators = list_row.get("moderators") if isinstance(list_row, dict) else list_row["moderators"]
    team = owners_of(list_row) + [m.strip() for m in (moderators or "").split(",")]
    return list({a.lower(): a for a in reversed(team) if a}.values())[::-1]


def list_headers(list_row, base_url=""):
    """RFC 2919 List-Id, the RFC 2369 List-* fields and the loop markers of a list's copies."""
    post = list_address(list_row)
    public = base_url and list_row.get("archive") == "public"
    archive_url = list_row.get("archive_url") or \
        (f"{base_url.rstrip('/')}/archive/{post.lower()}/" if public else "")
    shown = archive_url and list_row.get("archive") != "off"
    return [
        ("List-Id", f"<{list_row['name']}.{list_row['domain']}>"),
        ("List-Post", f"<mailto:{post}>"),
        ("List-Help", f"<mailto:{list_address(list_row, '-request')}?subject=help>"),
        ("List-Subscribe", f"<mailto:{list_address(list_row, '-join')}>"),
        ("List-Unsubscribe", f"<mailto:{list_address(list_row, '-leave')}>"),
        ("List-Owner", f"<mailto:{list_address(list_row, '-owner')}>"),
    ] + [("List-Archive", f"<{archive_url}>")] * bool(shown) + [("Precedence", "list"), ("X-Loop", post)]


# Headers replaced on every distributed copy: our own list fields, and the
# delivery traces of the hop that brought the post to us.
REPLACED_HEADERS = ("list-id", "list-post", "list-help", "list-subscribe", "list-unsubscribe",
                    "list-owner", "list-archive", "archived-at", "precedence", "x-loop",
                    "return-path", "delivered-to", "x-original-to",
                    # a receipt request would make every member's client answer the author
                    "disposition-notification-to", "return-receipt-to")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def date_field(when=None):
    """An RFC 5322 Date: value in local time, as email.utils.formatdate(localtime=True)
    writes it, without importing the email package (`queue` of a post without a Date)."""
    t = time.localtime(when)
    offset = (t.tm_gmtoff or 0) // 60
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {'-' if offset < 0 else '+'}"
            f"{abs(offset) // 60:02d}{abs(offset) % 60:02d}")


def new_message_id(domain):
    """A Message-ID as email.utils.make_msgid makes one, without the email package."""
    return f"<{int(time.time() * 100)}.{os.getpid()}.{int.from_bytes(os.urandom(8), 'big')}@{domain}>"


_MESSAGE_ID = re.compile(r"<[^<>\s]{1,250}>")
_MONTH_NAMES = {m.lower(): i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                                                    "Sep", "Oct", "Nov", "Dec"), 1)}
_ZONES = {"ut": 0, "gmt": 0, "z": 0, "est": -5, "edt": -4, "cst": -6, "cdt": -5, "mst": -7, "mdt": -6,
          "pst": -8, "pdt": -7}
_DATE = re.compile(r"(\d{1,2})[ \t]+([a-z]{3})[a-z]{0,6}\.?[ \t]+(\d{2,4})[ \t]+(\d{1,2}):(\d{2})"
                   r"(?::(\d{2}))?(?:[ \t]*([+-]\d{4}|[a-z]{1,5}))?", re.I)


def civil_seconds(year, month, day):
    """Unix seconds of 00:00 UTC on that day (proleptic Gregorian), without calendar."""
    year -= month <= 2
    era, yoe = divmod(year, 400)
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return (era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468) * 86400


def parse_date(value):
    """An RFC 5322 Date (its obsolete forms too: two-digit years, zone names) as Unix seconds, or
    None; linear, and without the email package."""
    m = _DATE.search(str(value or "")[:300])
    month = _MONTH_NAMES.get(m.group(2).lower()) if m else None
    if month is None:
        return None
    day, year, hour, minute, second = (int(m.group(i) or 0) for i in (1, 3, 4, 5, 6))
    year += 2000 if year < 50 else 1900 if year < 1000 else 0
    if not (1 <= day <= 31 and hour < 24 and minute < 60 and second <= 60):
        return None
    zone = (m.group(7) or "").lower()
    offset = (int(zone[1:3]) * 60 + int(zone[3:5])) * (-1 if zone[0] == "-" else 1) * 60 \
        if zone[:1] in "+-" and zone else _ZONES.get(zone, 0) * 3600
    return civil_seconds(year, month, day) + hour * 3600 + minute * 60 + second - offset


def message_id_of(data):
    """The Message-ID of a message (bytes or RawMessage), '<...>', or ''."""
    msg = data if isinstance(data, RawMessage) else RawMessage(data)
    return (_MESSAGE_ID.findall(msg.get("Message-ID") or "") or [""])[0]


# an @ as text, in a URL, in HTML, and full width; before it the local part (read backwards, at
# most 64 characters or a quoted string), after it the domain (labels, or an address literal)
# (an entity without its semicolon counts, as browsers read it; so do the look-alikes whose NFKC is @);
# characters that show nothing (soft hyphen, zero width, joiners, bidi controls) may stand after it
_AT = re.compile(r"@|%40|&#0*64(?![0-9]);?|&#x0*40(?![0-9a-f]);?|&commat;|\uff20|\ufe6b", re.I)
INVISIBLE = "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e" \
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0"
_INVISIBLES = re.compile(f"[{INVISIBLE}]+")
_INVISIBLE_RUN = re.compile(f"[{INVISIBLE}]{{0,16}}")
_LOCAL_BACKWARDS = re.compile(r'"[^"\r\n]{1,62}"|[^\s<>()\[\],;:"@/\\\uff20\ufe6b\u2026\x00-\x1f\x7f]{1,64}')
_DOMAIN = re.compile(r"\[[0-9A-Fa-f:.]{2,45}\]|[^\W_][\w-]{0,62}(?:[.\uff0e\u3002][^\W_][\w-]{0,62}){0,20}")


def hide_addresses(text):
    """Every address in ``text`` as bo…@example.org: readable, not harvestable (the domain stays,
    of the local part at most two characters and never the whole).  Addresses written in a URL
    (%40), HTML (&#64;) or full width count too; one already hidden stays as it is."""
    out, pos = [], 0
    for at in _AT.finditer(text):
        if at.start() < pos:
            continue
        after = _INVISIBLE_RUN.match(text, at.end()).end()
        domain = _DOMAIN.match(text, after)
        window = text[max(pos, at.start() - 64):at.start()]
        local = _LOCAL_BACKWARDS.match(window[::-1]) if domain else None
        if local is None:
            continue
        local = local.group(0)[::-1]
        keep = local[:2] if len(local) > 3 else local[:1] if len(local) > 1 else ""
        out += [text[pos:at.start() - len(local)], keep, "\u2026", text[at.start():after], domain.group(0)]
        pos = domain.end()
    return "".join(out) + text[pos:] if out else text


# Footers and subject tags ----------------------------------------------------

class _CannotEdit(Exception):
    """The part cannot take the footer in place; wrap the message instead."""


def expand(text, list_row, strict=False, **extra):
    """Fill a footer or notice text with the list's names and ``extra``.
    ``strict``: a placeholder nothing fills raises KeyError (redsky's own
    texts); else it stays as written (texts the owners write)."""
    from string import Template
    values = dict(list=list_row["name"], domain=list_row["domain"], post_address=list_address(list_row),
                  list_id=f"{list_row['name']}.{list_row['domain']}",
                  owner=list_address(list_row, "-owner"), request=list_address(list_row, "-request"),
                  join=list_address(list_row, "-join"), leave=list_address(list_row, "-leave"),
                  unsubscribe=f"mailto:{list_address(list_row, '-leave')}")
    values.update(extra)
    return Template(text).substitute(values) if strict else Template(text).safe_substitute(values)


EXPANDED = ("list", "domain", "post_address", "list_id", "owner", "request", "join", "leave", "unsubscribe")


def unknown_placeholders(text, extra=()):
    """The $placeholders in ``text`` that expand() would leave as written."""
    from string import Template
    known = set(EXPANDED) | set(extra)
    names = (m.group("named") or m.group("braced") for m in Template.pattern.finditer(text))
    return [name for name in names if name and name not in known]


def footer_text(list_row, key=None):
    """The list's footer filled in.  With ``key`` (the installation's verp_key) $address and
    $unsubscribe_personal become markers that each recipient's copy fills with their own
    (Personalizer); without, the generic values a copy for many gets (impersonal)."""
    personal = {kind: marker.decode() for marker, kind in personal_markers(list_row, key).items()} \
        if key else generic_personal(list_row)
    return expand(list_row["footer"], list_row, address=personal["address"],
                  unsubscribe_personal=personal["leave"])


def generic_personal(list_row):
    """What $address and $unsubscribe_personal say in a copy for many (batched, archive, digest)."""
    return {"address": "your address", "leave": list_address(list_row, "-leave")}


def personal_markers(list_row, key):
    """{marker bytes: "address" | "leave"}: what addfooter writes for the personal placeholders.
    Keyed on the verp_key, so a poster cannot write one into a post and have it filled."""
    import hashlib
    import hmac
    nonce = hmac.new(key.encode(), f"footer {list_address(list_row)}".lower().encode(),
                     hashlib.sha256).hexdigest()[:20]
    return {f"redsky-personal-{nonce}-{kind}".encode(): kind for kind in ("address", "leave")}


def impersonal(data, list_row, key):
    """``data`` with the personal markers filled with the generic values."""
    if b"redsky-personal-" not in data:
        return data
    generic = generic_personal(list_row)
    for marker, kind in personal_markers(list_row, key).items():
        data = data.replace(marker, generic[kind].encode("utf-8"))
    return data


def add_footer(msg, footer):
    """Add ``footer`` (text) to ``msg`` (RawMessage) MIME-correctly, in place:
    - a single text/plain part: appended in its own charset and transfer
      encoding;
    - multipart/mixed: a new text/plain part before the closing boundary;
    - anything else (multipart/alternative, signed, encrypted, HTML, a part
      we cannot decode): the original entity, byte-intact, becomes the first
      part of a new multipart/mixed whose second part is the footer.
    A footer with personal markers (footer_text) is written so that the
    markers stay literal: appended only to a 7bit or 8bit part, else in a
    part of its own (8bit when not ASCII).
    Returns how it was done ("appended", "part", "wrapped")."""
    literal = "redsky-personal-" in footer
    info = msg.header_message()
    ctype = info.get_content_type()
    try:
        if ctype == "text/plain" and not info.get("Content-Type", "").lower().startswith("multipart"):
            _append_to_text(msg, info, footer, literal)
            return "appended"
        if ctype == "multipart/mixed":
            _add_mixed_part(msg, info.get_param("boundary"), footer, literal)
            return "part"
    except _CannotEdit:
        pass
    _wrap_with_footer(msg, footer, literal)
    return "wrapped"


def _append_to_text(msg, info, footer, literal=False):
    import base64
    import binascii
    import codecs
    import quopri
    charset = (info.get_content_charset() or "us-ascii").lower()
    cte = str(info.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    try:
        codecs.lookup(charset)
        footer_bytes = footer.encode(charset)
    except (LookupError, UnicodeError):
        raise _CannotEdit
    body, eol = msg.body, msg.eol
    lead = b"" if not body or body.endswith(b"\n") else eol
    if cte in ("8bit", "binary") or (cte in ("7bit", "") and footer_bytes.isascii()):
        msg.body = body + lead + footer_bytes.replace(b"\n", eol) + eol
    elif cte == "quoted-printable" and not literal:
        if body.rstrip(b"\r\n").endswith(b"="):      # soft break at the end: close the line
            lead = eol
        encoded = quopri.encodestring(footer_bytes.replace(b"\r\n", b"\n") + b"\n")
        msg.body = body + lead + encoded.replace(b"\n", eol)
    elif cte == "base64" and not literal:
        try:
            decoded = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            raise _CannotEdit
        eol = b"\n" if b"\n" in decoded[:4096] and b"\r\n" not in decoded[:4096] else b"\r\n"
        lead = b"" if not decoded or decoded.endswith(b"\n") else eol
        text = decoded + lead + footer_bytes.replace(b"\n", eol) + eol
        msg.body = base64.encodebytes(text).replace(b"\n", msg.eol)
    else:
        raise _CannotEdit


def _footer_part(footer, eol, literal=False):
    """A text/plain MIME part (headers and body) holding the footer."""
    import quopri
    data = footer.replace("\r\n", "\n").rstrip("\n").encode("utf-8") + b"\n"
    cte = b"7bit" if data.isascii() else b"8bit" if literal else b"quoted-printable"
    body = (quopri.encodestring(data) if cte == b"quoted-printable" else data).replace(b"\n", eol)
    head = (b"Content-Type: text/plain; charset=" + (b"us-ascii" if data.isascii() else b"utf-8") + eol
            + b"Content-Transfer-Encoding: " + cte)
    # the line break before the next delimiter belongs to the delimiter (RFC 2046)
    return head + eol + b"Content-Disposition: inline" + eol + eol + body + eol


def _add_mixed_part(msg, boundary, footer, literal=False):
    if not boundary:
        raise _CannotEdit
    own = boundary.encode("utf-8", "surrogateescape")
    delimiter = re.escape(own)
    closings = list(re.finditer(rb"(?m)^--" + delimiter + rb"--[ \t]*\r?$", msg.body))
    opening = re.search(rb"(?m)^--" + delimiter + rb"[ \t]*\r?$", msg.body)
    if not closings or not opening or opening.start() > closings[-1].start():
        raise _CannotEdit
    # a nested multipart that reuses the boundary (or one that begins the same) makes the structure
    # ambiguous: readers disagree on where the last part is, and a footer may land where none shows it
    declared = re.finditer(rb'(?im)^(?:content-type:|[ \t])[^\r\n]*?\bboundary\s*=\s*'
                           rb'("[^"\r\n]{1,200}"|[^\s;]{1,200})', msg.body)
    nested = {m.group(1).strip(b'"') for m in declared}
    if len(closings) > 1 or any(b.startswith(own) or own.startswith(b) for b in nested):
        raise _CannotEdit
    at, eol = closings[-1].start(), msg.eol
    msg.body = msg.body[:at] + b"--" + own + eol + _footer_part(footer, eol, literal) + msg.body[at:]


def _wrap_with_footer(msg, footer, literal=False):
    eol = msg.eol
    inner = [f for f in msg.fields if msg.name_of(f).startswith("content-")]
    outer = [f for f in msg.fields if not msg.name_of(f).startswith("content-")]
    boundary = "redsky-" + os.urandom(12).hex()
    body = msg.body
    if body and not body.endswith(b"\n"):
        body += eol
    b = boundary.encode("ascii")
    if inner and not inner[-1].endswith(b"\n"):
        inner[-1] += eol
    msg.fields = outer
    if msg.get("MIME-Version") is None:
        msg.append("MIME-Version", "1.0")
    msg.append("Content-Type", f'multipart/mixed; boundary="{boundary}"')
    msg.separator = eol
    # The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1),
    # hence the extra eol: the original body keeps its last line break.
    msg.body = (b"--" + b + eol + b"".join(inner) + eol + body + eol
                + b"--" + b + eol + _footer_part(footer, eol, literal)
                + b"--" + b + b"--" + eol)


def encoded_words(text):
    """``text`` as RFC 2047 encoded-words (UTF-8, base64), folded, in linear
    time (email.header.Header is quadratic on long text)."""
    import base64
    words = [b"=?utf-8?b?" + base64.b64encode(text[i:i + 30].encode("utf-8", "surrogateescape")) + b"?="
             for i in range(0, len(text), 30)]
    return b"\n ".join(words)


def with_subject_tag(msg, tag, earlier=None):
    """Prefix ``tag`` to the Subject once (RFC 2047 aware); returns False when the subject already
    carries it.  ``earlier``: a pattern of the list's tags with another number, removed first (Re:
    [team 12] x becomes [team 13] Re: x)."""
    raw = msg.raw_value("Subject")
    text = decode_header_text(msg.get("Subject", "")) if raw is not None else ""
    if earlier and re.search(earlier, text, re.I):
        pattern = re.compile(earlier, re.I)     # the spaces around it are collapsed after: linear
        stripped = re.sub(r"[ \t]+", " ", pattern.sub(" ", text)).strip()
        if raw.isascii() and b"=?" not in raw:
            raw = re.sub(r"[ \t]+", " ", pattern.sub(" ", raw.decode("ascii"))).strip().encode("ascii")
        else:                           # the tag was inside an encoded-word: encode the rest anew
            raw = encoded_words(stripped)
        text, raw = stripped, raw or None
    elif tag.lower() in text.lower():
        return False
    if not text.strip():
        msg.remove("Subject")
        raw = None
    if tag.isascii():
        prefix = tag.encode("ascii")
    else:
        from email.header import Header
        # Whitespace between two encoded-words is not displayed (RFC 2047
        # 6.2), so the separating space goes inside our encoded-word then.
        inside = raw is not None and raw.startswith(b"=?")
        prefix = Header(tag + (" " if inside else ""), "utf-8").encode().encode("ascii")
    new = prefix + b" " + (raw if raw is not None else b"(no subject)")
    msg.replace_raw("Subject", new)
    return True


# DMARC rewriting -------------------------------------------------------------

def munge_from(msg, list_row, author):
    """From: "Name via LIST" <LIST@DOMAIN>; the author moves to Reply-To
    (when there is none) and X-Original-From."""
    from email.utils import formataddr, parseaddr
    original = msg.get("From", "")
    name = one_line(decode_header_text(parseaddr(original)[0])) or author.partition("@")[0]
    msg.remove("X-Original-From")
    msg.replace_raw("From", formataddr((f"{name} via {list_row['name']}", list_address(list_row)),
                                       charset="utf-8").encode("ascii", "replace"))
    if msg.raw_value("Reply-To") is None:
        msg.append("Reply-To", original)
    msg.append("X-Original-From", original)


def wrap_message(msg, list_row, author):
    """The original, byte-intact, as a message/rfc822 part of a new message
    from the list (RFC 2046 5.2.1)."""
    from email.utils import formataddr, parseaddr
    eol = msg.eol
    original = bytes(msg)
    name = one_line(decode_header_text(parseaddr(msg.get("From", ""))[0])) or author.partition("@")[0]
    keep = [f for f in msg.fields if msg.name_of(f) in ("to", "cc", "subject", "date", "message-id",
                                                        "in-reply-to", "references")]
    boundary = "redsky-" + os.urandom(12).hex()
    outer = RawMessage(b"".join(keep) + eol)
    outer.append("From",
                 formataddr((f"{name} via {list_row['name']}", list_address(list_row)), charset="utf-8"))
    outer.append("Reply-To", msg.get("From", ""))
    outer.append("MIME-Version", "1.0")
    outer.append("Content-Type", f'multipart/mixed; boundary="{boundary}"')
    b = boundary.encode()
    outer.body = (b"--" + b + eol + b"Content-Type: message/rfc822" + eol
                  + b"Content-Disposition: inline" + eol + eol + original
                  + (b"" if original.endswith(b"\n") else eol) + eol + b"--" + b + b"--" + eol)
    msg.fields, msg.separator, msg.body = outer.fields, eol, outer.body


def message_leaves(msg, depth=20):
    """The leaf parts of ``msg`` (email.message.Message) in order; of a multipart/alternative only
    the one redsky shows and keeps, its text/plain part, else its first (as Mailman's
    collapse_alternatives); nesting past ``depth`` levels is ignored."""
    todo = [(msg, 0)]
    while todo:
        part, level = todo.pop()
        if not part.is_multipart():
            yield part
            continue
        kids = [p for p in part.get_payload() if not isinstance(p, str)] if level < depth else []
        if part.get_content_type() == "multipart/alternative" and kids:
            kids = [next((p for p in kids if p.get_content_type() == "text/plain"), kids[0])]
        todo += [(p, level + 1) for p in reversed(kids)]


def html_tokens(html, dropped=("script", "style")):
    """(text, tag) pairs of an HTML text in order, in linear time (html.parser is quadratic on
    unclosed tags): ``tag`` is a match of _HTML_TAG (groups: "/" of a closing tag, name,
    attributes), or None for a comment and at the end; comments and what ``dropped`` elements hold
    are skipped.  A '<' that starts no tag is text."""
    pos, end, lower = 0, len(html), None
    while pos < end:
        tag = _HTML_TAG.search(html, pos)
        yield html[pos:tag.start() if tag else end], tag if tag and tag.group(2) else None
        if tag is None:
            return
        pos = tag.end()
        if tag.group(0) == "<!--":
            close = html.find("-->", pos)
            pos = end if close < 0 else close + 3
        elif not tag.group(1) and tag.group(2).lower() in dropped:
            lower = lower or html.lower()
            close = lower.find("</" + tag.group(2).lower(), pos)
            pos = end if close < 0 else close


def html_text(html):
    """Readable text of an HTML part: block tags make line breaks."""
    import html as entities
    out = []
    for text, tag in html_tokens(html):
        out.append(re.sub(r"[ \t\r\n]+", " ", text))
        if tag and not tag.group(1) and tag.group(2).lower() in _BLOCK_TAGS:
            out.append("\n")
    text = entities.unescape("".join(out))
    return re.sub(r"\n[ \t]+", "\n", re.sub(r"\n{3,}", "\n\n", text)).strip() + "\n"


_HTML_TAG = re.compile(r"<!--|<(/?)([a-zA-Z][a-zA-Z0-9]*)([^<>]*)>")
# all a browser or a mail reader may take for markup: comments as they end (-->, --!>, <!-->, or
# never), tags, <!...>, <?...>, </...> (to their ">", or the end)
_HTML_MARKUP = re.compile(r"<!--(?:-?>|[\s\S]*?(?:--!?>|\Z))|<[!/?a-zA-Z][^>]*(?:>|\Z)")


def html_shown(html, lines=False):
    """What a reader of an HTML text may see of it, joined: every markup removed (more than a browser
    removes, never less), entities resolved, characters that show nothing dropped; with ``lines``,
    block tags make line breaks and spaces are collapsed.  Linear time."""
    import html as entities

    def markup(m):
        name = re.match(r"</?([a-zA-Z][a-zA-Z0-9]*)", m.group(0))
        return "\n" if lines and name and name.group(1).lower() in _BLOCK_TAGS else ""
    text = _INVISIBLES.sub("", entities.unescape(_HTML_MARKUP.sub(markup, html)))
    if lines:
        text = re.sub(r"\n[ \t]+", "\n", re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t\r\f\v]+", " ", text)))
    return text
_BLOCK_TAGS = ("br", "p", "div", "tr", "li", "h1", "h2", "h3", "blockquote")     # a line break in html_text


def search_fold(text):
    """``text`` as the search matches it: compatibility forms and accents undone (NFKD, combining
    marks dropped), lower case, and only its words (letters and digits), one space apart."""
    import unicodedata
    text = unicodedata.normalize("NFKD", text)
    if not text.isascii():
        text = text.translate(_MARKS)
    return " ".join(_WORD.findall(text.lower()))


class _Marks(dict):
    """str.translate's table that drops combining marks (Unicode category M), learnt as met."""

    def __missing__(self, code):
        import unicodedata
        self[code] = None if unicodedata.category(chr(code))[0] == "M" else code
        return self[code]


_MARKS = _Marks()
_WORD = re.compile(r"[^\W_]+")


def smtp_wire(data):
    """``data`` as SMTP sends it (RFC 5321 4.5.2): CRLF line ends, a dot
    doubled at the start of a line, the final "." line."""
    wire = re.sub(rb"(?m)^\.", b"..", re.sub(rb"\r?\n", b"\r\n", data))
    return wire + (b"" if wire.endswith(b"\r\n") else b"\r\n") + b".\r\n"


def smtp_plain(wire):
    """The message of ``wire`` (smtp_wire's form) without dot-stuffing and final dot: BDAT's form."""
    return re.sub(rb"(?m)^\.\.", b".", wire[:-3])


# ---------------------------------------------------------------------------
# 7. DNS and tokens
# Owns: the DNS client and its caches (DMARC, DNSBL), tokens, passphrases, VERP and the signed leave
#       tokens (and their table, leave_member), signed tokens (sign_token, check_token), Personalizer
#       (one copy per recipient).
# Calls: sections 2-6.
# ---------------------------------------------------------------------------

# DNS client and caches -------------------------------------------------------

def dns_query(name, qtype, nameserver, timeout):
    """The answers of type ``qtype`` (1 A, 16 TXT, 28 AAAA) for ``name`` (RFC 1035), as raw RDATA
    bytes; [] for NXDOMAIN or no such record.

    Only the server can answer: the UDP socket is connected to it, the ID is random (secrets), and a
    reply counts only with that ID, QR set and our question echoed (RFC 5452); anything else is
    dropped and waited past.  One deadline covers the whole lookup.  A truncated answer (TC) is
    asked again over TCP (RFC 7766).  Raises OSError on a timeout, a server failure or a malformed
    answer."""
    import secrets
    import socket
    import struct
    host, _, port = nameserver.rpartition(":") if nameserver.count(":") == 1 else (nameserver, "", "53")
    address = (host.strip("[]"), int(port or 53))
    deadline = time.monotonic() + timeout
    qid = secrets.randbits(16)
    labels = [label for label in name.encode("idna").split(b".") if label]
    question = b"".join(bytes([len(x)]) + x for x in labels) + b"\0" + struct.pack(">HH", qtype, 1)
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.send(query)
        while True:
            sock.settimeout(_time_left(deadline, name))
            reply = sock.recv(4096)
            if _dns_reply_matches(reply, qid, question):
                break
    if reply[2] & 0x02:                         # TC: the whole answer over TCP
        with socket.create_connection(address, timeout=_time_left(deadline, name)) as conn:
            conn.settimeout(_time_left(deadline, name))
            conn.sendall(struct.pack(">H", len(query)) + query)
            answer = conn.makefile("rb")            # read(n) waits for all n bytes, or the end
            reply = answer.read(int.from_bytes(answer.read(2), "big"))
        if not _dns_reply_matches(reply, qid, question):
            raise OSError(f"DNS answer over TCP for {name} is cut short or does not match the question")
    try:
        return _dns_answers(reply, qtype, 12 + len(question))
    except (IndexError, struct.error):
        raise OSError(f"malformed DNS answer for {name}") from None


def _time_left(deadline, name):
    left = deadline - time.monotonic()
    if left <= 0:
        raise OSError(f"DNS lookup of {name} timed out")
    return left


def _dns_reply_matches(reply, qid, question):
    """A reply to our query: our ID, QR set, a standard query, one question: ours."""
    return (len(reply) >= 12 + len(question) and reply[0] == qid >> 8 and reply[1] == qid & 0xFF
            and reply[2] & 0x80 and not reply[2] & 0x78 and reply[4:6] == b"\0\1"
            and reply[12:12 + len(question)].lower() == question.lower())


def _dns_answers(reply, qtype, pos):
    """RDATA of the answers of ``qtype`` in ``reply``, the question ending at ``pos``."""
    import struct
    rcode = reply[3] & 0xF
    if rcode == 3:                              # NXDOMAIN
        return []
    if rcode != 0:
        raise OSError(f"DNS server answered rcode {rcode}")
    records = []
    for _ in range(struct.unpack(">H", reply[6:8])[0]):
        pos = _skip_name(reply, pos)
        rtype, _, _, length = struct.unpack(">HHIH", reply[pos:pos + 10])
        pos += 10
        if pos + length > len(reply):
            raise IndexError("record beyond the end of the answer")
        if rtype == qtype:
            records.append(reply[pos:pos + length])
        pos += length
    return records


def dns_txt(name, nameserver, timeout):
    """TXT records of ``name`` as text, [] when it has none."""
    records = []
    for data in dns_query(name, 16, nameserver, timeout):
        chunks, i = [], 0
        while i < len(data):
            chunks.append(data[i + 1:i + 1 + data[i]])
            i += 1 + data[i]
        records.append(b"".join(chunks).decode("utf-8", "replace"))
    return records


def _skip_name(data, pos):
    while True:
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:               # compression pointer
            return pos + 2
        pos += 1 + length


def _resolv_conf_nameserver():
    try:
        with open("/etc/resolv.conf") as fh:
            first = re.search(r"(?m)^[ \t]*nameserver[ \t]+(\S+)", fh.read())
    except OSError:
        first = None
    return first.group(1) if first else "127.0.0.1"


def dns_cached(store, config, section, key, look):
    """The answer for ``key`` from the cache of ``section`` (dmarc or dnsbl), else look(nameserver,
    timeout)'s, kept for [section] cache; expired answers are dropped so the table stays small, and
    a cache that cannot be written is only slower.  Raises what look raises (OSError)."""
    now = time.time()
    row = store.q(f"{section}_cache_get", key, now).fetchone()
    if row:
        return row[0]
    answer = look(config.get(section, "nameserver") or _resolv_conf_nameserver(),
                  config.duration(section, "timeout"))
    try:
        with store.transaction():
            store.q(f"{section}_cache_prune", now)
            store.q(f"{section}_cache_put", key, answer, now + config.duration(section, "cache"))
    except (sqlite3.Error, StoreError) as e:
        log.warning("cannot cache the %s answer for %s: %s", section, key, e)
    return answer


# Multi-label public suffixes for when no Public Suffix List can be read: the common ones only.
BUILTIN_SUFFIXES = frozenset("""
    co.uk org.uk ac.uk gov.uk me.uk ltd.uk plc.uk net.uk sch.uk nhs.uk police.uk co.jp ne.jp or.jp ac.jp
    go.jp com.au net.au org.au edu.au gov.au id.au co.nz net.nz org.nz ac.nz govt.nz com.br net.br org.br
    gov.br co.in net.in org.in ac.in gov.in co.za org.za ac.za gov.za com.cn net.cn org.cn edu.cn gov.cn
    com.mx org.mx com.tw org.tw com.hk org.hk co.kr or.kr ac.kr com.sg edu.sg com.my co.il org.il ac.il
    com.tr org.tr com.ar co.id ac.id com.ua com.pl co.th ac.th com.vn com.ph com.pk com.ng com.eg com.sa
    co.ke ac.at co.at or.at gv.at com.es com.pt com.ru org.ru
""".split())
_PUBLIC_SUFFIXES = {}                   # path -> (rules, wildcards, exceptions), read once a process


def public_suffixes(path):
    """The rules of the Public Suffix List at ``path`` (publicsuffix.org's
    format), or None when it cannot be read."""
    if path not in _PUBLIC_SUFFIXES:
        rules, wildcards, exceptions = set(), set(), set()
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    rule = line.split(None, 1)[0].lower() if line.strip() else ""
                    if rule.startswith("!"):
                        exceptions.add(rule[1:])
                    elif rule.startswith("*."):
                        wildcards.add(rule[2:])
                    elif rule and not rule.startswith("//"):
                        rules.add(rule)
        except OSError as e:
            log.info("no Public Suffix List at %s (%s): the built-in suffixes serve", path, e.strerror)
            rules = None
        _PUBLIC_SUFFIXES[path] = (rules, wildcards, exceptions) if rules else None
    return _PUBLIC_SUFFIXES[path]


def organizational_domain(domain, psl_path):
    """RFC 7489 3.2: the public suffix of ``domain`` plus one label, by the
    Public Suffix List (psl_path), else BUILTIN_SUFFIXES and the last two
    labels; the domain itself when it is no longer."""
    labels = domain.lower().rstrip(".").split(".")
    table = public_suffixes(psl_path)
    rules, wildcards, exceptions = table if table else (BUILTIN_SUFFIXES, (), ())
    suffix = 1                                  # the default rule "*": the last label
    for i in range(len(labels)):
        name = ".".join(labels[i:])
        if name in exceptions:
            suffix = len(labels) - i - 1
            break
        if name in rules or (i + 1 < len(labels) and ".".join(labels[i + 1:]) in wildcards):
            suffix = len(labels) - i
            break
    return ".".join(labels[-(suffix + 1):]) if len(labels) > suffix else domain.lower().rstrip(".")


def dmarc_policy(store, config, domain):
    """p= of the DMARC record for ``domain`` (RFC 7489 6.6.3: the domain, then its organisational
    domain's sp=, else p=), '' when there is no record ("none" for a record without p=); cached for
    [dmarc] cache. Raises OSError when DNS fails."""
    domain = domain.lower().rstrip(".")
    organizational = organizational_domain(domain, config.path_of("dmarc", "public_suffix_list"))

    def look(nameserver, timeout):
        for name in dict.fromkeys((domain, organizational)):
            records = [r for r in dns_txt(f"_dmarc.{name}", nameserver, timeout)
                       if r.lower().startswith("v=dmarc1")]
            if records:
                tags = dict(t.strip().split("=", 1) for t in records[0].split(";") if "=" in t)
                policy = tags.get("sp") if name != domain and tags.get("sp") else tags.get("p", "none")
                return policy.strip().lower() or "none"
        return ""
    return dns_cached(store, config, "dmarc", domain, look)


def dnsbl_name(ip, zone):
    """The query name: the address reversed as in reverse DNS (RFC 5782 2.1 and 2.4)."""
    return ip.reverse_pointer.rsplit(".", 2)[0] + "." + zone


def dnsbl_lookup(store, config, name):
    """What the blocklist says about ``name``: '' when not listed, else its
    A record and, when the list publishes one, its TXT reason ("127.0.0.2:
    see https://..."); cached for [dnsbl] cache.  RFC 5782 2.3: only
    127.0.0.0/8 answers mean listed; Spamhaus' 127.255.255.x (a refused
    query, e.g. through a public resolver) does not."""
    def look(nameserver, timeout):
        answers = [".".join(map(str, r)) for r in dns_query(name, 1, nameserver, timeout) if len(r) == 4]
        answer = next((a for a in answers if a.startswith("127.") and not a.startswith("127.255.255.")), "")
        if answers and not answer:
            log.warning("DNSBL %s answered %s: not a listing (a refused query?)", name, ", ".join(answers))
        if answer:
            try:
                why = one_line(" ".join(dns_txt(name, nameserver, timeout)), 200)
            except (OSError, ValueError, IndexError):
                why = ""                            # the reason is a courtesy, the listing stands
            answer += f": {why}" if why else ""
        return answer
    return dns_cached(store, config, "dnsbl", name, look)


# Tokens and VERP -------------------------------------------------------------

def new_token():
    import secrets          # imported here: `queue` for a plain post never needs it
    return secrets.token_hex(16)


def hash_passphrase(passphrase, salt=None, iterations=200_000):
    """PBKDF2-SHA256; only this string is stored, never the passphrase."""
    import hashlib
    salt = salt or new_token()
    digest = hashlib.pbkdf2_hmac("sha256", passphrase.encode("utf-8"), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${digest.hex()}"


def check_passphrase(passphrase, stored):
    import hmac
    try:
        scheme, iterations, salt, _ = stored.split("$")
        computed = hash_passphrase(passphrase, salt, int(iterations))
    except ValueError:
        return False
    return scheme == "pbkdf2_sha256" and hmac.compare_digest(computed, stored)


def verp_signature(key, list_row, recipient, purpose=""):
    """8 hex digits of HMAC-SHA256 over list and recipient: only redsky,
    which holds the key, can write a bounce address that names a member.
    ``purpose`` "probe" signs probe addresses, which no post carries."""
    prefix = f"{purpose}{list_row['name']}@{list_row['domain']}|".lower()
    return hmac_after(key, prefix)(recipient.lower())[:8]


def verp_encode(list_row, recipient):
    """LIST-bounces+SIG+user=host@DOMAIN (SIG: verp_signature, when the list row carries the
    installation's verp_key), else LIST-bounces+user=host@DOMAIN as Postfix's XVERP writes it.  With
    recipient_delimiter = + both reach LIST-bounces@DOMAIN."""
    return verp_signer(list_row)(recipient)


def verp_signer(list_row):
    """verp_encode for one list as a function of the recipient, the HMAC
    key and the list already absorbed (`send` signs every recipient)."""
    key = list_row.get("verp_key") if hasattr(list_row, "get") else None
    head, tail = f"{list_row['name']}-bounces+", f"@{list_row['domain']}"
    mac = key and hmac_after(key, f"{list_row['name']}@{list_row['domain']}|".lower())

    def sign(recipient):
        local, _, domain = recipient.rpartition("@")
        signature = f"{mac(recipient.lower())[:8]}+" if mac else ""
        return f"{head}{signature}{local}={domain}{tail}"
    return sign


def probe_address(list_row, key, recipient):
    """LIST-bounces+pSIG+user=host@DOMAIN: the envelope sender of a probe
    (bouncehandler), signed for "probe", so that its bounce is told apart
    from a bounce of a post, whatever [send] verp is."""
    local, _, domain = recipient.rpartition("@")
    sig = verp_signature(key, list_row, recipient, "probe")
    return f"{list_row['name']}-bounces+p{sig}+{local}={domain}@{list_row['domain']}"


def verp_decode(extension, list_row=None, key=None):
    """(address, proof) from ``[[p]SIG+]user=host`` (the last '=' separates
    user and host); proof is "verp" for a valid signature, "probe" for a
    valid probe signature, "" for none or a wrong one."""
    m = re.fullmatch(r"(p?)([0-9a-f]{8})\+(.+)", extension)
    if m and key and list_row is not None:
        address = _verp_address(m.group(3))
        if address:
            import hmac
            purpose = "probe" if m.group(1) else ""
            if hmac.compare_digest(verp_signature(key, list_row, address, purpose), m.group(2)):
                return address, purpose or "verp"
    return _verp_address(extension), ""


def _verp_address(extension):
    local, sep, domain = extension.rpartition("=")
    return f"{local}@{domain}" if sep and local and domain else None


def hmac_after(key, prefix):
    """HMAC-SHA256 with ``key`` of ``prefix`` + a message, as a function of
    the message returning hex digits: key and prefix are absorbed once, each
    call copies that state (`send` signs every recipient twice)."""
    import hashlib
    import hmac
    absorbed = hmac.new(key.encode("utf-8"), prefix.encode("utf-8"), hashlib.sha256)

    def digest(message):
        mac = absorbed.copy()
        mac.update(message.encode("utf-8"))
        return mac.hexdigest()
    return digest


def leave_mac(key, list_row):
    """The HMAC of the leave tokens of one list (hmac_after), the key and the
    list already absorbed: give it a member's address (leave_token)."""
    return hmac_after(key, f"leave|{list_row['name']}@{list_row['domain']}|".lower())


def leave_token(key, list_row, address, mac=None):
    """16 hex digits of HMAC-SHA256: the member's own one-click
    unsubscribe address LIST-leave+TOKEN@DOMAIN.  Unguessable, bound to
    list and member, needs no storage.  ``mac``: leave_mac's, to reuse."""
    return (mac or leave_mac(key, list_row))(address.lower())[:16]


def leave_member(store, list_row, token, write=True):
    """The address of the member of ``list_row`` whose leave token (leave_token) is ``token``, or
    None: one look-up in the table of tokens (leave_tokens), whatever the list's size, so a made-up
    token costs as little as a real one.  The tokens of members who joined since the last look-up
    are added first, each member's computed once ever (members' ids only grow past the table's
    newest, and a member's row goes with them); ``write`` False (a dry run) computes them without
    storing them.  The member found is checked against the token again."""
    import hmac
    token = token.lower()
    if not re.fullmatch(r"[0-9a-f]{16}", token):
        return None
    key, new = store.verp_key, []
    newest = store.q("leave_tokens_newest").fetchone()[0] or 0
    behind = (store.q("members_newest").fetchone()[0] or 0) > newest
    if behind and not write:
        new = _new_leave_tokens(store, key)
    elif behind:
        with store.transaction() as db:
            new = _new_leave_tokens(store, key)         # another process may have added some since
            db.executemany(SQL["add_leave_token"], ((list_id, bytes.fromhex(t), member_id)
                                                    for member_id, list_id, t, _ in new))
    row = store.q("leave_token_member", list_row["id"], bytes.fromhex(token)).fetchone()
    address = row[0] if row else next((a for _, list_id, t, a in new
                                       if list_id == list_row["id"] and t == token), None)
    if address is None or not hmac.compare_digest(leave_token(key, list_row, address), token):
        return None         # none, or a row a tool without foreign keys left for a member now gone
    return address


def _new_leave_tokens(store, key):
    """(member id, list id, leave token, address) of each member the table of tokens lacks: those
    whose id is above the newest it holds."""
    newest = store.q("leave_tokens_newest").fetchone()[0] or 0
    macs = {}
    rows = []
    for member_id, list_id, address, name, domain in store.q("members_after", newest):
        if list_id not in macs:
            macs[list_id] = leave_mac(key, {"name": name, "domain": domain})
        rows.append((member_id, list_id, leave_token(None, None, address, macs[list_id]), address))
    return rows


def sign_token(key, purpose, scope, subject="", issued=None, nonce=None):
    """A signed token "ISSUED-NONCE-MAC" (lower-case hex): ISSUED the Unix time it was made, NONCE 64
    random bits, MAC 128 bits of HMAC-SHA256 with the installation's key over purpose, scope (e.g. a
    list address), subject (e.g. an address, a session; "" for none), ISSUED and NONCE.  It carries
    no secret and names none of them: whoever checks it (check_token) says what it must be for, and
    how old it may be.  Used for the web's forms (a CSRF token that also proves its age) and
    capabilities in links; NONCE lets a checker take it once only."""
    import secrets
    issued = int(time.time() if issued is None else issued)
    nonce = nonce or secrets.token_hex(8)
    return f"{issued:x}-{nonce}-{_token_mac(key, purpose, scope, subject, issued, nonce)}"


def check_token(key, purpose, scope, subject, token, now, max_age, min_age=0):
    """(verdict, nonce) for a sign_token token: verdict "ok", "young" (made less than ``min_age``
    seconds ago: a form sent back faster than a person fills it), "stale" (more than ``max_age``),
    or "bad" (not one, or made for another purpose, scope or subject)."""
    import hmac
    m = re.fullmatch(r"([0-9a-f]{1,12})-([0-9a-f]{16})-([0-9a-f]{32})", (token or "")[:80].strip().lower())
    if m is None:
        return "bad", ""
    issued, nonce = int(m.group(1), 16), m.group(2)
    if not hmac.compare_digest(_token_mac(key, purpose, scope, subject, issued, nonce), m.group(3)):
        return "bad", ""
    age = now - issued
    return ("stale" if age > max_age or age < -60 else "young" if age < min_age else "ok"), nonce


def _token_mac(key, purpose, scope, subject, issued, nonce):
    return hmac_after(key, "signed|")(json.dumps([purpose, scope.lower(), subject, issued, nonce]))[:32]


class Personalizer:
    """Gives each recipient a copy whose List-Unsubscribe is their own LIST-leave+TOKEN@DOMAIN and
    whose footer has their own $address and $unsubscribe_personal (the markers footer_text left);
    the rest of the message is shared, not copied per recipient.  ``shared`` is the copy for a batch
    of recipients: the generic address, the generic values. With the list row's ``base_url`` ([web])
    List-Unsubscribe names the one-click URL BASE/LIST@DOMAIN/leave/TOKEN first,
    List-Unsubscribe-Post says so (RFC 8058), and $unsubscribe_personal is that URL."""

    def __init__(self, list_row, data):
        self.data, self.list_row, self.plain_parts = data, list_row, None
        self.pieces = None          # shared bytes, with what goes between them at odd indexes
        key = list_row.get("verp_key")
        self.shared = impersonal(data, list_row, key) if key else data
        if not key:
            return
        pieces = []
        generic = f"List-Unsubscribe: <mailto:{list_address(list_row, '-leave')}>".encode()
        at, end = data.find(generic), data.find(b"\n\n")
        self.url = f"{list_row['base_url'].rstrip('/')}/{list_address(list_row).lower()}/leave/" \
            if list_row.get("base_url") else ""
        if 0 <= at and (end < 0 or at < end):
            eol = b"\r\n" if data[at + len(generic):at + len(generic) + 1] == b"\r" else b"\n"
            mailto = f"<mailto:{list_row['name']}-leave+".encode()
            pieces = [data[:at] + b"List-Unsubscribe: " + f"<{self.url}".encode(), "token",
                      b">," + eol + b" " + mailto, "token"] if self.url else \
                [data[:at] + b"List-Unsubscribe: " + mailto, "token"]
            data = f"@{list_row['domain']}>".encode() + \
                (eol + b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" if self.url else b"") + \
                data[at + len(generic):]
        markers = personal_markers(list_row, key)
        parts = re.split(b"(" + b"|".join(markers) + b")", data)
        pieces += [markers[part] if i % 2 else part for i, part in enumerate(parts)]
        if len(pieces) > 1:
            self.pieces, self.mac = pieces, leave_mac(key, list_row)

    def __call__(self, address):
        if self.pieces is None:
            return self.shared
        token = leave_token(None, None, address, self.mac)
        values = {"token": token.encode(), "address": address.encode("utf-8"),
                  "leave": (f"{self.url}{token}" if self.url else
                            f"{self.list_row['name']}-leave+{token}@{self.list_row['domain']}").encode()}
        return b"".join(values[p] if i % 2 else p for i, p in enumerate(self.pieces))

    def plain(self, address):
        """The copy for ``address`` (None: the shared one) as BDAT sends it:
        CRLF line ends, no dot-stuffing, no final dot."""
        if self.plain_parts is None:
            self.plain_parts = Personalizer(self.list_row, smtp_plain(self.data))
        return self.plain_parts(address) if address else self.plain_parts.shared


# ---------------------------------------------------------------------------
# 8. Notices
# Owns: every text redsky sends (TEXTS), render() and templates, Notices (rate-limited mail to people:
#       the daily allowances of a mailbox, Notices.within), pending confirmations.
# Calls: sections 2-7.
# ---------------------------------------------------------------------------

TEXTS = {
    "welcome": "Welcome to the $post_address mailing list.\n\n"
               "To post, write to $post_address.\n"
               "To leave, write to $leave (or send 'unsubscribe' to $request).\n"
               "For help, send 'help' to $request.\n",
    "goodbye": "You have left the $post_address mailing list.\n\n"
               "To join again, write to $join.\n",
    "help": "This is the mailing list manager for $post_address.\n\n"
            "Write to these addresses (subject and body do not matter):\n"
            "  $join      to join the list\n"
            "  $leave     to leave the list\n"
            "  $owner     to reach the people who run the list\n\n"
            "Or send commands to $request, in the subject or one per line\n"
            "at the top of the message:\n"
            "  subscribe        join the list\n"
            "  unsubscribe      leave the list\n"
            "  confirm TOKEN    confirm a request\n"
            "  set digest on    get several posts at a time, in digests\n"
            "  set digest off   get every post as it comes\n"
            "  set nomail on    stay a member but get no posts (off: get them again)\n"
            "  set notmetoo on  get no copy of your own posts\n"
            "  set ack on       get a short note when a post of yours goes out\n"
            "  (a change that stops, delays or thins your mail waits for your confirmation)\n"
            "  index            the list of archived posts, numbered\n"
            "  get N            archived post number N (get 3-7 9: several, up to 10)\n"
            "  help             this text\n"
            "$extra",
    "confirm-subscribe": "Someone, probably you, asked to subscribe $address to the\n"
                         "$post_address mailing list.\n\n"
                         "To confirm, just reply to this message, or write to\n"
                         "  $confirm_address\n\n"
                         "If you did not ask for this, ignore this message: nothing will happen.\n"
                         "The request expires in $days days.\n",
    "invite": "You are invited to join the $post_address mailing list.\n\n"
              "To accept, just reply to this message, or write to\n  $confirm_address\n\n"
              "If you do not want to join, ignore this message: nothing will happen.\n"
              "The invitation expires in $days days.\n",
    "confirm-unsubscribe": "Someone, probably you, asked to unsubscribe $address from the\n"
                           "$post_address mailing list.\n\n"
                           "To confirm, just reply to this message, or write to\n"
                           "  $confirm_address\n\n"
                           "If you did not ask for this, ignore this message: you stay subscribed.\n",
    "held": "A post to $post_address is waiting for your approval.\n\n"
            "  Reason:  $reason\n  From:    $from_addr\n  Subject: $subject\n  Size:    $size bytes\n"
            "  Held:    $received\n\n"
            "$excerpt\n\n"
            "To answer, tap a link and send the message it opens:\n$links\n\n"
            "Or reply to this message with 'approve', 'reject REASON' or 'discard' as its\n"
            "first line (or write 'approve $token' etc.\nto $request).\n"
            "${attached}Unless someone answers, the post is dropped on $expires.\n",
    "approve-subscribe": "$address asks to join $post_address.\n\n"
                         "To answer, tap a link and send the message it opens:\n$links\n\n"
                         "Or reply to this message with 'approve', 'reject REASON' or 'discard' as its\n"
                         "first line (or write 'approve $token' etc.\nto $request).\n"
                         "Unless someone answers, the request is dropped on $expires.\n",
    "awaiting-approval": "Your request to join $post_address is waiting for the list owners' approval.\n",
    "rejected-post": "Your post to $post_address was not distributed.\n\n  Subject: $subject\n  "
                     "Reason:  $reason\n\n"
                     "Questions go to $owner.\n",
    "rejected-subscribe": "Your request to join $post_address was declined.\n  Reason: $reason\n",
    "closed": "The $post_address mailing list does not take subscriptions by email.\n"
              "Please write to $owner.\n",
    "already-member": "$address is already subscribed to $post_address.\n",
    "not-member": "$address is not subscribed to $post_address, so there is nothing to do.\n",
    "bad-token": "That confirmation code is unknown or was already used.\n"
                 "Send 'help' to $request for what you can do.\n",
    "expired-token": "That confirmation code has expired. Please send your request again.\n",
    "not-moderator": "Only the moderators of $post_address can act on held posts.\n",
    "disabled": "Mail from $post_address to $address has bounced repeatedly, so\n"
                "delivery to it is stopped.  Your subscription is kept.\n\n"
                "To receive the list again, reply to this message, or write to\n"
                "  $confirm_address\n\n"
                "$removal",
    "bounce-owner": "Mail from $post_address to these members keeps bouncing:\n\n$lines\n\n"
                    "A disabled member stays on the list but is sent nothing, and is asked to reply to\n"
                    "turn delivery back on.  Send 'bounces' to $request for the reports, 'who' for\n"
                    "the members.\n",
    "policy-alert": "In the last day these domains refused posts from $post_address by policy\n"
                    "(status 5.7.x: DMARC, spam filters, blocklists):\n\n$domains\n\n"
                    "These rejections are caused by the posts, not by the members, so nobody's bounce\n"
                    "score was raised.  `redsky.py bounces $post_address` shows the diagnostics.\n",
    "reenabled": "Delivery from $post_address to $address is on again. Welcome back.\n",
    "probe": "This is a delivery check from the $post_address mailing list.\n\n"
             "A report said that mail to $address could not be delivered.  Such reports\n"
             "can be forged, so this message checks: if you can read it, all is well\n"
             "and nothing needs doing.  Please do not reply.\n",
    "feedback-goodbye": "Your mail provider told us that you marked a post from $post_address\n"
                        "as spam, so $address has been unsubscribed and will get no more posts.\n\n"
                        "If that was a mistake, join again by writing to $join.\n",
    "feedback-owner": "$address reported a post of $post_address as spam ($kind, reported by\n"
                      "$reporter).  Action taken ([bounces] feedback_action): $action.\n",
    "unrecognised-bounces": "These reports reached signed bounce addresses of $post_address in the last\n"
                            "day, but redsky could not read them, so they changed no score:\n\n$reports\n\n"
                            "`redsky.py bounces $post_address` shows them.  If one is a real bounce,\n"
                            "tell the redsky developers what sent it.\n",
    "digest-on": "$address now gets $post_address as digests: several posts in one message,\n"
                 "sent when $threshold KB of posts are waiting, or $interval after the last one.\n"
                 "Send 'set digest off' to $request to get every post as it comes again.\n",
    "digest-off": "$address now gets every post to $post_address as it comes.\n"
                  "Send 'set digest on' to $request for digests instead.\n",
    "option-set": "On $post_address, $option is now $value for $address\n($option on: $meaning).\n"
                  "To change it, send 'set $option on' or 'set $option off' to $request.\n",
    "digest-masthead": "Send $post_address submissions to\n\t$post_address\n\n"
                       "To subscribe or unsubscribe, write to\n\t$join  or  $leave\n"
                       "or send 'help' to $request.  Send 'set digest off' there\n"
                       "to get every post as it comes.\n\n"
                       "You can reach the people who manage the list at\n\t$owner\n\n"
                       "When replying, please edit your Subject line so it is more specific\n"
                       "than \"Re: Contents of $list digest...\"\n",
    "command-replies": "Answers to the commands in your message to $request:\n\n$replies\n",
    "membership-change": "These addresses $verb $post_address:\n\n$addresses\n\n"
                         "(The list's notify_owners setting sends this notice.)\n",
    "web-cap": "The subscribe form of $post_address on the web has been sent $cap requests in the\n"
               "last day, its limit ([web] subscribe_per_day): until the day is over, it mails\n"
               "nobody (a form sent now gets the usual answer, and no confirmation goes out).\n\n"
               "If you expected that many people, raise the limit.  If not, someone may be using\n"
               "the form to have this host mail strangers.  Joining by email still works.\n",
    "ack": "Your post to $post_address, \"$subject\", was accepted and goes to the members.\n",
    "allowance-spent": "Requests made in the name of $address have brought it, today:\n  $what\n"
                       "as many as this host sends one address in a day$mailbox.\n"
                       "Until $until, further requests in its name get no answer.\n\n"
                       "If you sent them, please try again after that.  If you did not, someone else\n"
                       "is using your address: nothing was done, and you need do nothing.\n$leave_now",
    "requests-refused": "Requests to $post_address are being refused today.  Requests made in the name\n"
                        "of $address have brought it, today:\n  $what\n"
                        "as many as this host sends one address in a day; until $until\n"
                        "further ones get no answer.  The address was told so, once.\n\n"
                        "If this goes on, someone may be sending requests in other people's names.  A\n"
                        "member can always leave at once by the personal address or link in any post,\n"
                        "and asking again works once the day is over.  You get this notice at most\n"
                        "once a day.\n",
    "index": "The archive of $post_address ($count posts, the last $shown shown).\n"
             "Send 'get N' to $request for post number N.\n\n$items\n",
    "archive-refused": "The archive of $post_address is $why.\n",
    "not-archived": "The archive of $post_address has no post number $number.\n",
    "archive-removed": "Post number $number was removed from the archive of $post_address.\n",
    "archived-post": "Post number $number from the archive of $post_address is attached.\n",
    "archived-posts": "Posts $numbers from the archive of $post_address are attached.\n",
    "archived-posts-capped": "Posts $numbers from the archive of $post_address are attached.\n\n"
                             "Not sent: $rest.  One reply$outsider carries at most $posts posts and\n"
                             "$size of them; ask for the rest in another message:\n\n  get $rest\n",
    "archive-capped": "Not sent: $rest of the archive of $post_address.  One reply$outsider carries\n"
                      "at most $posts posts and $size of them; ask for these in another message:\n\n"
                      "  get $rest\n",
    "quarantined": "A message to $post_address (Message-ID $message_id) failed $count times with\n"
                   "an internal error of redsky, so it is no longer retried:\n\n  $reason\n\n"
                   "It is kept in the quarantine as $key.  `redsky.py quarantine` shows it;\n"
                   "`redsky.py quarantine release $key` delivers it once the cause is fixed.\n",
    "digest-problem": "These posts in the $post_address digest ($issue) could not be taken\n"
                      "apart as MIME, so the digest shows them as they were written:\n\n$posts\n",
    "reminder": "Waiting for a decision on $post_address:\n\n$items\n\n"
                "To answer, tap a link and send the message it opens, reply to the notice of each,\n"
                "or write 'approve TOKEN', 'reject TOKEN REASON' or 'discard TOKEN' to $request.\n"
                "This summary comes once a day while something has waited more than a day.\n",
    "option-confirm": "Someone, probably you, asked to turn $option $value for $address on the\n"
                      "$post_address mailing list: $change.\n\n"
                      "To confirm, just reply to this message, or write to\n  $confirm_address\n\n"
                      "If you did not ask for this, ignore this message: nothing changes.\n"
                      "The request expires in $days days.\n",
    "confirmation-sent": "This waits for a confirmation: a separate message went to $address.\n",
    "not-owner": "'$command' is for the owners of $post_address, written from an owner's address.\n"
                 "Nothing was done.  Send 'help' to $request for what you can do.\n",
    "owner-help": "$help\n"
                  "As an owner of $post_address, you can also send these to\n"
                  "$request (from this address; a change waits until you\n"
                  "confirm it, by the message sent back to you):\n"
                  "  invite ADDRESS...       ask each address to join (each must confirm)\n"
                  "  subscribe ADDRESS...    the same\n"
                  "  remove ADDRESS...       take members off the list (each is told)\n"
                  "  ban PATTERN...          who may neither post nor join: an address, *@domain,\n"
                  "                          or a regular expression starting with ^\n"
                  "  unban PATTERN...        take patterns off the ban list\n"
                  "  set SETTING VALUE       change a list setting ('show' lists them)\n"
                  "  delete N...             remove archived posts (index numbers them); each\n"
                  "                          number stays, as a page that says you removed it\n"
                  "  who                     the members and their options\n"
                  "  held                    the held posts, with links to decide on each\n"
                  "  pending                 requests waiting for an answer\n"
                  "  bounces                 members whose mail bounces, and why\n"
                  "  show                    the list's settings\n"
                  "  admin                   a link to sign in to the web admin\n"
                  "  approve TOKEN, reject TOKEN REASON, discard TOKEN\n"
                  "                          decide on a held post or a join request\n",
    "moderator-help": "$help\n"
                      "As a moderator of $post_address, you can also send these to\n"
                      "$request:\n"
                      "  held                    the held posts, with links to decide on each\n"
                      "  approve TOKEN, reject TOKEN REASON, discard TOKEN\n"
                      "                          decide on a held post or a join request\n",
    "owner-confirm": "You asked for these changes to $post_address:\n\n$actions\n\n"
                     "To carry them out, reply to this message, or tap\n  $link\n"
                     "and send the message it opens.\n\n"
                     "If you did not ask for this, ignore this message: nothing changes.\n"
                     "The request expires in $days days.\n",
    "done": "On $post_address:\n\n$lines\n",
    "owner-report": "$report\n",
    "admin-unavailable": "The web admin of $post_address is not set up on this host ([web] base_url).\n"
                         "Send 'help' to $request for what owners can do by email.\n",
    "admin-link": "To sign in to the web admin of $post_address as $address, open\n  $link\n"
                  "and press the button there.  The link works once, for $minutes minutes.\n\n"
                  "If you did not ask for it, ignore this message: nobody signs in without it.\n",
    "member-link": "To manage the subscriptions of $address on this host (digests, no mail,\n"
                   "leaving), open\n  $link\nand press the button there.  The link works once, for $minutes"
                   " minutes.\n\nIf you did not ask for it, ignore this message: nothing changes.\n",
    "removed": "$address was removed from the $post_address mailing list by its owners.\n\n"
               "Questions go to $owner.\n",
}


def make_notice(list_row, to, subject, text, *, sender="-request", reply_to=None,
                auto="auto-replied", in_reply_to=None, attachment=None, links=()):
    """A message redsky writes (RFC 3834: Auto-Submitted; never answered by
    well-behaved robots).  ``attachment``: a message's bytes, or a list of them.  ``links``:
    (label, mailto URL) that the text names; the message then has an HTML alternative too, where
    each is a link a phone opens with one tap.  Returns (Message-ID, bytes)."""
    import email
    from email import policy
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid
    msg = EmailMessage(policy=policy.default.clone(linesep="\n"))
    message_id = make_msgid(domain=list_row["domain"])
    reference = one_line(in_reply_to, 500)
    reference = reference if re.fullmatch(r"<[^<>\s]+>", reference) else None
    for name, value in (("From", list_address(list_row, sender)), ("To", ", ".join(to)),
                        ("Subject", one_line(subject, 300)), ("Date", formatdate(localtime=True)),
                        ("Message-ID", message_id), ("Reply-To", reply_to or None),
                        ("In-Reply-To", reference), ("References", reference), ("Auto-Submitted", auto),
                        ("Precedence", "bulk"), ("X-Auto-Response-Suppress", "All"),
                        ("X-Loop", list_address(list_row))):
        if value is not None:                   # no Reply-To, no reference
            msg[name] = value
    attachments = attachment if isinstance(attachment, list) else [attachment] * (attachment is not None)
    for as_message in (True, False):
        msg.set_content(text, cte="7bit" if text.isascii() else "quoted-printable")
        if links:
            msg.add_alternative(notice_html(text, links), subtype="html", cte="quoted-printable")
        try:
            for data in attachments:
                if as_message:
                    msg.add_attachment(email.message_from_bytes(data, policy=policy.compat32))
                else:                   # too broken to re-serialise: the bytes as they are
                    msg.add_attachment(data, maintype="application", subtype="octet-stream",
                                       filename="original.eml")
            return message_id, msg.as_bytes()
        except Exception:
            if not as_message:
                raise
            msg.clear_content()


def notice_html(text, links):
    """``text`` as HTML, each of ``links`` (label, URL) that it names a link with its label.
    Everything else is escaped text: nothing a held post's author wrote becomes markup or a link."""
    import html
    anchors = {html.escape(url, quote=False):
               f'<a href="{html.escape(url)}">{html.escape(label, quote=False)}</a>' for label, url in links}
    body = re.sub(r"(?:mailto:|https?://)[^\s<>]+", lambda m: anchors.get(m.group(0), m.group(0)),
                  html.escape(text, quote=False))
    return ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head><body>\n'
            f'<pre style="white-space: pre-wrap">{body}</pre>\n</body></html>\n')


def mailto(address, subject, body=""):
    """A mailto: URL (RFC 6068) that opens a message to ``address`` with ``subject`` (and ``body``)."""
    from urllib.parse import quote
    return f"mailto:{address}?subject={quote(subject, safe='')}" + \
        (f"&body={quote(body, safe='')}" if body else "")


def render(text_name, list_row, values, templates=""):
    """The text ``text_name`` filled with ``values`` (expand): the list's own
    welcome or goodbye when it has one, else a template file in the
    ``templates`` directory ([redsky] templates: LIST@DOMAIN/NAME.txt for
    one list, NAME.txt for all), else TEXTS[text_name], where a placeholder
    that ``values`` does not fill is a bug (KeyError), never a "$word" left
    in a notice.  A template the owner wrote keeps what it does not know."""
    own = list_row.get(text_name) if text_name in ("welcome", "goodbye") else ""
    for path in [os.path.join(templates, list_address(list_row).lower(), f"{text_name}.txt"),
                 os.path.join(templates, f"{text_name}.txt")] if templates and not own else []:
        try:
            with open(path, "rb") as fh:
                own = fh.read(100_000).decode("utf-8", "replace")
            break
        except FileNotFoundError:
            continue
        except OSError as e:
            log.error("template %s cannot be read (%s): the built-in text serves", path, e.strerror)
    return expand(own or TEXTS[text_name], list_row, strict=not own, **values)


class Notices:
    """The messages redsky writes about one action (confirmations, welcomes, moderation requests,
    warnings, alerts), queued in ``outbox`` so that they commit with the action's change.  A limited
    notice goes to each address at most once per Notices, and to one mailbox (limit_mailbox: +tags
    fold) at most [commands] max_replies times per list a day, ten times that to the moderation
    team, so redsky cannot be made to flood anyone; ``suppressed`` lists who did not get one.
    Requests take their confirmations from the same kind of daily allowance (within).  The mail of an
    address whose From: the MTA authenticated (``origin`` 'own') has allowances of its own, which
    requests anyone could have made in its name ('anyone': the web, any other mail) cannot spend.
    Past an allowance the address is told once until when the rest are ignored, and the list's
    owners once a day that requests are refused."""

    def __init__(self, store, config, list_row, outbox, in_reply_to=None):
        self.store, self.config, self.list, self.outbox = store, config, list_row, outbox
        self.in_reply_to, self.now = in_reply_to, time.time()
        self.answered, self.suppressed = set(), []
        self.team = {a.lower() for a in moderation_team(list_row)}     # capped ten times higher
        self.origin = "anyone"      # Requests: "own" for mail whose From: the MTA authenticated
        self.taken = collections.Counter()      # (mailbox, kind): taken by this action, not committed
        self.told = set()                       # (mailbox, kind): told by this action

    def send(self, to, title, text_name, values=None, *, limit=True, kind="notice", reply_to=None,
             attachment=None, auto="auto-replied", sender="-request", envelope="", links=()):
        """Queue notice ``text_name`` (render) to the addresses ``to``; return
        whether anybody gets it.  ``envelope``: its own envelope sender (a probe)."""
        text = render(text_name, self.list, values or {}, self.config.path_of("redsky", "templates"))
        if limit:
            wanted, to = to, []
            for a in wanted:                # the moderation team: ten times as many
                cap = self.config.number("commands", "max_replies") * (10 if a.lower() in self.team else 1)
                if a.lower() not in self.answered and self.within(
                        a, f"reply {self.origin} {self.list['id']}", cap,
                        f"{cap} replies from {list_address(self.list)}"):
                    to.append(a)
                    self.answered.add(a.lower())
            self.suppressed += [a for a in wanted if a not in to]
        if not to:
            return False
        message_id, data = make_notice(self.list, to, title, text, in_reply_to=self.in_reply_to,
                                       reply_to=reply_to, attachment=attachment, auto=auto, sender=sender,
                                       links=links)
        self.outbox.add(self.list["id"], kind, message_id, data, to, envelope)
        return True

    def limit_mailbox(self, address):
        """What limits count ``address`` as: its mailbox (mailbox_key), and any address of a list
        here (LIST-request+x@, LIST-owner@ ...) as that list's."""
        key = mailbox_key(address)
        local, _, domain = key.rpartition("@")
        m = ROLE_ADDRESS.fullmatch(local)
        if m and self.store.list_by_address(f"{m.group(1)}@{domain}") is not None:
            return f"{m.group(1).lower()}@{domain}"
        return key

    def within(self, address, kind, cap, what, mailbox=None, leave=False):
        """Whether ``address`` may be mailed once more today at a request of ``kind`` (see the
        allowances table; ``mailbox`` for another key than limit_mailbox's): if so, that mail is
        taken from its allowance, counted as the outbox commits.  If not, the first time in its day
        the address gets one notice saying until when requests in its name get no answer (``what``
        it had; ``leave``: with the member's own leave address, which needs no confirmation), and
        the list's owners one a day (refused)."""
        key = (mailbox or self.limit_mailbox(address), kind)
        row = self.store.q("allowance_get", *key).fetchone()
        count, since, told = (row[0], row[1], row[2]) if row and row[1] > self.now - 86400 else \
            (0, self.now, 0)
        if count + self.taken[key] < cap:
            self._take(key)
            return True
        until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(since + 86400))
        if not (told or key in self.told):
            self._take(key, 0, told=True)
            post, note = list_address(self.list), ""
            if key[0] != address.lower() and not leave:
                note = f" (addresses that differ only by a +tag count as one: {key[0]})"
            self.send([address], f"{post}: requests in your name are ignored until {until}",
                      "allowance-spent",
                      {"address": address, "what": what, "until": until, "mailbox": note,
                       "leave_now": self.leave_lines(address) if leave else ""}, limit=False)
        self.refused(address, what, until)
        return False

    def _take(self, key, count=1, told=False):
        self.taken[key] += count
        if told:
            self.told.add(key)
        now = self.now

        def take(db):
            row = db.execute(SQL["allowance_get"], key).fetchone()
            used, since, was = (row[0], row[1], row[2]) if row and row[1] > now - 86400 else (0, now, 0)
            db.execute(SQL["allowance_put"], (*key, used + count, since, int(bool(was or told))))
        self.outbox.changes.append(take)

    def leave_lines(self, address):
        """How the member ``address`` leaves at once, whatever anyone else sends: their own
        LIST-leave+TOKEN address (and with [web] base_url, their one-click page)."""
        token = leave_token(self.store.verp_key, self.list, address)
        base, post = self.config.get("web", "base_url"), list_address(self.list)
        return (f"\nTo leave {post} at once, whatever anyone else sends, write to\n"
                f"  {self.list['name']}-leave+{token}@{self.list['domain']}\n"
                + (f"or open\n  {base.rstrip('/')}/{post.lower()}/leave/{token}\n" if base else ""))

    def refused(self, address, what, until):
        """Tell the list's owners, once a day, that requests to it are refused (within)."""
        key, owners = ("", f"refused {self.list['id']}"), owners_of(self.list)
        row = self.store.q("allowance_get", *key).fetchone()
        if not owners or self.taken[key] or (row and row[1] > self.now - 86400):
            return
        self._take(key)
        self.send(owners, f"{list_address(self.list)}: requests refused today", "requests-refused",
                  {"address": address, "what": what, "until": until}, limit=False, auto="auto-generated")


def add_pending(changes, list_row, address, action, now, expiry, held_id=None, command=""):
    """A new confirmation token for ``action`` on ``address`` (``command``: what it carries out, as
    JSON); its pending row is appended to ``changes``, to commit with the notice that carries it."""
    token = new_token()
    row = (token, list_row["id"], address, action, held_id, now, now + expiry, command)
    changes.append(lambda db: db.execute(SQL["add_pending_command"], row))
    return token


def catch_up(store, outbox, list_row, address):
    """A member leaving digest mode gets the posts still waiting for the
    next digest as single posts, so switching never loses one."""
    for (raw,) in store.q("digest_posts", list_row["id"], float("inf")):
        outbox.add(list_row["id"], "post", RawMessage(raw).get("Message-ID") or "<digest-catch-up>",
                   raw, [address])


# ---------------------------------------------------------------------------
# 9. List and member options
# Owns: what a list setting may be (SETTABLE, validate_setting) and a member's options (MEMBER_OPTIONS).
# Calls: sections 2-8.
# ---------------------------------------------------------------------------

# A member's options: what each means when on.  nomail is status 'disabled' with
# disabled_reason 'nomail' (as an importer brings it), so every query that picks
# recipients already leaves such a member out; the others are columns of members.
MEMBER_OPTIONS = {"digest": "several posts at a time, in digests",
                  "nomail": "still a member, but no posts are sent",
                  "notmetoo": "no copy of their own posts",
                  "ack": "a short note when a post of theirs is accepted",
                  "moderate": "every post of theirs is held for the moderators"}
SELF_SERVICE_OPTIONS = ("digest", "nomail", "notmetoo", "ack")    # moderate is the moderators' to set
# What a member asks for by email that stops, delays or thins their mail waits for their
# confirmation, sent to their address (From: is forged as easily as written, as for leaving):
# ack off included, since the note of each accepted post is how a member sees someone post in
# their name.  The other changes only bring more mail: done at once, and the member is told.
CONFIRMED_OPTION_CHANGES = {("nomail", True): "no posts are sent to you until you turn it off again",
                            ("digest", True): "posts come later, several at a time, in digests",
                            ("notmetoo", True): "you get no copy of your own posts",
                            ("ack", False): "no more notes when a post of yours is accepted"}


def options_of(member):
    """{option: on} of a row with the member_options columns."""
    options = {name: bool(member[name]) for name in ("digest", "notmetoo", "ack", "moderate")}
    options["nomail"] = member["status"] == "disabled" and member["disabled_reason"] == "nomail"
    return options


def set_member_option(store, outbox, list_row, member, option, on, until=None):
    """The database change (a callable of db) that sets ``option`` of
    ``member`` (a member_options row); a member leaving digest mode gets
    the digest backlog first (catch_up, into ``outbox``).  nomail off
    resumes delivery only when nomail stopped it, not a bounce disable."""
    list_id, address = list_row["id"], member["address"]
    if option == "digest":
        if member["digest"] and not on:
            catch_up(store, outbox, list_row, address)
        return lambda db: db.execute(SQL["set_digest"], (int(on), list_id, address))
    if option == "nomail" and on:
        return lambda db: db.execute(SQL["set_nomail"], (time.time(), until, list_id, address))
    if option == "nomail":
        return lambda db: db.execute(SQL["nomail_off"], (list_id, address))
    assert option in MEMBER_OPTIONS, option
    return lambda db: db.execute(SQL["set_member_option"].format(column=option), (int(on), list_id, address))


def acl_allows(patterns, address):
    from fnmatch import fnmatchcase
    address = address.lower()
    return any(fnmatchcase(address, p.lower()) for p in patterns)


def banned(store, list_row, addresses):
    """The first of ``addresses`` the list's ban list names, or None.  A pattern is an address, a
    *@domain glob, or a regular expression starting with ^ (searched case-insensitively in at most
    254 characters of the address: bounded work whatever the input)."""
    patterns = [r[0] for r in store.q("bans", list_row["id"])]
    return matches_any(patterns, addresses) if patterns else None


def matches_any(patterns, addresses):
    """The first of ``addresses`` one of ``patterns`` names (see banned()), or None.  An expression
    an older redsky stored that could backtrack for long (see expression_cost) is not used."""
    globs = [p for p in patterns if not p.startswith("^")]
    expressions = [re.compile(p, re.I) for p in patterns
                   if p.startswith("^") and not expression_cost(p)]
    return next((a for a in addresses if acl_allows(globs, a)
                 or any(e.search(a[:254]) for e in expressions)), None)


def expression_cost(pattern):
    """Why matching ``pattern`` (a ^regular expression) against an address of 254 characters
    could take long, or "" when it cannot: it must start with ^ outside any alternative; a repeat
    of more than once repeats one character (a letter, ., a class), never a group; no
    back-references or look-arounds; and the paths the matcher may try (a repeat up to 255
    places, an alternative its branches) multiply to at most 255**3 (~20 ms on a crafted address)."""
    parser = getattr(re, "_parser", None) or __import__("sre_parse")   # 3.11 renamed sre_parse
    try:
        items = list(parser.parse(pattern))
    except (re.error, RecursionError, OverflowError):
        return "not a regular expression"
    if not items or str(items[0][0]) != "AT" or \
            str(items[0][1]) not in ("AT_BEGINNING", "AT_BEGINNING_STRING"):
        return "it must start with ^ outside any alternative (write ^(a|b), not ^a|b)"
    paths, todo = 1, items
    try:
        while todo:
            op, arg = todo.pop()
            op = str(op)
            if op in ("GROUPREF", "GROUPREF_EXISTS", "GROUPREF_IGNORE", "ASSERT", "ASSERT_NOT"):
                return "back-references and look-arounds are not taken"
            if op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                low, high, body = arg
                one_character = len(body) == 1 and \
                    str(body[0][0]) in ("LITERAL", "NOT_LITERAL", "ANY", "IN")
                if high > 1 and not one_character:
                    return ("a repeated group can take exponential time on a crafted address; repeat one"
                            " character")
                paths *= min(high, 254) + 1
                todo.extend(body)
            elif op == "BRANCH":
                paths *= len(arg[1])
                for branch in arg[1]:
                    todo.extend(branch)
            elif op == "SUBPATTERN":
                todo.extend(arg[-1])
            elif op == "ATOMIC_GROUP":          # (?>...), Python 3.11
                todo.extend(arg)
            if paths > 255 ** 3:
                return "too many repeats and alternatives (at most three repeats, fewer with alternatives)"
    except (TypeError, ValueError, IndexError):    # a form of a later Python's parser
        return "too intricate to check: write it more simply"
    return ""


def ban_pattern(pattern):
    """A ban pattern checked (Failure 65 if not one), as stored."""
    pattern = pattern.strip()
    if pattern.startswith("^"):
        try:
            re.compile(pattern)
        except re.error as e:
            raise Failure(f"not a regular expression: {pattern!r}: {e}", EX_DATAERR)
        why = expression_cost(pattern)
        if why:
            raise Failure(f"{pattern!r}: {why}", EX_DATAERR)
        return pattern
    if not re.fullmatch(r"[^\s@]+@[^\s@]+", pattern):
        raise Failure(f"not an address, *@domain or ^regular expression: {pattern!r}", EX_DATAERR)
    return pattern.lower()


LIST_CHOICES = schema_choices("lists")       # access, subscribe_policy, dmarc, archive, ...
ACCESS_MODES = LIST_CHOICES["access"]
SUBSCRIBE_POLICIES = LIST_CHOICES["subscribe_policy"]
SETTABLE = ("access", "passphrase", "subject_tag", "footer", "owners", "moderators", "subscribe_policy",
            "welcome", "goodbye", "dmarc", "dmarc_action", "archive", "archive_url", "digest_format",
            "digest_size_threshold", "digest_interval", "reply_to", "reply_to_strip", "max_size",
            "nonmember_action", "emergency", "max_posts_per_day", "notify_owners", "dmarc_addresses",
            "filter_content", "pass_types", "filter_types", "pass_extensions", "filter_extensions",
            "convert_html_to_plaintext", "collapse_alternatives", "signed_posts", "description",
            "subscribe_question", "subscribe_answers", "advertised")
LIST_FLAGS = ("reply_to_strip", "emergency", "notify_owners", "filter_content", "convert_html_to_plaintext",
              "collapse_alternatives", "advertised")                    # yes/no, on/off
CONTENT_LISTS = ("pass_types", "filter_types", "pass_extensions", "filter_extensions")
LIST_NUMBERS = ("max_size", "max_posts_per_day")                        # 0: no limit
# What each setting does, one line: `show` by email and the owner's settings page on the web.
SETTING_HELP = {
    "access": "who may post: open (anyone), subscribers (members and the acl), acl (the acl only), "
              "passphrase (an Approved: passphrase), moderated (every post is held)",
    "passphrase": "the passphrase an Approved: header or first line carries to approve a post (only a hash"
                  " is kept)",
    "subject_tag": "put before every Subject, e.g. [team]; %d is the list's post number",
    "footer": "added to every post; $unsubscribe_personal is each member's own leave link",
    "owners": "who run the list, by email and on the web, and moderate it (addresses, comma-separated)",
    "moderators": "who decide on held posts and join requests, and nothing else (comma-separated)",
    "subscribe_policy": "joining: confirm (the address confirms), open, approve (the moderators decide), "
                        "confirm+approve, closed",
    "welcome": "the text new members get (empty: the built-in one); $address is theirs",
    "goodbye": "the text leaving members get (empty: the built-in one)",
    "dmarc": "rewrite posts whose author's domain asks receivers to refuse forgeries: auto, always, never",
    "dmarc_action": "how: munge_from (From becomes the list, the author goes to Reply-To) or wrap_message",
    "archive": "private (members read it by email), public (anyone, and on the web), off (nothing kept)",
    "archive_url": "the List-Archive link of every post (empty: the web archive when public)",
    "digest_format": "the digests of members who did not choose: mime (the posts attached) or plain (text)",
    "digest_size_threshold": "KB of waiting posts that make a digest go out",
    "digest_interval": "a digest goes out at the latest this long after the last one (1d, 12h, 1w)",
    "reply_to": "none (as the poster wrote it), list, or an address added to Reply-To",
    "reply_to_strip": "remove the poster's own Reply-To first",
    "max_size": "KB; a larger post is held for the moderators (0: no limit)",
    "nonmember_action": "a post from someone who may not post: hold, reject (and tell them), discard, accept",
    "emergency": "hold every post for the moderators, whatever the access mode",
    "max_posts_per_day": "a poster's posts past this many in 24 hours are held (0: no limit)",
    "notify_owners": "tell the owners who joins and who leaves",
    "dmarc_addresses": "authors always given dmarc_action: domains, *@domain, addresses, ^expressions",
    "filter_content": "remove the MIME parts the five settings below do not want",
    "pass_types": "keep only parts of these MIME types (empty: all), e.g. text/plain, image/*",
    "filter_types": "remove parts of these MIME types",
    "pass_extensions": "keep only attachments with these file name extensions (empty: all)",
    "filter_extensions": "remove attachments with these file name extensions, e.g. exe, bat",
    "convert_html_to_plaintext": "turn HTML parts into plain text",
    "collapse_alternatives": "keep only the plain text of a multipart/alternative",
    "signed_posts": "a signed or encrypted post is never altered: pass it whole, or hold it",
    "description": "one line on the list's web pages and the front page",
    "subscribe_question": "a question the web's subscribe form asks (with subscribe_answers)",
    "subscribe_answers": "its right answers, separated by |",
    "advertised": "name the list on the web's front page, with its description",
}
# what expand() fills in texts the owners write, beyond the list's own addresses
PLACEHOLDERS = {"footer": ("address", "unsubscribe_personal"), "welcome": ("address",),
                "goodbye": ("address",)}


_SETTING_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")   # all but tab and newline


def validate_setting(key, value, escapes=True):
    """Check one list setting; return (column, value to store).  ``escapes``: a texts' \\n is a
    new line (typed on one line: the shell, a `set` by email), not so from the web's text boxes."""
    value = value.replace("\r\n", "\n")
    bad = _SETTING_CONTROLS.search(value)
    if bad:
        raise Failure(f"{key}: a control character ({ord(bad.group()):#06x}) is not taken", EX_DATAERR)
    if key in LIST_CHOICES:
        if value not in LIST_CHOICES[key]:
            raise Failure(f"{key} must be one of {', '.join(LIST_CHOICES[key])}", EX_USAGE)
        return key, value
    if key == "passphrase":
        return "passphrase_hash", hash_passphrase(value) if value else ""
    if key in ("owners", "moderators"):
        owners = [o.strip() for o in value.replace(";", ",").split(",") if o.strip()]
        bad = [o for o in owners if not valid_address(o)]
        if bad:
            raise Failure(f"not a valid address: {bad[0]!r}", EX_DATAERR)
        return key, ", ".join(dict.fromkeys(normalize_address(o) for o in owners))      # each once
    if key in ("footer", "welcome", "goodbye"):
        value = value.replace("\\n", "\n") if escapes else value
        unknown = unknown_placeholders(value, PLACEHOLDERS[key])
        if unknown:
            raise Failure(f"{key}: unknown placeholder ${unknown[0]}; known: "
                          + ", ".join("$" + k for k in sorted(set(EXPANDED) | set(PLACEHOLDERS[key])))
                          + " ($$ for a dollar sign)", EX_DATAERR)
        return key, value
    if key in LIST_FLAGS:
        if value.lower() not in FLAG_WORDS:
            raise Failure(f"{key} is yes or no", EX_USAGE)
        return key, int(FLAG_WORDS[value.lower()])
    if key in LIST_NUMBERS:
        if not re.fullmatch(r"\d{1,9}", value):
            raise Failure(f"{key} is a whole number, 0 for no limit", EX_USAGE)
        return key, int(value)
    if key in CONTENT_LISTS:
        items = [i.lower().lstrip(".") for i in re.split(r"[\s,]+", value) if i]
        form = r"[a-z0-9!#$&^_.+-]+/(?:\*|[a-z0-9!#$&^_.+-]+)|[a-z0-9!#$&^_.+-]+" if key.endswith("types") \
            else r"[a-z0-9_+-]{1,20}"
        bad = [i for i in items if not re.fullmatch(form, i)]
        if bad:
            raise Failure(f"{key}: {bad[0]!r} is not a " + ("MIME type (type/subtype, type/* or type)"
                          if key.endswith("types") else "file name extension"), EX_DATAERR)
        return key, " ".join(items)
    if key == "dmarc_addresses":
        items = [i.strip() for i in value.split(",") if i.strip()]
        return key, ", ".join(ban_pattern(i if "@" in i or i.startswith("^") else f"*@{i}") for i in items)
    if key == "reply_to":
        if value.lower() in ("none", "list"):
            return key, value.lower()
        if not valid_address(value):
            raise Failure("reply_to is none, list or an address", EX_DATAERR)
        return key, normalize_address(value)
    if key == "archive_url":
        if value and not re.fullmatch(r"(https?|ftp|mailto):[^\s<>]+", value):
            raise Failure("archive_url must be an http(s), ftp or mailto URL, or empty", EX_DATAERR)
        return key, value
    if key == "digest_size_threshold":
        if not re.fullmatch(r"\d{1,9}", value) or int(value) < 1:      # SQLite's integers end somewhere
            raise Failure("digest_size_threshold is a number of KB, from 1 to 999999999", EX_USAGE)
        return key, int(value)
    if key == "digest_interval":
        m = re.fullmatch(r"(\d{1,9}(?:\.\d{1,9})?)([smhdw]?)", value.strip().lower())
        if not m or float(m.group(1)) <= 0:
            raise Failure("digest_interval is a duration like 1d, 12h or 1w", EX_USAGE)
        return key, float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if key == "description":
        return key, one_line(value, 300)
    if key == "subscribe_question":
        return key, one_line(value, 200)
    if key == "subscribe_answers":
        answers = [one_line(a, 1000) for a in value.split("|") if one_line(a)]
        if len(answers) > 20 or any(len(a) > 100 for a in answers):
            raise Failure("subscribe_answers: at most 20 answers of at most 100 characters, separated"
                          " by |", EX_DATAERR)
        return key, " | ".join(answers)
    if key == "subject_tag":
        if "\n" in value or "\r" in value:
            raise Failure("subject_tag must be one line", EX_DATAERR)
        if "%" in value.replace("%d", "") or value.count("%d") > 1 or re.search(r"\$[{\w]", value):
            raise Failure("subject_tag takes one placeholder, %d (the list's post number), and no other"
                          " % or $ sequence", EX_DATAERR)
        return "subject_tag", value.strip()
    raise Failure(f"unknown setting {key!r}; settable: {', '.join(SETTABLE)}", EX_USAGE)


# ---------------------------------------------------------------------------
# 10. Bounce parsing and scoring
# Owns: reading DSNs, feedback reports and free-text bounces; causes and their weights; scores.
# Calls: sections 2-9.
# ---------------------------------------------------------------------------

def parse_report(raw):
    """A report (a bounce, a feedback report) parsed by the email package, made safe first: the
    package builds one Message per block of a message/delivery-status part, which hostile input
    makes millions of, so such parts are renamed text/x-delivery-status and parse_dsn reads their
    blocks itself.  Raises RecursionError for absurdly deep MIME."""
    from email import message_from_bytes, policy
    raw = re.sub(rb"(?i)message/delivery-status", b"text/x-delivery-status", raw)
    return message_from_bytes(raw, policy=policy.compat32)


def parse_dsn(message):
    """Per-recipient results (_result) of an RFC 3464 delivery-status report (parsed by
    parse_report), action normalised; [] when it holds no delivery-status fields.  A report whose
    MIME is broken (the fields in the body of a single part) is read too."""
    texts = []
    for part in message.walk():
        if part.get_content_type() in ("text/x-delivery-status", "message/delivery-status"):
            payload = part.get_payload()
            texts.append(payload if isinstance(payload, str) else "\n\n".join(map(str, payload)))
    if not texts:                          # broken MIME, or a forwarded report
        text = _report_text(message, 200_000)
        if re.search(r"(?im)^[> \t]*final-recipient:", text):
            texts = [re.sub(r"(?m)^[> \t]+", "", text)]
    results = []
    for text in texts:
        blocks = dsn_blocks(text)
        reporting = next((_dsn_value(b["reporting-mta"]) for b in blocks if "reporting-mta" in b), "")
        for block in blocks:
            recipient = _dsn_recipient(block)
            if not recipient:
                continue
            diagnostic = block.get("diagnostic-code", "")
            status = _STATUS.search(block.get("status", "")) or _STATUS.search(diagnostic)
            status = ".".join(status.groups()) if status else ""
            results.append(_result(recipient, _dsn_action(block.get("action", ""), status), status,
                                   diagnostic or block.get("status", ""), reporting))
    return results


def _dsn_action(value, status):
    """RFC 3464 2.3.3 Action, normalised: mailers also write "failure", "error" or "failed (bad
    destination mailbox address)"; a block without one is judged by its status."""
    value = value.strip().lower()
    for prefix, action in (("fail", "failed"), ("error", "failed"), ("delay", "delayed"),
                           ("deliver", "delivered"), ("relay", "relayed"), ("expand", "expanded")):
        if value.startswith(prefix):
            return action
    return {"5": "failed", "4": "delayed", "2": "delivered"}.get(status[:1], value)


def _dsn_recipient(block):
    """The recipient a DSN block is about: Final-Recipient, else (when that
    is a pipe, a path or no address at all) Original-Recipient; the address
    is dug out of X.400 strings, "SMTP=user@host", source routes and the like."""
    for field in ("final-recipient", "original-recipient", "x-actual-recipient"):
        value = _dsn_value(block.get(field, ""))
        if value.startswith("|") or "/" in value.split("@")[0]:
            continue                       # a pipe command or a path, not an address
        found = _ADDRESS.findall(value.rpartition(":")[2] if value.startswith("@") else value)
        if found:
            return found[-1] if value.startswith("@") else found[0]
    return ""


def dsn_blocks(text, limit=1000):
    """The field blocks of a delivery-status body (RFC 3464 2.1), at most
    ``limit``: a dict per block, field names lower-case, continuation lines
    joined; read line by line, so linear whatever the input."""
    blocks, fields, name = [], {}, None
    for line in itertools.chain(text.splitlines(), [""]):     # the empty line ends the last block
        if not line.strip():
            if fields:
                blocks.append({k: " ".join(v) for k, v in fields.items()})
                fields, name = {}, None
                if len(blocks) >= limit:
                    return blocks
        elif line[:1] in (" ", "\t"):
            if name is not None:
                fields[name].append(line.strip())
        else:
            key, colon, value = line.partition(":")
            name = key.strip().lower() if colon else None
            if name is not None:
                fields.setdefault(name, []).append(value.strip())
    return blocks


# What reports that are not RFC 3464 look like (qmail, Exim, old Sendmail,
# Exchange, Domino, GroupWise, web mailers, mobile carriers).  Phrases are
# matched case-insensitively on the report's text before the returned message.
DELAY_PHRASES = re.compile(
    r"this is a warning message only|has not yet been delivered|will (continue to )?(be )?retr(y|ied)|"
    r"delivery (has been )?delayed|delayed mail|still being retried|"
    r"not been able to deliver .* for \d+ hours|delivery status notification \(delay\)|"
    r"warning: could not send message for past", re.I)
GAVE_UP_PHRASES = re.compile(
    r"permanent(ly)? (fatal )?(error|failure)|i'?ve given up|i'?m not going to try again|"
    r"gave up|giving up|retry time(out)? (not reached|exceeded)|too long in (the )?queue|"
    r"could not be delivered (within|for) \d+|message expired|expired after", re.I)
FAILURE_PHRASES = re.compile(
    r"this is the qmail-send program|could not be delivered|permanent (fatal )?errors?|"
    r"the following address(es)? failed|undeliverable|undelivered|delivery (has )?failed|delivery failure|"
    r"did not reach (some or all|the following)|could not be reached|was not delivered|user unknown|"
    r"no such (user|mailbox)|mailbox (unavailable|not found|is full)|address rejected|"
    r"recipient (address )?rejected|does not exist|unknown (user|recipient)|returned mail|"
    r"delivery to the following recipients? failed|message not delivered|mail delivery failed|"
    r"failure notice|couldn't find any host|account (is )?(disabled|inactive)|quota exceeded|"
    r"unable to deliver|cannot be delivered|can ?not deliver|mail failed|mail failure|"
    r"returned to sender|non[- ]?delivery|error sending your mail|trouble delivering|rejected your message|"
    r"could not deliver|failed to deliver|delivery problem|transcript of session follows|"
    r"permanent error|host unknown|no valid recipients", re.I)
# local parts of at most 64 characters (RFC 5321 4.5.3.1.1): a bounded scan, so linear
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+")
_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_FAILURE_STATUS = re.compile(r"(?<![\d.])([45])\.(\d{1,3})\.(\d{1,3})(?![\d.])")


# Where the returned message starts inside a text report: a separator line,
# or the first unindented header field of the copy.
_ORIGINAL = re.compile(
    r"^([ \t|]*-+ ?(original message|below this line is a copy|this is a copy of the message|"
    r"the original message|message headers follow|unsent message follows|message text follows)|"
    r"[ \t]*original message( header)?s?:?[ \t]*$|"
    r"(received|return-path|message-id|from|date|to|subject|list-id):[ \t])", re.I | re.M)


def find_failures(message, own=()):
    """Per-recipient results (_result, action failed, delayed, delivered or auto-reply, plus
    bounce_cause's cause and weight) of any bounce: RFC 3464 DSNs (parse_dsn), else the usual
    non-standard formats.  A report is a failure when its text or X-Failed-Recipients says so, even
    if it also says Auto-Submitted: auto-replied (Exim and Google put that on real bounces).
    ``own``: the list's addresses, never taken as a recipient."""
    results = parse_dsn(message) or _text_failures(message, own)
    text = _report_text(message, 20_000)
    cut = _ORIGINAL.search(text)
    text = text[:cut.start()] if cut else text
    after_data = bool(_AFTER_DATA.search(text))
    for r in results:
        r["cause"], r["weight"] = bounce_cause(r["action"], r["status"], r["diagnostic"], after_data, text)
    return results


def _text_failures(message, own):
    """find_failures for a report that is not RFC 3464: the verdict from the text before the
    returned message, the recipients from X-Failed-Recipients, else the addresses in that text, else
    the To: of the returned message."""
    subject = decode_header_text(str(message.get("Subject", "")))
    daemon = re.search(r"mailer-daemon|postmaster|mail-?daemon|mmsc|bounce|no-?reply|notification",
                       " ".join(map(str, message.get_all("From", []))), re.I)
    failed_header = [a.strip().strip("<>") for v in message.get_all("X-Failed-Recipients", [])
                     for a in str(v).split(",") if "@" in a]
    text = _report_text(message)
    if "bouncedRecipients" in text:
        return _ses_failures(text)
    cut = _ORIGINAL.search(text)
    head, tail = (text[:cut.start()], text[cut.start():]) if cut else (text, "")
    status = _FAILURE_STATUS.search(head)
    status = ".".join(status.groups()) if status else ""
    says_failed = bool(failed_header or FAILURE_PHRASES.search(head) or FAILURE_PHRASES.search(subject)
                       or GAVE_UP_PHRASES.search(head))
    auto = (str(message.get("Auto-Submitted", "no")).split(";")[0].strip().lower() == "auto-replied"
            or message.get("X-Autoreply") or message.get("X-Autorespond")
            or str(message.get("Precedence", "")).strip().lower() == "auto_reply"
            or AUTO_REPLY_SUBJECT.search(subject))
    if auto and not (failed_header or (daemon and says_failed)):
        return [_result("", "auto-reply", "", subject, size=200)]
    if GAVE_UP_PHRASES.search(head):
        action = "failed"
    elif DELAY_PHRASES.search(head) or DELAY_PHRASES.search(subject):
        action = "delayed"
    elif says_failed or (daemon and status[:1] == "5"):
        action = "failed"
    elif daemon and status[:1] == "4":
        action = "delayed"
    else:
        return []
    diagnostic = " ".join(line.strip() for line in head.splitlines()
                          if re.search(r"\b[45]\d\d\b|[45]\.\d|unknown|not exist|rejected|quota|full|"
                                       r"disabled|denied|refused|invalid|blocked|spam|expired|"
                                       r"no such|not found|too long|timed? ?out", line, re.I))[:2000]
    if not diagnostic:
        diagnostic = " ".join(head.split())[:2000]
    ignore = {a.lower() for a in own} | {a.lower() for a in addresses_in(message.get_all("From", []) +
                                                                         message.get_all("To", []))}
    recipients = failed_header or _addresses_named(head, ignore)
    if not recipients:                    # only the returned copy says where it went
        copy_to = re.findall(r"(?im)^to:[ \t]*(.+)$", tail[:20_000])
        named = [a for a in addresses_in(copy_to[:1]) if a.lower() not in ignore]
        recipients = named if len(named) == 1 else []
    status = status or ("5.0.0" if action == "failed" else "4.0.0")
    return [_result(r, action, status, diagnostic) for r in recipients or [""]]


def _result(recipient, action, status, diagnostic, reporting_mta="", size=1000):
    return {"recipient": recipient, "action": action, "status": status,
            "diagnostic": one_line(diagnostic, size), "reporting_mta": reporting_mta}


def _addresses_named(head, ignore):
    """The recipients a report names in its text: the addresses left once
    ours, the sender's and those of everyone else a report names are set aside."""
    found = []
    for line in head.splitlines():
        if re.search(r"contact|assistance|helpdesk|help desk", line, re.I):
            ignore = ignore | {a.lower() for a in _ADDRESS.findall(line)}
        if _NOT_A_RECIPIENT_LINE.match(line) or re.search(r"\|\s*/|\"\|", line):
            continue
        for m in _ADDRESS.finditer(line):
            a = m.group(0).strip(".")
            before = line[max(0, m.start() - 20):m.start()].lower()
            if (before[-1:] in ("/", "=") or re.search(r"(generated|expanded) from:? *<?$|from: *<?$", before)
                    or a.lower() in ignore or a.lower().startswith(("postmaster@", "mailer-daemon@"))
                    or re.fullmatch(r"\d+(\.\d+){3}@.*|.*@[\d.]+", a)):
                continue
            found.append(a)
    return [a for a in dict.fromkeys(found) if a.lower() not in ignore]


# Lines of a report that name someone other than the failed recipient: the returned message's header
# fields as the report quotes them, a transcript's MAIL FROM.
_NOT_A_RECIPIENT_LINE = re.compile(
    r"[ \t>]*(message-id|references|in-reply-to|from|sender|reply-to|return-path|to|cc|date|subject|"
    r"mail from|received|x-[\w-]+|sent|envelope-from)[ \t]*:", re.I)


def _ses_failures(text):
    """Recipients of an Amazon SES bounce notification (JSON, as SNS mails
    it): bounce.bouncedRecipients, Permanent → failed, else delayed."""
    note, start = text, text.find("{")
    for _ in range(2):                     # SNS wraps the notification in its own JSON
        try:
            note = json.JSONDecoder(strict=False).raw_decode(note, start)[0] if start >= 0 else {}
        except (ValueError, RecursionError):       # not JSON, or nested absurdly deep
            return []
        if not (isinstance(note, dict) and isinstance(note.get("Message"), str)):
            break
        note, start = note["Message"], note["Message"].find("{")
    bounce = note.get("bounce") if isinstance(note, dict) else None
    if not isinstance(bounce, dict) or not isinstance(bounce.get("bouncedRecipients"), list):
        return []
    action = "failed" if bounce.get("bounceType") == "Permanent" else "delayed"
    return [_result(str(r.get("emailAddress", "")), action, str(r.get("status", "")),
                    str(r.get("diagnosticCode", ""))) for r in bounce["bouncedRecipients"][:100]
            if isinstance(r, dict) and _ADDRESS.fullmatch(str(r.get("emailAddress", "")))]


# Causes, after RFC 3463's codes and the reasons Sisimai names.  Hard failures weigh 1, soft ones
# 0.5; a refusal of the post or of the list's own sender address (the post, not the member, is the
# problem) and everything that is not a failure weigh nothing.  The refusals are looked for first (a
# "5.1.1 IP address blacklisted" is about the post), then a specific status code decides, then the
# diagnostic text.
REFUSALS = (
    ("rejected", r"sender (address )?(rejected|refused|denied|verify failed)|domain of sender|"
     r"sender domain|envelope sender|return path|from address|5\.1\.[78]\b"),
    ("policy", r"\bspam|block ?list|black ?list|blocked (by|for|due|because|using|as|ip)|"
     r"(ip|sender|message|mail|host|domain|connection|address) (was |is |has been )?blocked|\bpolicy|"
     r"dmarc|\bspf\b|dkim|reputation|virus|malware|"
     r"content (rejected|filter)|not authori[sz]ed|access denied|relay(ing)? (denied|not permitted)|"
     r"too many (recipients|messages|connections)|rate limit|frequency limit"),
)
CAUSES = (
    ("userunknown", 1, r"5\.1\.([0134]|10)", r"user unknown|unknown (user|recipient|local[- ]part|address)|"
     r"no such (user|mailbox|recipient|account|address)|does ?n[o']t exist|not exist|"
     r"invalid (recipient|mailbox|address|user)|recipient (address )?(not found|unknown|invalid|rejected)|"
     r"mailbox not found|no mailbox|"
     r"not a valid (mailbox|recipient|user)|unrouteable address|(user|mailbox|recipient) (is )?not found|"
     r"doesn't have a .{1,40} account|no valid recipients|address (is )?unknown|unknown mailbox|"
     r"address rejected|"
     r"not our customer|user (is )?not (here|registered|known)|bad destination mailbox|mailbox unavailable|"
     r"not listed in|invalid (final delivery )?userid|no longer a valid"),
    ("hostunknown", 1, r"5\.1\.2", r"host unknown|unknown host|domain not found|no such domain|"
     r"host not found|"
     r"unrouteable domain|name service error|couldn't find any host|domain (does not|doesn't) exist|"
     r"mail exchanger|domain is not reachable|host or domain name not found"),
    ("hasmoved", 1, r"5\.1\.6", r"has moved|no longer (valid|available|in use|with)"),
    ("notaccept", 1, r"-", r"does not accept (e-?)?mail|null mx"),
    ("suspend", 1, r"5\.2\.1|5\.7\.13", r"disabled|suspended|inactive|discontinued|deactivated|"
     r"account (has been |is )?"
     r"(locked|closed|expired|frozen|blocked)|mailbox (is )?(disabled|inactive|locked|frozen)"),
    ("mailboxfull", 0.5, r"[45]\.2\.2", r"mailbox (is )?full|quota|insufficient (disk )?(space|storage)|"
     r"storage (limit|allocation)|exceed(ed|s) (the )?(storage|size limit)|mailbox size limit"),
    ("systemfull", 0.5, r"[45]\.3\.1", r"system (is )?full|out of (disk )?space"),
    ("expired", 0.5, r"[45]\.4\.7", r"expired|gave up|given up|too long|retry time"),
    ("loop", 0.5, r"[45]\.4\.6", r"hop count|mail loop|loop detected|too many hops"),
)
_REFUSALS = [(cause, re.compile(text, re.I)) for cause, text in REFUSALS]
_CAUSES = [(cause, weight, re.compile(code), re.compile(text, re.I)) for cause, weight, code, text in CAUSES]
# The receiver refused the message after reading it (a content filter
# speaking), not the address: RCPT was accepted.
_AFTER_DATA = re.compile(r"(after|in reply to) end of data|after data command", re.I)


def bounce_cause(action, status, diagnostic, after_data=False, context=""):
    """(cause, weight) of one result: what a failure says about the member.
    Only a failure weighs anything: 1 for a hard one (no such user or
    domain, disabled), 0.5 for a soft one (full, expired, an unknown user
    only after DATA, anything unexplained), 0 for a refusal of the post.
    ``context``, the report's own text, explains a bare status code."""
    if action != "failed":
        return (action or "unknown"), 0
    diagnostic, context = diagnostic[:2000], context[:20_000]
    if context and not re.search(r"[A-Za-z]{3}", re.sub(r"(?i)smtp|x-\w+|[245]\.\d+\.\d+", "", diagnostic)):
        diagnostic = context              # the DSN gave no words: the text around it says why
    for cause, text in _REFUSALS:
        if text.search(diagnostic):
            return cause, 0
    cause = next((c for c in _CAUSES if c[2].fullmatch(status)), None)
    if cause is None and status.startswith("5.7."):     # security or policy (RFC 3463 3.8) ...
        cause = next((c for c in _CAUSES if c[1] == 1 and c[3].search(diagnostic)), None)
        if cause is None:                               # ... unless it plainly names the address
            return "policy", 0
    cause = cause or next((c for c in _CAUSES if c[3].search(diagnostic)), None)
    if cause is None:
        return "other", 0.5
    if after_data and cause[1] == 1:
        return "filtered", 0.5
    return cause[0], cause[1]


def payload_text(part, default="us-ascii"):
    """The decoded text of a non-multipart part, in its charset (``default``
    when it names none, UTF-8 when Python does not know it)."""
    payload = part.get_payload(decode=True) or b""
    try:
        return payload.decode(part.get_content_charset() or default, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def _report_text(message, limit=100_000):
    """The human-readable text of a report (its first text parts), not the returned message."""
    parts = []
    for part in message.walk():
        if part.get_content_type() in ("message/rfc822", "text/rfc822-headers"):
            break
        if part.get_content_maintype() in ("text", "multipart") and not part.is_multipart():
            text = payload_text(part, "utf-8")     # a multipart without parts: broken MIME, read as text
            if part.get_content_subtype() == "html":
                text = html_text(text) if len(text) < 500_000 else re.sub(r"<[^>]*>", " ", text)
            parts.append(text)
    return "\n".join(parts)[:limit]


def _dsn_value(value):
    """``rfc822; user@host`` → ``user@host`` (the address-type is dropped)."""
    value = str(value or "")
    return value.split(";", 1)[1].strip() if ";" in value else value.strip()


def returned_headers(parsed):
    """The header sections of the messages a report returns, as text: its
    message/rfc822 and text/rfc822-headers parts (RFC 3462)."""
    for part in parsed.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822" and part.is_multipart():
            yield "".join(f"{k}: {v}\n" for k, v in part.get_payload(0).items())
        elif ctype in ("text/rfc822-headers", "text/x-rfc822-headers"):
            yield payload_text(part, "utf-8").split("\n\n", 1)[0][:65536]


def bounced_message_ids(parsed, raw=b""):
    """Message-IDs of the original message a report returns (returned_headers),
    or quoted in the body of a report in plain text (qmail, old Sendmail, Exchange …)."""
    body = raw.split(b"\n\n", 1)[-1] if b"\n\n" in raw else b""
    quoted = re.findall(rb"(?im)^[ \t>]*message-id:[ \t]*(<[^<>\s]+>)", body)
    ids = [q.decode("utf-8", "replace") for q in quoted]
    for headers in returned_headers(parsed):
        m = re.search(r"(?im)^message-id:\s*(<[^<>\s]+>)", headers)
        ids += [m.group(1)] if m else []
    return ids


def delivered(store, list_id, address, message_ids):
    """The evidence: did redsky really deliver one of these posts of this
    list to this address?  (A forged report cannot name one.)"""
    return next((m for m in message_ids if store.q("delivered_to", list_id, m, address).fetchone()),
                None)


def bounce_record(list_id, address, source, **columns):
    """A row of the bounces table (SQL add_bounce) by column name; a column not given is empty."""
    return {"list_id": list_id, "address": address, "received": time.time(), "source": source, "action": "",
            "status": "", "diagnostic": "", "reporting_mta": "", "counted": 0, "why": "", "message_id": "",
            "raw": None, "cause": "", "weight": 0, **columns}


def score_bounce(db, config, list_id, address, now, weight=1):
    """Raise a member's bounce score by ``weight`` (bounce_cause) for one permanent failure, as the
    best list managers do: at most once a day; a score untouched for info_stale_after starts again
    from zero; at score_threshold the member is disabled (not removed).  Returns (counted, why)."""
    row = db.execute(SQL["member_bounce_state"], (list_id, address)).fetchone()
    if row is None:
        return False, "not a member"
    status, score, last = row[0], row[1], row[2]
    if last and now - last < 86400 and score > 0:
        return False, "already scored today"
    if last and now - last > config.duration("bounces", "info_stale_after"):
        score = 0
    score += weight
    threshold = config.number("bounces", "score_threshold")
    disable = status == "enabled" and score >= threshold
    db.execute(SQL["score_bounce"], {"score": score, "now": now, "disable": disable, "list_id": list_id,
                                     "address": address})
    return True, f"score {score:g}" + (f": disabled at the threshold {threshold:g}" if disable else "")


def policy_rejection(status, address):
    """The `why` of a failure that policy caused (5.7.x, a blocklist, a spam
    filter: the post was refused, not the member).  policy_alerts counts
    them per domain from this text."""
    return f"policy rejection {status} at {address.rpartition('@')[2].lower()}: caused by the post"


# ---------------------------------------------------------------------------
# 11. The archive
# Owns: the archive (maildir or mbox per list) and its permanent numbers (archived_posts), the text of
#       a post, what is published of it (published_copy) and searched (search_texts).
# Calls: sections 2-10.
# ---------------------------------------------------------------------------

# Archive ---------------------------------------------------------------------
# Each post has a permanent number: a row of archived_posts taken in the transaction that records it
# (archive_post); its bytes are in [archive] dir (a Maildir file the row names, or an mbox, found by
# Message-ID).  A removed post keeps its row as the gap that says so: no number is given twice.

def archive_path(config, list_row):
    """[archive] dir/LIST@DOMAIN: a Maildir, or an mbox file ending .mbox."""
    return os.path.join(config.path_of("archive", "dir"), list_address(list_row).lower()
                        + (".mbox" if config.get("archive", "format") == "mbox" else ""))


def pages_dir(config, list_row):
    """[web] pages/LIST@DOMAIN: the web pages of a public archive (section 12)."""
    return os.path.join(config.path_of("web", "pages"), list_address(list_row).lower())


def archive_add(config, list_row, data, sender=None, name=None):
    """Add one post to the list's archive (a Maildir file named ``name``); return its key.  A
    Maildir delivery is atomic; the mbox is locked (fcntl and dot-lock, as mailbox.mbox does)
    against concurrent queue runs."""
    path = archive_path(config, list_row)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if config.get("archive", "format") == "maildir":
        return maildir_add(path, data, name)
    import mailbox
    # mailbox creates a missing file with open(path, "wb+"), which would
    # truncate what a parallel queue run has just added: create it first
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666))
    box = _locked_mbox(config, path)
    try:
        envelope = sender if sender and valid_address(sender) and " " not in sender else "MAILER-DAEMON"
        from_line = f"From {envelope} {time.asctime(time.gmtime())}\n".encode()
        key = box.add(from_line + data.replace(b"\r\n", b"\n"))
        box.flush()
    finally:
        box.unlock()
        box.close()
    return key


def _locked_mbox(config, path):
    import mailbox
    box = mailbox.mbox(path, create=True)
    deadline = time.monotonic() + config.duration("redsky", "busy_timeout")
    while True:                                 # mailbox's lock does not wait: another queue run has it
        try:
            box.lock()
            return box
        except mailbox.ExternalClashError:
            if time.monotonic() > deadline:
                box.close()
                raise OSError(f"{path} stays locked by another process")
            time.sleep(0.02)


def maildir_name():
    """A new Maildir file name as mailbox.Maildir makes one (SECONDS.MMICROSECONDSPPIDQN.HOST)."""
    now = time.time()
    host = os.uname().nodename.replace("/", "\\057").replace(":", "\\072")
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{os.urandom(3).hex()}.{host}"


def maildir_add(path, data, name=None):
    """Deliver ``data`` into the Maildir ``path`` the Maildir way (write in tmp/, fsync, rename into
    new/) under ``name`` (else a new one); return that name.  Done by hand because importing
    mailbox would cost every queue run ~8 ms."""
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    name = name or maildir_name()
    tmp = os.path.join(path, "tmp", name)
    write_synced(tmp, data)
    os.rename(tmp, os.path.join(path, "new", name))
    return name


def _maildir_file(path, key, cur):
    """The file of Maildir key ``key`` (in new/, else in cur/ with flags; ``cur`` caches that
    listing across calls), or None."""
    if not key or "/" in key or os.path.exists(os.path.join(path, "new", key)):
        return os.path.join(path, "new", key) if key and "/" not in key else None
    if "names" not in cur:
        folder = os.path.join(path, "cur")
        cur["names"] = {n.split(":", 1)[0]: n for n in (os.listdir(folder) if os.path.isdir(folder) else ())}
    return os.path.join(path, "cur", cur["names"][key]) if key in cur["names"] else None


def scan_archive(config, list_row):
    """(Maildir key or '', bytes) of every message in the list's archive file(s), in arrival
    order: the order redsky before 0.5 numbered them in."""
    import mailbox
    path = archive_path(config, list_row)
    if not os.path.exists(path):
        return
    if config.get("archive", "format") == "mbox":
        box = mailbox.mbox(path, create=False)
        for key in box.iterkeys():
            yield "", box.get_bytes(key)
        return

    def arrival(key):               # Maildir names start "SECONDS.MMICROSECONDSPPID..."
        m = re.match(r"(\d+)\.M(\d+)P(\d+)", key)
        return (int(m.group(1)), int(m.group(2)), key) if m else (float("inf"), 0, key)
    cur = {}
    for sub in ("new", "cur"):
        folder = os.path.join(path, sub)
        for name in (os.listdir(folder) if os.path.isdir(folder) else ()):
            cur[name.split(":", 1)[0]] = os.path.join(folder, name)
    for key in sorted(cur, key=arrival):
        try:
            with open(cur[key], "rb") as fh:
                yield key, fh.read()
        except OSError:                 # removed meanwhile
            continue


def _mbox_keys(box, rows):
    """{row id: mailbox key} of ``rows`` (every present row of the list, in number order) in the
    mbox ``box``: the k-th row with a Message-ID is the k-th message with it."""
    by_id = {}
    for key in box.iterkeys():
        by_id.setdefault(message_id_of(box.get_bytes(key)), []).append(key)
    found = {}
    for row in rows:
        keys = by_id.get(row["message_id"])
        if keys:
            found[row["id"]] = keys.pop(0)
    return found


def archived(config, store, list_row, numbers=None):
    """(row, bytes) of the list's posts in the archive, in number order, or of those numbered
    ``numbers``; bytes are None for a post whose file is gone."""
    import mailbox
    ensure_numbered(config, store, list_row)
    rows = [dict(r) for r in store.q("archived_present", list_row["id"])]
    wanted = None if numbers is None else {int(n) for n in numbers}
    path = archive_path(config, list_row)
    if config.get("archive", "format") == "mbox":
        box = mailbox.mbox(path, create=False) if os.path.exists(path) else None
        keys = _mbox_keys(box, rows) if box is not None else {}
        for row in rows:
            if wanted is None or row["number"] in wanted:
                yield row, box.get_bytes(keys[row["id"]]) if row["id"] in keys else None
        return
    cur = {}
    for row in rows:
        if wanted is None or row["number"] in wanted:
            name = _maildir_file(path, row["location"], cur)
            try:
                with open(name, "rb") as fh:
                    yield row, fh.read()
            except (OSError, TypeError):
                yield row, None


def archive_refused(msg):
    """Why a post asks not to be archived, or None: X-No-Archive (Mailman honours it whatever it
    says; here anything but "no"), X-Archive: no (Mailman's too), Archive: no (netnews, RFC 5536).
    Every copy of each field counts (one that refuses wins), read as words: encoded words decoded,
    (comments) and quotes dropped, case ignored."""
    for name in ("X-No-Archive", "X-Archive", "Archive"):
        for value in msg.get_all(name) or []:
            text = decode_header_text(str(value)[:1000])
            for _ in range(5):                                  # (comments), nested a few deep
                text = re.sub(r"\([^()]*\)", " ", text)
            word = (re.findall(r"[^\W_]+", text.split(";")[0].lower()) or [""])[0]
            if name == "X-No-Archive" and word != "no" or name != "X-No-Archive" and word == "no":
                return "X-No-Archive" if name == "X-No-Archive" else f"{name}: no"
    return None


def gap_id(store, message_id):
    """What a removed post's row keeps of its Message-ID, so that msgid/ still finds its gap and no
    later post takes its link: a keyed hash (the ID itself is not kept), '' for none."""
    import hmac
    return "gap:" + hmac.new(store.verp_key.encode(), message_id.encode("utf-8", "replace"),
                             "sha256").hexdigest()[:40] if message_id else ""


def first_archived(store, list_row, message_id):
    """The row of the first post ever archived under ``message_id`` ('<...>'), present or removed
    (its gap), or None: the one post msgid/ and Archived-At name by that ID."""
    if not message_id:
        return None
    gaps = store.q("archived_removed", list_row["id"]).fetchone() is not None    # hmac only then
    return store.q("archived_first_by_message_id", list_row["id"], message_id,
                   gap_id(store, message_id) if gaps else message_id).fetchone()


def archived_at(base_url, list_row, message_id):
    """The Archived-At value (RFC 5064) of a post: its page by Message-ID under [web] base_url."""
    safe = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_~!$&'*+=:@")
    token = "".join(chr(b) if b in safe else f"%{b:02X}" for b in message_id.strip("<>").encode("utf-8"))
    return f"<{base_url.rstrip('/')}/archive/{list_address(list_row).lower()}/msgid/{token}>"


# What the archive keeps of a post besides its bytes ---------------------------

_BIDI_CONTROLS = re.compile("[\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]")


def without_list_tag(subject, list_row):
    """``subject`` without the list's own subject tag (its %d as any number), wherever it stands."""
    tag = (list_row.get("subject_tag") or "").strip()
    if not tag:
        return subject
    pattern = r"\d+".join(re.escape(p) for p in tag.split("%d"))
    return re.sub(pattern, " ", subject).strip()             # one_line joins the spaces it leaves


def published_line(text, limit=300):
    """A subject or a name as every published page shows it: one line, no bidirectional controls
    (which could reorder the author and the date beside it), addresses hidden."""
    return hide_addresses(one_line(_BIDI_CONTROLS.sub("", text), limit * 2))[:limit]


def post_facts(data, list_row, now=None):
    """What the archive keeps of a post besides its bytes: its Message-ID, the ids it answers, its
    date (within reason, else now) and month, subject and author as published, its subject key."""
    msg = RawMessage(data)
    now = now or time.time()
    when = parse_date(msg.get("Date"))
    if when is None or not 631152000 <= when <= now + 86400:         # 1990 .. tomorrow
        when = now
    subject = decode_header_text(msg.get("Subject") or "")
    name, address = next(iter(mailboxes(msg.get_all("From")[:1])), ("", ""))
    refs = _MESSAGE_ID.findall((msg.get("In-Reply-To") or "")[:2000])
    refs += reversed(_MESSAGE_ID.findall((msg.get("References") or "")[:20000]))
    return {"message_id": message_id_of(msg), "refs": refs[:60], "date": when,
            "month": time.strftime("%Y-%m", time.gmtime(when)),
            "subject": published_line(without_list_tag(subject, list_row)) or "(no subject)",
            "author": published_line(decode_header_text(name) or address, 200) or "(unknown)",
            # the subject as published joins a thread: a guessed address in it confirms nothing
            "subject_key": normalized_subject(hide_addresses(subject[:2000]))}


def normalized_subject(subject):
    """The subject without Re:/Fwd: and [tags], lower case: what joins a thread when References do not."""
    return without_prefixes(subject[:1000]).lower()[:200]


SUBJECT_THREAD_DAYS = 90        # a post joins the newest one with its subject this recent


def _thread_of(db, list_id, facts):
    """(parent number, thread number) of a post: the newest archived post it names, else the
    newest with its subject in the last SUBJECT_THREAD_DAYS; (None, None) when it starts one."""
    for ref in facts["refs"]:
        row = db.execute(SQL["archived_by_message_id"], (list_id, ref)).fetchone()
        if row:
            return row["number"], row["thread"]
    if facts["subject_key"]:
        row = db.execute(SQL["archived_by_subject"], (list_id, facts["subject_key"],
                                                      facts["date"] - SUBJECT_THREAD_DAYS * 86400)).fetchone()
        if row:
            return row["number"], row["thread"]
    return None, None


def add_archive_row(db, list_row, facts, location="", number=None, removed=None, removed_by=""):
    """Record a post in archived_posts inside the caller's transaction under ``number`` when it is
    free, else the next after the highest ever given; returns the row (a dict)."""
    list_id = list_row["id"]
    if number is None or number < 1 or db.execute(SQL["archived_post"], (list_id, number)).fetchone():
        number = db.execute(SQL["archive_next"], (list_id,)).fetchone()[0]
    parent, thread = _thread_of(db, list_id, facts) if removed is None else (None, None)
    values = {**{k: facts[k] for k in ("message_id", "date", "month", "subject", "author", "subject_key")},
              "list_id": list_id, "number": number, "archived": time.time(), "thread": thread or number,
              "parent": parent, "location": location, "removed": removed, "removed_by": removed_by}
    values["id"] = db.execute(SQL["add_archived_post"], values).lastrowid
    return values


def archive_post(config, store, list_row, data, sender=None, number=None, published=None, message_id=""):
    """Keep a post: its row and number in one transaction (with its search texts when ``published``,
    its published_copy, is given), then its bytes, else the number goes back (unseen).  The row
    keeps ``message_id`` (the ID its Archived-At names, finish_post) when given, else its own."""
    ensure_numbered(config, store, list_row)
    facts = post_facts(data, list_row)
    facts["message_id"] = message_id or facts["message_id"]
    location = maildir_name() if config.get("archive", "format") == "maildir" else ""
    texts = search_texts(facts, published) if published is not None else None
    with store.transaction() as db:
        row = add_archive_row(db, list_row, facts, location, number)
        if texts:
            index_texts(db, [(row["id"], *texts)])
    try:
        archive_add(config, list_row, data, sender, location or None)
    except BaseException:
        try:
            with store.transaction() as db:
                unindex_texts(db, [row["id"]])
                db.execute(SQL["archive_drop"], (row["id"],))
        except StoreError as e:
            log.error("archive of %s: post %d stays without its message: %s", list_address(list_row),
                      row["number"], e)
        raise
    return row


def ensure_numbered(config, store, list_row):
    """Number an archive that has no rows yet (one made before redsky 0.5, or filled by hand), once:
    each post keeps the number its web page had (the pages' month files of 0.4), else the number
    `archive` gave it (its place in arrival order) when free, else the next one; a published
    number no post has any more is a gap.  Another process that did it first wins."""
    path = archive_path(config, list_row)
    if store.q("archive_any", list_row["id"]).fetchone() or not os.path.exists(path):
        return
    found = [(key, data, message_id_of(data)) for key, data in scan_archive(config, list_row)]
    published = {}
    folder = pages_dir(config, list_row)
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as fh:
                entries = json.load(fh) if re.fullmatch(r"\d{4}-\d{2}\.json", name) else []
        except (OSError, ValueError):
            entries = []
        for e in entries if isinstance(entries, list) else ():
            if isinstance(e, dict) and isinstance(e.get("n"), int) and e.get("id"):
                published.setdefault(str(e["id"]), []).append(e["n"])
    numbers, used = {}, set()
    for position, (_, _, message_id) in enumerate(found, 1):
        if published.get(message_id):
            numbers[position] = min(published[message_id])
            published[message_id].remove(numbers[position])
            used.add(numbers[position])
    for position in range(1, len(found) + 1):
        if position not in numbers and position not in used:
            numbers[position] = position
            used.add(position)
    for position in range(1, len(found) + 1):
        if position not in numbers:
            numbers[position] = max(used) + 1
            used.add(numbers[position])
    gaps = sorted({n for ns in published.values() for n in ns} - used)
    order = sorted(range(1, len(found) + 1), key=lambda p: numbers[p])
    now = time.time()
    with store.transaction() as db:
        if db.execute(SQL["archive_any"], (list_row["id"],)).fetchone():
            return
        for position in order:
            key, data, _ = found[position - 1]
            if archive_refused(RawMessage(data)):        # archived before redsky honoured it: a gap
                add_archive_row(db, list_row, gap_facts(now), key, numbers[position], now, "refused")
            else:
                add_archive_row(db, list_row, post_facts(data, list_row, now), key, numbers[position])
        for n in gaps:
            add_archive_row(db, list_row, gap_facts(now), "", n, now, "gone")
    log.info("archive of %s: %d posts numbered, %d published numbers kept, %d gaps", list_address(list_row),
             len(found), sum(1 for p in numbers if numbers[p] != p), len(gaps))


def gap_facts(now):
    return {"message_id": "", "refs": [], "date": now, "month": time.strftime("%Y-%m", time.gmtime(now)),
            "subject": "", "author": "", "subject_key": ""}


def summary(data):
    """(Date as a timestamp or None, From, Subject) of a message, decoded."""
    from email.utils import parsedate_to_datetime
    msg = RawMessage(data)
    try:
        when = parsedate_to_datetime(msg.get("Date")).timestamp() if msg.get("Date") else None
    except (TypeError, ValueError, IndexError, OverflowError):
        when = None
    return when, one_line(decode_header_text(msg.get("From") or ""), 200), \
        one_line(decode_header_text(msg.get("Subject") or ""), 300) or "(no subject)"


def text_of(data, problems=None):
    """The text of a message, for searching and for plain digests (an HTML part only without a plain
    alternative; other parts only named).  A message the email package cannot take apart (broken
    MIME, absurd nesting) is its raw text, and ``problems`` gets a line: this never fails."""
    try:
        return _text_of(data)
    except Exception as e:                      # never let one post stop a digest or a search
        log.info("post read as raw text (%s: %s)", type(e).__name__, one_line(e, 100))
        if problems is not None:
            problems.append(f"{summary(data)[2]!r}: {type(e).__name__}: {one_line(e, 100)}")
        return data.decode("utf-8", "replace")


def _text_of(data):
    import email
    from email import policy
    texts = []
    for part in message_leaves(email.message_from_bytes(data, policy=policy.compat32)):
        kind = part.get_content_type()
        if part.get_content_maintype() == "multipart":     # no boundary: its body as written
            texts.append(str(part.get_payload()))
        elif part.get_content_maintype() != "text" or part.get_filename():
            texts.append(f"[attachment not included: {part.get_filename() or 'unnamed'} ({kind})]\n")
        else:
            text = payload_text(part)
            texts.append(html_text(text) if kind == "text/html" else text)
    return "\n".join(texts)


# What is published ----------------------------------------------------------
# Every published surface (pages, raw messages, mboxes, feeds, the search and its results) is made
# from published_copy and post_facts, whose addresses are hidden already: the search indexes that
# text only, so it cannot confirm the hidden part of an address either.

# the header fields a published copy keeps; those with addresses or free text are hidden
PUBLISHED_FIELDS = ("from", "to", "cc", "reply-to", "subject", "date", "message-id", "in-reply-to",
                    "references", "mime-version", "content-type", "content-transfer-encoding",
                    "content-disposition", "content-description", "list-id", "archived-at")
_IDENTIFIERS = ("message-id", "in-reply-to", "references", "date", "mime-version", "list-id", "archived-at",
                "content-transfer-encoding")


def published_copy(data):
    """A post as published (raw message, mboxes, page, search): only PUBLISHED_FIELDS (Received,
    DKIM ... go), addresses hidden in them and in every text part, forwarded messages likewise;
    other attachments as sent.  Never fails: broken MIME is published as header and text."""
    import email
    from email import policy
    try:
        msg = email.message_from_bytes(data, policy=policy.compat32)
        _publish_part(msg, 0)
        return msg.as_bytes(policy=policy.compat32.clone(mangle_from_=False))
    except Exception as e:
        log.info("post published as plain text (%s: %s)", type(e).__name__, one_line(e, 100))
        raw = RawMessage(data)
        fields = [(RawMessage.name_of(f), RawMessage.value_of(f)) for f in raw.fields]
        head = "".join(f"{k.title()}: {_published_field(k, v)}\n" for k, v in fields
                       if k in PUBLISHED_FIELDS and not k.startswith(("content-", "mime-")))
        body = hide_addresses(raw.body.decode("utf-8", "replace"))
        return (head + "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
                + body).encode("utf-8")


def _published_field(name, value):
    if name.startswith("content-"):             # MIME parameters (a file name) stay ASCII
        return one_line(hide_addresses(value).replace("\u2026", "..."), 2000)
    return one_line(value if name in _IDENTIFIERS else hide_addresses(decode_header_text(value)), 2000)


def _publish_part(part, depth):
    from email.charset import Charset
    fields = [(k, str(v).encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
              for k, v in part.raw_items()]
    for name in {k.lower() for k, _ in fields}:
        del part[name]
    for name, value in fields:
        if name.lower() in PUBLISHED_FIELDS:
            text = _published_field(name.lower(), value)
            part[name] = text.encode("utf-8").decode("ascii", "surrogateescape")     # RFC 6532: UTF-8
    if part.is_multipart():
        for sub in part.get_payload() if depth < 20 else []:
            if not isinstance(sub, str):
                _publish_part(sub, depth + 1)
    elif part.get_content_maintype() == "text":
        raw = payload_text(part, "utf-8")
        text = hide_addresses(raw)
        if part.get_content_type() == "text/html" and html_shown(text) != hide_addresses(html_shown(raw)):
            # markup, entities or invisible characters split an address, so hiding it in the HTML
            # did not hide what a reader sees: the part is published as its text, hidden, escaped
            import html as entities
            shown = hide_addresses(html_shown(raw, lines=True).strip())
            text = "<div>" + "<br>\n".join(entities.escape(line) for line in shown.split("\n")) + "</div>\n"
        charset = Charset("utf-8")
        charset.body_encoding = None                # 8bit: the raw message reads as text
        del part["Content-Transfer-Encoding"]
        part.set_payload(text, charset)


SEARCH_TEXT_LIMIT = 200_000          # characters of a post's text that the search reads


def search_texts(facts, published):
    """(subject, author, body folded, the body as published, zlib) of a post: its archive_texts."""
    import zlib
    body = hide_addresses(_INVISIBLES.sub("", text_of(published)[:SEARCH_TEXT_LIMIT]))
    return (search_fold(facts["subject"]), search_fold(facts["author"]), search_fold(body),
            zlib.compress(body.encode("utf-8", "replace")))


# ---------------------------------------------------------------------------
# 12. The archive's pages
# Owns: the static web site of a public archive (Pages): posts and the gaps removed posts leave,
#       months, threads, mboxes, the Atom feed; removing a post (archive_remove, archive_delete).
# Calls: sections 2-11.
# ---------------------------------------------------------------------------

# A public archive is a static web site, [web] pages/LIST@DOMAIN/: index.html, YYYY-MM.html and
# .mbox, N.html (post N, or its gap), N.eml (its published copy), att/N-K-NAME, thread/T.html (all of
# thread T, whatever months it spans) and .mbox, atom.xml; made from the rows and published copies.

PAGE_CSS = ("body{font:16px/1.5 system-ui,sans-serif;max-width:52rem;margin:0 auto;padding:.8rem;"
            "color:#222;background:#fff}a{color:#0645ad}h1{font-size:1.4rem}h2{font-size:1.1rem}"
            ".text{white-space:pre-wrap;overflow-wrap:anywhere;font:14px/1.45 ui-monospace,monospace}"
            ".q{color:#666}.html{overflow-wrap:anywhere}ul{padding-left:1.2rem}li{margin:.2rem 0}"
            "table{border-collapse:collapse}td,th{padding:.1rem .6rem .1rem 0;vertical-align:top;"
            "text-align:left}small,.meta{color:#666}nav{margin:.6rem 0}input{font-size:1rem;max-width:100%}"
            "button{font-size:1rem;padding:.3rem .9rem}.post{border-top:1px solid #ccc;margin-top:1rem}"
            ".hp{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);"
            "white-space:nowrap}"
            + "".join(f".d{i}{{margin-left:{i * 1.2:g}rem}}" for i in range(1, 13)))
# Tags a sanitised HTML part keeps (without attributes, but a's href and a
# cell's spans); the contents of DROPPED_ELEMENTS go too.
SAFE_TAGS = frozenset("p br b i em strong u s a ul ol li blockquote pre code h1 h2 h3 h4 h5 h6 table thead "
                      "tbody tfoot tr td th div span hr sub sup dl dt dd small big tt".split())
DROPPED_ELEMENTS = ("script", "style", "head", "title", "iframe", "object", "embed", "svg", "math",
                    "template", "noscript", "textarea", "select", "applet", "frameset", "noembed", "xmp",
                    "plaintext")
PAGE_PART_LIMIT = 512 * 1024        # characters of one text part shown on a page
THREAD_PAGE_POSTS = 300             # posts a thread page shows with their text (the rest: links)
THREAD_PAGE_BYTES = 2_000_000       # and at most this much of their texts (the rest: links)
FEED_POSTS = 20                     # posts in the feed and in the index's latest
_URL = re.compile(r"https?://[^\s<>\"'\x00-\x1f\x7f]+", re.I)
_ESCAPED_URL = re.compile(r"https?://(?:[^\s&<>\"'\x00-\x1f\x7f]|&amp;)+", re.I)     # in escaped text
BODY_START, BODY_END = "<!--body-->", "<!--/body-->"       # a post's text on its page (thread pages)
REMOVED_WHY = {"author": "at its author's request", "owner": "by the list's owners",
               "gone": "before this archive numbered its posts for good",
               "import": "before the list came here: the archive it came from did not have it",
               "missing": "(its message is missing from the archive)",
               "refused": "its author asked that it not be archived (X-No-Archive, X-Archive or Archive)"}


def esc(text):
    import html
    return html.escape(str(text), quote=True)


def page_policy():
    """The Content-Security-Policy of every page: nothing but its own stylesheet (by hash, so no
    other style), no script, no image, forms only to itself."""
    import base64
    import hashlib
    digest = base64.b64encode(hashlib.sha256(PAGE_CSS.encode()).digest()).decode()
    return (f"default-src 'none'; style-src 'sha256-{digest}'; img-src 'none'; form-action 'self'; "
            "base-uri 'none'")


def html_page(title, body):
    """A whole page; the policy is in it too, for a static web server."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{page_policy()}\">"
            "<meta name=\"referrer\" content=\"no-referrer\">"
            f"<title>{esc(title)}</title><style>{PAGE_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def text_html(text):
    """A text/plain part as HTML: quoted lines marked, links made, addresses hidden."""
    def link(m):
        url = m.group(0).rstrip(".,;:!?)]}")
        return f'<a href="{url}" rel="nofollow noopener noreferrer">{url}</a>{m.group(0)[len(url):]}'
    text = _ESCAPED_URL.sub(link, esc(hide_addresses(text)))
    return "<div class=\"text\">" + re.sub(r"(?m)^&gt;.*$", r'<span class="q">\g<0></span>', text) + "</div>"


def sanitize_html(html):
    """An HTML part made safe to show, in linear time: only SAFE_TAGS, with no attribute but an
    http(s) href and a cell's colspan/rowspan; scripts, styles, frames and the like dropped with
    their content; images dropped; every text re-escaped; open tags closed."""
    import html as entities
    out, stack = [], []
    for text, tag in html_tokens(html, DROPPED_ELEMENTS):
        if text:
            out.append(esc(hide_addresses(entities.unescape(text))))
        if tag is None:
            continue
        closing, name = tag.group(1), tag.group(2).lower()
        if name in DROPPED_ELEMENTS and not closing:
            continue
        elif name == "img" and not closing:
            out.append("[image]")
        elif name not in SAFE_TAGS:
            continue
        elif closing:
            if name in stack:
                while stack:
                    out.append(f"</{stack[-1]}>")
                    if stack.pop() == name:
                        break
        elif name in ("br", "hr"):
            out.append(f"<{name}>")
        elif len(stack) < 100:
            out.append(f"<{name}{_safe_attributes(name, tag.group(3))}>")
            stack.append(name)
    out.extend(f"</{name}>" for name in reversed(stack))
    return "<div class=\"html\">" + "".join(out) + "</div>"


def _safe_attributes(name, attributes):
    import html as entities
    if name == "a":
        m = re.search(r"(?i)\bhref[ \t\r\n]*=[ \t\r\n]*(?:\"([^\"]*)\"|'([^']*)'|([^\s\"'>]+))", attributes)
        written = next(g for g in m.groups() if g is not None) if m else ""
        url = hide_addresses(re.sub(r"[\x00-\x20\x7f]+", "", entities.unescape(written)))
        return f' href="{esc(url)}" rel="nofollow noopener noreferrer"' if _URL.fullmatch(url) else ""
    if name in ("td", "th"):
        spans = re.findall(r"(?i)\b(colspan|rowspan)=[\"']?(\d{1,3})", attributes)
        return "".join(f' {k.lower()}="{v}"' for k, v in spans)
    return ""


def safe_filename(name, fallback):
    """A file name that is safe in a URL and on any disk: letters, digits, . _ -."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", (name or "").replace("\\", "/").rsplit("/", 1)[-1])
    return name.lstrip("._")[-80:] or fallback


def post_parts(data):
    """(body HTML, [(file name, bytes)]) of a post: text parts shown (the plain one of an
    alternative), every other part an attachment; nesting past 20 levels is ignored."""
    import email
    from email import policy
    bodies, files = [], []
    for part in message_leaves(email.message_from_bytes(data, policy=policy.compat32)):
        kind, name = part.get_content_type(), part.get_filename()
        attached = str(part.get("Content-Disposition") or "").strip().lower().startswith("attachment")
        if kind in ("text/plain", "text/html") and not name and not attached:
            text = payload_text(part, "utf-8")
            note = f"\n[{len(text) - PAGE_PART_LIMIT} more characters not shown]" \
                if len(text) > PAGE_PART_LIMIT else ""
            text = text[:PAGE_PART_LIMIT]
            bodies.append((sanitize_html(text) if kind == "text/html" else text_html(text)) + esc(note))
            continue
        payload = part.get_payload(decode=True)
        if payload is None:             # message/rfc822 and the like: as written
            payload = part.get_payload()[0].as_bytes() if isinstance(part.get_payload(), list) else b""
        ext = {"message/rfc822": ".eml", "text/plain": ".txt", "text/html": ".html"}.get(kind, ".bin")
        name = safe_filename(hide_addresses(decode_header_text(name or "")), f"part{len(files) + 1}{ext}")
        files.append((name, payload))
    return "\n".join(bodies), files


# A public archive's files and folders, whatever [redsky] umask: the web server's user reads them
# (the README's static block serves them itself).  The .lock beside them stays the list user's.
PAGE_MODE, PAGE_DIR_MODE = 0o644, 0o755


def _write_page(path, text, mode=None):
    _write_file(path, text.encode("utf-8"), mode)


def _write_file(path, data, mode=None):
    """Write ``path`` whole or not at all (a temporary file renamed over it), with ``mode`` when
    given (whatever the umask), else what the umask leaves."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            fh.write(data)
        os.replace(tmp, path)
    except OSError:
        _unlink_quietly(tmp)                # a full disk leaves the old page, not half a new one
        raise


def _day(t, fmt="%Y-%m-%d %H:%M UTC"):
    return time.strftime(fmt, time.gmtime(t))


def _line(row, href, when="%d %b %H:%M"):
    """A post as one line of a list: subject (its link), author and date, each isolated (bdi)."""
    return (f'<a href="{href}"><bdi>{esc(row["subject"])}</bdi></a> <span class="meta">'
            f'<bdi>{esc(row["author"])}</bdi>, {_day(row["date"], when)}</span>')


def post_page(list_row, row, body, files):
    """Post N's page: who, when, what, links, its text (in BODY_START ... BODY_END), attachments."""
    n, parent, thread = row["number"], row["parent"], row["thread"]
    nav = (f'<nav><a href="{n - 1}.html">previous</a> · ' if n > 1 else "<nav>") + \
        f'<a href="{n + 1}.html">next</a> · <a href="{row["month"]}.html">{row["month"]}</a> · ' \
        '<a href="./">all months</a></nav>'
    head = (f"<tr><th>From</th><td><bdi>{esc(row['author'])}</bdi></td></tr>"
            f"<tr><th>Date</th><td>{_day(row['date'])}</td></tr>"
            f"<tr><th>Subject</th><td><bdi>{esc(row['subject'])}</bdi></td></tr>")
    if parent:
        head += f'<tr><th>In reply to</th><td><a href="{parent}.html">post {parent}</a></td></tr>'
    head += (f'<tr><th>Thread</th><td><a href="thread/{thread}.html">the whole thread</a> '
             f'(<a href="thread/{thread}.mbox">mbox</a>)</td></tr>'
             f'<tr><th>Message</th><td><a href="{n}.eml">as sent</a> <small>(addresses hidden)</small>'
             "</td></tr>")
    attached = "".join(f'<li><a href="att/{n}-{k}-{esc(name)}">{esc(name)}</a> '
                       f"<small>({len(payload):,} bytes)</small></li>"
                       for k, (name, payload) in enumerate(files, 1))
    return html_page(f"{row['subject']} - {list_address(list_row)}",
                     f"{nav}\n<h1>{esc(row['subject'])}</h1>\n<table>{head}</table>\n<hr>\n"
                     f"{BODY_START}{body}{BODY_END}\n"
                     + (f"<hr><p>Attachments:</p><ul>{attached}</ul>\n" if attached else "") + nav)


def gap_page(list_row, n, why):
    """The page a removed post leaves under its number, which no other post gets."""
    nav = (f'<nav><a href="{n - 1}.html">previous</a> · ' if n > 1 else "<nav>") + \
        f'<a href="{n + 1}.html">next</a> · <a href="./">all months</a></nav>'
    text = f"Post {n} {'is not available' if why == 'missing' else 'was removed from this archive'} " \
        f"{REMOVED_WHY.get(why, '')}".strip() + "."
    return html_page(f"Post {n} - {list_address(list_row)}",
                     f"{nav}\n<h1>Post {n}</h1>\n<p>{esc(text)} No other post gets its number.</p>\n{nav}")


def month_page(list_row, month, entries, starts, sizes):
    """A month's posts as threads, replies under what they answer; a thread begun earlier links its
    start (``starts``: {thread: first post}), one with more posts (``sizes``) its thread page."""
    by_n = {e["number"]: e for e in entries}
    children = {}
    for e in entries:
        children.setdefault(e["parent"] if e["parent"] in by_n else None, []).append(e)
    out, todo = [], [(e, 0) for e in reversed(children.get(None, []))]
    while todo:                             # depth first, without recursion
        e, depth = todo.pop()
        note = ""
        if depth == 0 and e["thread"] != e["number"]:
            start = starts.get(e["thread"])
            began = f' from <a href="{start["month"]}.html">{start["month"]}</a>' \
                if start and start["month"] != month else ""
            note = f' <small>continues <a href="thread/{e["thread"]}.html">a thread</a>{began}</small>'
        elif depth == 0 and sizes.get(e["thread"], 1) > 1:
            note = f' <small><a href="thread/{e["thread"]}.html">thread</a> ({sizes[e["thread"]]})</small>'
        out.append(f'<li class="d{depth}">{_line(e, str(e["number"]) + ".html")}{note}</li>')
        todo.extend((c, min(depth + 1, 12)) for c in reversed(children.get(e["number"], [])))
    return html_page(f"{month} - {list_address(list_row)}",
                     f'<nav><a href="./">all months</a></nav>\n'
                     f"<h1>{esc(list_address(list_row))}: {month}</h1>\n"
                     f"<p>{len(entries)} post{'s' * (len(entries) != 1)}, by thread "
                     f'(<a href="{month}.mbox">mbox</a>).</p>\n<ul>{"".join(out)}</ul>')


SEARCH_HELP = ('<p><small>Words find posts with all of them; "a phrase" finds it as written; '
               "from:name and subject:word look only there; d:2026-01..2026-03 (or d:2026, d:2026-01-05..) "
               "limits the dates. Case and accents do not matter.</small></p>")


def search_form(words=""):
    return (f'<form method="get" action="search"><input name="q" value="{esc(words)}" aria-label="words"'
            ' placeholder="words"> <button>Search</button></form>\n' + SEARCH_HELP)


def index_page(list_row, months, latest):
    rows = "".join(f'<li><a href="{m}.html">{m}</a> <span class="meta">({c} post{"s" * (c != 1)})</span></li>'
                   for m, c in sorted(months.items(), reverse=True))
    newest = "".join(f"<li>{_line(r, str(r['number']) + '.html', '%Y-%m-%d')}</li>" for r in latest)
    return html_page(f"{list_address(list_row)} archive",
                     f"<h1>The archive of {esc(list_address(list_row))}</h1>\n"
                     f"<p>{esc(list_row.get('description') or '')}</p>\n" + search_form() +
                     f'<p><a href="atom.xml">Atom feed</a></p>\n'
                     + (f"<h2>Latest posts</h2>\n<ul>{newest}</ul>\n<h2>Months</h2>\n" if newest else "")
                     + f'<ul>{rows or "<li>No posts yet.</li>"}</ul>')


def thread_page(list_row, thread, rows, bodies):
    """Every post of a thread in order, across months, with its text when ``bodies`` has it (the
    first THREAD_PAGE_POSTS, THREAD_PAGE_BYTES at most), else a link to its page."""
    shown = {r["number"] for r in rows}
    items = []
    for i, r in enumerate(rows):
        n = r["number"]
        answer = f' · answers <a href="#p{r["parent"]}">{r["parent"]}</a>' if r["parent"] in shown else ""
        text = bodies.get(n) if i < THREAD_PAGE_POSTS else None
        items.append(f'<div class="post" id="p{n}"><h2><a href="../{n}.html"><bdi>{esc(r["subject"])}</bdi>'
                     f'</a></h2><p class="meta"><bdi>{esc(r["author"])}</bdi>, {_day(r["date"])}{answer}'
                     "</p>\n"
                     + (f'<p><a href="../{n}.html">post {n}</a></p>' if text is None else text) + "</div>")
    nav = (f'<nav><a href="../{rows[0]["month"]}.html">{rows[0]["month"]}</a> · <a href="../">all months</a>'
           f' · <a href="{thread}.mbox">the thread as mbox</a></nav>')
    return html_page(f"{rows[0]['subject']} - {list_address(list_row)}",
                     f"{nav}\n<h1>{esc(rows[0]['subject'])}</h1>\n<p>{len(rows)} post{'s' * (len(rows) != 1)}"
                     f", {_day(rows[0]['date'], '%Y-%m-%d')} to {_day(rows[-1]['date'], '%Y-%m-%d')}.</p>\n"
                     + (f"<p>{len(rows) - len(bodies)} of them stand as links to their pages: a thread"
                        f" page shows the texts of at most {THREAD_PAGE_POSTS} posts and"
                        f" {THREAD_PAGE_BYTES // 1000000} MB.</p>\n" if len(bodies) < len(rows) else "")
                     + "\n".join(items) + f"\n{nav}")


def atom_feed(list_row, rows, base_url, summaries, title=None, feed_id=""):
    """RFC 4287 feed of ``rows`` (newest first; summaries: {row id: text}); links absolute when
    [web] base_url is set."""
    name = list_address(list_row)
    root = f"{base_url.rstrip('/')}/archive/{name.lower()}/" if base_url else ""

    def stamp(t):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    items = "".join(
        f"<entry><title>{esc(r['subject'])}</title>"
        f"<id>{esc(root or 'urn:redsky:' + name + ':')}{r['number']}</id>"
        f"<link href=\"{esc(root)}{r['number']}.html\"/><updated>{stamp(r['date'])}</updated>"
        f"<author><name>{esc(r['author'])}</name></author>"
        f"<summary>{esc(summaries.get(r['id'], '')[:500])}</summary></entry>\n"
        for r in rows)
    return ('<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom">'
            f"<title>{esc(title or name)}</title><id>{esc((root or 'urn:redsky:' + name) + feed_id)}</id>"
            f"<link href=\"{esc(root + feed_id)}\"/>"
            f"<updated>{stamp(rows[0]['date'] if rows else 0)}</updated>\n"
            f"{items}</feed>\n")


def archive_text(store, post_id):
    """The text of a published post as the search shows it (archive_texts), or ''."""
    import zlib
    row = store.q("archive_text", post_id).fetchone()
    return zlib.decompress(row[0]).decode("utf-8", "replace") if row and row[0] else ""


def mbox_entry(row, data):
    """A published copy as one message of an mbox (mboxrd: From lines quoted)."""
    data = re.sub(rb"(?m)^(>*From )", rb">\1", data.replace(b"\r\n", b"\n"))
    return (f"From archive@redsky {time.asctime(time.gmtime(row['date']))}\n".encode()
            + data + (b"\n" if data.endswith(b"\n") else b"\n\n"))


def _public_dir(path):
    """Make the folder ``path`` of the pages (with its parents) and, when it is redsky's own, open
    it to anyone (PAGE_DIR_MODE): an older redsky made them 0770, as the umask said."""
    os.makedirs(path, exist_ok=True)
    st = os.stat(path)
    if st.st_mode & 0o7777 != PAGE_DIR_MODE and st.st_uid == os.geteuid():
        os.chmod(path, PAGE_DIR_MODE)


class Pages:
    """One list's pages in ``folder`` (default its place in [web] pages), written under its lock: a
    post's own files (post, gap), then what it touches (refresh)."""

    def __init__(self, config, store, list_row, folder=None):
        self.config, self.store, self.list = config, store, list_row
        self.dir = folder or pages_dir(config, list_row)
        for path in (os.path.dirname(self.dir), self.dir, self.file("att"), self.file("thread")):
            _public_dir(path)
        self.lock = open(os.path.join(self.dir, ".lock"), "a")
        fcntl.flock(self.lock, fcntl.LOCK_EX)

    def close(self):
        self.lock.close()

    def file(self, name):
        return os.path.join(self.dir, name)

    def write(self, name, data):
        """The file ``name`` of the pages, written whole, readable by anyone (PAGE_MODE)."""
        _write_file(self.file(name), data.encode("utf-8") if isinstance(data, str) else data, PAGE_MODE)

    def post(self, row, data, published=None):
        """Post ``row``'s page, its published copy (N.eml) and its attachments."""
        n = row["number"]
        published = published or published_copy(data)
        try:
            body, files = post_parts(published)
        except Exception as e:                  # MIME the email package cannot take apart: shown as written
            log.info("post %d shown as raw text (%s: %s)", n, type(e).__name__, one_line(e, 100))
            body, files = text_html(published[:PAGE_PART_LIMIT].decode("utf-8", "replace")), []
        for k, (name, payload) in enumerate(files, 1):
            self.write(f"att/{n}-{k}-{name}", payload)
        self.write(f"{n}.eml", published)
        self.write(f"{n}.html", post_page(self.list, row, body, files))

    def gap(self, n, why):
        """The page of a removed post; its copy and attachments go."""
        _unlink_quietly(self.file(f"{n}.eml"))
        for name in os.listdir(self.file("att")):
            if name.startswith(f"{n}-"):
                _unlink_quietly(self.file(f"att/{name}"))
        self.write(f"{n}.html", gap_page(self.list, n, why))

    def body(self, n):
        """Post n's text as its page shows it, or None."""
        try:
            with open(self.file(f"{n}.html"), encoding="utf-8") as fh:
                page = fh.read()
        except OSError:
            return None
        start, end = page.find(BODY_START), page.rfind(BODY_END)
        return page[start + len(BODY_START):end] if 0 <= start < end else None

    def mbox(self, name, rows, added=None):
        """The mbox ``name`` of ``rows``' published copies: ``added`` appended when newest, else anew."""
        path = self.file(name)
        if not rows:
            _unlink_quietly(path)
            return
        if added is not None and rows[-1]["number"] == added["number"] and os.path.exists(path):
            rows, mode, target = rows[-1:], "ab", path
        else:
            mode, target = "wb", f"{path}.{os.getpid()}.tmp"
        try:
            with open(target, mode) as fh:
                os.fchmod(fh.fileno(), PAGE_MODE)
                for row in rows:
                    try:
                        with open(self.file(f"{row['number']}.eml"), "rb") as eml:
                            fh.write(mbox_entry(row, eml.read()))
                    except FileNotFoundError:   # not published yet: its own run adds it
                        continue
            if target != path:
                os.replace(target, path)
        finally:
            if target != path:
                _unlink_quietly(target)

    def refresh(self, months=(), threads=(), added=None):
        """Rewrite what posts touch: ``months`` and ``threads`` (pages and mboxes; ``added``, the
        post just published, appended to them), then the index and the feed."""
        list_id = self.list["id"]
        for month in sorted(set(months)):
            rows = [dict(r) for r in self.store.q("archived_month", list_id, month)]
            firsts = {r["thread"] for r in rows if r["thread"] != r["number"]}
            starts = {t: self.store.q("archived_post", list_id, t).fetchone() for t in firsts}
            sizes = dict(self.store.q("archived_thread_sizes", list_id, month).fetchall())
            self.write(f"{month}.html", month_page(self.list, month, rows, starts, sizes))
            self.mbox(f"{month}.mbox", rows, added if added and added["month"] == month else None)
        for thread in sorted(set(threads)):
            rows = [dict(r) for r in self.store.q("archived_thread", list_id, thread)]
            if not rows:
                _unlink_quietly(self.file(f"thread/{thread}.html"))
            else:
                bodies, size = {}, 0
                for r in rows[:THREAD_PAGE_POSTS]:          # the texts up to THREAD_PAGE_BYTES
                    text = self.body(r["number"])
                    size += len(text or "")
                    if size > THREAD_PAGE_BYTES:
                        break
                    if text is not None:
                        bodies[r["number"]] = text
                self.write(f"thread/{thread}.html", thread_page(self.list, thread, rows, bodies))
            self.mbox(f"thread/{thread}.mbox", rows, added if added and added["thread"] == thread else None)
        latest = [dict(r) for r in self.store.q("archived_latest", list_id, FEED_POSTS)]
        self.write("index.html",
                   index_page(self.list, dict(self.store.q("archived_months", list_id).fetchall()), latest))
        texts = {r["id"]: archive_text(self.store, r["id"]) for r in latest}
        self.write("atom.xml", atom_feed(self.list, latest, self.config.get("web", "base_url"), texts))


def _pages_are_current(folder):
    """Whether ``folder`` holds pages of this redsky (0.4's kept a state.json and month JSON)."""
    return os.path.exists(os.path.join(folder, "index.html")) and \
        not os.path.exists(os.path.join(folder, "state.json"))


def publish_post(config, store, list_row, row, data, published=None):
    """Add a post just archived to a public list's pages and rewrite what it touches; a list with no
    pages yet, or 0.4's, gets them all (build_pages).  Returns the post's number."""
    if not _pages_are_current(pages_dir(config, list_row)):
        build_pages(config, list_row, store)
        return row["number"]
    pages = Pages(config, store, list_row)
    try:
        pages.post(row, data, published)
        pages.refresh([row["month"]], [row["thread"]], row)
    finally:
        pages.close()
    return row["number"]


def unpublish(config, store, list_row, rows, why):
    """Leave the gaps of removed posts (``rows``, as they were) on the pages and rewrite what they
    touched."""
    if not rows or not os.path.isdir(pages_dir(config, list_row)):
        return
    pages = Pages(config, store, list_row)
    try:
        for row in rows:
            pages.gap(row["number"], why)
        pages.refresh({r["month"] for r in rows}, {r["thread"] for r in rows})
    finally:
        pages.close()


def build_pages(config, list_row, store=None):
    """Make a list's pages and search texts again, every number kept, in a new folder that takes the
    old one's place (posts archived meanwhile added after); a list not public loses them.  A count."""
    import shutil
    own, store = store is None, store or open_store(config)
    try:
        final = pages_dir(config, list_row)
        if list_row["archive"] != "public":
            shutil.rmtree(final, ignore_errors=True)
            with store.transaction() as db:
                texts = [r[0] for r in db.execute(SQL["archive_texts_of_list"], (list_row["id"],))]
                if db.execute(SQL["list_by_id"], (list_row["id"],)).fetchone():
                    unindex_texts(db, texts)
                else:                       # deleted: its texts went with it, the index is made anew
                    _search_changed(db, False)
            return 0
        ensure_numbered(config, store, list_row)
        fresh = f"{final}.new{os.getpid()}"
        shutil.rmtree(fresh, ignore_errors=True)
        pages, seen, texts, count = Pages(config, store, list_row, fresh), set(), [], 0
        try:
            with store.transaction() as db:
                unindex_texts(db, [r[0] for r in db.execute(SQL["archive_texts_of_list"], (list_row["id"],))])
            for row in store.q("archived_removed", list_row["id"]).fetchall():
                pages.gap(row["number"], row["removed_by"])
            months, threads = set(), set()
            for row, data in archived(config, store, list_row):
                months.add(row["month"])
                threads.add(row["thread"])
                if data is None or archive_refused(RawMessage(data)):     # kept before redsky honoured it
                    pages.gap(row["number"], "missing" if data is None else "refused")
                    continue
                seen.add(row["id"])
                published = published_copy(data)
                pages.post(row, data, published)
                texts.append((row["id"], *search_texts(row, published)))
                count += 1
                if len(texts) >= 200:
                    with store.transaction() as db:
                        index_texts(db, texts)
                    texts = []
            with store.transaction() as db:
                index_texts(db, texts)
            pages.refresh(months, threads)
        finally:
            pages.close()
        old = f"{final}.old{os.getpid()}"
        if os.path.exists(final):
            os.rename(final, old)
        os.rename(fresh, final)
        shutil.rmtree(old, ignore_errors=True)
        late = [r["number"] for r in store.q("archived_present", list_row["id"]) if r["id"] not in seen]
        late = [(row, data) for row, data in archived(config, store, list_row, late) if data] if late else []
        for row, data in late:              # archived while this ran (their own run wrote the old folder)
            published = published_copy(data)
            with store.transaction() as db:
                unindex_texts(db, [row["id"]])
                index_texts(db, [(row["id"], *search_texts(row, published))])
            publish_post(config, store, list_row, row, data, published)
        return count + len(late)
    finally:
        if own:
            store.close()


# Removing a post ------------------------------------------------------------

def archive_remove(config, store, list_row, numbers, why):
    """Remove posts: bytes, texts and what their rows said, each row kept as a gap that says ``why``
    ('author': forget, 'owner'); then the pages.  Returns the numbers removed."""
    import mailbox
    found = list(archived(config, store, list_row, numbers)) if numbers else []
    rows = [row for row, _ in found]
    if not rows:
        return []
    kept_ids = {row["id"]: _gap_id_kept(store, row, data) for row, data in found}
    path = archive_path(config, list_row)
    if config.get("archive", "format") == "mbox":
        if os.path.exists(path):
            box = _locked_mbox(config, path)
            try:
                keys = _mbox_keys(box, [dict(r) for r in store.q("archived_present", list_row["id"])])
                for row in rows:
                    if row["id"] in keys:
                        box.remove(keys[row["id"]])
                box.flush()
            finally:
                box.unlock()
                box.close()
    else:
        cur = {}
        for row in rows:
            name = _maildir_file(path, row["location"], cur)
            if name:
                os.unlink(name)
    with store.transaction() as db:
        unindex_texts(db, [row["id"] for row in rows])
        for row in rows:
            db.execute(SQL["archive_remove"], (time.time(), why, kept_ids[row["id"]], row["id"]))
    if list_row["archive"] == "public":
        unpublish(config, store, list_row, rows, why)
    return [row["number"] for row in rows]


def _gap_id_kept(store, row, data):
    """The gap_id a removed post's row keeps, or '' when its Message-ID names an address of its
    author (From, Sender, Reply-To): then msgid/ could tell that this person's post was removed."""
    message_id = row["message_id"] or ""
    said = set()
    if data is not None:
        msg = RawMessage(data)
        for field in ("From", "Sender", "Reply-To"):
            said.update(a.lower() for a in addresses_in(msg.get_all(field)[:5]))
    own = message_id.strip("<>").lower()
    return "" if any(a and a in own for a in said) else gap_id(store, message_id)


def archive_delete(config, store, list_row, number, by=""):
    """Remove post ``number`` at an owner's word (`archive delete`; `delete N` by email, confirmed,
    through apply_owner_actions, which the web admin's Admin.carry_out runs too, given
    plan_owner_action(list_row, "delete", ["N"])): its number stays as a page that says the owners
    removed it; ``by`` (who) goes to the log.  Returns True, or False when the archive has no such
    post (any more)."""
    ensure_numbered(config, store, list_row)
    if not archive_remove(config, store, list_row, [number], "owner"):
        return False
    log.info("archive of %s: post %d removed by %s", list_address(list_row), number, one_line(by, 99))
    return True


# ---------------------------------------------------------------------------
# 13. The runner
# Owns: chain_filter, plugins, Context, run_chain, the trace.
# Calls: sections 2-12.
# ---------------------------------------------------------------------------

FILTERS = {}


def chain_filter(stage, needs=(), check=False):
    """Register a filter under its function name.  ``stage`` is "message" (queue and filter chains)
    or "send"; ``needs`` names filters that must run earlier in the same chain; ``check=True`` marks
    a filter that only refuses mail, which a whitelisted sender skips (see Accept).  This is also
    the decorator plugins use: ``@redsky.chain_filter("message")``."""
    def register(fn):
        if fn.__name__ in FILTERS:
            raise ConfigError(f"filter {fn.__name__!r} is already defined; a plugin cannot replace it")
        fn.stage, fn.needs, fn.check = stage, tuple(needs), check
        FILTERS[fn.__name__] = fn
        return fn
    return register


def load_plugins(config):
    """Load each file of ``[redsky] plugins`` as a Python module; its ``@redsky.chain_filter``
    functions join FILTERS and can be named in any chain.  A file that is missing, fails to import,
    defines no filter or reuses a filter's name is a configuration error."""
    paths = [p.strip() for p in config.get("redsky", "plugins").split(",") if p.strip()]
    if not paths:
        return
    import importlib.util
    sys.modules.setdefault("redsky", sys.modules[__name__])     # `import redsky` finds this module
    for number, path in enumerate(paths):
        path = os.path.join(config.data_dir, os.path.expanduser(path))
        refuse_if_others_can_write(path, "plugin")
        before = set(FILTERS)
        spec = importlib.util.spec_from_file_location(f"redsky_plugin_{number}", path)
        try:
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        except ConfigError as e:
            raise ConfigError(f"plugin {path}: {e}")
        except OSError as e:
            raise ConfigError(f"plugin {path}: cannot read it: {e.strerror}")
        except Exception as e:
            where, tb = "", e.__traceback__
            while tb is not None:               # the plugin's own line, not ours
                if tb.tb_frame.f_code.co_filename == path:
                    where = f" (line {tb.tb_lineno})"
                tb = tb.tb_next
            raise ConfigError(f"plugin {path}{where}: {type(e).__name__}: {e}")
        added = sorted(set(FILTERS) - before)
        if not added:
            raise ConfigError(f"plugin {path} defines no filter (decorate one with @redsky.chain_filter)")
        log.debug("plugin %s: filters %s", path, ", ".join(added))


def build_chain(names, stage, section):
    """Resolve filter names, refusing unknown names and impossible orders (78)."""
    chain = []
    for name in names:
        fn = FILTERS.get(name)
        if fn is None:
            raise ConfigError(f"[{section}] filters: unknown filter {name!r}")
        if fn.stage != stage:
            raise ConfigError(f"[{section}] filters: {name!r} is a {fn.stage} filter, not a {stage} filter")
        for need in fn.needs:
            if need not in [f.__name__ for f in chain]:
                raise ConfigError(f"[{section}] filters: {name!r} needs {need!r} earlier in the chain")
        chain.append(fn)
    if not chain:
        raise ConfigError(f"[{section}] filters is empty")
    return chain


class Context:
    """What the filters of one chain work on.  Every field is declared here;
    each filter's docstring says which it reads and which it writes."""

    def __init__(self, config, store=None, stdin=None):
        self.config, self.store = config, store
        self.stdin = stdin          # where read reads the message (default sys.stdin.buffer)
        self.stdout = None          # where out writes it (default sys.stdout.buffer)
        self.mode = "queue"         # or "filter": stdin -> stdout (cmd_filter)
        # the message and its envelope (read; the command layer may preset the envelope)
        self.raw = None             # the message bytes as received
        self.msg = None             # RawMessage being edited
        self.recipient = None       # envelope recipient (a list address)
        self.sender = None          # envelope sender; "" is the null sender <>
        self.envelope_recipients = []   # filter mode: every envelope recipient
        self.client_address = None  # the connecting client's IP, when the MTA says
        self.message_id = ""
        # the list and what the message is to it (getinfo, getsubscribers)
        self.list = None            # the list row (dict)
        self.role = None            # post, bounces, request, join, leave, confirm, owner
        self.verp = None            # member named by a VERP bounce address
        self.verp_proof = ""        # ... "verp" or "probe" when validly signed (verp_decode)
        self.token = None           # the TOKEN of LIST-confirm+TOKEN@ or LIST-leave+TOKEN@
        self.members = {}           # supports `address in members` (MemberLookup)
        self.poster = None          # the sender's member row (member_options), when a member
        self.recipients = []        # who the post goes to: addresses, or ListMembers
        self.digest_members = 0     # enabled members who get digests instead of posts
        self.approved = False       # moderator approval (passphrase or CLI)
        self.accepted = ""          # why the sender is whitelisted (Accept), else ""
        self.approve_held = []      # held posts approved by email, released after the chain
        # what is committed together (queuer, commands): changes run inside the transaction
        self.changes = []           # database changes (callables of db)
        self.outbox = Outbox()      # generated messages queued with the post or the action
        self.committed = False      # the post is queued: see run_chain
        self.distributed = None     # the post as queued (queuer), for the archive
        self.archive_id = ""        # the ID its Archived-At names when not its Message-ID (finish_post)
        self.author_from = None     # the From: field as written, when dmarc rewrote it (kept_form)
        self.lock_fd = None         # singleinstance's flock, held until cmd_send closes it
        self.now = 0.0              # queuebuilder's clock: what is due
        self.queue = []             # queuebuilder: message rows with deliveries due
        self.totals = None          # queuerunner: outcomes of this run, by kind
        self.unreadable = ""        # queuerunner: the last spool file it could not read, and why
        self.trace = []             # (filter, note): the trace
        self.current = ""           # the filter running now, for note()
        self.outcome, self.outcome_reason = "", ""

    def note(self, text):
        self.trace.append((self.current, text))

    def apply_changes(self, db):
        for change in self.changes:
            change(db)

    def describe(self):
        if self.list or self.mode != "filter":
            where = list_address(self.list) if self.list else (self.recipient or "?")
            return f"message-id={self.message_id or '?'} list={where}"
        return f"message-id={self.message_id or '?'} from={self.sender if self.sender is not None else '?'}" \
               f" to={','.join(self.envelope_recipients) or '?'}"


def run_chain(chain, ctx):
    """Run filters in order; return the verdict that ended the chain, or None.  After an Accept
    verdict the chain goes on without its checks.  A StoreError (nothing could be stored) becomes
    TryLater.  Once the post is queued (ctx.committed), nothing a later filter does can take that
    back: its verdict or error is logged and ignored, since a "try later" now would make the MTA
    deliver the post a second time."""
    for fn in chain:
        ctx.current = fn.__name__
        if ctx.accepted and fn.check:
            ctx.trace.append((fn.__name__, "skipped: sender whitelisted"))
            continue
        try:
            fn(ctx)
        except Accept as verdict:
            ctx.accepted = verdict.reason
            ctx.trace.append((fn.__name__, f"accept: {verdict.reason}"))
            continue
        except Exception as e:
            if isinstance(e, StoreError):
                e = TryLater(str(e))
            if not ctx.committed and isinstance(e, Verdict):
                ctx.trace.append((fn.__name__, f"{e.name}: {e.reason}"))
                return e
            if not ctx.committed:
                raise
            what = f"{e.name}: {e.reason}" if isinstance(e, Verdict) else f"{type(e).__name__}: {e}"
            log.error("%s after the post was queued (ignored): %s %s", fn.__name__, what, ctx.describe())
            ctx.trace.append((fn.__name__, f"ignored after queueing: {what}"))
            continue
        if not ctx.trace or ctx.trace[-1][0] != fn.__name__:
            ctx.trace.append((fn.__name__, "ok"))
    return None


def explain(ctx, code):
    """The trace as text: one line per filter, then the outcome."""
    return "\n".join([f"{name:15} {note}" for name, note in ctx.trace]
                     + [f"{'=> exit ' + str(code):15} {ctx.outcome}: {ctx.outcome_reason}"
                        + ("  (dry run: nothing stored)" if ctx.outbox.dry_run else "")])


def store_event(ctx):
    """Keep the trace for `trace MESSAGE-ID`.  The message is already
    accepted or refused: failing to store its trace must not change that."""
    try:
        ctx.store.relax()                                       # a trace is worth no extra fsync
        with ctx.store.transaction():
            ctx.store.q("add_event", time.time(), ctx.message_id or "", ctx.list["id"] if ctx.list else None,
                        ctx.recipient or "", ctx.sender, ctx.outcome, ctx.outcome_reason[:500],
                        json.dumps(ctx.trace))
    except (sqlite3.Error, StoreError) as e:
        log.warning("cannot store the trace of %s: %s", ctx.describe(), e)


# ---------------------------------------------------------------------------
# 14. Transports
# Owns: Transport and its kinds (sendmail, SMTP with pipelining, maildir), outcomes, send_now.
# Calls: sections 2-13.
# ---------------------------------------------------------------------------

SENT, TEMPORARY, PERMANENT = "sent", "temporary", "permanent"
Outcome = collections.namedtuple("Outcome", "kind detail", defaults=("",))


def outcome_of(code, text, stage):
    """5xx is permanent, anything else temporary (RFC 5321 4.2.1)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace").strip()
    return Outcome(PERMANENT if 500 <= code < 600 else TEMPORARY, f"{stage} {code} {text}"[:300])


class Transport:
    """The interface of every transport (TRANSPORTS): ``send(list_row, data, recipients, record,
    expected)`` delivers one post to an iterable of (address, attempts; None for a member the post's
    cursor reaches, who has no row yet), calling ``record(address, attempts, Outcome)`` exactly once
    for each (``expected``: how many).  ``send_one(sender, recipient, data)`` hands one generated
    message over at once: its Outcome.  ``ledger_batch`` is how many outcomes the ledger may hold
    before it commits (the most a killed ``send`` can repeat).  ``close()`` ends the run."""

    ledger_batch = 1

    def __init__(self, config):
        self.config, self.verp = config, config.get("send", "verp")

    def close(self):
        pass


def batches(recipients, size):
    """Group an iterable of (address, attempts) into lists of ``size``."""
    recipients = iter(recipients)
    return iter(lambda: list(itertools.islice(recipients, size)), [])


class SendmailTransport(Transport):
    """``sendmail -oi -f SENDER -- RCPT…``, never a shell.  Per-recipient VERP runs one process per
    recipient; with verp = xverp (Postfix's ``-XV``: the MTA writes LIST-bounces+user=host) or off
    (LIST-bounces@DOMAIN), one process takes up to smtp_max_recipients.  Exit 0 is sent; 67 (no
    user) and 68 (no host) are permanent; anything else, including a missing program, is temporary
    (sysexits.h).  A process costs far more than a commit, so the ledger commits every outcome."""

    PERMANENT_CODES = {67: "user unknown", 68: "host unknown"}

    def __init__(self, config):
        super().__init__(config)
        self.path = config.get("send", "sendmail")
        self.batch = 1 if self.verp == "per-recipient" else int(config.number("send", "smtp_max_recipients"))

    def send(self, list_row, data, recipients, record, expected=0):
        personal, bounces = Personalizer(list_row, data), list_address(list_row, "-bounces")
        for batch in batches(recipients, self.batch):
            addresses = [a for a, _ in batch]
            copy = personal(addresses[0]) if len(addresses) == 1 else personal.shared
            sender = verp_encode(list_row, addresses[0]) if self.verp == "per-recipient" else bounces
            outcome = self.run(sender, addresses, copy)
            for address, attempts in batch:
                record(address, attempts, outcome)

    def run(self, sender, addresses, data, verp=True):
        import subprocess
        xverp = verp and self.verp == "xverp"
        argv = [self.path] + (["-XV"] if xverp else []) + ["-oi", "-f", sender, "--", *addresses]
        try:
            proc = subprocess.run(argv, input=data, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, timeout=600)
        except (OSError, subprocess.SubprocessError) as e:
            return Outcome(TEMPORARY, f"cannot run {self.path}: {getattr(e, 'strerror', None) or e}")
        detail = (proc.stderr.decode("utf-8", "replace").strip().splitlines() or [""])[-1][:300]
        if proc.returncode == 0:
            return Outcome(SENT, "sendmail exit 0")
        why = self.PERMANENT_CODES.get(proc.returncode)
        return Outcome(PERMANENT if why else TEMPORARY,
                       f"sendmail exit {proc.returncode} {f'({why}) ' if why else ''}{detail}".strip())

    def send_one(self, sender, recipient, data):
        return self.run(sender or "<>", [recipient], data, verp=False)


class SMTPError(Exception):
    """The connection failed or the server broke the protocol."""


def smtp_connect(host, port, timeout):
    """An smtplib.SMTP connection after EHLO (else HELO) with ``extensions``
    (the EHLO keywords) and ``pipelining`` (RFC 2920), and TCP_NODELAY: each
    command group and each message go out in one write, so neither Nagle's
    algorithm nor a delayed ACK stalls a transaction.  Raises SMTPError."""
    import smtplib
    import socket
    try:                # gethostname, not smtplib's getfqdn: no DNS look-up just to say hello
        conn = smtplib.SMTP(host, port, local_hostname=socket.gethostname() or "localhost", timeout=timeout)
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.ehlo_or_helo_if_needed()
    except OSError as e:                        # smtplib's errors are OSErrors too
        raise SMTPError(f"{host}:{port}: {e.strerror or e}") from None
    conn.extensions = {name.upper() for name in conn.esmtp_features}
    conn.pipelining = "PIPELINING" in conn.extensions
    return conn


def smtp_transaction(conn, sender, recipients, wire, xverp=False):
    """Send one message to ``recipients`` one command at a time (a server without PIPELINING, a
    single notice); return {recipient: Outcome}.  ``wire``: smtp_wire's form."""
    def command(line):
        conn.send(line + b"\r\n")
        return conn.getreply()
    try:
        mail_reply = command(f"MAIL FROM:<{sender}>{' XVERP' if xverp else ''}".encode())
        if mail_reply[0] != 250:
            return dict.fromkeys(recipients, outcome_of(*mail_reply, "MAIL"))
        rcpt_replies = [command(f"RCPT TO:<{r}>".encode()) for r in recipients]
        outcomes = {r: outcome_of(*reply, "RCPT") for r, reply in zip(recipients, rcpt_replies)
                    if reply[0] not in (250, 251)}
        accepted = [r for r in recipients if r not in outcomes]
        data_reply = command(b"DATA") if accepted else (503, "no valid recipients")
        if data_reply[0] == 354:
            conn.send(wire)
            done = final_outcome(*conn.getreply())
        else:
            done = outcome_of(*data_reply, "DATA")
            command(b"RSET")
        outcomes.update({r: done for r in accepted})
        return outcomes
    except OSError as e:
        raise SMTPError(f"connection lost: {e.strerror or e}") from None


def smtp_close(conn):
    try:
        conn.quit()
    except OSError:
        pass
    conn.close()


class SMTPTransport(Transport):
    """SMTP to [send] smtp_host:smtp_port over up to smtp_connections connections, all driven by one
    thread (selectors): no hand-offs, and the ledger records each outcome as its reply arrives.
    With PIPELINING (RFC 2920) a message and its final dot go in the same write as the next
    transaction's MAIL, RCPT and DATA, so a transaction costs one round trip.  verp = per-recipient:
    one transaction per recipient with its own signed envelope sender; xverp (when the server offers
    XVERP, else per recipient, with a warning) or off: up to smtp_max_recipients a transaction.  A
    connection that breaks is replaced once; what it had in flight goes again on another."""

    def __init__(self, config):
        super().__init__(config)
        self.ledger_batch = int(config.number("send", "ledger_batch"))
        self.host, self.port = config.get("send", "smtp_host"), int(config.number("send", "smtp_port"))
        self.timeout = config.duration("send", "smtp_timeout")
        self.connections = max(1, int(config.number("send", "smtp_connections")))
        self.max_recipients = max(1, int(config.number("send", "smtp_max_recipients")))
        self.idle = []                      # connections kept for the next post of this run
        self.down = None                    # why the server is unreachable this run
        self.warned_xverp = False

    def connect(self):
        """An idle or a new Pipeline, or None (and self.down) when the server cannot be reached."""
        if self.idle:
            return self.idle.pop()
        if self.down:
            return None
        try:
            conn = smtp_connect(self.host, self.port, self.timeout)
        except SMTPError as e:
            self.down = f"SMTP {self.host}:{self.port}: {e}"
            return None
        xverp = self.verp == "xverp" and "XVERP" in conn.extensions
        if self.verp == "xverp" and not xverp and not self.warned_xverp:
            log.warning("%s:%d does not offer XVERP: sending per recipient, as verp = per-recipient does",
                        self.host, self.port)
            self.warned_xverp = True
        return Pipeline(conn, self.verp == "per-recipient" or (self.verp == "xverp" and not xverp), xverp)

    def send(self, list_row, data, recipients, record, expected=0):
        import selectors
        source, again = iter(recipients), collections.deque()   # again: what a broken connection had
        personal, signer = Personalizer(list_row, smtp_wire(data)), verp_signer(list_row)
        bounces = list_address(list_row, "-bounces")

        def take(pipe):
            return again.popleft() if again else \
                list(itertools.islice(source, 1 if pipe.per_recipient else self.max_recipients))

        def advance(pipe):
            """Send the pipeline's next group; False when it has nothing left to send.
            With CHUNKING a group holds up to 50 per-recipient transactions, about 256 KB: what
            a killed run can repeat grows with it (README)."""
            jobs, size = [], 0
            while not self.down and (not jobs or pipe.chunking and pipe.per_recipient and len(jobs) < 50
                                     and size < 262144):
                batch = take(pipe)
                if not batch:
                    break
                jobs.append((batch, signer(batch[0][0]) if pipe.per_recipient else bounces))
                size += len(data) + 100 * len(batch)
            return pipe.send_group(jobs, personal)

        def broken(pipe, error):
            """Put what ``pipe`` had in flight back for another connection,
            once; after three connections in a row broke before any reply
            settled a transaction, the server counts as down this run."""
            if pipe in pipes:
                selector.unregister(pipe.conn.sock)
                pipes.remove(pipe)
            pipe.conn.close()
            failure = Outcome(TEMPORARY, f"SMTP {self.host}:{self.port}: {error}")
            for batch in pipe.unfinished():
                if any(a in retried for a, _ in batch):
                    for address, attempts in batch:
                        record(address, attempts, failure)
                else:
                    again.extend([item] for item in batch) if pipe.per_recipient else again.append(batch)
                    retried.update(a for a, _ in batch)
            breaks[0] = 0 if pipe.settled else breaks[0] + 1
            if breaks[0] >= 3:
                self.down = self.down or failure.detail
            start()

        def start():
            """One more connection at work, unless the server is down."""
            pipe = self.connect()
            if pipe is None:
                return
            try:
                if pipe.conn.pipelining and advance(pipe):
                    pipes.append(pipe)
                    selector.register(pipe.conn.sock, selectors.EVENT_READ, pipe)
                    return
                while not pipe.conn.pipelining and not self.down:    # else one command at a time
                    batch = pipe.expect = take(pipe)
                    if not batch:
                        break
                    sender = signer(batch[0][0]) if pipe.per_recipient else bounces
                    copy = personal(batch[0][0]) if pipe.per_recipient else personal.shared
                    outcomes = smtp_transaction(pipe.conn, sender, [a for a, _ in batch], copy, pipe.xverp)
                    pipe.expect, pipe.settled = [], pipe.settled + 1
                    for address, attempts in batch:
                        record(address, attempts, outcomes[address])
                self.idle.append(pipe)
            except (SMTPError, OSError) as e:
                if pipe.expect and not pipe.conn.pipelining:
                    pipe.expect = [("txn", pipe.expect)]
                broken(pipe, getattr(e, "strerror", None) or e)

        selector, pipes, retried, breaks = selectors.DefaultSelector(), [], set(), [0]
        try:
            for _ in range(max(1, min(self.connections, expected // 200 + 1))):
                start()
            while pipes:
                if len(pipes) == 1:         # one connection: a blocking read (with the timeout) saves a poll
                    ready = pipes[:]
                else:
                    wait = min(p.deadline for p in pipes) - time.monotonic()
                    ready = [key.data for key, _ in selector.select(max(0.0, wait))]
                for pipe in ready:
                    try:
                        for batch, outcome in pipe.receive():
                            for address, attempts in batch:
                                record(address, attempts, outcome)
                        if not pipe.expect and not advance(pipe):
                            selector.unregister(pipe.conn.sock)
                            pipes.remove(pipe)
                            self.idle.append(pipe)
                    except (SMTPError, OSError) as e:
                        broken(pipe, getattr(e, "strerror", None) or e)
                now = time.monotonic()
                for pipe in [p for p in pipes if p.deadline < now]:
                    broken(pipe, "timed out")
        except BaseException:           # the ledger broke: no connection starts another transaction
            self.down = "the run was stopped"
            raise
        finally:
            selector.close()
        failed = Outcome(TEMPORARY, self.down or "not sent")
        for address, attempts in itertools.chain.from_iterable(again):
            record(address, attempts, failed)
        for address, attempts in source:    # server down: rows are deferred, members wait for the next run
            if attempts is None:
                break
            record(address, attempts, failed)

    def send_one(self, sender, recipient, data):
        try:
            conn = smtp_connect(self.host, self.port, self.timeout)
        except (OSError, SMTPError) as e:
            return Outcome(TEMPORARY, f"cannot connect: {e}")
        try:
            return smtp_transaction(conn, sender, [recipient], smtp_wire(data))[recipient]
        except (OSError, SMTPError) as e:
            return Outcome(TEMPORARY, f"SMTP: {e}")
        finally:
            smtp_close(conn)

    def close(self):
        for pipe in self.idle:
            smtp_close(pipe.conn)
        self.idle = []


class Pipeline:
    """The transactions in flight on one pipelining connection (RFC 2920).  send_group() writes, in
    one write, what the connection owes (the body of the transaction whose DATA got 354, an RSET)
    and the next transaction's MAIL, RCPTs and DATA; with CHUNKING (RFC 3030) several whole
    transactions, each message sent by BDAT LAST with no wait for a 354.  receive() reads replies
    and, once the group's are all in, returns the outcomes they settle: [(batch, Outcome)]."""

    def __init__(self, conn, per_recipient, xverp):
        self.conn, self.per_recipient, self.xverp = conn, per_recipient, xverp
        self.chunking = "CHUNKING" in conn.extensions
        self.buf, self.lines, self.replies = b"", [], []
        self.expect = []        # ("end", batch, accepted) / ("rset",) / ("txn" | "bdat", batch)
        self.needed = 0         # the replies they take
        self.body = None        # (batch, accepted addresses) whose message goes next
        self.reset, self.deadline = False, 0.0
        self.settled = 0        # transactions settled on this connection

    def send_group(self, jobs, personal):
        """``jobs``: [(batch, envelope sender)]; False when there is nothing to send."""
        parts, expect = [], []
        if self.body is not None:
            body, accepted = self.body
            parts.append((personal(accepted[0]) if self.per_recipient else personal.shared) if accepted
                         else b".\r\n")
            expect.append(("end", body, accepted))
        if self.reset:
            parts.append(b"RSET\r\n")
            expect.append(("rset",))
        self.body, self.reset = None, False
        for batch, sender in jobs:
            # with CHUNKING transactions follow each other unseen: each starts with RSET, as one
            # left open (a server may keep it after BDAT found no valid recipient) would take
            # the next one's RCPTs into it
            parts.append(b"RSET\r\n" * self.chunking
                         + f"MAIL FROM:<{sender}>{' XVERP' if self.xverp else ''}\r\n".encode()
                         + b"".join(f"RCPT TO:<{a}>\r\n".encode() for a, _ in batch))
            if self.chunking:
                message = personal.plain(batch[0][0] if self.per_recipient else None)
                parts += [b"BDAT %d LAST\r\n" % len(message), message]
            else:
                parts.append(b"DATA\r\n")
            expect.append(("bdat" if self.chunking else "txn", batch))
        if not parts:
            return False
        self.expect = expect
        self.needed = sum(len(e[1]) + (3 if e[0] == "bdat" else 2) if e[0] in ("txn", "bdat") else 1
                          for e in expect)
        self.conn.sock.sendall(b"".join(parts))
        self.deadline = time.monotonic() + self.conn.sock.gettimeout()
        return True

    def unfinished(self):
        """The batches in flight (their outcomes unknown)."""
        return [e[1] for e in self.expect if e[0] != "rset"] + ([self.body[0]] if self.body else [])

    def receive(self):
        """Read what has arrived; [(batch, Outcome)] once every reply of the group is in."""
        chunk = self.conn.sock.recv(65536)
        if not chunk:
            raise SMTPError("connection closed by the server")
        lines = (self.buf + chunk if self.buf else chunk).split(b"\n")
        self.buf = lines.pop()                  # an unfinished line, if any
        if len(self.buf) > 4096:
            raise SMTPError("reply line too long")
        for line in lines:
            if line[3:4] == b"-":               # a multi-line reply goes on
                self.lines.append(line[4:].strip())
                if len(self.lines) > 100:
                    raise SMTPError("a reply of more than 100 lines")
                continue
            if not line[:3].isdigit():
                raise SMTPError(f"not an SMTP reply: {line[:80]!r}")
            if self.lines:
                self.lines.append(line[4:].strip())
                line, self.lines = line[:4] + b"\n".join(self.lines), []
            self.replies.append((int(line[:3]), line[4:]))        # the text stays bytes until needed
        if len(self.replies) < self.needed:
            return []
        replies, self.replies, expect, self.expect = iter(self.replies), [], self.expect, []
        self.settled, settled = self.settled + 1, []
        for entry in expect:
            if entry[0] == "rset":
                next(replies)
            elif entry[0] == "end":
                accepted = set(entry[2])
                settled.append(([i for i in entry[1] if i[0] in accepted],
                                final_outcome(*next(replies))))
            else:
                if entry[0] == "bdat":
                    next(replies)                   # RSET's
                settled += self.settle(entry[0], entry[1], next(replies), [next(replies) for _ in entry[1]],
                                       next(replies))
        return settled

    def settle(self, kind, batch, mail, rcpts, data):
        """Outcomes of a transaction's MAIL, RCPT and DATA (or BDAT) replies,
        and what the connection owes next: the body, or an RSET when the
        transaction may still be open on the server."""
        if mail[0] != 250:
            if data[0] == 354:                  # cannot happen with a sane server; end it
                self.body = (batch, [])
            return [(batch, outcome_of(*mail, "MAIL"))]
        failed = {a: outcome_of(*reply, "RCPT") for (a, _), reply in zip(batch, rcpts)
                  if reply[0] not in (250, 251)}
        settled = [([i], failed[i[0]]) for i in batch if i[0] in failed]
        accepted = [i for i in batch if i[0] not in failed]
        if kind == "txn" and data[0] == 354:
            self.body = (batch, [a for a, _ in accepted])
        else:
            settled.append((accepted, final_outcome(*data)))
            self.reset = self.reset or kind == "txn"    # DATA refused: the transaction may be open
        return settled


def final_outcome(code, text):
    """The outcome of the reply to a message's end (DATA's dot or BDAT LAST)."""
    if code != 250:
        return outcome_of(code, text, "DATA")
    return Outcome(SENT, f"250 {text.decode('utf-8', 'replace').strip()}"[:300])


class MaildirTransport(Transport):
    """Writes each copy into ``[send] maildir``/RECIPIENT/, a Maildir, with Return-Path and
    Delivered-To as a local delivery would: for trying redsky from the shell."""

    def __init__(self, config):
        super().__init__(config)
        self.base = config.path_of("send", "maildir")

    def send(self, list_row, data, recipients, record, expected=0):
        personal = Personalizer(list_row, data)
        for address, attempts in recipients:
            record(address, attempts,
                   self.send_one(verp_encode(list_row, address), address, personal(address)))

    def send_one(self, sender, recipient, data):
        import mailbox
        safe = re.sub(r"^\.", "_", recipient.replace("/", "_"))
        try:
            os.makedirs(self.base, exist_ok=True)
            box = mailbox.Maildir(os.path.join(self.base, safe), create=True)
            eol = b"\r\n" if data.find(b"\r\n") != -1 and data.find(b"\r\n") < data.find(b"\n") + 1 else b"\n"
            box.add(b"Return-Path: <" + sender.encode() + b">" + eol
                    + b"Delivered-To: " + recipient.encode() + eol + data)
        except OSError as e:
            return Outcome(TEMPORARY, f"maildir {self.base}: {e.strerror}")
        return Outcome(SENT, f"maildir {safe}")


TRANSPORTS = {"sendmail": SendmailTransport, "smtp": SMTPTransport, "maildir": MaildirTransport}


def send_now(config, sender, recipient, data):
    """Hand one generated message to [send] transport at once, outside the ledger (an automatic
    reply in filter mode has no list to be queued under); return its Outcome.  Sender "" is <>."""
    transport = TRANSPORTS[config.get("send", "transport")](config)
    try:
        return transport.send_one(sender, recipient, data)
    finally:
        transport.close()


# ---------------------------------------------------------------------------
# 15. Held posts and owners' actions
# Owns: Approved:, holding and releasing posts, moderation notices and their one-tap links, an
#       owner's changes and reports (by email and on the web).
# Calls: sections 2-14.
# ---------------------------------------------------------------------------

def take_approved(ctx):
    """Remove every Approved: header (and an Approved: line at the top of the first text part) so a
    passphrase never reaches the members; return the passphrase found, or None."""
    values = ctx.msg.get_all("Approved") + ctx.msg.get_all("Approve")
    ctx.msg.remove("Approved", "Approve")
    body_value = _take_approved_line(ctx.msg)
    found = values[0] if values else body_value
    if found:                       # the same line in any other part, an HTML alternative too
        ctx.msg.body = _approved_text(found).sub(b"", ctx.msg.body)
    return found


def _approved_text(passphrase):
    return re.compile(rb"(?i:approved?):[ \t]*" + re.escape(passphrase.encode("utf-8")))


def passphrase_left(msg, passphrase):
    """Whether "Approved: PASSPHRASE" is still in ``msg`` after take_approved, as text a reader
    would see: in a part's decoded text (base64, quoted-printable, HTML with tags and entities)."""
    if _approved_text(passphrase).search(msg.body):
        return True
    if not re.search(rb"(?i)base64|quoted-printable|text/html", msg.body):
        return False
    from email import message_from_bytes, policy
    wanted = re.compile(r"(?i)approved?:\s*" + re.escape(passphrase))
    try:
        for part in message_from_bytes(bytes(msg), policy=policy.compat32).walk():
            if part.get_content_maintype() == "text" and not part.is_multipart():
                text = payload_text(part, "utf-8")
                if wanted.search(html_text(text) if part.get_content_subtype() == "html" else text):
                    return True
    except RecursionError:
        return True                 # cannot look inside: do not vouch for it
    return False


_APPROVED_LINE = re.compile(rb"\A(?:[ \t]*\r?\n)*Approved?:[ \t]*([^\r\n]*)\r?\n(?:[ \t]*\r?\n)?",
                            re.IGNORECASE)


def _take_approved_line(msg):
    """Mailman-style ``Approved: secret`` as the first line of the body, for a plain single-part
    message or the first text/plain part of a multipart/mixed one (removed here with the blank line
    after it), else the first such line that opens any part or paragraph (removed by take_approved,
    like its copies in the other parts)."""
    if not re.search(rb"(?im)^approved?:", msg.body[:65536]):
        return None                 # the common case, without loading the email package
    info, start = msg.header_message(), 0      # the header of the part the body line would open
    if info.get_content_type() == "multipart/mixed" and info.get_param("boundary"):
        b = re.escape(info.get_param("boundary").encode("utf-8", "surrogateescape"))
        first = re.search(rb"(?m)^--" + b + rb"[ \t]*\r?\n", msg.body)
        head_end = first and re.compile(rb"\r?\n\r?\n").search(msg.body, first.end() - 1)
        if head_end:
            start = head_end.end()
            info = RawMessage(msg.body[first.end():start]).header_message()
    cte = str(info.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    if info.get_content_type() == "text/plain" and cte in ("7bit", "8bit", ""):
        m = _APPROVED_LINE.match(msg.body[start:])
        if m:
            msg.body = msg.body[:start] + msg.body[start + m.end():]
            return m.group(1).decode("utf-8", "replace").strip()
    # any other structure (multipart/alternative, nested parts): the first
    # such line that opens a part or a paragraph; take_approved removes it
    for m in itertools.islice(re.finditer(rb"(?im)^[ \t]*approved?:[ \t]*([^\r\n]*)", msg.body[:65536]), 10):
        before = msg.body[max(0, m.start() - 1024):m.start()]
        if not before.strip() or before[len(before.rstrip(b" \t\r\n")):].count(b"\n") >= 2:
            return m.group(1).decode("utf-8", "replace").strip()
    return None


# Held posts ------------------------------------------------------------------

def hold_post(ctx, reason):
    """Keep the message as received, with its envelope, for a moderator, and send the moderation
    team (owners and moderators) one notice with a token to act on it by reply or with one tap
    (send_held_notice).  What the chain had planned to commit (ctx.changes, ctx.outbox) is
    dropped: the held row and its notice commit on their own."""
    senders = addresses_in(ctx.msg.get_all("From")) if ctx.msg else []
    subject = decode_header_text(ctx.msg.get("Subject", "")) if ctx.msg else ""
    author = (senders[0] if senders else "") or ctx.sender or ""
    held = dict(list_id=ctx.list["id"], received=time.time(), sender=ctx.sender or "",
                recipient=ctx.recipient, from_addr=senders[0] if senders else "", subject=subject[:300],
                message_id=ctx.message_id, reason=reason, raw=ctx.raw)
    outbox, team = Outbox(ctx.outbox.dry_run), moderation_team(ctx.list)
    held_expiry, token = ctx.config.duration("commands", "held_expiry"), new_token() if team else None

    def store_held(db):
        held_id = db.execute(SQL["add_held"], tuple(held.values())).lastrowid
        if token:
            db.execute(SQL["add_pending"], (token, ctx.list["id"], author or "?", "moderate", held_id,
                                            held["received"], held["received"] + held_expiry))
    if token:
        send_held_notice(Notices(ctx.store, ctx.config, ctx.list, outbox, ctx.message_id), team, held, token)
    outbox.commit(ctx.store, ctx.config.spool, store_held)


def utc_time(when):
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))


REJECT_REASON = "This post does not fit the list."      # the reason line a reject link offers to edit


def moderation_links(list_row, token, always="", base_url=""):
    """(label, mailto: URL) of each one-tap answer to the held post or join request of ``token``:
    a message to LIST-request whose Subject is the command; reject's body is the command with a
    reason to edit.  ``always``: a sender approve-and-always-accept applies to (always_accept).
    ``base_url`` ([web], for a held post): its page on the web too (held_page_url)."""
    request = list_address(list_row, "-request")
    links = [("approve", mailto(request, f"approve {token}")),
             ("reject (edit the reason first)", mailto(request, f"reject {token}",
                                                       f"reject {token} {REJECT_REASON}")),
             ("drop it silently", mailto(request, f"discard {token}"))]
    if always:
        links.append((f"approve and always accept {always}", mailto(request, f"approve {token} always")))
    if base_url:
        links.append(("see it and decide on the web", held_page_url(base_url, list_row, token)))
    return links


def held_page_url(base_url, list_row, token):
    """The web page of the held post whose moderation token is ``token``: the capability the notice
    already carries (a 128-bit secret bound to that post of that list, which works until the post is
    decided or dropped), so it opens that post's page, and decides it, without signing in."""
    return f"{base_url.rstrip('/')}/{list_address(list_row).lower()}/admin/held/{token}"


def signin_link(config, key, list_row, address):
    """The sign-in link of the web admin of ``list_row`` for its owner ``address`` (of every list of
    this host ``address`` is on, without a list), or "" without [web] base_url: a token signed for
    that purpose, list and address (sign_token), which works once, for [web] link_max_age, and only
    with the button of the page it opens (a GET never signs in: mail scanners fetch links)."""
    from urllib.parse import quote
    base = config.get("web", "base_url").rstrip("/")
    if not base:
        return ""
    if list_row is None:
        token = sign_token(key, "member-signin", "*", address.lower())
        return f"{base}/manage/signin?who={quote(address, safe='@')}&token={token}"
    token = sign_token(key, "owner-signin", list_address(list_row), address.lower())
    return f"{base}/{list_address(list_row).lower()}/admin/signin?who={quote(address, safe='@')}" \
        f"&token={token}"


def links_text(links):
    """The lines of a plain-text notice that name ``links``; no line starts with a command word, so
    a reply that quotes them without '>' acts on nothing."""
    return "\n".join(f"  Tap to {label}:\n    {url}" for label, url in links)


def send_held_notice(notices, to, held, token):
    """The notice of the held post ``held`` (a held row) to ``to``: every fact, its first lines,
    the one-tap links, the post attached, and the day it is dropped; a reply acts on ``token``.
    The first notice and the one a moderator gets for an unclear answer are the same."""
    list_row, config = notices.list, notices.config
    author, expiry = held["from_addr"] or held["sender"] or "", config.duration("commands", "held_expiry")
    lines = text_of(held["raw"][:200_000]).strip().splitlines()[:10]
    links = moderation_links(list_row, token, author * bool(always_accept(notices.store, list_row, author)),
                             config.get("web", "base_url"))
    notices.send(to, f"{list_address(list_row)}: post from {author or '?'} held: "
                     f"{one_line(held['subject'], 80)} (token {token})", "held",
                 {"reason": one_line(held["reason"], 300), "from_addr": author or "(unknown)",
                  "subject": one_line(held["subject"]) or "(no subject)", "size": len(held["raw"]),
                  "received": utc_time(held["received"]),
                  "excerpt": "\n".join("  > " + one_line(line, 300) for line in lines) or "  (no text)",
                  "token": token, "days": f"{expiry / 86400:g}",
                  "expires": utc_time(held["received"] + expiry),
                  "links": links_text(links), "attached": "The post is attached.\n"},
                 limit=False, auto="auto-generated", reply_to=list_address(list_row, f"-confirm+{token}"),
                 attachment=held["raw"], links=links)


def send_join_request(notices, to, address, token, expires):
    """The request to the moderation team to approve ``address`` joining, with one-tap links."""
    links = moderation_links(notices.list, token)
    notices.send(to, f"{list_address(notices.list)}: {address} asks to join (token {token})",
                 "approve-subscribe", {"address": address, "token": token, "links": links_text(links),
                                       "expires": utc_time(expires)},
                 limit=False, reply_to=list_address(notices.list, f"-confirm+{token}"), auto="auto-generated",
                 links=links)


def always_accept(store, list_row, address, changes=None):
    """Whether later posts of ``address`` can go out without a moderator: a member whose option
    moderate holds their posts (turned off), or a non-member of a list whose access checks
    membership or the acl (added to the list's acl, which a `subscribers` list also honours).
    With ``changes``, plan that change and return what it does, else "" (it does not apply).  An
    address with a glob character (``*@example.org`` is a valid address) is never added: it would
    let a whole domain post."""
    if not address or not valid_address(address) or re.search(r"[*?\[\]]", address):
        return ""
    member = store.q("member_options", list_row["id"], address).fetchone()
    if member is not None and member["moderate"]:
        if changes is not None:
            changes.append(lambda db: db.execute(SQL["set_member_option"].format(column="moderate"),
                                                 (0, list_row["id"], member["address"])))
        return f"{member['address']}'s posts are no longer held (member option moderate off)"
    if member is None and list_row["access"] in ("subscribers", "acl"):
        if changes is not None:
            changes.append(lambda db: db.execute(SQL["acl_add"], (list_row["id"], address.lower())))
        return f"{address} may post from now on (added to the list's acl)"
    return ""


def held_decided(held_id):
    """The change that takes held post ``held_id`` away, decided: it fails (StoreError) when the
    post is gone already, so that two decisions at once (two moderators, a double click) commit one,
    and a post is never distributed twice nor rejected after it went out."""
    def change(db):
        if db.execute(SQL["delete_held"], (held_id,)).rowcount != 1:
            raise StoreError(f"held post {held_id} was decided meanwhile")
    return change


def release_held(store, config, held_id, by=""):
    """Distribute a held post: the queue chain runs again on it, approved; the held row goes in the
    same transaction as the post, and the run is kept in the trace (`trace MESSAGE-ID` shows the
    hold, then the release, with ``by``: who approved it, e.g. "by ann@example.org on the web").
    Returns the Context (its recipients say how many got it)."""
    held = store.held(held_id)
    if held is None:
        raise Failure(f"no held post with id {held_id}", EX_DATAERR)
    ctx = Context(config, store)
    ctx.raw, ctx.recipient, ctx.sender, ctx.approved = held["raw"], held["recipient"], held["sender"], True
    ctx.accepted = "approved by a moderator"    # checks (dnsbl, ...) must not stop it again
    ctx.changes.append(held_decided(held_id))
    ctx.trace.append(("approve", f"held post {held_id} ({one_line(held['reason'], 120)}) approved"
                      + (f" {by}" if by else "")))
    verdict = run_chain(build_chain(config.chain("queue"), "message", "queue"), ctx)
    if verdict is not None:
        if verdict.code or isinstance(verdict, Hold):
            raise Failure(f"held post {held_id} not released: {verdict.name}: {verdict.reason}",
                          verdict.code or EX_DATAERR)
        with store.transaction() as db:      # discarded on the way (e.g. no members): it is done with
            ctx.apply_changes(db)
        log.info("held post %s not distributed: %s", held_id, verdict.reason)
        ctx.outcome, ctx.outcome_reason = verdict.name, f"released, then {verdict.reason}"
    else:
        ctx.outcome, ctx.outcome_reason = "released", f"for {len(ctx.recipients)} recipients"
    store_event(ctx)
    log.info("released held post %s %s recipients=%d", held_id, ctx.describe(), len(ctx.recipients))
    return ctx


def finish_queue(ctx, verdict):
    """After the queue chain: log the verdict, keep a held post, release a post a moderator approved
    by email, store the trace; return the exit code."""
    if verdict is None:
        ctx.outcome, ctx.outcome_reason, code = "queued", f"for {len(ctx.recipients)} recipients", EX_OK
        log.info("queued %s recipients=%d", ctx.describe(), len(ctx.recipients))
    else:
        ctx.outcome, ctx.outcome_reason, code = verdict.name, verdict.reason, verdict.code
        if isinstance(verdict, Hold):
            try:
                hold_post(ctx, verdict.reason)
            except StoreError as e:
                report(f"cannot store held post {ctx.describe()}: {e}")
                ctx.outcome, code = "try-later", EX_TEMPFAIL
                ctx.outcome_reason = f"cannot store held post: {e}"
        line = f"{verdict.name} {ctx.describe()} reason={verdict.reason}"
        if code:
            report(line, logging.WARNING)
        else:
            log.info("%s", line)
    for held_id in ctx.approve_held if not ctx.outbox.dry_run else ():
        # the approval is committed: a release that fails leaves the post
        # held for the CLI, and must not make the MTA repeat the approval
        try:
            released = release_held(ctx.store, ctx.config, held_id)
            what = f"{released.outcome or 'queued'} for {len(released.recipients)} recipients"
            ctx.trace.append(("release", f"held post {held_id} released: {what}"))
        except Failure as e:
            log.error("held post %s approved by email but not released: %s", held_id, e)
            ctx.trace.append(("release", f"held post {held_id} not released: {e}"))
    if not ctx.outbox.dry_run:
        store_event(ctx)
    return code
MODERATION_VERBS = ("approve", "reject", "discard")
OWNER_ACTIONS = ("invite", "remove", "ban", "unban", "delete")   # and set SETTING VALUE: the owner confirms
OWNER_REPORTS = ("who", "held", "pending", "bounces", "show", "admin")     # answered to the owner at once
MAX_OWNER_ITEMS = 100           # addresses and patterns in one owner's message


def tell_owners(notices, verb, addresses):
    """With the list's notify_owners on, one notice to the owners that
    ``addresses`` joined or left (verb "joined" / "left")."""
    owners = owners_of(notices.list)
    if notices.list["notify_owners"] and owners and addresses:
        shown = ", ".join(addresses[:3]) + (f" and {len(addresses) - 3} more" if len(addresses) > 3 else "")
        notices.send(owners, f"{list_address(notices.list)}: {shown} {verb}", "membership-change",
                     {"verb": verb, "addresses": "\n".join("  " + a for a in addresses)},
                     limit=False, auto="auto-generated")


def drop_held(held, notices, changes, notify, reason):
    """Plan the removal of the held post ``held`` (a change in ``changes``); with ``notify``, a
    notice (into ``notices``) tells its sender why, unless [commands] notify_rejected is off or the
    sender is a robot.  Returns what was done, for the log."""
    changes.append(held_decided(held["id"]))
    to = held["from_addr"] or held["sender"]
    if notify and to and notices.config.flag("commands", "notify_rejected") and not \
            is_robot(RawMessage(held["raw"]), held["sender"] or None):
        notices.send([to], f"{list_address(notices.list)}: your post was not distributed", "rejected-post",
                     {"subject": one_line(held["subject"]), "reason": one_line(reason, 500)})
    return f"held post {held['id']} {'rejected' if notify else 'discarded'}"


# An owner's changes and reports: by email here (Requests), and the web admin's to reuse ------

def plan_owner_action(list_row, verb, words, value="", room=MAX_OWNER_ITEMS, escapes=True):
    """An owner's change checked as `redsky.py` checks it: (the action to carry out once the owner
    confirms, a dict that JSON keeps, or None; the problems, one line each).  ``value``: the
    rest of a `set` line as written; ``room``: how many more addresses or patterns may come;
    ``escapes``: as validate_setting's."""
    verb = {"subscribe": "invite", "unsubscribe": "remove"}.get(verb, verb)
    if verb == "set":
        key = words[0].lower() if words else ""
        try:
            column, stored = validate_setting(key, value, escapes)
        except Failure as e:
            return None, [f"set {one_line(key, 40)}: {e}"]
        if column == "access" and stored == "passphrase" and not list_row["passphrase_hash"]:
            return None, ["set access passphrase: set a passphrase first (set passphrase SECRET)"]
        if column == "owners" and not stored:
            return None, ["set owners: name at least one owner, or nobody could run the list by email"]
        if len(str(stored)) > 2000:                 # all of it is shown in the confirmation
            return None, [f"set {one_line(key, 40)}: too long to confirm by email (2,000 characters at most)"]
        shown = "(a new passphrase)" if key == "passphrase" else str(stored) or "(empty)"
        was = "" if key == "passphrase" else str(list_row.get(column, "") if hasattr(list_row, "get") else "")
        return {"verb": "set", "key": key, "column": column, "value": stored, "shown": shown, "was": was}, []
    items, problems, seen = [], [], set()
    for n, word in enumerate(words):
        if len(items) >= room or len(problems) >= 20:
            problems.append(f"{verb}: at most {MAX_OWNER_ITEMS} addresses or patterns (and 20 mistakes) in"
                            f" one message; {len(words) - n} words left out")
            break
        word = word.strip("<>,;")
        try:
            item = ban_pattern(word) if verb in ("ban", "unban") else \
                (str(int(word)) if word.isdigit() and word.isascii() and len(word) < 10 else None) \
                if verb == "delete" else \
                normalize_address(word) if valid_address(word) and not word.startswith("-") else None
        except Failure as e:
            item = None
            problems.append(f"{verb} {one_line(word, 80)}: {one_line(e, 200)}")
        if item is None and verb in ("invite", "remove", "add"):
            problems.append(f"{verb} {one_line(word, 80)}: not a valid address")
        elif item is None and verb == "delete":
            problems.append(f"delete {one_line(word, 80)}: not a post's number (index lists them)")
        elif item and item.lower() not in seen:
            items.append(item)
            seen.add(item.lower())
    if not items and not problems:
        problems.append(f"{verb}: name at least one " + ("pattern" if verb in ("ban", "unban") else
                                                          "post's number" if verb == "delete" else "address"))
    return ({"verb": verb, "items": items} if items else None), problems


def describe_action(action):
    """One line for a planned owner's action (the confirmation names each)."""
    if action["verb"] == "set":             # the whole new value, and the one it replaces
        def block(text):
            return ("\n      " + text.replace("\n", "\n      ")) if "\n" in text else " " + text
        return (f"set {action['key']} to:{block(action['shown'])}"
                + (f"\n    (now:{block(action['was']) if action.get('was') else ' (empty)'})"
                   if "was" in action else ""))
    why = {"invite": " (each is asked to confirm)", "remove": " (each is told)",
           "delete": " from the archive (each number stays, as a page that says the owners removed it)",
           "add": " (at once, without asking them" + (", welcomed)" if action.get("welcome") else ")")
           }.get(action["verb"], "")
    return f"{action['verb']} {'post ' * (action['verb'] == 'delete')}{', '.join(action['items'])}{why}"


def apply_owner_actions(store, config, list_row, notices, changes, actions, now, after_commit):
    """Carry out an owner's confirmed actions (plan_owner_action): the changes go into ``changes``
    and the notices into ``notices``, to commit together; what must wait for the commit (a public
    archive's pages) into ``after_commit``.  The state is checked again now.  Returns what was
    done, one line each."""
    lines, list_id, post = [], list_row["id"], list_address(list_row)
    members, removed, invited = MemberLookup(store, list_id), [], set()
    bans = {p.lower() for p in (r[0] for r in store.q("bans", list_id))}
    for action in actions:
        verb, items = action.get("verb"), [str(i) for i in action.get("items", ())]
        if verb == "set" and action.get("column") in LIST_COLUMNS.replace(",", " ").split() and \
                action["column"] not in ("id", "name", "domain"):
            changes.append(lambda db, a=action: store.set_list(db, list_id, a["column"], a["value"]))
            lines.append(f"  set {action['key']} {action.get('shown', '')}: done.")
            if action["column"] in ("archive", "description") and \
                    "public" in (list_row["archive"], action["value"]):
                after_commit.append(lambda: build_pages(config, store.list_by_id(list_id)))
        elif verb == "invite":
            expiry = config.duration("commands", "confirm_expiry")
            for address in items:
                refused = "is a member" if address in members else "is banned" if banned(
                    store, list_row, [address]) else "was invited already" if address.lower() in invited or \
                    store.q("open_request", list_id, address, "subscribe", "", now).fetchone()[0] else ""
                if refused:
                    lines.append(f"  {address} {refused}: not invited.")
                    continue
                invited.add(address.lower())
                token = add_pending(changes, list_row, address, "subscribe", now, expiry)
                confirm = list_address(list_row, f"-confirm+{token}")
                notices.send([address], f"Invitation to join {post} (confirm {token})", "invite",
                             {"confirm_address": confirm, "days": f"{expiry / 86400:g}"},
                             limit=False, reply_to=confirm)
                lines.append(f"  {address} is invited: joins once they reply.")
        elif verb == "add":                 # the web admin's "add at once", as `redsky.py subscribe`
            added = []
            for address in items:
                refused = "is a member already" if address in members or address.lower() in added else \
                    "is banned" if banned(store, list_row, [address]) else ""
                if refused:
                    lines.append(f"  {address} {refused}: not added.")
                    continue
                added.append(address.lower())
                changes.append(lambda db, a=address: db.execute(SQL["add_member"], (list_id, a, now)))
                if action.get("welcome"):
                    notices.send([address], f"Welcome to {post}", "welcome", {"address": address},
                                 limit=False)
                lines.append(f"  {address} is added" + (", and welcomed." if action.get("welcome") else "."))
            tell_owners(notices, "joined", [a for a in items if a.lower() in added])
        elif verb == "remove":
            for address in items:
                if address not in members or address.lower() in removed:
                    lines.append(f"  {address} is not a member: nothing to remove.")
                    continue
                removed.append(address.lower())
                changes.append(lambda db, a=address: db.execute(SQL["delete_member"], (list_id, a)))
                notices.send([address], f"You were removed from {post}", "removed", {"address": address},
                             limit=False, auto="auto-generated")
                lines.append(f"  {address} is removed, and told.")
        elif verb in ("ban", "unban"):
            for pattern in items:
                there = pattern.lower() in bans
                if there == (verb == "ban"):
                    lines.append(f"  {pattern} {'is banned already' if there else 'was not banned'}.")
                    continue
                bans.add(pattern.lower()) if verb == "ban" else bans.discard(pattern.lower())
                changes.append(lambda db, p=pattern, v=verb: db.execute(
                    SQL["ban_add" if v == "ban" else "ban_del"], (list_id, p)))
                member = verb == "ban" and matches_any([pattern], member_addresses(store, list_id))
                lines.append(f"  {pattern} is {'banned' if verb == 'ban' else 'no longer banned'}."
                             + (f" ({member} stays a member until removed.)" if member else ""))
        elif verb == "delete":          # archive_delete once committed: it writes files and pages
            for number in dict.fromkeys(int(i) for i in items if i.isdigit() and len(i) < 10):
                row = store.q("archived_post", list_id, number).fetchone()
                if row is None or row["removed"] is not None:
                    lines.append(f"  post {number} is not in the archive (or removed already).")
                    continue
                after_commit.append(lambda n=number: archive_delete(
                    config, store, store.list_by_id(list_id), n, "an owner's confirmed delete"))
                lines.append(f"  post {number} is removed from the archive; its number stays, as a page that"
                             " says the owners removed it.")
        else:
            lines.append(f"  {one_line(verb, 20)}: not an action.")
    tell_owners(notices, "left", removed)
    return lines


def list_report(store, config, list_row, what, changes, now):
    """The text of an owner's report (who, held, pending, bounces, show) and the one-tap links it
    names: (text, [(label, URL)]).  A held post without an open token gets one (into ``changes``)."""
    list_id, post = list_row["id"], list_address(list_row)
    if what == "who":
        rows = store.q("members", list_id).fetchall()
        lines = [f"  {r['address']}" + (f" ({one_line(r['name'], 60)})" if r["name"] else "")
                 + f"  {r['status']}" + (f" ({r['disabled_reason']})" if r["status"] == "disabled" else "")
                 + "".join(f"  {o}" for o, on in options_of(r).items() if on and o != "nomail")
                 for r in rows[:10_000]]
        more = [f"  ... and {len(rows) - 10_000} more"] * (len(rows) > 10_000)
        return f"{post} has {len(rows)} members:\n\n" + "\n".join(lines + more), []
    if what == "held":
        rows = store.q("held_waiting", list_id, now + 1, now).fetchall()
        text, links = moderation_items(store, config, list_row, changes, rows, [], now)
        return f"Posts held on {post}: {len(rows)}\n\n{text}", links
    if what == "pending":
        joins = store.q("join_requests", list_id, now, now + 1).fetchall()
        text, links = moderation_items(store, config, list_row, changes, [], joins, now)
        waiting = {"subscribe": "was asked to confirm joining", "unsubscribe": "was asked to confirm leaving",
                   "reenable": "was asked to turn delivery back on",
                   "set-option": "was asked to confirm an option", "owner-command": "(an owner) was asked to"
                                                                                      " confirm changes"}
        others = [f"  {r['address']} {waiting[r['action']]}, {utc_time(r['created'])}"
                  for r in store.q("open_pending", now, list_id, list_id) if r["action"] in waiting]
        return (f"Join requests waiting for a decision on {post}: {len(joins)}\n\n{text}\n\n"
                f"Waiting for someone's confirmation: {len(others)}\n" + "\n".join(others)), links
    if what == "bounces":
        history = {}
        for b in store.q("bounce_history", list_id):
            history.setdefault(b["address"].lower(), []).append(b)
        lines = []
        for m in store.q("members_bounce_status", list_id):
            if not m["bounce_score"] and m["disabled_reason"] not in ("bounce", "feedback"):
                continue
            lines.append(f"  {m['address']}: score {m['bounce_score']:g}, {m['status']}"
                         + (f" ({m['disabled_reason']}, {m['warnings']} warnings)" if m["disabled_reason"]
                            else ""))
            lines += [f"      {utc_time(b['received'])}  {b['cause'] or '?'} {b['status'] or ''}"
                      f" ({'counted' if b['counted'] else 'not counted'}): {one_line(b['why'], 120)}"
                      for b in history.get(m["address"].lower(), [])[-5:]]
        return f"Members of {post} whose mail bounces:\n\n" + ("\n".join(lines) or "  none"), []
    shown = {k: ("(set)" if list_row["passphrase_hash"] else "(none)") if k == "passphrase"
             else str(list_row[k]).replace("\n", "\\n") for k in SETTABLE
             if k in list_row or k == "passphrase"}
    return f"The settings of {post} (change one with: set SETTING VALUE):\n\n" + "\n".join(
        f"  {k} = {v}" for k, v in shown.items()), []


def moderation_items(store, config, list_row, changes, held_rows, join_rows, now, limit=50):
    """The held posts (held_waiting rows) and join requests (join_requests rows), each with its
    facts and one-tap links, at most ``limit`` of them: (text, links).  A held post whose token
    is gone gets a new one, into ``changes``, that ends with the post."""
    items, links = [], []
    held_expiry = config.duration("commands", "held_expiry")
    for r in held_rows[:limit]:
        author = r["from_addr"] or r["sender"] or ""
        token = r["token"] or add_pending(changes, list_row, author or "?", "moderate", now,
                                          max(r["received"] + held_expiry - now, 3600), held_id=r["id"])
        these = moderation_links(list_row, token, author if always_accept(store, list_row, author) else "",
                                 config.get("web", "base_url"))
        items.append(f"Held post {r['id']} from {author or '?'}, {utc_time(r['received'])},"
                     f" {r['size']} bytes\n"
                     f"  Subject: {one_line(r['subject'], 200) or '(no subject)'}\n"
                     f"  Reason:  {one_line(r['reason'], 200)}\n  Token:   {token}\n" + links_text(these))
        links += these
    for r in join_rows[:max(limit - len(items), 0)]:
        these = moderation_links(list_row, r["token"])
        items.append(f"{r['address']} asks to join, since {utc_time(r['created'])}\n  Token:   {r['token']}\n"
                     + links_text(these))
        links += these
    more = len(held_rows) + len(join_rows) - len(items)
    return "\n\n".join(items + [f"... and {more} more (answer these first)"] * (more > 0)) or "  none", links


# ---------------------------------------------------------------------------
# 16. Command mail
# Owns: the command interpreter of -request, -join, -leave and -confirm (Requests).
# Calls: sections 2-15.
# ---------------------------------------------------------------------------

TOKEN = re.compile(r"\b([0-9a-f]{32})\b")
GET_POSTS = 10                  # archived posts one command mail gets at most, however it asks (get 1-500)
GET_BYTES = 10 * 2**20          # and bytes of them; a larger post still goes, alone
# ... and for an address that is not a member, which anyone can put in a From: (its posts are on
# the web for a public list): one post of at most 1 MB, so a forged get sends nobody much
GET_POSTS_OUTSIDER, GET_BYTES_OUTSIDER = 1, 2**20
_GET_RANGE = re.compile(r"(\d{1,9})(?:-(\d{1,9}))?")


def get_ranges(words):
    """The numbers `get` asks for, as [(first, last)] in the order written (get 3 5-9,12), or None
    when a word is none or there are more than 50 (of at most 20 words); linear in the words."""
    ranges, pieces = [], ",".join(words[:20]).split(",")
    if len(pieces) > 50:
        return None
    for piece in pieces:
        m = _GET_RANGE.fullmatch(piece.strip())
        if piece.strip() and (m is None or int(m.group(2) or m.group(1)) < int(m.group(1))):
            return None
        if m:
            ranges.append((int(m.group(1)), int(m.group(2) or m.group(1))))
    return ranges or None


def number_ranges(ranges):
    """[(first, last)] written as 3, 5-9."""
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def merged_ranges(numbers):
    """Ascending ``numbers`` as [(first, last)] of consecutive ones."""
    ranges = []
    for n in numbers:
        if ranges and n == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], n)
        else:
            ranges.append((n, n))
    return ranges
COMMAND_WORDS = {"join": "subscribe", "leave": "unsubscribe", "signoff": "unsubscribe", **{
    w: w for w in "subscribe unsubscribe help confirm set index get".split() + list(MODERATION_VERBS)
    + list(OWNER_ACTIONS + OWNER_REPORTS)}}


def command_lines(raw):
    """The Subject (without Re:/Fwd:) and the first lines of the first
    text/plain part, up to a blank line after text, a signature or a quote."""
    from email import message_from_bytes, policy
    try:                                        # compat32: policy.default is slow on hostile headers
        parsed = message_from_bytes(raw, policy=policy.compat32)
        subject = without_prefixes(decode_header_text(str(parsed.get("Subject", "") or "")))
    except Exception as e:                      # the email package gave up on it: no commands
        log.warning("command mail unreadable (%s: %s); treated as empty", type(e).__name__, e)
        return []
    lines = [subject] if subject else []
    try:
        part = next((p for p in parsed.walk() if p.get_content_type() == "text/plain"), None)
        body = "" if part is None else payload_text(part)
    except Exception as e:
        log.warning("command mail body unreadable (%s: %s); only the Subject is read", type(e).__name__, e)
        body = ""
    for line in body.splitlines()[:30]:
        line = line.strip()
        if line.startswith((">", "-- ")) or line == "--":
            break
        if line:
            lines.append(line)
        elif len(lines) > 1:
            break
    return lines


def parse_command(line):
    """(command, arguments) for a known command line, else None."""
    words = line.split()
    command = words and COMMAND_WORDS.get(words[0].lower().strip(".:!"))
    return (command, words[1:]) if command else None


def token_in(words):
    """The first confirmation token among ``words``, or None."""
    return next((m.group(1) for w in words for m in [TOKEN.search(w.lower())] if m), None)


def sender_address(ctx):
    """Who asked: the first From address, else the envelope sender."""
    senders = addresses_in(ctx.msg.get_all("From"))
    if senders and valid_address(senders[0]):
        return senders[0]
    return normalize_address(ctx.sender) if ctx.sender and valid_address(ctx.sender) else None


class Requests:
    """The command interpreter of one message to LIST-request, -join, -leave or -confirm+TOKEN.
    Each command adds database changes (ctx.changes) and notices (Notices, into ctx.outbox), which
    the commands filter commits together; ``done`` says what happened, one line per action.

    Who may do what: anyone, for their own address (a change that stops or delays their mail
    waits for their confirmation); the moderation team (owners and moderators) acts on held posts
    and join requests with their tokens; an owner, writing from the owner's address, also gets
    reports (who, held, pending, bounces, show) at that address, and changes the list (invite,
    remove, ban, unban, set), carried out only once the owner answers the confirmation sent to
    that same address.  Answers go to the sender's own address, never to a Reply-To."""

    def __init__(self, ctx, sender, lines=()):
        self.ctx, self.store, self.list, self.config = ctx, ctx.store, ctx.list, ctx.config
        self.sender = sender        # who asked (sender_address); answers go there
        self.lines = list(lines)    # the command lines of the message (command_lines)
        self.post_address, self.members = list_address(ctx.list), MemberLookup(ctx.store, ctx.list["id"])
        self.notices = Notices(ctx.store, ctx.config, ctx.list, ctx.outbox, ctx.message_id)
        self.now, self.done = self.notices.now, []
        self.seen = set()           # (command, argument) already done for this message
        self.approve_held = []      # held posts a moderator approved
        self.answers = None         # run(): the answers to the sender, sent in one reply
        self.line = ""              # run(): the command line being done
        # an owner or a moderator is one by the From: address (the envelope sender never counts)
        written = addresses_in(ctx.msg.get_all("From"))[:1] if ctx.msg is not None else []
        who = (sender or "").lower() if [a.lower() for a in written] == [(sender or "").lower()] else ""
        if who and from_authenticated(ctx.msg, sender, ctx.config.get("commands", "authserv_id")):
            self.notices.origin = "own"         # its own allowances: forgeries cannot spend them
        self.is_owner = bool(who) and who in {o.lower() for o in owners_of(ctx.list)}
        self.is_moderator = bool(who) and who in {m.lower() for m in moderation_team(ctx.list)}
        self.actions = []           # run(): an owner's checked changes, confirmed together
        self.tokens_done = set()    # each token is acted on once per message
        self.after_commit = []      # run by the commands filter once everything is committed
        self.got = [0, 0]           # archive_request: posts and bytes attached to the reply so far
        self._passphrase = False    # take_approved() once: False before

    def change(self, fn):
        self.ctx.changes.append(fn)

    def notice(self, to, title, text_name, values=None, done="", aside=False, **options):
        """Notices.send, noting a reply the rate limit suppressed, then ``done``
        (what was done, for the log).  While run() works through commands, a
        plain answer to the sender waits to go in one reply with the others;
        an ``aside`` (a confirmation went out on its own) only goes with others."""
        if self.answers is not None and to == [self.sender] and set(options) <= {"attachment", "links"}:
            self.answers.append((self.line, title, text_name, values, options, aside))
        elif not self.notices.send(to, title, text_name, values, **options) \
                and options.get("limit", True):
            self.done.append(f"reply to {', '.join(to) or 'nobody'} suppressed (rate limit)")
        if done:
            self.done.append(done)

    def is_list_address(self, address):
        """Whether ``address`` is an address of a list on this installation:
        subscribing it takes the owners' approval, whatever the policy."""
        m = ROLE_ADDRESS.fullmatch(address.rpartition("@")[0])
        local = m.group(1) if m else address.rpartition("@")[0]
        return self.store.list_by_address(f"{local}@{address.rpartition('@')[2]}") is not None

    def allowed(self, address, kind="confirm"):
        """Whether this request may mail ``address`` a confirmation (or an open list's welcome, or
        ask the team about it joining): at most [commands] max_confirmations a day, from the
        allowance of its mailbox over all lists ('confirm').  A member's leave ('leave') has one a
        day of that membership's own, whatever was sent in other names: the next request of the day
        brings the notice that the rest are ignored, with the member's own leave address, which
        needs no confirmation.  Past an allowance the address is told once (Notices.within)."""
        cap, origin = self.config.number("commands", "max_confirmations"), self.notices.origin
        if kind == "leave":
            return self.notices.within(address, f"leave {origin} {self.list['id']}", 1,
                                       f"a confirmation to leave {self.post_address}",
                                       mailbox=address.lower(), leave=True)
        return self.notices.within(address, f"confirm {origin}", cap,
                                   f"{cap} confirmation(s)")

    def run(self, lines):
        """Up to ten commands, a repeated one (Subject and body) done once, each token acted on
        once; every answer to the sender goes in one reply, whatever the mix."""
        parsed = {}                 # (command, its words) -> (line, command): a repeat is done once
        for line in lines:
            command = parse_command(line)
            if command and len(parsed) < 10:    # a report (who, held ...) once, whatever words follow
                words = () if command[0] in OWNER_REPORTS + ("help", "index") else command[1]
                parsed.setdefault((command[0], tuple(w.lower() for w in words)), (line, command))
        self.answers, self.lines = [], list(lines)
        if not parsed:
            self.help(why="help (no command found)")
        for self.line, (command, words) in parsed.values():
            self.HANDLERS[command](self, command, words)
        self.line = ""
        if self.actions:
            self.confirm_actions()
        answers, self.answers = self.answers, None
        if all(aside for *_, aside in answers):
            return                  # nothing to say beyond the confirmations, each its own message
        attachments = [a for *_, options, _ in answers for found in [options.get("attachment")]
                       for a in (found if isinstance(found, list) else [found] * (found is not None))]
        links = [link for *_, options, _ in answers for link in options.get("links", ())]
        if len(answers) == 1:
            self.notice([self.sender], *answers[0][1:4], attachment=attachments or None, links=links)
            return
        templates = self.config.path_of("redsky", "templates")
        replies = "\n\n".join(f"> {one_line(line, 200)}\n\n"
                              + render(name, self.list, values or {}, templates)
                              for line, _, name, values, *_ in answers)
        self.notice([self.sender], f"{self.post_address}: answers to your {len(answers)} commands",
                    "command-replies", {"replies": replies.rstrip("\n")}, attachment=attachments or None,
                    links=links)

    def help(self, command="help", words=(), why="help"):
        """The help text; an owner's and a moderator's name what they can do besides."""
        if not self.is_moderator:
            return self.notice([self.sender], f"{self.post_address}: help", "help", {"extra": ""}, done=why)
        member_help = render("help", self.list, {"extra": ""}, self.config.path_of("redsky", "templates"))
        if self.is_owner:
            return self.notice([self.sender], f"{self.post_address}: help", "owner-help",
                               {"help": member_help}, done=why)
        self.notice([self.sender], f"{self.post_address}: help", "moderator-help", {"help": member_help},
                    done=why)

    def token_command(self, command, words):
        """confirm / approve / reject / discard TOKEN: a line without a token acts on the message's
        (its -confirm+TOKEN address, else the first token any line names: a reply quotes it)."""
        token = token_in(words) or (self.ctx.token or "").lower() or token_in(self.lines)
        if token is None:
            return self.help(why="a token command without a token")
        if token not in self.tokens_done:
            self.tokens_done.add(token)
            self.confirm(token, command, words)

    def own_or_owner(self, command, words):
        """subscribe / unsubscribe: for the sender's own address (also when it is named), or, from
        an owner and naming other addresses, the owner's invite / remove."""
        others = [w for w in words if w.strip("<>,;").lower() != self.sender.lower()]
        if any("@" in w for w in others):
            return self.owner_action("invite" if command == "subscribe" else "remove", others)
        (self.subscribe if command == "subscribe" else self.unsubscribe)(self.sender)

    def set_command(self, command, words):
        """set OPTION on|off for the sender's own membership, or an owner's set SETTING VALUE."""
        if words and words[0].lower() in SETTABLE:     # a list setting: the owners' (owner_action)
            return self.owner_action("set", words)
        self.set_option(self.sender, words)

    HANDLERS = {"help": help, **dict.fromkeys(("confirm",) + MODERATION_VERBS, token_command),
                "subscribe": own_or_owner, "unsubscribe": own_or_owner, "set": set_command,
                "index": lambda self, command, words: self.archive_request(self.sender, "index", words),
                "get": lambda self, command, words: self.archive_request(self.sender, "get", words),
                **dict.fromkeys(OWNER_ACTIONS, lambda self, command, words:
                                self.owner_action(command, words)),
                **dict.fromkeys(OWNER_REPORTS, lambda self, command, words: self.owner_report(command))}

    def subscribe(self, address):
        policy_, ban = self.list["subscribe_policy"], banned(self.store, self.list, [address])
        if ban or policy_ == "closed":
            return self.notice([address], f"{self.post_address}: subscriptions are closed", "closed",
                               done=f"subscription of {address} refused: on the ban list" if ban else "")
        if address in self.members:
            return self.notice([address], f"{self.post_address}: already subscribed", "already-member",
                               {"address": address})
        if policy_ == "approve" or self.is_list_address(address):
            return self.ask_owners_to_approve(address)
        if policy_ == "open":
            if not self.allowed(address):
                return self.done.append(f"subscription of {address} ignored: its allowance for today"
                                        " is used up")
            return self.add_member(address)
        self.ask_to_confirm(address, "subscribe")

    def unsubscribe(self, address):
        """Leaving always takes the member's confirmation (or the personal LIST-leave+TOKEN
        address), whatever the join policy: From: is forged as easily as written."""
        if address not in self.members:
            return self.notice([address], f"{self.post_address}: not subscribed", "not-member",
                               {"address": address})
        self.ask_to_confirm(address, "unsubscribe")

    def ask_to_confirm(self, address, action, command=""):
        """A confirmation to ``address`` for ``action`` (subscribe, unsubscribe (a member's), set-option
        with ``command`` [option, on|off]), as its allowance allows (allowed).  A request repeated
        while its confirmation is pending gets that token again, good for [commands] confirm_expiry
        from now.  Inside run(), the reply to the sender says it went out."""
        if not self.allowed(address, "leave" if action == "unsubscribe" else "confirm"):
            self.done.append(f"{' '.join(filter(None, (action, command, address)))} ignored: its"
                             " confirmations for today are used up")
            return
        expiry = self.config.duration("commands", "confirm_expiry")
        pending = self.store.q("open_request_token", self.list["id"], address, action, command,
                               self.now).fetchone()
        if pending:
            token, sent = pending[0], "confirmation sent again"
            self.change(lambda db: db.execute(SQL["renew_pending"], (self.now + expiry, token)))
        else:
            token, sent = add_pending(self.ctx.changes, self.list, address, action, self.now, expiry,
                                      command=command), "confirmation sent"
        confirm, days = list_address(self.list, f"-confirm+{token}"), f"{expiry / 86400:g}"
        # The Subject carries the token too, so a reply to -request confirms as well.
        if action == "set-option":
            option, value = json.loads(command)
            self.notice([address], f"confirm {token}", "option-confirm",
                        {"address": address, "option": option, "value": value, "confirm_address": confirm,
                         "change": CONFIRMED_OPTION_CHANGES[(option, value == "on")], "days": days},
                        done=f"{option} {value} for {address}: {sent}", limit=False,
                        reply_to=confirm)
        else:
            self.notice([address], f"confirm {token}", f"confirm-{action}",
                        {"address": address, "confirm_address": confirm, "days": days},
                        done=f"{action} {address}: {sent}", limit=False, reply_to=confirm)
        if address == self.sender and self.answers is not None:
            self.notice([address], f"{self.post_address}: confirmation sent", "confirmation-sent",
                        {"address": address}, aside=True)

    def add_member(self, address):
        if banned(self.store, self.list, [address]):         # banned since the request
            self.done.append(f"subscription of {address} refused: on the ban list")
            return
        self.change(lambda db: db.execute(SQL["add_member"], (self.list["id"], address, self.now)))
        self.notice([address], f"Welcome to {self.post_address}", "welcome", {"address": address},
                    done=f"subscribed {address}", limit=False)
        tell_owners(self.notices, "joined", [address])

    def remove_member(self, address):
        self.change(lambda db: db.execute(SQL["delete_member"], (self.list["id"], address)))
        self.notice([address], f"Goodbye from {self.post_address}", "goodbye", {"address": address},
                    done=f"unsubscribed {address}", limit=False)
        tell_owners(self.notices, "left", [address])

    def leave_by_token(self, token):
        """One-click unsubscribe: the token in LIST-leave+TOKEN proves that
        the member received a post, so no second confirmation is asked."""
        member = leave_member(self.store, self.list, token, write=not self.ctx.outbox.dry_run)
        if member is None:
            self.done.append("unknown leave token: asking the sender to confirm")
            return self.unsubscribe(self.sender)
        self.remove_member(member)

    def reenable(self, address):
        self.change(lambda db: db.execute(SQL["reenable"], (self.list["id"], address)))
        self.notice([address], f"{self.post_address}: delivery is on again", "reenabled",
                    {"address": address}, done=f"re-enabled {address}", limit=False)

    def ask_owners_to_approve(self, address, confirmed=False):
        """The moderation team is asked (once while a request waits) whether ``address`` may join, as
        its allowance allows unless it ``confirmed`` by its token; the address is told it waits."""
        team = moderation_team(self.list)
        if not team or not (confirmed or self.allowed(address)):
            self.done.append(f"subscription request of {address} ignored: "
                             f"{'its allowance for today is used up' if team else 'the list has no owners'}")
            return
        if self.store.q("open_request", self.list["id"], address, "approve-subscribe", "",
                        self.now).fetchone()[0]:
            return self.notice([address], f"{self.post_address}: waiting for approval", "awaiting-approval",
                               done=f"subscription of {address} already waits for the owners")
        expiry = self.config.duration("commands", "held_expiry")
        token = add_pending(self.ctx.changes, self.list, address, "approve-subscribe", self.now, expiry)
        send_join_request(self.notices, team, address, token, self.now + expiry)
        self.notice([address], f"{self.post_address}: waiting for approval", "awaiting-approval",
                    done=f"subscription of {address} waits for the owners")

    def set_option(self, address, words):
        """set OPTION on|off (SELF_SERVICE_OPTIONS), for the sender's own membership; the answer
        goes to that address.  A change that stops, delays or thins the member's mail
        (CONFIRMED_OPTION_CHANGES) waits for the member's confirmation; the rest is done at once,
        and the member is told."""
        option, value = ([w.lower() for w in words[:2]] + ["", ""])[:2]
        if option not in SELF_SERVICE_OPTIONS or value not in ("on", "off"):
            return self.notice([address], f"{self.post_address}: help", "help", {"extra": ""},
                               done=f"set {' '.join(words)[:40]}: not understood")
        member = self.store.q("member_options", self.list["id"], address).fetchone()
        if member is None:
            return self.notice([address], f"{self.post_address}: not subscribed", "not-member",
                               {"address": address}, done=f"set {option} from non-member {address}")
        on = value == "on"
        if (option, on) in self.seen:               # the same command in Subject and body: once
            return
        self.seen.add((option, on))
        if (option, on) in CONFIRMED_OPTION_CHANGES and options_of(member)[option] != on:
            return self.ask_to_confirm(member["address"], "set-option", json.dumps([option, value]))
        self.apply_option(address, member, option, on)

    def apply_option(self, address, member, option, on, confirmed=False):
        """Set ``option`` of ``member`` and tell ``address`` what it means now (by a token it
        ``confirmed``: from no allowance, as a welcome or a goodbye)."""
        value = "on" if on else "off"
        self.change(set_member_option(self.store, self.ctx.outbox, self.list, member, option, on))
        limit = {"limit": False} if confirmed else {}
        if option != "digest":
            self.notice([address], f"{self.post_address}: {option} {value}", "option-set",
                        {"address": member["address"], "option": option, "value": value,
                         "meaning": MEMBER_OPTIONS[option]}, **limit)
        else:
            seconds = self.list["digest_interval"]
            count, unit = next((seconds / size, unit) for size, unit in ((604800, "week"), (86400, "day"),
                               (3600, "hour"), (60, "minute"), (1, "second")) if seconds >= size or size == 1)
            self.notice([address], f"{self.post_address}: digest {value}",
                        "digest-on" if on else "digest-off",
                        {"address": member["address"], "threshold": self.list["digest_size_threshold"],
                         "interval": f"{count:g} {unit}{'' if count == 1 else 's'}"}, **limit)
        self.done.append(f"{option} {value} for {member['address']}")

    def archive_request(self, address, command, words):
        """index / get N: anyone may read a public archive, members a private one."""
        policy_ = self.list["archive"]
        if policy_ == "off" or (policy_ == "private" and address not in self.members):
            why = "off" if policy_ == "off" else "open to members only"
            return self.notice([address], f"{self.post_address}: archive", "archive-refused",
                               {"why": why}, done=f"{command} refused for {address}: archive {why}")
        ensure_numbered(self.config, self.store, self.list)
        if command == "index":
            count = self.store.q("archived_count", self.list["id"]).fetchone()[0]
            shown = [dict(r) for r in self.store.q("archived_latest", self.list["id"], 100)][::-1]
            items = "\n".join(f"{r['number']:5}  {time.strftime('%Y-%m-%d', time.gmtime(r['date']))}  "
                              f"{r['author'][:30]:30}  {r['subject'][:60]}" for r in shown)
            return self.notice([address], f"{self.post_address}: archive index", "index",
                               {"count": count, "shown": len(shown), "items": items or "  (empty)"},
                               done=f"index to {address}")
        ranges = get_ranges(words)
        if ranges is None or len(ranges) > 1 or ranges[0][0] != ranges[0][1]:
            return self.get_posts(address, ranges, words)
        number = str(ranges[0][0])
        row = self.store.q("archived_post", self.list["id"], int(number)).fetchone()
        if row is not None and row["removed"] is not None:
            return self.notice([address], f"{self.post_address}: post {number} was removed",
                               "archive-removed", {"number": number}, done=f"get {number}: removed")
        self.get_posts(address, ranges, words)

    def get_posts(self, address, ranges, words):
        """get N, N-M ...: the posts attached to the reply, at most GET_POSTS and GET_BYTES of them
        for the whole message (several get lines share them); what is left is named, to ask again."""
        if ranges is None:
            return self.notice([address], f"{self.post_address}: no post {one_line(' '.join(words), 20)}",
                               "not-archived", {"number": one_line(" ".join(words), 20) or "(none given)"},
                               done=f"get {' '.join(words)[:20]}: not understood")
        member = address in self.members
        most, most_bytes = (GET_POSTS, GET_BYTES) if member else (GET_POSTS_OUTSIDER, GET_BYTES_OUTSIDER)
        rows, seen = [], set()              # (range, row) of the present posts asked: one more than room
        for i, (first, last) in enumerate(ranges):
            room = most - self.got[0] + 1 - len(rows)
            if room <= 0:
                break
            for r in self.store.q("archived_range", self.list["id"], first, last, room):
                if r["number"] not in seen:
                    seen.add(r["number"])
                    rows.append((i, dict(r)))
        found = dict((r["number"], data) for r, data in archived(
            self.config, self.store, self.list, [r["number"] for _, r in rows])) if rows else {}
        public = self.list["archive"] == "public" and address not in self.members
        sent, attached, rest = [], [], []
        for i, row in rows:
            data = found.get(row["number"])
            if data is None:                # its file is gone: `archive html` shows it as missing
                continue
            data = published_copy(data) if public else data     # what the web shows anyone: addresses hidden
            if self.got[0] >= most or ((self.got[0] or not member) and self.got[1] + len(data) > most_bytes):
                rest = [(row["number"], ranges[i][1])] + ranges[i + 1:]
                break
            self.got = [self.got[0] + 1, self.got[1] + len(data)]
            sent.append(row["number"])
            attached.append(data)
        numbers, left = number_ranges(merged_ranges(sorted(sent))), number_ranges(rest)
        asked = one_line(number_ranges(ranges), 40)
        said = f"get {asked}: " + (f"{numbers[:40]} to {address}" if sent else "none") + \
            (f", not {left[:40]}" if rest else "")
        if not sent and not rest:
            return self.notice([address], f"{self.post_address}: no post {asked}", "not-archived",
                               {"number": asked}, done=f"get {asked}: not in the archive")
        if len(sent) == 1 and not rest and len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
            return self.notice([address], f"{self.post_address}: archived post {numbers}", "archived-post",
                               {"number": numbers}, done=said, attachment=attached[0])
        title = f"archived posts {numbers}" if sent else f"posts not sent: {left}"
        self.notice([address], f"{self.post_address}: {one_line(title, 60)}",
                    "archived-posts" if not rest else "archived-posts-capped" if sent else "archive-capped",
                    {"numbers": numbers, "rest": left, "posts": most, "size": f"{most_bytes >> 20} MB",
                     "outsider": "" if member else " to an address that is not a member (anyone can write"
                     " in its name; the public archive is on the web)"},
                    done=said, attachment=attached or None)

    def confirm(self, token, command="confirm", words=()):
        """Act on ``token``: a member's or an owner's confirmation, or a moderator's decision.  An
        owner's token works for that owner only, from the owner's address; any other misuse gets
        the answer an unknown token gets."""
        row = self.store.q("pending_by_token", token).fetchone()
        answer_to = [self.sender] if self.sender else []
        if row is None or row["list_id"] != self.list["id"] or row["used"] is not None or (
                row["action"] == "owner-command" and not (
                    self.is_owner and row["address"].lower() == self.sender.lower())):
            return self.notice(answer_to, f"{self.post_address}: unknown confirmation", "bad-token",
                               done=f"token {token[:8]}…: unknown, used, for another list or owner")
        if row["expires"] < self.now:
            return self.notice(answer_to, f"{self.post_address}: confirmation expired", "expired-token",
                               done=f"token {token[:8]}…: expired")
        if row["action"] in ("moderate", "approve-subscribe"):
            return self.moderate(row, command, words)
        self.use(token)
        if command in ("reject", "discard"):         # "no" to a confirmation: nothing is done
            return self.notice(answer_to, f"{self.post_address}: cancelled", "done",
                               {"lines": f"  The request ({row['action']} {row['address']}) is cancelled."},
                               done=f"token {token[:8]}…: {row['action']} cancelled")
        if row["action"] == "set-option":
            return self.confirmed_option(row)
        if row["action"] == "owner-command":
            return self.owner_confirmed(row)
        confirmed = {"reenable": self.reenable, "unsubscribe": self.remove_member}.get(row["action"]) \
            or ((lambda a: self.ask_owners_to_approve(a, confirmed=True))
                if self.list["subscribe_policy"] == "confirm+approve" else self.add_member)
        confirmed(row["address"])

    def use(self, token):
        def mark(db):
            if db.execute(SQL["use_pending"], (self.now, token)).rowcount != 1:
                raise TryLater("the token was used concurrently")
        self.change(mark)

    def confirmed_option(self, row):
        """A member's confirmed option change: done, and the member told."""
        try:
            option, value = json.loads(row["command"])
            assert (option, value == "on") in CONFIRMED_OPTION_CHANGES and value in ("on", "off")
        except (ValueError, TypeError, AssertionError):
            return self.done.append(f"set-option token {row['token'][:8]}…: unreadable, nothing done")
        member = self.store.q("member_options", self.list["id"], row["address"]).fetchone()
        if member is None:
            return self.notice([row["address"]], f"{self.post_address}: not subscribed", "not-member",
                               {"address": row["address"]}, done=f"set {option} for {row['address']}: gone")
        self.apply_option(row["address"], member, option, value == "on", confirmed=True)

    def may_moderate(self):
        """The sender is on the moderation team, or the message carries the list's passphrase."""
        if self._passphrase is False:
            self._passphrase = take_approved(self.ctx) if self.ctx.msg is not None else None
        stored = self.list["passphrase_hash"]
        return self.is_moderator or bool(self._passphrase and stored
                                         and check_passphrase(self._passphrase, stored))

    def moderate(self, row, command="confirm", words=()):
        """approve [always] / reject [reason] / discard, from the moderation team only.  A bare
        confirm (a reply without a verb) gets the whole notice again, links and all."""
        if not self.may_moderate():
            return self.notice([self.sender], f"{self.post_address}: not a moderator", "not-moderator",
                               done=f"moderation by {self.sender} refused: not a moderator")
        token = row["token"]
        decisions = [c for c in map(parse_command, self.lines)
                     if c and c[0] in MODERATION_VERBS and token_in(c[1]) in (None, token)]
        if command not in MODERATION_VERBS:
            command, words = decisions[0] if decisions else (None, ())
        if command is None:
            self.done.append("moderation reply without approve, reject or discard: the notice sent again")
            if row["action"] == "approve-subscribe":
                return send_join_request(self.notices, [self.sender], row["address"], token, row["expires"])
            held = self.store.held(row["held_id"])
            return held and send_held_notice(self.notices, [self.sender], held, token)
        rest = [w for w in words if token_in([w]) != token]
        reason = " ".join(rest) or next((" ".join(w for w in ws if token_in([w]) != token)
                                         for c, ws in decisions if c == "reject" and len(ws) > 1), "")
        self.use(token)
        if row["action"] == "approve-subscribe":
            return self.decide_join(row["address"], command, reason or "no reason given")
        held = self.store.held(row["held_id"])
        if held is None:
            return self.notice([self.sender], f"{self.post_address}: done", "done",
                               {"lines": "  That held post is gone (decided or expired)."})
        what = f"Held post {held['id']} from {held['from_addr'] or held['sender'] or '?'}, " \
               f"\"{one_line(held['subject'], 80)}\":"
        if command == "approve":
            self.approve_held.append(held["id"])
            always = always_accept(self.store, self.list, held["from_addr"] or held["sender"],
                                   self.ctx.changes) if [w.lower() for w in rest][:1] == ["always"] else ""
            wanted = [w.lower() for w in rest][:1] == ["always"]
            lines = [f"  {what} approved; it goes to the members now."] + [f"  {always}."] * bool(always) \
                + ["  (Always accepting the sender does not apply: not held as a non-member or as a"
                   " moderated member.)"] * (wanted and not always)
            self.done.append(f"held post {held['id']} approved by email" + (f"; {always}" if always else ""))
        else:
            self.done.append(drop_held(held, self.notices, self.ctx.changes, command == "reject",
                                       reason or "no reason given"))
            lines = [f"  {what} {'rejected, the sender is told why' if command == 'reject' else 'dropped'}."]
        self.notice([self.sender], f"{self.post_address}: {command}", "done", {"lines": "\n".join(lines)})

    def decide_join(self, address, verb, reason):
        if verb == "approve":
            self.add_member(address)
        elif verb == "reject":
            self.notice([address], f"{self.post_address}: request declined", "rejected-subscribe",
                        {"reason": reason})
        self.done.append(f"subscription of {address}: {verb}")
        outcome = {"approve": "subscribed.", "reject": "declined, and told why.",
                   "discard": "request dropped."}
        self.notice([self.sender], f"{self.post_address}: {verb}", "done",
                    {"lines": f"  {address} asked to join: {outcome[verb]}"})

    # Owners ------------------------------------------------------------------

    def owner_action(self, command, words):
        """invite / remove ADDRESS..., ban / unban PATTERN..., set SETTING VALUE from an owner:
        checked now (the answer names every problem), carried out only once the owner confirms
        (confirm_actions sends one confirmation for the whole message)."""
        if not self.is_owner:
            return self.not_owner(command)
        m = re.match(r"\s*\S+\s+\S+\s?(.*)", self.line) if command == "set" else None
        room = MAX_OWNER_ITEMS - sum(len(a.get("items", ())) for a in self.actions)
        action, problems = plan_owner_action(self.list, command, words, m.group(1).strip() if m else "", room)
        if action:
            self.actions.append(action)
        lines = ([f"  {describe_action(action)}: waits for your confirmation."] if action else []) + \
            [f"  {p}" for p in problems]
        self.notice([self.sender], f"{self.post_address}: {command}", "done", {"lines": "\n".join(lines)},
                    aside=not problems,
                    done=f"{command} by {self.sender}: " + ("; ".join(problems) or "to be confirmed"))

    def not_owner(self, command):
        self.notice([self.sender], f"{self.post_address}: for the owners", "not-owner", {"command": command},
                    done=f"{command} from {self.sender} refused: not an owner")

    def confirm_actions(self):
        """One confirmation to the owner for every change of this message (an 'owner-command'
        token bound to the list, the owner's address and these actions, as checked JSON); at most
        5 x [commands] max_replies a day per list (a forger could fill a smaller cap), as many
        again for the owner's mail the MTA authenticated (Notices.within)."""
        owner, cap = self.sender, 5 * self.config.number("commands", "max_replies")
        if not self.notices.within(owner, f"owner {self.notices.origin} {self.list['id']}", cap,
                                   f"{cap} confirmations of changes to {self.post_address}",
                                   mailbox=owner.lower()):
            return self.notice([owner], f"{self.post_address}: not done", "done",
                               {"lines": "  Nothing was done: too many confirmations went to you today."},
                               done=f"owner changes by {owner} ignored: too many confirmations today")
        expiry = self.config.duration("commands", "confirm_expiry")
        token = add_pending(self.ctx.changes, self.list, owner, "owner-command", self.now, expiry,
                            command=json.dumps(self.actions))
        link = mailto(list_address(self.list, "-request"), f"confirm {token}")
        confirm = list_address(self.list, f"-confirm+{token}")
        self.notice([owner], f"confirm {token} ({len(self.actions)} change(s) to {self.post_address})",
                    "owner-confirm", {"actions": "\n".join("  " + describe_action(a) for a in self.actions),
                                      "link": link, "days": f"{expiry / 86400:g}"},
                    limit=False, reply_to=confirm, links=[("confirm", link)],
                    done=f"{len(self.actions)} changes wait for {owner}'s confirmation")

    def owner_confirmed(self, row):
        """The owner confirmed: carry out the stored actions; the answer says what was done."""
        try:
            actions = json.loads(row["command"] or "[]")
            assert isinstance(actions, list) and all(isinstance(a, dict) for a in actions)
        except (ValueError, AssertionError):
            actions = []
        lines = apply_owner_actions(self.store, self.config, self.list, self.notices, self.ctx.changes,
                                    actions, self.now, self.after_commit)
        self.done += [line.strip() for line in lines]
        self.notice([self.sender], f"{self.post_address}: done", "done",
                    {"lines": "\n".join(lines) or "  Nothing to do."})

    def owner_report(self, command):
        """who, held, pending, bounces, show: to the owner's own address at once (held: to a
        moderator's too); admin: the web admin's sign-in link (signin_link), to that address."""
        if not (self.is_owner or (command == "held" and self.is_moderator)):
            return self.not_owner(command)
        if command == "admin":              # the web admin's sign-in link, to the owner's own address
            link = signin_link(self.config, self.store.verp_key, self.list, self.sender)
            if not link:
                return self.notice([self.sender], f"{self.post_address}: admin", "admin-unavailable",
                                   done=f"admin for {self.sender}: no [web] base_url")
            minutes = f"{self.config.duration('web', 'link_max_age') / 60:g}"
            return self.notice([self.sender], f"{self.post_address}: sign in to the web admin", "admin-link",
                               {"address": self.sender, "link": link, "minutes": minutes},
                               done=f"admin: a sign-in link sent to {self.sender}")
        report, links = list_report(self.store, self.config, self.list, command, self.ctx.changes, self.now)
        self.notice([self.sender], f"{self.post_address}: {command}", "owner-report", {"report": report},
                    links=links, done=f"{command} sent to {self.sender}")


# ---------------------------------------------------------------------------
# 17. The queue chain
# Owns: the queue filters in chain order (read ... archive) and finish_queue.
# Calls: sections 2-16.
# ---------------------------------------------------------------------------

@chain_filter("message")
def read(ctx):
    """Read the message from ctx.stdin (unless ctx.raw is preset) and parse it; complete the
    envelope the command layer found (envelope_of) from the header: X-Original-To or Delivered-To
    for the recipient, Return-Path or an mbox From_ line for the sender.  Empty input, input with no
    header fields, or a message over [queue] max_size (filter mode: [filter] max_size) → reject.
    Reads stdin, raw (when preset), recipient, sender, envelope_recipients; writes raw, msg,
    recipient, sender, envelope_recipients, message_id."""
    if ctx.raw is None:
        limit = ctx.config.size(ctx.mode, "max_size")
        stream = ctx.stdin or sys.stdin.buffer
        ctx.raw = stream.read(limit + 1) if limit else stream.read()
        if limit and len(ctx.raw) > limit:
            raise Reject(f"message larger than the limit of {limit} bytes")
    raw = ctx.raw
    if not raw.strip():
        raise Reject("empty message")
    from_line = None
    if raw.startswith(b"From "):              # an mbox From_ line from local(8)/.forward
        nl = raw.find(b"\n")
        from_line, raw = raw[:nl if nl >= 0 else len(raw)], raw[nl + 1 if nl >= 0 else len(raw):]
        ctx.raw = raw
    msg = RawMessage(raw)
    if not msg.fields:
        raise Reject("not an RFC 5322 message: no header fields")
    if b"\0" in b"".join(msg.fields):
        raise Reject("not an RFC 5322 message: NUL byte in the header")
    ctx.msg = msg
    if not ctx.recipient:
        candidates = [msg.get("X-Original-To"), msg.get("Delivered-To")]
        ctx.recipient = next((c.strip() for c in candidates if c and c.strip()), None)
    if ctx.sender is None:
        candidates = [msg.get("Return-Path")]
        if from_line:
            words = from_line.split()
            candidates.append(words[1].decode("utf-8", "replace") if len(words) > 1 else None)
        ctx.sender = next((c for c in candidates if c is not None), None)
    if ctx.sender is not None:
        ctx.sender = ctx.sender.strip().strip("<>").strip()
        if ctx.sender.upper() == "MAILER-DAEMON":
            ctx.sender = ""
    ctx.message_id = (msg.get("Message-ID") or "").strip()
    if ctx.mode == "filter":
        if not ctx.envelope_recipients:
            ctx.envelope_recipients = [ctx.recipient] if ctx.recipient else []
        ctx.envelope_recipients = [r.strip().strip("<>") for r in ctx.envelope_recipients if r.strip("<> ")]
        ctx.recipient = ctx.envelope_recipients[0] if ctx.envelope_recipients else ctx.recipient
        ctx.note(f"{len(ctx.raw)} bytes, to {', '.join(ctx.envelope_recipients) or '(unknown)'},"
                 f" from {ctx.sender if ctx.sender is not None else '(unknown)'}")
        return
    if not ctx.recipient:
        raise Reject("no envelope recipient: use --recipient, or Postfix pipe flag O (X-Original-To)")
    ctx.recipient = ctx.recipient.strip().strip("<>")
    ctx.note(f"{len(ctx.raw)} bytes, to {ctx.recipient}, from "
             f"{ctx.sender if ctx.sender is not None else '(unknown)'}")


@chain_filter("message", needs=("read",))
def getinfo(ctx):
    """Find the list by its address LIST@DOMAIN or LIST-ROLE[+EXTENSION]@DOMAIN; unknown → 67.
    Reads recipient, store; writes list, role, verp, verp_proof, token."""
    local, at, domain = ctx.recipient.rpartition("@")
    if not at or not local:
        raise UnknownList(f"{ctx.recipient!r} is not a list address")
    row, role, extension = ctx.store.list_by_address(ctx.recipient), "post", None
    if row is None:
        m = ROLE_ADDRESS.fullmatch(local)
        if m:
            row = ctx.store.list_by_address(f"{m.group(1)}@{domain}")
            role, extension = ROLES[m.group(2).lower()], m.group(3)
    if row is None or (role == "confirm" and not extension) or \
            (extension and role not in ("bounces", "confirm", "leave")):
        raise UnknownList(f"no list at {ctx.recipient}")
    ctx.list, ctx.role = row, role
    if role == "bounces" and extension:
        ctx.verp, ctx.verp_proof = verp_decode(extension, row, ctx.store.verp_key)
    ctx.token = extension if role in ("confirm", "leave") else None
    ctx.note(f"list {list_address(row)}, {role}" + (f", VERP for {ctx.verp}" if ctx.verp else ""))


@chain_filter("message", needs=("getinfo",))
def loopdetect(ctx):
    """Discard a message that already went through this list (List-Id or X-Loop), that has more than
    [queue] max_received Received: fields, or that a robot sent to the post address (null sender,
    Auto-Submitted, multipart/report): answering robots is how mail loops start.
    Reads list, role, msg, sender; writes nothing (ends the chain: discard)."""
    list_id = f"<{ctx.list['name']}.{ctx.list['domain']}>".lower()
    if ctx.role == "post" and any(list_id in v.lower() for v in ctx.msg.get_all("List-Id")):
        raise Discard(f"loop: already carries List-Id {list_id}")
    ours = {list_address(ctx.list, suffix).lower() for suffix in ("", "-owner", "-request")}
    looped = [v.strip() for v in ctx.msg.get_all("X-Loop") if v.strip().lower() in ours]
    if looped and ctx.role != "bounces":
        raise Discard(f"loop: already carries X-Loop {looped[0]}")
    hops, limit = len(ctx.msg.get_all("Received")), int(ctx.config.number("queue", "max_received"))
    if hops > limit:
        raise Discard(f"loop: {hops} Received: fields (limit {limit})")
    robot = ctx.role == "post" and is_robot(ctx.msg, ctx.sender, strict=False)
    if robot:
        raise Discard(f"robot mail to the post address: {robot}")


@chain_filter("message", needs=("getinfo",))
def bouncehandler(ctx):
    """Consume mail to the bounce address and weigh it as evidence.  Only a signed address proves
    who bounced: a permanent failure reported to a member's signed VERP address (or to the probe
    address of one) counts for that member with the weight of its cause (bounce_cause), whatever the
    report names and whether or not it returns the post.  Any other report (plain LIST-bounces,
    unsigned or wrongly signed VERP) is a claim anyone could write: each member it names as failed
    is sent a probe (from probe_address, so that only its own bounce counts; a delivered probe costs
    the member nothing) and nothing else changes.  Feedback-loop reports (RFC 5965) go to
    feedback_report; an unrecognised report at a signed address is kept for the owners' daily
    summary.  Every report is recorded in ``bounces`` with why it counted or not.
    Reads role, list, raw, verp, verp_proof, outbox.dry_run; writes bounces, probes,
    members.bounce_score and probe notices in the store (ends the chain: consumed)."""
    if ctx.role != "bounces":
        return
    try:
        parsed = parse_report(ctx.raw)
    except RecursionError:
        raise Consumed("bounce address: a report nested too deeply to read; ignored")
    if parsed.get_content_type() == "multipart/report" and \
            str(parsed.get_param("report-type", "")).lower() == "feedback-report" or \
            any(p.get_content_type() == "message/feedback-report" for p in parsed.walk()):
        raise Consumed(feedback_report(ctx, parsed))
    reports = find_failures(parsed, [list_address(ctx.list, suffix) for suffix in LIST_SUFFIXES])
    message_ids = bounced_message_ids(parsed, ctx.raw.replace(b"\r\n", b"\n"))
    store, config, list_id, now = ctx.store, ctx.config, ctx.list["id"], time.time()
    proof = ctx.verp_proof                 # "verp", "probe" or "" (a claim)
    if proof:                               # rows: (address, source, result)
        failed = sorted((r for r in reports if r["action"] == "failed"), key=lambda r: -r["weight"])
        unrecognised = dict(_result("", "unrecognised", "", ""), cause="unrecognised", weight=0)
        rows = [(ctx.verp, proof, (failed or reports or [unrecognised])[0])]
    else:
        source, named = "unsigned" if ctx.verp else "plain", [r for r in reports if r["recipient"]]
        if ctx.verp and reports and \
                not any(normalize_address(r["recipient"]).lower() == ctx.verp.lower() for r in named):
            failed = [r for r in reports if r["action"] == "failed"]
            named.insert(0, dict((failed or reports)[0], recipient=ctx.verp))
        rows = [(r["recipient"], source, r) for r in named]
    notices = Notices(store, config, ctx.list, ctx.outbox)
    records, counted, raw_kept = ctx.outbox.changes, [], False
    interval = config.duration("bounces", "probe_interval")
    for address, source, r in rows[:100]:
        address = normalize_address(address)
        member = store.q("member_address", list_id, address).fetchone()
        member = member[0] if member else None
        raw = ctx.raw[:65536] if not raw_kept and (member or proof) else None
        raw_kept = raw_kept or raw is not None      # evidence kept once, cut, only about a member
        returned = delivered(store, list_id, address, message_ids) or ""
        why, weight = None, r["weight"]
        if r["action"] == "unrecognised":
            why = "unrecognised report: in the owners' daily summary"
        elif r["action"] != "failed":
            why = "an auto-reply" if r["action"] == "auto-reply" else \
                f"not a permanent failure (Action: {r['action'] or 'none'})"
        elif r["cause"] == "policy" and not config.flag("bounces", "count_policy_rejections"):
            why = policy_rejection(r["status"] or "5.7.0", address)
        elif r["cause"] == "rejected":
            why = "the list's sender address was refused: caused by the post, not the member"
        elif member is None:
            why = "not a member"
        elif not proof:
            why = "a claim anyone could write (no signed address); "
            last = store.q("probe_sent", list_id, member).fetchone()
            if last and now - last[0] < interval:
                days = (now - last[0]) / 86400
                ago = f"{days:.1f} days" if days >= 1 else f"{days * 24:.1f} hours"
                why += f"a probe was already sent {ago} ago"
            else:
                why += "probe sent"
                if not ctx.outbox.dry_run:      # from its own signed address: only its bounce counts
                    notices.send([member], f"A delivery check from {list_address(ctx.list)}", "probe",
                                 {"address": member}, limit=False,
                                 envelope=probe_address(ctx.list, store.verp_key, member))
                    records.append(lambda db, m=member: db.execute(SQL["probe_done"], (list_id, m, now)))
        if r["cause"] == "policy" and why is None:
            weight = 1                          # [bounces] count_policy_rejections
        if not returned and proof and why is None:
            last_post = store.q("last_delivered", list_id, member).fetchone()
            returned = last_post[0] if last_post else ""
        row = bounce_record(list_id, member or address, source, received=now, action=r["action"],
                            status=r["status"], diagnostic=r["diagnostic"][:1000],
                            reporting_mta=r["reporting_mta"], why=why or "", message_id=returned, raw=raw,
                            cause=r["cause"], weight=weight)
        if why is None and ctx.outbox.dry_run:
            row["why"] = f"would be scored ({weight:g})"
            counted.append(f"{member} (would be scored)")
        elif why is None:
            def count(db, row=row, member=member, weight=weight):
                counted_now, row["why"] = score_bounce(db, config, list_id, member, now, weight)
                row["counted"] = int(counted_now)
            records.append(count)
            counted.append(f"{member} (weight {weight:g})")
        records.append(lambda db, row=row: db.execute(SQL["add_bounce"], row))
    if not rows:
        raise Consumed("bounce address: no recipient found in the report; ignored")
    if not ctx.outbox.dry_run:
        ctx.outbox.commit(store, config.spool)
    raise Consumed(f"{rows[0][1]} bounce for {', '.join(str(r[0]) for r in rows[:5])}"
                   f"{' …' if len(rows) > 5 else ''}; scored: {', '.join(counted) or 'none'}")


def feedback_report(ctx, parsed):
    """A feedback-loop report (RFC 5965 ARF: a member pressed "this is spam").  The member is known
    only from a signed VERP address: the one the report was sent to, or the one the returned message
    carries in Return-Path (its envelope sender).  For an identified member [bounces]
    feedback_action applies (unsubscribe with a goodbye that says why, or disable, or none) and the
    owners are told; anything else is recorded only.  Returns the line for the log."""
    store, config, list_row = ctx.store, ctx.config, ctx.list
    fields = {}
    for part in parsed.walk():
        if part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            text = payload if isinstance(payload, str) else "\n".join(map(str, payload))
            for block in dsn_blocks(text, 5):
                fields.update(block)
    member, proof = (ctx.verp, ctx.verp_proof) if ctx.verp_proof else (None, "")
    if not member:
        returned = re.findall(r"(?im)^(?:return-path|x-envelope-from|errors-to):[ \t]*<?([^>\s]+)>?",
                              next(returned_headers(parsed), ""))
        for address in returned[:5]:
            local, _, domain = address.rpartition("@")
            m = ROLE_ADDRESS.fullmatch(local)
            if m and m.group(2).lower() == "bounces" and m.group(3) and \
                    f"{m.group(1)}@{domain}".lower() == list_address(list_row).lower():
                member, proof = verp_decode(m.group(3), list_row, store.verp_key)
                if proof:
                    break
                member = None
    kind = one_line(fields.get("feedback-type", "abuse"), 40) or "abuse"
    reporter = one_line(fields.get("user-agent", "") or fields.get("reporting-mta", ""), 200)
    member = store.q("member_address", list_row["id"], member).fetchone() if proof and member else None
    member = member[0] if member else None
    action = config.get("bounces", "feedback_action") if member else "none"
    why = (f"feedback report ({kind}) identified by a signed address: {action}" if member
           else "feedback report that no signed address identifies: recorded only")
    now = time.time()
    row = bounce_record(list_row["id"], member or "", "feedback", received=now, action=kind, why=why,
                        diagnostic=reporter, raw=ctx.raw[:65536] if member else None, cause="feedback")
    if ctx.outbox.dry_run:
        return f"{why} (dry run)"
    notices, changes = Notices(store, config, list_row, ctx.outbox), ctx.outbox.changes
    if member and action == "unsubscribe":
        changes.append(lambda db: db.execute(SQL["delete_member"], (list_row["id"], member)))
        notices.send([member], f"Goodbye from {list_address(list_row)}", "feedback-goodbye",
                     {"address": member}, limit=False)
    elif member and action == "disable":
        changes.append(lambda db: db.execute(SQL["disable_member"], (now, list_row["id"], member)))
    if member and owners_of(list_row):
        notices.send(owners_of(list_row), f"{list_address(list_row)}: {member} reported a post as spam",
                     "feedback-owner", {"address": member, "kind": kind, "action": action,
                                        "reporter": reporter or "unknown"}, limit=False, sender="-owner")
    ctx.outbox.commit(store, config.spool, lambda db: db.execute(SQL["add_bounce"], row))
    return f"{why}: {member or 'unknown member'}"


@chain_filter("message", needs=("getinfo",))
def commands(ctx):
    """Act on mail to LIST-request (commands in the Subject or first body lines), -join
    (-subscribe), -leave (-unsubscribe) and -confirm+TOKEN (see Requests), then end the chain:
    consumed.  Robots are never answered (RFC 3834).
    Reads role, token, msg, raw, sender; writes changes and outbox (committed here, together) and
    approve_held (held posts a moderator approved by email: finish_queue releases them)."""
    if ctx.role not in ("request", "join", "leave", "confirm"):
        return
    robot = is_robot(ctx.msg, ctx.sender)
    if robot:
        raise Discard(f"robot mail to {ctx.recipient}: {robot}")
    sender = sender_address(ctx)
    if sender is None:
        raise Discard(f"mail to {ctx.recipient} with no address to answer")
    lines = command_lines(ctx.raw)
    req, token = Requests(ctx, sender, lines), (ctx.token or "").lower()
    {"join": lambda: req.subscribe(sender),
     "leave": lambda: req.leave_by_token(token) if token else req.unsubscribe(sender),
     "confirm": lambda: req.confirm(token)}.get(ctx.role, lambda: req.run(lines))()
    ctx.outbox.commit(ctx.store, ctx.config.spool, ctx.apply_changes)
    ctx.approve_held = req.approve_held
    for after in req.after_commit if not ctx.outbox.dry_run else ():    # committed: never a retry
        try:
            after()
        except Exception as e:
            log.error("after %s: %s: %s", ctx.describe(), type(e).__name__, e)
    raise Consumed("; ".join(req.done) or "nothing to do")


@chain_filter("message", needs=("getinfo",))
def ownermail(ctx):
    """Forward mail for LIST-owner to the owners only, with X-Loop so that it cannot come back.
    Reads role, list, msg, message_id; writes msg (X-Loop) and outbox, committed here (consumed)."""
    if ctx.role != "owner":
        return
    owners = owners_of(ctx.list)
    if not owners:
        raise Discard("mail to the owner address, but the list has no owners")
    ctx.msg.remove("Return-Path", "Delivered-To", "X-Original-To")
    ctx.msg.append("X-Loop", list_address(ctx.list, "-owner"))
    ctx.outbox.add(ctx.list["id"], "owner", ctx.message_id or "<no-message-id>", bytes(ctx.msg), owners)
    ctx.outbox.commit(ctx.store, ctx.config.spool)
    raise Consumed(f"forwarded to the owners: {', '.join(owners)}")


@chain_filter("message", needs=("getinfo",))
def getsubscribers(ctx):
    """Load the list's members (all, with status), the recipients (the enabled ones that take single
    posts) and how many enabled members take digests instead.  The sender's own membership (From:,
    else the envelope sender) is the poster, who with notmetoo is not a recipient.
    Reads role, list, store, msg, sender; writes members, poster, recipients, digest_members."""
    if ctx.role != "post":      # never distribute command or owner mail, whatever the chain
        raise Discard(f"mail to the {ctx.role} address and no filter in the chain handles it")
    counts = {(status, digest): n for status, digest, n in ctx.store.q("audience", ctx.list["id"])}
    total, single = sum(counts.values()), counts.get(("enabled", 0), 0)
    ctx.digest_members = counts.get(("enabled", 1), 0)
    ctx.members = MemberLookup(ctx.store, ctx.list["id"])
    senders = addresses_in(ctx.msg.get_all("From")) + ([normalize_address(ctx.sender)] if ctx.sender else [])
    ctx.poster = next((row for row in (ctx.store.q("member_options", ctx.list["id"], a).fetchone()
                                       for a in senders[:3]) if row), None)
    skip = ctx.poster["address"] if ctx.poster and ctx.poster["notmetoo"] else ""
    if skip and ctx.poster["status"] == "enabled" and not ctx.poster["digest"]:
        single -= 1
        ctx.note(f"{skip} asked for no copy of their own posts (notmetoo)")
    ctx.recipients = ListMembers(ctx.store, ctx.list["id"], single, skip)
    ctx.note(f"{single} enabled of {total} members"
             + (f", {ctx.digest_members} more get digests" if ctx.digest_members else ""))


@chain_filter("message", needs=("getsubscribers",))
def access(ctx):
    """Decide whether the sender may post, by the list's access mode: open; subscribers (From,
    Sender or envelope sender is a member, or in the list's acl); acl (an address or *@domain pattern
    in the list's acl);
    passphrase (an Approved: header or first body line matches); moderated (everything is held).  A
    sender on the list's ban list is discarded first, whatever else; a correct passphrase always
    approves; Approved: is always stripped, so the passphrase never leaks.  Someone the mode does
    not let post: the list's nonmember_action (nonmember); other failures → hold.  Whatever the
    mode, a moderator decides on every post while the list's emergency is on, and on a post over the
    list's max_size, whose From: display name is another address (impersonation), that came through
    a list subscribed to this one (two lists feeding each other loop), of a member whose option
    moderate is on, or past the poster's max_posts_per_day.
    Reads list, msg, sender, members, poster, approved, accepted; writes msg, approved."""
    passphrase = take_approved(ctx)
    if passphrase and passphrase_left(ctx.msg, passphrase):
        raise Hold("an Approved: passphrase is left in a part redsky cannot edit; not distributed")
    senders = addresses_in(ctx.msg.get_all("From") + ctx.msg.get_all("Sender")) \
        + ([normalize_address(ctx.sender)] if ctx.sender else [])
    ban = banned(ctx.store, ctx.list, senders)
    if ban:
        raise Discard(f"{ban} is on the list's ban list")
    stored = ctx.list["passphrase_hash"]
    if passphrase is not None and stored and check_passphrase(passphrase, stored):
        ctx.approved = True
        ctx.note("approved by passphrase")
    if ctx.approved:
        return
    if ctx.list["emergency"]:
        raise Hold("the list is in emergency moderation: every post is held")
    if ctx.list["max_size"] and len(ctx.raw) > ctx.list["max_size"] * 1024:
        raise Hold(f"the post is {len(ctx.raw) // 1024} KB, over the list's max_size of"
                   f" {ctx.list['max_size']} KB")
    if ctx.accepted:
        ctx.note(f"whitelisted: {ctx.accepted}")
        return
    suspicious = display_name_spoof(ctx.msg) or subscribed_list(ctx)
    if suspicious:
        raise Hold(suspicious)
    if ctx.poster and ctx.poster["moderate"]:
        raise Hold(f"the moderators review every post of {ctx.poster['address']} (member option moderate)")
    mode, shown = ctx.list["access"], senders[0] if senders else "(no sender)"
    if mode == "passphrase":
        raise Hold("missing or wrong passphrase" if passphrase is not None or stored else "no passphrase set")
    if mode == "moderated":
        raise Hold("the list is moderated")
    acl = lambda: [r["pattern"] for r in ctx.store.q("acl", ctx.list["id"])]     # noqa: E731
    if mode == "subscribers" and not any(s.lower() in ctx.members for s in senders) \
            and not any(acl_allows(acl(), s) for s in senders):     # whom a moderator always accepts
        nonmember(ctx, shown, f"{shown} is not a member of the list")
    elif mode == "acl" and not any(acl_allows(acl(), s) for s in senders):
        nonmember(ctx, shown, f"{shown} is not in the list's acl")
    limit, poster = ctx.list["max_posts_per_day"], ctx.poster["address"] if ctx.poster else shown
    if limit and ctx.store.q("posts_by", ctx.list["id"], poster, time.time() - 86400).fetchone()[0] >= limit:
        raise Hold(f"{poster} already posted {limit} times in the last 24 hours (max_posts_per_day)")


def nonmember(ctx, shown, why):
    """A post from someone the access mode does not let post, by the list's nonmember_action: hold
    (for the moderators), reject (dropped, and the sender told why, as [commands] notify_rejected
    and the reply limit allow; never a robot), discard (dropped silently), accept."""
    action = ctx.list["nonmember_action"]
    if action == "accept":
        ctx.note(f"{why}; accepted (nonmember_action accept)")
        return
    if action == "hold":
        raise Hold(why)
    told = ""
    if action == "reject" and ctx.config.flag("commands", "notify_rejected") and valid_address(shown) \
            and not is_robot(ctx.msg, ctx.sender):
        outbox = Outbox(ctx.outbox.dry_run)
        subject = one_line(decode_header_text(ctx.msg.get("Subject", "")), 200) or "(no subject)"
        sent = Notices(ctx.store, ctx.config, ctx.list, outbox, ctx.message_id).send(
            [shown], f"{list_address(ctx.list)}: your post was not distributed", "rejected-post",
            {"subject": subject, "reason": f"{why}; only members may post"})
        if outbox.items or outbox.changes:      # the notice, or what its allowance counts
            outbox.commit(ctx.store, ctx.config.spool)
        told = ", sender told" if sent else ""
    raise Discard(f"{why} (nonmember_action {action}{told})")


def display_name_spoof(msg):
    """Why a From: display name impersonates someone, or None: the name is itself an address other
    than the mailbox's (a mail reader shows the name; the mailbox is who it is)."""
    for name, address in mailboxes(msg.get_all("From")):
        shown = _ADDRESS.search(decode_header_text(name))
        if shown and normalize_address(shown.group(0)).lower() != address.lower():
            return f"From: shows {shown.group(0)} as its name, but the mailbox is {address}"
    return None


def subscribed_list(ctx):
    """Why this post must not go on unmoderated because it is another list's copy and that list is a
    member here (its List-Post address, or the address its List-Id names), or None."""
    named = [a for v in ctx.msg.get_all("List-Post") for a in re.findall(r"<mailto:([^<>?\s]+)", v)]
    ids = [m.group(1) for m in map(re.compile(r"<([^<>\s]+)>").search, ctx.msg.get_all("List-Id")) if m]
    named += [i.replace(".", "@", 1) for i in ids if "." in i]        # <LIST.DOMAIN>: LIST@DOMAIN
    member = next((a for a in named if a.lower() in ctx.members), None)
    return f"came through the list {member}, which is subscribed to this one" if member else None


@chain_filter("message", needs=("getinfo",))
def dmarc(ctx):
    """Keep posts from DMARC-protected domains deliverable (RFC 7489): when the author's domain
    publishes p=reject or p=quarantine (looked up in DNS and cached, at the domain, then its
    organisational domain by the Public Suffix List; or the list says dmarc = always, or its
    dmarc_addresses name the author), apply the list's dmarc_action: munge_from or wrap_message.
    dmarc = never turns it off.  A failed lookup never blocks a post: [dmarc] fallback applies.
    Reads list, msg, store (DNS cache); writes msg (From: rewritten, or wrapped), author_from."""
    setting, action = ctx.list["dmarc"], ctx.list["dmarc_action"]
    authors = addresses_in(ctx.msg.get_all("From"))
    if setting == "never" or not authors:
        return
    author, listed = authors[0], [p.strip() for p in ctx.list["dmarc_addresses"].split(",") if p.strip()]
    if setting == "auto" and matches_any(listed, [author]):      # patterns as banned()
        ctx.note(f"{author} is in the list's dmarc_addresses")
    elif setting == "auto":
        try:
            policy = dmarc_policy(ctx.store, ctx.config, author.rpartition("@")[2])
        except (OSError, ValueError, IndexError) as e:
            action = ctx.config.get("dmarc", "fallback")
            log.warning("DMARC lookup for %s failed (%s): fallback %s", author, e, action)
            ctx.note(f"DMARC lookup failed ({e}); fallback {action}")
            if action not in ("munge_from", "wrap_message"):
                return
        else:
            if policy not in ("reject", "quarantine"):
                ctx.note(f"{author.rpartition('@')[2]}: "
                         + (f"DMARC p={policy}" if policy else "no DMARC record") + ", nothing to do")
                return
    ctx.author_from = ctx.msg.raw_value("From")
    (munge_from if action == "munge_from" else wrap_message)(ctx.msg, ctx.list, author)
    ctx.note(f"{action} for {author}")


@chain_filter("message", needs=("getinfo",))
def subjecttag(ctx):
    """Prefix the list's subject tag once; RFC 2047 subjects keep their encoding; a missing subject
    becomes "[tag] (no subject)".  A tag with %d gets the list's next post number
    (lists.post_number, taken in a transaction of its own, so never given out twice); the numbered
    tag of an earlier post (a reply) is removed first. Reads list, msg; writes msg (Subject)."""
    tag = ctx.list["subject_tag"]
    if "%d" in tag:
        number = ctx.store.q("post_number", ctx.list["id"]).fetchone()[0] + 1
        if not ctx.outbox.dry_run:      # taken at once: a post that fails later leaves a gap, never a repeat
            with ctx.store.transaction() as db:
                db.execute(SQL["take_post_number"], (ctx.list["id"],))
                number = db.execute(SQL["post_number"], (ctx.list["id"],)).fetchone()[0]
        with_subject_tag(ctx.msg, tag.replace("%d", str(number)), re.escape(tag).replace("%d", r"\d+"))
        ctx.note(f"tagged, post number {number}")
    elif tag:
        ctx.note("tagged" if with_subject_tag(ctx.msg, tag) else "already tagged")


@chain_filter("message", needs=("getinfo",))
def contentfilter(ctx):
    """With the list's filter_content on, remove the parts its rules do not want, as Mailman's
    content filter: a part whose MIME type is in filter_types or whose file name ends in one of
    filter_extensions, and, when pass_types / pass_extensions are set, every part they do not name;
    multipart/alternative becomes its text/plain part (else its first) with collapse_alternatives;
    text/html becomes text/plain with convert_html_to_plaintext.  A post left with nothing is held
    with what was removed.  Signed and encrypted parts (multipart/signed, multipart/encrypted) are
    never altered: a post that is one passes whole or is held, by signed_posts.  Header fields other
    than Content-* keep their bytes; a post nothing is removed from is left as it was. Reads list,
    msg; writes msg (body and Content-* fields)."""
    row = ctx.list
    if not row["filter_content"]:
        return
    import email
    from email import policy
    top = ctx.msg.header_message().get_content_type()
    if top in ("multipart/signed", "multipart/encrypted"):
        if row["signed_posts"] == "hold":
            raise Hold(f"a {top} post, which the content filter must not alter (signed_posts hold)")
        ctx.note(f"{top}: passed whole")
        return
    rules = {k: row[k].split() for k in CONTENT_LISTS}
    changes = []
    try:
        parsed = email.message_from_bytes(bytes(ctx.msg), policy=policy.compat32)
        kept = _filter_part(parsed, rules, row, changes)
        if not changes:
            return
        if kept is None:
            removed = one_line("; ".join(changes), 300)
            raise Hold(f"nothing is left after content filtering (removed: {removed})")
        new = RawMessage(kept.as_bytes())
    except RecursionError:
        raise Hold("nested too deeply for the content filter")
    msg = ctx.msg
    msg.fields = ([f for f in msg.fields if not msg.name_of(f).startswith("content-")]
                  + [re.sub(rb"\r?\n", msg.eol, f) for f in new.fields
                     if new.name_of(f).startswith("content-")])
    msg.separator, msg.body = msg.eol, re.sub(rb"\r?\n", msg.eol, new.body)
    ctx.note("content filter: " + one_line("; ".join(changes), 300))


def _filter_part(part, rules, row, changes):
    """``part`` (email.message.Message) with what the content rules remove taken out, or None when
    nothing of it is left; ``changes`` gets a line per change."""
    ctype = part.get_content_type()
    if ctype in ("multipart/signed", "multipart/encrypted"):
        return part
    if part.is_multipart():
        children = part.get_payload()
        if ctype == "multipart/alternative" and row["collapse_alternatives"] and children:
            chosen = next(message_leaves(part, 1))
            changes.append(f"multipart/alternative collapsed to its {chosen.get_content_type()} part")
            return _filter_part(chosen, rules, row, changes)
        kept = [c for c in (_filter_part(c, rules, row, changes) for c in children) if c is not None]
        if not kept:
            return None
        part.set_payload(kept)
        return part
    name = part.get_filename() or ""
    extension = name.rpartition(".")[2].lower() if "." in name else ""
    maintype = ctype.partition("/")[0]
    named = lambda patterns: any(p in (ctype, maintype, f"{maintype}/*") for p in patterns)
    if named(rules["filter_types"]) or (rules["pass_types"] and not named(rules["pass_types"])) \
            or (extension and extension in rules["filter_extensions"]) \
            or (rules["pass_extensions"] and extension not in rules["pass_extensions"] and name):
        changes.append(f"removed {ctype}" + (f" {one_line(name, 60)!r}" if name else ""))
        return None
    if ctype == "text/html" and row["convert_html_to_plaintext"]:
        html = payload_text(part)
        for field in ("Content-Type", "Content-Transfer-Encoding"):
            del part[field]
        part.set_payload(html_text(html), "utf-8")
        changes.append("text/html converted to text/plain")
    return part


@chain_filter("message", needs=("getinfo",))
def replyto(ctx):
    """Reply-To by the list's reply_to: none leaves the post as sent; list or an address is added to
    the poster's own Reply-To (RFC 5322 3.6.2 allows several addresses), or replaces it when
    reply_to_strip is on (which also works with none).  Runs before dmarc, so that a munged From:
    keeps the author reachable only when no Reply-To was set here.
    Reads list, msg; writes msg (Reply-To)."""
    target = {"none": "", "list": list_address(ctx.list)}.get(ctx.list["reply_to"], ctx.list["reply_to"])
    own = ctx.msg.raw_value("Reply-To")
    if ctx.list["reply_to_strip"] and own is not None:
        ctx.msg.remove("Reply-To")
        ctx.note("the poster's Reply-To removed")
        own = None
    named = {a.lower() for a in addresses_in(ctx.msg.get_all("Reply-To"))} if own is not None else set()
    if not target or target.lower() in named:
        return
    ctx.msg.remove("Reply-To")
    ctx.msg.replace_raw("Reply-To", (own + b", " if own else b"") + f"<{target}>".encode())
    ctx.note(f"Reply-To: {target}" + (" added to the poster's" if own else ""))


@chain_filter("message", needs=("getinfo",))
def addfooter(ctx):
    """Add the list's footer (footer_text fills its placeholders), MIME-correctly (add_footer).
    Reads list, msg; writes msg (body)."""
    if ctx.list["footer"]:
        ctx.note("footer " + add_footer(ctx.msg, footer_text(ctx.list, ctx.store.verp_key)))


@chain_filter("message", needs=("getsubscribers",))
def queuer(ctx):
    """Store the post: the final message in a spool file (atomic), then its messages row (no row per
    member: ListMembers) in one transaction. Only after the commit is the post accepted; any failure
    → try later (75) with nothing half-written left behind.  Notices other filters left in
    ctx.outbox go in the same transaction.  When members take digests, the post is also kept for the
    next digest (digest_posts), in that same transaction; a list with only digest members queues no
    single copies. A poster with the member option ack gets a short note, in the same transaction. A
    post this list queued within [queue] duplicate_window (same Message-ID, or same bytes without
    one) is dropped: the MTA retried a delivery whose success it never heard of. Reads list, msg,
    message_id, raw, recipients, digest_members, poster, author_from, changes, outbox; writes msg
    (list headers), message_id, distributed, committed; the post in the spool and the store."""
    now = time.time()
    key = ctx.message_id.lower()
    if not key:
        import hashlib
        key = "sha256:" + hashlib.sha256(ctx.raw).hexdigest()
    seen = ctx.store.q("recent_post", ctx.list["id"], key,
                       now - ctx.config.duration("queue", "duplicate_window")).fetchone()
    if seen:
        raise Discard(f"already queued {int((now - seen[0]) // 60)} min ago: a repeat, not queued again")
    data = ctx.distributed = finish_post(ctx)
    if not ctx.recipients and not ctx.digest_members:
        raise Discard("the list has no enabled members" if not ctx.recipients.poster else
                      "the only enabled member is the poster, who asked for no copy (notmetoo)")
    poster = ctx.poster["address"] if ctx.poster else next(iter(addresses_in(ctx.msg.get_all("From"))),
                                                                normalize_address(ctx.sender or ""))
    ctx.changes.append(lambda db: db.execute(SQL["add_recent_post"], (ctx.list["id"], key, now, poster)))
    if ctx.digest_members:                      # kept for the next digest, in the same transaction
        row = (ctx.list["id"], time.time(), kept_form(ctx, data))
        ctx.changes.append(lambda db: db.execute(SQL["add_digest_post"], row))
    ctx.outbox.add(ctx.list["id"], "post", ctx.message_id, data, ctx.recipients)
    if ctx.poster and ctx.poster["ack"]:
        Notices(ctx.store, ctx.config, ctx.list, ctx.outbox, ctx.message_id).send(
            [ctx.poster["address"]], f"{list_address(ctx.list)}: your post was accepted", "ack",
            {"subject": one_line(decode_header_text(ctx.msg.get("Subject", "")), 200) or "(no subject)"})
    ctx.outbox.commit(ctx.store, ctx.config.spool, ctx.apply_changes)
    ctx.committed = not ctx.outbox.dry_run
    ctx.note(f"queued for {len(ctx.recipients)} recipients"
             + (f" and the next digest ({ctx.digest_members} members)" if ctx.digest_members else ""))


def finish_post(ctx):
    """Give the post its distributed form: list headers replaced, trace headers of the incoming hop
    removed, a Message-ID and a Date (RFC 5322 3.6 requires one) if it had none."""
    msg = ctx.msg
    msg.remove(*REPLACED_HEADERS)
    if not ctx.message_id:
        ctx.message_id = new_message_id(ctx.list["domain"])
        msg.append("Message-ID", ctx.message_id)
    if not msg.get("Date", "").strip():
        msg.remove("Date")
        msg.append("Date", date_field())
    base_url = ctx.config.get("web", "base_url")
    for name, value in list_headers(ctx.list, base_url):
        msg.append(name, value)
    # the ID the archive keeps it by (archive): its Message-ID as message_id_of reads it, else (none
    # readable, or one a post archived before has: msgid/ stays that post's) one made here
    named = message_id_of(msg)
    if not named or first_archived(ctx.store, ctx.list, named) is not None:
        named = ctx.archive_id = new_message_id(ctx.list["domain"])
    if base_url and ctx.list["archive"] == "public" and not archive_refused(msg) \
            and "archive" in ctx.config.get("queue", "filters").split():
        msg.append("Archived-At", archived_at(base_url, ctx.list, named))
    return bytes(msg)


def kept_form(ctx, data):
    """The post as the archive and digests keep it: the author's own From:
    (a DMARC rewrite is for the copies sent only) and the footer's personal
    placeholders filled with the generic values (impersonal)."""
    data = impersonal(data, ctx.list, ctx.store.verp_key)
    if ctx.author_from is None:
        return data
    msg = RawMessage(data)
    msg.replace_raw("From", ctx.author_from)
    return bytes(msg)


@chain_filter("message", needs=("queuer",))
def archive(ctx):
    """Keep the post, as distributed, in the list's archive ([archive] format and dir) under its
    permanent number (archive_post) unless its archive is off or the post asks not to be kept
    (X-No-Archive, X-Archive: no, Archive: no: delivered, kept nowhere), and in a public archive's
    web pages and search (publish_post).  The post is already accepted when this runs: a failure
    is logged and the post goes out unarchived, not held back.
    Reads list, msg, distributed, author_from, sender, outbox.dry_run; writes the archive and pages."""
    if ctx.list["archive"] == "off" or ctx.outbox.dry_run or ctx.distributed is None:
        return
    why = archive_refused(ctx.msg)
    if why:
        ctx.note(f"not archived: the post asks so ({why})")
        return
    kept = kept_form(ctx, ctx.distributed)
    public = ctx.list["archive"] == "public"
    try:
        published = published_copy(kept) if public else None
        row = archive_post(ctx.config, ctx.store, ctx.list, kept, ctx.sender, published=published,
                           message_id=ctx.archive_id)
    except (OSError, ValueError, StoreError) as e:
        log.error("cannot archive %s: %s", ctx.describe(), e)
        ctx.note(f"not archived: {e}")
        return
    ctx.note(f"archived as post {row['number']}" + (f" ({row['location']})" if row["location"] else ""))
    if public:
        try:
            ctx.note(f"web page {publish_post(ctx.config, ctx.store, ctx.list, row, kept, published)}.html")
        except Exception as e:         # the post is queued and archived: the pages can be made again
            log.error("cannot write the archive page of %s: %s (run: redsky.py archive html %s)",
                      ctx.describe(), e, list_address(ctx.list), exc_info=not isinstance(e, OSError))
            ctx.note(f"no web page: {e}")


# ---------------------------------------------------------------------------
# 18. The content-filter chain
# Owns: out, whitelist, dnsbl, autoreply, quarantine.
# Calls: sections 2-17.
# ---------------------------------------------------------------------------

# `redsky.py filter` runs [filter] filters as a stdin -> stdout content filter (proxsmtpd's
# FilterCommand, or a Postfix content_filter pipe that puts the output back with sendmail).
@chain_filter("message", needs=("read",))
def out(ctx):
    """Write the message to stdout in one write: the last filter of the content-filter chain.  A
    write that fails → try later (75), and the MTA ignores the partial output of a failed run.
    Reads msg, stdout; writes stdout."""
    data, stream = bytes(ctx.msg), ctx.stdout or sys.stdout.buffer
    try:
        stream.write(data)
        stream.flush()
    except OSError as e:
        raise TryLater(f"cannot write the message to stdout: {e.strerror}")
    ctx.note(f"{len(data)} bytes written")


@chain_filter("message", needs=("read",))
def whitelist(ctx):
    """A sender in [whitelist] senders (or its file) is trusted: Accept, so the checks after this
    filter (dnsbl; access lets the post through) are skipped.  The envelope sender is what counts,
    or From when the MTA did not say; the null sender never matches.  Both can be forged: list only
    senders whose mail your MTA authenticates (SPF/DKIM) or relays.
    Reads sender, msg; writes nothing (Accept sets accepted)."""
    patterns = address_patterns(ctx.config, "whitelist")
    if not patterns or ctx.sender == "":
        return
    for address in [ctx.sender] if ctx.sender else addresses_in(ctx.msg.get_all("From"))[:1]:
        match = next((p for p in patterns if address_matches(address, p)), None)
        if match:
            raise Accept(f"{address} matches {match}")
    ctx.note("sender not whitelisted")


def address_patterns(config, section):
    """The patterns of ``[section] senders`` plus those in its ``file``."""
    patterns = config.get(section, "senders").replace(",", " ").split()
    path = config.path_of(section, "file")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                patterns += [w for line in fh for w in line.split("#", 1)[0].split()]
        except OSError as e:
            raise ConfigError(f"[{section}] file {path}: {e.strerror}")
    return patterns


def address_matches(address, pattern):
    """alice@example.org, example.org or @example.org (that domain),
    *.example.org (its subdomains), or a pattern with * and ?."""
    from fnmatch import fnmatchcase
    address, pattern = address.lower(), pattern.lower()
    domain = address.rpartition("@")[2]
    if "@" not in pattern.lstrip("@") and "*" not in pattern.lstrip("*."):
        if pattern.startswith("*."):
            return domain.endswith(pattern[1:])
        return domain == pattern.lstrip("@")
    return fnmatchcase(address, pattern)


@chain_filter("message", needs=("read",), check=True)
def dnsbl(ctx):
    """Look the client's IP (client_ip) up in each of [dnsbl] zones; when one lists it, [dnsbl]
    action: reject (65, "550 5.7.1 ... listed"), tag (an X-Redsky-DNSBL: header, the message goes
    on) or hold.  A lookup that fails or times out never blocks mail: that zone is skipped.
    Reads client_address, msg, store (DNS cache); writes msg (X-Redsky-DNSBL, with action tag)."""
    zones = ctx.config.get("dnsbl", "zones").replace(",", " ").split()
    if not zones:
        return
    ip = client_ip(ctx)
    if ip is None:
        ctx.note("no untrusted client address to check")
        return
    for zone in zones:
        try:
            answer = dnsbl_lookup(ctx.store, ctx.config, dnsbl_name(ip, zone))
        except (OSError, ValueError, IndexError) as e:
            log.warning("DNSBL %s: lookup of %s failed (%s); not blocking", zone, ip, e)
            ctx.note(f"{zone}: lookup failed ({e})")
            continue
        if answer:
            reason = f"client {ip} is listed in {zone} ({answer})"
            verdict = {"reject": Reject, "hold": Hold}.get(ctx.config.get("dnsbl", "action"))
            if verdict:
                raise verdict(reason)
            ctx.msg.append("X-Redsky-DNSBL", f"{ip} listed in {zone} ({answer})")
            ctx.note(f"tagged: {reason}")
            return
    ctx.note(f"{ip} not listed in {', '.join(zones)}")


def relay_ip(field):
    """The address of the host that sent one Received: hop, as the receiving MTA recorded it (RFC
    5321 4.4 leaves the form to it): in a comment after "from" — Postfix and sendmail "(rdns [IP])",
    Exim "([IP] helo=...)", qmail and Exchange "(IP)" — else Exim's "from [IP] (helo=...)"; never
    the sender's HELO, its own choice.  None when the hop names no address."""
    head = re.split(r"\bby\b", " ".join(field.split()), maxsplit=1)[0]
    for comment in re.findall(r"\(([^()]*)\)", head):
        if re.match(r"\s*(HELO|EHLO)\b", comment, re.IGNORECASE):
            continue                            # qmail's "(HELO name)": the client's own claim
        m = re.search(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]", comment) or \
            re.fullmatch(r"\s*(?:\S+\s+)?(\d{1,3}(?:\.\d{1,3}){3})\s*", comment)
        if m:
            return m.group(1)
    m = re.match(r"\s*from\s+\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]", head, re.IGNORECASE)
    return m.group(1) if m else None


def client_ip(ctx):
    """The address of the client that handed the message to our MTAs: the MTA's own word
    (--client-address, $CLIENT_ADDRESS, proxsmtpd's $REMOTE/$CLIENT) unless it is a trusted address,
    else the first untrusted relay found walking the Received: fields from the top (ours) down,
    stopping at a hop that names no readable address.  Loopback, private and link-local addresses
    and [dnsbl] trusted_networks are trusted."""
    import ipaddress
    trusted = []
    for net in ctx.config.get("dnsbl", "trusted_networks").replace(",", " ").split():
        try:
            trusted.append(ipaddress.ip_network(net, strict=False))
        except ValueError:
            raise ConfigError(f"[dnsbl] trusted_networks: {net!r} is not a network")

    def address(text):
        try:
            return ipaddress.ip_address((text or "").strip().strip("[]"))
        except ValueError:
            return None

    def is_trusted(ip):
        return ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_unspecified \
            or any(ip in net for net in trusted if net.version == ip.version)
    given = address(ctx.client_address)
    if given is not None and not is_trusted(given):
        return given
    for field in ctx.msg.get_all("Received"):
        ip = address(relay_ip(field))
        if ip is None:
            return None                         # a hop we cannot read: stop rather than guess
        if not is_trusted(ip):
            return ip
    return None


@chain_filter("message", needs=("read",))
def autoreply(ctx):
    """A vacation responder by RFC 3834: for each address of [autoreply] addresses that received
    this message (an envelope recipient, when known, named in To or Cc), answer the envelope sender
    once per [autoreply] interval, never a robot, a list, a bounce or the null sender.  The reply
    (autoreply_message), from the null sender, goes at once through [send] transport (send_now).
    The message itself always goes on: a reply that cannot be sent is logged, and tried next time.
    Reads envelope_recipients or recipient, sender, msg, message_id, store; writes the reply log."""
    addresses = [a.strip() for a in ctx.config.get("autoreply", "addresses").split(",") if a.strip()]
    envelope = {r.lower() for r in ctx.envelope_recipients or ([ctx.recipient] if ctx.recipient else [])}
    for address in addresses:
        if envelope and address.lower() not in envelope:
            continue
        why_not = autoreply_refusal(ctx, address)
        if why_not:
            ctx.note(f"no reply from {address}: {why_not}")
            continue
        now, interval = time.time(), ctx.config.duration("autoreply", "interval")
        last = ctx.store.q("autoreply_last", address, ctx.sender).fetchone()
        if last and last[0] > now - interval:
            ctx.note(f"no reply from {address}: {ctx.sender} had one {int((now - last[0]) // 3600)} h ago")
            continue
        try:
            data = autoreply_message(ctx, address)
        except (ValueError, TypeError) as e:     # a header the email package refuses to write
            log.warning("automatic reply from %s to %s not made: %s", address, ctx.sender, e)
            ctx.note(f"no reply from {address}: {e}")
            continue
        outcome = send_now(ctx.config, "", ctx.sender, data)
        if outcome.kind != SENT:
            log.warning("automatic reply from %s to %s not sent: %s", address, ctx.sender, outcome.detail)
            ctx.note(f"reply from {address} to {ctx.sender} not sent: {outcome.detail}")
            continue
        with ctx.store.transaction():
            ctx.store.q("autoreplies_prune", now - interval)     # older replies no longer matter
            ctx.store.q("autoreply_sent", address, ctx.sender, now)
        log.info("automatic reply from %s to %s (%s)", address, ctx.sender, ctx.message_id or "no message-id")
        ctx.note(f"replied from {address} to {ctx.sender}")


def autoreply_text(config):
    text = config.get("autoreply", "text").replace("\\n", "\n")
    path = config.path_of("autoreply", "text_file")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as e:
            raise ConfigError(f"[autoreply] text_file {path}: {e.strerror}")
    if not text.strip():
        raise ConfigError("[autoreply] addresses is set but the reply has no text (text or text_file)")
    return text


def autoreply_refusal(ctx, address):
    """Why ``address`` must not answer this message (RFC 3834 2, 4), or None."""
    robot = is_robot(ctx.msg, ctx.sender)
    if robot:
        return robot
    if ctx.sender is None or not valid_address(ctx.sender):
        return "no envelope sender (Return-Path) that is an address to answer"
    if ctx.sender.lower() == address.lower():
        return "sent by the address itself"
    suppress = (ctx.msg.get("X-Auto-Response-Suppress") or "").lower()
    if re.search(r"\b(all|oof|autoreply)\b", suppress):
        return f"X-Auto-Response-Suppress: {suppress.strip()}"
    named = addresses_in(ctx.msg.get_all("To") + ctx.msg.get_all("Cc"))
    if address.lower() not in {a.lower() for a in named}:
        return "the address is not in To or Cc"
    return None


def autoreply_message(ctx, address):
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid
    config, original = ctx.config, ctx.msg
    subject = decode_header_text(original.get("Subject") or "").strip()
    reply = EmailMessage()
    reply["From"] = config.get("autoreply", "from") or address
    reply["To"] = ctx.sender
    reply["Subject"] = one_line(config.get("autoreply", "subject").replace("$subject", subject), 900)
    reply["Date"] = formatdate(localtime=True)
    reply["Message-ID"] = make_msgid(domain=address.rpartition("@")[2] or None)
    if ctx.message_id:
        reply["In-Reply-To"] = ctx.message_id
        reply["References"] = " ".join((original.get("References") or "").split() + [ctx.message_id])
    reply["Auto-Submitted"] = "auto-replied"
    reply["X-Auto-Response-Suppress"] = "All"
    reply["Precedence"] = "bulk"
    reply.set_content(autoreply_text(config).replace("$subject", subject))
    return reply.as_bytes()


# what the last line on stderr says for each verdict, proxsmtpd-style
FILTER_REPLIES = {"discard": "250 2.7.0", "hold": "250 2.7.0", "consumed": "250 2.0.0", "reject": "550 5.7.1",
                  "unknown-list": "550 5.1.1", "try-later": "451 4.3.0"}


def finish_filter(ctx, verdict, show_trace=False):
    """Exit codes of content-filter mode: 0 with the message on stdout (passed); 99 with nothing on
    stdout for a message dropped on purpose (discard; hold keeps it in [filter] quarantine first);
    65 reject, 75 try later.  Every verdict also ends stderr with an SMTP reply line, which is what
    proxsmtpd reads (its "250" means dropped, not bounced)."""
    if verdict is None:
        ctx.outcome = "passed"
        log.info("filter passed %s", ctx.describe())
        if show_trace:
            sys.stderr.write(explain(ctx, EX_OK) + "\n")
        return EX_OK
    code, reason = verdict.code or EX_DISCARDED, verdict.reason
    if isinstance(verdict, Hold):
        try:
            where = quarantine_add(ctx.config, reason, ctx.sender or "", ctx.envelope_recipients,
                                   ctx.raw)
            reason = f"held in quarantine ({where}): {reason}"
        except OSError as e:
            verdict, code = TryLater(""), EX_TEMPFAIL
            reason = f"cannot quarantine the message: {e.strerror or e}"
    log.log(logging.WARNING if code not in (EX_OK, EX_DISCARDED) else logging.INFO,
            "filter %s %s reason=%s", verdict.name, ctx.describe(), reason)
    if show_trace:                              # before the reply line: proxsmtpd reads the last line
        ctx.outcome, ctx.outcome_reason = verdict.name, reason
        sys.stderr.write(explain(ctx, code) + "\n")
    print(f"{FILTER_REPLIES.get(verdict.name, '554 5.7.0')} {one_line(reason, 400)}", file=sys.stderr)
    return code


QUARANTINE_FIELDS = (b"X-Redsky-Held", b"X-Redsky-Sender", b"X-Redsky-Recipients")


def quarantine_add(config, reason, sender, recipients, data):
    """Keep a held message in the [filter] quarantine Maildir, the original bytes after the three
    QUARANTINE_FIELDS that `quarantine release` needs: the reason, the envelope sender and the
    envelope recipients.  Returns its key."""
    path = config.path_of("filter", "quarantine")
    if not path:
        raise OSError("[filter] quarantine is empty")
    head = (one_line(reason, 900), sender, ", ".join(recipients))
    return maildir_add(path, b"".join(name + b": " + one_line(value, 5000).encode("utf-8", "replace") + b"\n"
                                      for name, value in zip(QUARANTINE_FIELDS, head)) + data)


def quarantined(config):
    """{key: (reason, sender, recipients, original bytes)} of the quarantine."""
    import mailbox
    path = config.path_of("filter", "quarantine")
    if not path or not os.path.isdir(path):
        return {}
    box, found = mailbox.Maildir(path, create=False), {}
    for key in box.keys():
        *lines, data = box.get_bytes(key).split(b"\n", len(QUARANTINE_FIELDS))
        values = [line[len(name) + 2:].decode("utf-8", "replace")
                  for name, line in zip(QUARANTINE_FIELDS, lines) if line.startswith(name + b": ")]
        if len(values) == len(QUARANTINE_FIELDS):
            found[key] = (values[0], values[1], [r for r in values[2].split(", ") if r], data)
    return found


# ---------------------------------------------------------------------------
# 19. The ledger and the send chain
# Owns: Ledger, the send filters singleinstance ... queuerunner, housekeeping, digests.
# Calls: sections 2-18.
# ---------------------------------------------------------------------------

class Ledger:
    """Outcomes of one run, written in batched transactions.  A recipient's outcome is final only
    once flushed; a run killed before a flush repeats at most the deliveries since the last one
    (``batch`` outcomes or one second).  Temporary failures are retried after retry_delay, doubling
    up to retry_max_delay, and expire after max_age; permanent failures and expiries are bounces.

    A post to the list's members (``members()``) costs no write per member sent: the flush moves the
    post's member_cursor past the members whose outcomes are all in, in the order they were taken,
    adds them to sent_count, and writes rows only for their failures and deferrals.  An outcome that
    comes before an earlier member's waits for it: the cursor never passes an unrecorded one.

    Once a flush fails (disk full, database locked past busy_timeout) the ledger is broken: every
    later record() raises StoreError, so the run delivers nothing more and ends with 75; what it
    delivered since the last flush (at most ``batch`` outcomes, plus the SMTP transactions in
    flight) goes again on the next run."""

    def __init__(self, store, config, batch):
        self.store, self.config, self.batch = store, config, batch
        self.retry = config.duration("send", "retry_delay")
        self.cap = config.duration("send", "retry_max_delay")
        self.max_age = config.duration("send", "max_age")
        self.rows, self.bounces = [], []
        self.progress = {}              # post id -> MemberProgress
        self.waiting = 0                # outcomes not flushed yet
        self.flushed = time.monotonic()
        self.totals = {SENT: 0, TEMPORARY: 0, PERMANENT: 0, "expired": 0, "unreadable": 0}
        self.broken = None              # why the ledger cannot be written

    def members(self, post, recipients):
        """Pass on the member stream of ``post`` (attempts None), noting the
        order in which the transport takes them."""
        progress = self.progress[post["id"]] = MemberProgress(post["member_cursor"])
        for item in recipients:
            progress.taken.append(item[0])
            yield item
        progress.exhausted = True

    def record(self, post, address, attempts, outcome):
        if self.broken:
            raise StoreError(self.broken)
        now = time.time()
        state = {SENT: "sent", PERMANENT: "failed"}.get(outcome.kind) or \
            ("expired" if now - post["created"] >= self.max_age else "pending")
        retry_at = now + min(self.retry * 2 ** (attempts or 0), self.cap) if state == "pending" else 0
        row = (state, retry_at, outcome.detail[:500], now, post["id"], address)
        bounce = None
        if state in ("failed", "expired"):
            found = _STATUS.search(outcome.detail)
            status = ".".join(found.groups()) if found and found.group(1) == "5" else \
                "5.0.0" if state == "failed" else "4.4.7"
            bounce = (post["list_id"], address, now, status, outcome.detail[:1000], post["message_id"])
        if attempts is None:            # a member: recorded when every member before it is
            self.progress[post["id"]].done[address] = (row, bounce)
        else:
            self.rows.append(row)
            self.bounces += [bounce] if bounce else []
        self.waiting += 1
        self.totals["expired" if state == "expired" else outcome.kind] += 1
        # every failure is in the ledger (see `trace`); the log gets failures, and successes at debug
        log.log(logging.DEBUG if state == "sent" else logging.INFO, "deliver %s to=%s %s: %s",
                post["message_id"], address, state if state != "pending" else "deferred", outcome.detail)
        if self.waiting >= self.batch or time.monotonic() - self.flushed > 1.0:
            self.flush()
        return state

    def flush(self):
        if self.broken:
            return
        cursors = []
        for post_id, progress in self.progress.items():
            rows, bounces, sent, cursor = progress.advance()
            self.rows += rows
            self.bounces += bounces
            if sent or cursor != progress.cursor:
                cursors.append((cursor, sent, post_id))
                progress.cursor = cursor
        if self.rows or cursors:
            try:
                with self.store.transaction() as db:
                    db.executemany(SQL["delivery_outcome"], self.rows)
                    db.executemany(SQL["member_progress"], cursors)
                    for list_id, address, now, status, detail, message_id in self.bounces:
                        cause, weight = bounce_cause("failed", status, detail)
                        if cause == "policy" and self.config.flag("bounces", "count_policy_rejections"):
                            weight = 1
                        count, why = (False, policy_rejection(status, address)) if not weight else \
                            score_bounce(db, self.config, list_id, address, now, weight)
                        db.execute(SQL["add_bounce"], bounce_record(
                            list_id, address, "delivery", received=now, action="failed", status=status,
                            diagnostic=detail, counted=int(count), why=why, message_id=message_id,
                            cause=cause, weight=weight))
            except (sqlite3.Error, StoreError) as e:
                self.broken = (f"the delivery ledger cannot be written ({e}): {self.waiting} deliveries"
                               " not recorded, delivering nothing more this run")
                log.error("%s", self.broken)
                raise StoreError(self.broken)
        self.waiting = sum(len(p.done) for p in self.progress.values())
        self.rows, self.bounces, self.flushed = [], [], time.monotonic()


class MemberProgress:
    """How far the member stream of one post has got in this run: the
    members taken, in order, and the outcomes not yet recorded."""

    def __init__(self, cursor):
        self.cursor = cursor            # as recorded: the last member whose outcome is flushed
        self.taken = collections.deque()
        self.done = {}                  # address -> (deliveries row, bounce or None)
        self.exhausted = False          # every member has been taken

    def advance(self):
        """(rows, bounces, members sent, new cursor) for the members at the head of ``taken`` whose
        outcomes are in; the cursor is None once every member is done."""
        rows, bounces, sent, cursor = [], [], 0, self.cursor
        while self.taken and self.taken[0] in self.done:
            cursor = self.taken.popleft()
            row, bounce = self.done.pop(cursor)
            if row[0] == "sent":
                sent += 1
            else:
                rows.append(row)
                bounces += [bounce] if bounce else []
        return rows, bounces, sent, None if self.exhausted and not self.taken else cursor


@chain_filter("send")
def singleinstance(ctx):
    """Take an exclusive flock on DATA_DIR/send.lock for the whole run; if another send holds it,
    end at once (exit 0). Reads config (data_dir); writes lock_fd."""
    path = os.path.join(ctx.config.data_dir, "send.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise Discard("another redsky send is running")
        raise
    ctx.lock_fd = fd            # closed (and so released) by cmd_send when the chain ends


@chain_filter("send")
def housekeeping(ctx):
    """Once per run: drop held posts older than [commands] held_expiry, and old tokens and traces;
    resume members whose nomail --until passed; send each list's moderation team the daily summary
    of the held posts and join requests waiting over a day, each with its one-tap links (as
    Mailman's checkdbs; at most once a day, only to lists that have some); then
    bounce_housekeeping, policy_alerts, unrecognised_summaries and clean_spool.  Reads and writes
    only the store."""
    store, config, now = ctx.store, ctx.config, time.time()
    expired = store.q("expired_held", now - config.duration("commands", "held_expiry")).fetchall()
    with store.transaction() as db:
        for row in expired:
            db.execute(SQL["delete_held"], (row["id"],))
            log.info("held post %s expired message-id=%s", row["id"], row["message_id"])
        db.execute(SQL["prune_pending"], (now, now - 7 * 86400))
        db.execute(SQL["prune_allowances"], (now - 86400,))
        db.execute(SQL["prune_events"], (now - 30 * 86400,))
        kept = max(config.duration("queue", "duplicate_window"), 86400)    # max_posts_per_day counts a day
        db.execute(SQL["prune_recent_posts"], (now - kept,))
        db.execute(SQL["prune_failures"], (now - 30 * 86400,))
        db.execute(SQL["nomail_ended"], (now,))
        last = db.execute(SQL["meta"], ("last_prune",)).fetchone()
        if not last or float(last[0]) < now - 3600:     # the heavy part once an hour, not every run
            db.execute(SQL["summarize_posts"], (now - config.duration("send", "keep_deliveries"),))
            db.execute(SQL["prune_deliveries"])
            db.execute(SQL["set_meta"], ("last_prune", str(now)))
    store.vacuum()
    reminded = 0
    for list_row in [dict(r) for r in store.q("all_lists")]:
        team = moderation_team(list_row)
        if not team or now - list_row["last_reminder"] < 86400:
            continue
        waiting = store.q("held_waiting", list_row["id"], now - 86400, now).fetchall()
        joins = store.q("join_requests", list_row["id"], now, now - 86400).fetchall()
        if not waiting and not joins:
            continue
        outbox = Outbox()
        items, links = moderation_items(store, config, list_row, outbox.changes, waiting, joins, now)
        Notices(store, config, list_row, outbox).send(
            team, f"{list_address(list_row)}: {len(waiting)} held post(s), {len(joins)} join request(s)"
                  " waiting", "reminder", {"items": items}, limit=False, auto="auto-generated", links=links)
        outbox.commit(store, config.spool, lambda db, list_id=list_row["id"]: db.execute(
            SQL["set_last_reminder"], (now, list_id)))
        reminded += 1
    warned, dropped = bounce_housekeeping(store, config, now)
    policy_alerts(store, config, now)
    unrecognised_summaries(store, config, now)
    removed = clean_spool(config, store)
    ctx.note(f"{len(expired)} held posts expired, {reminded} reminders, {warned} bounce warnings,"
             f" {dropped} members removed, {removed} orphan spool files removed")


def bounce_housekeeping(store, config, now):
    """Members disabled by bounces get a warning with a re-enable token at once and every
    warning_interval, up to you_are_disabled_warnings.  After the last warning, unanswered for
    another interval, the member is removed when [bounces] remove_after_warnings says so.  The
    owners get one notice per list and run that names who was disabled (at the first warning) and
    who removed, committed with those changes.  Raw bounce messages older than keep_raw are
    pruned.  Returns (members warned, members removed)."""
    interval = config.duration("bounces", "warning_interval")
    limit = int(config.number("bounces", "you_are_disabled_warnings"))
    remove, warned, dropped, by_list = config.flag("bounces", "remove_after_warnings"), 0, 0, {}
    for member in store.q("members_to_warn", now - interval).fetchall():
        by_list.setdefault(member["list_id"], []).append(member)
    for list_id, members in by_list.items():
        list_row, outbox, disabled, removed = store.list_by_id(list_id), Outbox(), [], []
        changes, notices = outbox.changes, Notices(store, config, list_row, outbox)
        for member in members:
            address = member["address"]
            if member["warnings"] >= limit:
                if remove:
                    changes.append(lambda db, a=address: db.execute(SQL["delete_member"], (list_id, a)))
                    removed.append(address)
                continue
            token = add_pending(changes, list_row, address, "reenable", now, interval * 2)
            confirm = list_address(list_row, f"-confirm+{token}")
            removal = ("This is the last warning: without a reply the address will be removed from the"
                       " list.\n" if member["warnings"] + 1 >= limit and remove else "")
            notices.send([address], f"confirm {token}", "disabled",
                         {"address": address, "confirm_address": confirm, "removal": removal},
                         limit=False, reply_to=confirm, auto="auto-generated")
            changes.append(lambda db, a=address: db.execute(SQL["warned"], (now, list_id, a)))
            disabled += [(address, member["bounce_score"])] * (member["warnings"] == 0)
            warned += 1
        shown = [f"{names[0]}{f' and {len(names) - 1} more' if len(names) > 1 else ''} {what}"
                 for names, what in (([a for a, _ in disabled], "disabled by bounces"),
                                     (removed, "removed after bounces")) if names]
        if shown and owners_of(list_row):
            lines = [f"  {a}: disabled (bounce score {score:g})" for a, score in disabled] + \
                [f"  {a}: removed after {limit} unanswered warnings" for a in removed]
            notices.send(owners_of(list_row), f"{list_address(list_row)}: " + "; ".join(shown),
                         "bounce-owner", {"lines": "\n".join(lines)}, limit=False, auto="auto-generated")
        outbox.commit(store, config.spool)
        dropped += len(removed)
        for address in removed:
            log.info("removed %s from %s after %d unanswered bounce warnings", address,
                     list_address(list_row), limit)
    with store.transaction() as db:
        db.execute(SQL["prune_raw_bounces"], (now - config.duration("bounces", "keep_raw"),))
    return warned, dropped


def policy_alerts(store, config, now):
    """Tell the owners, at most once a day per list, when a domain rejected
    at least [bounces] policy_alert_threshold posts by policy (5.7.x) in a
    day: the posts, not the members, have a problem (DMARC, spam filters)."""
    threshold, by_list = config.number("bounces", "policy_alert_threshold"), {}
    for row in store.q("policy_rejections", now - 86400, now - 86400, threshold).fetchall():
        by_list.setdefault(row["list_id"], []).append(f"  {row['domain']}: {row['n']} rejections")
    for list_id, lines in by_list.items():
        list_row, outbox = store.list_by_id(list_id), Outbox()
        if owners_of(list_row):
            Notices(store, config, list_row, outbox).send(
                owners_of(list_row), f"{list_address(list_row)}: posts rejected by policy", "policy-alert",
                {"domains": "\n".join(lines)}, limit=False, auto="auto-generated")
        outbox.commit(store, config.spool,
                      lambda db: db.execute(SQL["set_last_policy_alert"], (now, list_id)))
        log.warning("%s: posts rejected by policy in the last day:%s", list_address(list_row),
                    " ".join(lines))


def unrecognised_summaries(store, config, now):
    """Once a day per list, forward to the owners a summary of the reports that reached a signed
    bounce address but could not be read (a real bounce in a format redsky does not know must not go
    unseen; it never counted).  The time of the last summary is kept in meta."""
    for list_row in [dict(r) for r in store.q("all_lists")]:
        key = f"unrecognised_summary:{list_row['id']}"
        last = float((store.q("meta", key).fetchone() or [0.0])[0])
        if now - last < 86400:
            continue
        rows = store.q("unrecognised_since", list_row["id"], last).fetchall()
        if not rows or not owners_of(list_row):
            continue
        lines = "\n".join(f"  {time.strftime('%Y-%m-%d %H:%M', time.gmtime(r['received']))}  {r['address']}"
                          f"  {one_line(r['diagnostic'], 100)}" for r in rows)
        outbox = Outbox()
        Notices(store, config, list_row, outbox).send(
            owners_of(list_row), f"{list_address(list_row)}: {len(rows)} unrecognised bounce reports",
            "unrecognised-bounces", {"reports": lines}, limit=False, auto="auto-generated")
        outbox.commit(store, config.spool, lambda db, key=key: db.execute(SQL["set_meta"], (key, str(now))))


@chain_filter("send", needs=("singleinstance",))
def digester(ctx):
    """Issue each list's digest when it is due: its posts waiting in digest_posts reach the list's
    digest_size_threshold (KB), or digest_interval has passed since the last digest (since the
    oldest post, for the first).  The digest (build_digest, numbered Vol N by calendar year) is
    queued for the enabled digest members, in the format each chose (members.digest_format, else the
    list's: one message per format, the same issue); the list's numbering and the removal of the posts it
    holds commit with it, so a post is in exactly one digest.
    Reads store (digest_posts, members, lists); writes the digests queued in the store."""
    now = time.time()
    for backlog in ctx.store.q("digest_backlog").fetchall():
        list_row = dict(ctx.store.q("list_by_id", backlog["list_id"]).fetchone())
        since = list_row["digest_last"] or backlog["oldest"]
        if (backlog["size"] < list_row["digest_size_threshold"] * 1024
                and now - since < list_row["digest_interval"]):
            continue
        formats = {}                            # a member's own format, else the list's
        for address, chosen in ctx.store.q("digest_members", list_row["id"]):
            formats.setdefault(chosen or list_row["digest_format"], []).append(address)
        recipients = [a for addresses in formats.values() for a in addresses]
        volume, issue = list_row["digest_volume"], list_row["digest_issue"] + 1
        last = list_row["digest_last"]
        if last and time.gmtime(now).tm_year != time.gmtime(last).tm_year:
            volume, issue = volume + 1, 1
        posts = [r[0] for r in ctx.store.q("digest_posts", list_row["id"], backlog["last"])]
        outbox, problems = Outbox(), []
        if recipients:
            try:
                for form in sorted(formats):
                    message_id, data = build_digest({**list_row, "digest_format": form}, posts, volume, issue,
                                                    problems, ctx.config.path_of("redsky", "templates"),
                                                    ctx.config.get("web", "base_url"))
                    outbox.add(list_row["id"], "post", message_id, data, formats[form])
            except Exception as e:              # one list's digest must never stop the deliveries
                log.error("digest of %s cannot be built, will retry: %s: %s", list_address(list_row),
                          type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))
                continue
            problems = list(dict.fromkeys(problems))    # the same post, in each format
            if problems and owners_of(list_row):
                Notices(ctx.store, ctx.config, list_row, outbox).send(
                    owners_of(list_row), f"{list_address(list_row)}: posts shown raw in a digest",
                    "digest-problem",
                    {"issue": f"Vol {volume}, Issue {issue}", "posts": "\n".join("  " + p for p in problems)},
                    limit=False, auto="auto-generated")

        def change(db, list_id=list_row["id"], last=backlog["last"], volume=volume, issue=issue):
            db.execute(SQL["digest_done"], (list_id, last))
            if recipients:
                db.execute(SQL["digest_numbering"], (volume, issue, now, list_id))
        try:
            outbox.commit(ctx.store, ctx.config.spool, change)
        except StoreError as e:
            log.error("digest of %s not issued, will retry: %s", list_address(list_row), e)
            continue
        if recipients:
            log.info("digest %s Vol %d Issue %d: %d posts for %d members",
                     list_address(list_row), volume, issue, len(posts), len(recipients))
            ctx.note(f"{list_address(list_row)} Vol {volume}, Issue {issue}: {len(posts)} posts")
        else:
            ctx.note(f"{list_address(list_row)}: {len(posts)} posts dropped, nobody takes digests any more")


def build_digest(list_row, posts, volume, issue, problems=None, templates="", base_url=""):
    """(Message-ID, bytes) of a digest of ``posts`` (the posts as distributed, oldest first).
    digest_format mime: multipart/mixed with the masthead, a table of contents, a multipart/digest
    holding every post byte-intact as message/rfc822 (RFC 2046 5.1.5; attachments and all) and the
    footer.  plain: one text/plain message by RFC 1153."""
    from email.message import MIMEPart
    from email.utils import formatdate, make_msgid
    name = list_row["name"]
    subject = f"{name} Digest, Vol {volume}, Issue {issue}"
    posts = [p.replace(b"\r\n", b"\n") for p in posts]
    infos = [summary(p) for p in posts]
    topics = "Today's Topics:\n\n" + "".join(f"  {n:3}. {subj} ({author})\n"
                                               for n, (_, author, subj) in enumerate(infos, 1))
    masthead = render("digest-masthead", list_row, {}, templates)
    footer = footer_text(list_row) if list_row["footer"] else ""
    message_id = make_msgid(domain=list_row["domain"])
    head = [("From", list_address(list_row, "-request")), ("To", list_address(list_row)),
            ("Reply-To", list_address(list_row)), ("Subject", subject), ("Date", formatdate(localtime=True)),
            ("Message-ID", message_id), ("MIME-Version", "1.0")] + list_headers(list_row, base_url)

    def text_part(text, description=None):
        part = MIMEPart()
        part.set_content(text, cte="7bit" if text.isascii() and max(map(len, text.splitlines() or [""])) < 900
                         else "quoted-printable")
        if description:
            part["Content-Description"] = description
        return part.as_bytes().replace(b"\r\n", b"\n")

    def header_bytes(fields):
        return "".join(f"{k}: {v}\n" for k, v in fields).encode("utf-8")

    if list_row["digest_format"] == "plain":
        chunks = [masthead, "\n", topics, "\n", "-" * 70, "\n\n"]
        for data, (when, author, subj) in zip(posts, infos):
            msg = RawMessage(data)
            chunks += [f"{f}: {one_line(decode_header_text(msg.get(f)), 900)}\n" for f in
                       ("Date", "From", "Subject", "To", "Cc", "Message-ID", "Archived-At") if msg.get(f)]
            body = text_of(data, problems).rstrip()
            if footer and body.endswith(footer.strip()):            # the footer comes once, at the end
                body = body[:-len(footer.strip())].rstrip()
            body = re.sub(r"(?m)^(-{30})$", r" \1", body)          # RFC 1153: no separator lookalikes
            chunks += ["\n", body.rstrip("\n"), "\n\n", "-" * 30, "\n\n"]
        if footer:
            chunks += [footer.rstrip("\n"), "\n\n", "-" * 30, "\n\n"]
        end = f"End of {subject}"
        chunks += [end, "\n", "*" * len(end), "\n"]
        return message_id, header_bytes(head) + text_part("".join(chunks))

    import uuid
    outer, inner = (f"===============redsky-{uuid.uuid4().hex}==" for _ in range(2))
    b_outer, b_inner = outer.encode(), inner.encode()
    body = [header_bytes(head + [("Content-Type", f'multipart/mixed; boundary="{outer}"')]),
            b"\nThis is a MIME digest; each post is attached as a message/rfc822 part.\n",
            b"\n--" + b_outer + b"\n", text_part(masthead, f"{name} digest, Vol {volume}, Issue {issue}"),
            b"\n--" + b_outer + b"\n", text_part(topics, f"Today's Topics ({len(posts)} messages)"),
            b"\n--" + b_outer + b"\n", f'Content-Type: multipart/digest; boundary="{inner}"\n\n'.encode()]
    for data in posts:
        body += [b"\n--" + b_inner + b"\nContent-Type: message/rfc822\n\n",
                 data if data.endswith(b"\n") else data + b"\n"]
    body += [b"\n--" + b_inner + b"--\n"]
    if footer:
        body += [b"\n--" + b_outer + b"\n", text_part(footer, "Digest footer")]
    body += [b"\n--" + b_outer + b"--\n"]
    return message_id, b"".join(body)


@chain_filter("send")
def queuebuilder(ctx):
    """Find the posts with deliveries due now (new, or retry time reached), not their recipients.
    Reads store; writes now, queue (message rows)."""
    ctx.now = time.time()
    ctx.queue = [dict(r) for r in ctx.store.q("due_messages", ctx.now)]
    ctx.note(f"{len(ctx.queue)} posts with deliveries due")


@chain_filter("send", needs=("singleinstance", "queuebuilder"))
def queuerunner(ctx):
    """Deliver each due recipient through [send] transport and record the outcomes in the ledger.
    Recipients are read in chunks and the message bytes once per post, so memory does not grow with
    the list.  A post whose every recipient is final is marked done and its spool file removed.
    Nothing is delivered unless the ledger can be written first, and nothing more once it cannot
    (Ledger).  An unreadable spool file counts in totals["unreadable"] (cmd_send says the fix).
    Reads queue, now, store; writes totals, and the ledger and bounces of failures in the store."""
    config = ctx.config
    try:                                        # a database that cannot record: deliver nothing
        with ctx.store.transaction():
            ctx.store.q("set_meta", "last_send", str(time.time()))
    except (sqlite3.Error, StoreError) as e:
        raise StoreError(f"the database cannot be written ({e}): delivering nothing")
    transport = TRANSPORTS[config.get("send", "transport")](config)
    ledger = Ledger(ctx.store, config, transport.ledger_batch)
    verp_key = ctx.store.verp_key
    try:
        for post in ctx.queue:
            path = os.path.join(config.spool, post["spool"])
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError as e:
                log.error("post %s: cannot read spool file %s: %s; will retry", post["message_id"],
                          path, e.strerror)
                ledger.totals["unreadable"] += 1
                ctx.unreadable = f"{path}: {e.strerror}"
                continue
            list_row = {"name": post["name"], "domain": post["domain"], "verp_key": verp_key,
                        "base_url": config.get("web", "base_url")}
            due = ctx.store.q("due_count", post["id"], ctx.now).fetchone()[0]
            recipients = due_recipients(ctx.store, post["id"], ctx.now)
            if post["member_cursor"] is not None:       # then the members not reached yet
                due += ctx.store.q("member_stream_count", post["list_id"], post["created"], post["poster"],
                                   post["member_cursor"]).fetchone()[0]
                recipients = itertools.chain(recipients, ledger.members(post, member_stream(
                    ctx.store, post["list_id"], post["created"], post["member_cursor"], post["poster"])))
            def record(address, attempts, outcome, post=post):
                ledger.record(post, address, attempts, outcome)
            if post["sender"]:                  # a probe goes out from its own signed address
                for address, attempts in recipients:
                    record(address, attempts, transport.send_one(post["sender"], address, data))
            else:
                transport.send(list_row, data, recipients, record, due)
            ledger.flush()
            if ctx.store.q("pending_count", post["id"]).fetchone()[0] == 0:
                try:
                    with ctx.store.transaction():
                        ctx.store.q("message_done", post["id"])
                except (sqlite3.Error, StoreError) as e:
                    raise StoreError(f"cannot mark post {post['message_id']} done: {e}")
                _unlink_quietly(path)
    finally:
        ctx.totals = ledger.totals
        transport.close()
        ledger.flush()
    totals, down = ledger.totals, getattr(transport, "down", None)
    if down:                                    # the members not reached wait, unrecorded, for the next run
        log.warning("send: %s; the members not reached yet wait for the next run", down)
    unreadable = f", {totals['unreadable']} unreadable spool files" if totals["unreadable"] else ""
    ctx.note(f"sent {totals[SENT]}, deferred {totals[TEMPORARY]}, failed {totals[PERMANENT]}, "
             f"expired {totals['expired']}{unreadable}" + (f"; {down}" if down else ""))


def due_recipients(store, message, now, chunk=1000):
    """(address, attempts) of the due recipients, read in chunks (keyset
    pagination: memory stays flat however long the list)."""
    after = ""
    while True:
        rows = store.q("due_recipients", message, now, after, chunk).fetchall()
        if not rows:
            return
        yield from ((row["address"], row["attempts"]) for row in rows)
        after = rows[-1]["address"]


def clean_spool(config, store, older_than=3600):
    """Remove spool files no queued post refers to: left by a crash between
    the spool write and the commit, or between the commit and the unlink.
    Young files are left alone: a ``queue`` may be about to commit them."""
    spool = config.spool
    try:
        names = [n for n in os.listdir(spool) if n.endswith(".eml")]
    except OSError:
        return 0
    queued = {r[0] for r in store.q("queued_spools")}
    removed, cutoff = 0, time.time() - older_than
    for name in names:
        path = os.path.join(spool, name)
        try:
            if name not in queued and os.stat(path).st_mtime < cutoff:
                os.unlink(path)
                removed += 1
        except OSError:
            pass
    return removed


# ---------------------------------------------------------------------------
# 20. The web
# Owns: WebApp (WSGI `application`): one-click unsubscribe (RFC 8058), the subscribe page and its
#       checks, archive pages and search; the web's budgets (client_network, web_budget); `web`, CGI.
# Calls: sections 2-19.
# ---------------------------------------------------------------------------

WEB_MAX_BODY = 16 * 1024        # bytes of a request body; a larger one is refused (413)
WEB_FORM_MAX_BODY = 64 * 1024   # bytes of an owner's or a member's form (settings, many addresses)
_LIST_PATH = re.compile(r"/([^/@\s]{1,64}@[^/@\s]{1,255})/(?:leave/([0-9a-fA-F]{16}))?")
_ARCHIVE_PATH = re.compile(r"/archive/([^/@\s]{1,64}@[^/@\s]{1,255})/(|search|atom\.xml|index\.html"
                           r"|\d{4}-\d{2}\.(?:html|mbox)|\d{1,9}\.(?:html|eml)|thread/\d{1,9}\.(?:html|mbox)"
                           r"|att/[A-Za-z0-9._-]{1,120}|msgid/.{1,500})", re.S)
PAGE_TYPES = {".html": "text/html; charset=utf-8", ".xml": "application/atom+xml; charset=utf-8",
              ".eml": "text/plain; charset=utf-8", ".mbox": "application/mbox"}
WEB_PAGES = []                  # (compiled path pattern, handler) that later sections add (web_page)


def web_page(pattern):
    """Register ``handler(app, config, store, environ, method, match)`` for the paths ``pattern``
    matches whole: pages the sections below this one add (signing in, the owner's and the member's
    pages), which WebApp.route tries after its own."""
    def register(handler):
        WEB_PAGES.append((re.compile(pattern), handler))
        return handler
    return register


def form_fields(body, kind):
    """{name: value} of a POSTed form: urlencoded, or multipart (RFC 7578; RFC 8058 allows it, its
    parts split once, in linear time); at most 20 fields, and a body with more gives none."""
    from urllib.parse import parse_qsl
    if "multipart/form-data" in kind:
        boundary = re.search(r'boundary="?([^";\s]{1,70})', kind)
        mark = b"--" + boundary.group(1).encode("latin-1", "replace") if boundary else None
        fields = {}
        for part in body.split(mark)[1:21] if mark else []:
            head, _, value = part.partition(b"\r\n\r\n" if b"\r\n\r\n" in part else b"\n\n")
            name = re.search(rb'(?im)^content-disposition:[^\r\n]*?\bname="([^"\r\n]{1,100})"', head)
            if name:
                fields[name.group(1).decode("utf-8", "replace")] = \
                    value.rstrip(b"\r\n").decode("utf-8", "replace")[:1000]
        return fields
    try:
        return dict(parse_qsl(body.decode("utf-8", "replace"), max_num_fields=20))
    except ValueError:                          # more fields than any form here has: none of them
        return {}


class WebApp:
    """The WSGI application (PEP 3333).  Paths under [web] base_url:
    /                        the lists with a public archive
    /LIST@DOMAIN/            the list's subscribe page (POST: start a double opt-in)
    /LIST@DOMAIN/leave/TOKEN one-click unsubscribe: POST leaves (RFC 8058), GET shows a button
    /archive/LIST@DOMAIN/... the archive pages, and search?q=WORDS
    and the pages later sections register (web_page): /manage/, /LIST@DOMAIN/admin/..."""

    def __init__(self, config=None):
        self.config = config

    def __call__(self, environ, start_response):
        later = environ["redsky.after"] = []
        config = self.config
        try:
            config = config or Config.find(None)
            status, body, kind, extra = self.route(config, environ)
        except Exception as e:      # one line in the log; a page that says nothing of the inside
            del later[:]
            log.error("web: %s %s: %s: %s", environ.get("REQUEST_METHOD"),
                      one_line(log_target(environ.get("PATH_INFO") or ""), 300), type(e).__name__,
                      one_line(e, 300), exc_info=not isinstance(e, (Failure, StoreError)))
            status, body, kind, extra = message_page(
                "Not now", "Something went wrong here; please try again later.", "503 Service Unavailable",
                [("Retry-After", "60")])
        data = body if isinstance(body, (bytes, FileBody)) else body.encode("utf-8")
        referrer = next((v for n, v in extra if n == "Referrer-Policy"), "no-referrer")  # a page's own
        start_response(status, [("Content-Type", kind or PAGE_TYPES[".html"]),
                                ("Content-Length", str(len(data))),
                                ("Content-Security-Policy", page_policy() + "; frame-ancestors 'none'"),
                                ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", referrer),
                                ("X-Frame-Options", "DENY"), ("Cache-Control", "no-store")]
                       + [h for h in extra if h[0] != "Referrer-Policy"])
        if isinstance(data, FileBody):
            if environ.get("REQUEST_METHOD") != "HEAD":
                return FileAnswer(data, config, later)
            data.close()
        return WebAnswer(data if environ.get("REQUEST_METHOD") != "HEAD" else b"", config, later)

    def route(self, config, environ):
        """(status, body, content type or None for HTML, more headers)."""
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO") or "/"
        if method not in ("GET", "HEAD", "POST"):
            return message_page("Not allowed", "Use GET or POST.", "405 Method Not Allowed",
                                [("Allow", "GET, HEAD, POST")])
        store = open_store(config)
        try:
            m = _ARCHIVE_PATH.fullmatch(path)
            if m:
                return self.archive(config, store, environ, method, *m.groups())
            m = _LIST_PATH.fullmatch(path)
            list_row = store.list_by_address(m.group(1)) if m else None
            if list_row:
                fields = self.form(environ) if method == "POST" else {}
                if fields is None:
                    return message_page("Too large", "That request is too large.",
                                        "413 Payload Too Large")
                if m.group(2):
                    return self.leave(config, store, fields, method, list_row, m.group(2).lower())
                return self.subscribe(config, store, environ, fields, method, list_row)
            for pattern, handler in WEB_PAGES:
                m = pattern.fullmatch(path)
                if m:
                    return handler(self, config, store, environ, method, m)
            m = _ARCHIVE_PATH.fullmatch(path + "/") or _LIST_PATH.fullmatch(path + "/")
            list_row = store.list_by_address(m.group(1)) if m else None
            if list_row:                # the list's own address, never the path as the client wrote it
                return redirect(list_address(list_row).lower())
            if path == "/" and method != "POST":
                return front_page(store)
            return not_found()
        finally:
            store.close()

    @staticmethod
    def form(environ):
        """The POSTed form (form_fields); None if too large."""
        length = environ.get("CONTENT_LENGTH") or "0"
        if not re.fullmatch(r"\d{1,9}", length) or int(length) > WEB_MAX_BODY:
            return None
        return form_fields(environ["wsgi.input"].read(int(length)), environ.get("CONTENT_TYPE", ""))

    def leave(self, config, store, fields, method, list_row, token):
        """RFC 8058: POST with List-Unsubscribe=One-Click leaves at once, and every answer (a
        repeat, a token no member has) is the same page, so the page tells nothing about who is
        subscribed; GET, which link checkers and previewers fetch, only shows the button."""
        name = esc(list_address(list_row))
        if method != "POST":
            return page(f"Leave {list_address(list_row)}", (
                f"<h1>Leave {name}</h1>\n<form method=\"post\"><input type=\"hidden\""
                f" name=\"List-Unsubscribe\" value=\"One-Click\"><button>Unsubscribe me from {name}</button>"
                "</form>\n<p>Or keep it and change how you get it (digests, no mail for a while):"
                ' <a href="../../../manage/">manage my subscription</a>.</p>'))
        if fields.get("List-Unsubscribe") != "One-Click":
            return message_page("Not understood", "Use the button on this page.", "400 Bad Request")
        member = leave_member(store, list_row, token)
        if member is not None:
            web_request(config, store, list_row, member, "leave", lambda req: req.remove_member(member))
        return message_page(f"Left {list_address(list_row)}",
                            f"You are no longer subscribed to {list_address(list_row)}.")

    def subscribe(self, config, store, environ, fields, method, list_row):
        """The list's page and its form.  A POSTed address gets the same confirmation as mail to
        LIST-join@ (rate limits, ban list and policy included) if the form passes every check
        (subscribe_checks); the answer is the same whatever the address's state and whatever
        check failed, but for the errors a person can put right: not an address, the wrong answer
        to the owners' question, a form sent back too fast or too late ("please try again")."""
        client = client_network(config, environ)
        if method != "POST" or list_row["subscribe_policy"] == "closed":
            return self.subscribe_page(store, list_row, client)
        address = (fields.get("address") or "").strip()
        if not valid_address(address) or len(address) > 254:
            return self.subscribe_page(store, list_row, client, "Please give an email address.", address)
        address = normalize_address(address)        # the one form the ban list and members know
        error = self.subscribe_checks(config, store, client, fields, list_row, address)
        if error:
            return self.subscribe_page(store, list_row, client, error, address)
        return message_page(f"Subscribing to {list_address(list_row)}", f"If {address} can join "
                            f"{list_address(list_row)}, a message is on its way to it: reply to it (or"
                            " follow what it says) to finish.")

    def subscribe_checks(self, config, store, client, fields, list_row, address):
        """Start the double opt-in for a POSTed form that passes every check, else nothing: the
        form's signed token ("form", sign_token) is for this list and this client's network
        (client_network: a token fetched elsewhere, by a script that has visitors send it, does not
        count), at least [web] form_min_age old and at most form_max_age, and taken once only; the
        field a person never fills ("website") is empty; the answer is one of the list's
        subscribe_answers; and the client's network, the list's hour and the list's day ([web]
        subscribe_per_client, _per_list, _per_day) have room.  Returns the error a person can put
        right, else ""."""
        now, name = time.time(), list_address(list_row)
        verdict, nonce = check_token(store.verp_key, "subscribe", name, client, fields.get("form"), now,
                                     config.duration("web", "form_max_age"),
                                     config.duration("web", "form_min_age"))
        if verdict != "ok":
            log.info("web: subscribe to %s from %s: form %s", name, client, verdict)
            return "Please try again: " + ("that was quicker than a person fills in a form." if verdict ==
                                           "young" else "the form was too old, or not this page's.")
        per_client = (f"subscribe client {client}", config.number("web", "subscribe_per_client"), 3600)
        answers = [" ".join(a.split()).casefold() for a in list_row["subscribe_answers"].split("|")
                   if a.strip()]
        wrong = list_row["subscribe_question"] and answers and \
            " ".join((fields.get("answer") or "").split()).casefold() not in answers
        if fields.get("website") or wrong:            # a robot filled the field every person leaves empty
            over = web_budget(store, now, [per_client])
            log.info("web: subscribe to %s from %s refused: %s", name, client,
                     "a wrong answer" if wrong else "the empty field filled")
            return "That is not the answer to the question; please try again." if wrong and not over else ""
        day = (f"subscribe day {list_row['id']}", config.number("web", "subscribe_per_day"), 86400)
        per_list = (f"subscribe list {list_row['id']}", config.number("web", "subscribe_per_list"), 3600)
        once = (f"form {nonce}", 1, config.duration("web", "form_max_age"))     # a form is taken once
        refused = web_budget(store, now, [per_client, day, per_list, once])
        if refused:
            log.info("web: subscribe to %s from %s refused: no room in %s", name, client, refused)
            if refused == day[0]:
                tell_owners_of_cap(config, store, list_row, now, int(day[1]))
            return ""
        web_request(config, store, list_row, address, "join", lambda req: req.subscribe(address), client)
        return ""

    def subscribe_page(self, store, list_row, client, error="", address=""):
        """The list's page: its description, and the form (none when the list is closed) with a
        fresh signed token for the client's network, the owners' question, and a field a person
        leaves empty, which the stylesheet hides from sight (not from screen readers: its label
        says to leave it empty)."""
        name, question = list_address(list_row), list_row["subscribe_question"]
        archive = f'<a href="../archive/{esc(name.lower())}/">The archive</a> ' \
            if list_row["archive"] == "public" else ""
        archive = (f'<nav aria-label="This list"><p>{archive}<a href="../manage/">Manage my subscription</a>'
                   ' <a href="admin/">For the owners</a></p></nav>')
        asked = (f'<p><label>{esc(question)} <input name="answer" required autocomplete="off"></label></p>\n'
                 if question and list_row["subscribe_answers"] else "")
        form = (f'<form method="post"><input type="hidden" name="form"'
                f' value="{sign_token(store.verp_key, "subscribe", name, client)}">\n'
                f'<p><label>Your email address <input type="email" name="address" value="{esc(address)}"'
                f' required></label></p>\n{asked}'
                '<p class="hp"><label>Leave this empty <input name="website" tabindex="-1"'
                ' autocomplete="off"></label></p>\n<button>Subscribe</button></form>\n'
                "<p><small>You will get a message asking you to confirm.</small></p>")
        return page(name, (
            f"<h1>{esc(name)}</h1>\n<p>{esc(list_row.get('description') or '')}</p>\n"
            + (f'<p role="alert"><strong>{esc(error)}</strong></p>\n' if error else "")
            + ("<p>This list takes no new members.</p>" if list_row["subscribe_policy"] == "closed"
               else form) + archive), "400 Bad Request" if error else "200 OK")

    def archive(self, config, store, environ, method, address, name):
        """A public archive's pages and files as [web] pages holds them; search; msgid/ID."""
        list_row = store.list_by_address(address)
        if list_row is None or list_row["archive"] != "public" or method == "POST":
            return not_found()
        if name == "search":
            if search_refused(config, store, environ):          # issue 29.7: a budget per client
                return message_page("Too many searches", "Please wait a minute.", "429 Too Many Requests",
                                    [("Retry-After", "60")])
            return search_page(config, store, list_row, environ.get("QUERY_STRING", ""))
        if name.startswith("msgid/"):
            return by_message_id(store, list_row, name[6:], config.get("web", "base_url").rstrip("/")
                                 or environ.get("SCRIPT_NAME", ""))
        try:                        # sent as read (FileBody): a month's mbox can be large
            data = FileBody(open(os.path.join(pages_dir(config, list_row), name or "index.html"), "rb"))
        except OSError:
            return not_found()
        if name.startswith("att/") or name.endswith(".mbox"):
            attached = name.startswith("att/")
            return "200 OK", data, "application/octet-stream" if attached else PAGE_TYPES[".mbox"], [
                ("Content-Disposition", 'attachment; filename="%s"' % (name.split("-", 2)[-1] if attached
                                                                        else name.replace("/", "-")))]
        return "200 OK", data, PAGE_TYPES[os.path.splitext(name or "index.html")[1]], []


# The archive's search (archive_texts, search_index_ready) -------------------------

SEARCH_PAGE = 20                # results on a page (and in a search's feed)
SEARCH_QUERY_LIMIT = 200        # characters of a query read
_QUERY_TERM = re.compile(r'(?:([A-Za-z]{1,12}):)?("[^"]*"?|[^\s"]+)')
_QUERY_DAY = re.compile(r"(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?")
# a word of a post's text as written, combining marks included (snippet)
_TEXT_WORD = re.compile("[^\\W_](?:[^\\W_]|[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff"
                        "\ufe20-\ufe2f])*")


def parse_query(text):
    """A search as typed: {"words": phrases, "from": phrases, "subject": phrases, "since", "until",
    "problems"}, a phrase being a list of folded words (search_fold).  Words in quotes are one
    phrase, every other word one of its own; from:, subject: and d: (date:) qualify the word or
    quoted phrase after them; at most 10 phrases.  Linear in the text."""
    query = {"words": [], "from": [], "subject": [], "since": 0.0, "until": 1e18, "problems": []}
    for m in _QUERY_TERM.finditer(text[:SEARCH_QUERY_LIMIT]):
        field, value = (m.group(1) or "").lower(), m.group(2)
        if field and field not in ("from", "subject", "d", "date"):
            field, value = "", m.group(0)
        if field in ("d", "date"):
            span = date_span(value.strip('"'))
            if span is None:
                query["problems"].append(f"{field}:{value}: write a date as d:2026-01..2026-03, d:2026 or "
                                         "d:2026-01-05..")
            else:
                query["since"], query["until"] = max(query["since"], span[0]), min(query["until"], span[1])
            continue
        words = search_fold(value.strip('"')).split()[:20]
        if words and sum(len(query[k]) for k in ("words", "from", "subject")) < 10:
            query[field or "words"].append(words)
    return query


def date_span(value):
    """(start, end) in Unix seconds of d:VALUE: a year, a month or a day, or a range A..B of them (an
    end may be left open), each end included whole; None when it is none of these."""
    def bound(part, end):
        if not part:
            return 1e18 if end else 0.0
        m = _QUERY_DAY.fullmatch(part)
        year, month, day = (int(m.group(i) or 0) for i in (1, 2, 3)) if m else (0, 0, 0)
        if not m or month > 12 or day > 31 or (m.group(2) and not month) or (m.group(3) and not day):
            raise ValueError(part)
        if not end:
            return civil_seconds(year, month or 1, day or 1)
        return civil_seconds(year, month, day) + 86400 if day else \
            civil_seconds(year + month // 12, month % 12 + 1, 1) if month else civil_seconds(year + 1, 1, 1)
    left, dots, right = value.partition("..")
    try:
        return (bound(left, False), bound(right if dots else left, True)) if left or dots else None
    except ValueError:
        return None


def search_archive(store, list_row, query, page=0):
    """([row], more) of the posts of a public archive that ``query`` (parse_query) finds, newest
    first, SEARCH_PAGE from page ``page``: by the FTS5 index when it is current, else by reading
    the folded texts (archive_texts) in that order, which finds the same."""
    phrases = [(k, p) for k in ("words", "from", "subject") for p in query[k]]
    if not phrases and (query["since"], query["until"]) == (0.0, 1e18):
        return [], False
    args, offset = (list_row["id"], query["since"], query["until"]), page * SEARCH_PAGE
    if phrases and search_index_ready(store.db):
        column = {"words": "", "from": "author : ", "subject": "subject : "}
        match = " AND ".join(f'{column[k]}"{" ".join(p)}"' for k, p in phrases)
        rows = store.q("search_index", match, *args, SEARCH_PAGE + 1, offset).fetchall()
    else:
        rows, skipped = [], 0
        for row in store.q("search_scan", *args):
            where = {"words": (f" {row['s']} ", f" {row['a']} ", f" {row['b']} "), "from": (f" {row['a']} ",),
                     "subject": (f" {row['s']} ",)}
            if all(any(f" {' '.join(p)} " in text for text in where[k]) for k, p in phrases):
                if skipped < offset:
                    skipped += 1
                    continue
                rows.append(row)
                if len(rows) > SEARCH_PAGE:
                    break
    return [dict(r) for r in rows[:SEARCH_PAGE]], len(rows) > SEARCH_PAGE


SNIPPET_SCAN = 8000     # characters of a result read for its snippet: a page of 20 costs the same
                        # whatever the posts' length (folding 200,000 of them took 0.45 s each);
                        # a match further in shows the post's start


def snippet(text, phrases, width=240, html=True):
    """About ``width`` characters of a post's text around the first place one of ``phrases``
    matches (else its start), escaped with the words of the phrases in <mark> (``html``), or as
    plain text; linear in the text."""
    longer = len(text) > SNIPPET_SCAN
    text = _BIDI_CONTROLS.sub("", text[:SNIPPET_SCAN])
    words = []                  # (start, end, folded word) of every word of what is read
    for m in _TEXT_WORD.finditer(text):
        word = m.group(0)
        for folded in (word.lower(),) if word.isascii() else search_fold(word).split():
            words.append((m.start(), m.end(), folded))
    firsts = {}
    for p in phrases:
        firsts.setdefault(p[0], []).append(p)
    at = next((i for i, (_, _, w) in enumerate(words) for p in firsts.get(w, ())
               if [x[2] for x in words[i:i + len(p)]] == p), None)
    start = max(0, words[at][0] - width // 3) if at is not None else 0
    start = next((s for s, _, _ in words if s >= start), start) if start else 0
    end = min(len(text), start + width)
    end = max((e for s, e, _ in words if start <= s and e <= end), default=end) if end < len(text) else end
    marked, out, pos = {w for p in phrases for w in p}, [], start
    for s, e, w in words:
        if start <= s and e <= end and w in marked and s >= pos and html:
            out += [esc(text[pos:s]), f"<mark>{esc(text[s:e])}</mark>"]
            pos = e
    out.append(esc(text[pos:end]) if html else text[pos:end])
    return ("\u2026" if start else "") + one_line("".join(out), width * 8) + \
        ("\u2026" if end < len(text) or longer else "")


def search_page(config, store, list_row, query_string):
    """search?q=WORDS[&page=N][&format=atom]: the results, newest first, each with a snippet, or
    the same as an Atom feed to follow the query."""
    from urllib.parse import parse_qs, quote_plus
    fields = parse_qs(query_string[:1000])
    words = (fields.get("q") or [""])[0][:SEARCH_QUERY_LIMIT]
    number = (fields.get("page") or ["0"])[0]
    number = int(number) if number.isdigit() and int(number) < 500 else 0
    query = parse_query(words)
    found, more = search_archive(store, list_row, query, number)
    texts = {r["id"]: archive_text(store, r["id"]) for r in found}
    if (fields.get("format") or [""])[0] == "atom":
        return "200 OK", atom_feed(list_row, found, config.get("web", "base_url"),
                                   {i: snippet(t, query["words"], html=False) for i, t in texts.items()},
                                   title=f"{list_address(list_row)}: {one_line(words, 200)}",
                                   feed_id=f"search?q={quote_plus(words)}"), PAGE_TYPES[".xml"], []
    items = "".join(f"<li>{_line(r, str(r['number']) + '.html', '%Y-%m-%d')}<br>"
                    f"<small>{snippet(texts[r['id']], query['words'])}</small></li>" for r in found)
    link = f"search?q={esc(quote_plus(words))}"
    pages = (f'<a href="{link}&amp;page={number - 1}">newer</a> ' if number else "") + \
        (f'<a href="{link}&amp;page={number + 1}">older</a>' if more else "")
    said = "".join(f"<p>{esc(p)}</p>" for p in query["problems"])
    return page(f"Search {list_address(list_row)}", (
        '<nav><a href="./">all months</a></nav>\n' + search_form(words) + said +
        (f'\n<p>{len(found) + number * SEARCH_PAGE}{"+" if more else ""} found, newest first '
         f'(<a href="{link}&amp;format=atom">Atom feed of this search</a>).</p><ul>{items}</ul>'
         f"<nav>{pages}</nav>" if words.strip() else "")))


def by_message_id(store, list_row, written, root):
    """msgid/ID (Archived-At names it): a redirect to the post with that Message-ID, under ``root``
    ([web] base_url, which a proxy in front cannot change, else the script's own path)."""
    try:
        message_id = written.encode("latin-1").decode("utf-8").strip().strip("<>")
    except UnicodeError:
        return not_found()
    row = first_archived(store, list_row, f"<{message_id}>")
    if row is None:
        return not_found()
    return message_page("Moved", f"This is post {row['number']}.", "301 Moved Permanently", [
        ("Location", f"{root}/archive/{list_address(list_row).lower()}/{row['number']}.html")])


class WebAnswer(list):
    """What WebApp returns: the body, and the work that waits for the answer to be complete (WSGI
    calls close() once it has sent the body; `web --listen` and the CGI once the client has it
    all): after_answer's, each with a database of its own."""

    def __init__(self, data, config, later):
        super().__init__([data])
        self.config, self.later = config, later

    def close(self):
        while self.later:
            work = self.later.pop(0)
            try:
                store = open_store(self.config)
                try:
                    work(store)
                finally:
                    store.close()
            except Exception as e:      # the answer is gone: one line in the log
                log.error("web: after the answer: %s: %s", type(e).__name__, one_line(e, 300),
                          exc_info=not isinstance(e, (Failure, StoreError)))


class FileBody:
    """A file an answer sends as it reads it, FileBody.CHUNK bytes at a time, never whole: a month's
    mbox may be hundreds of MB (WebApp.archive)."""
    CHUNK = 262144

    def __init__(self, fh):
        self.fh, self.size = fh, os.fstat(fh.fileno()).st_size

    def __len__(self):
        return self.size

    def chunks(self):
        left = self.size                        # as Content-Length said, even if the file grows
        while left > 0:
            chunk = self.fh.read(min(self.CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk

    def close(self):
        self.fh.close()


class FileAnswer(WebAnswer):
    """A WebAnswer whose body is a FileBody, read a chunk at a time as it is sent (WSGI servers,
    the CGI and `web --listen` iterate it); close() closes the file too."""

    def __init__(self, body, config, later):
        super().__init__(b"", config, later)
        self.body = body

    def __iter__(self):
        return self.body.chunks()

    def close(self):
        self.body.close()
        super().close()


def after_answer(environ, work):
    """Do ``work(store)`` once the answer to this request is complete (WebAnswer), not before it:
    so that what only some requests do (mailing a sign-in link to an owner or a member) takes no
    time the client can see.  Lost if the process dies first (the person asks again)."""
    environ["redsky.after"].append(work)


def log_target(target):
    """A request's path and query as the log keeps them: the capabilities in them (a held post's
    and a one-click leave token, a sign-in link's, a form's or CSRF token: 16 hex digits or more,
    percent-encoded or not, and the values of token, csrf, form and page) as "…".  Linear time."""
    target = re.sub(r"(?i)(^|[?&;])(token|csrf|form|page)=[^&;]*", r"\1\2=…", target)
    return re.sub(r"(?:[0-9a-fA-F]|%3[0-9]|%[46][1-6]){16,}", "…", target)


def page(title, html, status="200 OK", headers=()):
    """An HTML answer of WebApp.route: (status, body, None for HTML, more headers); the body is the
    page's <main> (unless ``html`` has its own)."""
    return status, html_page(title, html if "<main" in html else f"<main>\n{html}\n</main>"), None, \
        list(headers)


def front_page(store):
    """/: every list its owners advertise (the setting advertised), with its description and
    whether its archive is public; the others are not named."""
    items = []
    for r in store.q("all_lists"):
        if r["advertised"]:
            name = list_address(r)
            archive = {"public": f' <a href="archive/{esc(name.lower())}/">archive</a> (public)',
                       "private": " (the archive is for members)"}.get(r["archive"], "")
            about = f"<br><small>{esc(r['description'])}</small>" if r["description"] else ""
            items.append(f'<li><a href="{esc(name.lower())}/">{esc(name)}</a>{archive}{about}</li>')
    return page("Mailing lists", "<h1>Mailing lists</h1>\n"
                + (f"<ul>{''.join(items)}</ul>" if items else "<p>No list is listed here.</p>")
                + '\n<p><a href="manage/">Manage my subscriptions</a></p>')


def message_page(title, text, status="200 OK", headers=()):
    return page(title, f"<h1>{esc(title)}</h1>\n<p>{esc(text)}</p>", status, headers)


def not_found():
    return message_page("Not found", "There is no such page here.", "404 Not Found")


def redirect(name):
    """301 to the folder ``name`` (a list address, looked up) beside the requested path: the
    relative reference ./NAME/, made only of what the route found, never of the path as the client
    spelled it, so that no spelling (backslashes, //, tabs, encoded forms) sends a browser to
    another host, and it holds under any base_url or proxy prefix."""
    from urllib.parse import quote
    target = f"./{quote(name, safe='@.+_-')}/"
    if not re.fullmatch(r"\./(?!\.)[A-Za-z0-9@.+_%-]+/", target):
        return not_found()
    return message_page("Moved", "See the address with a slash.", "301 Moved Permanently",
                        [("Location", target)])


def client_network(config, environ):
    """What a budget counts a client as: its IPv4 address, or its IPv6 /64 (what one customer gets);
    "unknown" without either.  A client among [web] trusted_proxies is a proxy: then the client is
    the last address of X-Forwarded-For that is not one (each proxy appends the address it saw)."""
    import ipaddress
    proxies = []
    for net in config.get("web", "trusted_proxies").replace(",", " ").split():
        try:
            proxies.append(ipaddress.ip_network(net, strict=False))
        except ValueError:
            raise ConfigError(f"[web] trusted_proxies: {net!r} is not a network")
    forwarded = [hop for hop in environ.get("HTTP_X_FORWARDED_FOR", "")[-1000:].split(",") if hop.strip()]
    ip = None
    for hop in [environ.get("REMOTE_ADDR", "")] + forwarded[::-1]:
        try:
            ip = ipaddress.ip_address(hop.strip().strip("[]").split("%")[0])
            ip = ip.ipv4_mapped or ip if ip.version == 6 else ip     # ::ffff:127.0.0.1 is 127.0.0.1
        except ValueError:
            ip = None
        if ip is None or not any(ip in net for net in proxies):
            break
    if ip is None:
        return "unknown"
    return str(ip) if ip.version == 4 else str(ipaddress.ip_network(f"{ip}/64", strict=False))


def web_budget(store, now, budgets):
    """Count one request against each of ``budgets`` ((key, limit, seconds): at most ``limit``
    requests in a window of that many seconds from the first; limit 0: no limit; a fourth item
    counts that many at once, as the mails of one action), all or none:
    returns the key of the first that has no room left (nothing is counted), else None.  Kept in
    the database, so that the CGI's process per request and a running `web` count together."""
    budgets = [b for b in budgets if b[1] > 0]
    if not budgets:
        return None
    with store.transaction():
        return _count_budgets(store, now, budgets)


def _count_budgets(store, now, budgets):
    """web_budget inside the caller's transaction."""
    store.q("budget_prune", now)
    counted = []
    for key, limit, seconds, *weight in budgets:
        row = store.q("budget_get", key).fetchone()
        count, since = (row[0], row[1]) if row and row[1] > now - seconds else (0, now)
        if count + (weight[0] if weight else 1) > limit:
            return key
        counted.append((key, count + (weight[0] if weight else 1), since, since + seconds))
    for row in counted:
        store.q("budget_put", *row)
    return None


def search_refused(config, store, environ):
    """Whether the client's network has used its searches of the minute ([web] search_per_client).
    A budget the database cannot count now (locked) refuses nobody."""
    store.relax()                               # a count worth no extra fsync
    try:
        return web_budget(store, time.time(), [(f"search client {client_network(config, environ)}",
                                                config.number("web", "search_per_client"), 60)]) is not None
    except StoreError as e:
        log.warning("web: search budget not counted: %s", e)
        return False


class _ToldToday(Exception):
    pass


def tell_owners_of_cap(config, store, list_row, now, cap):
    """Tell the owners, once a day, that the list's subscribe form reached [web] subscribe_per_day."""
    owners, outbox = owners_of(list_row), Outbox()
    if not owners:
        return
    Notices(store, config, list_row, outbox).send(
        owners, f"{list_address(list_row)}: the subscribe form reached its daily limit", "web-cap",
        {"cap": str(cap)}, limit=False, auto="auto-generated")

    def once_a_day(db):
        if _count_budgets(store, now, [(f"subscribe day told {list_row['id']}", 1, 86400)]):
            raise _ToldToday
    try:
        outbox.commit(store, config.spool, once_a_day)
        log.warning("web: the subscribe form of %s reached [web] subscribe_per_day (%d); owners told",
                    list_address(list_row), cap)
    except _ToldToday:
        pass


def web_request(config, store, list_row, address, role, action, client=""):
    """Do what mail to LIST-join@ or a LIST-leave+TOKEN@ would (Requests),
    committed with its notices, and keep a trace for `trace`."""
    ctx = Context(config, store)
    ctx.list, ctx.role, ctx.sender = list_row, role, address
    ctx.recipient = list_address(list_row, f"-{role}")
    ctx.client_address = client or None
    req = Requests(ctx, address)
    action(req)
    ctx.outbox.commit(store, config.spool, ctx.apply_changes)
    ctx.outcome, ctx.outcome_reason = "web", "; ".join(req.done) or "nothing to do"
    log.info("web: %s %s%s: %s", role, list_address(list_row), f" from {client}" if client else "",
             ctx.outcome_reason)
    store_event(ctx)


application = WebApp()


# ---------------------------------------------------------------------------
# 21. The web server
# Owns: `web --listen` (an event loop that reads whole requests under one deadline, a share per
#       peer, workers that run the WSGI app, strict HTTP), the CGI entry, and where a server listens
#       and who its peer is (for `lmtp` too).
# Calls: sections 2-20.
# ---------------------------------------------------------------------------

# Where to listen, and who is at the other end (`web --listen`, `lmtp --listen`) --------------

def parse_listen(text, unix=False):
    """--listen as (host, port): HOST:PORT, [IPV6]:PORT, or :PORT for 127.0.0.1; with ``unix`` also
    unix:PATH, as ("unix", PATH).  Anything else is a usage error (64), for `web` and `lmtp` alike."""
    import socket
    usage = "HOST:PORT or [IPV6]:PORT" + (" or unix:PATH" if unix else "")
    if unix and text.startswith("unix:") and len(text) > 5:
        return "unix", text[5:]
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]{2,45})\]|([A-Za-z0-9.-]{0,253})):(\d{1,5})", text)
    ok = m and 0 < int(m.group(3)) < 65536
    if ok and m.group(1):
        try:
            socket.inet_pton(socket.AF_INET6, m.group(1))
        except OSError:
            ok = False
    if not ok:
        raise Failure(f"--listen {text}: use {usage}", EX_USAGE)
    return m.group(1) or m.group(2) or "127.0.0.1", int(m.group(3))


def peer_of(sock, address):
    """Who is at the other end of an accepted connection, as a key for per-peer limits: the IPv4
    address or the IPv6 /64; on loopback or a Unix socket the local user instead (Linux tells whose
    process it is), so that a proxy or an MTA on this host and another user's processes are
    different peers, and one user gains nothing from 127.0.0.2, 127.0.0.3 …"""
    if isinstance(address, tuple):
        host = address[0].split("%")[0]
        if host[:7].lower() == "::ffff:" and "." in host:
            host = host[7:]                             # an IPv4 client of an IPv6 socket
        if ":" not in host:
            if not host.startswith("127."):
                return host
        else:
            import ipaddress
            ip = ipaddress.ip_address(host)
            if not ip.is_loopback:
                return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    uid = _peer_uid(sock, address if isinstance(address, tuple) else None)
    if uid is not None:
        return f"local uid {uid}"
    return host if isinstance(address, tuple) else "local"


def _peer_uid(sock, address):
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED) or of a loopback TCP
    connection (one sock_diag query for exactly that connection: /proc/net/tcp would cost a read of
    every socket, TIME_WAIT ones included), or None where the system does not say."""
    import socket
    import struct
    try:
        if address is None:
            return struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        family, ours, theirs = sock.family, sock.getsockname(), sock.getpeername()

        def packed(ip):
            if family == socket.AF_INET:
                return socket.inet_aton(ip) + bytes(12)
            return socket.inet_pton(socket.AF_INET6, ip.split("%")[0])
        # inet_diag_req_v2 for the peer's own socket: its source is our peer, its destination us
        request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + struct.pack(
            "!HH16s16s", theirs[1], ours[1], packed(theirs[0]), packed(ours[0])) + struct.pack(
            "=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4) as netlink:      # NETLINK_SOCK_DIAG
            netlink.settimeout(0.2)
            netlink.sendto(struct.pack("=IHHII", 16 + len(request), 20, 1, 1, 0) + request, (0, 0))
            answer = netlink.recv(4096)
        # a SOCK_DIAG_BY_FAMILY answer: nlmsghdr, then inet_diag_msg, whose uid is at offset 64
        if len(answer) >= 16 + 72 and struct.unpack_from("=H", answer, 4)[0] == 20:
            return struct.unpack_from("=I", answer, 16 + 64)[0]
    except (OSError, AttributeError, struct.error, ValueError):
        pass
    return None


def listen_socket(host, port):
    """A listening TCP socket on host:port (an IPv4 or IPv6 address, or a name)."""
    import socket
    family, kind, proto, _, address = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0,
                                                         socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


# HTTP/1.1 for `web --listen` (RFC 9112), read strictly: what a proxy in front and this server could
# read two ways is refused, never guessed at.  Every request ends its connection (Connection: close).
HTTP_MAX_REQUEST_LINE = 8 * 1024        # longer: 414
HTTP_MAX_HEAD = 16 * 1024               # request line and fields; more: 431
HTTP_MAX_FIELDS = 64
HTTP_REASONS = {100: "Continue", 400: "Bad Request", 408: "Request Timeout", 411: "Length Required",
                413: "Content Too Large", 414: "URI Too Long", 417: "Expectation Failed",
                431: "Request Header Fields Too Large", 500: "Internal Server Error",
                501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported"}
_HTTP_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_HTTP_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HTTP_ABSOLUTE = re.compile(r"(?i)https?://[^/?#]+(/[^?#]*)?(\?[^#]*)?")
_BARE_LF = re.compile(rb"(?<!\r)\n")


class HTTPRefused(ValueError):
    """A request `web --listen` answers itself with ``status`` (4xx, 5xx), then closes."""

    def __init__(self, status, why):
        super().__init__(why)
        self.status = status


def parse_http_head(head, limit=HTTP_MAX_HEAD):
    """A request's head (the bytes before its empty line) as a dict: method, target, version,
    fields [(lowercased name, value)], path and query, length (the body's) and expect_continue.
    Refused (HTTPRefused): a bare CR or LF, a folded or malformed field, a name with space before its
    colon, control characters, Transfer-Encoding (411 for chunked, else 501: the body's length is
    Content-Length, one number, or nothing), a body over WEB_FORM_MAX_BODY (413; the pages check
    their own, smaller limits), HTTP/1.1 without
    exactly one Host, a version other than 1.0 and 1.1 (505), a head over ``limit`` (431)."""
    if limit and len(head) > limit:
        raise HTTPRefused(431, "head too large")
    lines = head.decode("latin-1").split("\r\n")
    if any("\r" in line or "\n" in line for line in lines):
        raise HTTPRefused(400, "bare CR or LF in the head")
    parts = lines[0].split(" ")
    if len(lines[0]) > HTTP_MAX_REQUEST_LINE:
        raise HTTPRefused(414, "request line too long")
    if len(parts) != 3 or not _HTTP_TOKEN.fullmatch(parts[0]) or not re.fullmatch(r"HTTP/\d\.\d", parts[2]):
        raise HTTPRefused(400, "not a request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise HTTPRefused(505, f"{version} is not spoken here")
    if not re.fullmatch(r"[\x21-\x7e]+", target) or "#" in target:
        raise HTTPRefused(400, "not a request target")
    fields, named = [], collections.defaultdict(list)
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _HTTP_TOKEN.fullmatch(name):        # obs-fold, "Name :", no colon
            raise HTTPRefused(400, "malformed header field")
        value = value.strip(" \t")
        if _HTTP_BAD_VALUE.search(value):
            raise HTTPRefused(400, "control character in a header field")
        fields.append((name.lower(), value))
        named[name.lower()].append(value)
    if len(fields) > HTTP_MAX_FIELDS:
        raise HTTPRefused(431, "too many header fields")
    if "transfer-encoding" in named:
        chunked = named["transfer-encoding"][-1].rsplit(",", 1)[-1].strip().lower() == "chunked"
        raise HTTPRefused(411 if chunked else 501, "Transfer-Encoding in a request (send Content-Length)")
    lengths = named.get("content-length", [])
    if len(lengths) > 1 or (lengths and not re.fullmatch(r"\d{1,12}", lengths[0])):
        raise HTTPRefused(400, "Content-Length is not one number")
    length = int(lengths[0]) if lengths else 0
    if length > WEB_FORM_MAX_BODY:
        raise HTTPRefused(413, f"a body of {length} bytes")
    if len(named.get("host", [])) > 1 or (version == "HTTP/1.1" and "host" not in named):
        raise HTTPRefused(400, "HTTP/1.1 takes exactly one Host")
    expect = [v.lower() for v in named.get("expect", [])]
    if expect and expect != ["100-continue"]:
        raise HTTPRefused(417, "unknown Expect")
    if target.startswith("/"):
        path, _, query = target.partition("?")
    elif target == "*" and method == "OPTIONS":
        path, query = "*", ""
    else:
        m = _HTTP_ABSOLUTE.fullmatch(target)
        if not m:
            raise HTTPRefused(400, "not a request target")
        path, query = m.group(1) or "/", (m.group(2) or "?")[1:]
    return {"method": method, "target": target, "version": version, "fields": fields, "path": path,
            "query": query, "length": length,
            "expect_continue": bool(expect) and version == "HTTP/1.1" and length > 0}


class RequestReader:
    """One request's bytes as they arrive: feed() returns None until the head and the body are whole,
    then (request, body) with parse_http_head's request; raises HTTPRefused.  Each byte is looked at a
    bounded number of times, however the client cuts what it sends."""

    def __init__(self):
        self.buffer, self.request, self.received = bytearray(), None, 0

    def feed(self, data):
        old = len(self.buffer)
        self.buffer += data
        self.received += len(data)
        if self.request is None:
            end = self.buffer.find(b"\r\n\r\n", max(0, old - 3))
            if end < 0:
                if _BARE_LF.search(self.buffer, old):
                    raise HTTPRefused(400, "bare LF in the head")
                if len(self.buffer) > HTTP_MAX_HEAD:
                    line_end = self.buffer.find(b"\r\n", 0, HTTP_MAX_REQUEST_LINE + 2)
                    raise HTTPRefused(431 if line_end >= 0 else 414, "head too large")
                return None
            self.request = parse_http_head(bytes(self.buffer[:end]))
            del self.buffer[:end + 4]
        if len(self.buffer) < self.request["length"]:
            return None
        return self.request, bytes(self.buffer[:self.request["length"]])


def wsgi_environ(request, body, address, server, peer):
    """The WSGI environ (PEP 3333) of a request read by RequestReader: PATH_INFO unquoted as latin-1
    (as wsgiref does), a header field named with "_" left out (it would pass for one with "-")."""
    import io
    from urllib.parse import unquote
    remote = address[0] if isinstance(address, tuple) else ""
    if remote.lower().startswith("::ffff:") and "." in remote:
        remote = remote[7:]                 # an IPv4 client of an IPv6 socket is an IPv4 client
    environ = {"REQUEST_METHOD": request["method"], "SCRIPT_NAME": "",
               "PATH_INFO": unquote(request["path"], "latin-1"), "QUERY_STRING": request["query"],
               "SERVER_NAME": str(server[0]), "SERVER_PORT": str(server[1]),
               "SERVER_PROTOCOL": request["version"], "SERVER_SOFTWARE": "redsky",
               "GATEWAY_INTERFACE": "CGI/1.1", "REMOTE_ADDR": remote,
               "REMOTE_PORT": str(address[1]) if isinstance(address, tuple) else "",
               "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
               "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
               "wsgi.run_once": False, "redsky.peer": peer}
    for name, value in request["fields"]:
        if name in ("content-type", "content-length"):
            environ[name.upper().replace("-", "_")] = value
        elif "_" not in name:
            key = "HTTP_" + name.upper().replace("-", "_")
            environ[key] = f"{environ[key]}{'; ' if key == 'HTTP_COOKIE' else ', '}{value}" \
                if key in environ else value
    return environ


WSGI_WHOLE = 1 << 20        # bytes of an answer run_wsgi takes whole; the rest is sent as it is read


def run_wsgi(app, environ):
    """(status, headers, body, result, rest) of one call of a WSGI application: its body whole up to
    WSGI_WHOLE bytes (pages are small), ``rest`` the iterator of what follows (a large file: sent as
    read) or None; the caller closes ``result`` once the client has the answer (WebAnswer's work
    waits)."""
    answer, chunks, size, rest = {}, [], 0, None

    def start_response(status, headers, exc_info=None):
        if "status" in answer and not exc_info:
            raise AssertionError("start_response called twice without exc_info")
        answer["status"], answer["headers"] = status, list(headers)    # nothing is sent before the end
        return chunks.append
    result = app(environ, start_response)
    try:
        it = iter(result)
        for chunk in it:
            chunks.append(chunk)
            size += len(chunk)
            if size >= WSGI_WHOLE:
                rest = it
                break
        if "status" not in answer:
            raise AssertionError("the application never called start_response")
    except BaseException:
        if hasattr(result, "close"):
            result.close()
        raise
    if rest is not None and not any(n.lower() == "content-length" for n, _ in answer["headers"]):
        chunks.extend(rest)                     # no length to announce: whole, as before
        rest = None
    return answer["status"], answer["headers"], b"".join(chunks), result, rest


def http_response(status, headers, body, method, streamed=False):
    """The bytes of an answer: the application's status and fields (checked: no CR, LF or other
    control character can split it), a true Content-Length, Date and Connection: close; HEAD and
    204/304 without a body."""
    if not re.fullmatch(r"[1-5]\d\d [^\x00-\x1f\x7f]*", status):
        raise ValueError(f"bad status {status!r}")
    code, lines, length = int(status[:3]), [f"HTTP/1.1 {status}"], None
    for name, value in headers:
        if not _HTTP_TOKEN.fullmatch(name) or _HTTP_BAD_VALUE.search(value):
            raise ValueError(f"bad header field {name!r}")
        if name.lower() == "content-length":
            length = value
        elif name.lower() not in ("connection", "keep-alive", "transfer-encoding", "date"):
            lines.append(f"{name}: {value}")
    no_body = method == "HEAD" or code in (204, 304) or code < 200
    if method == "HEAD" and length is not None:
        lines.append(f"Content-Length: {length}")       # what GET would send
    elif code >= 200 and code != 204 and method != "HEAD":
        lines.append(f"Content-Length: {length if streamed else len(body)}")     # streamed: the app's
    lines += [time.strftime("Date: %a, %d %b %Y %H:%M:%S GMT", time.gmtime()), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if no_body else body)


def http_refusal(status):
    """The server's own short answer (400, 408, 413, 503 …), closing the connection."""
    reason = HTTP_REASONS[status]
    body = f"{status} {reason}\n".encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nContent-Security-Policy: default-src 'none'\r\n"
            "X-Content-Type-Options: nosniff\r\n" + ("Retry-After: 10\r\n" if status == 503 else "")
            + "Connection: close\r\n\r\n").encode() + body


class WebClient:
    """One connection of WebServer: its peer, phase (head, queued, write, linger), deadline and bytes."""

    def __init__(self, sock, address, peer, deadline):
        self.sock, self.address, self.peer, self.deadline = sock, address, peer, deadline
        self.phase, self.reader, self.out, self.sent, self.drained = "head", RequestReader(), None, 0, 0
        self.continued, self.counted = False, True       # counted: in its peer's share (not once answered)
        self.rest, self.result = None, None               # a streamed answer: its next chunks, its result
        self.events = 0                                   # what the selector watches for it


class WebServer:
    """`web --listen`.  One thread runs an event loop (selectors) that accepts connections and reads
    each request, head and body, under one deadline ([web] timeout: then 408 and one log line), and
    writes the answers; [web] workers threads run the WSGI application on whole requests only, so a
    slow client holds a socket, never a thread.  A peer (peer_of) has at most [web] peer_connections
    connections open (more get 503), all peers [web] connections (more are closed at once)."""

    LINGER = 2.0            # seconds to read and drop what a client still sends after its answer
    AFTER_ANSWER = 0.01     # seconds the CPU is left to a proxy or client on this host to take an
                            # answer, before the work that waited for it (mailing a sign-in link)

    def __init__(self, app, config, listener):
        import queue
        import selectors
        import socket
        self.app, self.listener = app, listener
        self.timeout = config.duration("web", "timeout")
        self.workers = max(1, int(config.number("web", "workers")))
        self.max_connections = max(1, int(config.number("web", "connections")))
        self.per_peer = max(1, int(config.number("web", "peer_connections")))
        self.selector, self.jobs, self.done = selectors.DefaultSelector(), queue.Queue(), collections.deque()
        self.wake_r, self.wake_w = socket.socketpair()
        for sock in (listener, self.wake_r, self.wake_w):
            sock.setblocking(False)
        self.clients, self.peers, self.told = set(), collections.Counter(), {}
        self.lingering = collections.deque()    # answered connections, oldest first: closed first when full
        self.server_address = listener.getsockname()[:2]
        self.stopping, self.next_expiry, self.accepting = False, float("inf"), 0.0
        self.READ, self.WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE

    def stop(self, *_):
        """SIGTERM, SIGINT: take no new request, answer those being served, then return."""
        self.stopping = True
        self.wake()

    def wake(self):
        try:
            self.wake_w.send(b"\0")
        except OSError:             # full: the loop has a wake-up waiting already
            pass

    def serve_forever(self):
        import threading
        threads = [threading.Thread(target=self.work, name=f"web-{i}", daemon=True)
                   for i in range(self.workers)]
        for thread in threads:
            thread.start()
        self.selector.register(self.listener, self.READ)
        self.selector.register(self.wake_r, self.READ)
        stop_by = None
        try:
            while True:
                if self.stopping:
                    if stop_by is None:     # no new connection; requests not whole yet are dropped
                        stop_by = time.monotonic() + self.timeout + self.LINGER
                        if not self.accepting:
                            self.selector.unregister(self.listener)
                        for client in [c for c in self.clients if c.phase == "head"]:
                            self.close(client)
                    if not self.clients or time.monotonic() >= stop_by:
                        break
                wait = min(max(0.0, self.next_expiry - time.monotonic()), 1.0)
                for key, events in self.selector.select(wait):
                    while self.done:            # first: what they free counts for new connections
                        self.answer(*self.done.popleft())
                    if key.fileobj is self.listener:
                        self.accept()
                    elif key.fileobj is self.wake_r:
                        self.wake_r.recv(4096)
                    elif events & self.WRITE:
                        self.write(key.data)
                    else:
                        self.read(key.data)
                while self.done:
                    self.answer(*self.done.popleft())
                now = time.monotonic()
                if now >= self.next_expiry:
                    self.expire(now)
                if self.accepting and now >= self.accepting and not self.stopping:
                    self.accepting = 0.0
                    self.selector.register(self.listener, self.READ)
        finally:
            for _ in threads:
                self.jobs.put(None)
            for thread in threads:          # what a worker is doing (a commit, a spool file) ends first
                thread.join(self.timeout)
            for client in list(self.clients):
                self.close(client)
            self.selector.close()
            for sock in (self.listener, self.wake_r, self.wake_w):
                sock.close()

    def accept(self):
        for _ in range(64):
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:        # out of file descriptors: stop accepting for a second
                log.warning("web: cannot accept a connection: %s", e.strerror or e)
                self.selector.unregister(self.listener)
                self.accepting = time.monotonic() + 1.0
                return
            sock.setblocking(False)
            try:
                peer = peer_of(sock, address)
            except (OSError, ValueError):
                peer = str(address)
            while len(self.clients) >= self.max_connections and self.lingering:
                self.close(self.lingering.popleft())
            if len(self.clients) >= self.max_connections or self.peers[peer] >= self.per_peer:
                self.refuse(sock, peer, len(self.clients) < self.max_connections)
                continue
            client = WebClient(sock, address, peer, time.monotonic() + self.timeout)
            self.clients.add(client)
            self.peers[peer] += 1
            self.next_expiry = min(self.next_expiry, client.deadline)
            self.watch(client, self.READ)
            self.read(client)

    def refuse(self, sock, peer, answer):
        """A peer over its share gets 503 at once (what it sent so far is read first, so that the
        close does not reset the answer away); past [web] connections a connection is just closed."""
        if answer:
            try:
                sock.recv(65536)
            except OSError:
                pass
            try:
                sock.send(http_refusal(503))
            except OSError:
                pass
        sock.close()
        now = time.monotonic()
        if self.told.get(peer, 0) < now - 60:         # one line a minute per peer, not one per connection
            if len(self.told) > 1000:
                self.told.clear()
            self.told[peer] = now
            log.warning("web: %s: %s", peer, f"{self.peers[peer]} connections open, more refused (503)"
                        if answer else f"{len(self.clients)} connections open in all, more closed")

    def read(self, client):
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if client.phase == "linger":
            client.drained += len(data)
            if not data or client.drained > 65536:
                self.close(client)
            return
        if not data:                # gone before its request was whole: nobody to answer
            self.close(client)
            return
        try:
            whole = client.reader.feed(data)
        except HTTPRefused as e:
            log.info("web: %s: %s %s: %s", client.address[0], e.status, HTTP_REASONS[e.status], e)
            self.answer(client, http_refusal(e.status))
            return
        if whole is None:
            request = client.reader.request
            if request and request["expect_continue"] and not client.continued:
                client.continued = True
                try:
                    client.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                except OSError:
                    pass
            return
        self.watch(client, 0)
        client.phase, client.deadline = "queued", float("inf")
        self.jobs.put((client, whole))

    def work(self):
        """A worker thread: run the application on whole requests, hand the answers to the loop."""
        import socket
        while True:
            job = self.jobs.get()
            if job is None:
                return
            client, (request, body) = job
            result = rest = None
            try:
                environ = wsgi_environ(request, body, client.address, self.server_address, client.peer)
                status, headers, data, result, rest = run_wsgi(self.app, environ)
                answer = http_response(status, headers, data, request["method"], rest is not None)
            except Exception as e:
                log.error("web: %s %s: %s: %s", request["method"], log_target(request["path"]),
                          type(e).__name__, one_line(e, 300), exc_info=True)
                status, answer, data = "500", http_refusal(500), b""
            log.info('web: %s "%s %s %s" %s %d', client.address[0] if isinstance(client.address, tuple)
                     else "-", request["method"], log_target(request["target"][:300]), request["version"],
                     status[:3], len(data))
            if rest is not None:    # a large file: the loop sends it as it reads it, then closes result
                client.rest, client.result = rest, result
                self.done.append((client, answer))
                self.wake()
                continue
            try:                    # the usual case: the socket takes it all at once, no thread switch
                sent = client.sock.send(answer)
                if sent == len(answer):
                    client.sock.shutdown(socket.SHUT_WR)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = None
            if sent == len(answer):
                self.done.append((client, None))            # the loop only lingers, when it comes to it
            else:
                self.done.append((client, False if sent is None else answer[sent:]))
                self.wake()
            if hasattr(result, "close"):    # the answer is the client's: now what waited for it
                if getattr(result, "later", None):
                    time.sleep(self.AFTER_ANSWER)
                try:
                    result.close()
                except Exception as e:
                    log.error("web: after the answer: %s: %s", type(e).__name__, one_line(e, 300))

    def answer(self, client, data):
        """Send ``data`` (bytes still to send; None: a worker sent it all and half-closed; False:
        the connection failed)."""
        if client not in self.clients:          # closed meanwhile (stopping)
            return
        if data is None or data is False:
            return self.linger(client) if data is None else self.close(client)
        client.out, client.sent, client.phase = memoryview(data), 0, "write"
        client.deadline = time.monotonic() + self.timeout + len(data) / 65536
        self.next_expiry = min(self.next_expiry, client.deadline)
        self.watch(client, self.WRITE)
        self.write(client)

    def write(self, client):
        import socket
        try:
            client.sent += client.sock.send(client.out[client.sent:client.sent + 262144])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(client)
            return
        if client.sent < len(client.out):
            return
        chunk = next(client.rest, None) if client.rest is not None else None
        if chunk:                   # a streamed answer's next chunk, with its own time to be taken
            client.out, client.sent = memoryview(chunk), 0
            client.deadline = time.monotonic() + self.timeout + len(chunk) / 65536
            self.next_expiry = min(self.next_expiry, client.deadline)
            return
        self.end_stream(client)
        try:                        # all sent: read and drop what still comes, then close
            client.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(client)
            return
        self.linger(client)

    def linger(self, client):
        """The answer is sent and the sending side closed: read and drop what the client still sends
        until it closes (so that closing does not reset the answer away), for LINGER seconds."""
        client.out, client.phase, client.deadline = None, "linger", time.monotonic() + self.LINGER
        self.next_expiry = min(self.next_expiry, client.deadline)
        self.watch(client, self.READ)
        self.release(client)                # answered: no longer in its peer's share
        self.lingering.append(client)
        while self.lingering[0] not in self.clients:        # closed since: at most LINGER's worth stay
            self.lingering.popleft()

    def expire(self, now):
        """Close the connections past their deadline: one log line each, never a traceback."""
        upcoming = float("inf")
        for client in list(self.clients):
            if client.deadline > now:
                upcoming = min(upcoming, client.deadline)
                continue
            if client.phase == "head":
                log.info("web: %s: no whole request within %gs (%d bytes came): 408, closed",
                         client.address[0] if isinstance(client.address, tuple) else client.peer,
                         self.timeout, client.reader.received)
                if client.reader.received:
                    try:
                        client.sock.send(http_refusal(408))
                    except OSError:
                        pass
            elif client.phase == "write":
                log.info("web: %s: the answer was not taken within the deadline: closed", client.peer)
            self.close(client)
        self.next_expiry = upcoming

    def watch(self, client, events):
        if events == client.events:
            return
        if not events:
            self.selector.unregister(client.sock)
        elif client.events:
            self.selector.modify(client.sock, events, client)
        else:
            self.selector.register(client.sock, events, client)
        client.events = events

    def release(self, client):
        if client.counted:
            client.counted = False
            self.peers[client.peer] -= 1
            if self.peers[client.peer] <= 0:
                del self.peers[client.peer]

    def end_stream(self, client):
        """A streamed answer is over (sent, or its connection closed): its file closed."""
        result, client.rest, client.result = client.result, None, None
        if result is not None:
            try:
                result.close()
            except Exception as e:
                log.error("web: after the answer: %s: %s", type(e).__name__, one_line(e, 300))

    def close(self, client):
        self.end_stream(client)
        if client not in self.clients:
            return
        self.clients.discard(client)
        self.release(client)
        if client.events:
            self.selector.unregister(client.sock)
        client.sock.close()


def cmd_web(args, config):
    """Serve the web pages on --listen HOST:PORT (for a reverse proxy, or to try them) until SIGTERM
    (WebServer: one event loop reads requests, [web] workers threads run WebApp)."""
    import signal
    host, port = parse_listen(args.listen)
    try:
        listener = listen_socket(host, port)
    except OSError as e:
        raise Failure(f"cannot listen on {args.listen}: {e.strerror or e}", EX_CONFIG)
    server = WebServer(WebApp(config), config, listener)
    signal.signal(signal.SIGTERM, server.stop)
    signal.signal(signal.SIGINT, server.stop)
    log.info("web: serving on %s", args.listen)
    print(f"serving on http://{args.listen}/ (Ctrl-C to stop)", flush=True)
    server.serve_forever()
    return EX_OK


def run_cgi():
    """Run as a CGI script (Apache, lighttpd, nginx + fcgiwrap): config from $REDSKY_CONFIG, and
    [redsky] umask, as every command has it (the web server's own umask would leave files others
    may read).  A script that cannot start (a bad config, a data_dir it cannot share with the list
    user: refuse_unshared_writes) answers 503 and tells the web server's error log why.  The answer
    is complete when stdout and stderr are closed (fcgiwrap waits for both, Apache for stdout): only
    then does the work that waits for it (WebAnswer) run, at a lower priority than the web server
    that passes the answer on, and deaf to the SIGTERM Apache sends a script still running after its
    answer (it kills it 3 s later)."""
    import signal
    from wsgiref.handlers import CGIHandler
    try:
        config = Config.find(None)
        os.umask(config.umask)
        refuse_unshared_writes(config)          # before the log file: nothing the list user cannot use
        setup_logging(config)
    except Failure as e:                        # the why for the web server's error log, not the client
        print(f"redsky: {e}", file=sys.stderr)
        sys.stdout.write("Status: 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 60\r\n"
                         "\r\nNot now: please try again later.\n")
        return

    class Handler(CGIHandler):
        def close(self):
            try:
                self.stdout.flush()
                sys.stderr.flush()
            except OSError:
                pass
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            nothing = os.open(os.devnull, os.O_WRONLY)
            for fd in (1, 2):               # the web server's ends: the answer is complete
                os.dup2(nothing, fd)
            os.close(nothing)
            try:
                if getattr(self.result, "later", None):
                    os.nice(10)
            except OSError:
                pass
            super().close()
    Handler().run(WebApp(config))


# ---------------------------------------------------------------------------
# 22. Signing in and the member's pages
# Owns: sign-in links and sessions (web_sessions: only a hash of the id is kept), the CSRF token of a
#       session's forms, the web's page register (web_page), /manage/: members help themselves.
# Calls: sections 2-21.
# ---------------------------------------------------------------------------

SESSION_COOKIES = {"owner": "redsky_owner", "member": "redsky_member"}
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")
SIGNIN_COOKIE = "redsky_signin"         # the sign-in page's own (signin_with_link)
_SIGNIN_NONCE = re.compile(r"[A-Za-z0-9_-]{22}")


def read_form(environ, limit=WEB_FORM_MAX_BODY):
    """{name: [values, ...]} of a POSTed urlencoded form (a name may come more than once: the
    checked boxes of a list); None if it is too large."""
    from urllib.parse import parse_qsl
    length = environ.get("CONTENT_LENGTH") or "0"
    if not re.fullmatch(r"\d{1,9}", length) or int(length) > limit:
        return None
    fields = {}
    try:
        pairs = parse_qsl(environ["wsgi.input"].read(int(length)).decode("utf-8", "replace"),
                          keep_blank_values=True, max_num_fields=2000)
    except ValueError:
        return None
    for name, value in pairs:
        fields.setdefault(name[:100], []).append(value.replace("\r\n", "\n"))
    return fields


def field(fields, name, default=""):
    """The first value of ``name`` in a read_form form."""
    return (fields.get(name) or [default])[0]


def base_path(config, environ):
    """The path this application is published at: [web] base_url's, else SCRIPT_NAME (CGI)."""
    from urllib.parse import urlsplit
    base = config.get("web", "base_url")
    return (urlsplit(base).path if base else environ.get("SCRIPT_NAME", "")).rstrip("/")


def session_hash(session_id):
    import hashlib
    return hashlib.sha256(session_id.encode()).hexdigest()


def session_cookie(config, kind, value, path, max_age):
    """A Set-Cookie header: HttpOnly, SameSite=Strict, Secure under an https base_url, for ``path``."""
    secure = "; Secure" if config.get("web", "base_url").lower().startswith("https:") else ""
    return ("Set-Cookie", f"{SESSION_COOKIES.get(kind, kind)}={value}; Path={path}; Max-Age={int(max_age)};"
                          f" HttpOnly; SameSite=Strict{secure}")


def start_session(config, store, kind, list_row, address, path):
    """A new session of ``kind`` (an owner of ``list_row``, or a member): only the hash of its id
    is stored; returns the Set-Cookie header that hands the id to the browser."""
    import secrets
    session_id, now = secrets.token_urlsafe(32), time.time()
    max_age = config.duration("web", "session_max_age")
    with store.transaction():
        store.q("session_prune", now)
        store.q("session_add", session_hash(session_id), kind, list_row["id"] if list_row else None, address,
                now, now + max_age)
    return session_cookie(config, kind, session_id, path, max_age)


def cookie_values(environ, name):
    """The values of the cookies called ``name`` in the request's Cookie header (its first 8 KB)."""
    return re.findall(rf"(?:^|;)\s*{re.escape(name)}=([^;\s]*)", environ.get("HTTP_COOKIE", "")[:8000])


def current_session(store, environ, kind, list_row=None):
    """The session of ``kind`` the request's cookie names, or None: one that exists, has not
    expired, and (an owner's) is for this list and an address that still owns it."""
    for session_id in cookie_values(environ, SESSION_COOKIES[kind])[:4]:
        if not _SESSION_ID.fullmatch(session_id):
            continue
        row = store.q("session_get", session_hash(session_id), time.time()).fetchone()
        if row is None or row["kind"] != kind:
            continue
        if kind == "owner" and (list_row is None or row["list_id"] != list_row["id"] or row["address"].lower()
                                not in {o.lower() for o in owners_of(list_row)}):
            continue
        return {**dict(row), "hash": session_hash(session_id)}
    return None


def end_session(store, session):
    with store.transaction():
        store.q("session_end", session["hash"])


def csrf_field(key, session, scope):
    """The hidden field every form of a signed-in page carries: a token signed for this session."""
    return f'<input type="hidden" name="csrf" value="{sign_token(key, "csrf", scope, session["hash"])}">'


def csrf_ok(config, key, session, scope, fields):
    """Whether a POSTed form carries a CSRF token of this session (csrf_field)."""
    return check_token(key, "csrf", scope, session["hash"], field(fields, "csrf"), time.time(),
                       config.duration("web", "session_max_age"))[0] == "ok"


def web_event(config, store, list_row, who, lines, message_id="", outcome="web", page="admin"):
    """Keep what ``who`` did on the web for `trace` (a held post's Message-ID) and `whois`: an event
    of the list whose sender is ``who`` and whose trace says, line by line, what was done; its
    recipient names the page (the list's admin, or a member's /manage/)."""
    ctx = Context(config, store)
    ctx.list, ctx.sender, ctx.message_id = list_row, who, message_id
    ctx.recipient = f"{list_address(list_row).lower()}/admin (web)" if page == "admin" else "manage (web)"
    ctx.trace = [("web", one_line(line, 300)) for line in lines]
    ctx.outcome, ctx.outcome_reason = outcome, one_line(f"by {who} on the web: " + "; ".join(lines), 500)
    log.info("web: %s: %s", list_address(list_row), ctx.outcome_reason)
    store_event(ctx)


def signin_form(config, key, client, purpose, scope, action, label, error=""):
    """The form that asks for an address to mail a sign-in link to, with a signed form token."""
    return ((f'<p role="alert"><strong>{esc(error)}</strong></p>\n' if error else "")
            + ("" if config.get("web", "base_url") else "<p><strong>This site has no [web] base_url set, so"
               " it cannot mail sign-in links.</strong></p>\n")
            + f'<form method="post" action="{action}"><input type="hidden" name="form"'
            f' value="{sign_token(key, purpose, scope, client)}">\n'
            f'<p><label for="address">{esc(label)}</label><br>'
            '<input type="email" id="address" name="address" autocomplete="email" required></p>\n'
            '<button>Mail me a link</button></form>\n')


def own_origin(url):
    """scheme://host[:port] of ``url``, lower-cased, the default port left out: what a browser's
    Origin says of a page there; "" if ``url`` is not http(s)."""
    from urllib.parse import urlsplit
    try:
        parts = urlsplit(url.strip()[:2000])
        port = parts.port
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}[parts.scheme.lower()]
    return f"{parts.scheme.lower()}://{host.lower()}" + (f":{port}" if port and port != default else "")


def cross_site(config, environ, null_origin=True):
    """Whether a POST comes from another site's page, as the browser tells it: Sec-Fetch-Site says
    cross-site or same-site (a sibling host, which could also set cookies for this one); without
    it, an Origin that is not base_url's.  "Origin: null" passes only with ``null_origin``: this
    site's no-referrer pages make browsers send it for their own forms, but another site's page
    can have it sent too (the sign-in link's page is same-origin: its browser names this site).
    A client that tells neither (an old browser, a script) is not refused here: the sign-in page's
    cookie (signin_with_link) holds for it."""
    fetch_site = environ.get("HTTP_SEC_FETCH_SITE", "").strip().lower()
    if fetch_site:
        return fetch_site not in ("same-origin", "none")
    origin, base = environ.get("HTTP_ORIGIN", "").strip().lower(), config.get("web", "base_url")
    if not origin or not base or (origin == "null" and null_origin):
        return False
    return own_origin(origin) != own_origin(base)


def signin_budgets(config, address, client):
    """The budgets a sign-in link mailed to ``address`` at the asking of ``client`` (its network)
    spends, an hour each: [web] signin_per_address from that network, and signin_per_address_all
    from all networks together, so that strangers elsewhere cannot spend the budget of the
    address's owner on their own network (only many networks can), nor flood the address.  The one
    place that says which address a budget counts."""
    key = address.lower()
    return [(f"signin address {key} from {client}", config.number("web", "signin_per_address"), 3600),
            (f"signin address {key}", config.number("web", "signin_per_address_all"), 3600)]


def signin_request(config, store, environ, fields, purpose, scope, qualifies, send):
    """A POSTed sign-in form: from this site's page (cross_site), with a fresh form token
    (``purpose``, ``scope``, the client's network); the client's network and the address have room
    in their hours ([web] signin_per_client, signin_budgets); then, if ``qualifies(address)``,
    ``send(store, address)`` mails the link once the answer has gone (after_answer), so that the
    answer takes the same work whoever is typed.  The answer is the same whatever the address:
    returns (what was typed, "") or ("", what to try again)."""
    client, now = client_network(config, environ), time.time()
    address = typed = field(fields, "address").strip()[:254]
    verdict, nonce = check_token(store.verp_key, purpose, scope, client, field(fields, "form"), now,
                                 config.duration("web", "form_max_age"))
    if verdict != "ok" or cross_site(config, environ):
        log.info("web: sign-in form for %s from %s refused: %s", scope, client,
                 "another site's" if verdict == "ok" else f"form {verdict}")
        return "", "Please try again: the form was too old, or not this page's."
    budgets = [(f"signin client {client}", config.number("web", "signin_per_client"), 3600),
               (f"form {nonce}", 1, config.duration("web", "form_max_age"))]
    if valid_address(address) and not address.startswith("-"):
        address = normalize_address(address)
        budgets += signin_budgets(config, address, client)
    refused = web_budget(store, now, budgets)
    if refused:
        log.info("web: sign-in link for %s from %s refused: no room in %s", scope, client, refused)
    elif valid_address(address) and qualifies(address):
        after_answer(environ, lambda later: send(later, address))
    return typed, ""


def mail_signin_link(config, store, list_row, address, link, owner):
    """The sign-in ``link`` of an ``owner`` (else a member) to ``address``, committed now (from the
    list's -request address; the forms call it once their answer has gone, signin_request).
    Without [web] base_url there is no link to mail: a link is never made of the Host a request
    names (a forged Host would have the owner mailed a link to another site)."""
    if not link:
        log.warning("web: no sign-in link mailed to %s: [web] base_url is not set", address)
        return
    outbox = Outbox()
    Notices(store, config, list_row, outbox).send(
        [address], f"{list_address(list_row)}: your sign-in link", "admin-link" if owner else "member-link",
        {"address": address, "link": link, "minutes": f"{config.duration('web', 'link_max_age') / 60:g}"},
        limit=False, auto="auto-generated")
    outbox.commit(store, config.spool)
    log.info("web: a sign-in link (%s) mailed to %s", "owner" if owner else "member", address)


def signin_with_link(config, store, environ, method, fields, kind, list_row, what):
    """/…/signin?who=ADDRESS&token=TOKEN, the link a sign-in mail carries.  GET shows a button only
    (mail scanners fetch links); its POST, with a token made for this purpose, list and address, at
    most [web] link_max_age old and never used before, by an address that may sign in, starts a
    session and goes on to the signed-in page.  Anything else gets one answer."""
    from urllib.parse import parse_qs
    query = parse_qs(environ.get("QUERY_STRING", "")[:2000])
    who = field(fields, "who") if method == "POST" else (query.get("who") or [""])[0]
    token = field(fields, "token") if method == "POST" else (query.get("token") or [""])[0]
    purpose, scope = (f"{kind}-signin", list_address(list_row) if list_row else "*")
    now, max_age = time.time(), config.duration("web", "link_max_age")
    path = base_path(config, environ) + (f"/{list_address(list_row).lower()}/admin/" if kind == "owner"
                                         else "/manage/")
    # Login CSRF: a POST counts only from this page in this browser: another site's page (cross_site)
    # could sign its visitor in as whoever sent it the link, and a browser that does not say where
    # a POST comes from must bring this page's cookie (SameSite=Strict: no other site's page sends
    # it) and the field signed for it
    nonces = [n for n in cookie_values(environ, SIGNIN_COOKIE)[:4] if _SIGNIN_NONCE.fullmatch(n)]
    if method == "POST" and (cross_site(config, environ, null_origin=False) or not any(
            check_token(store.verp_key, "signin-page", f"{kind} {scope}", n, field(fields, "page"), now,
                        max_age)[0] == "ok" for n in nonces)):
        log.info("web: %s sign-in for %s refused: not from the sign-in page in this browser", kind, scope)
        return message_page("Please open the link again", "This button works only on the page the link"
                            " opens, in the browser that opened it, with cookies on. Open the link of the"
                            " mail again (it works until it is used).", "400 Bad Request")
    verdict, nonce = check_token(store.verp_key, purpose, scope, who.lower()[:254], token, now, max_age)
    allowed = verdict == "ok" and (who.lower() in {o.lower() for o in owners_of(list_row)} if kind == "owner"
                                   else bool(store.q("member_lists", who).fetchone()))
    if allowed and method == "POST":
        allowed = web_budget(store, now, [(f"signin {nonce}", 1, max_age)]) is None        # once
    if not allowed:
        log.info("web: %s sign-in for %s refused: %s", kind, scope, verdict if verdict != "ok" else
                 "used, or not allowed")
        return message_page("This link does not work", "It was used already, is too old, or is not for this"
                            " page. Ask for a new one where you asked for this one.", "400 Bad Request")
    if method != "POST":
        import secrets
        pass_nonce = nonces[0] if nonces else secrets.token_urlsafe(16)
        page_field = sign_token(store.verp_key, "signin-page", f"{kind} {scope}", pass_nonce)
        return page("Sign in", f"<h1>Sign in</h1>\n<p>Sign in as {esc(who)} to {esc(what)}.</p>\n"
                    '<form method="post"><input type="hidden" name="who" value="' + esc(who) + '">'
                    f'<input type="hidden" name="token" value="{esc(token)}">'
                    f'<input type="hidden" name="page" value="{page_field}">'
                    "<button>Sign in</button></form>", "200 OK",
                    [session_cookie(config, SIGNIN_COOKIE, pass_nonce, path + "signin", max_age),
                     ("Referrer-Policy", "same-origin")])       # its button's POST names this site
    cookie = start_session(config, store, kind, list_row, normalize_address(who), path)
    log.info("web: %s %s signed in for %s", kind, who, scope)
    return message_page("Signed in", "Signed in; on to your page.", "303 See Other",
                        [cookie, ("Location", "./")])


def signed_out_page(config, kind, path, session, store):
    if session is not None:
        end_session(store, session)
    return message_page("Signed out", "You are signed out. The link of a sign-in mail works once only:"
                        " ask for a new one to sign in again.", "200 OK",
                        [session_cookie(config, kind, "", path, 0)])


def utc_day(value):
    """A YYYY-MM-DD day as the Unix time of its start (UTC), or None."""
    from datetime import datetime, timezone
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value or ""):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


# The member's pages ------------------------------------------------------------
# /manage/ asks for an address and mails it a sign-in link (the same answer whatever its state);
# signed in, it shows every list of this host the address is on, with its options.  Changes are
# made at once: the link proved control of the address (by email, a change that stops or delays
# mail waits for a confirmation instead).  As in Mailman's Postorius, changing options sends no
# mail; leaving sends the list's goodbye.

DIGEST_FORMATS = {"": "as the list sends them", "mime": "MIME (each post attached)",
                  "plain": "plain text (RFC 1153)"}


def digest_format_options(chosen):
    return "".join(f'<option value="{v}"{" selected" * (chosen == v)}>{esc(t)}</option>'
                   for v, t in DIGEST_FORMATS.items())


def day_field(id_, label, until, on):
    """A text field for a day (YYYY-MM-DD), filled with ``until`` when ``on``."""
    shown = time.strftime("%Y-%m-%d", time.gmtime(until)) if until and on else ""
    return (f'<p><label for="{id_}">{label}</label><br><input id="{id_}" name="until" inputmode="numeric"'
            f' pattern="[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}" value="{shown}"></p>\n')


@web_page(r"/manage/(|signin|signout)")
def manage_pages(app, config, store, environ, method, m):
    fields = read_form(environ) if method == "POST" else {}
    if fields is None:
        return message_page("Too large", "That request is too large.", "413 Payload Too Large")
    path, key = base_path(config, environ) + "/manage/", store.verp_key
    if m.group(1) == "signin":
        return signin_with_link(config, store, environ, method, fields, "member", None,
                                "manage your subscriptions on this host")
    session = current_session(store, environ, "member")
    if m.group(1) == "signout" and method == "POST" and session is not None:
        if not csrf_ok(config, key, session, "*", fields):
            return message_page("Please try again", "That form was too old, or not this page's.",
                                "400 Bad Request")
        return signed_out_page(config, "member", path, session, store)
    if session is None:
        if method != "POST":
            return member_signin_page(config, store, environ)

        def send(store, address):       # to the address as the first of its lists has it
            row = store.q("member_lists", address).fetchone()
            first = row and store.list_by_id(row[0])
            member = first and store.q("member_options", first["id"], address).fetchone()
            if member is not None:      # (it left meanwhile: no link)
                mail_signin_link(config, store, first, member["address"],
                                 signin_link(config, key, None, member["address"]), owner=False)
        address, error = signin_request(config, store, environ, fields, "member-form", "*",
                                        lambda a: store.q("member_lists", a).fetchone() is not None, send)
        if error:
            return member_signin_page(config, store, environ, error, "400 Bad Request")
        return message_page("Check your mail", f"If {address or 'that address'} is subscribed to a list"
                            " here, a message with a link to sign in is on its way to it.")
    done = []
    if method == "POST" and m.group(1) == "":
        if not csrf_ok(config, key, session, "*", fields):
            return message_page("Please try again", "That form was too old, or not this page's; nothing"
                                " was changed.", "400 Bad Request")
        done = member_change(config, store, session["address"], fields)
    return member_page(config, store, session, done)


def member_signin_page(config, store, environ, error="", status="200 OK"):
    form = signin_form(config, store.verp_key, client_network(config, environ), "member-form", "*", "./",
                       "Your email address", error)
    return page("Manage my subscription", "<h1>Manage my subscription</h1>\n<p>Give the address you are"
                " subscribed with: a link to sign in is mailed to it. Signed in, you can switch digests"
                " on or off and choose their format, stop mail for a while, and leave, on every list of"
                " this site.</p>\n" + form, status)


def member_page(config, store, session, done):
    address, key = session["address"], store.verp_key
    csrf = csrf_field(key, session, "*")
    parts = [f"<h1>Your subscriptions</h1>\n<p>Signed in as {esc(address)}.</p>"]
    if done:
        parts.append('<div role="status"><ul>' + "".join(f"<li>{esc(d)}</li>" for d in done) + "</ul></div>")
    rows = [store.list_by_id(r[0]) for r in store.q("member_lists", address)]
    if not rows:
        parts.append("<p>This address is not subscribed to any list here.</p>")
    for n, list_row in enumerate(rows):
        member = store.q("member_options", list_row["id"], address).fetchone()
        if member is None:
            continue
        on, name = options_of(member), list_address(list_row)
        until = member["disabled_until"]
        bounce = member["status"] == "disabled" and not on["nomail"]
        checks = "".join(
            f'<p><input type="checkbox" id="{option}{n}" name="{option}" value="on"{" checked" * on[option]}>'
            f' <label for="{option}{n}">{label}</label></p>\n'
            for option, label in (("digest", "Digests: several posts at a time"),
                                  ("nomail", "No mail for now (you stay a member)"),
                                  ("notmetoo", "No copy of my own posts"),
                                  ("ack", "A short note when a post of mine goes out")))
        formats = digest_format_options(member["digest_format"])
        parts.append(
            f'<section aria-labelledby="l{n}"><h2 id="l{n}">{esc(name)}</h2>\n'
            + (f"<p><small>{esc(list_row['description'])}</small></p>\n" if list_row["description"] else "")
            + ("<p>Mail to you bounced, so delivery is stopped; turning no mail off does not restart it"
               " (write to the list's owners).</p>\n" if bounce else "")
            + f'<form method="post">{csrf}<input type="hidden" name="list" value="{esc(name)}">\n{checks}'
            f'<p><label for="format{n}">Digest format</label><br><select id="format{n}" name="digest_format">'
            f"{formats}</select></p>\n"
            + day_field(f"until{n}", "No mail until (a day, YYYY-MM-DD; empty: until I turn it off)", until,
                        on["nomail"]) +
            '<button name="action" value="save">Save</button></form>\n'
            f'<form method="post">{csrf}<input type="hidden" name="list" value="{esc(name)}">'
            f'<button name="action" value="leave">Leave {esc(name)}</button></form></section>')
    parts.append(f'<form method="post" action="signout">{csrf}<button>Sign out</button></form>')
    return page("Your subscriptions", "\n".join(parts))


def member_change(config, store, address, fields):
    """Save one list's options, or leave it, for the signed-in member: at once, through the same
    code as set-member and the email commands (set_member_option, Requests.remove_member), kept in
    the trace.  Returns what was done, one line each."""
    list_row = store.list_by_address(field(fields, "list"))
    member = list_row and store.q("member_options", list_row["id"], address).fetchone()
    if member is None:
        return ["Nothing was changed: that is not a list of yours."]
    name = list_address(list_row)
    if field(fields, "action") == "leave":
        web_request(config, store, list_row, member["address"], "leave",
                    lambda req: req.remove_member(member["address"]))
        return [f"You left {name}; a goodbye message is on its way."]
    until_text = field(fields, "until").strip()
    until = utc_day(until_text)
    if until_text and (until is None or until <= time.time()):
        return [f"Nothing was changed on {name}: 'no mail until' takes a day to come, like 2030-12-24."]
    outbox, lines, now_on = Outbox(), [], options_of(member)
    for option in SELF_SERVICE_OPTIONS:
        on = field(fields, option) == "on"
        if on != now_on[option] or (option == "nomail" and on and until != member["disabled_until"]):
            outbox.changes.append(set_member_option(store, outbox, list_row, member, option, on,
                                                    until if option == "nomail" else None))
            lines.append(f"{option} {'on' if on else 'off'}"
                         + (f" until {until_text}" if option == "nomail" and on and until else ""))
    chosen = field(fields, "digest_format")
    if chosen in DIGEST_FORMATS and chosen != member["digest_format"]:
        outbox.changes.append(lambda db: db.execute(SQL["set_digest_format"],
                                                    (chosen, list_row["id"], member["address"])))
        lines.append(f"digest format {chosen or 'as the list sends them'}")
    if not lines:
        return [f"Nothing to change on {name}."]
    outbox.commit(store, config.spool)
    web_event(config, store, list_row, member["address"], [f"the member set {line}" for line in lines],
              page="manage")
    return [f"On {name}: " + ", ".join(lines) + "."]


# ---------------------------------------------------------------------------
# 23. The owner's pages
# Owns: /LIST@DOMAIN/admin/: the list at a glance, settings, members, the ban list, held posts and
#       requests, bounces; a held post's page by the capability in its notice.
# Calls: sections 2-22.
# ---------------------------------------------------------------------------

_ADMIN_PATH = (r"/([^/@\s]{1,64}@[^/@\s]{1,255})/admin/(|signin|signout|settings|members|members\.csv"
               r"|members\.txt|member|held|held/[0-9a-f]{32}|bounces|archive)")
ADMIN_NAV = (("", "At a glance"), ("settings", "Settings"), ("members", "Members"), ("held", "Held posts"),
             ("bounces", "Bounces"), ("archive", "Archive"))
TEXT_SETTINGS = ("footer", "welcome", "goodbye")        # several lines: a text area


@web_page(_ADMIN_PATH)
def admin_pages(app, config, store, environ, method, m):
    """/LIST@DOMAIN/admin/...: a signed-in owner's pages (sessions: section 22).  Without a session
    of an owner of this list every page is the sign-in form; every POST needs the session's CSRF
    token; a held post's page also opens by the capability of its notice (held_post_page)."""
    list_row = store.list_by_address(m.group(1))
    if list_row is None:
        return not_found()
    fields = read_form(environ) if method == "POST" else {}
    if fields is None:
        return message_page("Too large", "That request is too large.", "413 Payload Too Large")
    name, what = list_address(list_row), m.group(2)
    if what == "signin":
        return signin_with_link(config, store, environ, method, fields, "owner", list_row,
                                f"the web admin of {name}")
    session = current_session(store, environ, "owner", list_row)
    admin = Admin(config, store, environ, list_row, session)
    if what.startswith("held/"):
        return admin.held_post(method, fields, what[5:])
    if what == "signout" and method == "POST" and session is not None:
        if not csrf_ok(config, store.verp_key, session, name, fields):
            return admin.retry()
        return signed_out_page(config, "owner", base_path(config, environ) + f"/{name.lower()}/admin/",
                               session, store)
    if session is None:
        return admin.signin(method, fields)
    if method == "POST" and not csrf_ok(config, store.verp_key, session, name, fields):
        return admin.retry()
    return getattr(admin, ADMIN_PAGES[what])(method, fields)


ADMIN_PAGES = {"": "glance", "signout": "glance", "settings": "settings", "members": "members",
               "members.csv": "export", "members.txt": "export", "member": "member", "held": "held",
               "bounces": "bounces", "archive": "archive"}


def duration_text(seconds):
    """86400 -> 1d: a duration as digest_interval is written."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def shown_setting(list_row, key):
    """A list setting as its field shows it, in a form validate_setting takes back."""
    if key == "passphrase":
        return ""
    if key in LIST_FLAGS:
        return "yes" if list_row[key] else "no"
    if key == "digest_interval":
        return duration_text(list_row[key])
    return str(list_row[key])


class _NoMailRoom(Exception):
    """The mails of an owner's action on the web do not fit in the list's day (Admin.commit)."""


class Admin:
    """One request to a list's admin pages, by the owner of ``session`` (None: nobody signed in)."""

    def __init__(self, config, store, environ, list_row, session):
        self.config, self.store, self.environ = config, store, environ
        self.list, self.session = list_row, session
        self.name, self.key, self.now = list_address(list_row), store.verp_key, time.time()
        self.who = session["address"] if session else ""
        self.refused = []           # what the day's mail budget left undone (Admin.no_room)

    # pages ---------------------------------------------------------------------

    def page(self, title, html, status="200 OK", headers=(), up=""):
        """A signed-in page: the navigation (``up``: the way back from a deeper path), then <main>."""
        links = " ".join(f'<a href="{up}{path or "./"}">{label}</a>' for path, label in ADMIN_NAV)
        nav = (f'<nav aria-label="Admin of {esc(self.name)}"><p>{links}</p>'
               f'<form method="post" action="{up}signout">{self.csrf()}<button>Sign out</button></form>'
               "</nav>")
        return page(f"{title}: {self.name}", f"{nav}\n<main>\n<h1>{esc(title)}</h1>\n"
                    f"<p><small>{esc(self.name)}, signed in as {esc(self.who)}</small></p>\n{html}\n</main>",
                    status, headers)

    def csrf(self):
        return csrf_field(self.key, self.session, self.name) if self.session else ""

    def retry(self):
        return message_page("Please try again", "That form was too old, or not this page's; nothing was"
                            " done. Reload the page and send it again.", "400 Bad Request")

    @staticmethod
    def done(lines, problems=()):
        return ("".join(f'<p role="alert"><strong>{esc(p)}</strong></p>\n' for p in problems)
                + ('<div role="status"><ul>' + "".join(f"<li>{esc(line.strip())}</li>" for line in lines)
                   + "</ul></div>\n" if lines else ""))

    def record(self, lines, message_id="", outcome="web", by=None):
        web_event(self.config, self.store, self.list, by or self.who, [line.strip() for line in lines],
                  message_id, outcome)

    # the day's mail budget: whoever holds an owner's session (or a held notice's link) can make the
    # host mail only so many people a day from this list's admin ([web] admin_mail_per_day); by
    # email, every change that mails someone waits for the owner's confirmation instead

    def mail_limit(self):
        return int(self.config.number("web", "admin_mail_per_day"))

    def mail_room(self):
        """How many more mails the list's web admin may send today; None: no limit."""
        limit = self.mail_limit()
        if limit <= 0:
            return None
        row = self.store.q("budget_get", f"admin mail {self.list['id']}").fetchone()
        return max(0, limit - (row[0] if row and row[1] > self.now - 86400 else 0))

    def commit(self, outbox, change=None):
        """``outbox`` committed (with ``change``), its mails (one per recipient) counted against
        the list's day in the same transaction: _NoMailRoom, and nothing committed, if they do
        not fit."""
        mails, limit = sum(len(item[4]) for item in outbox.items), self.mail_limit()

        def counted(db):
            if change is not None:
                change(db)
            if mails and limit > 0 and _count_budgets(self.store, self.now, [
                    (f"admin mail {self.list['id']}", limit, 86400, mails)]):
                raise _NoMailRoom(mails)
        return outbox.commit(self.store, self.config.spool, counted)

    def no_room(self, what):
        """Say that ``what`` was not done for the day's mail budget (kept for the page)."""
        line = (f"Not done: {what}. The web admin of {self.name} may send {self.mail_limit()} mails a day"
                " ([web] admin_mail_per_day, set by the host's admin), and today's are spent.")
        self.refused.append(line)
        return line

    def signin(self, method, fields):
        """The sign-in form (the answer to every page without an owner's session): an address in,
        a link mailed if it is an owner's; the same answer whatever was typed."""
        error, status = "", "200 OK"
        if method == "POST" and "address" in fields:
            def send(store, address):   # to the owner address as the list has it
                mail_signin_link(self.config, store, self.list, address,
                                 signin_link(self.config, self.key, self.list, address), owner=True)
            owners = {o.lower(): o for o in owners_of(self.list)}
            address, error = signin_request(self.config, self.store, self.environ, fields, "admin-form",
                                            self.name, lambda a: a.lower() in owners,
                                            lambda store, a: send(store, owners[a.lower()]))
            if not error:
                return message_page("Check your mail", f"If {address or 'that address'} runs {self.name}, a"
                                    " message with a link to sign in is on its way to it.")
            status = "400 Bad Request"
        form = signin_form(self.config, self.key, client_network(self.config, self.environ), "admin-form",
                           self.name, "./", "Your owner address", error)     # ./ is admin/ from every page
        return page(f"Sign in: {self.name}", f"<h1>The web admin of {esc(self.name)}</h1>\n<p>For the list's"
                    " owners. Give your owner address: a link to sign in is mailed to it. (Or send"
                    f" 'admin' to {esc(list_address(self.list, '-request'))} from it.)</p>\n{form}", status)

    def glance(self, method, fields):
        total, enabled, digests, bouncing = self.store.q("member_summary", self.list["id"]).fetchone()
        held = self.store.q("held_waiting", self.list["id"], self.now + 1, self.now).fetchall()
        joins = self.store.q("join_requests", self.list["id"], self.now, self.now + 1).fetchall()
        recent = self.store.q("recent_events", self.list["id"], self.name, 10).fetchall()
        posts = "".join(f"<li>{utc_time(r['received'])}: {esc(r['sender'] or '?')}, {esc(r['outcome'])}"
                        f" <small>{esc(one_line(r['reason'], 120))}</small></li>" for r in recent)
        return self.page("At a glance", (
            f'<h2>Members</h2>\n<p><a href="members">{total} members</a>: {enabled} get mail,'
            f" {digests} take digests, {total - enabled} get none.</p>\n"
            f'<h2>Waiting for you</h2>\n<p><a href="held">{len(held)} held posts, {len(joins)} requests to'
            " join</a>.</p>\n"
            f'<h2>Bounces</h2>\n<p><a href="bounces">{bouncing} members whose mail bounces</a>.</p>\n'
            f"<h2>The last posts</h2>\n" + (f"<ul>{posts}</ul>" if posts else "<p>None yet.</p>")))

    # settings ------------------------------------------------------------------

    def settings(self, method, fields):
        """Every setting `set` changes, with its help; a POST changes those that differ, checked
        as the CLI checks them (plan_owner_action, validate_setting), all or none."""
        values, errors, lines = {k: shown_setting(self.list, k) for k in SETTABLE}, {}, []
        if method == "POST":
            actions = []
            for key in sorted(SETTABLE, key=lambda k: k != "passphrase"):      # a passphrase first
                if key not in fields and not (key == "passphrase" and "passphrase_clear" in fields):
                    continue
                value = field(fields, key)
                if key == "passphrase":
                    if not value and field(fields, "passphrase_clear") != "on":
                        continue
                    value = "" if field(fields, "passphrase_clear") == "on" else value
                elif value.strip() == values[key].strip():
                    continue
                values[key] = value
                new_passphrase = any(a["key"] == "passphrase" and a["value"] for a in actions)
                action, problems = plan_owner_action(
                    {**self.list, "passphrase_hash": self.list["passphrase_hash"] or "new" * new_passphrase},
                    "set", [key], value, escapes=False)       # a text box has its own new lines
                if problems:
                    errors[key] = problems[0]
                else:
                    actions.append(action)
            if errors:
                return self.settings_form(values, errors, "400 Bad Request")
            if actions:
                lines = self.carry_out(actions)
                self.list = self.store.list_by_id(self.list["id"])
                values = {k: shown_setting(self.list, k) for k in SETTABLE}
            else:
                lines = ["Nothing was changed."]
        return self.settings_form(values, {}, "200 OK", lines)

    def settings_form(self, values, errors, status, lines=()):
        rows = []
        for key in SETTABLE:
            value, help_id = values[key], f"h-{key}"
            described = f' aria-describedby="{help_id}"' + (f' aria-invalid="true"' if key in errors else "")
            if key in LIST_CHOICES or key in LIST_FLAGS:
                choices = LIST_CHOICES.get(key, ("yes", "no"))
                control = (f'<select id="s-{key}" name="{key}"{described}>' + "".join(
                    f'<option{" selected" * (c == value)}>{esc(c)}</option>' for c in choices) + "</select>")
            elif key in TEXT_SETTINGS:
                control = f'<textarea id="s-{key}" name="{key}" rows="4"{described}>{esc(value)}</textarea>'
            elif key == "passphrase":
                control = (f'<input type="password" id="s-{key}" name="{key}" autocomplete="new-password"'
                           f'{described}> <label><input type="checkbox" name="passphrase_clear" value="on">'
                           " remove it</label>")
            else:
                control = f'<input id="s-{key}" name="{key}" value="{esc(value)}"{described}>'
            now = " (set)" if key == "passphrase" and self.list["passphrase_hash"] else \
                " (none)" if key == "passphrase" else ""
            rows.append(f'<p><label for="s-{key}">{key}{now}</label><br>{control}<br>'
                        f'<small id="{help_id}">{esc(SETTING_HELP[key])}</small>'
                        + (f'<br><strong>{esc(errors[key])}</strong>' if key in errors else "") + "</p>")
        problems = ["Nothing was changed: " + "; ".join(errors.values())] if errors else []
        return self.page("Settings", self.done(lines, problems) + f'<form method="post">{self.csrf()}\n'
                         + "\n".join(rows) + "\n<button>Save</button></form>", status)

    def carry_out(self, actions):
        """The owner's checked actions, done by the code the email commands use (apply_owner_actions),
        committed with their notices within the day's mail budget (the addresses whose mails would
        not fit are left out, from the last; the page names them), and kept in the trace."""
        room, actions, left = self.mail_room(), [dict(a) for a in actions], []
        while True:
            outbox, after = Outbox(), []
            notices = Notices(self.store, self.config, self.list, outbox)
            lines = apply_owner_actions(self.store, self.config, self.list, notices, outbox.changes,
                                        [a for a in actions if a.get("items") or "items" not in a],
                                        self.now, after)
            mails, cut = sum(len(item[4]) for item in outbox.items), [a for a in actions if a.get("items")]
            if room is None or mails <= room or not cut:
                break
            n = min(len(cut[-1]["items"]), mails - room)        # each address mails once at most
            left[:0] = [(cut[-1]["verb"], a) for a in cut[-1]["items"][-n:]]
            cut[-1]["items"] = cut[-1]["items"][:-n]
        try:
            self.commit(outbox)
        except _NoMailRoom as e:            # spent meanwhile, by another request
            lines, after = [self.no_room(f"nothing of this, which would send {e} mails")], []
        for verb in dict.fromkeys(v for v, _ in left):
            lines.append(self.no_room(f"{verb} " + ", ".join(a for v, a in left if v == verb)))
        for fn in after:
            try:
                fn()
            except Exception as e:          # the change is made; its pages come with the next post
                log.error("web: %s: after the change: %s: %s", self.name, type(e).__name__, e)
        self.record(lines)
        return lines

    # members -------------------------------------------------------------------

    def members(self, method, fields):
        lines, problems = [], []
        if method == "POST":
            what = field(fields, "action")
            words = re.split(r"[\s,;]+", field(fields, "addresses") + " " + field(fields, "patterns"))
            words = [w for w in words if w]
            verb, items = {"add": ("invite" if field(fields, "how") == "invite" else "add", words),
                           "remove": ("remove", fields.get("who", [])), "ban": ("ban", words),
                           "unban": ("unban", fields.get("pattern", []))}.get(what, (None, []))
            if verb is None:
                problems = ["Nothing was done: which action?"]
            else:
                action, problems = plan_owner_action(self.list, verb, items)
                if action and verb == "add":
                    action["welcome"] = field(fields, "welcome") == "on"
                if action:
                    lines = [line for line in self.carry_out([action]) if line not in self.refused]
                    problems += self.refused
        from urllib.parse import parse_qs
        q = (parse_qs(self.environ.get("QUERY_STRING", "")[:1000]).get("q") or [""])[0][:100].strip()
        like = "%" + re.sub(r"([\\%_])", r"\\\1", q) + "%"
        rows = self.store.q("members_matching", self.list["id"], like, like, 201).fetchall()
        total = self.store.q("member_summary", self.list["id"]).fetchone()[0]
        items = "".join(
            f'<li><input type="checkbox" id="m{n}" name="who" value="{esc(r["address"])}">'
            f' <label for="m{n}">{esc(r["address"])}</label>' + (f" ({esc(r['name'])})" if r["name"] else "")
            + f' <small>{esc(member_state(r))}</small> <a href="member?who={quote_url(r["address"])}"'
            f' aria-label="options of {esc(r["address"])}">options</a></li>'
            for n, r in enumerate(rows[:200]))
        bans = [r[0] for r in self.store.q("bans", self.list["id"])]
        ban_items = "".join(f'<li><input type="checkbox" id="b{n}" name="pattern" value="{esc(p)}">'
                            f' <label for="b{n}">{esc(p)}</label></li>' for n, p in enumerate(bans))
        csrf = self.csrf()
        return self.page("Members", self.done(lines, problems) + (
            f'<form method="get"><p><label for="q">Find members (address or name)</label><br>'
            f'<input id="q" name="q" value="{esc(q)}"> <button>Find</button></p></form>\n'
            f"<p>{total} members" + (f"; {len(rows)}{'+' if len(rows) > 200 else ''} match" if q else "")
            + '. Export: <a href="members.csv">CSV</a>, <a href="members.txt">text</a>.</p>\n'
            f'<form method="post">{csrf}<ul class="plain">{items}</ul>'
            + ("<p>Only the first 200 are shown: find them by name.</p>" if len(rows) > 200 else "")
            + ('<button name="action" value="remove">Remove the checked members (each is told)</button>'
               if rows else "") + "</form>\n"
            f'<h2 id="add">Add members</h2>\n<form method="post">{csrf}'
            '<p><label for="addresses">Addresses, one a line</label><br>'
            '<textarea id="addresses" name="addresses" rows="4"></textarea></p>\n<fieldset><legend>How'
            "</legend><p><input type=\"radio\" id=\"how-invite\" name=\"how\" value=\"invite\" checked>"
            ' <label for="how-invite">Invite them: each joins by answering the invitation</label></p>'
            '<p><input type="radio" id="how-add" name="how" value="add"> <label for="how-add">Add them at'
            ' once, without asking</label></p><p><input type="checkbox" id="welcome" name="welcome"'
            ' value="on"> <label for="welcome">and send them the welcome</label></p></fieldset>\n'
            '<button name="action" value="add">Add</button></form>\n'
            f'<h2 id="bans">The ban list</h2>\n<p>Who may neither post nor join: an address, *@domain, or a'
            " regular expression starting with ^.</p>\n"
            + (f'<form method="post">{csrf}<ul class="plain">{ban_items}</ul><button name="action"'
               ' value="unban">Take the checked patterns off</button></form>\n' if bans else
               "<p>Nobody is banned.</p>\n")
            + f'<form method="post">{csrf}<p><label for="patterns">Ban (one a line)</label><br>'
            '<textarea id="patterns" name="patterns" rows="2"></textarea></p>'
            '<button name="action" value="ban">Ban</button></form>'), "200 OK" if not problems else
            "400 Bad Request")

    def export(self, method, fields):
        """members.csv (every column of `members --json`) or members.txt (one address a line)."""
        rows = self.store.q("members", self.list["id"]).fetchall()
        if self.environ.get("PATH_INFO", "").endswith(".txt"):
            return "200 OK", "".join(f"{r['address']}\n" for r in rows), "text/plain; charset=utf-8", [
                ("Content-Disposition", 'attachment; filename="members.txt"')]
        import csv
        import io
        out = io.StringIO()
        writer = csv.writer(out, quoting=csv.QUOTE_ALL)     # a ; or tab inside stays inside its cell
        writer.writerow(["address", "name", "status", "bounce_score", *MEMBER_OPTIONS, "nomail_until",
                         "digest_format"])

        def cell(value):                # no cell a spreadsheet would run as a formula
            value = str(value)
            return "'" + value if value.lstrip(" ")[:1] in ("=", "+", "-", "@", "\t", "\r") else value
        for r in rows:
            on = options_of(r)
            writer.writerow([cell(v) for v in (r["address"], r["name"], r["status"], f"{r['bounce_score']:g}",
                                               *("yes" if on[o] else "no" for o in MEMBER_OPTIONS),
                                               utc_time(r["disabled_until"]) if on["nomail"] and
                                               r["disabled_until"] else "", r["digest_format"])])
        return "200 OK", out.getvalue(), "text/csv; charset=utf-8", [
            ("Content-Disposition", 'attachment; filename="members.csv"')]

    def member(self, method, fields):
        """One member's options, set as `set-member` sets them (set_member_option)."""
        from urllib.parse import parse_qs
        address = field(fields, "who") if method == "POST" else \
            (parse_qs(self.environ.get("QUERY_STRING", "")[:1000]).get("who") or [""])[0]
        member = self.store.q("member_options", self.list["id"], address[:254]).fetchone()
        if member is None:
            return self.page("No such member", f"<p>{esc(address)} is not a member of {esc(self.name)}.</p>",
                             "404 Not Found")
        lines, problems = [], []
        if method == "POST":
            until_text = field(fields, "until").strip()
            until = utc_day(until_text)
            if until_text and (until is None or until <= self.now):
                problems = ["Nothing was changed: 'no mail until' takes a day to come, like 2030-12-24."]
            else:
                outbox, on_now = Outbox(), options_of(member)
                for option in MEMBER_OPTIONS:
                    on = field(fields, option) == "on"
                    until_changed = option == "nomail" and on and until != member["disabled_until"]
                    if on != on_now[option] or until_changed:
                        outbox.changes.append(set_member_option(self.store, outbox, self.list, member, option,
                                                                on, until if option == "nomail" else None))
                        lines.append(f"{member['address']} {option} {'on' if on else 'off'}")
                chosen = field(fields, "digest_format")
                if chosen in DIGEST_FORMATS and chosen != member["digest_format"]:
                    outbox.changes.append(lambda db: db.execute(SQL["set_digest_format"], (
                        chosen, self.list["id"], member["address"])))
                    lines.append(f"{member['address']} digest format {chosen or 'the list s'}")
                if lines:
                    try:                # digests off sends the posts waiting for the next digest
                        self.commit(outbox)
                        self.record(lines)
                    except _NoMailRoom as e:
                        problems = [self.no_room(", ".join(lines) + ", which would mail the posts that"
                                                 f" wait for the next digest ({e})")]
                        lines = []
                else:
                    lines = ["Nothing was changed."]
                member = self.store.q("member_options", self.list["id"], member["address"]).fetchone()
        on, until = options_of(member), member["disabled_until"]
        checks = "".join(
            f'<p><input type="checkbox" id="o-{o}" name="{o}" value="on"{" checked" * on[o]}>'
            f' <label for="o-{o}">{o}: {esc(meaning)}</label></p>\n' for o, meaning in MEMBER_OPTIONS.items())
        formats = digest_format_options(member["digest_format"])
        return self.page(member["address"], self.done(lines, problems) + (
            f"<p>{esc(member_state(member))}</p>\n"
            f'<form method="post">{self.csrf()}<input type="hidden" name="who"'
            f' value="{esc(member["address"])}">\n'
            f'{checks}<p><label for="o-format">Digest format</label><br><select id="o-format"'
            f' name="digest_format">{formats}</select></p>\n'
            + day_field("o-until", "No mail until (YYYY-MM-DD; empty: until turned off)", until, on["nomail"])
            + '<button>Save</button></form>\n'
            f'<form method="post" action="members">{self.csrf()}<input type="hidden" name="who"'
            f' value="{esc(member["address"])}"><button name="action" value="remove">Remove'
            f' {esc(member["address"])} (they are told)</button></form>'),
            "400 Bad Request" if problems else "200 OK")

    # held posts and requests ---------------------------------------------------

    def held(self, method, fields):
        lines = []
        if method == "POST":
            what, reason = field(fields, "action"), field(fields, "reason").strip() or "no reason given"
            if what in MODERATION_VERBS:
                for held_id in fields.get("held", [])[:MAX_OWNER_ITEMS]:
                    number = int(held_id) if held_id.isdigit() and len(held_id) < 12 else 0
                    held = self.store.held(number) if number else None
                    if held is None or held["list_id"] != self.list["id"]:
                        lines.append(f"Held post {one_line(held_id, 12)} is gone (decided or expired).")
                        continue
                    lines.append(self.decide(held, what, reason))
            elif what in ("join-approve", "join-reject", "join-discard"):
                lines += self.decide_joins(fields.get("join", [])[:MAX_OWNER_ITEMS], what[5:], reason)
            if not lines:
                lines = ["Nothing was checked: nothing was done."]
            lines = [line for line in lines if line not in self.refused]
        held = self.store.q("held_waiting", self.list["id"], self.now + 1, self.now).fetchall()
        joins = self.store.q("join_requests", self.list["id"], self.now, self.now + 1).fetchall()
        csrf = self.csrf()
        held_items = "".join(
            f'<li><input type="checkbox" id="h{r["id"]}" name="held" value="{r["id"]}">'
            f' <label for="h{r["id"]}">'
            f'{esc(one_line(r["subject"], 120) or "(no subject)")}</label><br><small>from'
            f' {esc(r["from_addr"] or r["sender"] or "?")}, {utc_time(r["received"])}, {r["size"]} bytes;'
            f' held: {esc(one_line(r["reason"], 200))}</small>'
            + (f' <a href="held/{r["token"]}">read it</a>' if r["token"] else "") + "</li>"
            for r in held[:200])
        join_items = "".join(
            f'<li><input type="checkbox" id="j{n}" name="join" value="{r["token"]}"> <label for="j{n}">'
            f'{esc(r["address"])}</label> <small>asks since {utc_time(r["created"])}</small></li>'
            for n, r in enumerate(joins[:200]))
        reason = ('<p><label for="{id}">Reason (for reject)</label><br><input id="{id}" name="reason"'
                  ' value="' + esc(REJECT_REASON) + '"></p>')
        return self.page("Held posts and requests", self.done(lines, self.refused) + (
            f"<h2>Held posts ({len(held)})</h2>\n"
            + (f'<form method="post">{csrf}<ul class="plain">{held_items}</ul>{reason.format(id="r-held")}'
               '<button name="action" value="approve">Approve</button> <button name="action" value="reject">'
               'Reject</button> <button name="action" value="discard">Discard</button></form>\n'
               if held else "<p>None.</p>\n")
            + f"<h2>Requests to join ({len(joins)})</h2>\n"
            + (f'<form method="post">{csrf}<ul class="plain">{join_items}</ul>{reason.format(id="r-join")}'
               '<button name="action" value="join-approve">Approve</button> <button name="action"'
               ' value="join-reject">Reject</button> <button name="action" value="join-discard">Discard'
               "</button></form>" if joins else "<p>None.</p>")))

    def decide(self, held, verb, reason, always=False, actor=None, change=None):
        """approve (the queue chain again, as `approve` and the email answer), reject or discard
        (drop_held, with ``change``; the rejection's notice within the day's mail budget) one held
        post; kept in its trace as done by ``actor`` (default: the signed-in owner) on the web.
        Returns what was done."""
        actor = actor or self.who
        by = f"by {actor} on the web"
        what = f"Held post {held['id']} ({one_line(held['subject'], 60) or 'no subject'})"
        if verb == "approve":
            try:
                ctx = release_held(self.store, self.config, held["id"], by)
            except Failure as e:
                return f"{what}: not released: {one_line(e, 200)}"
            outbox = Outbox()
            author = held["from_addr"] or held["sender"]
            extra = always_accept(self.store, self.list, author, outbox.changes) if always else ""
            if extra:
                outbox.commit(self.store, self.config.spool)
                self.record([extra], held["message_id"], "approved", by=actor)
            return f"{what}: approved; it goes to {len(ctx.recipients)} members." \
                + (f" {extra}." if extra else "")
        outbox = Outbox()
        notices = Notices(self.store, self.config, self.list, outbox, held["message_id"])
        done = drop_held(held, notices, outbox.changes, verb == "reject", reason)
        try:
            self.commit(outbox, change)
        except StoreError:
            return f"{what}: gone meanwhile (decided or expired)."
        except _NoMailRoom:
            return self.no_room(f"{what}: rejecting it, which tells its sender why (discarding it does"
                                " not)")
        self.record([f"{done} {by}"], held["message_id"], "rejected" if verb == "reject" else "discarded",
                    by=actor)
        return f"{what}: " + ("rejected; the sender is told why." if verb == "reject" else "discarded.")

    def decide_joins(self, tokens, verb, reason):
        """Join requests decided as the moderators' email answers decide them (Requests.decide_join),
        each committed with its mails (a welcome, a refusal) within the day's mail budget."""
        lines, left = [], []
        for token in tokens:
            row = self.store.q("pending_by_token", token.lower()[:32]).fetchone()
            if row is None or row["list_id"] != self.list["id"] or row["action"] != "approve-subscribe" or \
                    row["used"] is not None or row["expires"] < self.now:
                lines.append("A request is gone (decided or expired).")
                continue
            if left:
                left.append(row["address"])
                continue
            ctx = Context(self.config, self.store)
            ctx.list, ctx.role, ctx.sender = self.list, "request", self.who
            ctx.recipient = list_address(self.list, "-request")
            req = Requests(ctx, self.who)
            req.answers = []            # what email would answer the owner: the page says it
            req.use(row["token"])
            req.decide_join(row["address"], verb, reason)
            try:
                self.commit(ctx.outbox, ctx.apply_changes)
            except _NoMailRoom:
                left.append(row["address"])
                continue
            except (StoreError, TryLater):
                lines.append("A request is gone (decided or expired).")
                continue
            lines.append(f"{row['address']}: " + {"approve": "subscribed.", "discard": "request dropped.",
                                                   "reject": "declined, and told why."}[verb])
        if left:
            lines.append(self.no_room(f"{verb} the requests of " + ", ".join(left)))
        if len(lines) > sum(line.startswith("A request") for line in lines):
            self.record([line for line in lines if not line.startswith("A request")])
        return lines

    def held_post(self, method, fields, token):
        """One held post's page, by the token of its notice (held_page_url): no sign-in needed; the
        facts, its first lines, and buttons; once the post is decided or dropped, the link says so."""
        row = self.store.q("pending_by_token", token).fetchone()
        held = self.store.held(row["held_id"]) if row and row["held_id"] else None
        if row is None or held is None or row["list_id"] != self.list["id"] or row["action"] != "moderate" \
                or row["used"] is not None or row["expires"] < self.now:
            return message_page("Decided already", "This post is no longer held: someone decided on it, or"
                                " it expired.", "410 Gone")
        lines = []
        if method == "POST":
            verdict, _ = check_token(self.key, "held-form", self.name, token, field(fields, "form"), self.now,
                                     self.config.duration("commands", "held_expiry"))
            what = field(fields, "action")
            if verdict != "ok" or what not in ("approve", "always", "reject", "discard"):
                return self.retry()
            actor = self.who or "the link of the held notice (sent to the moderation team)"
            reason = field(fields, "reason").strip() or "no reason given"
            verb = "approve" if what == "always" else what

            def used(db):                   # the token is used once, as by email
                if db.execute(SQL["use_pending"], (self.now, token)).rowcount != 1:
                    raise StoreError("decided meanwhile")
            gone = message_page("Decided already", "This post is no longer held: someone decided on it,"
                                " or it expired.", "410 Gone")
            if verb != "approve":           # with the decision (and its notice, if the budget has room)
                result = self.decide(held, verb, reason, actor=actor, change=used)
                if result.endswith("gone meanwhile (decided or expired)."):
                    return gone
                return message_page("Not done" if self.refused else "Done", result,
                                    "429 Too Many Requests" if self.refused else "200 OK")
            try:
                with self.store.transaction() as db:
                    used(db)
            except StoreError:
                return gone
            result = self.decide(held, verb, reason, what == "always", actor)
            return message_page("Done", result)
        author = held["from_addr"] or held["sender"] or ""
        text = text_of(held["raw"][:200_000]).strip().splitlines()[:40]
        always = always_accept(self.store, self.list, author)
        form = sign_token(self.key, "held-form", self.name, token)
        return page(f"Held post: {self.name}", self.done(lines) + (
            f"<h1>A post held on {esc(self.name)}</h1>\n<dl><dt>From</dt><dd>{esc(author or '?')}</dd>"
            f"<dt>Subject</dt><dd>{esc(one_line(held['subject'], 300) or '(no subject)')}</dd>"
            f"<dt>Held because</dt><dd>{esc(one_line(held['reason'], 300))}</dd>"
            f"<dt>Received</dt><dd>{utc_time(held['received'])}, {len(held['raw'])} bytes</dd></dl>\n"
            f'<h2>Its first lines</h2>\n<div class="text">{esc(chr(10).join(text)) or "(no text)"}</div>\n'
            f'<form method="post"><input type="hidden" name="form" value="{form}">\n'
            f'<p><button name="action" value="approve">Approve</button>'
            + (f' <button name="action" value="always">Approve, and always accept {esc(author)}</button>'
               if always else "")
            + ' <button name="action" value="discard">Discard</button></p>\n'
            '<p><label for="reason">Reason</label><br><input id="reason" name="reason" value="'
            + esc(REJECT_REASON) + '"> <button name="action" value="reject">Reject (the sender is told'
            " why)</button></p></form>"))

    # bounces -------------------------------------------------------------------

    def bounces(self, method, fields):
        lines = []
        if method == "POST" and field(fields, "action") == "enable":
            address = field(fields, "who")[:254]
            with self.store.transaction() as db:        # as `redsky.py enable`
                changed = db.execute(SQL["reenable"], (self.list["id"], address)).rowcount
            lines = [f"{address}: delivery on again, bounce score reset." if changed else
                     f"{address} is not a member."]
            if changed:
                self.record(lines)
        history = {}
        for b in self.store.q("bounce_history", self.list["id"]):
            history.setdefault(b["address"].lower(), []).append(b)
        items = []
        for n, mb in enumerate(self.store.q("members_bounce_status", self.list["id"])):
            if not mb["bounce_score"] and mb["disabled_reason"] not in ("bounce", "feedback"):
                continue
            reports = "".join(
                f"<li>{utc_time(b['received'])}: {esc(b['cause'] or '?')} {esc(b['status'] or '')}"
                f" ({esc(b['source'])}, weight {b['weight']:g},"
                f" {'counted' if b['counted'] else 'not counted'})"
                f"<br><small>{esc(one_line(b['why'], 200))}"
                + (f"; {esc(one_line(b['diagnostic'], 200))}" if b["diagnostic"] else "") + "</small></li>"
                for b in history.get(mb["address"].lower(), [])[-10:])
            enable = (f'<form method="post">{self.csrf()}<input type="hidden" name="who"'
                      f' value="{esc(mb["address"])}"><button name="action" value="enable">Deliver to'
                      f' {esc(mb["address"])} again</button></form>' if mb["status"] == "disabled" else "")
            items.append(f'<section aria-labelledby="bm{n}"><h2 id="bm{n}">{esc(mb["address"])}</h2>\n'
                         f"<p>Score {mb['bounce_score']:g}, {esc(mb['status'])}"
                         + (f" ({esc(mb['disabled_reason'])}, {mb['warnings']} warnings)"
                            if mb["disabled_reason"] else "") + f"</p><ul>{reports}</ul>{enable}</section>")
        return self.page("Bounces", self.done(lines) + ("\n".join(items) or
                                                        "<p>No member's mail bounces.</p>"))

    # the archive --------------------------------------------------------------------

    def archive(self, method, fields):
        """The latest archived posts; the checked ones (or the numbers typed) removed, by the code
        `delete N` by email and `archive delete` run: each number stays, as a page that says so."""
        lines, problems = [], []
        if method == "POST" and field(fields, "action") == "delete":
            words = fields.get("number", []) + re.split(r"[\s,;]+", field(fields, "numbers"))
            action, problems = plan_owner_action(self.list, "delete", [w for w in words if w])
            if action:
                lines = self.carry_out([action])
        rows = self.store.q("archived_latest", self.list["id"], ARCHIVE_ADMIN_POSTS).fetchall()
        public = self.list["archive"] == "public"
        where = f"../../archive/{quote_url(self.name.lower())}/"
        items = "".join(
            f'<li><input type="checkbox" id="p{n}" name="number" value="{n}"> <label for="p{n}">{n}:'
            f' {esc(one_line(r["subject"], 120) or "(no subject)")}</label>'
            f" <small>{esc(r['author'])}, {utc_time(r['date'])}</small>"
            + (f' <a href="{where}{n}.html" aria-label="post {n}">page</a>' if public else "") + "</li>"
            for n, r in ((r["number"], r) for r in rows))
        total = self.store.q("archived_count", self.list["id"]).fetchone()[0]
        return self.page("Archive", self.done(lines, problems) + (
            f"<p>{total} posts in the archive ({esc(self.list['archive'])})"
            + (f"; the latest {len(rows)}" if total > len(rows) else "") + ". A removed post's number"
            " stays, as a page that says the owners removed it; no other post takes it.</p>\n"
            + (f'<form method="post">{self.csrf()}<ul class="plain">{items}</ul>'
               '<button name="action" value="delete">Remove the checked posts from the archive</button>'
               "</form>\n" if rows else "")
            + f'<form method="post">{self.csrf()}<p><label for="numbers">Remove posts by number'
            ' (e.g. 12 15)</label><br><input id="numbers" name="numbers" inputmode="numeric"></p>'
            '<button name="action" value="delete">Remove</button></form>'),
            "200 OK" if not problems else "400 Bad Request")


ARCHIVE_ADMIN_POSTS = 50        # the archive page of the web admin lists the latest this many


def member_state(row):
    """A member's status and the options that are on, in words."""
    on = [o for o, v in options_of(row).items() if v]
    state = row["status"] + (f" ({row['disabled_reason']})" if row["status"] == "disabled" else "")
    return state + ("; " + ", ".join(on) if on else "") + \
        (f"; digests {row['digest_format']}" if row["digest_format"] else "")


def quote_url(text):
    from urllib.parse import quote
    return quote(text, safe="@")


# ---------------------------------------------------------------------------
# 24. Postfix and the list user
# Owns: the Postfix map and settings, postfix-config, become_list_user.
# Calls: sections 2-23.
# ---------------------------------------------------------------------------

POSTFIX_QUERIES = {
    "redsky-domains.cf": "SELECT domain FROM domains WHERE domain = '%s'",
    "redsky-aliases.cf": "SELECT '%u@redsky.invalid' FROM addresses WHERE address = '%s'",
}


def export_postfix_map(config, store):
    """Write [postfix] map: every address of every list, lower-cased; and
    the same as two text files beside it, list-addresses and list-domains
    (one per line: Exim's lsearch, OpenSMTPD's table files read them)."""
    path = config.path_of("postfix", "map")
    if not path:
        return None
    rows = [dict(r) for r in store.q("all_lists")]
    domains = {r["domain"].lower() for r in rows}
    addresses = {list_address(r, suffix).lower() for r in rows for suffix in LIST_SUFFIXES}
    write_postfix_map(path, domains, addresses)
    for name, items in (("list-addresses", addresses), ("list-domains", domains)):
        target = os.path.join(os.path.dirname(path), name)
        tmp = f"{target}.{os.getpid()}.tmp"
        _unlink_quietly(tmp)
        write_synced(tmp, "".join(f"{item}\n" for item in sorted(items)).encode())
        os.chmod(tmp, 0o644)                # the MTA's own user reads them
        os.rename(tmp, target)
    return path


def become_list_user(config):
    """Run as root, work as the owner of data_dir (as mlmmj does), before anything is opened: a
    database, spool or log file that root created would be unreadable to the MTA's pipe and to
    cron's `send`, and mail would wait for ever.  A data_dir that does not exist yet is created for
    [postfix] user when that names a user.  Root keeps working as root only on a root-owned
    data_dir.  Returns the user name switched to, or None."""
    if os.geteuid() != 0:
        return None
    import pwd
    try:
        st = os.stat(config.data_dir)
    except FileNotFoundError:
        name = config.get("postfix", "user")
        if not name or name == "root":
            return None
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise ConfigError(f"[postfix] user {name!r} does not exist; create it (useradd --system "
                              f"--home-dir {config.data_dir} {name}) or change [postfix] user")
        mask = os.umask(0o022)                 # missing parents as `install -d` makes them
        try:
            os.makedirs(config.data_dir)
        finally:
            os.umask(mask)
        os.chown(config.data_dir, pw.pw_uid, pw.pw_gid)
        os.chmod(config.data_dir, 0o751)       # Postfix's daemons read the list map inside
        st = os.stat(config.data_dir)
    if st.st_uid == 0:
        return None
    try:
        pw = pwd.getpwuid(st.st_uid)
        name, gid = pw.pw_name, pw.pw_gid
        os.initgroups(name, gid)
    except KeyError:                           # an owner without a passwd entry
        name, gid = str(st.st_uid), st.st_gid
        os.setgroups([])
    os.setgid(gid)
    os.setuid(st.st_uid)
    library = os.path.dirname(os.__file__)        # redsky imports some modules when first needed
    if not os.access(library, os.R_OK | os.X_OK):
        raise Failure(f"{name}, the owner of {config.data_dir}, cannot read this Python ({library}):"
                      " run redsky with a python3 every user can read, such as /usr/bin/python3", EX_NOPERM)
    if not os.access(config.data_dir, os.W_OK | os.X_OK):
        raise Failure(f"running as {name}, the owner of {config.data_dir}, which cannot write it: "
                      f"fix its mode (chmod u+rwx) and let {name} reach it (chmod o+x on its parents)",
                      EX_NOPERM)
    return name


def groups_of(user):
    """The ids of ``user``'s groups (its own and those /etc/group lists it in: what a server that
    starts as it gets), or None when there is no such user."""
    import grp
    import pwd
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    return {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}


def log_file(config):
    """The file redsky logs to ([redsky] log), or None for syslog and stderr."""
    target = config.get("redsky", "log")
    if target in ("syslog", "stderr") or (not target and os.path.exists("/dev/log")):
        return None
    return os.path.join(config.data_dir, target or "redsky.log")


def share_with_web(config):
    """[web] cgi = yes: the web server's user runs the CGI script, which writes the database (and
    the -wal and -shm SQLite makes beside it) and the spool.  Make data_dir, the spool and its tmp
    set-group-ID and group-writable, so that what either user makes there takes data_dir's group
    (the list user's), and give that group the database, its -wal and -shm and the log file.
    data_dir is sticky too: the web server's user cannot remove or replace the list user's files
    there (the database, the Postfix map, the log).  Run by init as the owner of data_dir; links
    are left alone.  Yields the lines init prints."""
    import grp
    import pwd
    import stat
    st = os.stat(config.data_dir)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    tmp = os.path.join(config.spool, "tmp")
    code = [config.path] if config.path else []        # what redsky runs must stay closed to the group
    code += [os.path.join(config.data_dir, os.path.expanduser(p.strip()))
             for p in config.get("redsky", "plugins").split(",") if p.strip()]
    shared = {os.path.realpath(d) for d in (config.data_dir, config.spool, tmp)}
    for path in code:
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.realpath(folder) in shared:
            raise ConfigError(f"[web] cgi = yes makes {folder} writable by the group {group}, and {path} is"
                              f" there: whoever could change it would run code as {owner}; move it out"
                              " first (the README's config is /etc/redsky/redsky.ini, its data_dir"
                              " /var/lib/redsky)")
    os.makedirs(tmp, exist_ok=True)
    paths = [config.data_dir, config.spool, tmp] + [config.database + s for s in ("", "-wal", "-shm")]
    closed = []
    for path in paths + [p for p in [log_file(config)] if p]:
        try:                                    # by its descriptor: a link put in its place is not followed
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            continue
        except OSError:                         # a link (ELOOP), another user's closed file
            closed.append(path)
            continue
        try:
            info = os.fstat(fd)
            if info.st_gid != st.st_gid:
                os.fchown(fd, -1, st.st_gid)
            extra = (0o3010 if path == config.data_dir else 0o2010) if stat.S_ISDIR(info.st_mode) else 0
            mode = stat.S_IMODE(info.st_mode) | 0o060 | extra
            if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
                os.fchmod(fd, mode)
        except OSError:                         # another user's (an earlier web server's -wal)
            closed.append(path)
        finally:
            os.close(fd)
    user = config.get("web", "user")
    yield (f"shared:   {config.data_dir} and its spool with group {group} (set-group-ID, group-writable;"
           " data_dir sticky)")
    for path in closed:
        yield (f"warning: cannot give {path} to group {group}: run as root: chgrp {group} {path};"
               f" chmod g+rw {path}")
    groups = groups_of(user) if user else None
    if not user:
        yield (f"warning: [web] cgi = yes, but [web] user is empty: name the web server's user (Debian:"
               f" www-data), and add it to group {group}")
    elif groups is None:
        yield f"warning: [web] user {user} does not exist"
    elif st.st_gid not in groups:
        yield (f"warning: {user} is not in group {group}, so the CGI script cannot write the database: run"
               f" as root: adduser {user} {group}, then restart the web server")
    if config.umask & 0o060:
        yield (f"warning: [redsky] umask = {config.umask:03o} closes what one of them writes to the other:"
               " set it to 007")


def pipe_user(config):
    """Who runs `queue` for the MTA: [postfix] user, else the owner of
    data_dir (never root: Postfix's pipe refuses it)."""
    user = config.get("postfix", "user")
    if not user:
        try:
            import pwd
            user = pwd.getpwuid(os.stat(config.data_dir).st_uid).pw_name
        except (OSError, KeyError):
            user = "redsky"
    return "redsky" if user == "root" else user


# The MTA's pipe runs this code (pipe_command): it imports redsky from the directory named after it
# and runs main().  An imported module runs from the bytecode that `init` and `postfix-config`
# compile as root (compile_bytecode), where a script is compiled afresh on every run: 0.1 s of CPU
# and 30 MB of the 0.15 s and 47 MB a message cost as a script.  It has no quote, $, backslash or
# brace, so it is one { } group in master.cf, one '...' word for a shell, Exim or OpenSMTPD.
PIPE_CODE = "import sys; sys.path.insert(0, sys.argv.pop(1)); import redsky; sys.exit(redsky.main())"


def default_python():
    """The python3 the MTA's pipe runs: Debian's, which every user can read."""
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def pipe_command(python, config_path, *args):
    """The argv that runs `redsky.py [-c CONFIG] ARGS` as the MTA's pipe
    does: PIPE_CODE in isolated mode (-I: no PYTHON* variables, no module
    from the current directory), from cached bytecode."""
    return [python, "-I", "-c", PIPE_CODE, os.path.dirname(os.path.realpath(__file__)),
            *(["-c", os.path.abspath(config_path)] if config_path else []), *args]


# Run by the pipe's python (bytecode()): prints the state of redsky.py's cached bytecode for that
# python (fresh, missing, stale or unreadable) and its path.  With "compile" it first makes a fresh
# one, hash-checked: Python then compares the source's hash with it on every import, so a .pyc left
# by an older redsky.py never runs, whatever the files' times.
BYTECODE_CHECK = """\
import importlib.util, os, sys
source, pyc = sys.argv[1], importlib.util.cache_from_source(sys.argv[1])
def state():
    try:
        with open(source, "rb") as fh:
            data = fh.read()
        with open(pyc, "rb") as fh:
            head = fh.read(16)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "unreadable"
    flags = int.from_bytes(head[4:8], "little")
    if len(head) < 16 or head[:4] != importlib.util.MAGIC_NUMBER or flags & 3 == 1:
        return "stale"                      # another python's, or a hash Python never checks
    if flags & 1:
        return "fresh" if head[8:16] == importlib.util.source_hash(data) else "stale"
    st = os.stat(source)
    stamp = [int.from_bytes(head[i:i + 4], "little") for i in (8, 12)]
    return "fresh" if stamp == [int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF] else "stale"
if sys.argv[2:] == ["compile"]:             # always: a timestamp .pyc may be another redsky.py's
    import py_compile
    os.umask(0o022)                         # the pipe's user reads it
    try:
        py_compile.compile(source, pyc, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
        os.chmod(os.path.dirname(pyc), 0o755)
    except (OSError, py_compile.PyCompileError):
        pass
print(state(), pyc)
"""


def bytecode(python, compile=False):
    """(state, path) of redsky.py's cached bytecode for ``python``:
    fresh, missing, stale or unreadable (for this user), or (unknown,
    why); with ``compile`` made fresh first where this user can write it."""
    import subprocess
    try:
        r = subprocess.run([python, "-I", "-c", BYTECODE_CHECK, os.path.realpath(__file__)]
                           + (["compile"] if compile else []), capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return "unknown", f"cannot run {python}: {e}"
    state, _, path = r.stdout.strip().partition(" ")
    if r.returncode != 0 or state not in ("fresh", "missing", "stale", "unreadable"):
        return "unknown", f"{python} failed: {one_line(r.stderr or r.stdout, 200)}"
    return state, path


def compile_bytecode(python):
    """Make redsky.py's bytecode for the pipe's ``python`` (run as root at
    set-up, before anything else: the pipe's user cannot write beside
    redsky.py); a line on stderr when it cannot.  Returns its path or None."""
    state, path = bytecode(python, compile=True)
    if state == "fresh":
        return path
    where = os.path.dirname(os.path.realpath(__file__))
    report(f"warning: no bytecode of redsky.py for {python} ({state}: {path}), so the MTA's pipe compiles"
           f" it for every message; run this as root (or as the owner of {where})", logging.WARNING)
    return None


def postfix_settings(config, cf_dir, user=None, python=None, lmtp=None):
    """The .cf files, main.cf and master.cf lines for this installation: the pipe, or with ``lmtp``
    (an endpoint such as inet:127.0.0.1:8024) Postfix's own lmtp client to `redsky.py lmtp`, the
    list domains as relay domains whose recipients the map lists."""
    map_path = config.path_of("postfix", "map")
    if not map_path:
        raise ConfigError("[postfix] map is empty: Postfix needs the list map")
    cf = {name: f"dbpath = {map_path}\nquery = {query}\n" for name, query in POSTFIX_QUERIES.items()}
    if lmtp:
        if not re.fullmatch(r"(inet:[\w.\[\]:-]+:\d+|unix:/[^\s']+)", lmtp):
            raise Failure(f"--lmtp {lmtp!r}: use inet:HOST:PORT or unix:/PATH", EX_USAGE)
        cf["redsky-transport.cf"] = (f"dbpath = {map_path}\nquery = SELECT 'redsky-lmtp:{lmtp}' FROM"
                                     " addresses WHERE address = '%s'\n")
        main = (f"recipient_delimiter = +\n"
                f"relay_domains = sqlite:{os.path.join(cf_dir, 'redsky-domains.cf')}\n"
                f"relay_recipient_maps = sqlite:{os.path.join(cf_dir, 'redsky-aliases.cf')}\n"
                f"transport_maps = sqlite:{os.path.join(cf_dir, 'redsky-transport.cf')}\n"
                f"redsky-lmtp_destination_concurrency_limit = {lmtp_peer_sessions(config)}\n")
        # Postfix's lmtp client in a service of its own, so that its sessions to redsky, all of one
        # peer (the user postfix), stay within what `redsky.py lmtp` grants a peer, and nothing
        # else the host delivers over LMTP (Dovecot) is limited by it
        master = "redsky-lmtp unix  -       -       n       -       -       lmtp\n"
        return cf, main, master
    main = (f"recipient_delimiter = +\n"
            f"virtual_alias_domains = sqlite:{os.path.join(cf_dir, 'redsky-domains.cf')}\n"
            f"virtual_alias_maps = sqlite:{os.path.join(cf_dir, 'redsky-aliases.cf')}\n"
            f"transport_maps = inline:{{redsky.invalid=redsky:}}\n"
            f"redsky_destination_recipient_limit = 1\n")
    user = user or pipe_user(config)
    argv = [f"{{{word}}}" if " " in word else word          # master.cf's { } keeps the spaces (Postfix 3.0)
            for word in pipe_command(python or default_python(), config.path, "queue")]
    master = ("redsky    unix  -       n       n       -       -       pipe\n"
              f"  flags=OR user={user} null_sender=\n  argv={' '.join(argv[:4])}\n  {' '.join(argv[4:])}"
              " --recipient=${original_recipient} --sender=${sender}\n")
    return cf, main, master


def lmtp_peer_sessions(config):
    """The LMTP sessions `redsky.py lmtp` grants one peer ([lmtp] sessions_per_peer, within [lmtp]
    sessions): Postfix, whose lmtp clients all run as one user, must open no more."""
    return max(1, min(int(config.number("lmtp", "sessions_per_peer")),
                      int(config.number("lmtp", "sessions"))))


def cmd_postfix_config(args, config):
    """Print what Postfix needs to route the lists; --write also writes the files into --dir;
    --apply merges the settings into the live main.cf and master.cf (postfix_apply)."""
    as_list_user(config, lambda: export_postfix_map(config, open_store(config, create=True)))
    cf_dir = args.dir or postconf("-h", "config_directory") or "/etc/postfix"
    cf, main, master = postfix_settings(config, cf_dir, args.user, args.python, args.lmtp)
    if args.apply and not os.path.isfile(os.path.join(cf_dir, "main.cf")):     # before writing anything
        raise Failure(f"Postfix has no {os.path.join(cf_dir, 'main.cf')} to merge into (Debian's \"No"
                      " configuration\"): run `dpkg-reconfigure postfix` and choose \"Internet Site\" (or"
                      f" copy /usr/share/postfix/main.cf.debian to {cf_dir}/main.cf), then this again",
                      EX_CONFIG)
    if args.write or args.apply:
        os.makedirs(cf_dir, exist_ok=True)
        files = {**cf, "redsky-main.cf": main, "redsky-master.cf": master} if args.write else dict(cf)
        for name, text in files.items():
            path = os.path.join(cf_dir, name)
            with open(path, "w") as fh:
                fh.write(text)
            os.chmod(path, 0o644)           # Postfix warns about group or other writable files
    if args.apply:
        for line in postfix_apply(cf_dir, main, master):
            print(line)
        return EX_OK
    for name, text in cf.items():
        print(f"# {os.path.join(cf_dir, name)}\n{text}")
    print(f"# add to main.cf (merge with existing virtual_alias_maps / transport_maps;"
          f" 'postfix-config --apply' does it):\n{main}")
    if master:
        print(f"# add to master.cf:\n{master}", end="")
    return EX_OK


def as_list_user(config, work):
    """Run ``work()`` as the owner of data_dir (become_list_user) without
    this process giving up root: in a child process when root."""
    if os.geteuid() != 0:
        return work()
    pid = os.fork()
    if pid == 0:
        code = EX_SOFTWARE
        try:
            become_list_user(config)
            work()
            code = EX_OK
        except Failure as e:
            report(f"{e}")
            code = e.code
        finally:
            os._exit(code)
    if os.waitpid(pid, 0)[1]:               # an exit code but 0, or a signal
        raise Failure("could not prepare the list map as the owner of data_dir (see above)", EX_NOPERM)


# main.cf settings redsky needs, and how to merge each into a value already set
POSTFIX_MERGE = {"recipient_delimiter": "chars", "virtual_alias_domains": "list",
                 "virtual_alias_maps": "list", "transport_maps": "list", "relay_domains": "list",
                 "relay_recipient_maps": "list", "redsky_destination_recipient_limit": "value",
                 "redsky-lmtp_destination_concurrency_limit": "value"}


def postfix_apply(cf_dir, main, master):
    """Merge redsky's settings into Postfix's main.cf (postconf -e) and master.cf (postconf -M),
    keeping whatever else is there: a list setting gets redsky's table added, recipient_delimiter
    gets "+" added.  The two files are backed up first, and only when something changes; a second
    run changes nothing.  Yields one line per change."""
    wanted = dict(line.split(" = ", 1) for line in main.strip().splitlines())
    changes = []
    for key, value in wanted.items():
        current = postconf("-nh", key) or ""
        how = POSTFIX_MERGE[key]
        if how == "chars":
            new = current if "+" in current else current + "+"
        elif how == "list":                 # appended, the rest kept exactly as written
            new = current if value in current else f"{current}, {value}" if current.strip() else value
        else:
            new = value
        if new != current:
            changes.append((["-e", f"{key} = {new}"], f"main.cf: {key} = {new}"
                            + (f" (was {current})" if current else "")))
    entry = " ".join(master.split())
    name = f"{entry.split()[0]}/unix" if entry else ""
    service = " ".join((postconf("-M", name) or "").split()) if entry else ""
    if entry and service != entry:
        changes.append((["-M", f"{name}={entry}"],
                        f"master.cf: {name} {'changed' if service else 'added'}: {entry}"))
    if not changes:
        yield "nothing to change: main.cf and master.cf already have redsky's settings"
        return
    import shutil
    config_dir = postconf("-h", "config_directory") or cf_dir
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in ("main.cf", "master.cf"):
        path = os.path.join(config_dir, name)
        if os.path.exists(path):
            shutil.copy2(path, f"{path}.redsky-{stamp}")
            yield f"backup: {path}.redsky-{stamp}"
    for argv, line in changes:
        r = run_program([shutil.which("postconf") or "/usr/sbin/postconf", *argv])
        if r is None or r.returncode != 0:
            said = one_line(r.stderr or r.stdout, 300) if r else "it could not be run"
            raise Failure(f"postconf {' '.join(argv)} failed: {said} (main.cf and master.cf are as the"
                          " backups above, but for the lines before this one); fix that and run this again",
                          EX_CONFIG)
        yield line
    yield "now run: postfix reload"


def user_can(path, user, write=False):
    """Whether ``user`` may read (or write) ``path`` and reach it through
    every parent directory, by the mode bits (root may do anything)."""
    import pwd
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return False
    if pw.pw_uid == 0:
        return True
    groups = groups_of(user) or {pw.pw_gid}

    def allowed(st, bits):
        shift = 6 if st.st_uid == pw.pw_uid else 3 if st.st_gid in groups else 0
        return (st.st_mode >> shift) & bits == bits
    path = os.path.abspath(path)
    parts = path.split(os.sep)
    try:
        return all(allowed(os.stat(os.sep.join(parts[:i]) or os.sep), 1) for i in range(1, len(parts))) \
            and allowed(os.stat(path), 2 if write else 4)
    except OSError:
        return False


def run_program(argv, stdin=None, timeout=30):
    """A program's finished run (text output), or None if it cannot start or does not finish in time."""
    import subprocess
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None


def postconf(*args):
    """Output of Postfix's postconf (honours $MAIL_CONFIG), or None."""
    import shutil
    r = run_program([shutil.which("postconf") or "/usr/sbin/postconf", *args])
    return r.stdout.strip() if r and r.returncode == 0 else None


# ---------------------------------------------------------------------------
# 25. Intake: queue, filter and LMTP
# Owns: cmd_queue, cmd_filter, quarantine, poison messages, the LMTP server, cmd_send.
# Calls: sections 2-24.
# ---------------------------------------------------------------------------

def cmd_queue(args, config):
    """Run the queue chain over the message on stdin.  Exit 0 only when the post is durably stored
    (or deliberately discarded, held or consumed); every unexpected failure is 75 so that the MTA
    retries, up to [queue] max_failures times for the same message (poison_message)."""
    chain = build_chain(config.chain("queue"), "message", "queue")
    spec = globals().get("__spec__")
    if spec is not None and spec.cached and sys.flags.isolated:     # imported by the pipe's `python3 -I`
        try:
            stale = os.stat(spec.cached).st_mtime < os.stat(spec.origin).st_mtime
        except OSError:
            stale = True
        if stale:
            log.warning("no bytecode of %s newer than it: Python compiles it for every message (0.1 s);"
                        " run `redsky.py init` as root (redsky.py doctor)", spec.origin)
    store = open_store(config, durable=True)
    ctx = envelope_of(Context(config, store), args.recipient, args.sender, args.client_address)
    ctx.outbox.dry_run = args.dry_run
    try:
        verdict = run_chain(chain, ctx)
    except Exception as e:
        if ctx.raw is None or args.dry_run:
            raise
        return poison_message(ctx, e)
    code = finish_queue(ctx, verdict)
    if args.explain or args.dry_run:
        print(explain(ctx, code))
    return code


def poison_message(ctx, error):
    """A bug met this message.  Count the failure by the message's SHA-256; below [queue]
    max_failures raise it again (75: the MTA keeps the message and retries, perhaps after a fix).
    At the limit keep the message in the [filter] quarantine, tell the list's owners, log the
    traceback and return 0, so the MTA stops retrying a message that fails every time."""
    import hashlib
    digest, now = hashlib.sha256(ctx.raw).hexdigest(), time.time()
    reason = f"{type(error).__name__}: {one_line(error, 300)}"
    try:
        with ctx.store.transaction():
            ctx.store.q("add_failure", digest, now, now, reason)
        count = ctx.store.q("failure", digest).fetchone()[0]
    except (sqlite3.Error, StoreError):
        raise error
    if count < ctx.config.number("queue", "max_failures"):
        raise error
    try:
        key = quarantine_add(ctx.config, f"failed {count} times: {reason}", ctx.sender or "",
                             [ctx.recipient or ""], ctx.raw)
    except OSError:
        raise error
    log.error("%s failed %d times (%s): kept in the quarantine as %s", ctx.describe(), count, reason, key,
              exc_info=error)
    if ctx.list and owners_of(ctx.list):
        outbox = Outbox()
        Notices(ctx.store, ctx.config, ctx.list, outbox).send(
            owners_of(ctx.list), f"{list_address(ctx.list)}: a message kept in the quarantine", "quarantined",
            {"count": count, "reason": reason, "key": key, "message_id": ctx.message_id or "(none)"},
            limit=False, auto="auto-generated")
        try:
            outbox.commit(ctx.store, ctx.config.spool)
        except StoreError as e:
            log.error("cannot tell the owners of %s about it: %s", list_address(ctx.list), e)
    ctx.outcome, ctx.outcome_reason = "quarantined", f"failed {count} times: {reason}"
    store_event(ctx)
    return EX_OK


def envelope_of(ctx, recipient, sender, client_address, env=None):
    """Set the envelope the MTA gave: the command line first, then the environment a pipe sets
    (Postfix pipe(8) with flags: ORIGINAL_RECIPIENT, RECIPIENT, SENDER; proxsmtpd: SENDER, REMOTE
    or CLIENT; CLIENT_ADDRESS).  read completes what neither says from the header.  Returns ctx."""
    env = os.environ if env is None else env
    ctx.recipient = recipient or env.get("ORIGINAL_RECIPIENT") or env.get("RECIPIENT") or None
    ctx.sender = sender if sender is not None else env.get("SENDER")
    ctx.client_address = client_address or env.get("CLIENT_ADDRESS") or env.get("REMOTE") or env.get("CLIENT")
    return ctx


def cmd_filter(args, config):
    """Content-filter mode: [filter] filters over the message on stdin, with read first and out
    last (added when the chain does not name them); see finish_filter for the exit codes."""
    names = config.chain("filter")
    names = (["read"] if names[:1] != ["read"] else []) + names + (["out"] if names[-1:] != ["out"] else [])
    chain = build_chain(names, "message", "filter")
    store = open_store(config, durable=True, create=True)
    ctx = Context(config, store)
    ctx.mode = "filter"
    # proxsmtpd passes RECIPIENTS, one per line; a pipe, what the MTA expands
    recipients = (args.recipient or []) + args.recipients or os.environ.get("RECIPIENTS", "").split()
    ctx.envelope_recipients = [r for r in recipients if r.strip("<> ")]
    envelope_of(ctx, None, args.sender, args.client_address)
    return finish_filter(ctx, run_chain(chain, ctx), args.explain)


def cmd_quarantine(args, config):
    """quarantine: what filter mode held; release KEY: deliver it through
    [send] transport to its envelope recipients; delete KEY: drop it."""
    import mailbox
    held = quarantined(config)
    if args.action == "show":
        for key, (reason, sender, recipients, data) in sorted(held.items()):
            _, author, subject = summary(data)
            print(f"{key}\n    from {sender or '<>'} to {', '.join(recipients) or '?'}: {subject} ({author})"
                  f"\n    held: {reason}")
        return EX_OK
    if not args.keys:
        raise Failure(f"name the messages to {args.action} (keys from 'redsky.py quarantine')", EX_USAGE)
    box = mailbox.Maildir(config.path_of("filter", "quarantine"), create=False) if held else None
    status = EX_OK
    for key in args.keys:
        if key not in held:
            report(f"no quarantined message {key}")
            status = EX_DATAERR
            continue
        reason, sender, recipients, data = held[key]
        if args.action == "release":
            if not recipients:
                report(f"{key}: no envelope recipients were recorded; deliver it by hand")
                status = EX_DATAERR
                continue
            outcomes = {r: send_now(config, sender, r, data) for r in recipients}
            left = [r for r, o in outcomes.items() if o.kind != SENT]
            if left:
                if len(left) < len(recipients):     # keep it for the others only: nobody gets it twice
                    key, old = quarantine_add(config, reason, sender, left, data), key
                    box.remove(old)
                report(f"{key}: not delivered to {', '.join(left)}: {outcomes[left[0]].detail}; kept")
                status = EX_TEMPFAIL
                continue
        box.remove(key)
        print(f"{key}: {'released to ' + ', '.join(recipients) if args.action == 'release' else 'deleted'}")
    return status


# LMTP intake (RFC 2033) --------------------------------------------------------

class QueueWorker:
    """Runs the queue chain in this process, one message at a time, in one thread that owns the
    database connection (SQLite connections stay in the thread that made them).  reload() takes a
    new config for the messages that follow (SIGHUP)."""

    def __init__(self, config):
        import concurrent.futures
        self.config, self.store, self.chain = config, None, None
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue")

    def reload(self, config):
        self.config, self.chain = config, None
        if self.store is not None:
            self.store.close()
            self.store = None

    def queue(self, raw, recipient, sender):
        """(exit code, reason) of `queue` for one recipient: 0 only once the
        post is durably stored (or deliberately discarded, held or consumed)."""
        try:
            self.chain = self.chain or build_chain(self.config.chain("queue"), "message", "queue")
            self.store = self.store or open_store(self.config, durable=True)
            ctx = envelope_of(Context(self.config, self.store), recipient, sender, None, env={})
            ctx.raw = raw
            try:
                verdict = run_chain(self.chain, ctx)
            except Exception as e:
                return poison_message(ctx, e), "quarantined after repeated internal errors"
            return finish_queue(ctx, verdict), one_line(ctx.outcome_reason or ctx.outcome or "", 200)
        except Failure as e:
            return (e.code if e.code != EX_USAGE else EX_TEMPFAIL), one_line(e, 200)
        except Exception as e:                  # a bug: the MTA keeps the message and retries
            log.error("lmtp: internal error for %s: %s", recipient, e, exc_info=True)
            return EX_TEMPFAIL, "internal error, try again later"

    def is_list_address(self, address):
        """RCPT time: does a list answer at ``address``?"""
        self.store = self.store or open_store(self.config, durable=True)
        local, _, domain = address.rpartition("@")
        if not local or self.store.list_by_address(address):
            return bool(local)
        m = ROLE_ADDRESS.fullmatch(local)
        return bool(m and self.store.list_by_address(f"{m.group(1)}@{domain}"))


# exit code of `queue` -> the LMTP reply for that recipient (RFC 2033 4.2, RFC 3463)
LMTP_REPLIES = {EX_OK: "250 2.0.0", EX_DATAERR: "554 5.6.0", EX_NOUSER: "550 5.1.1",
                EX_DISCARDED: "250 2.0.0"}


class LMTPServer:
    """LMTP over TCP or a Unix socket: a list address is refused at RCPT (550 5.1.1) when no list
    answers it; after DATA each accepted recipient gets its own reply, 250 only once the post is
    durably queued, 4xx for anything temporary.  Limits: [lmtp] max_size, sessions, sessions_per_peer
    (peer_of), idle_timeout (without progress: NOOP and the like do not count), session_timeout, and
    LMTP_JUNK_LIMIT commands without a message.  stop() (SIGTERM) refuses new sessions and commands
    with 421 and lets the message in flight finish."""

    def __init__(self, config, worker):
        self.config, self.worker = config, worker
        self.sessions, self.busy, self.stopping, self.server = set(), set(), False, None
        self.peers, self.told = collections.Counter(), {}
        self.hostname = __import__("socket").getfqdn()

    async def serve(self, listen):
        import asyncio
        host, port = parse_listen(listen, unix=True)
        if host == "unix":
            _unlink_quietly(port)
            self.server = await asyncio.start_unix_server(self.session, port)
            os.chmod(port, 0o660)
        else:
            self.server = await asyncio.start_server(self.session, host, port)
        log.info("lmtp: listening on %s", listen)
        async with self.server:
            await self.server.serve_forever()

    def stop(self):
        self.stopping = True
        if self.server is not None:
            self.server.close()

    async def session(self, reader, writer):
        import asyncio
        c, task, peer = self.config, asyncio.current_task(), None
        try:
            try:
                peer = peer_of(writer.get_extra_info("socket"), writer.get_extra_info("peername"))
            except (OSError, ValueError, TypeError):
                peer = str(writer.get_extra_info("peername"))
            if self.stopping or len(self.sessions) >= int(c.number("lmtp", "sessions")):
                writer.write(b"421 4.3.2 too busy or shutting down, try again later\r\n")
                await writer.drain()
                return
            if self.peers[peer] >= int(c.number("lmtp", "sessions_per_peer")):
                if self.told.get(peer, 0) < time.monotonic() - 60:      # a line a minute, not one each
                    self.told = {} if len(self.told) > 1000 else self.told
                    self.told[peer] = time.monotonic()
                    log.warning("lmtp: %s holds %d sessions already: more get 421", peer, self.peers[peer])
                writer.write(b"421 4.7.0 too many sessions from you, try again later\r\n")
                await writer.drain()
                return
            self.sessions.add(task)
            self.peers[peer] += 1
            await asyncio.wait_for(self.dialogue(reader, writer, c.size("lmtp", "max_size"),
                                                 c.duration("lmtp", "idle_timeout")),
                                   c.duration("lmtp", "session_timeout"))
        except asyncio.CancelledError:          # shutting down while the client was idle
            pass
        except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError) as e:
            if isinstance(e, asyncio.TimeoutError):
                log.info("lmtp: %s: timeout (no progress, or the session's time is up): 421", peer)
            try:
                writer.write(b"421 4.4.2 timeout, closing\r\n")
                await writer.drain()
            except ConnectionError:
                pass
        finally:
            if task in self.sessions:
                self.sessions.discard(task)
                self.peers[peer] -= 1
                if self.peers[peer] <= 0:
                    del self.peers[peer]
            writer.close()

    async def dialogue(self, reader, writer, max_size, idle):
        """The commands of one session.  ``idle`` counts from the session's start or its last message,
        not from its last command, and every command but the first LHLO and an accepted RCPT costs
        one of LMTP_JUNK_LIMIT until a message is delivered: NOOP, RSET, VRFY, a MAIL that leads
        nowhere or a refused command keeps no session alive."""
        import asyncio
        loop = asyncio.get_running_loop()

        async def reply(*lines):
            writer.write(b"".join(line.encode("utf-8", "replace") + b"\r\n" for line in lines))
            await writer.drain()

        await reply(f"220 {self.hostname} redsky LMTP ready")
        sender, recipients, greeted, junk = None, [], False, 0
        deadline = loop.time() + idle
        while not self.stopping:
            data = await asyncio.wait_for(read_line(reader, 4096), max(0.0, deadline - loop.time()))
            if not data:
                raise ConnectionError("client went away")
            # a command line ends in CRLF, or a bare LF taken as one (Postfix's normalize)
            command = data[:-2] if data.endswith(b"\r\n") else data.rstrip(b"\n")
            verb, junk = command[:4].upper(), junk + 1
            if b"\r" in command or b"\0" in command:
                await reply("500 5.5.2 bare <CR> or NUL in a command")
            elif verb == b"LHLO":
                junk, greeted = junk - (not greeted), True
                await reply(f"250-{self.hostname}", "250-PIPELINING", "250-ENHANCEDSTATUSCODES",
                            f"250-SIZE {max_size}", "250 8BITMIME")
            elif verb == b"MAIL":
                m = re.match(r"(?i)MAIL FROM:\s*<([^<>]*)>(.*)", command.decode("utf-8", "replace"))
                size = re.search(r"(?i)\bSIZE=(\d+)", m.group(2)) if m else None
                if not greeted:
                    await reply("503 5.5.1 LHLO first")
                elif m is None:
                    await reply("501 5.5.4 syntax: MAIL FROM:<address>")
                elif size and int(size.group(1)) > max_size:
                    await reply(f"552 5.3.4 message larger than {max_size} bytes")
                else:
                    sender, recipients = m.group(1), []
                    await reply("250 2.1.0 sender ok")
            elif verb == b"RCPT":
                m = re.match(r"(?i)RCPT TO:\s*<([^<>]+)>", command.decode("utf-8", "replace"))
                if sender is None:
                    await reply("503 5.5.1 MAIL first")
                elif m is None:
                    await reply("501 5.5.4 syntax: RCPT TO:<address>")
                elif len(recipients) >= LMTP_MAX_RECIPIENTS:
                    await reply(f"452 4.5.3 at most {LMTP_MAX_RECIPIENTS} recipients, the rest next time")
                else:
                    address = m.group(1).strip()
                    if await loop.run_in_executor(self.worker.pool, self.worker.is_list_address, address):
                        recipients.append(address)
                        junk -= 1
                        await reply("250 2.1.5 recipient ok")
                    else:
                        await reply(f"550 5.1.1 <{address}>: no list here")
            elif verb == b"DATA":
                if not recipients:
                    await reply("503 5.5.1 no valid recipients")
                else:
                    await reply("354 end with <CRLF>.<CRLF>")
                    await self.deliver(reader, reply, loop, sender, recipients, max_size, idle)
                    sender, recipients, junk, deadline = None, [], 0, loop.time() + idle
            elif verb == b"QUIT":
                await reply("221 2.0.0 bye")
                return
            elif verb == b"RSET":
                sender, recipients = None, []
                await reply("250 2.0.0 ok")
            else:
                await reply({b"NOOP": "250 2.0.0 ok", b"VRFY": "252 2.1.5 send some mail and see"}.get(
                    verb, "500 5.5.2 unknown command"))
            if junk >= LMTP_JUNK_LIMIT:
                log.info("lmtp: %d commands without a message: 421", junk)
                await reply("421 4.7.0 too many commands without mail, closing")
                return
        await reply("421 4.3.2 shutting down, try again later")

    async def deliver(self, reader, reply, loop, sender, recipients, max_size, idle):
        """Read the message after 354, then queue it for each recipient, one reply each."""
        import asyncio
        data = LMTPData(max_size)
        while not data.add(await asyncio.wait_for(read_line(reader, max_size + 2), idle)):
            pass
        self.busy.add(asyncio.current_task())
        try:
            for recipient in recipients:
                if data.too_big:
                    await reply(f"552 5.3.4 message larger than {max_size} bytes")
                    continue
                code, reason = await loop.run_in_executor(self.worker.pool, self.worker.queue, data.message(),
                                                          recipient, sender)
                status = LMTP_REPLIES.get(code, "550 5.7.1" if code == EX_NOPERM else "451 4.3.0")
                await reply(f"{status} <{recipient}> {reason or 'ok'}")
        finally:
            self.busy.discard(asyncio.current_task())


LMTP_JUNK_LIMIT = 100       # commands without a message (NOOP, RSET, MAIL, refusals …): then 421
LMTP_MAX_RECIPIENTS = 1000  # per transaction (RFC 5321 asks for 100 at least): more get 452


class LMTPData:
    """The lines of DATA as read_line gives them.  Only <CRLF>.<CRLF> ends the message (RFC 5321
    4.1.1.4; Postfix's smtpd_forbid_bare_newline = normalize, its default since 3.9): a line that ends
    in a bare LF is a line, but a "." line next to one (LF.LF, LF.CRLF, CRLF.LF) is neither the end nor
    content, so no end that a client or a relay might read differently cuts the message short and
    runs what follows as commands (SMTP smuggling).  A CR not before the LF that ends a line becomes a
    space (Postfix's cleanup_replace_stray_cr_lf), so CR.CR is text and no bare CR goes out again.
    Dot-unstuffed, LF line ends; past max_size the rest is read and dropped (too_big)."""

    def __init__(self, max_size):
        self.max_size, self.chunks, self.size, self.too_big, self.bare_lf = max_size, [], 0, False, False

    def add(self, data):
        """Take one line (with its LF); True once the message has ended."""
        if not data.endswith(b"\n"):
            raise ConnectionError("client went away in DATA")       # nothing is queued
        crlf = data.endswith(b"\r\n")
        line = data[:-2] if crlf else data[:-1]
        after_bare_lf, self.bare_lf = self.bare_lf, not crlf
        if line == b".":
            return crlf and not after_bare_lf
        if line.startswith(b"."):
            line = line[1:]
        if b"\r" in line:
            line = line.replace(b"\r", b" ")
        self.size += len(line) + 1
        if self.size > self.max_size:
            self.too_big, self.chunks = True, []
        elif not self.too_big:
            self.chunks.append(line + b"\n")
        return False

    def message(self):
        return b"".join(self.chunks)


async def read_line(reader, cap):
    """One line, newline included, however long (asyncio's readline gives
    up at 64 KB, and real mail has longer lines); past ``cap`` bytes the rest
    of the line is read and dropped, its own line end kept (CRLF or LF).  b"" at the end of the
    stream."""
    import asyncio
    parts, size, tail = [], 0, b""
    while True:
        try:
            part = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as e:
            part = await reader.readexactly(e.consumed)
        except asyncio.IncompleteReadError as e:
            part = e.partial
            if not part:
                return b"".join(parts)
        if size < cap:
            parts.append(part[:cap - size])
        size, tail = size + len(part), (tail + part)[-2:]
        if part.endswith(b"\n") or not part:
            joined = b"".join(parts)
            if size <= cap or joined.endswith(b"\n"):
                return joined
            return joined + (b"\r\n" if tail == b"\r\n" else b"\n")


def cmd_lmtp(args, config):
    """Serve LMTP (RFC 2033) on --listen HOST:PORT or unix:PATH until SIGTERM;
    SIGHUP reloads the config for the messages that follow."""
    import asyncio
    import signal
    parse_listen(args.listen, unix=True)            # a usage error (64) before anything starts
    worker = QueueWorker(config)
    server = LMTPServer(config, worker)

    def reload():
        try:
            fresh = Config.find(getattr(args, "config", None))
        except Failure as e:
            log.error("lmtp: config not reloaded: %s", e)
            return
        server.config = fresh
        worker.pool.submit(worker.reload, fresh)
        log.info("lmtp: config reloaded")

    async def main():
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, server.stop)
        loop.add_signal_handler(signal.SIGINT, server.stop)
        loop.add_signal_handler(signal.SIGHUP, reload)
        serving = asyncio.ensure_future(server.serve(args.listen))
        while not server.stopping and not serving.done():
            await asyncio.sleep(0.2)
        server.stop()
        if serving.done() and not serving.cancelled() and serving.exception():
            raise serving.exception()
        for task in server.sessions - server.busy:             # idle sessions end now ...
            task.cancel()
        deadline = time.time() + config.duration("lmtp", "session_timeout")
        while server.sessions and time.time() < deadline:      # ... the message in flight finishes
            await asyncio.sleep(0.05)
        serving.cancel()

    try:
        asyncio.run(main())
    except OSError as e:
        raise Failure(f"cannot listen on {args.listen}: {e.strerror or e}", EX_CONFIG)
    worker.pool.shutdown(wait=True)
    log.info("lmtp: stopped")
    return EX_OK


def cmd_send(args, config):
    chain = build_chain(config.chain("send"), "send", "send")
    store = open_store(config, durable=False)
    ctx = Context(config, store)
    try:
        verdict = run_chain(chain, ctx)
    finally:                    # the lock and the store go when send returns, not at exit
        if ctx.lock_fd is not None:
            os.close(ctx.lock_fd)
        store.close()
    if verdict is not None:
        report(verdict.reason, logging.INFO)
        return verdict.code
    if ctx.totals is not None:     # an idle run (every minute from cron) is worth no line
        log.log(logging.INFO if any(ctx.totals.values()) else logging.DEBUG, "send: %s", ctx.trace[-1][1])
        if ctx.totals.get("unreadable"):
            report(f"{ctx.totals['unreadable']} queued posts cannot be read ({ctx.unreadable}); "
                   f"fix: chown -R {pipe_user(config)} {config.spool} and run queue as that user")
            return EX_TEMPFAIL
    return EX_OK


# ---------------------------------------------------------------------------
# 26. Administration commands
# Owns: the cmd_* of lists, members, moderation, bounces, status and trace.
# Calls: sections 2-25.
# ---------------------------------------------------------------------------

# Lists and members -----------------------------------------------------------

def store_and_list(config, address):
    """The store and the row of the list a command names (67 if none)."""
    store = open_store(config)
    return store, store.require_list(address)


def show(args, rows, line):
    """Print ``rows`` as JSON with --json, else ``line(row)`` for each; EX_OK."""
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(line(row))
    return EX_OK


def local_time(t, form="%Y-%m-%d %H:%M"):
    return time.strftime(form, time.localtime(t)) if t else "-"


def cmd_init(args, config):
    store = open_store(config, create=True)
    os.makedirs(config.spool, exist_ok=True)
    exported = export_postfix_map(config, store)
    store.close()
    print(f"database: {config.database}\nspool:    {config.spool}")
    if exported:
        print(f"postfix:  {exported}")
    if config.flag("web", "cgi"):               # the web server's user writes here too
        for line in share_with_web(config):
            print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout)
    if getattr(args, "bytecode", None):
        print(f"bytecode: {args.bytecode} (what the MTA's pipe runs)")
    return EX_OK


def split_list_address(address):
    address = address.strip()
    local, at, domain = address.rpartition("@")
    if not at or not valid_address(address) or "+" in local:
        raise Failure(f"not a valid list address: {address!r}", EX_USAGE)
    if ROLE_ADDRESS.fullmatch(local):
        raise Failure(f"a list name cannot end in -{local.rsplit('-', 1)[1]}: that address is "
                      f"reserved", EX_USAGE)
    return local, domain.lower()


def cmd_newlist(args, config):
    name, domain = split_list_address(args.list)
    settings = {"access": args.access, "passphrase": args.passphrase, "subject_tag": args.subject_tag,
                "footer": args.footer, "owners": ",".join(args.owner or []),
                "subscribe_policy": args.subscribe_policy}
    columns = dict(validate_setting(k, v) for k, v in settings.items() if v is not None)
    if columns.get("access") == "passphrase" and not columns.get("passphrase_hash"):
        raise Failure("access passphrase needs --passphrase", EX_USAGE)
    store = open_store(config, create=True)
    os.makedirs(config.spool, exist_ok=True)
    try:
        with store.transaction() as db:
            store.add_list(db, {"name": name, "domain": domain, "created": time.time(), **columns})
    except sqlite3.IntegrityError:
        raise Failure(f"list {name}@{domain} already exists", EX_DATAERR)
    export_postfix_map(config, store)
    print(f"created list {name}@{domain} (access {columns.get('access', 'subscribers')})")
    return EX_OK


def cmd_lists(args, config):
    if not os.path.exists(config.database):    # no lists, and no database made: a restore may follow
        rows = []
    else:
        store = open_store(config, create=True)
        counts = dict(store.q("member_counts").fetchall())
        rows = [{"list": list_address(r), "members": counts.get(r["id"], 0),
                 **{k: r[k] for k in SETTABLE if k in r}} for r in map(dict, store.q("all_lists"))]
    return show(args, rows, lambda r: f"{r['list']}\t{r['access']}\t{r['members']} members")


def cmd_set(args, config):
    store, row = store_and_list(config, args.list)
    column, value = validate_setting(args.key, args.value)
    if column == "access" and value == "passphrase" and not row["passphrase_hash"]:
        raise Failure("set a passphrase first: set LIST passphrase SECRET", EX_USAGE)
    with store.transaction() as db:
        store.set_list(db, row["id"], column, value)
    print(f"{list_address(row)}: {args.key} set")
    if column in ("archive", "description") and (row["archive"] == "public" or value == "public"):
        count = build_pages(config, store.require_list(args.list))     # published, or taken down
        public = value == "public" or column != "archive"
        print(f"{list_address(row)}: {count} posts on the web pages" if public
              else f"{list_address(row)}: the archive's web pages are removed")
    return EX_OK


def cmd_dellist(args, config):
    store, row = store_and_list(config, args.list)
    spools = [r[0] for r in store.q("list_spools", row["id"])]
    if args.dry_run:
        what = store.q("list_contents", row["id"]).fetchone()
        print(f"would delete list {list_address(row)}: {what['members']} members, {what['queued']} posts"
              f" and notices waiting to be sent, {what['held']} held posts, {what['pending']} pending"
              f" confirmations; its web pages go, its archive ({archive_path(config, row)}) stays")
        return EX_OK
    with store.transaction():
        store.q("delete_list", row["id"])
    for name in spools:
        _unlink_quietly(os.path.join(config.spool, name))
    build_pages(config, {**row, "archive": "off"})         # its web pages go; its archive stays
    export_postfix_map(config, store)
    print(f"deleted list {list_address(row)}")
    return EX_OK


def addresses_from_args(values):
    """(address, display name) of each value, or of each line of stdin for '-' (name_addr)."""
    out = []
    for value in values:
        lines = [line for line in sys.stdin if line.strip() and not line.startswith("#")] if value == "-" \
            else [value]
        out += [name_addr(line) for line in lines]
    return out


def name_addr(line):
    """(address, display name) of "addr", "<addr>" or "Name <addr>" (RFC 5322
    name-addr; `list_members -f` and `mailman members` print members so too)."""
    line, name = line.strip(), ""
    if line.endswith(">") and "<" in line:          # split at the last '<': commas are the name's
        name, _, line = line[:-1].rpartition("<")
        name = name.strip()
        quoted = len(name) > 1 and name[0] == name[-1] == '"'
        name = re.sub(r"\\(.)", r"\1", name[1:-1]) if quoted else name.strip('"').strip()
    return line, one_line(decode_header_text(name), 200)


def cmd_subscribe(args, config, subscribe=True):
    """Add addresses (with their names) to a list at once: no confirmation;
    the welcome text only with --welcome.  cmd_unsubscribe removes them."""
    store, row = store_and_list(config, args.list)
    if not args.addresses:
        raise Failure("name at least one address, or '-' to read them from stdin", EX_USAGE)
    # REMAINDER takes an option written after the list as an address
    welcome = subscribe and (args.welcome or "--welcome" in args.addresses)
    addresses = addresses_from_args([a for a in args.addresses if a != "--welcome"])
    bad = [a for a, _ in addresses if not valid_address(a)]
    good = [(normalize_address(a), name) for a, name in addresses if valid_address(a)]
    refused = {a for a, _ in good if banned(store, row, [a])} if subscribe else set()
    good = [(a, name) for a, name in good if a not in refused]
    members, outbox, changed = MemberLookup(store, row["id"]), Outbox(), [0]
    notices = Notices(store, config, row, outbox)
    tell_owners(notices, "joined" if subscribe else "left",
                [a for a, _ in good if (a in members) != subscribe])
    if welcome:
        for address in {a for a, _ in good if a not in members}:
            notices.send([address], f"Welcome to {list_address(row)}", "welcome", {"address": address},
                         limit=False)

    def change(db):
        for address, name in good:
            done = db.execute(SQL["add_member_named"], (row["id"], address, time.time(), name)) \
                if subscribe else db.execute(SQL["delete_member"], (row["id"], address))
            changed[0] += done.rowcount
    outbox.commit(store, config.spool, change)
    verb = "subscribed" if subscribe else "unsubscribed"
    print(f"{list_address(row)}: {verb} {changed[0]} of {len(good)} valid addresses")
    for address in bad:
        print(f"redsky: not a valid address: {address!r}", file=sys.stderr)
    for address in sorted(refused):
        print(f"redsky: on the list's ban list, not subscribed: {address}", file=sys.stderr)
    return EX_DATAERR if bad or refused else EX_OK


def cmd_unsubscribe(args, config):
    """Remove addresses from a list at once: no confirmation, no goodbye."""
    return cmd_subscribe(args, config, subscribe=False)


def cmd_invite(args, config):
    """invite LIST ADDR...: an invitation to each address that is not a member (nor banned),
    which joins by replying (a subscribe token, as for double opt-in)."""
    if not args.addresses:
        raise Failure("name at least one address, or '-' to read them from stdin", EX_USAGE)
    store, row = store_and_list(config, args.list)
    addresses = addresses_from_args(args.addresses)
    bad = [a for a, _ in addresses if not valid_address(a)]
    members, outbox = MemberLookup(store, row["id"]), Outbox()
    notices, expiry = Notices(store, config, row, outbox), config.duration("commands", "confirm_expiry")
    invited = []
    for address in dict.fromkeys(normalize_address(a) for a, _ in addresses if valid_address(a)):
        if address in members or banned(store, row, [address]):
            print(f"redsky: {address} is {'a member' if address in members else 'banned'}; not invited",
                  file=sys.stderr)
            continue
        token = add_pending(outbox.changes, row, address, "subscribe", notices.now, expiry)
        confirm = list_address(row, f"-confirm+{token}")
        notices.send([address], f"Invitation to join {list_address(row)} (confirm {token})", "invite",
                     {"confirm_address": confirm, "days": f"{expiry / 86400:g}"},
                     limit=False, reply_to=confirm)
        invited.append(address)
    outbox.commit(store, config.spool)
    print(f"{list_address(row)}: invited {len(invited)} of {len(addresses) - len(bad)} valid addresses")
    for address in bad:
        print(f"redsky: not a valid address: {address!r}", file=sys.stderr)
    return EX_DATAERR if bad else EX_OK


def cmd_members(args, config):
    """The members, their status and options (text: the options that are on)."""
    store, row = store_and_list(config, args.list)
    members = []
    for r in store.q("members", row["id"]):
        options = options_of(r)
        if args.option and not options[args.option]:
            continue
        members.append({"address": r["address"], "name": r["name"], "status": r["status"],
                        "bounce_score": r["bounce_score"], **options,
                        "nomail_until": r["disabled_until"] if options["nomail"] else None})

    def line(m):
        on = [name + (f" until {time.strftime('%Y-%m-%d', time.gmtime(m['nomail_until']))}"
                      if name == "nomail" and m["nomail_until"] else "")
              for name in MEMBER_OPTIONS if m[name]]
        return f"{m['address']}\t{m['status']}\t{m['bounce_score']:g}" + "".join(f"\t{o}" for o in on)
    return show(args, members, line)


def cmd_set_member(args, config):
    """set-member LIST ADDR OPTION on|off [--until DATE]: a member's options (MEMBER_OPTIONS)."""
    store, row = store_and_list(config, args.list)
    if args.until and (args.key, args.value) != ("nomail", "on"):
        raise Failure("--until goes with 'nomail on' only", EX_USAGE)
    until = parse_day(args.until, "--until") if args.until else None
    if until is not None and until <= time.time():
        raise Failure(f"--until {args.until}: that day has passed", EX_USAGE)
    member = store.q("member_options", row["id"], normalize_address(args.address)).fetchone()
    if member is None:
        raise Failure(f"{args.address} is not a member of {list_address(row)}", EX_DATAERR)
    on = args.value == "on"
    outbox = Outbox()
    outbox.commit(store, config.spool, set_member_option(store, outbox, row, member, args.key, on, until))
    print(f"{list_address(row)}: {member['address']} {args.key} {args.value}"
          + (f" until {args.until}" if until else "")
          + (f" ({MEMBER_OPTIONS[args.key]})" if on else ""))
    return EX_OK


def archive_selection(config, list_row, since=None, search=None, store=None):
    """(number, bytes, summary) of the archived posts that match, in number order."""
    store = store or open_store(config)
    for row, data in archived(config, store, list_row):
        if data is None:
            continue
        when, author, subject = summary(data)
        if since is not None and (when is None or when < since):
            continue
        if search and search.casefold() not in f"{author}\n{subject}\n{text_of(data)}".casefold():
            continue
        yield row["number"], data, (when, author, subject)


def parse_day(value, option="--since"):
    from datetime import datetime, timezone
    try:
        day = datetime.fromisoformat(value)
    except ValueError:
        raise Failure(f"{option} {value!r}: use a date like 2026-11-01", EX_USAGE)
    return (day if day.tzinfo else day.replace(tzinfo=timezone.utc)).timestamp()


def cmd_archive(args, config):
    """archive LIST: the archived posts, numbered; archive export LIST: an mbox; archive html LIST:
    the web pages made again (build_pages); archive delete LIST N...: posts removed (archive_delete)."""
    verb = args.words[0] if args.words[0] in ("export", "html", "delete") else ""
    words = args.words[1:] if verb else args.words
    if (len(words) != 1 and verb != "delete") or (verb == "delete" and len(words) < 2):
        raise Failure("use: archive LIST [--since DATE] [--search TEXT] | archive export LIST "
                      "[--output FILE] | archive html LIST | archive delete LIST N...", EX_USAGE)
    store, row = store_and_list(config, words[0])
    if verb == "html":
        count = build_pages(config, row, store)
        print(f"{pages_dir(config, row)}: {count} posts" if row["archive"] == "public" else
              f"{list_address(row)}: the archive is {row['archive']}, so it has no web pages (removed)")
        return EX_OK
    if verb == "delete":
        if not all(w.isdigit() and len(w) < 10 for w in words[1:]):
            raise Failure("archive delete LIST N...: N is a post's number (`archive LIST` shows them)",
                          EX_USAGE)
        missing = [n for n in words[1:] if not archive_delete(config, store, row, int(n), "the command line")]
        for n in words[1:]:
            if n not in missing:
                print(f"{list_address(row)}: post {int(n)} removed from the archive")
        if missing:
            raise Failure(f"{list_address(row)}: no post {', '.join(missing)} in the archive (or removed"
                          " already)", EX_DATAERR)
        return EX_OK
    since = parse_day(args.since) if args.since else None
    if verb == "export" or args.search or since is not None:
        posts = archive_selection(config, row, since, args.search, store)
        if verb == "export":
            return export_mbox(posts, args.output)
        rows = [{"number": n, "date": when, "from": author, "subject": subject}
                for n, _, (when, author, subject) in posts]
    else:
        ensure_numbered(config, store, row)
        rows = [{"number": r["number"], "date": r["date"], "from": r["author"], "subject": r["subject"]}
                for r in store.q("archived_present", row["id"])]
    utc = lambda t: time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) if t else "?"
    return show(args, rows, lambda r: f"{r['number']:5}  {utc(r['date'])}  {r['from'][:30]:30}  "
                f"{r['subject']}")


def export_mbox(posts, output=None):
    """Write the posts as one mbox (mboxrd-quoted From lines) to ``output``,
    atomically (temporary file, then rename), or to stdout."""
    import mailbox
    import tempfile
    from email.utils import parseaddr
    target_dir = os.path.dirname(os.path.abspath(output)) if output else None
    fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=".export-", suffix=".mbox")
    os.close(fd)
    try:
        box = mailbox.mbox(tmp)
        box.lock()
        for _, data, (when, author, _) in posts:
            sender = parseaddr(RawMessage(data).get("From") or "")[1] or "MAILER-DAEMON"
            stamp = time.asctime(time.gmtime(when if when is not None else time.time()))
            box.add(f"From {sender.replace(' ', '_')} {stamp}\n".encode() + data.replace(b"\r\n", b"\n"))
        count = len(box)
        box.close()                         # flushed and unlocked
        if output:
            os.replace(tmp, output)
            print(f"{count} posts written to {output}", file=sys.stderr)
        else:
            with open(tmp, "rb") as fh:
                sys.stdout.buffer.write(fh.read())
            sys.stdout.buffer.flush()
    finally:
        _unlink_quietly(tmp)
    return EX_OK


def cmd_acl(args, config):
    store, row = store_and_list(config, args.list)
    if args.action in ("add", "del"):
        with store.transaction() as db:
            for pattern in args.patterns:
                pattern = pattern.strip().lower()
                if not re.fullmatch(r"[^\s@]+@[^\s@]+", pattern):
                    raise Failure(f"not an address or *@domain pattern: {pattern!r}", EX_DATAERR)
                db.execute(SQL["acl_add" if args.action == "add" else "acl_del"], (row["id"], pattern))
    for r in store.q("acl", row["id"]):
        print(r["pattern"])
    return EX_OK


def cmd_ban(args, config):
    """ban LIST [add|del PATTERN...]: who may neither post nor join (banned)."""
    store, row = store_and_list(config, args.list)
    if args.action in ("add", "del"):
        if not args.patterns:
            raise Failure(f"ban {args.action}: name at least one pattern", EX_USAGE)
        rows = [(row["id"], ban_pattern(p)) for p in args.patterns]
        with store.transaction() as db:
            db.executemany(SQL["ban_add" if args.action == "add" else "ban_del"], rows)
    for r in store.q("bans", row["id"]):
        print(r["pattern"])
    return EX_OK


# Moderation, bounces, status -------------------------------------------------

def cmd_held(args, config):
    store = open_store(config)
    list_id = store.require_list(args.list)["id"] if args.list else None
    rows = [{**r, "list": list_address(r)} for r in map(dict, store.q("held_posts", list_id, list_id))]
    return show(args, rows, lambda r: f"{r['id']}\t{r['list']}\t{local_time(r['received'])}\t"
                f"{r['from_addr'] or r['sender']}\t{r['subject']!r}\t{r['reason']}")


def cmd_approve(args, config):
    """Release a held post: the queue chain runs again on it, approved."""
    store = open_store(config)
    ctx = release_held(store, config, args.id)
    print(f"approved held post {args.id} ({len(ctx.recipients)} recipients)")
    return EX_OK


def cmd_reject(args, config, notify=True):
    """Drop a held post and tell the sender why (cmd_discard: silently)."""
    store = open_store(config)
    held = store.held(args.id)
    if held is None:
        raise Failure(f"no held post with id {args.id}", EX_DATAERR)
    outbox = Outbox()
    notices = Notices(store, config, store.list_by_id(held["list_id"]), outbox, held["message_id"])
    done = drop_held(held, notices, outbox.changes, notify,
                     getattr(args, "reason", None) or "rejected by the moderator")
    outbox.commit(store, config.spool)
    log.info("%s", done)
    print(f"{'rejected' if notify else 'discarded'} held post {args.id}")
    return EX_OK


def cmd_discard(args, config):
    """Drop a held post silently."""
    return cmd_reject(args, config, notify=False)


def cmd_pending(args, config):
    """Open confirmations and requests, newest last."""
    store = open_store(config)
    list_id = store.require_list(args.list)["id"] if args.list else None
    rows = [dict(r) for r in store.q("open_pending", time.time(), list_id, list_id)]
    return show(args, rows, lambda r: f"{r['list']}\t{r['action']}\t"
                f"{'held post ' + str(r['held_id']) if r['held_id'] else r['address']}\t"
                f"{local_time(r['created'])}\t{r['token']}")


def cmd_enable(args, config):
    """Deliver to a member again and reset the bounce score."""
    store, row = store_and_list(config, args.list)
    with store.transaction() as db:
        changed = db.execute(SQL["reenable"], (row["id"], normalize_address(args.address))).rowcount
    if not changed:
        raise Failure(f"{args.address} is not a member of {list_address(row)}", EX_DATAERR)
    print(f"{list_address(row)}: {args.address} enabled, bounce score reset")
    return EX_OK


def cmd_bounces(args, config):
    """Each member's bounce history with the evidence and the verdict."""
    store, row = store_and_list(config, args.list)
    members = {m["address"].lower(): dict(m) for m in store.q("members_bounce_status", row["id"])}
    history = {}
    for b in store.q("bounce_history", row["id"]):
        history.setdefault(b["address"].lower(), []).append(dict(b))
    report = [{**members.get(a, {"address": a, "status": "not a member"}), "bounces": h}
              for a, h in sorted(history.items())]
    if args.json:
        print(json.dumps(report, indent=2))
        return EX_OK
    for m in report:
        print(f"{m['address']}  {m['status']}"
              + (f" ({m['disabled_reason']} since {local_time(m['disabled_at'])}, {m['warnings']} warnings)"
                 if m.get("disabled_reason") else "")
              + (f"  score {m['bounce_score']:g}" if "bounce_score" in m else ""))
        for b in m["bounces"]:
            print(f"    {local_time(b['received'])}  {b['source']:8} {b['action'] or '-':8} "
                  f"{b['status'] or '-':6} {b['cause'] or '-'} (weight {b['weight']:g})"
                  f" {'COUNTED' if b['counted'] else 'ignored'}: {b['why']}")
            if b["message_id"]:
                print(f"        post {b['message_id']}")
            if b["diagnostic"] or b["reporting_mta"]:
                print(f"        {b['reporting_mta'] or ''} {b['diagnostic']}".rstrip())
    return EX_OK


def cmd_status(args, config):
    store = open_store(config)
    keys = "queued_posts pending deferred sent bounced failed expired held digest_posts".split()
    counts = dict(zip(keys, store.q("status_counts").fetchone()))
    counts["unreadable"] = len(unreadable_spool_files(config, store))
    if args.json:
        print(json.dumps(counts, indent=2))
    else:
        for key, count in counts.items():
            print(f"{key:13} {count}")
        if counts["unreadable"]:
            print(f"unreadable: queued posts whose spool file {pipe_user(config)} or you cannot read;"
                  f" fix: chown -R {pipe_user(config)} {config.spool}")
    return EX_OK


def unreadable_spool_files(config, store, user=None):
    """Spool files of queued posts that this process (or ``user``) cannot read:
    `send` would skip them on every run."""
    paths = [os.path.join(config.spool, name) for (name,) in store.q("queued_spools")]
    if user is None:
        return [p for p in paths if not (os.path.isfile(p) and os.access(p, os.R_OK))]
    return [p for p in paths if not (os.path.isfile(p) and user_can(p, user))]


def cmd_trace(args, config):
    """Everything redsky knows about one Message-ID: what each filter
    decided, and each recipient's delivery state with the last reply."""
    store = open_store(config)
    wanted = args.message_id.strip()
    ids = (wanted, wanted.strip("<>"), f"<{wanted.strip('<>')}>")
    events = [dict(r, trace=json.loads(r["trace"])) for r in store.q("events_of", *ids)]
    deliveries = [dict(r) for r in store.q("deliveries_of", *ids, args.address)]
    if not events and not deliveries:
        raise Failure(f"redsky has no record of {wanted}", EX_DATAERR)
    for d in deliveries:                   # sent, then reported failed to a signed address
        bounce = d.pop("bounce")
        if bounce is not None:
            d["bounced"] = dict(store.q("bounce_by_id", bounce).fetchone())
            d["state"] = "bounced"
    if args.json:
        print(json.dumps({"events": events, "deliveries": deliveries}, indent=2))
        return EX_OK
    stamp = lambda t: local_time(t, "%Y-%m-%d %H:%M:%S")
    for e in events:
        print(f"{stamp(e['received'])}  to {e['recipient']} from "
              f"{e['sender'] if e['sender'] is not None else '?'}  list {e['list'] or '-'}")
        for name, note in e["trace"]:
            print(f"    {name:15} {note}")
        print(f"    {'=> ' + e['outcome']:15} {e['reason']}")
    if deliveries:
        print("deliveries:")
    for d in deliveries:
        detail = d["last_error"] or ""
        retrying = d["state"] == "pending" and d["attempts"]
        when = f"next try {stamp(d['next_attempt'])}" if retrying else stamp(d["updated"])
        if "bounced" in d:
            b = d["bounced"]
            when = stamp(b["received"])
            detail = f"{b['status']} {b['cause']} ({b['source']} report) {b['diagnostic']}"[:200]
        print(f"    {d['address']:30} {d['state']:8} attempts {d['attempts']}  {when}  {detail}")
    return EX_OK


# Backup and restore -------------------------------------------------------------
# One tar file holds the state of an installation: the database (a snapshot by SQLite's online
# backup), the spool file of every post still waiting, the archive, the web pages, the quarantine
# and the configuration.  `send` is kept out while it is taken (send.lock): what the snapshot says
# was delivered is exactly what was, so a restored installation delivers each waiting post once.
BACKUP_PARTS = (("archive", "archive", "dir"), ("pages", "web", "pages"),
                ("quarantine", "filter", "quarantine"))


def open_backup(args):
    """Open FILE.tmp for the backup as the caller, before redsky works as the list user: root's
    nightly backup goes to a directory only root may write (/var/backups)."""
    args.target = os.path.abspath(args.file)
    try:
        args.backup_fd = os.open(f"{args.target}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                                 0o600)     # members, posts and the installation's key: its owner's only
    except OSError as e:
        raise Failure(f"cannot write the backup {args.target}: {e.strerror}", EX_TEMPFAIL)


def finish_backup(args, code):
    """In the caller's process: FILE.tmp becomes FILE when the backup was written whole, else goes."""
    try:
        if code == EX_OK:
            os.fsync(args.backup_fd)
            os.rename(f"{args.target}.tmp", args.target)
        else:
            _unlink_quietly(f"{args.target}.tmp")
    finally:
        os.close(args.backup_fd)
    return code


def cmd_backup(args, config):
    import shutil
    import tarfile
    import tempfile
    lock = os.open(os.path.join(config.data_dir, "send.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    deadline, folder = time.monotonic() + args.wait, None
    try:
        while True:                         # a running send finishes its run first
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Failure(f"`send` has been running for {args.wait:g} s: try again later",
                                  EX_TEMPFAIL)
                time.sleep(0.2)
        store = open_store(config)
        mask = os.umask(0o077)
        try:
            folder = tempfile.mkdtemp(prefix=".backup-", dir=config.data_dir)
            snapshot = os.path.join(folder, "redsky.db")
            copy = sqlite3.connect(snapshot)
            try:
                store.db.backup(copy)
            finally:
                copy.close()
            spools = [row[0] for row in store.q("queued_spools")]
            out = os.fdopen(os.dup(args.backup_fd), "wb")
            mode = "w:gz" if args.target.endswith((".gz", ".tgz")) else "w"
            with out, tarfile.open(fileobj=out, mode=mode, format=tarfile.PAX_FORMAT) as tar:
                tar.add(snapshot, "redsky.db")
                for name in spools:
                    tar.add(os.path.join(config.spool, name), f"spool/{name}")
                for part, section, key in BACKUP_PARTS:
                    path = config.path_of(section, key)
                    if os.path.isdir(path):
                        tar.add(path, part, filter=lambda i: i if i.isreg() or i.isdir() else None)
                if config.path:
                    tar.add(config.path, "redsky.ini")
        except OSError as e:
            raise Failure(f"cannot write the backup {args.target}: {e.strerror or e}", EX_TEMPFAIL)
        finally:
            os.umask(mask)
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
            store.close()
    finally:
        os.close(lock)                      # send may run again
    print(f"backup {args.target}: the database, {len(spools)} waiting posts, "
          f"{', '.join(p for p, s, k in BACKUP_PARTS if os.path.isdir(config.path_of(s, k))) or 'no archive'}"
          f"{', the config' if config.path else ''}")
    return EX_OK


RESTORE_MAX_FILES = 2_000_000               # entries of one backup


def backup_entries(tar, name, places):
    """The entries of a backup, checked before anything is written: regular files and folders
    with a name of the parts a backup holds, each once, none sparse; raise Failure (65) else."""
    def wrong(info, parts):
        if not (info.isreg() or info.isdir()) or info.issparse():
            return "a link, device or sparse file"
        if re.search(r"[\x00-\x1f\x7f]", info.name):
            return "a name with a control character"
        if info.name.startswith("/") or ".." in parts or "" in parts:
            return "a name that leaves the data directory"
        if parts[0] not in places:
            return "something that is no part of a backup"
        if parts[0] in ("redsky.db", "redsky.ini") and (len(parts) > 1 or not info.isreg()):
            return f"{parts[0]} not as a file"
        if len(parts) == 1 and parts[0] not in ("redsky.db", "redsky.ini") and not info.isdir():
            return f"{parts[0]} not as a folder"
        if "/".join(parts) in seen:
            return "a name twice"
        return "too many files" if len(entries) >= RESTORE_MAX_FILES else ""
    entries, seen, total = [], set(), 0
    for info in tar:
        parts = info.name.rstrip("/").split("/")
        problem = wrong(info, parts)
        if problem:
            raise Failure(f"{name} is not a redsky backup: it holds {one_line(repr(info.name), 120)}"
                          f" ({problem}); nothing was restored", EX_DATAERR)
        seen.add("/".join(parts))
        entries.append(info)
        total += info.size
    if "redsky.db" not in seen:
        raise Failure(f"{name} is not a redsky backup: it has no redsky.db; nothing was restored", EX_DATAERR)
    return entries, total


def restored_database(path, name):
    """Refuse a database that is not one a redsky made: not SQLite, a schema newer than this
    redsky's, or a trigger or view of its own (one could copy every notice elsewhere)."""
    wanted = {re.match(r"CREATE (?:UNIQUE )?\w+ (\w+)", s).group(1) for s in _sql_statements(SCHEMA)
              if s.startswith("CREATE")}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)    # no -shm beside it
        try:
            version = db.execute(SQL["schema_version"]).fetchone()[0]
            extra = [n for t, n in db.execute(SQL["triggers_and_views"]) if n not in wanted]
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise Failure(f"{name}: its redsky.db is not a database ({e}); nothing was restored", EX_DATAERR)
    if not 1 <= version <= SCHEMA_VERSION:
        raise Failure(f"{name}: its redsky.db has schema version {version}, this redsky {__version__} reads"
                      f" 1 to {SCHEMA_VERSION}; nothing was restored", EX_DATAERR)
    if extra:
        raise Failure(f"{name}: its redsky.db holds {', '.join(extra[:3])}, which no redsky makes; nothing"
                      " was restored", EX_DATAERR)


def cmd_restore(args, config):
    """Restore a backup into an empty data directory; the configuration it held is put beside it
    for you to compare (the one in use is not changed).  All or nothing: what was written goes
    again if anything fails."""
    import shutil
    import tarfile
    places = {"spool": config.spool, "redsky.db": config.database,
              "redsky.ini": os.path.join(config.data_dir, "redsky.ini.from-backup"),
              **{part: config.path_of(section, key) for part, section, key in BACKUP_PARTS}}
    taken = [p for part, p in places.items() if os.path.exists(p) and (part != "spool" or os.listdir(p))]
    if taken:
        raise Failure(f"{taken[0]} exists already: restore goes into an empty data directory (move it"
                      " away, or set another data_dir)", EX_USAGE)
    try:
        tar = tarfile.open(fileobj=args.source, mode="r:*")      # opened by the caller (main)
    except (OSError, tarfile.TarError) as e:
        raise Failure(f"cannot read the backup {args.file}: {e}", EX_DATAERR)
    made, current = [], None                    # files and folders this restore created
    try:
        with tar:
            try:
                entries, total = backup_entries(tar, args.file, places)
            except (tarfile.TarError, ValueError) as e:
                raise Failure(f"{args.file} is not a redsky backup ({e}); nothing was restored", EX_DATAERR)
            os.makedirs(config.data_dir, exist_ok=True)
            free = shutil.disk_usage(config.data_dir).free
            if total > free - 100 * 1024 * 1024:        # and 100 MB left for the mail that comes next
                raise Failure(f"{args.file} holds {total / 1e6:.0f} MB, {config.data_dir} has"
                              f" {free / 1e6:.0f} MB free; nothing was restored", EX_TEMPFAIL)
            for info in sorted(entries, key=lambda i: i.name != "redsky.db"):   # the database first
                parts = info.name.rstrip("/").split("/")
                path = os.path.join(places[parts[0]], *parts[1:])
                if info.isdir():
                    if not os.path.isdir(path):
                        os.makedirs(path)
                        made.append(path)
                    continue
                if not os.path.isdir(os.path.dirname(path)):
                    os.makedirs(os.path.dirname(path))
                    made.append(os.path.dirname(path))
                current = path if info.name != "redsky.db" else f"{path}.restoring"
                with tar.extractfile(info) as source, open(current, "xb") as fh:
                    made.append(current)
                    shutil.copyfileobj(source, fh, 1 << 20)
                if info.name == "redsky.db":
                    restored_database(current, args.file)
            for folder, _, names in os.walk(places["pages"]):     # read by the web server, as written
                os.chmod(folder, PAGE_DIR_MODE)
                for name in names:
                    if name != ".lock":
                        os.chmod(os.path.join(folder, name), PAGE_MODE)
        os.rename(f"{config.database}.restoring", config.database)
        made.append(config.database)
    except BaseException as e:
        for path in reversed(made):             # all or nothing
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                _unlink_quietly(path)
        if isinstance(e, FileExistsError):
            raise Failure(f"{e.filename} exists already: restore goes into an empty data directory", EX_USAGE)
        if isinstance(e, (OSError, tarfile.TarError, EOFError)):
            raise Failure(f"cannot restore {args.file}: {e}; nothing was restored", EX_TEMPFAIL)
        raise
    store = open_store(config)               # an older backup is upgraded here
    waiting = [name for (name,) in store.q("queued_spools")]
    missing = [name for name in waiting if not os.path.exists(os.path.join(config.spool, name))]
    export_postfix_map(config, store)
    lists = store.q("all_lists").fetchall()
    store.close()
    print(f"restored {args.file} into {config.data_dir}: {len(lists)} lists, {len(waiting)} waiting posts"
          + (f" ({len(missing)} without their spool file!)" if missing else "")
          + (f"; its configuration is {places['redsky.ini']}" if os.path.exists(places["redsky.ini"])
             else ""))
    return EX_TEMPFAIL if missing else EX_OK


# ---------------------------------------------------------------------------
# 27. Moving in and out
# Owns: export, import (mlmmj, Mailman 2 and 3, redsky), whois and forget.
# Calls: sections 2-26.
# ---------------------------------------------------------------------------

# The list settings an export carries: what `set` sets (the passphrase as its hash) and the
# numbers readers know (posts, digests); the rest are counters and timestamps of this host.
EXPORTED_SETTINGS = tuple("passphrase_hash" if k == "passphrase" else k for k in SETTABLE) + (
    "digest_volume", "digest_issue", "post_number")
# A held post's fields in an export, in the order add_held stores them (besides "number").
HELD_FIELDS = ("received", "sender", "recipient", "from_addr", "subject", "message_id", "reason", "raw")


# Reading what an import is handed ------------------------------------------------------------
#
# An import reads files that someone else may have made (an mlmmj list directory from another host,
# Mailman's dumps, an export), and reads them as whoever runs it, root included (main reads them
# before working as the list user).  So it reads only regular files really inside what it was
# given: every name is opened relative to its directory's descriptor with O_NOFOLLOW (no symbolic
# link at any level, so no path leaves the directory) and O_NONBLOCK (a FIFO never blocks), and the
# opened descriptor's fstat decides: a regular file, the very one lstat saw (lstat first only so
# that a device node is never opened: opening one can have effects), with no other name (a hard
# link may be any file of the disk), within its size limit.  Everything is read into memory before
# anything is changed, so nothing is read twice.  What is skipped is listed in the output.

IMPORT_LIMITS = {"control": 1 << 20, "config": 16 << 20, "addresses": 256 << 20, "post": 64 << 20,
                 "export": 1 << 30, "mbox": 4 << 30}
IMPORT_MAX_NUMBER = 10**6           # an archived post's number an import keeps (a larger one: numbered here)
IMPORT_MAX_GAPS = 100_000           # numbers the source no longer has that become gap pages, at most


def archive_gaps(plan, kept, gaps=None):
    """The gaps of an import's archive (plan["archive_gaps"]): ``gaps`` as the source names them, else
    every number below the highest of ``kept`` that is not in it; none when there are more than
    IMPORT_MAX_GAPS (a warning says so: those numbers stay unused, without the page of a gap)."""
    if gaps is None:
        count = max(kept, default=0) - len(kept)
        gaps = range(1, max(kept, default=0) + 1) if count <= IMPORT_MAX_GAPS else ()
    else:
        gaps = [n for n in gaps if isinstance(n, int) and 0 < n <= IMPORT_MAX_NUMBER]
        count = len(gaps)
    if count > IMPORT_MAX_GAPS:
        plan["warnings"].append(f"the archive lacks {count} numbers: they stay unused, without the page"
                                " that says so")
        gaps = ()
    plan["archive_gaps"] = sorted(set(gaps) - set(kept))


def import_read_error(path, e):
    """The Failure for a file or directory an import cannot open: what to do about it."""
    if e.errno in (errno.EACCES, errno.EPERM):
        return Failure(f"cannot read {path}: permission denied" + (
            " even to root (a network file system?): copy it to a local disk first" if os.geteuid() == 0 else
            "; run the import as root (it reads what it imports before it works as the list user), or make"
            " it readable to this user"), EX_NOPERM)
    if e.errno == errno.ENOENT:
        return Failure(f"no such file or directory: {path}", EX_DATAERR)
    return Failure(f"cannot read {path}: {e.strerror or e}", EX_DATAERR)


def file_kind(st, directory=False):
    """Why an lstat result is not what an import reads (None when it is)."""
    import stat
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return None if directory else "a directory"
    if directory:
        return "not a directory"
    if stat.S_ISREG(mode):
        return None
    return "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else \
        "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"


class ImportSource:
    """A directory an import reads from, opened once: ``read``, ``names`` and ``exists`` take paths
    inside it ("control/footer") and follow no link at any level.  A file or directory that is not
    read is added to ``skipped`` as (path, why), the path as ``shown`` + the path inside, unless
    ``strict`` (a file named on the command line), which makes it a Failure.  Use it in a ``with``."""

    def __init__(self, path, skipped, shown=None, follow=False):
        self.path, self.skipped, self.shown = path, skipped, shown or ""
        try:
            st = os.stat(path, follow_symlinks=follow)
            why = file_kind(st, directory=True)
            if why:
                raise Failure(f"{path} is {why}" + (f" (to {os.path.realpath(path)}): name the directory"
                              " itself if you mean it" if why == "a symbolic link" else ""), EX_DATAERR)
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK
                              | (0 if follow else os.O_NOFOLLOW))
        except OSError as e:
            raise import_read_error(path, e)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)

    def _open(self, dir_fd, name, directory, rel):
        """(descriptor, None), (None, why not) or (None, None) when there is no such name."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
        flags |= os.O_DIRECTORY if directory else 0
        try:
            seen = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            why = file_kind(seen, directory)
            if why:
                return None, why
            fd = os.open(name, flags, dir_fd=dir_fd)
        except FileNotFoundError:
            return None, None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):        # made a link (or a file) after the lstat
                return None, "a symbolic link" if e.errno == errno.ELOOP else "replaced while it was read"
            raise import_read_error(self.full(rel), e)
        st = os.fstat(fd)
        why = "replaced while it was read" if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino) \
            else file_kind(st, directory) or (None if directory or st.st_nlink == 1 else
                                              f"a hard link ({st.st_nlink} names)")
        if why:
            os.close(fd)
            return None, why
        return fd, None

    def _walk(self, rel, directory, strict=False):
        """The descriptor of ``rel`` (a directory or a file), opened component by component."""
        fd, parts = self.fd, rel.split("/")
        try:
            for i, name in enumerate(parts):
                last = i == len(parts) - 1
                opened, why = self._open(fd, name, directory or not last, "/".join(parts[:i + 1]))
                if fd != self.fd:
                    os.close(fd)
                fd = opened
                if opened is None:
                    if why:
                        shown = "/".join(parts[:i + 1]) + ("" if last and not directory else "/")
                        self.skip(shown, why, strict)
                    return None
            return fd
        except BaseException:
            if fd is not None and fd != self.fd:
                os.close(fd)
            raise

    def full(self, rel):
        return self.shown + rel if self.shown else os.path.join(self.path, rel)

    def skip(self, rel, why, strict=False):
        if strict:
            raise Failure(f"{self.shown}{rel} is {why}: not read", EX_DATAERR)
        self.skipped.append((self.shown + rel, why))

    def read(self, rel, limit, strict=False):
        """The bytes of file ``rel``, or None (no such file, or skipped)."""
        fd = self._walk(rel, False, strict)
        if fd is None:
            if strict:
                raise Failure(f"no such file: {self.shown}{rel}", EX_DATAERR)
            return None
        try:
            chunks, size = [], 0
            if os.fstat(fd).st_size > limit:
                size = limit + 1
            while size <= limit:
                chunk = os.read(fd, min(1 << 20, limit + 1 - size))
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
                size += len(chunk)
            self.skip(rel, f"larger than {limit >> 20} MB" if limit >> 20 else f"larger than {limit} bytes",
                      strict)
            return None
        except OSError as e:
            raise import_read_error(self.full(rel), e)
        finally:
            os.close(fd)

    def names(self, rel):
        """The names in directory ``rel``, sorted ([] when there is none, or it is skipped)."""
        fd = self._walk(rel, True)
        if fd is None:
            return []
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def exists(self, rel):
        """Whether ``rel`` is there, whatever it is (a flag file: nothing of it is read)."""
        head, _, name = rel.rpartition("/")
        fd = self._walk(head, True) if head else self.fd
        if fd is None:
            return False
        try:
            os.stat(name, dir_fd=fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False
        finally:
            if fd != self.fd:
                os.close(fd)


def read_named(path, limit, skipped):
    """The bytes of a file named on the command line: the file itself must be a regular file,
    not a link (the directories above it are the admin's path, and are followed)."""
    with ImportSource(os.path.dirname(path) or ".", skipped, shown=os.path.join(os.path.dirname(path), ""),
                      follow=True) as where:
        return where.read(os.path.basename(path), limit, strict=True)


def text_lines(data):
    """The non-empty, non-comment lines of a text (bytes), stripped."""
    text = (data or b"").decode("utf-8", "replace")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def mbox_posts(data):
    """The messages of an mbox (bytes), as mailbox.mbox reads them: each begins at a line starting
    "From ", which is not part of it, and the empty line before the next one separates them."""
    starts = [0] if data.startswith(b"From ") else []
    at = data.find(b"\nFrom ")
    while at != -1:
        starts.append(at + 1)
        at = data.find(b"\nFrom ", at + 1)
    posts = []
    for start, end in zip(starts, starts[1:] + [len(data)]):
        body = data.find(b"\n", start, end)
        post = data[end if body == -1 else body + 1:end]
        posts.append(post[:-1] if post.endswith(b"\n\n") else post)
    return posts


def new_plan(address):
    """What an import would bring: filled by an importer, carried out by apply_plan.  "seen" holds
    the members' addresses (lower case) so that adding one costs the same however many there are."""
    return {"address": address, "settings": {}, "members": [], "acl": [], "bans": [], "held": [],
            "pending": [], "archive": [], "archive_gaps": [], "not_carried": [], "invalid": [], "skipped": [],
            "warnings": [],
            "seen": set()}


def plan_member(plan, address, name="", **options):
    """Add a member to ``plan`` (normalised), or list the address as invalid."""
    address = normalize_address(address.strip().strip("<>"))
    if not valid_address(address):
        plan["invalid"].append(address)
        return
    if address.lower() not in plan["seen"]:
        plan["seen"].add(address.lower())
        plan["members"].append({"address": address, "name": one_line(name, 200), **options})


def apply_plan(store, config, plan, dry_run=False, into_existing=False):
    """Carry out an import plan: the list created if missing, settings that differ set, members,
    patterns and held posts that are not there yet added, all in one transaction; then the archive
    posts whose Message-ID the archive does not hold yet.  A list that exists already is changed only
    ``into_existing`` (the file names its own target).  Tokens from a file are never trusted: a held
    post gets a new one, and pending confirmations and requests are left out, with a line saying so;
    nobody is sent anything.  Running it twice changes nothing the second time.  Yields what it
    does (or would do) line by line."""
    try:
        name, domain = split_list_address(plan["address"])
        settings = dict(import_setting(k, v) for k, v in plan["settings"].items())
    except Failure as e:                    # in a file, not on the command line: bad data
        raise Failure(f"{e}", EX_DATAERR)
    address = f"{name}@{domain}"
    row = store.list_by_address(address)
    list_id = row["id"] if row else None           # a new list has no rows yet
    changed = {k: v for k, v in settings.items() if row is None or row[k] != v}
    have = {a.lower() for a in member_addresses(store, list_id)}
    members = [m for m in plan["members"] if m["address"].lower() not in have]
    acl_have, bans_have = ({r[0] for r in store.q(query, list_id)} for query in ("acl", "bans"))
    acl = [p for p in plan["acl"] if p not in acl_have]
    bans = [p for p in plan["bans"] if p not in bans_have]
    held_have = {(h["message_id"], h["received"]) for h in store.q("held_keys", list_id)}
    held = [h for h in plan["held"] if (h["message_id"], h["received"]) not in held_have]
    dropped = [p for p in plan["pending"] if p["action"] != "moderate"]
    if row is not None and plan["archive"] and not dry_run:
        ensure_numbered(config, store, row)
    archived_ids = {r["message_id"] for r in store.q("archived_present", list_id)} | \
        ({message_id_of(data) for _, data in scan_archive(config, row)} if row and dry_run else set())
    numbered = [p if isinstance(p, tuple) else (None, p) for p in plan["archive"]]    # (its number, bytes)
    posts = [(n, p) for n, p in numbered if message_id_of(p) not in archived_ids or not message_id_of(p)]
    taken = {r["number"] for r in store.q("archived_present", list_id)} | \
        {r["number"] for r in store.q("archived_removed", list_id)} if row is not None else set()
    gaps = sorted(set(plan.get("archive_gaps", ())) - taken - {n for n, _ in posts})
    to_change = row is None or changed or members or acl or bans or held or posts or gaps
    if row is not None and to_change and not into_existing and not dry_run:
        raise Failure(f"list {address} exists here: importing into it changes its settings and owners and"
                      " adds members; --dry-run shows what would change, --into-existing does it", EX_DATAERR)
    would = "would " if dry_run else ""
    some = lambda items, n=20: ", ".join(items[:n]) + (f" and {len(items) - n} more" * (len(items) > n))
    if row is None:
        yield f"{would}create list {address}"
    elif to_change and not into_existing:
        yield f"list {address} exists here: importing into it takes --into-existing; it would:"
    for key, value in changed.items():
        shown = lambda v, new="(set)": repr(v) if isinstance(v, str) and key != "passphrase_hash" else \
            v if key != "passphrase_hash" else new if v else "(none)"
        yield f"{would}set {key} = {shown(value)}" if row is None else \
            f"{would}change {key}: {shown(row[key])} -> {shown(value, '(another)')}"
    if members:
        digest = sum(1 for m in members if m.get("digest"))
        nomail = sum(1 for m in members if m.get("disabled_reason") == "nomail")
        yield f"{would}add {len(members)} members ({digest} digest, {nomail} nomail)" + \
            (f": {some([m['address'] for m in members])}" if dry_run and row is not None else "")
    if row is not None and len(plan["members"]) > len(members):
        kept = len(plan["members"]) - len(members)
        yield f"{kept} members of the file are members already: left as they were"
    for what, items in (("posting patterns", acl), ("ban patterns", bans), ("archived posts", posts)):
        if items:
            yield f"{would}add {len(items)} {what}"
    if held:
        yield (f"{would}add {len(held)} held posts with new tokens (the owners' earlier notices no longer"
               f" work): `redsky.py held {address}` lists them, `approve ID` releases one, and send's daily"
               " reminder gives the owners the new tokens")
    requests = [p["address"] for p in dropped if p["action"] == "approve-subscribe"]
    confirmations = [f"{p['action']} {p['address']}" for p in dropped if p["action"] != "approve-subscribe"]
    if confirmations:
        yield (f"not imported: {len(confirmations)} pending confirmations ({some(confirmations, 5)}): a token"
               " from a file is never trusted; whoever asked asks again")
    if requests:
        yield (f"not imported: {len(requests)} requests to join waiting for the owners ({some(requests, 5)}):"
               f" `redsky.py subscribe {address} ADDR` admits one")
    if plan["invalid"]:
        yield f"invalid addresses, not imported: {some(plan['invalid'])}"
    for path, why in dict.fromkeys(plan["skipped"]):
        yield f"skipped: {path} is {why}: not read"
    for warning in plan["warnings"]:
        yield f"warning: {warning}"
    for item in plan["not_carried"]:
        yield f"not carried over: {item}"
    if not to_change:
        yield "nothing to change"
    if dry_run:
        return
    now, held_expiry = time.time(), config.duration("commands", "held_expiry")
    with store.transaction() as db:
        if row is None:
            list_id = store.add_list(db, {"name": name, "domain": domain, "created": now, **changed})
        else:
            for key, value in changed.items():
                store.set_list(db, list_id, key, value)
        db.executemany(SQL["import_member"], [
            (list_id, m["address"], m.get("name", ""), m.get("status", "enabled"), int(bool(m.get("digest"))),
             m.get("bounce_score", 0), m.get("last_bounce"), m.get("disabled_reason", ""),
             m.get("disabled_at"), m.get("warnings", 0), m.get("last_warning"), m.get("subscribed") or now,
             m.get("disabled_until"), *(int(bool(m.get(k))) for k in ("notmetoo", "ack", "moderate")))
            for m in members])
        db.executemany(SQL["acl_add"], [(list_id, p) for p in acl])
        db.executemany(SQL["ban_add"], [(list_id, p) for p in bans])
        for h in held:                          # a token of our own for each, as hold_post makes it
            held_id = db.execute(SQL["add_held"], (list_id, *(h[k] for k in HELD_FIELDS))).lastrowid
            since = min(h["received"], now)
            db.execute(SQL["add_pending"], (new_token(), list_id, h["from_addr"] or h["sender"] or "?",
                                            "moderate", held_id, since, since + held_expiry))
    list_row = store.list_by_id(list_id)
    renumbered, refused = 0, []
    for number, data in sorted(posts, key=lambda p: (p[0] is None or p[0] in taken, p[0] or 0)):
        if archive_refused(RawMessage(data)):       # not archived here either; its number a gap
            refused.append(number)
            continue
        got = archive_post(config, store, list_row, data, number=number)["number"]
        renumbered += number is not None and got != number
    with store.transaction() as db:                 # numbers the source did not have: gaps, as there
        for n, why in [(n, "import") for n in gaps] + [(n, "refused") for n in refused if n is not None]:
            if not db.execute(SQL["archived_post"], (list_id, n)).fetchone():
                add_archive_row(db, list_row, gap_facts(now), "", n, now, why)
    if renumbered:
        yield f"{renumbered} archived posts numbered anew: their numbers were taken here"
    if (posts or gaps) and list_row["archive"] == "public":
        build_pages(config, list_row, store)
    export_postfix_map(config, store)


def import_setting(key, value):
    """(column, value) of one imported setting, checked as `set` checks it
    (texts are taken as they are; numbers and hashes as exported)."""
    try:
        if key in ("passphrase_hash", "footer", "welcome", "goodbye"):
            return key, str(value)
        if key in ("digest_volume", "digest_issue", "post_number"):
            return key, int(value)
        if key == "digest_interval":
            return validate_setting(key, f"{float(value):g}s")
        if key in ("digest_size_threshold",) + LIST_NUMBERS + LIST_FLAGS:
            return validate_setting(key, str(int(value)))
        return validate_setting(key, str(value))
    except (TypeError, ValueError) as e:
        raise Failure(f"setting {key} = {value!r}: {e}", EX_DATAERR)


def mlmmj_plan(listdir, as_address=None, rewrite=False):
    """An import plan from an mlmmj list directory (mlmmj's TUNABLES: the files under control/, the
    address files under subscribers.d/, digesters.d/ and nomailsubs.d/, the archive under archive/N),
    read as ImportSource reads: regular files inside it only."""
    skipped = []
    with ImportSource(listdir, skipped) as source:
        if not source.exists("control"):
            raise Failure(f"{listdir} is not an mlmmj list directory (no control/)", EX_DATAERR)
        names = source.names("control")
        if skipped:
            raise Failure(f"{listdir}: control/ is {skipped[0][1]}: not read", EX_DATAERR)
        control = lambda name, limit="control": source.read(f"control/{name}", IMPORT_LIMITS[limit])
        flag = lambda name: source.exists(f"control/{name}")
        first = lambda name: (text_lines(control(name)) or [""])[0]
        addresses = text_lines(control("listaddress"))
        address = as_address or (addresses or [""])[0]
        if not address:
            why = dict(skipped).get("control/listaddress")
            raise Failure(f"{listdir}: control/listaddress " + (f"is {why}: not read" if why else "is empty")
                          + "; give --as LIST@DOMAIN", EX_DATAERR)
        plan = new_plan(address)
        plan["skipped"] = skipped
        s = plan["settings"]
        s["subject_tag"] = first("prefix")
        footer = control("footer")
        if footer is not None:
            s["footer"] = footer.decode("utf-8", "replace").strip("\n")
        s["access"] = "moderated" if flag("moderated") or flag("modonlypost") else \
            "subscribers" if flag("subonlypost") else "open"
        s["subscribe_policy"] = "closed" if flag("closedlist") or flag("closedlistsub") else \
            "confirm+approve" if flag("submod") else "open" if flag("nosubconfirm") else "confirm"
        s["archive"] = "off" if flag("noarchive") else "private"
        owners = text_lines(control("owner")) + text_lines(control("moderators"))
        s["owners"] = ",".join(dict.fromkeys(o for o in owners if valid_address(o)))
        used = {"listaddress", "prefix", "footer", "moderated", "modonlypost", "subonlypost", "closedlist",
                "closedlistsub", "submod", "nosubconfirm", "noarchive", "owner", "moderators"}
        plan["not_carried"] = [f"control/{n}" for n in names if n not in used]
        mlmmj_addresses(plan, addresses + [plan["address"]], first("delimiter") or "+", rewrite)
        for sub, options in (("subscribers.d", {}), ("digesters.d", {"digest": True}),
                             ("nomailsubs.d", {"status": "disabled", "disabled_reason": "nomail"})):
            for name in source.names(sub):
                for line in text_lines(source.read(f"{sub}/{name}", IMPORT_LIMITS["addresses"])):
                    plan_member(plan, line, **options)
        for n in sorted(int(n) for n in source.names("archive") if n.isdigit() and n.isascii()):
            data = source.read(f"archive/{n}", IMPORT_LIMITS["post"])
            if data is not None:                        # under mlmmj's number (a gap for each it lacks)
                plan["archive"].append((n if n <= IMPORT_MAX_NUMBER else None, data))
        archive_gaps(plan, {n for n, _ in plan["archive"] if n})
    return plan


# mlmmj's own addresses (LIST+WORD@DOMAIN, WORD as in its listtexts) and what redsky answers instead.
MLMMJ_ADDRESSES = {"subscribe": "-join", "unsubscribe": "-leave", "owner": "-owner", "help": "-request",
                   "get": "-request", "index": "-request", "faq": "-request", "list": "-request"}


def mlmmj_addresses(plan, addresses, delimiter, rewrite):
    """Warn about the footer and prefix naming mlmmj's own addresses (LIST+unsubscribe@…), which redsky
    refuses (no list there: 550), and say redsky's; ``rewrite`` puts redsky's in their place."""
    local, _, domain = plan["address"].lower().partition("@")
    names = [a.lower().partition("@")[::2] for a in addresses if valid_address(a)]
    pattern = re.compile(r"(?<![\w.+-])(?:%s)%s([A-Za-z0-9][\w.=-]{0,200})@(?:%s)(?![\w-]|\.\w)" % (
        "|".join(sorted({re.escape(n) for n, _ in names})), re.escape(delimiter),
        "|".join(sorted({re.escape(d) for _, d in names}))), re.IGNORECASE)
    for key, what in (("footer", "the footer"), ("subject_tag", "the prefix")):
        text, theirs = plan["settings"].get(key) or "", {}
        for m in pattern.finditer(text):
            word = m.group(1).lower()
            suffix = MLMMJ_ADDRESSES.get(word.split("-")[0])
            if m.group(0) in theirs:
                continue
            theirs[m.group(0)] = f"{local}{suffix}@{domain}" if suffix else None
            note = f" (then `set digest on` or `set nomail on` to {local}-request@{domain})" \
                if word.startswith("subscribe-") else ""
            refused = f"{what} names {m.group(0)}, mlmmj's address, which redsky refuses: " + (
                f"redsky's is {theirs[m.group(0)]}{note}" if suffix else "redsky has none like it") + (
                "" if rewrite or not suffix else "; --rewrite-addresses puts redsky's in its place")
            done = f"{what} named {m.group(0)}, mlmmj's address: now {theirs[m.group(0)]}{note}"
            plan["warnings"].append(done if rewrite and suffix else refused)
        if rewrite and any(theirs.values()):
            plan["settings"][key] = pattern.sub(lambda m: theirs[m.group(0)] or m.group(0), text)


def python_assignments(text):
    """{name: value} of the plain assignments in Mailman 2's `config_list -o`
    output (Python 2 source), read with ast.literal_eval: never executed."""
    import ast
    text = re.sub(r"(?<=\d)[lL]\b", "", text)         # Python 2 long integers
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise Failure(f"not Mailman's config_list output: {one_line(e, 200)}", EX_DATAERR)
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
                pass
    return values


MAILMAN2_CARRIED = {"real_name", "host_name", "subject_prefix", "msg_footer", "generic_nonmember_action",
                    "default_member_moderation", "subscribe_policy", "archive", "archive_private", "owner",
                    "moderator", "reply_goes_to_list", "reply_to_address", "first_strip_reply_to",
                    "max_message_size", "emergency", "admin_notify_mchanges", "ban_list", "description"}


def mailman2_plan(config_file, as_address=None):
    """An import plan from Mailman 2.1's `config_list -o` output (its members and pipermail mbox:
    add_member_files, add_mbox).  Settings with no redsky equivalent are listed."""
    text = read_named(config_file, IMPORT_LIMITS["config"], []).decode("utf-8", "replace")
    values = python_assignments(text)
    address = as_address or (f"{str(values.get('real_name', '')).lower()}@{values.get('host_name', '')}"
                             if values.get("real_name") and values.get("host_name") else "")
    if not address:
        raise Failure("the config names no real_name and host_name; give --as LIST@DOMAIN", EX_DATAERR)
    plan = new_plan(address)
    s = plan["settings"]
    prefix = str(values.get("subject_prefix", "")).strip()
    if "%" in prefix.replace("%d", "") or prefix.count("%d") > 1:
        plan["not_carried"].append(f"subject_prefix {prefix!r} (only %d is known here)")
        prefix = " ".join(re.sub(r"%.", "", prefix).split()).replace("[ ", "[").replace(" ]", "]")
    s["subject_tag"] = prefix
    if "%d" in prefix:
        s["post_number"] = int(values.get("post_id", 1) or 1) - 1        # Mailman's next number
    reply = values.get("reply_goes_to_list", 0)
    s["reply_to"] = "list" if reply == 1 else str(values.get("reply_to_address", "")) \
        if reply == 2 and valid_address(str(values.get("reply_to_address", ""))) else "none"
    for key, setting in (("first_strip_reply_to", "reply_to_strip"), ("emergency", "emergency"),
                         ("admin_notify_mchanges", "notify_owners"), ("max_message_size", "max_size")):
        if isinstance(values.get(key), int):
            s[setting] = values[key]
    footer = str(values.get("msg_footer", ""))
    fields = {"real_name": values.get("real_name", ""), "host_name": values.get("host_name", ""),
              "list_name": str(values.get("real_name", "")).lower()}
    unknown = sorted({m for m in re.findall(r"%\((\w+)\)s", footer) if m not in fields})
    if unknown:
        plan["not_carried"].append(f"msg_footer placeholders {', '.join(unknown)} (left out)")
    footer = re.sub(r"%\((\w+)\)s", lambda m: str(fields.get(m.group(1), "")), footer)
    s["footer"] = footer.strip("\n")
    s["description"] = one_line(str(values.get("description", "")), 300)
    action = values.get("generic_nonmember_action", 1)
    s["access"] = "moderated" if values.get("default_member_moderation") else \
        "open" if action == 0 else "subscribers"
    s["nonmember_action"] = {2: "reject", 3: "discard"}.get(action, "hold")
    s["subscribe_policy"] = {0: "open", 1: "confirm", 2: "approve", 3: "confirm+approve"}.get(
        values.get("subscribe_policy", 1), "confirm")
    s["archive"] = "off" if not values.get("archive", 1) else \
        "private" if values.get("archive_private", 0) else "public"
    as_list = lambda v: [v] if isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) else []
    owners = as_list(values.get("owner")) + as_list(values.get("moderator"))
    s["owners"] = ",".join(dict.fromkeys(str(o) for o in owners if valid_address(str(o))))
    plan["not_carried"] += sorted(k for k in values if k not in MAILMAN2_CARRIED)
    for pattern in as_list(values.get("ban_list")):
        try:
            plan["bans"].append(ban_pattern(str(pattern)))
        except Failure:
            plan["not_carried"].append(f"ban_list entry {str(pattern)!r}")
    return plan


def mailman3_plan(info, as_address=None):
    """An import plan from what Mailman 3 prints: `mailman lists` (the list's address, when it is the
    only one; or a "Posting address:" line).  Its members and mbox: add_member_files, add_mbox."""
    address = as_address
    if info and not address:
        lines = text_lines(read_named(info, IMPORT_LIMITS["config"], []))
        posting = [v.strip() for k, _, v in (line.partition(":") for line in lines)
                   if k.strip().lower() in ("posting address", "list address")]
        bare = [line for line in lines if valid_address(line)]
        address = posting[0] if posting else bare[0] if len(bare) == 1 else None
    if not address:
        raise Failure("the info file names no single list; give --as LIST@DOMAIN", EX_DATAERR)
    plan = new_plan(address)
    plan["not_carried"].append("settings: Mailman 3 exports them only through its REST API; set them with"
                               " `redsky.py set`")
    return plan


def add_member_files(plan, members, digest_members, nomail_members):
    """Mailman's members, one file each: regular, digest and nomail (Mailman 2's `list_members
    -f`; Mailman 3's `mailman members --regular`, `--digest any`, `--nomail any`)."""
    for path, options in ((members, {}), (digest_members, {"digest": True}),
                          (nomail_members, {"status": "disabled", "disabled_reason": "nomail"})):
        if path:
            for line in text_lines(read_named(path, IMPORT_LIMITS["addresses"], plan["skipped"])):
                plan_member(plan, *name_addr(line), **options)


def add_mbox(plan, path):
    """The posts of an mbox, in order, for the archive (pipermail's, HyperKitty's
    export or the prototype archiver's)."""
    if path:
        plan["archive"] += mbox_posts(read_named(path, IMPORT_LIMITS["mbox"], plan["skipped"]))


def export_document(store, config, row):
    """A list as one JSON-able document: settings, members with their options, names and bounce
    state, posting patterns, held posts (the message base64) and pending requests."""
    import base64
    held = [dict(h) for h in store.q("held_export", row["id"])]
    numbers = {}                                # held posts numbered in the document, not by row id
    for number, h in enumerate(held, 1):
        numbers[h.pop("id")] = h["number"] = number
        h["raw"] = base64.b64encode(h["raw"]).decode()
    pending = [dict(p) for p in store.q("pending_export", row["id"])]
    for p in pending:
        p["held"] = numbers.get(p.pop("held_id"))
    return {"format": "redsky-export", "version": 1, "list": list_address(row),
            "settings": {k: row[k] for k in EXPORTED_SETTINGS},
            "members": [dict(m) for m in store.q("members_export", row["id"])],
            "acl": [r[0] for r in store.q("acl", row["id"])],
            "bans": [r[0] for r in store.q("bans", row["id"])], "held": held, "pending": pending,
            # the archive's numbers: those of the posts in FILE.mbox, in order, and the gaps
            "archive_numbers": [r["number"] for r, data in archived(config, store, row) if data is not None],
            "archive_gaps": [r["number"] for r in store.q("archived_removed", row["id"])]}


def redsky_plan(path, as_address=None):
    """An import plan from `redsky.py export` output (and FILE.mbox beside it, from the same
    directory, read as ImportSource reads)."""
    import base64
    skipped, where = [], os.path.dirname(path)
    with ImportSource(where or ".", skipped, shown=os.path.join(where, ""), follow=True) as source:
        data = source.read(os.path.basename(path), IMPORT_LIMITS["export"], strict=True)
        mbox = source.read(os.path.basename(path) + ".mbox", IMPORT_LIMITS["mbox"])
    def no_constant(name):                  # NaN and Infinity: no time, score or number of ours
        raise ValueError(f"{name} is not a number here")
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=no_constant)
    except (ValueError, RecursionError) as e:
        raise Failure(f"cannot read {path}: {one_line(e, 200)}", EX_DATAERR)
    if not isinstance(doc, dict) or doc.get("format") != "redsky-export":
        raise Failure(f"{path} is not a redsky export", EX_DATAERR)
    held_keys = {"number", *HELD_FIELDS}
    pending_keys = {"token", "address", "action", "held", "created", "expires"}
    try:                                    # a damaged document is bad data, never a crash
        plan = new_plan(str(as_address or doc["list"]))
        plan["settings"] = {k: v for k, v in dict(doc.get("settings", {})).items() if k in EXPORTED_SETTINGS}
        for m in doc.get("members", []):
            plan_member(plan, str(m["address"]), str(m.get("name", "")), **member_options(m))
        plan["acl"] = [str(p) for p in doc.get("acl", [])]
        plan["bans"] = [ban_pattern(str(p)) for p in doc.get("bans", [])]
        for h in doc.get("held", []):
            missing = held_keys - set(h)
            if missing:
                raise ValueError(f"a held post lacks {', '.join(sorted(missing))}")
            plan["held"].append(dict(h, raw=base64.b64decode(h["raw"], validate=True),
                                     received=float(h["received"])))
        for p in doc.get("pending", []):
            missing = pending_keys - set(p)
            if missing or p["action"] not in schema_choices("pending")["action"]:
                raise ValueError(f"a pending request lacks {', '.join(sorted(missing)) or 'a known action'}")
            plan["pending"].append(dict(p))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise Failure(f"{path} is not a valid redsky export: {one_line(e, 200)}", EX_DATAERR)
    plan["skipped"] = skipped
    plan["archive"] = mbox_posts(mbox or b"")
    numbers = doc.get("archive_numbers") or []
    if not isinstance(numbers, list) or not all(isinstance(n, int) and 0 < n <= IMPORT_MAX_NUMBER
                                                for n in numbers):
        numbers = []                        # a damaged list of numbers: the posts are numbered here
    plan["archive"] = [(numbers[i] if i < len(numbers) else None, data)
                       for i, data in enumerate(plan["archive"])]
    gaps = doc.get("archive_gaps")
    archive_gaps(plan, set(numbers[:len(plan["archive"])]), gaps if isinstance(gaps, list) else [])
    return plan


def member_options(m):
    """A member's options from an export, each of its stored type (ValueError if not)."""
    status = str(m.get("status", "enabled"))
    if status not in ("enabled", "disabled"):
        raise ValueError(f"member status {status!r}")
    return {"status": status, **{o: bool(m.get(o, False)) for o in ("digest", "notmetoo", "ack", "moderate")},
            "bounce_score": float(m.get("bounce_score", 0)), "warnings": int(m.get("warnings", 0)),
            "disabled_reason": str(m.get("disabled_reason", "")),
            **{t: None if m.get(t) is None else float(m[t])          # times, which may be unset
               for t in ("last_bounce", "disabled_at", "disabled_until", "last_warning", "subscribed")}}


def cmd_export(args, config):
    """One JSON document per list (export_document), and its archive as
    FILE.mbox beside it; without --output the document goes to stdout."""
    store, row = store_and_list(config, args.list)
    text = json.dumps(export_document(store, config, row), indent=1, sort_keys=True) + "\n"
    if not args.output:
        sys.stdout.write(text)
        return EX_OK
    _write_page(args.output, text)          # atomically, as the archive's pages are written
    posts = archive_selection(config, row, store=store)
    first = next(posts, None)               # a generator: is there any post at all?
    if first is not None:
        export_mbox(itertools.chain([first], posts), args.output + ".mbox")
    elif os.path.exists(args.output + ".mbox"):     # an earlier export's: import would take it for this one's
        os.unlink(args.output + ".mbox")
    print(f"{list_address(row)}: exported to {args.output}" +
          (f" and {args.output}.mbox" if first is not None else " (no archived posts, so no .mbox)"),
          file=sys.stderr)
    return EX_OK


def import_plan(args):
    """Read everything an import names and make its plan.  main calls it before it works as the list
    user, so that root reads what only root may (an mlmmj list's subscribers.d/ is 0600); nothing is
    read later.  ImportSource decides what is read."""
    if args.kind in ("mlmmj", "redsky") and not args.path:
        raise Failure(f"use: import {args.kind} {'LISTDIR' if args.kind == 'mlmmj' else 'FILE'}", EX_USAGE)
    if args.kind in ("mailman2", "mailman3") and not args.members:
        raise Failure(f"use: import {args.kind} --members FILE ...", EX_USAGE)
    if args.kind == "mailman2" and not args.config_file:
        raise Failure("use: import mailman2 --config FILE --members FILE [--mbox FILE]", EX_USAGE)
    if args.rewrite_addresses and args.kind != "mlmmj":
        raise Failure("--rewrite-addresses is for import mlmmj", EX_USAGE)
    if args.kind == "mlmmj":
        return mlmmj_plan(args.path, args.as_address, args.rewrite_addresses)
    if args.kind == "redsky":
        return redsky_plan(args.path, args.as_address)
    plan = mailman2_plan(args.config_file, args.as_address) if args.kind == "mailman2" else \
        mailman3_plan(args.info, args.as_address)
    add_member_files(plan, args.members, args.digest_members, args.nomail_members)
    add_mbox(plan, args.mbox)
    return plan


def cmd_import(args, config):
    """import mlmmj LISTDIR | mailman2 | mailman3 | redsky FILE: print what
    changes (--dry-run: only that), then carry it out in one transaction."""
    plan = getattr(args, "plan", None) or import_plan(args)
    store = open_store(config, create=True)
    os.makedirs(config.spool, exist_ok=True)
    for line in apply_plan(store, config, plan, args.dry_run, args.into_existing):
        print(f"{plan['address']}: {line}")
    return EX_OK


# Everything stored about one address, and where (whois, forget): (table,
# SQL name to show it, SQL name to delete it).
PERSONAL_DATA = tuple((table, f"whois_{table}", f"forget_{table}") for table in (
    "members", "acl", "deliveries", "bounces", "probes", "pending", "autoreplies", "recent_posts",
    "messages", "web_sessions", "allowances"))
# ... and where it may be written inside a text: (table, SQL name of the
# candidates, SQL name to delete one by id); mentions() decides.
MENTIONING = (("held", "mentioning_held", "delete_held"), ("events", "mentioning_events", "delete_event"))


def mentions(row, address):
    """Whether a row's text names ``address`` itself (not one that merely
    contains it, as xbob@ contains bob@)."""
    text = " ".join(str(v) for v in row if isinstance(v, str))
    return re.search(r"(?<![A-Za-z0-9.!#$%&'*+/=?^_`{|}~-])" + re.escape(address) + r"(?![A-Za-z0-9-]|\.\w)",
                     text, re.I) is not None


def like_pattern(address):
    """%address% for LIKE … ESCAPE '\\': the address's own % and _ match themselves."""
    return "%" + re.sub(r"([\\%_])", r"\\\1", address) + "%"


def cmd_whois(args, config):
    """Everything redsky stores about an address, in every list."""
    store = open_store(config)
    address = normalize_address(args.address)
    pattern = like_pattern(address)
    found = {table: [dict(r) for r in store.db.execute(SQL[query], (address, pattern))]
             for table, query, _ in PERSONAL_DATA}
    for table, query, _ in MENTIONING:
        found[table] = [{k: v for k, v in dict(r).items() if k not in ("id", "trace")}
                        for r in store.db.execute(SQL[query], (address, pattern)) if mentions(r, address)]
    found["owner of"] = [list_address(r) for r in store.q("all_lists")
                         if address.lower() in (o.lower() for o in owners_of(r))]
    found["archive"] = [{"list": list_address(r), "number": n, "date": when, "subject": subject}
                        for r in store.q("all_lists") for n, _, (when, author, subject)
                        in archive_selection(config, dict(r), store=store)
                        if address.lower() in (a.lower() for a in addresses_in([author]))]
    if args.json:
        print(json.dumps(found, indent=2, default=str))
        return EX_OK
    for what, rows in found.items():
        print(f"{what}: {len(rows)}")
        for r in rows[:50]:
            print(f"    {r if isinstance(r, str) else ', '.join(f'{k}={v}' for k, v in r.items())}"[:300])
    return EX_OK


def cmd_forget(args, config):
    """Remove an address everywhere redsky keeps it (PERSONAL_DATA, the lists' owners, redsky's own log
    file); --archive also removes the posts it wrote from the archives and from digests not yet sent."""
    store = open_store(config)
    address = normalize_address(args.address)
    pattern = like_pattern(address)
    removed = {}
    with store.transaction() as db:
        for table, _, query in PERSONAL_DATA:
            removed[table] = db.execute(SQL[query], (address, pattern)).rowcount
        for table, query, delete in MENTIONING:
            doomed = [(r["id"],) for r in db.execute(SQL[query], (address, pattern)) if mentions(r, address)]
            removed[table] = db.executemany(SQL[delete], doomed).rowcount
        for row in db.execute(SQL["all_lists"]).fetchall():
            owners = [o for o in owners_of(row) if o.lower() != address.lower()]
            if len(owners) != len(owners_of(row)):
                store.set_list(db, row["id"], "owners", ",".join(owners))
                removed["owner of"] = removed.get("owner of", 0) + 1
        orphans = [r["spool"] for r in db.execute(SQL["orphan_messages"])]
        db.execute(SQL["delete_orphan_messages"])
        if args.archive:
            digest = [r["id"] for r in db.execute(SQL["digest_posts_all"])
                      if address.lower() in str(RawMessage(r["raw"]).get("From") or "").lower()]
            db.executemany(SQL["delete_digest_post"], [(i,) for i in digest])
            removed["digest posts"] = len(digest)
    for name in orphans:
        _unlink_quietly(os.path.join(config.spool, name))
    if args.archive:
        removed["archive"] = 0
        for row in store.q("all_lists").fetchall():
            removed["archive"] += archive_remove_author(config, store, dict(row), address)
    log_path = {"": os.path.join(config.data_dir, "redsky.log"), "syslog": "", "stderr": ""}.get(
        config.get("redsky", "log"), config.path_of("redsky", "log"))
    if log_path and os.path.exists(log_path):
        removed["log lines"] = redact_file(log_path, address)
    what = ", ".join(f"{k} {v}" for k, v in removed.items() if v)
    print(f"forgot {address}: {what or 'nothing stored'}")
    return EX_OK


def redact_file(path, address):
    """Drop the lines of a text file that name ``address``; returns how many."""
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        lines = fh.readlines()
    kept = [line for line in lines if address.lower() not in line.lower()]
    if len(kept) != len(lines):
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.writelines(kept)
        os.replace(tmp, path)
    return len(lines) - len(kept)


def archive_remove_author(config, store, list_row, address):
    """Remove from a list's archive the posts whose From is ``address``, leaving their numbers as
    gaps that say the author asked (archive_remove); returns how many."""
    doomed = [row["number"] for row, data in archived(config, store, list_row) if data is not None
              and address.lower() in (a.lower() for a in addresses_in(RawMessage(data).get_all("From")))]
    return len(archive_remove(config, store, list_row, doomed, "author"))


# ---------------------------------------------------------------------------
# 28. Doctor
# Owns: doctor's checks of the installation, Postfix, Exim, OpenSMTPD, LMTP and the web.
# Calls: sections 2-27.
# ---------------------------------------------------------------------------

CRON_PLACES = ("/etc/crontab", "/etc/cron.d", "/var/spool/cron/crontabs", "/var/spool/cron",
               "/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")


def find_send_schedule(places=CRON_PLACES):
    """(the first cron or systemd file that runs `redsky.py ... send` or None, the places this user
    could not read): a crontab directory is often closed to the list user (Debian: 1730 root:crontab)."""
    closed = []
    for place in places:
        try:
            files = [place] if os.path.isfile(place) else \
                [os.path.join(place, f) for f in sorted(os.listdir(place))] if os.path.isdir(place) else []
        except OSError:
            closed.append(place)
            continue
        for f in files:
            if os.access(f, os.R_OK) or not os.path.isfile(f):
                if re.search(r"redsky(\.py)?\b[^\n]*\bsend\b", read_text(f, 200_000)):
                    return f, closed
            else:
                closed.append(f)
    r = run_program(["crontab", "-l"], timeout=10) if places is CRON_PLACES else None   # this user's own
    if r and r.returncode == 0 and re.search(r"(?m)^[^#\n]*redsky(\.py)?\b[^\n]*\bsend\b", r.stdout):
        import pwd
        return f"/var/spool/cron/crontabs/{pwd.getpwuid(os.geteuid()).pw_name}", closed
    return None, closed


def postfix_running():
    """Does the master process of the Postfix that postconf reads run?  By its pid file (the
    queue directory's pid/master.pid), else by any process named master; None: cannot tell."""
    queue = postconf("-h", "queue_directory") or "/var/spool/postfix"
    try:
        with open(os.path.join(queue, "pid", "master.pid")) as fh:
            pid = int(fh.read(64).split()[0])
    except FileNotFoundError:
        return False
    except (OSError, ValueError, IndexError):
        running = running_programs()
        return None if running is None else "master" in running
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip() == "master"
    except OSError:
        return False


def running_programs():
    """The names (comm) of the running processes, or None when /proc cannot be listed."""
    try:
        pids = [pid for pid in os.listdir("/proc") if pid.isdigit()]
    except OSError:
        return None
    names = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as fh:
                names.add(fh.read().strip())
        except OSError:
            continue
    return names


def schedule_user(path):
    """Who runs the `redsky.py send` that ``path`` schedules: the user field
    of /etc/crontab and /etc/cron.d lines, the owner a user crontab is
    named after, a systemd unit's User= (root without one); None if unknown."""
    if "/spool/cron" in path:
        return os.path.basename(path)
    text = read_text(path, 200_000)
    if not text:
        return None
    if path.endswith((".service", ".timer")) or "/systemd/" in path:
        m = re.search(r"(?m)^\s*User\s*=\s*(\S+)", text)
        return m.group(1) if m else "root"
    for line in text.splitlines():
        fields = line.split()
        if re.search(r"redsky(\.py)?\b.*\bsend\b", line) and not line.lstrip().startswith("#") \
                and len(fields) > 6:
            return fields[1] if fields[0].startswith("@") else fields[5]
    return None


def doctor_checks(config, cron_places=CRON_PLACES):
    """Yield (level, finding, fix) with level OK, WARN or FAIL."""
    yield ("OK", f"config {config.path}", "") if config.path else \
        ("WARN", f"no config file: built-in defaults, data in {config.data_dir}",
         "copy redsky.ini.example to /etc/redsky/redsky.ini and pass -c to queue and send")
    db_path = config.database
    try:
        os.stat(db_path)
    except PermissionError:                 # there, but not for this user: init would not help
        yield ("FAIL", f"you cannot reach the database {db_path}: {config.data_dir} or a parent is closed"
                       " to you", f"run as root: chown -R {pipe_user(config)} {config.data_dir}; chmod o+x on"
                       f" its parents; run redsky as {pipe_user(config)}")
        return
    except OSError:
        yield "FAIL", f"database {db_path} does not exist", "run: redsky.py init"
        return
    try:
        store = Store(db_path, 2.0, durable=False)
    except (Failure, sqlite3.Error) as e:
        yield ("FAIL", f"database {db_path}: {e}",
               "run: redsky.py init (or restore the right redsky.py version)")
        return
    yield "OK", f"database {db_path}, schema version {SCHEMA_VERSION}", ""
    import pwd
    me = pwd.getpwuid(os.geteuid()).pw_name
    runner = pipe_user(config)
    try:
        pwd.getpwnam(runner)
        users = {me, runner}
    except KeyError:
        users = {me}
        yield ("WARN", f"the pipe user {runner} does not exist (the owner of data_dir is root)",
               f"create it, chown -R it {config.data_dir}, or set [postfix] user")
    for who in sorted(users):
        for what, path in (("database", db_path), ("data_dir", config.data_dir), ("spool", config.spool),
                           ("archive", config.path_of("archive", "dir")),
                           ("quarantine", config.path_of("filter", "quarantine"))):
            if path and os.path.exists(path) and not user_can(path, who, write=True):
                yield ("FAIL", f"{who} cannot write the {what} {path} (queue and send run as {who})",
                       f"chown -R {runner} {config.data_dir}, and run queue and send as {runner}")
                break
        else:
            yield "OK", f"{who} can write the database and spool", ""
    transport = config.get("send", "transport")
    if transport == "sendmail":
        path = config.get("send", "sendmail")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            yield "OK", f"sendmail {path} is executable", ""
        else:
            yield ("FAIL", f"sendmail {path} is not an executable file",
                   "install an MTA or set [send] sendmail")
    elif transport == "smtp":
        host, port = config.get("send", "smtp_host"), int(config.number("send", "smtp_port"))
        try:
            conn = smtp_connect(host, port, 5)
            smtp_close(conn)
            offers = " ".join(sorted({"PIPELINING", "CHUNKING", "XVERP"} & conn.extensions)) or "none"
            yield "OK", f"SMTP server {host}:{port} answers (it offers {offers})", ""
            if config.get("send", "verp") == "xverp" and "XVERP" not in conn.extensions:
                yield ("WARN", f"verp = xverp but {host}:{port} does not offer XVERP: `send` falls back to a"
                       " transaction per recipient",
                       "use Postfix's smtpd there, or set [send] verp = per-recipient")
        except SMTPError as e:
            yield ("FAIL", f"SMTP server {host}:{port} is unreachable or not answering SMTP: {e}",
                   "start the MTA or fix [send] smtp_host/smtp_port")
    else:
        yield ("WARN", f"transport {transport}: nothing is really sent",
               "set [send] transport = sendmail or smtp")
    for who in sorted(users):
        stuck = unreadable_spool_files(config, store, who)
        if stuck:
            yield ("FAIL", f"{who} cannot read {len(stuck)} queued spool files (e.g. {stuck[0]}):"
                   " they are never sent",
                   f"chown -R {runner} {config.spool}, and run queue and send as {runner}")
    yield from looked("the bytecode", bytecode_checks(config, runner))
    yield from looked("the web", web_checks(config))
    yield from looked("the web server's user", web_user_checks(config, store, runner))
    yield from looked("Postfix", postfix_checks(config))
    yield from looked("Exim", exim_checks(config, store))
    yield from looked("OpenSMTPD", opensmtpd_checks())
    yield from looked("the schedule of send", schedule_checks(config, runner, cron_places))
    for row in store.q("all_lists"):
        changes = [what for what, on in (("subject tag", row["subject_tag"]), ("footer", row["footer"]))
                   if on]
        if changes:
            yield ("WARN",
                   f"list {row['name']}@{row['domain']}: its {' and '.join(changes)} change signed parts of "
                   "posts, so authors' DKIM signatures fail (and DMARC p=reject senders' posts get rejected)",
                   f"redsky.py set {row['name']}@{row['domain']} subject_tag '' / footer ''")
    store.close()


def looked(what, checks):
    """The findings of ``checks``; one that cannot look (a directory closed to this user, a program
    that fails) is a WARN that says so, and doctor goes on with the next."""
    try:
        yield from checks
    except Exception as e:                      # any: doctor's own bug must not hide the other checks
        yield ("WARN", f"cannot check {what}: {type(e).__name__}: {one_line(e, 200)}",
               "run doctor as root (it looks as the list user where it can)")


def schedule_checks(config, runner, cron_places=CRON_PLACES):
    """Is `send` scheduled, as whom, and does a cron daemon run it?"""
    schedule, closed = find_send_schedule(cron_places)
    cron_user = schedule_user(schedule) if schedule else None
    cron_line = (f"* * * * * {runner} /usr/bin/python3 {os.path.abspath(__file__)}"
                 f"{' -c ' + os.path.abspath(config.path) if config.path else ''} send")
    if cron_user and cron_user not in (runner, "root"):
        yield ("FAIL", f"{schedule} runs 'redsky.py send' as {cron_user}, but the data belongs to {runner}",
               f"run it as {runner} (or as root: redsky then works as the owner of {config.data_dir})")
    elif schedule:
        who = f" as {cron_user}" if cron_user else ""
        yield "OK", f"'redsky.py send' is scheduled in {schedule}{who}", ""
        running = running_programs()
        wanted = {"systemd"} if "/systemd/" in schedule else {"cron", "crond", "cronie", "fcron"}
        if running is None:
            yield "WARN", "cannot tell whether a cron daemon runs (/proc cannot be listed)", ""
        elif not running & wanted:
            yield ("FAIL", f"no {' or '.join(sorted(wanted))} runs here, so {schedule} never runs 'redsky.py"
                   " send': posts wait in the spool", "install and start it (Debian: apt-get install cron)")
    elif closed:
        yield ("WARN", f"no job that runs 'redsky.py send' found, but {', '.join(closed[:3])} cannot be read"
               " by this user: a crontab there is not seen", "run doctor as root to look there too")
    else:
        yield ("WARN", "no cron job or systemd timer runs 'redsky.py send': posts wait in the spool",
               f"add to /etc/cron.d/redsky: {cron_line}")


def bytecode_checks(config, runner, python=None):
    """Does the pipe's python find redsky.py's bytecode fresh, and can the
    pipe's user read it?  Without, every message costs a compile."""
    python = python or default_python()
    state, path = bytecode(python)
    init = (f"run as root: {python} {os.path.realpath(__file__)}"
            f"{' -c ' + os.path.abspath(config.path) if config.path else ''} init")
    if state == "fresh" and not user_can(path, runner):
        state = "unreadable"
    if state == "fresh":
        yield "OK", f"the MTA's pipe runs redsky from its bytecode {path} ({python})", ""
    elif state == "unknown":
        yield "WARN", f"cannot check redsky.py's bytecode for {python}: {path}", init
    else:
        yield ("WARN", f"redsky.py's bytecode for {python} is {state} ({path}"
               f"{' for ' + runner if state == 'unreadable' else ''}): Python compiles redsky.py for every"
               " message the MTA pipes (0.1 s of CPU and 30 MB each)", init)


# What the DKIM signer must cover for one-click unsubscribe (RFC 8058 section 4), besides its own defaults
SIGNED_FIELDS = ("From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To", "References",
                 "MIME-Version", "Content-Type", "List-Id", "List-Post", "List-Unsubscribe",
                 "List-Unsubscribe-Post")


def web_checks(config):
    """[web] base_url, and whether the installed DKIM signer (OpenDKIM,
    rspamd) signs List-Unsubscribe and List-Unsubscribe-Post: receivers
    honour one-click unsubscribe only when a valid signature covers both."""
    base = config.get("web", "base_url")
    if not base:
        yield ("WARN", "[web] base_url is not set: copies offer no one-click unsubscribe (RFC 8058), which"
               " Gmail and Yahoo ask of bulk senders",
               "serve `redsky.py web` and set [web] base_url (README: On the web)")
        return
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", base):
        yield "FAIL", f"[web] base_url {base!r} is not an http(s) URL", \
            "set it to e.g. https://lists.example.org/redsky"
        return
    yield (("WARN", f"[web] base_url {base} is plain http: mail clients want https for one-click unsubscribe",
            "serve it over https (a proxy that terminates TLS), then set the https URL")
           if base.startswith("http://") else ("OK", f"one-click unsubscribe links point to {base}", ""))
    wanted = {"list-unsubscribe", "list-unsubscribe-post"}
    signers = [p.strip() for p in config.get("web", "dkim_signers").split(",") if os.path.isfile(p.strip())]
    for path in signers:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = re.sub(r"#[^\n]*", "", fh.read())
        except OSError as e:
            yield "WARN", f"cannot read the DKIM signer's settings {path}: {e.strerror}", "run doctor as root"
            continue
        if "rspamd" in path:
            m = re.search(r"(?i)\bsign_headers\s*=\s*\"([^\"]*)\"", text)
            signed = {re.sub(r"^\([a-z]\)", "", h.strip().lower()) for h in m.group(1).split(":")} \
                if m else set()
            line = 'sign_headers = "' + ":".join(f.lower() for f in SIGNED_FIELDS) + '";'
        else:
            m = re.search(r"(?im)^[ \t]*SignHeaders[ \t]+(.+)$", text)
            signed = {h.strip().lower() for h in re.split(r"[,\s]+", m.group(1))} if m else set()
            line = "SignHeaders " + ",".join(SIGNED_FIELDS)
        missing = " and ".join(sorted(wanted - signed))
        yield ("OK", f"{path} signs List-Unsubscribe and List-Unsubscribe-Post", "") if not missing else \
            ("WARN", f"{path} does not sign {missing}: receivers ignore one-click unsubscribe without a DKIM"
             " signature over both", f"add to {path}: {line}")
    if not signers:
        yield ("WARN", "no DKIM signer's settings found (OpenDKIM, rspamd): receivers honour one-click"
               " unsubscribe only in mail whose DKIM signature covers List-Unsubscribe and"
               " List-Unsubscribe-Post",
               "sign outgoing mail (README: DKIM), or name its settings in [web] dkim_signers")


def web_user_checks(config, store, runner):
    """[web] user, the web server's: with [web] cgi, can it read the config and write what the CGI
    script writes (the database, the -wal and -shm SQLite makes beside it in data_dir, the spool),
    and does what it writes stay the list user's (data_dir's group, set-group-ID directories, a
    umask that leaves the group read and write)?  And can it read the pages of public archives?"""
    import grp
    user, cgi = config.get("web", "user"), config.flag("web", "cgi")
    if not user:
        if cgi:
            yield ("WARN", "[web] cgi = yes, but [web] user is empty: doctor cannot check what the CGI script"
                   " may write", "set [web] user to your web server's user (Debian: www-data)")
        return
    groups = groups_of(user)
    if groups is None:
        yield ("FAIL", f"[web] user {user} does not exist",
               "set [web] user to the user your web server runs as (Debian: www-data)")
        return
    st = os.stat(config.data_dir)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    member = st.st_gid in groups
    join = (f"run as root: adduser {user} {group}, then restart the web server (systemctl restart apache2,"
            " or fcgiwrap): a running one keeps the groups it started with")
    init = (f"run as root: {default_python()} {os.path.realpath(__file__)}"
            f"{' -c ' + os.path.abspath(config.path) if config.path else ''} init (it shares them when"
            " [web] cgi = yes)")
    if cgi:
        failed = False
        if not member:
            failed = True
            yield ("FAIL", f"{user} is not in {config.data_dir}'s group {group}: the CGI script cannot write"
                   " the database and answers \"Not now\"", join)
        tmp = os.path.join(config.spool, "tmp")
        unshared = [p for p in (config.data_dir, config.spool, tmp) if os.path.isdir(p) and (
            os.stat(p).st_gid != st.st_gid or os.stat(p).st_mode & 0o2070 != 0o2070)]
        if unshared:
            failed = True
            yield ("FAIL", f"{', '.join(unshared)}: not set-group-ID and group-writable for {group}: the CGI"
                   f" script ({user}) cannot make the database's -wal and -shm there, or what it makes would"
                   f" be closed to {runner}", init)
        if config.umask & 0o060:
            failed = True
            yield ("FAIL", f"[redsky] umask = {config.umask:03o} closes what the CGI script ({user}) writes"
                   f" to {runner}, and what {runner} writes to it", "set [redsky] umask = 007")
        unread = [config.path] if config.path and not user_can(config.path, user) else []
        unwritten = [p for p in (config.database, config.database + "-wal", config.database + "-shm",
                                 log_file(config)) if p and os.path.exists(p) and not user_can(p, user, True)]
        if unread or (member and not unshared and unwritten):
            failed = True
            said = [f"read {p}" for p in unread] + ([f"write {', '.join(unwritten)}"] if unwritten else [])
            yield ("FAIL", f"{user} cannot {' nor '.join(said)}: the CGI script answers \"Not now\"",
                   "; ".join([f"run as root: chmod 644 {p}" for p in unread] + ([init] if unwritten else [])))
        if not failed:
            yield ("OK", f"{user} (the CGI script) can write the database, its -wal and -shm and the spool,"
                   f" which stay {runner}'s (group {group}, set-group-ID)", "")
    public = {pages_dir(config, r): list_address(r) for r in store.q("all_lists") if r["archive"] == "public"}
    public = {p: name for p, name in public.items() if os.path.isdir(p)}
    closed = [p for p in public if not (user_can(p, user) and user_can(os.path.join(p, "index.html"), user))
              or (os.path.isdir(os.path.join(p, "att")) and not user_can(os.path.join(p, "att"), user))]
    if closed:
        again = (f"run: redsky.py archive html {public[closed[0]]} (made anew with [redsky] umask)" if member
                 else f"{join}; or let redsky serve them (README: On the web)")
        yield ("FAIL", f"{user} cannot read the archive pages in {closed[0]}"
               f"{f' (and {len(closed) - 1} more lists)' if len(closed) > 1 else ''}: a web server that runs"
               " as it answers 403", again)
    elif public:
        yield "OK", f"{user} can read the archive pages of {len(public)} public lists", ""


def exim_checks(config, store):
    """When Exim is installed: does it route every list address to redsky's
    router (exim -bt, which reads the live configuration)?"""
    import shutil
    exe = shutil.which("exim4") or shutil.which("exim")
    if exe is None:
        return
    addresses = [list_address(r, suffix).lower() for r in store.q("all_lists") for suffix in LIST_SUFFIXES]
    lost = []
    for address in addresses[:90]:
        r = run_program([exe, "-bt", address])
        if r is None or "router = redsky" not in r.stdout:
            lost.append(address)
    if lost:
        yield ("FAIL", f"Exim does not route {len(lost)} list addresses to redsky (e.g. {lost[0]}: exim"
               " -bt shows its route)", "add the router and transport of the README's Exim section,"
               " then update-exim4.conf and restart exim4")
    elif addresses:
        checked = min(len(addresses), 90)
        yield "OK", f"Exim routes all {checked} list addresses checked to redsky (exim -bt)", ""


def opensmtpd_checks():
    """When OpenSMTPD is installed: does its configuration parse (smtpd -n) and name redsky?"""
    import shutil
    if shutil.which("smtpd") is None:
        return
    r = run_program(["smtpd", "-n"])
    if r is None or r.returncode != 0:
        yield ("FAIL", f"OpenSMTPD's configuration does not parse: {one_line(r.stderr if r else '', 200)}",
               "smtpd -n says why")
    elif "redsky" not in read_text("/etc/smtpd.conf"):
        yield ("WARN", "OpenSMTPD runs, but /etc/smtpd.conf never names redsky",
               "see the README's OpenSMTPD section")
    else:
        yield "OK", "OpenSMTPD's configuration parses and names redsky", ""


def postfix_checks(config):
    main = postconf("-h", "recipient_delimiter")
    if main is None:
        yield "OK", "no Postfix configuration found: Postfix checks skipped", ""
        return
    running = postfix_running()
    if running is False:
        yield ("FAIL", "Postfix is configured but its master process does not run: the lists get no mail",
               "systemctl start postfix (and systemctl enable postfix, for every boot)")
    if "+" not in main:
        yield ("FAIL", f"Postfix recipient_delimiter is {main!r}: LIST-bounces+user=host@ and"
               " LIST-confirm+TOKEN@ cannot reach redsky", "postconf -e 'recipient_delimiter = +'")
    else:
        yield "OK", "Postfix recipient_delimiter has +", ""
    service = postconf("-M", "redsky/unix") or ""
    lmtp = re.search(r"((?:redsky-)?lmtp):(inet:\S+|unix:\S+)'", " ".join(
        read_text(t.split(":", 1)[1]) for t in postfix_tables(postconf("-xh", "transport_maps"))[0]
        if t.startswith("sqlite:") and "redsky" in t))
    if lmtp:                                # Postfix's lmtp client to `redsky.py lmtp`
        yield from lmtp_checks(lmtp.group(2))
        yield from lmtp_concurrency_checks(config, lmtp.group(1), lmtp.group(2))
    elif not service:
        yield ("WARN", "Postfix master.cf has no 'redsky' pipe service",
               "add the lines 'redsky.py postfix-config' prints")
    elif "queue" not in service or not ("${original_recipient}" in service
                                        or re.search(r"flags=\S*O", service)):
        yield ("FAIL", "the Postfix 'redsky' pipe neither passes ${original_recipient} nor sets flags=O:"
               " redsky cannot tell which list a message is for",
               "use the master.cf lines 'redsky.py postfix-config' prints")
    else:
        yield "OK", "Postfix 'redsky' pipe service runs 'queue' with the original recipient", ""
        if "import redsky" not in service:
            yield ("WARN", "the Postfix 'redsky' pipe runs redsky.py as a script, which Python compiles for"
                   " every message (0.1 s of CPU and 30 MB each)",
                   "run as root: redsky.py postfix-config --apply; postfix reload")
        if (postconf("-h", "redsky_destination_recipient_limit") or "") != "1":
            yield ("FAIL", "redsky_destination_recipient_limit is not 1: several recipients would reach"
                   " one queue run", "postconf -e 'redsky_destination_recipient_limit = 1'")
    maps = postconf("-h", "virtual_alias_maps") or ""
    if "redsky-aliases" not in maps and not lmtp:
        yield ("WARN", "Postfix virtual_alias_maps does not use redsky-aliases.cf",
               "see 'redsky.py postfix-config'")
    map_path = config.path_of("postfix", "map")
    if map_path:
        if not os.path.exists(map_path):
            yield "FAIL", f"the Postfix list map {map_path} does not exist", "run: redsky.py postfix-config"
        elif not user_can(map_path, "postfix"):
            yield ("FAIL", f"user postfix cannot read the list map {map_path}: every list address would"
                   " be refused", f"chmod o+x {config.data_dir} (and its parents); the map is 0644")
        else:
            yield "OK", f"user postfix can read the list map {map_path}", ""
    yield from postfix_routing_checks(config, service)


def read_text(path, limit=100_000):
    """The start of a text file, or "" when it cannot be read."""
    try:
        with open(path, errors="replace") as fh:
            return fh.read(limit)
    except OSError:
        return ""


def lmtp_checks(endpoint):
    """Does `redsky.py lmtp` answer where Postfix's transport sends the lists?"""
    import socket
    kind, _, where = endpoint.partition(":")
    try:
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(3)
            sock.connect(where)
        else:
            host, _, port = where.rpartition(":")
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=3)
        with sock:
            greeting = sock.recv(512)
    except (OSError, ValueError) as e:
        yield ("FAIL", f"Postfix sends the lists over LMTP to {endpoint}, where nothing answers ({e})",
               f"start it: redsky.py lmtp --listen {where if kind == 'inet' else endpoint}")
        return
    yield ("OK", f"Postfix sends the lists over LMTP to {endpoint}, where redsky answers", "") \
        if b"redsky LMTP" in greeting else \
        ("FAIL", f"{endpoint} answers, but it is not redsky: {greeting[:80]!r}", "check the port")


def lmtp_concurrency_checks(config, transport, endpoint):
    """Does Postfix open no more sessions to `redsky.py lmtp` than it grants one peer?  Postfix's lmtp
    clients all run as the user postfix, one peer: past [lmtp] sessions_per_peer, a session gets 421
    and its mail waits for Postfix's next try."""
    grants = lmtp_peer_sessions(config)
    setting = f"{transport}_destination_concurrency_limit"
    limit = postconf("-xh", setting) or ""
    if limit.isdigit() and int(limit) <= grants:
        yield ("OK", f"Postfix opens at most {limit} LMTP sessions to redsky, which grants one peer {grants}",
               "")
        return
    yield ("WARN", f"{setting} is {limit or 'unknown'}, but redsky grants one peer {grants} LMTP sessions"
           " ([lmtp] sessions_per_peer): Postfix's sessions past that get 421 and their mail waits",
           f"postconf -e '{setting} = {grants}'; postfix reload (or raise [lmtp] sessions_per_peer)"
           if transport != "lmtp" else f"run as root: redsky.py postfix-config --lmtp {endpoint} --apply (a"
           " service of redsky's own, limited to that share); postfix reload")


def postfix_tables(value):
    """The lookup tables in a Postfix list setting (``type:name``, an
    ``inline:{…}`` kept whole), and the plain words."""
    items = re.findall(r"[^\s,{]*\{[^}]*\}|[^\s,]+", value or "")
    return [i for i in items if ":" in i], [i for i in items if ":" not in i]


def postmap_query(keys, table):
    """{key: value} of the ``keys`` that ``table`` answers (postmap -q -)."""
    import shutil
    exe = shutil.which("postmap") or "/usr/sbin/postmap"
    r = run_program([exe, "-q", "-", table], "".join(f"{k}\n" for k in keys))
    return dict(line.split("\t", 1) for line in r.stdout.splitlines() if "\t" in line) if r else {}


def postfix_routing_checks(config, service):
    """What the live Postfix does with each list address: is the domain accepted (and not also a
    local domain), does the alias map send every address to redsky's transport, does that
    transport reach the pipe, and does the pipe run as the owner of data_dir."""
    try:
        store = Store(config.database, 2.0, durable=False)
        rows = [dict(r) for r in store.q("all_lists")]
        store.close()
    except (Failure, sqlite3.Error):
        return
    local = {d.lower() for d in postfix_tables(postconf("-xh", "mydestination"))[1]}
    domain_tables, domain_words = postfix_tables(f"{postconf('-xh', 'virtual_alias_domains') or ''} "
                                                 f"{postconf('-xh', 'relay_domains') or ''}")

    def lookup(setting, keys):
        """What the tables of main.cf's ``setting`` answer for ``keys`` (the first to know one wins)."""
        found = {}
        for table in reversed(postfix_tables(postconf("-xh", setting))[0]):
            found.update(postmap_query(keys, table))
        return found
    for domain in sorted({r["domain"].lower() for r in rows}):
        if domain in local:
            yield ("FAIL", f"{domain} is in Postfix's mydestination too: its mail goes to local"
                           " mailboxes, not to the lists", f"remove {domain} from mydestination")
        elif domain in {w.lower() for w in domain_words} or \
                any(postmap_query([domain], t) for t in domain_tables):
            yield "OK", f"Postfix accepts mail for {domain} (virtual_alias_domains or relay_domains)", ""
        else:
            yield ("FAIL", f"Postfix does not accept mail for {domain}: every list address there is refused",
                   "run as root: redsky.py postfix-config --apply; postfix reload")
    addresses = [list_address(r, suffix).lower() for r in rows for suffix in LIST_SUFFIXES]
    routed = lookup("virtual_alias_maps", addresses)
    # Postfix's lmtp client: relay recipients with an lmtp: transport
    over_lmtp = {a for a, v in lookup("transport_maps", addresses).items()
                 if v.startswith(("lmtp:", "redsky-lmtp:"))}
    known = lookup("relay_recipient_maps", addresses)
    lost = [a for a in addresses if not routed.get(a, "").endswith("@redsky.invalid")
            and not (a in over_lmtp and a in known)]
    if lost:
        yield ("FAIL", f"{len(lost)} of {len(addresses)} list addresses are not routed to redsky by"
               f" virtual_alias_maps (e.g. {lost[0]})",
               "run as root: redsky.py postfix-config --apply; postfix reload")
    elif addresses:
        yield "OK", f"all {len(addresses)} list addresses are routed to redsky (postmap -q)", ""
    transport = lookup("transport_maps", ["redsky.invalid"]).get("redsky.invalid", "")
    if not over_lmtp and transport.split(":")[0] != "redsky":
        yield ("FAIL", "transport_maps does not send redsky.invalid to the 'redsky' pipe",
               "run as root: redsky.py postfix-config --apply; postfix reload")
    elif not over_lmtp:
        yield "OK", "transport_maps sends the lists to the 'redsky' pipe", ""
    import pwd
    user = (re.search(r"\buser=([^\s:]+)", service or "") or [None, None])[1]
    try:
        owner = pwd.getpwuid(os.stat(config.data_dir).st_uid).pw_name
    except (OSError, KeyError):
        owner = None
    if user and owner and user != owner:
        yield ("FAIL", f"the 'redsky' pipe runs as {user}, but {config.data_dir} belongs to {owner}:"
                       " posts cannot be queued", f"run as root: chown -R {user} {config.data_dir}")
    for name in ("redsky-domains.cf", "redsky-aliases.cf"):
        path = os.path.join(postconf("-h", "config_directory") or "/etc/postfix", name)
        if os.path.exists(path) and os.stat(path).st_mode & 0o022:
            yield ("FAIL", f"{path} is group or other writable: Postfix refuses to trust it",
                   f"run as root: chmod 644 {path}")


def cmd_doctor(args, config):
    """Check the installation; exit 0 only when nothing FAILs."""
    failed = False
    for level, finding, fix in doctor_checks(config):
        print(f"{level:5} {finding}")
        if fix and level != "OK":
            print(f"      fix: {fix}")
        failed = failed or level == "FAIL"
    return EX_CONFIG if failed else EX_OK


def settings_text(config=None, changed=False):
    """Every setting as an INI file, each with its help (wrapped) as a
    comment: the defaults (redsky.ini.example), or ``config``'s values,
    only those that differ from the default with ``changed``."""
    import textwrap
    out = [] if changed else [
        "; redsky configuration: every setting, its default and what it does.",
        "; Found as: -c FILE, $REDSKY_CONFIG, /etc/redsky/redsky.ini; with none, these",
        "; defaults apply and state lives in ~/.local/share/redsky. Durations take",
        "; s, m, h, d, w; sizes K, M, G. Printed by `redsky.py config --defaults`."]
    section = None
    for name, key, default, kind, help_text in SETTINGS:
        value = config.get(name, key) if config else default
        if changed and value == default:
            continue
        if name != section:
            out += ["", f"[{name}]"] if out else [f"[{name}]"]
            section = name
        if not changed:
            out += textwrap.wrap(help_text, 76, initial_indent="; ", subsequent_indent="; ")
        out.append(f"{key} = {value}".rstrip())
    return "\n".join(out) + "\n"


def cmd_config(args, config):
    sys.stdout.write(settings_text(None if args.defaults else config, args.changed))
    return EX_OK


def cmd_schema(args, config):
    sys.stdout.write(SCHEMA)
    return EX_OK


# ---------------------------------------------------------------------------
# 29. Command line
# Owns: demo, the argument parser, main.
# Calls: sections 2-28.
# ---------------------------------------------------------------------------

DEMO_POST = b"""\
From: Alice Example <alice@example.org>
To: demo@lists.example.org
Subject: Hello from the redsky demo
Message-ID: <demo-1@example.org>
Date: Wed, 25 Nov 2026 12:00:00 +0000
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Hi everyone -- this post went through every filter of the queue chain.
"""


def cmd_demo(args, config):
    """A throwaway list in a temp dir: queue a post, deliver it to maildirs,
    and show what each filter did."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="redsky-demo-") as home:
        ini = os.path.join(home, "redsky.ini")
        with open(os.open(ini, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
            fh.write("[redsky]\nlog = stderr\n[send]\ntransport = maildir\n")
        demo = Config(ini)
        setup_logging(demo, args.verbose)
        log.setLevel(logging.WARNING if not args.verbose else logging.DEBUG)
        print(f"== a throwaway redsky in {home}")
        store = open_store(demo, create=True)
        members = ("alice@example.org", "bob@example.net", "carol@example.com")
        with store.transaction() as db:
            # dmarc = never: the demo works offline and asks no DNS server
            list_id = store.add_list(db, {"name": "demo", "domain": "lists.example.org", "dmarc": "never",
                                          "created": time.time(), "subject_tag": "[demo]", "footer":
                                          "-- \nYou are on $post_address. To leave: $unsubscribe"})
            for a in members:
                store.q("add_member", list_id, a, time.time())
        print(f"   list demo@lists.example.org, members {', '.join(members)}")
        print("\n== redsky.py queue --recipient demo@lists.example.org < post")
        ctx = Context(demo, store)
        ctx.raw, ctx.recipient, ctx.sender = DEMO_POST, "demo@lists.example.org", "alice@example.org"
        verdict = run_chain(build_chain(demo.chain("queue"), "message", "queue"), ctx)
        for name, note in ctx.trace:
            print(f"   {name:15} {note}")
        if verdict is not None:
            print(f"   stopped: {verdict.name}")
            return verdict.code
        print("\n== redsky.py send  (transport = maildir)")
        sctx = Context(demo, store)
        run_chain(build_chain(demo.chain("send"), "send", "send"), sctx)
        for name, note in sctx.trace:
            print(f"   {name:15} {note}")
        base = demo.path_of("send", "maildir")
        print("\n== delivered")
        copies = {}
        for person in sorted(os.listdir(base)):
            for f in os.listdir(os.path.join(base, person, "new")):
                copies[person] = os.path.join(base, person, "new", f)
                print(f"   {person}/new/{f}")
        print("\n== the copy bob@example.net received\n")
        with open(copies["bob@example.net"], "rb") as fh:
            sys.stdout.write("   " + fh.read().decode("utf-8").replace("\n", "\n   ").rstrip() + "\n")
        counts = dict(zip(("queued", "pending", "deferred", "sent"), store.q("status_counts").fetchone()))
        print(f"\n== ledger: {counts['sent']} sent, {counts['pending'] + counts['deferred']} still pending")
        store.close()
    return EX_OK


def make_parser(wanted=None):
    """The command line parser; with ``wanted`` (a command name) only that command's subparser is
    built: the MTA runs `queue` once per message, and the other thirty cost it 30 ms (a plain
    `queue` line does without it: queue_args)."""
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message):
            self.exit(EX_USAGE, f"redsky: {message} (see '{self.prog} --help')\n")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=argparse.SUPPRESS, help="config file")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log debug messages to stderr too")
    parser = _Parser(prog="redsky.py", description="redsky: a mailing list manager built from filters.",
                     parents=[common])
    parser.add_argument("--version", action="version",
                        version=f"redsky {__version__} (schema {SCHEMA_VERSION})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    # `import mailman2 --config FILE` names Mailman's config: redsky's is -c there
    short = argparse.ArgumentParser(add_help=False)
    short.add_argument("-c", dest="config", default=argparse.SUPPRESS, help="config file")
    short.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)

    def command(name, func, help_text, parents=(common,)):
        if wanted and name != wanted:
            return _Unused()
        p = sub.add_parser(name, help=help_text, description=help_text, parents=list(parents))
        p.set_defaults(func=func)
        return p

    p = command("queue", cmd_queue, "queue the message on stdin (run by the MTA)")
    p.add_argument("--recipient", help="envelope recipient (the list address)")
    p.add_argument("--sender", help="envelope sender ('' or <> for the null sender)")
    p.add_argument("--dry-run", action="store_true",
                   help="decide, but store and send nothing (implies --explain)")
    p.add_argument("--explain", action="store_true", help="print each filter's decision")
    p.add_argument("--client-address", help="IP address of the SMTP client (for dnsbl)")
    p = command("filter", cmd_filter, "content filter: run [filter] filters from stdin to stdout")
    p.add_argument("--recipient", action="append", help="envelope recipient (repeatable)")
    p.add_argument("--sender", help="envelope sender ('' or <> for the null sender)")
    p.add_argument("--client-address", help="IP address of the SMTP client (for dnsbl)")
    p.add_argument("--explain", action="store_true", help="print each filter's decision on stderr")
    p.add_argument("recipients", nargs="*", metavar="RECIPIENT", help="more envelope recipients (after --)")
    p = command("quarantine", cmd_quarantine, "show, release or delete the messages filter mode held")
    p.add_argument("action", nargs="?", choices=("show", "release", "delete"), default="show")
    p.add_argument("keys", nargs="*", metavar="KEY")
    command("send", cmd_send, "deliver what is due (run from cron)")
    p = command("lmtp", cmd_lmtp, "serve LMTP (RFC 2033): the queue chain in-process, for any MTA")
    p.add_argument("--listen", required=True, metavar="HOST:PORT|unix:PATH")
    p = command("web", cmd_web, "serve the web pages: one-click unsubscribe, subscribe pages, archives")
    p.add_argument("--listen", default="127.0.0.1:8025", metavar="HOST:PORT")
    command("demo", cmd_demo, "try redsky in a throwaway directory")
    command("init", cmd_init, "create the database and spool")
    p = command("newlist", cmd_newlist, "create a list")
    p.add_argument("list", metavar="LIST@DOMAIN")
    p.add_argument("--access", choices=ACCESS_MODES)
    p.add_argument("--passphrase")
    p.add_argument("--subject-tag")
    p.add_argument("--footer", help="footer text ('\\n' for a line break)")
    p.add_argument("--owner", action="append", help="owner and moderator address (repeatable)")
    p.add_argument("--subscribe-policy", choices=SUBSCRIBE_POLICIES)
    p = command("lists", cmd_lists, "show the lists")
    p.add_argument("--json", action="store_true")
    p = command("set", cmd_set, f"change a list setting ({', '.join(SETTABLE)})")
    p.add_argument("list")
    p.add_argument("key", choices=SETTABLE)
    p.add_argument("value")
    p = command("dellist", cmd_dellist, "delete a list, its members and its queued posts")
    p.add_argument("list")
    p.add_argument("--dry-run", action="store_true", help="say what would be deleted; delete nothing")
    for name, func in (("subscribe", cmd_subscribe), ("unsubscribe", cmd_unsubscribe)):
        p = command(name, func, f"{name} addresses ('-': read stdin; 'Name <addr>' lines keep the name)")
        if name == "subscribe":
            p.add_argument("--welcome", action="store_true", help="send each new member the welcome text")
        p.add_argument("list")
        # REMAINDER: an address that looks like an option is refused as data (65), not usage
        p.add_argument("addresses", nargs=argparse.REMAINDER, metavar="ADDR")
    p = command("invite", cmd_invite, "invite addresses to join (they join by replying)")
    p.add_argument("list")
    p.add_argument("addresses", nargs="*", metavar="ADDR", help="addresses, or '-' to read them from stdin")
    p = command("members", cmd_members, "show a list's members and their options")
    p.add_argument("list")
    p.add_argument("--option", choices=tuple(MEMBER_OPTIONS), help="only the members with this option on")
    p.add_argument("--json", action="store_true")
    p = command("set-member", cmd_set_member, "set a member's option (MEMBER_OPTIONS) on or off")
    p.add_argument("list")
    p.add_argument("address")
    p.add_argument("key", choices=tuple(MEMBER_OPTIONS))
    p.add_argument("value", choices=("on", "off"))
    p.add_argument("--until", help="nomail on: until this day (YYYY-MM-DD, UTC), then delivery resumes")
    p = command("archive", cmd_archive, "list a list's archived posts, export them as an mbox, make"
                " its web pages again, or delete posts")
    p.add_argument("words", nargs="+", metavar="[export|html|delete] LIST [N...]")
    p.add_argument("--since", metavar="DATE", help="only posts dated on or after DATE (2026-11-01)")
    p.add_argument("--search", metavar="TEXT", help="only posts whose From, Subject or text contains TEXT")
    p.add_argument("--output", metavar="FILE", help="export: write the mbox here instead of stdout")
    p.add_argument("--json", action="store_true")
    p = command("backup", cmd_backup, "everything of this installation in one tar file, taken online")
    p.add_argument("file", metavar="FILE", help="the tar file (.tar.gz or .tgz: compressed)")
    p.add_argument("--wait", type=float, default=300, metavar="SECONDS",
                   help="how long to wait for a running send to finish (default 300)")
    p = command("restore", cmd_restore, "restore a backup into an empty data directory")
    p.add_argument("file", metavar="FILE")
    p = command("export", cmd_export, "a list as one JSON document (and its archive as FILE.mbox)")
    p.add_argument("list")
    p.add_argument("--output", metavar="FILE", help="write FILE (and FILE.mbox) instead of stdout")
    p = command("import", cmd_import, "bring a list over from mlmmj, Mailman 2, Mailman 3 or a redsky export",
                parents=(short,))
    p.add_argument("kind", choices=("mlmmj", "mailman2", "mailman3", "redsky"))
    p.add_argument("path", nargs="?", help="mlmmj: the list directory; redsky: the export file")
    p.add_argument("--as", dest="as_address", metavar="LIST@DOMAIN", help="the list's address here")
    p.add_argument("--config", dest="config_file", metavar="FILE", help="mailman2: `config_list -o` output")
    p.add_argument("--info", metavar="FILE", help="mailman3: `mailman lists` output (the list's address)")
    p.add_argument("--members", metavar="FILE", help="mailman2/3: regular members (`list_members -f`)")
    p.add_argument("--digest-members", metavar="FILE", help="mailman2/3: digest members")
    p.add_argument("--nomail-members", metavar="FILE", help="mailman2/3: members with delivery off")
    p.add_argument("--mbox", metavar="FILE", help="mailman2/3: the archive mbox")
    p.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    p.add_argument("--into-existing", action="store_true",
                   help="import into a list that exists here: its settings and owners are replaced")
    p.add_argument("--rewrite-addresses", action="store_true",
                   help="mlmmj: put redsky's addresses where the footer and prefix name mlmmj's")
    p = command("whois", cmd_whois, "everything redsky stores about an address")
    p.add_argument("address")
    p.add_argument("--json", action="store_true")
    p = command("forget", cmd_forget, "remove an address from everything redsky stores")
    p.add_argument("address")
    p.add_argument("--archive", action="store_true", help="also remove the posts it wrote from the archives")
    p = command("acl", cmd_acl, "show or change who may post to an 'acl' list")
    p.add_argument("list")
    p.add_argument("action", nargs="?", choices=("add", "del", "show"), default="show")
    p.add_argument("patterns", nargs="*", metavar="PATTERN", help="address or *@domain")
    p = command("ban", cmd_ban, "show or change who may neither post to a list nor join it")
    p.add_argument("list")
    p.add_argument("action", nargs="?", choices=("add", "del", "show"), default="show")
    p.add_argument("patterns", nargs="*", metavar="PATTERN", help="address, *@domain or ^regular expression")
    p = command("held", cmd_held, "show posts held for moderation")
    p.add_argument("list", nargs="?")
    p.add_argument("--json", action="store_true")
    p = command("approve", cmd_approve, "distribute a held post")
    p.add_argument("id", type=int)
    p = command("reject", cmd_reject, "drop a held post and tell the sender why")
    p.add_argument("id", type=int)
    p.add_argument("--reason", help="told to the sender")
    p = command("discard", cmd_discard, "drop a held post silently")
    p.add_argument("id", type=int)
    p = command("pending", cmd_pending, "show confirmations and requests that wait for an answer")
    p.add_argument("list", nargs="?")
    p.add_argument("--json", action="store_true")
    p = command("enable", cmd_enable, "deliver to a member again (resets the bounce score)")
    p.add_argument("list")
    p.add_argument("address")
    p = command("bounces", cmd_bounces, "each member's bounces with the evidence")
    p.add_argument("list")
    p.add_argument("--json", action="store_true")
    p = command("status", cmd_status, "show the queue and the delivery ledger")
    p.add_argument("--json", action="store_true")
    p = command("trace", cmd_trace, "what happened to a message: each filter's decision, each delivery")
    p.add_argument("message_id", metavar="MESSAGE-ID")
    p.add_argument("--address", help="only this recipient's delivery")
    p.add_argument("--json", action="store_true")
    command("doctor", cmd_doctor, "check the installation and explain what to fix")
    command("schema", cmd_schema, "print the database schema")
    p = command("config", cmd_config, "print every setting with its value (and what it does)")
    p.add_argument("--defaults", action="store_true", help="the defaults (redsky.ini.example)")
    p.add_argument("--changed", action="store_true", help="only the settings that differ from the default")
    p = command("postfix-config", cmd_postfix_config, "print the Postfix settings for this installation")
    p.add_argument("--dir", help="where the .cf files go (default: Postfix's config_directory)")
    p.add_argument("--write", action="store_true", help="write the files into --dir too")
    p.add_argument("--apply", action="store_true",
                   help="write the .cf files and merge the settings into main.cf and master.cf")
    p.add_argument("--lmtp", metavar="inet:HOST:PORT|unix:/PATH",
                   help="route the lists to `redsky.py lmtp` there instead of the pipe")
    p.add_argument("--user", help="the pipe user (default: [postfix] user, else the owner of data_dir)")
    p.add_argument("--python", help="the python3 for the pipe (default /usr/bin/python3)")
    if wanted and wanted not in sub.choices:    # not a command: the whole parser says so
        return make_parser()
    return parser


class _Unused:
    """Stands for the subparser of a command make_parser does not build."""

    def add_argument(self, *args, **kwargs):
        pass


def command_named(argv):
    """The command word of ``argv`` (the first word that is not an option or
    the -c/--config value), or None."""
    words = iter(argv)
    for word in words:
        if word in ("-c", "--config"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


# `queue`'s options as queue_args reads them: option -> attribute, and the flags
QUEUE_OPTIONS = {"--recipient": "recipient", "--sender": "sender", "--client-address": "client_address"}
QUEUE_FLAGS = {"--dry-run": "dry_run", "--explain": "explain"}


class Arguments:
    """What queue_args parsed, as argparse's Namespace holds it."""

    def __init__(self, **values):
        self.__dict__.update(values)


def queue_args(argv):
    """The arguments of a `queue` command line exactly as make_parser()'s
    parser reads them, without building argparse's parser (the MTA runs
    `queue` once per message); None for any line that is not made only of
    -c/--config FILE, -v/--verbose, `queue` and its own options written in
    full, which argparse then parses (or explains)."""
    values = {"command": "queue", "func": cmd_queue, "recipient": None, "sender": None,
              "client_address": None, "dry_run": False, "explain": False}
    words, command = iter(argv), False
    for word in words:
        name, equals, value = word.partition("=")
        if word in ("-v", "--verbose"):
            values["verbose"] = True
        elif word == "queue" and not command:
            command = True
        elif word in ("-c", "--config") or (name == "--config" and equals) \
                or (command and name in QUEUE_OPTIONS):
            if not equals:
                value = next(words, None)
                if value is None or value.startswith("-"):
                    return None                 # argparse's error, or its reading of "-..."
            values[QUEUE_OPTIONS.get(name, "config")] = value
        elif command and word in QUEUE_FLAGS:
            values[QUEUE_FLAGS[word]] = True
        else:
            return None
    return Arguments(**values) if command else None


def works_as_list_user(args, config, fork=False):
    """The command's own work, as the owner of data_dir; with ``fork`` (backup, run as root) in a
    child process, so that this one stays the caller and can finish what it opened."""
    if fork and os.geteuid() == 0 and os.path.isdir(config.data_dir) and os.stat(config.data_dir).st_uid:
        sys.stdout.flush()
        pid = os.fork()
        if pid:
            status = os.waitpid(pid, 0)[1]
            return os.WEXITSTATUS(status) if os.WIFEXITED(status) else EX_SOFTWARE
        code = EX_SOFTWARE
        try:
            code = main_as_list_user(args, config)
        except Failure as e:
            report(f"{e}")
            code = e.code
        finally:
            sys.stdout.flush()
            os._exit(code)
    return main_as_list_user(args, config)


def main_as_list_user(args, config):
    if args.command not in ("demo", "schema", "config", "postfix-config"):   # postfix-config: see there
        become_list_user(config)
    setup_logging(config, args.verbose)
    load_plugins(config)
    code = args.func(args, config)
    sys.stdout.flush()                          # a closed pipe shows here, not at exit
    return code


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = queue_args(argv) or make_parser(command_named(argv)).parse_args(argv)
    args.verbose = getattr(args, "verbose", False)
    queue = args.command in ("queue", "filter")       # the MTA must retry, not bounce
    try:
        config = Config.find(getattr(args, "config", None))
        os.umask(config.umask)
        if args.command == "init" or (args.command == "postfix-config" and not args.lmtp):
            args.bytecode = compile_bytecode(getattr(args, "python", None) or default_python())  # as root
        if args.command == "import":               # read as the caller (root may read what it imports)
            args.plan = import_plan(args)
        if args.command == "restore":              # as backup writes it: root's file, opened by root
            try:
                args.source = open(args.file, "rb")
            except OSError as e:
                raise Failure(f"cannot read the backup {args.file}: {e.strerror or e}",
                              EX_NOPERM if isinstance(e, PermissionError) else EX_DATAERR)
        if args.command != "backup":
            try:
                return works_as_list_user(args, config)
            finally:
                if args.command == "restore":
                    args.source.close()
        open_backup(args)                           # written where the caller may write, then renamed
        code = EX_SOFTWARE
        try:
            code = works_as_list_user(args, config, fork=True)
        finally:
            finish_backup(args, code)
        return code
    except BrokenPipeError as e:
        if queue:                                   # the MTA keeps the message and retries
            report(f"{args.command}: {e}")
            return EX_TEMPFAIL
        # `redsky.py members LIST | head`: the reader has gone, as it meant to
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13                             # as a shell reports a program ended by SIGPIPE
    except InsecureFile as e:
        if args.command == "doctor":                # doctor's own words for it
            print(f"FAIL  {str(e).split('; fix: ')[0]}\n      fix: {e.fix}")
        else:
            report(f"{e}")
        return EX_CONFIG
    except Failure as e:
        report(f"{e}")
        code = EX_TEMPFAIL if queue and (e.code != EX_CONFIG or getattr(e, "retry", False)) else e.code
        if args.command == "filter":
            print(f"451 4.3.0 {one_line(e, 400)}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        return EX_TEMPFAIL if queue else 130
    except Exception as e:  # a bug must not lose mail: the MTA keeps it and retries
        import traceback
        frames = traceback.extract_tb(e.__traceback__)[-6:]
        where = " < ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames))
        report(f"internal error in {args.command}: {type(e).__name__}: {one_line(e, 300)} (at {where})")
        if not _log_on_stderr:              # stderr stays one line; a log file or syslog gets it all
            log.error("traceback of the internal error in %s", args.command, exc_info=True)
        if args.command == "filter":
            print("451 4.3.0 internal error, try again later", file=sys.stderr)
        return EX_TEMPFAIL if queue else EX_SOFTWARE


if __name__ == "__main__":
    if os.environ.get("GATEWAY_INTERFACE", "").startswith("CGI/") and len(sys.argv) == 1:
        run_cgi()
    else:
        sys.exit(main())
