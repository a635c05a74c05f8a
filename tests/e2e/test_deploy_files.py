"""Deployment artefacts: the compose stack, its init SQL and rotor.yaml, the Helm chart and the
Dockerfile parse, agree with each other, and the configs they ship load in rotor's own loader.

No Docker engine or helm runs here: the chart's ConfigMap is rendered by substituting
`toYaml .Values.config`, which is all that template does with the config."""

import os
import re
import shutil
import subprocess
import tempfile

import pytest
import yaml

from rotorlab import ROTOR, SOURCE, Postgres, pg_bindir

ROOT = os.path.abspath(SOURCE)
COMPOSE = os.path.join(ROOT, "docker-compose.yml")
COMPOSE_CONFIG = os.path.join(ROOT, "deploy", "compose", "rotor.yaml")
INIT_SQL = os.path.join(ROOT, "deploy", "compose", "initdb", "01-roles.sql")
CHART = os.path.join(ROOT, "charts", "rotor")
DOCKERFILE = os.path.join(ROOT, "Dockerfile")
TOPICS = ("rotor.commands", "rotor.events", "rotor.deadletter")
# A DSN that fails at once: the checks after the config step must not hang on it.
REFUSED_DSN = "host=127.0.0.1 port=1 dbname=x user=x connect_timeout=2"


def load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def seconds(duration):
    """rotor's duration syntax (250ms, 30s, 1h30m, 90d) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def run_check(config, env_extra):
    env = dict(os.environ)
    env.update(env_extra)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    proc = subprocess.run([ROTOR, "-c", config, "check"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert "Sanitizer" not in proc.stderr and "runtime error:" not in proc.stderr, proc.stderr
    return proc


def assert_config_ok(proc, path):
    """The config step passed; later steps may FAIL (nothing runs here), never as config errors."""
    lines = proc.stdout.splitlines()
    assert lines, proc.stderr
    assert lines[0].startswith("ok   config: "), proc.stdout + proc.stderr
    assert path in lines[0]
    assert "(1 secret(s))" in lines[0]
    assert not any(line.startswith("FAIL config") for line in lines)
    # The config loader names file:line:key on error; none may appear anywhere.
    assert os.path.basename(path) + ":" not in proc.stderr, proc.stderr


def config_dsn_envs(cfg):
    envs = {(cfg.get("journal") or {}).get("dsn_env", "ROTOR_JOURNAL_DSN")}
    envs |= {s["database"]["dsn_env"] for s in cfg["secrets"] if "dsn_env" in s["database"]}
    return envs


# -- YAML well-formedness -----------------------------------------------------------------------


def chart_plain_yaml():
    found = []
    for d, dirs, files in os.walk(os.path.join(ROOT, "charts")):
        dirs[:] = [x for x in dirs if x != "templates"]
        found += [os.path.join(d, f) for f in files if f.endswith((".yaml", ".yml"))]
    return sorted(found)


def test_yaml_files_parse():
    charts = chart_plain_yaml()
    assert os.path.join(CHART, "Chart.yaml") in charts
    assert os.path.join(CHART, "values.yaml") in charts
    for path in [COMPOSE, COMPOSE_CONFIG] + charts:
        assert isinstance(load(path), dict), path


def test_chart_metadata():
    chart = load(os.path.join(CHART, "Chart.yaml"))
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "rotor"
    version = subprocess.run([ROTOR, "version"], capture_output=True, text=True).stdout.split()
    assert version == ["rotor", chart["appVersion"]]


# -- docker-compose.yml -------------------------------------------------------------------------


def test_compose_services_and_wiring():
    compose = load(COMPOSE)
    services = compose["services"]
    assert set(services) == {"kafka", "kafka-init", "postgres", "store-init", "rotor"}
    rotor = services["rotor"]
    assert rotor["build"]["dockerfile"] == "Dockerfile"
    assert "./deploy/compose/rotor.yaml:/etc/rotor/rotor.yaml:ro" in rotor["volumes"]
    assert set(rotor["depends_on"]) == {"kafka-init", "postgres", "store-init"}

    cfg = load(COMPOSE_CONFIG)
    assert cfg["kafka"]["brokers"] == "kafka:9092"
    # kafka-init creates exactly the topics rotor uses.
    script = services["kafka-init"]["command"][0]
    assert set(cfg["kafka"]["topics"].values()) == set(TOPICS)
    for topic in TOPICS:
        assert topic in script
    # Every DSN the config names comes from the compose environment, with the dev password.
    assert config_dsn_envs(cfg) <= set(rotor["environment"])
    dev_password = compose["x-dev-credentials"]["POSTGRES_PASSWORD"]
    for name in config_dsn_envs(cfg):
        dsn = rotor["environment"][name]
        assert "host=postgres " in dsn and f"password={dev_password} " in dsn, name
    # The store directory is on the rotor-store volume, which store-init seeds.
    store_mounts = [v.split(":")[1] for v in rotor["volumes"] if v.startswith("rotor-store:")]
    assert len(store_mounts) == 1
    for s in cfg["secrets"]:
        assert s["store"]["dir"].startswith(store_mounts[0] + "/")
    assert "rotor-store:" + store_mounts[0] in services["store-init"]["volumes"]
    assert "rotor-store" in compose["volumes"]
    # The published port is the one rotor listens on, on every interface.
    assert cfg["http"]["listen"] == "0.0.0.0:9464"
    assert any(p.startswith("9464:9464") for p in rotor["ports"])
    assert seconds(rotor["stop_grace_period"]) > seconds(cfg["daemon"]["shutdown_timeout"])
    assert "./deploy/compose/initdb:/docker-entrypoint-initdb.d:ro" in \
        services["postgres"]["volumes"]
    assert services["postgres"]["image"].startswith("postgres:15")
    with open(COMPOSE) as f:
        assert re.search(r"#.*sample application.*issue 4", f.read())


@pytest.fixture
def pg():
    root = tempfile.mkdtemp(prefix="rotor-deploy-")
    server = Postgres(root)
    yield server
    server.stop()


def psql(pg, path, env_extra):
    env = dict(os.environ)
    env.pop("APP_BLUE_PASSWORD", None)
    env.update(env_extra)
    psql_bin = os.path.join(pg_bindir(), "psql")
    return subprocess.run([psql_bin, "-X", "-v", "ON_ERROR_STOP=1", "-h", pg.dir, "-p",
                           str(pg.port), "-U", "postgres", "-d", "postgres", "-f", path],
                          env=env, capture_output=True, text=True, timeout=60)


def test_compose_init_sql_refuses_without_password(pg):
    proc = psql(pg, INIT_SQL, {})
    assert proc.returncode != 0
    assert "APP_BLUE_PASSWORD is not set" in proc.stderr
    assert pg.query("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'app\\_%%'") == [(0,)]


def test_compose_stack_passes_rotor_check(pg):
    """The init SQL builds what rotor's check expects, and the compose rotor.yaml loads."""
    password = load(COMPOSE)["x-dev-credentials"]["APP_BLUE_PASSWORD"]
    proc = psql(pg, INIT_SQL, {"APP_BLUE_PASSWORD": password})
    assert proc.returncode == 0, proc.stderr
    assert pg.can_login("app_blue", password)
    assert not pg.can_login("app_green", password)
    members = pg.query("SELECT r.rolname FROM pg_auth_members m "
                       "JOIN pg_roles r ON r.oid = m.member JOIN pg_roles g ON g.oid = m.roleid "
                       "WHERE g.rolname = 'app_rw' ORDER BY 1")
    assert members == [("app_blue",), ("app_green",)]

    proc = run_check(COMPOSE_CONFIG, {"ROTOR_JOURNAL_DSN": pg.admin_dsn,
                                      "APP_DB_ADMIN_DSN": pg.admin_dsn})
    assert_config_ok(proc, COMPOSE_CONFIG)
    out = proc.stdout
    assert re.search(r"^ok   journal: connected", out, re.M), out
    assert "ok   secret app-db: database: connected as postgres" in out
    assert "ok   secret app-db: blue role app_blue exists" in out
    assert "ok   secret app-db: green role app_green exists" in out
    # Only what does not run here fails: the broker and the container's volume.
    assert proc.returncode == 1
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert fails and all(re.match(r"FAIL (kafka:|secret app-db: store\.dir /var/lib/rotor/)", f)
                         for f in fails), out


# -- Helm chart ---------------------------------------------------------------------------------


def render_configmap(values):
    """configmap.yaml with .Values.config substituted as toYaml | nindent 4 would."""
    with open(os.path.join(CHART, "templates", "configmap.yaml")) as f:
        template = f.read()
    line = "    {{- toYaml .Values.config | nindent 4 }}\n"
    assert line in template
    body = yaml.safe_dump(values["config"], default_flow_style=False, sort_keys=True)
    text = template.replace(line, "".join("    " + x + "\n" for x in body.splitlines()))
    text = re.sub(r"^\s*\{\{-? *(/\*.*\*/|include \"rotor.labels\".*) *\}\}\n", "", text,
                  flags=re.M)
    text = text.replace('{{ include "rotor.fullname" . }}', "rotor")
    assert "{{" not in text, text
    return yaml.safe_load(text)


def test_chart_config_loads_in_rotor(tmp_path):
    values = load(os.path.join(CHART, "values.yaml"))
    cm = render_configmap(values)
    assert cm["kind"] == "ConfigMap"
    rendered = cm["data"]["rotor.yaml"]
    assert yaml.safe_load(rendered) == values["config"]
    path = str(tmp_path / "rotor.yaml")
    with open(path, "w") as f:
        f.write(rendered)
    env = {e: REFUSED_DSN for e in config_dsn_envs(values["config"])}
    assert_config_ok(run_check(path, env), path)


def test_chart_values_agree():
    values = load(os.path.join(CHART, "values.yaml"))
    cfg = values["config"]
    assert config_dsn_envs(cfg) <= {s["env"] for s in values["dsnSecrets"]}
    for s in values["dsnSecrets"]:
        assert s["secretName"] and s["key"]
    assert cfg["http"]["listen"] == f"0.0.0.0:{values['service']['port']}"
    shutdown = seconds(cfg.get("daemon", {}).get("shutdown_timeout", "30s"))
    assert values["terminationGracePeriodSeconds"] > shutdown
    for s in cfg["secrets"]:
        if s["store"].get("kind", "file") == "file":
            # below the volume's root, which fsGroup makes root-owned and group-writable: rotor
            # refuses such a store directory; the store-init container creates one below it
            assert s["store"]["dir"].startswith(values["persistence"]["mountPath"] + "/")
    assert values["persistence"]["enabled"] is True
    sc, psc = values["securityContext"], values["podSecurityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001
    assert "azure.workload.identity/client-id" in values["serviceAccount"]["annotations"]
    assert values["podLabels"]["azure.workload.identity/use"] == "true"
    assert values["probes"]["liveness"]["path"] == "/healthz"
    assert values["probes"]["readiness"]["path"] == "/readyz"


def test_chart_templates_reference_what_they_need():
    tdir = os.path.join(CHART, "templates")
    expected = {"_helpers.tpl", "NOTES.txt", "configmap.yaml", "deployment.yaml", "pvc.yaml",
                "service.yaml", "serviceaccount.yaml"}
    assert expected <= set(os.listdir(tdir))
    with open(os.path.join(tdir, "deployment.yaml")) as f:
        dep = f.read()
    for needle in ("terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}",
                   "secretKeyRef:", "serviceAccountName:", "checksum/config:",
                   "readinessProbe:", "livenessProbe:", "mountPath: /etc/rotor",
                   '["run", "-c", "/etc/rotor/rotor.yaml"]', ".Values.podLabels"):
        assert needle in dep, needle
    # Template actions balance, a cheap guard against a half-edited template.
    for name in os.listdir(tdir):
        with open(os.path.join(tdir, name)) as f:
            text = f.read()
        assert text.count("{{") == text.count("}}"), name
        opened = len(re.findall(r"\{\{-? *(if|with|range|define)\b", text))
        assert opened == len(re.findall(r"\{\{-? *end *-?\}\}", text)), name


# -- Dockerfile ---------------------------------------------------------------------------------


def dockerfile_stages():
    with open(DOCKERFILE) as f:
        text = re.sub(r"\\\n", " ", f.read())
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    return ["FROM " + s for s in stages]


def needed_libraries(binary):
    out = subprocess.run(["objdump", "-p", binary], capture_output=True, text=True,
                         check=True).stdout
    return re.findall(r"^\s*NEEDED\s+(\S+)", out, re.M)


def package_of(soname, binary):
    """The package owning the file the dynamic linker resolves soname to for binary (a bare
    soname is ambiguous: libm.so.6 is in libc6 and libc6-i386)."""
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    m = re.search(r"^\s*" + re.escape(soname) + r" => (\S+)", ldd, re.M)
    if not m:
        return None
    path = m.group(1)
    # merged /usr: dpkg knows a file under one of /lib and /usr/lib
    for candidate in (path, path.replace("/usr/lib/", "/lib/", 1),
                      path.replace("/lib/", "/usr/lib/", 1)):
        out = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True).stdout
        if out:
            return out.split(":")[0]
    return None


def test_dockerfile():
    build, runtime = dockerfile_stages()
    assert build.startswith("FROM debian:12-slim AS build")
    assert "cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build build" in build
    assert runtime.startswith("FROM debian:12-slim\n")
    assert "-dev" not in runtime
    assert "COPY --from=build /src/build/rotor /usr/local/bin/rotor" in runtime
    assert re.search(r"^USER 10001(:10001)?$", runtime, re.M)
    assert 'ENTRYPOINT ["rotor"]' in runtime
    assert 'CMD ["run", "-c", "/etc/rotor/rotor.yaml"]' in runtime
    assert re.search(r"^EXPOSE 9464$", runtime, re.M)
    apt = re.search(r"apt-get install ([^&]*)", runtime).group(1).split()
    for pkg in ("librdkafka1", "libuv1", "libjansson4", "libpq5", "libcurl4", "libyaml-0-2",
                "libmicrohttpd12"):
        assert pkg in apt
    # Every library the built binary links (on this Debian 12 host) is installed at runtime;
    # sanitizer runtimes exist only in test builds.
    binary = shutil.which(ROTOR)
    assert binary, f"{ROTOR} not found: set ROTOR_BIN"
    for soname in needed_libraries(binary):
        if soname.startswith(("libasan", "libubsan")):
            continue
        pkg = package_of(soname, binary)
        assert pkg is not None, soname
        assert pkg in ("libc6", "libgcc-s1") or pkg.split(":")[0] in apt, (soname, pkg)


def test_dockerignore_keeps_what_the_build_needs():
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        ignored = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    # The build stage compiles consumer/, embeds events/, CMake globs tests/ and includes
    # cmake/ and bench/ files.
    for needed in ("consumer", "events", "tests", "cmake", "bench", "CMakeLists.txt"):
        assert needed not in ignored
    assert "build" in ignored and ".git" in ignored
