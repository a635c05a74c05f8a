"""database.entra_token: the admin connection's password is an Entra access token (Azure
Database for PostgreSQL flexible server), fetched with the same credential as Key Vault's. Here
the emulator issues a known token for the database audience, and PostgreSQL's admin role has it
as its password: the rotation only works if rotor logs in with the token."""
import secrets

import pytest

from kvemu import KeyVaultEmulator, node_available

pytestmark = pytest.mark.skipif(not node_available(), reason="node is needed for the emulator")

PG_AUDIENCE = "https://ossrdbms-aad.database.windows.net"


def test_rotation_with_an_entra_token_as_the_admin_password(make_lab, tmp_path):
    kv = KeyVaultEmulator(str(tmp_path))
    kv.start()
    try:
        token = "eyJ0eXAiOiJKV1Qi." + secrets.token_urlsafe(48)
        kv.faults(fixed_token=token, fixed_token_aud=PG_AUDIENCE)
        azure = (f'{{ tenant_id: "{kv.tenant}", client_id: "{kv.client_id}", '
                 f'authority_host: "{kv.authority_host}", ca_file: {kv.ca_file} }}')
        env = {k: v for k, v in kv.env("secret").items() if k == "AZURE_CLIENT_SECRET"}
        lab = make_lab(azure=azure, env_extra=env, db_extra=", entra_token: true")
        lab.pg.query("CREATE ROLE rotor_admin LOGIN SUPERUSER PASSWORD %s", (token,))
        # the admin DSN has no password: rotor adds the token
        env["APP_DB_ADMIN_DSN"] = (f"host=127.0.0.1 port={lab.pg.port} user=rotor_admin "
                                   f"dbname=postgres")
        lab.opts["env_extra"] = env
        d = lab.start()
        rid = lab.rotation_for(lab.request())["id"]
        done = lab.wait_status(rid, ("completed", "failed"), 60)
        assert done["status"] == "completed", lab.history(rid)
        assert lab.can_login("app_green", lab.stored("pg-green"))
        assert not lab.rolcanlogin("app_blue")
        # rotor asked for a database token, and never printed it
        reqs = [r for r in kv.requests() if "oauth2/v2.0/token" in r.get("path", "")]
        assert reqs, "no token request reached the emulator"
        assert token not in d.text()
        # without the token the same DSN is refused: the check above could fail
        assert not lab.pg.can_login("rotor_admin", "not-the-token")
    finally:
        kv.stop()
