"""The shape of redsky.py: the rules a reader relies on to find things.

Each test reads the source (or imports the module) and fails when a change
breaks one of the rules the README's "Hacking on redsky" section states."""

import ast
import re
import subprocess
import sys

import pytest

from conftest import ROOT, post

import redsky

SOURCE = (ROOT / "redsky.py").read_text()
TREE = ast.parse(SOURCE)
# These read the source with ast features of Python 3.8 (end_lineno, ast.Constant);
# redsky itself runs on 3.7.
needs_38 = pytest.mark.skipif(sys.version_info < (3, 8), reason="reads the source with Python 3.8's ast")
# Where SQL may be executed as literal text: the store itself (schema,
# pragmas, transactions, the Postfix map's own schema).
STORE = {"Store", "upgrade_schema", "_Transaction", "write_postfix_map"}


def top_level_owner(node_lineno):
    for node in TREE.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.lineno <= node_lineno <= node.end_lineno:
            return node.name
    return None


def is_named_query(arg):
    """SQL["name"] or SQL["name"].format(...)."""
    if isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) and arg.func.attr == "format":
        arg = arg.func.value
    return isinstance(arg, ast.Subscript) and isinstance(arg.value, ast.Name) and arg.value.id == "SQL"


@needs_38
def test_every_sql_statement_outside_the_store_is_a_named_query():
    offenders = []
    for node in ast.walk(TREE):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("execute", "executemany", "executescript") and node.args:
            owner = top_level_owner(node.lineno)
            if owner not in STORE and not is_named_query(node.args[0]):
                offenders.append(f"line {node.lineno} in {owner}: {ast.unparse(node)[:80]}")
    assert not offenders, "literal SQL outside the store:\n" + "\n".join(offenders)


@needs_38
def test_the_layout_test_catches_literal_sql():
    """The rule above must be able to fail."""
    global TREE
    saved = TREE
    TREE = ast.parse("def housekeeping(db):\n    db.execute('DELETE FROM held')\n")
    try:
        with pytest.raises(AssertionError, match="DELETE FROM held"):
            test_every_sql_statement_outside_the_store_is_a_named_query()
    finally:
        TREE = saved


def test_every_named_query_is_used_and_every_use_exists():
    used = set(re.findall(r'SQL\["(\w+)"\]', SOURCE)) | set(re.findall(r'\.q\(\s*f?"(\w+)"', SOURCE))
    used |= {"acl_add", "acl_del", "ban_add", "ban_del"}    # SQL["acl_add" if ... else "acl_del"]
    used |= {q for _, *queries in redsky.PERSONAL_DATA + redsky.MENTIONING for q in queries}   # whois, forget
    used |= {f"{cache}_cache_{op}" for cache in ("dmarc", "dnsbl") for op in ("get", "prune", "put")}   # dns_cached()
    assert used - set(redsky.SQL) == set()
    assert set(redsky.SQL) - used == set()


def test_context_declares_every_field_a_filter_sets():
    declared = set(vars(redsky.Context(config=None)))
    assigned = set()
    for node in ast.walk(TREE):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:
            for t in (target.elts if isinstance(target, ast.Tuple) else [target]):
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id.endswith("ctx"):
                    assigned.add(t.attr)
    assert assigned - declared == set(), "set on a Context but not declared in Context.__init__"
    assert "result" not in declared


def test_every_filter_states_what_it_reads_and_writes():
    for name, fn in redsky.FILTERS.items():
        doc = " ".join((fn.__doc__ or "").split())
        assert re.search(r"\bReads\b", doc) and re.search(r"\bwrites\b", doc, re.I), name


def test_every_command_is_a_named_cmd_function():
    parser = redsky.make_parser()
    sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    for name, p in sub.choices.items():
        func = p.get_default("func")
        assert func.__name__.startswith("cmd_") and getattr(redsky, func.__name__) is func, name


def test_sections_say_what_they_own_and_may_call_and_the_docstring_outlines_them():
    banners = re.findall(r"(?m)^# -{75}\n# (\d+)\. ([^\n]+)\n# Owns: [^\n]+\n(?:#  [^\n]+\n)*# Calls: [^\n]+\n", SOURCE)
    numbers = [int(n) for n, _ in banners]
    assert numbers == list(range(1, len(banners) + 1)) and len(banners) >= 20, numbers
    outline = redsky.__doc__
    for number, title in banners:
        assert f"{number}. {title.split(':')[0]}" in outline, title
    readme = (ROOT / "README.md").read_text()
    for number, title in banners:
        assert f"| {number} | {title} |" in readme, f"README's outline lacks section {number}. {title}"


def sections(source):
    """[(number, first line, last line)] of the numbered sections of ``source``."""
    lines = source.splitlines()
    marks = [(i + 1, int(m.group(1))) for i, line in enumerate(lines) if (m := re.match(r"# (\d+)\. ", line))]
    return [(number, start, marks[k + 1][0] - 1 if k + 1 < len(marks) else len(lines))
            for k, (start, number) in enumerate(marks)]


def test_no_section_is_over_1000_lines():
    long = [(n, end - start + 1) for n, start, end in sections(SOURCE) if end - start + 1 > 1000]
    assert not long, f"sections over 1,000 lines (split them by concern): {long}"


def calls_below(source):
    """(section, definition, name, its section) of every top-level definition
    that uses a top-level name defined in a later section.  A name the
    definition binds itself (a parameter, a local, a nested function) is
    its own, not the top-level one."""
    tree = ast.parse(source)
    spans = sections(source)

    def section_of(lineno):
        return next((n for n, start, end in spans if start <= lineno <= end), None)
    defined = {}
    for node in tree.body:
        for target in ([node] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else
                       node.targets if isinstance(node, ast.Assign) else []):
            for name in ([target.name] if hasattr(target, "name") else
                         [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]):
                defined.setdefault(name, section_of(node.lineno))
    found = []
    for node in tree.body:
        here = section_of(node.lineno)
        own = set()
        if not isinstance(node, ast.Assign):
            for n in ast.walk(node):
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                    own.add(n.id)
                elif isinstance(n, ast.arg):
                    own.add(n.arg)
                elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n is not node:
                    own.add(n.name)
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and n.id not in own and (defined.get(n.id) or 0) > (here or 0):
                found.append((here, getattr(node, "name", "?"), n.id, defined[n.id]))
    return sorted(set(found))


@needs_38
def test_a_section_calls_only_sections_above_it():
    assert calls_below(SOURCE) == []


@needs_38
def test_the_layering_rule_can_fail():
    source = ("# 1. Low\ndef low():\n    return high()\n\n\n# 2. High\ndef high():\n    return 1\n"
              "def fine(high=None):\n    return low()\n")
    assert calls_below(source) == [(1, "low", "high", 2)]


def test_lines_are_wrapped_at_about_100_characters():
    long = [n for n, line in enumerate(SOURCE.splitlines(), 1) if len(line) > 110]
    assert not long, f"lines over 110 characters: {long[:10]}"


def test_importing_redsky_loads_no_heavy_module():
    """The import policy: what only some paths need is imported where it is used."""
    code = ("import sys; before = set(sys.modules); sys.path.insert(0, %r); import redsky; "
            "print(sorted(m for m in ('email', 'mailbox', 'subprocess', 'socket', 'hashlib', 'hmac', 'smtplib',"
            " 'secrets', 'html', 'uuid', 'argparse', 'logging.handlers', 'importlib.util', 'py_compile')"
            " if m in sys.modules and m not in before))" % str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


PLAIN_LIST = "team@lists.example.org"
# Modules `queue` of a plain post must not load (beyond what `python3 -c pass` has;
# pwd is there when root runs it, to become the list user).
NOT_FOR_A_PLAIN_POST = ("argparse", "email", "hashlib", "hmac", "logging.handlers", "socket", "subprocess",
                        "shutil", "secrets", "html", "uuid", "mailbox", "smtplib", "importlib.util", "random",
                        "base64", "bz2", "lzma", "pickle", "selectors", "tempfile", "urllib", "ipaddress",
                        "calendar", "gettext", "locale", "syslog", "py_compile", "queue", "zlib")


def modules_of_a_queue_run(rs, python, *extra, message=None):
    """The modules a `queue` run through the pipe's command line loaded
    that a bare interpreter does not: the pipe's code, then a report."""
    report = rs.home / "modules.txt"
    code = redsky.PIPE_CODE.replace("sys.exit(redsky.main())",
                                    f"code = redsky.main(); open({str(report)!r}, 'w').write(' '.join(sys.modules));"
                                    " sys.exit(code)")
    argv = redsky.pipe_command(python, str(rs.config), "queue", f"--recipient={PLAIN_LIST}", "--sender=ann@example.org",
                               *extra)
    argv[argv.index(redsky.PIPE_CODE)] = code
    message = message or post(to=PLAIN_LIST, sender="ann@example.org")
    r = subprocess.run(argv, input=message, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    bare = subprocess.run([python, "-I", "-c", "import sys; print(' '.join(sys.modules))"], capture_output=True,
                          text=True, check=True).stdout.split()
    return set(report.read_text().split()) - set(bare)


def test_a_plain_post_through_the_pipe_loads_no_module_it_does_not_use(rs):
    rs.newlist(PLAIN_LIST, "--access", "open", members=[f"m{i}@example.net" for i in range(10)])
    rs.run("set", PLAIN_LIST, "dmarc", "never", check=0)
    loaded = modules_of_a_queue_run(rs, sys.executable)
    assert "redsky" in loaded and "sqlite3" in loaded
    heavy = sorted(m for m in loaded if m in NOT_FOR_A_PLAIN_POST or m.split(".")[0] in ("email", "urllib"))
    assert heavy == [], "a plain post loaded these; import them where they are needed"
    # nor one without a Date (queue adds it), as a script or a cron job may send
    undated = re.sub(rb"Date: [^\n]*\n", b"", post(subject="Undated", to=PLAIN_LIST, sender="ann@example.org"))
    loaded = modules_of_a_queue_run(rs, sys.executable, message=undated)
    assert sorted(m for m in loaded if m in NOT_FOR_A_PLAIN_POST or m.split(".")[0] == "email") == []
    # the check can fail: with the content filter on, contentfilter needs the email package
    rs.run("set", PLAIN_LIST, "filter_content", "yes", check=0)
    assert "email" in modules_of_a_queue_run(rs, sys.executable, "--explain")


def test_a_builtin_text_never_loses_a_placeholder():
    list_row = {"name": "t", "domain": "example.org", "welcome": "", "goodbye": ""}
    with pytest.raises(KeyError):
        redsky.render("held", list_row, {"reason": "r"})          # $from_addr, $token ... missing
    text = redsky.render("rejected-post", list_row, {"subject": "Hi", "reason": "spam", "sender": "x"})
    assert "$" not in text and "spam" in text
    # a list's own text keeps what it does not know, as written
    assert "$nothing" in redsky.render("welcome", {**list_row, "welcome": "Hi $nothing"}, {"address": "a@b.c"})


def notice_call_sites():
    """(text names, keys of the values dict) of every Notices.send / Requests.notice call."""
    for node in ast.walk(TREE):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("send", "notice") and len(node.args) >= 3:
            name = node.args[2]
            names = [c.value for c in ast.walk(name) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            if isinstance(name, ast.JoinedStr):             # f"confirm-{action}"
                names = [n for n in redsky.TEXTS if n.startswith(names[0])]
            values = node.args[3] if len(node.args) > 3 else None
            keys = {k.value for k in values.keys} if isinstance(values, ast.Dict) else set()
            yield [n for n in names if n in redsky.TEXTS], keys


@needs_38
def test_every_builtin_text_gets_every_placeholder_it_names():
    """What expand() fills itself, or what every call site passes: a
    KeyError at run time (render is strict) would cost a retry."""
    list_keys = {"list", "domain", "post_address", "list_id", "owner", "request", "join", "leave", "unsubscribe"}
    seen = set()
    for names, keys in notice_call_sites():
        for name in names:
            seen.add(name)
            wanted = set(re.findall(r"\$(\w+)", redsky.TEXTS[name])) - list_keys
            assert wanted <= keys, f"{name}: a call site passes {sorted(keys)}, the text needs {sorted(wanted)}"
    seen.add("digest-masthead")                             # render("digest-masthead", ...) in build_digest
    assert "digest-masthead" in SOURCE.split("def build_digest")[1].split("\ndef ")[0]
    assert seen == set(redsky.TEXTS) - {"welcome", "goodbye"} or seen == set(redsky.TEXTS)


def test_list_suffixes_have_one_source(rs):
    """Every address the Postfix map names is one getinfo answers, and each
    is refused as a list name."""
    rs.newlist("team@lists.example.org", "--access", "open", members=("bob@example.net",))
    assert set(redsky.LIST_SUFFIXES) == {""} | {f"-{s}" for s in redsky.ROLES}
    for suffix in redsky.LIST_SUFFIXES:
        address = f"team{suffix}{'+' + '0' * 32 if suffix == '-confirm' else ''}@lists.example.org"
        r = rs.run("queue", "--dry-run", "--recipient", address, "--sender", "bob@example.net",
                   input=post(to=address))
        assert r.returncode != 67, (suffix, r.err)
        if suffix:
            bad = rs.run("newlist", f"x{suffix}@lists.example.org")
            assert bad.returncode == 64 and "reserved" in bad.err, suffix


def test_list_setting_choices_come_from_the_schema(rs):
    rs.newlist("team@lists.example.org")
    checks = dict(re.findall(r"CHECK \((\w+) IN \(([^)]*)\)\)", redsky.SCHEMA.split("CREATE TABLE members")[0]))
    for column, values in checks.items():
        allowed = re.findall(r"'([^']*)'", values)
        assert redsky.LIST_CHOICES[column] == tuple(allowed)
        r = rs.run("set", "team@lists.example.org", column, "nonsense")
        assert r.returncode == 64 and ", ".join(allowed) in r.err, column


def test_no_top_level_name_is_bound_twice():
    """A second definition silently replaces the first for every caller (a
    pattern for the archive pages once shadowed the bounce parser's)."""
    import ast
    import collections
    names = collections.Counter()
    for node in ast.parse(SOURCE).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names[node.name] += 1
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    assert [name for name, count in names.items() if count > 1] == []


def test_the_source_is_python_37():
    """The README promises Python 3.7: no syntax of a later Python (an assignment expression, say)."""
    ast.parse(SOURCE, feature_version=(3, 7))
    with pytest.raises(SyntaxError):
        ast.parse("while (m := 1):\n    pass\n", feature_version=(3, 7))
