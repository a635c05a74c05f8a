"""Issue 8: the file store's directory must be rotor's own. One that others may write to, or a
symbolic link, stops `rotor run` before it starts anything, naming store.dir and what was found;
`rotor check` reports the same."""
import os
import subprocess

from rotorlab import ROTOR


def run_refused(lab, *want):
    d = lab.start(wait_ready=False)
    code = d.wait(30)
    text = d.text()
    assert code != 0, text
    for w in want:
        assert w in text, f"{w!r} not in:\n{text}"
    assert lab.initial_password not in text
    # nothing started: the journal has no rotor schema
    assert lab.pg.query("SELECT count(*) FROM pg_namespace WHERE nspname = 'rotor'")[0][0] == 0
    r = subprocess.run([ROTOR, "-c", lab.config, "check"], env=lab.env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    for w in want:
        assert w in r.stdout, r.stdout


def test_group_writable_store_dir_refused(make_lab):
    lab = make_lab()
    os.chmod(lab.secrets_dir, 0o770)
    run_refused(lab, f"secret app-db: store.dir {lab.secrets_dir}: the directory has mode 0770: "
                     "group or others may write to it")


def test_symlinked_store_dir_refused(make_lab):
    lab = make_lab()
    real = lab.secrets_dir + ".real"
    os.rename(lab.secrets_dir, real)
    os.symlink(real, lab.secrets_dir)
    run_refused(lab, f"store.dir {lab.secrets_dir}: the directory is a symbolic link")
