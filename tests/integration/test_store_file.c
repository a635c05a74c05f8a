/* test_store_file.c: the file secret store on a real directory, driven through a libuv loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rotor.h"
#include "secret.h"
#include "store.h"
#include "util.h"

typedef struct {
    uv_loop_t loop;
    char dir[64];
    cfg_secret_t cfg;
    store_t *store;
} fixture_t;

/* What a callback reported. */
typedef struct {
    int calls;
    int status;
    char version[64]; /* "" for NULL */
    char reason[256];
    rotor_secret_t *value;
} result_t;

static void on_version(void *arg, int status, const char *version, const char *reason)
{
    result_t *r = arg;
    r->calls++;
    r->status = status;
    util_strlcpy(r->version, version ? version : "", sizeof r->version);
    util_strlcpy(r->reason, reason ? reason : "", sizeof r->reason);
}

static void on_value(void *arg, int status, rotor_secret_t *value, const char *version,
                     const char *reason)
{
    result_t *r = arg;
    on_version(arg, status, version, reason);
    r->value = value;
}

static void on_done(void *arg, int status, const char *reason)
{
    on_version(arg, status, NULL, reason);
}

static int setup(void **state)
{
    fixture_t *f = util_calloc(1, sizeof *f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    strcpy(f->dir, "/tmp/rotor-store-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    /* The store's directory, as the operator creates it (rotor never does). */
    strcat(f->dir, "/kv");
    assert_int_equal(mkdir(f->dir, 0700), 0);
    f->cfg.name = "orders-db";
    f->cfg.store.kind = "file";
    f->cfg.store.dir = f->dir;
    char err[256] = "";
    assert_int_equal(store_open(&f->loop, &f->cfg, NULL, &f->store, err, sizeof err), 0);
    *state = f;
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    f->store->ops->close(f->store);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    f->dir[strlen(f->dir) - 3] = '\0';
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* Runs the loop until the request has called back exactly once. */
static void wait_for(fixture_t *f, result_t *r)
{
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(r->calls, 1);
}

static result_t put(fixture_t *f, const char *name, const char *value, const char *rotation)
{
    result_t r = {0};
    rotor_secret_t *v = secret_from(value, strlen(value));
    store_tags_t tags = {.rotation_id = rotation, .slot = "green", .role = "app_green"};
    int64_t exp = util_now_ms() + 86400000;
    assert_int_equal(f->store->ops->put(f->store, name, v, &tags, exp, on_version, &r, 0, NULL), 0);
    secret_free(v);
    assert_int_equal(r.calls, 0); /* called back later, from the loop, never from put itself */
    wait_for(f, &r);
    assert_int_equal(r.status, 0);
    assert_int_equal(strlen(r.version), 32);
    assert_int_equal(strspn(r.version, "0123456789abcdef"), 32);
    return r;
}

static result_t get(fixture_t *f, const char *name, const char *version)
{
    result_t r = {0};
    assert_int_equal(f->store->ops->get(f->store, name, version, on_value, &r, 0, NULL), 0);
    wait_for(f, &r);
    assert_true((r.status == 0) == (r.value != NULL));
    return r;
}

static result_t find(fixture_t *f, const char *name, const char *rotation)
{
    result_t r = {0};
    assert_int_equal(f->store->ops->find(f->store, name, rotation, on_version, &r, 0, NULL), 0);
    wait_for(f, &r);
    assert_int_equal(r.status, 0);
    return r;
}

static result_t current(fixture_t *f, const char *name)
{
    result_t r = {0};
    assert_int_equal(f->store->ops->current(f->store, name, on_version, &r, 0, NULL), 0);
    wait_for(f, &r);
    assert_int_equal(r.status, 0);
    return r;
}

static void disable(fixture_t *f, const char *name, const char *version)
{
    result_t r = {0};
    assert_int_equal(f->store->ops->disable(f->store, name, version, on_done, &r, 0, NULL), 0);
    wait_for(f, &r);
    assert_int_equal(r.status, 0);
}

static void expect_secret(result_t *r, const char *want)
{
    assert_int_equal(r->status, 0);
    assert_non_null(r->value);
    assert_int_equal(r->value->len, strlen(want));
    assert_memory_equal(r->value->buf, want, strlen(want));
    secret_free(r->value);
    r->value = NULL;
}

static char *slurp(const char *dir, const char *rel)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    char *buf = util_calloc(1, 4096);
    size_t n = fread(buf, 1, 4095, fp);
    buf[n] = '\0';
    fclose(fp);
    return buf;
}

static unsigned mode_of(const char *dir, const char *rel)
{
    char path[512];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 07777;
}

static bool exists(const char *dir, const char *rel)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    return access(path, F_OK) == 0;
}

static void test_put_writes_mount_and_version(void **state)
{
    fixture_t *f = *state;
    result_t r = put(f, "pg-green", "s3cret!Value", "rot-1");
    char *mount = slurp(f->dir, "pg-green");
    assert_string_equal(mount, "s3cret!Value");
    free(mount);
    assert_int_equal(mode_of(f->dir, "pg-green"), 0600);
    assert_int_equal(mode_of(f->dir, "."), 0700);
    assert_int_equal(mode_of(f->dir, ".versions"), 0700);

    char rel[128];
    snprintf(rel, sizeof rel, ".versions/pg-green/%s.json", r.version);
    assert_int_equal(mode_of(f->dir, rel), 0600);
    char *text = slurp(f->dir, rel);
    json_t *doc = json_loads(text, 0, NULL);
    free(text);
    assert_non_null(doc);
    assert_string_equal(json_string_value(json_object_get(doc, "id")), r.version);
    assert_string_equal(json_string_value(json_object_get(doc, "value")), "s3cret!Value");
    assert_true(json_is_true(json_object_get(doc, "enabled")));
    assert_true(json_integer_value(json_object_get(doc, "exp")) > util_now_ms());
    assert_true(json_integer_value(json_object_get(doc, "created")) <= util_now_ms());
    json_t *tags = json_object_get(doc, "tags");
    assert_string_equal(json_string_value(json_object_get(tags, "rotation")), "rot-1");
    assert_string_equal(json_string_value(json_object_get(tags, "slot")), "green");
    assert_string_equal(json_string_value(json_object_get(tags, "role")), "app_green");
    assert_string_equal(json_string_value(json_object_get(tags, "managed-by")), "rotor");
    json_decref(doc);

    /* No temporary file is left behind by the atomic writes. */
    DIR *d = opendir(f->dir);
    struct dirent *e;
    while ((e = readdir(d)))
        assert_null(strstr(e->d_name, ".tmp-"));
    closedir(d);
}

static void test_find_and_versions(void **state)
{
    fixture_t *f = *state;
    result_t v1 = put(f, "pg-green", "first-value", "rot-1");
    result_t found = find(f, "pg-green", "rot-1");
    assert_string_equal(found.version, v1.version);
    assert_string_equal(find(f, "pg-green", "rot-unknown").version, "");
    assert_string_equal(find(f, "pg-never-written", "rot-1").version, "");

    result_t v2 = put(f, "pg-green", "second-value", "rot-2");
    assert_string_not_equal(v1.version, v2.version);
    assert_string_equal(find(f, "pg-green", "rot-2").version, v2.version);
    assert_string_equal(find(f, "pg-green", "rot-1").version, v1.version);
    assert_string_equal(current(f, "pg-green").version, v2.version);

    result_t g = get(f, "pg-green", NULL);
    assert_string_equal(g.version, v2.version);
    expect_secret(&g, "second-value");
    g = get(f, "pg-green", v1.version);
    assert_string_equal(g.version, v1.version);
    expect_secret(&g, "first-value");
    g = get(f, "pg-green", v2.version);
    expect_secret(&g, "second-value");

    /* Disabling an old version leaves the current value alone. */
    disable(f, "pg-green", v1.version);
    g = get(f, "pg-green", v1.version);
    assert_int_equal(g.status, ROTOR_ENOTFOUND);
    assert_non_null(strstr(g.reason, "disabled"));
    assert_string_equal(find(f, "pg-green", "rot-1").version, "");
    g = get(f, "pg-green", NULL);
    expect_secret(&g, "second-value");
    assert_string_equal(current(f, "pg-green").version, v2.version);
}

static void test_disable_current_removes_mount(void **state)
{
    fixture_t *f = *state;
    put(f, "pg-blue", "old-value", "rot-1");
    result_t v2 = put(f, "pg-blue", "new-value", "rot-2");
    assert_true(exists(f->dir, "pg-blue"));
    disable(f, "pg-blue", v2.version);
    assert_false(exists(f->dir, "pg-blue"));
    assert_string_equal(current(f, "pg-blue").version, "");
    result_t g = get(f, "pg-blue", NULL);
    assert_int_equal(g.status, ROTOR_ENOTFOUND);
    g = get(f, "pg-blue", v2.version);
    assert_int_equal(g.status, ROTOR_ENOTFOUND);
    /* Again, and an id that never existed: both are no-ops, not errors. */
    disable(f, "pg-blue", v2.version);
    disable(f, "pg-blue", "0123456789abcdef0123456789abcdef");
    g = get(f, "pg-blue", "0123456789abcdef0123456789abcdef");
    assert_int_equal(g.status, ROTOR_ENOTFOUND);
    assert_non_null(strstr(g.reason, "does not exist"));
}

static void test_write_current(void **state)
{
    fixture_t *f = *state;
    const char *json = "{\"role\":\"app_green\",\"password\":\"p\\\"w\"}";
    rotor_secret_t *v = secret_from(json, strlen(json));
    result_t r = {0};
    assert_int_equal(f->store->ops->write_current(f->store, "current", v, on_done, &r, 0, NULL), 0);
    secret_free(v);
    wait_for(f, &r);
    assert_int_equal(r.status, 0);
    char *text = slurp(f->dir, "current");
    assert_string_equal(text, json);
    free(text);
    assert_int_equal(mode_of(f->dir, "current"), 0600);
    assert_false(exists(f->dir, ".versions/current"));
    /* Overwrites in place. */
    v = secret_from("{}", 2);
    r = (result_t){0};
    assert_int_equal(f->store->ops->write_current(f->store, "current", v, on_done, &r, 0, NULL), 0);
    secret_free(v);
    wait_for(f, &r);
    text = slurp(f->dir, "current");
    assert_string_equal(text, "{}");
    free(text);
}

static void test_handmade_mount_file(void **state)
{
    fixture_t *f = *state;
    char path[512];
    snprintf(path, sizeof path, "%s/pg-blue", f->dir);
    FILE *fp = fopen(path, "w");
    fputs("typed-by-hand\n", fp); /* as `echo typed-by-hand > pg-blue` writes it */
    fclose(fp);
    result_t g = get(f, "pg-blue", NULL);
    assert_string_equal(g.version, "");
    expect_secret(&g, "typed-by-hand");
    assert_string_equal(current(f, "pg-blue").version, "");
    assert_string_equal(find(f, "pg-blue", "rot-1").version, "");
    /* A put takes over: the version becomes current. */
    result_t v = put(f, "pg-blue", "generated", "rot-1");
    assert_string_equal(current(f, "pg-blue").version, v.version);
}

/* A crash between put's version file and its mount file: find, run again by the resumed
 * rotation, finishes the put instead of returning a version that is not current. */
static void test_find_finishes_interrupted_put(void **state)
{
    fixture_t *f = *state;
    result_t v0 = put(f, "pg-green", "older", "rot-0");
    result_t v = put(f, "pg-green", "newer", "rot-1");
    char path[512];
    snprintf(path, sizeof path, "%s/pg-green", f->dir);
    FILE *fp = fopen(path, "w");
    fputs("older", fp); /* the mount as it was before the interrupted put */
    fclose(fp);
    assert_string_equal(current(f, "pg-green").version, v0.version);
    assert_string_equal(find(f, "pg-green", "rot-1").version, v.version);
    char *mount = slurp(f->dir, "pg-green");
    assert_string_equal(mount, "newer");
    free(mount);
    assert_string_equal(current(f, "pg-green").version, v.version);
    /* an older rotation's version is found but never made current again */
    assert_string_equal(find(f, "pg-green", "rot-0").version, v0.version);
    mount = slurp(f->dir, "pg-green");
    assert_string_equal(mount, "newer");
    free(mount);
}

static void test_invalid_requests(void **state)
{
    fixture_t *f = *state;
    const store_ops_t *ops = f->store->ops;
    rotor_secret_t *v = secret_from("x", 1);
    result_t r = {0};
    const char *bad_names[] = {"", ".hidden", "a/b", "../up", NULL};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(ops->put(f->store, bad_names[i], v, NULL, 0, on_version, &r, 0, NULL),
                         ROTOR_EINVALID);
        assert_int_equal(ops->get(f->store, bad_names[i], NULL, on_value, &r, 0, NULL),
                         ROTOR_EINVALID);
        assert_int_equal(ops->find(f->store, bad_names[i], "rot", on_version, &r, 0, NULL),
                         ROTOR_EINVALID);
        assert_int_equal(ops->current(f->store, bad_names[i], on_version, &r, 0, NULL),
                         ROTOR_EINVALID);
        assert_int_equal(ops->write_current(f->store, bad_names[i], v, on_done, &r, 0, NULL),
                         ROTOR_EINVALID);
    }
    assert_int_equal(ops->get(f->store, "pg", "../../etc/passwd", on_value, &r, 0, NULL),
                     ROTOR_EINVALID);
    assert_int_equal(ops->disable(f->store, "pg", "ABC", on_done, &r, 0, NULL), ROTOR_EINVALID);
    secret_free(v);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    /* A request refused up front never calls back, nor writes. */
    assert_int_equal(r.calls, 0);
    assert_int_equal(rmdir(f->dir), 0);
}

static void test_store_open_kinds(void **state)
{
    fixture_t *f = *state;
    cfg_secret_t cfg = f->cfg;
    store_t *s = NULL;
    char err[256] = "";
    cfg.store.kind = "s3";
    assert_int_equal(store_open(&f->loop, &cfg, NULL, &s, err, sizeof err), ROTOR_ECONFIG);
    assert_string_equal(err, "store kind s3 is not supported");
    cfg.store.kind = "file";
    cfg.store.dir = NULL;
    assert_int_equal(store_open(&f->loop, &cfg, NULL, &s, err, sizeof err), ROTOR_ECONFIG);
    assert_non_null(strstr(err, "store.dir"));
}

/* ---- a store directory that is not rotor's own, and links planted in it ---- */

/* A request that must be refused: ROTOR_ESTORE with a reason naming store.dir and want. */
static void expect_refused(const result_t *r, const char *want)
{
    assert_int_equal(r->calls, 1);
    assert_int_equal(r->status, ROTOR_ESTORE);
    assert_non_null(strstr(r->reason, "store.dir "));
    if (!strstr(r->reason, want))
        fail_msg("reason \"%s\" does not say \"%s\"", r->reason, want);
}

static result_t try_put(fixture_t *f, const char *name, const char *value)
{
    result_t r = {0};
    rotor_secret_t *v = secret_from(value, strlen(value));
    assert_int_equal(f->store->ops->put(f->store, name, v, NULL, 0, on_version, &r, 0, NULL), 0);
    secret_free(v);
    wait_for(f, &r);
    return r;
}

static result_t try_get(fixture_t *f, const char *name)
{
    result_t r = {0};
    assert_int_equal(f->store->ops->get(f->store, name, NULL, on_value, &r, 0, NULL), 0);
    wait_for(f, &r);
    secret_free(r.value);
    r.value = NULL;
    return r;
}

static result_t try_find(fixture_t *f, const char *name)
{
    result_t r = {0};
    assert_int_equal(f->store->ops->find(f->store, name, "rot-1", on_version, &r, 0, NULL), 0);
    wait_for(f, &r);
    return r;
}

static result_t try_write_current(fixture_t *f, const char *name, const char *value)
{
    result_t r = {0};
    rotor_secret_t *v = secret_from(value, strlen(value));
    assert_int_equal(f->store->ops->write_current(f->store, name, v, on_done, &r, 0, NULL), 0);
    secret_free(v);
    wait_for(f, &r);
    return r;
}

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

/* store_open (start-up) refuses what the requests refuse, in the same words. */
static void expect_open_refused(fixture_t *f, const char *want)
{
    store_t *s = NULL;
    char err[512] = "";
    assert_int_equal(store_open(&f->loop, &f->cfg, NULL, &s, err, sizeof err), ROTOR_ESTORE);
    assert_null(s);
    assert_non_null(strstr(err, "store.dir "));
    assert_non_null(strstr(err, f->dir));
    if (!strstr(err, want))
        fail_msg("error \"%s\" does not say \"%s\"", err, want);
    assert_int_equal(store_file_check(f->dir, err, sizeof err), ROTOR_ESTORE);
}

/* A store.dir that does not exist (a mistyped path) is refused at start-up and by every
 * request, and never created: a store rotor made empty would be rotated into as if it were the
 * one production reads (issue 8, item 9). */
static void test_missing_dir_refused(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(rmdir(f->dir), 0);
    expect_open_refused(f, "the directory does not exist (rotor does not create it");
    result_t r = try_put(f, "pg-green", "s3cret");
    expect_refused(&r, "the directory does not exist");
    r = try_write_current(f, "current", "{}");
    expect_refused(&r, "the directory does not exist");
    r = try_get(f, "pg-blue");
    expect_refused(&r, "the directory does not exist");
    assert_false(exists(f->dir, "."));
    /* A directory rotor cannot write in is refused at start-up too. */
    assert_int_equal(mkdir(f->dir, 0500), 0);
    expect_open_refused(f, "mode 0500: rotor cannot write to it");
    assert_int_equal(chmod(f->dir, 0700), 0);
}

/* A store.dir on a read-only mount passes the mode bits but no write can succeed there: refused
 * at start-up (and by `rotor check`), naming store.dir. The mount is made in a child, in a mount
 * namespace of its own (root or CAP_SYS_ADMIN needed: skipped without). */
static void test_read_only_mount_refused(void **state)
{
    fixture_t *f = *state;
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pipefd[0]);
        if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
            mount("tmpfs", f->dir, "tmpfs", MS_RDONLY, "mode=0700") != 0)
            _exit(77);
        char err[512] = "";
        int rc = store_file_check(f->dir, err, sizeof err);
        ssize_t n = write(pipefd[1], err, strlen(err));
        _exit(rc == ROTOR_ESTORE && n >= 0 ? 0 : 1);
    }
    close(pipefd[1]);
    char err[512] = "";
    size_t len = 0;
    ssize_t n;
    while (len < sizeof err - 1 && (n = read(pipefd[0], err + len, sizeof err - 1 - len)) > 0)
        len += (size_t)n;
    close(pipefd[0]);
    int ws = 0;
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFEXITED(ws));
    if (WEXITSTATUS(ws) == 77)
        skip(); /* no mount namespace here (not root) */
    if (WEXITSTATUS(ws) != 0)
        fail_msg("store_file_check accepted a read-only mount (\"%s\")", err);
    assert_non_null(strstr(err, "store.dir "));
    assert_non_null(strstr(err, f->dir));
    if (!strstr(err, "the file system is read-only"))
        fail_msg("error \"%s\" does not say the file system is read-only", err);
    /* the mount was the child's only: the directory is writable again here */
    char ok[512] = "";
    assert_int_equal(store_file_check(f->dir, ok, sizeof ok), 0);
}

static void test_group_writable_dir_refused(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(chmod(f->dir, 0770), 0);
    expect_open_refused(f, "mode 0770");
    result_t r = try_put(f, "pg-green", "s3cret");
    expect_refused(&r, "mode 0770: group or others may write to it");
    assert_false(exists(f->dir, "pg-green"));
    assert_false(exists(f->dir, ".versions"));
    r = try_get(f, "pg-green");
    expect_refused(&r, "mode 0770");
    /* Writable by others: refused too. */
    assert_int_equal(chmod(f->dir, 0703), 0);
    r = try_find(f, "pg-green");
    expect_refused(&r, "mode 0703");
    /* Readable by group and others only: accepted (each file is 0600). */
    assert_int_equal(chmod(f->dir, 0755), 0);
    char err[512] = "";
    assert_int_equal(store_file_check(f->dir, err, sizeof err), 0);
    put(f, "pg-green", "s3cret", "rot-1");
    assert_int_equal(mode_of(f->dir, "pg-green"), 0600);
}

static void test_dir_of_another_owner_refused(void **state)
{
    fixture_t *f = *state;
    if (geteuid() != 0)
        skip(); /* only root can give a directory away */
    assert_int_equal(chown(f->dir, 65534, 65534), 0);
    expect_open_refused(f, "owned by uid 65534, not by rotor's uid 0");
    result_t r = try_put(f, "pg-green", "s3cret");
    expect_refused(&r, "owned by uid 65534");
    assert_false(exists(f->dir, "pg-green"));
    /* .versions below a good directory is held to the same rule. */
    assert_int_equal(chown(f->dir, 0, 0), 0);
    char path[128];
    snprintf(path, sizeof path, "%s/.versions", f->dir);
    assert_int_equal(mkdir(path, 0700), 0);
    assert_int_equal(chown(path, 65534, 65534), 0);
    r = try_put(f, "pg-green", "s3cret");
    expect_refused(&r, ".versions is owned by uid 65534");
    assert_false(exists(f->dir, "pg-green"));
}

static void test_symlinked_entry_refused(void **state)
{
    fixture_t *f = *state;
    /* A file outside the store, standing in for /etc/passwd. */
    char outside[128], link[128];
    snprintf(outside, sizeof outside, "%.*s/outside", (int)strlen(f->dir) - 3, f->dir);
    write_file(outside, "not-a-secret\n");
    snprintf(link, sizeof link, "%s/pg-green", f->dir);
    assert_int_equal(symlink(outside, link), 0);

    result_t r = try_get(f, "pg-green");
    expect_refused(&r, "pg-green is a symbolic link (refused, not followed)");
    r = (result_t){0};
    assert_int_equal(f->store->ops->current(f->store, "pg-green", on_version, &r, 0, NULL), 0);
    wait_for(f, &r);
    expect_refused(&r, "pg-green is a symbolic link");
    r = try_write_current(f, "pg-green", "replaced");
    expect_refused(&r, "pg-green is a symbolic link");
    r = try_put(f, "pg-green", "replaced");
    expect_refused(&r, "pg-green is a symbolic link");
    /* Neither followed nor replaced. */
    char *text = slurp(f->dir, "../outside");
    assert_string_equal(text, "not-a-secret\n");
    free(text);
    struct stat st;
    assert_int_equal(lstat(link, &st), 0);
    assert_true(S_ISLNK(st.st_mode));

    /* A version file that is a link is refused as well. */
    result_t v = put(f, "pg-blue", "blue-value", "rot-1");
    char vpath[256];
    snprintf(vpath, sizeof vpath, "%s/.versions/pg-blue/%s.json", f->dir, v.version);
    assert_int_equal(unlink(vpath), 0);
    assert_int_equal(symlink(outside, vpath), 0);
    r = (result_t){0};
    assert_int_equal(f->store->ops->get(f->store, "pg-blue", v.version, on_value, &r, 0, NULL), 0);
    wait_for(f, &r);
    expect_refused(&r, "is a symbolic link");
    assert_null(r.value);
}

static void test_symlinked_versions_refused(void **state)
{
    fixture_t *f = *state;
    char elsewhere[128], link[128];
    snprintf(elsewhere, sizeof elsewhere, "%.*s/elsewhere", (int)strlen(f->dir) - 3, f->dir);
    assert_int_equal(mkdir(elsewhere, 0700), 0);
    snprintf(link, sizeof link, "%s/.versions", f->dir);
    assert_int_equal(symlink(elsewhere, link), 0);
    result_t r = try_put(f, "pg-green", "s3cret");
    expect_refused(&r, ".versions is a symbolic link (refused, not followed)");
    r = try_find(f, "pg-green");
    expect_refused(&r, ".versions is a symbolic link");
    assert_false(exists(f->dir, "pg-green"));
    assert_false(exists(elsewhere, "pg-green"));

    /* .versions/<name> as a link. */
    assert_int_equal(unlink(link), 0);
    assert_int_equal(mkdir(link, 0700), 0);
    snprintf(link, sizeof link, "%s/.versions/pg-green", f->dir);
    assert_int_equal(symlink(elsewhere, link), 0);
    r = try_put(f, "pg-green", "s3cret");
    expect_refused(&r, ".versions/pg-green is a symbolic link");
    r = try_find(f, "pg-green");
    expect_refused(&r, ".versions/pg-green is a symbolic link");
    DIR *d = opendir(elsewhere);
    int entries = 0;
    for (struct dirent *e; (e = readdir(d));)
        entries += e->d_name[0] != '.';
    closedir(d);
    assert_int_equal(entries, 0);
}

static void test_symlinked_store_dir_refused(void **state)
{
    fixture_t *f = *state;
    char real[128];
    snprintf(real, sizeof real, "%.*s/real", (int)strlen(f->dir) - 3, f->dir);
    assert_int_equal(rmdir(f->dir), 0);
    assert_int_equal(mkdir(real, 0700), 0);
    assert_int_equal(symlink(real, f->dir), 0);
    expect_open_refused(f, "the directory is a symbolic link (refused, not followed)");
    result_t r = try_put(f, "pg-green", "s3cret");
    expect_refused(&r, "the directory is a symbolic link");
    r = try_get(f, "pg-green");
    expect_refused(&r, "the directory is a symbolic link");
    assert_false(exists(real, "pg-green"));
    /* With a trailing slash, which would make the kernel follow the link: refused as well. */
    char slashed[128];
    snprintf(slashed, sizeof slashed, "%s/", f->dir);
    f->cfg.store.dir = slashed;
    char err[512] = "";
    assert_int_equal(store_file_check(slashed, err, sizeof err), ROTOR_ESTORE);
    r = try_put(f, "pg-green", "s3cret");
    expect_refused(&r, "is a symbolic link");
    f->cfg.store.dir = f->dir;
    assert_false(exists(real, "pg-green"));
}

/* A canceled request calls back exactly once, with ROTOR_ECANCELED, whether its work was still
 * queued (uv_cancel) or already running (its result is dropped); never from within the call. A
 * request whose deadline passed before its work began does nothing. */
static void test_cancel_and_deadline(void **state)
{
    fixture_t *f = *state;
    result_t r = {0};
    store_req_t *req = NULL;
    rotor_secret_t *v = secret_from("canceled", 8);
    store_tags_t tags = {.rotation_id = "rot-c", .slot = "green", .role = "app_green"};
    assert_int_equal(f->store->ops->put(f->store, "pg-green", v, &tags, 0, on_version, &r, 0, &req),
                     0);
    secret_free(v);
    assert_non_null(req);
    f->store->ops->cancel(f->store, req);
    assert_int_equal(r.calls, 0);
    wait_for(f, &r);
    assert_int_equal(r.status, ROTOR_ECANCELED);
    assert_string_equal(r.version, "");

    result_t g = {0};
    assert_int_equal(f->store->ops->get(f->store, "pg-green", NULL, on_value, &g, 0, &req), 0);
    f->store->ops->cancel(f->store, req);
    wait_for(f, &g);
    assert_int_equal(g.status, ROTOR_ECANCELED);
    assert_null(g.value);

    result_t late = {0};
    v = secret_from("late", 4);
    tags.rotation_id = "rot-late";
    assert_int_equal(f->store->ops->put(f->store, "pg-green", v, &tags, 0, on_version, &late,
                                        util_now_ms() - 1, NULL),
                     0);
    secret_free(v);
    wait_for(f, &late);
    assert_int_equal(late.status, ROTOR_ETIMEOUT);
    assert_non_null(strstr(late.reason, "gave up: the attempt's deadline"));
    result_t none = find(f, "pg-green", "rot-late");
    assert_string_equal(none.version, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_put_writes_mount_and_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_and_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_find_and_versions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disable_current_removes_mount, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_current, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handmade_mount_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_find_finishes_interrupted_put, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_open_kinds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_dir_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_only_mount_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_writable_dir_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dir_of_another_owner_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_symlinked_entry_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_symlinked_versions_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_symlinked_store_dir_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
