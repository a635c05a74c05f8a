"""Issue 8: a malformed journal or admin DSN stops rotor before it starts anything, with a
message naming the key and the variable or file it came from. The password never shows: libpq's
own message would quote the token it could not parse (`invalid percent-encoded token:
"s3cr%ZZet"`), so rotor repeats neither the value nor libpq's words."""
import secrets
import subprocess

from rotorlab import ROTOR

# (how the password is mangled, the DSN built around it). The secret is random per run, so a
# leak cannot hide behind a coincidence.
MALFORMED = [
    ("a % not followed by two hex digits", "postgresql://postgres:{pw}%ZZ@{host}:{port}/postgres"),
    ("a word without =", "host={host} port={port} user=postgres password {pw}"),
    ("an unquoted space", "host={host} port={port} user=postgres password=x {pw}"),
    ("an unterminated quote", "host={host} port={port} user=postgres password='{pw}"),
    ("a / in a URI password", "postgresql://postgres:{pw}/x@127.0.0.1:{port}/postgres"),
]


def secret():
    return "S3cr" + secrets.token_hex(8)


def assert_refused(text, code, *names, pw):
    assert code != 0, text
    for name in names:
        assert name in text, f"{name!r} is not named in:\n{text}"
    assert pw not in text, f"the password appears in:\n{text}"
    assert "not a valid DSN" in text, text


def cli(lab, env, *args):
    """rotor -c <lab config> args, with env over the lab's; stdout and stderr together."""
    r = subprocess.run([ROTOR, "-c", lab.config, *args], env=dict(lab.env, **env),
                       capture_output=True, text=True, timeout=60)
    return r.stdout + r.stderr, r.returncode


def nothing_started(lab):
    """No rotor schema: the journal was never touched."""
    return lab.pg.query("SELECT count(*) FROM pg_namespace WHERE nspname = 'rotor'")[0][0] == 0


def test_malformed_journal_dsn_refused_at_start(make_lab):
    lab = make_lab()
    for how, template in MALFORMED:
        pw = secret()
        dsn = template.format(pw=pw, host=lab.pg.dir, port=lab.pg.port)
        d = lab.start(extra_env={"ROTOR_JOURNAL_DSN": dsn}, wait_ready=False)
        code = d.wait(30)
        assert_refused(d.text(), code, "journal.dsn_env", "ROTOR_JOURNAL_DSN", pw=pw)
        assert nothing_started(lab), how
        # the CLI reads the same DSN, and refuses it in the same words
        for args in (["check"], ["status"]):
            out, code = cli(lab, {"ROTOR_JOURNAL_DSN": dsn}, *args)
            assert_refused(out, code, "journal.dsn_env", "ROTOR_JOURNAL_DSN", pw=pw)


def test_malformed_admin_dsn_refused_at_start(make_lab):
    lab = make_lab()
    for how, template in MALFORMED:
        pw = secret()
        dsn = template.format(pw=pw, host=lab.pg.dir, port=lab.pg.port)
        d = lab.start(extra_env={"APP_DB_ADMIN_DSN": dsn}, wait_ready=False)
        code = d.wait(30)
        assert_refused(d.text(), code, "secrets[0].database.dsn_env (secret app-db)",
                       "APP_DB_ADMIN_DSN", pw=pw)
        assert nothing_started(lab), how
        # rotor check says which secret's DSN is wrong, and carries on with the rest
        out, code = cli(lab, {"APP_DB_ADMIN_DSN": dsn}, "check")
        assert_refused(out, code, "FAIL secret app-db: database: secrets[0].database.dsn_env",
                       "APP_DB_ADMIN_DSN", pw=pw)
        assert "ok   journal: connected" in out, out


def test_malformed_admin_dsn_in_a_file(make_lab, tmp_path):
    lab = make_lab()
    pw = secret()
    path = tmp_path / "admin.dsn"
    path.write_text(f"postgresql://postgres:{pw}%G1@127.0.0.1:{lab.pg.port}/postgres\n")
    with open(lab.config) as f:
        text = f.read()
    with open(lab.config, "w") as f:
        f.write(text.replace("dsn_env: APP_DB_ADMIN_DSN", f"dsn_file: {path}"))
    d = lab.start(wait_ready=False)
    code = d.wait(30)
    assert_refused(d.text(), code, "secrets[0].database.dsn_file (secret app-db)",
                   f"the first line of {path}", pw=pw)
    assert nothing_started(lab)
