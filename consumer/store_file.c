/* store_file.c: the embedded secret store, a directory laid out like a Key Vault CSI mount. */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "rotor.h"
#include "util.h"

/*
 * Layout under cfg->store.dir:
 *   <name>                               the current value, exactly the bytes a pod would mount
 *   .versions/<name>/<32 hex>.json       every version: value, created, exp, enabled, tags
 * Every file is written to a temporary file in the same directory, fsync'ed, renamed over the
 * target and the directory fsync'ed, so a crash leaves either the old or the new file, never a
 * torn one. All of it runs on the libuv threadpool; the loop thread only queues and reports.
 */

#define SF_ID_LEN 32
#define SF_MAX_FILE (1024 * 1024)
#define SF_MAX_NAME 127 /* Key Vault's own limit on secret names */

typedef enum { SF_FIND, SF_PUT, SF_GET, SF_CURRENT, SF_DISABLE, SF_WRITE_CURRENT } sf_op_t;

typedef struct {
    uv_work_t work;
    sf_op_t op;
    const char *dir; /* borrowed from the config, which outlives the store */
    int root, vdir;  /* store.dir and .versions/<name> while the work runs, or -1 */
    char name[SF_MAX_NAME + 1];
    char version[SF_ID_LEN + 1]; /* in: get, disable ("" = none) */
    char *rotation_id, *slot, *role;
    int64_t exp_ms;
    rotor_secret_t *value; /* in: put, write_current (a copy); out: get */
    int status;
    char out_version[SF_ID_LEN + 1]; /* "" = none */
    char reason[320];
    union {
        store_version_cb version;
        store_value_cb value;
        store_done_cb done;
    } cb;
    void *arg;
    int64_t deadline_ms; /* 0 = none */
    /* Canceled (ops->cancel): the callback reports ROTOR_ECANCELED whatever the work did.
     * Written on the loop thread and read there only (sf_after). */
    bool canceled;
} sf_req_t;

/* A version file, parsed. */
typedef struct {
    char id[SF_ID_LEN + 1];
    rotor_secret_t *value;
    int64_t created;
    bool enabled;
    char *rotation;
} sf_version_t;

static int sf_fail(sf_req_t *r, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->reason, sizeof r->reason, fmt, ap);
    va_end(ap);
    r->status = status;
    return status;
}

static bool sf_name_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    return n > 0 && n <= SF_MAX_NAME && name[0] != '.' && !strchr(name, '/');
}

static bool sf_id_valid(const char *id)
{
    if (!id || strlen(id) != SF_ID_LEN)
        return false;
    return strspn(id, "0123456789abcdef") == SF_ID_LEN;
}

static int sf_path(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static int sf_random_hex(char *out, size_t nbytes)
{
    unsigned char b[32];
    if (nbytes > sizeof b || getrandom(b, nbytes, 0) != (ssize_t)nbytes)
        return -EIO;
    for (size_t i = 0; i < nbytes; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    return 0;
}

/* ---- file primitives (threadpool only) ----
 *
 * The store directory is opened once per request with O_NOFOLLOW and checked (owned by rotor's
 * effective uid, writable by nobody else); everything below it is reached with the *at() calls
 * from that descriptor, never by path, and no open follows a symbolic link. Someone who could
 * plant <dir>/pg-green -> /etc/passwd, or swap .versions for a link to their own directory, would
 * otherwise read or redirect secret values. */

/* How an entry that cannot be used is described in a reason: a link is refused by name. */
static const char *sf_strerror(int rc)
{
    switch (rc) {
    case -ELOOP:
        return "is a symbolic link (refused, not followed)";
    case -EINVAL:
        return "is not a regular file";
    case -ENOTDIR:
        return "is not a directory";
    default:
        return strerror(-rc);
    }
}

/* A directory of the store must be rotor's alone: another owner, or group or others with write
 * permission, could replace what rotor writes or plant links in it. */
static int sf_check_dir(int fd, const char *dir, const char *what, char *err, size_t errlen)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        snprintf(err, errlen, "store.dir %s: %s: %s", dir, what, strerror(errno));
        return ROTOR_ESTORE;
    }
    if (st.st_uid != geteuid()) {
        snprintf(err, errlen,
                 "store.dir %s: %s is owned by uid %u, not by rotor's uid %u (refused: it must "
                 "be rotor's own, mode 0700)",
                 dir, what, (unsigned)st.st_uid, (unsigned)geteuid());
        return ROTOR_ESTORE;
    }
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        snprintf(err, errlen,
                 "store.dir %s: %s has mode %04o: group or others may write to it (refused: "
                 "want 0700)",
                 dir, what, (unsigned)(st.st_mode & 07777));
        return ROTOR_ESTORE;
    }
    return 0;
}

/* Opens parent/name as a directory of the store, without following a link, creating it 0700 if
 * create is set, and checks it. Returns 0 and *out, -ENOENT when it does not exist and create is
 * not set (no reason set), or ROTOR_ESTORE with err set. what names it in messages. */
static int sf_open_dir_at(int parent, const char *name, bool create, const char *dir,
                          const char *what, int *out, char *err, size_t errlen)
{
    *out = -1;
    if (create && mkdirat(parent, name, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "store.dir %s: cannot create %s: %s", dir, what, strerror(errno));
        return ROTOR_ESTORE;
    }
    int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        struct stat st;
        if (e == ENOENT && !create)
            return -ENOENT;
        if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
            e = S_ISLNK(st.st_mode) ? ELOOP : !S_ISDIR(st.st_mode) ? ENOTDIR : e;
        snprintf(err, errlen, "store.dir %s: %s %s", dir, what, sf_strerror(-e));
        return ROTOR_ESTORE;
    }
    int rc = sf_check_dir(fd, dir, what, err, errlen);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    *out = fd;
    return 0;
}

/* Opens the store directory itself (see sf_open_dir_at), which must exist: rotor never creates
 * it. A store.dir that is not there is a mistyped path or a store that was never seeded with the
 * active slot's password, and a store created empty would be rotated into as if it were the real
 * one (issue 8, item 9). A trailing slash would make the kernel follow a link in the last
 * component, so it is dropped; links in the parents are the operator's layout and are followed.
 * Returns 0 and *out, or ROTOR_ESTORE with err set. */
static int sf_open_root(const char *dir, int *out, char *err, size_t errlen)
{
    char path[PATH_MAX];
    if (sf_path(path, sizeof path, "%s", dir) < 0) {
        snprintf(err, errlen, "store.dir %s: %s", dir, strerror(ENAMETOOLONG));
        return ROTOR_ESTORE;
    }
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        path[--n] = '\0';
    int rc = sf_open_dir_at(AT_FDCWD, path, false, dir, "the directory", out, err, errlen);
    if (rc == -ENOENT) {
        snprintf(err, errlen,
                 "store.dir %s: the directory does not exist (rotor does not create it: create it "
                 "with mode 0700 and put the active slot's password in it)",
                 dir);
        return ROTOR_ESTORE;
    }
    return rc;
}

/* r->vdir, .versions/<name>, opened on first use. Returns 0, -ENOENT (absent and not created),
 * or ROTOR_ESTORE with a reason. */
static int sf_vdir(sf_req_t *r, bool create)
{
    if (r->vdir >= 0)
        return 0;
    if (r->root < 0)
        return -ENOENT;
    char what[SF_MAX_NAME + 16];
    int versions = -1;
    int rc = sf_open_dir_at(r->root, ".versions", create, r->dir, ".versions", &versions, r->reason,
                            sizeof r->reason);
    if (rc == 0) {
        snprintf(what, sizeof what, ".versions/%s", r->name);
        rc = sf_open_dir_at(versions, r->name, create, r->dir, what, &r->vdir, r->reason,
                            sizeof r->reason);
        close(versions);
    }
    if (rc == ROTOR_ESTORE)
        r->status = rc;
    return rc;
}

static int sf_write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Replaces dirfd/file with data, atomically and durably, mode 0600. label is the directory
 * below store.dir ("" or ".versions/<name>/"), for messages. An entry that is not a regular file
 * (a planted link) is refused rather than silently replaced. */
static int sf_check_entry(sf_req_t *r, int dirfd, const char *label, const char *file)
{
    struct stat st;
    if (fstatat(dirfd, file, &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISREG(st.st_mode))
        return sf_fail(r, ROTOR_ESTORE, "store.dir %s: %s%s %s", r->dir, label, file,
                       sf_strerror(S_ISLNK(st.st_mode) ? -ELOOP : -EINVAL));
    return 0;
}

static int sf_atomic_write(sf_req_t *r, int dirfd, const char *label, const char *file,
                           const char *data, size_t len)
{
    char tmp[32], suffix[17];
    if (sf_check_entry(r, dirfd, label, file) < 0)
        return r->status;
    int rc = sf_random_hex(suffix, 8);
    if (rc < 0)
        return sf_fail(r, ROTOR_ESTORE, "store.dir %s: %s%s: %s", r->dir, label, file,
                       strerror(-rc));
    snprintf(tmp, sizeof tmp, ".tmp-%s", suffix);
    int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return sf_fail(r, ROTOR_ESTORE, "store.dir %s: create %s%s: %s", r->dir, label, tmp,
                       strerror(errno));
    rc = sf_write_all(fd, data, len);
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && renameat(dirfd, tmp, dirfd, file) < 0)
        rc = -errno;
    if (rc < 0) {
        unlinkat(dirfd, tmp, 0);
        return sf_fail(r, ROTOR_ESTORE, "store.dir %s: write %s%s: %s", r->dir, label, file,
                       strerror(-rc));
    }
    if (fsync(dirfd) < 0)
        return sf_fail(r, ROTOR_ESTORE, "store.dir %s: fsync %s: %s", r->dir, *label ? label : ".",
                       strerror(errno));
    return 0;
}

/* Reads dirfd/name, a regular file of at most SF_MAX_FILE bytes, into a secret (it may hold
 * one), never following a link. Returns 0, -ENOENT (also when dirfd < 0: no directory), -ELOOP
 * for a link, or another negative errno. *out is owned by the caller. */
static int sf_read_file(int dirfd, const char *name, rotor_secret_t **out)
{
    if (dirfd < 0)
        return -ENOENT;
    /* O_NONBLOCK: a FIFO planted in place of a file must not hang a threadpool thread. */
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    int bad = fstat(fd, &st) < 0         ? -errno
              : !S_ISREG(st.st_mode)     ? -EINVAL
              : st.st_size > SF_MAX_FILE ? -EFBIG
                                         : 0;
    if (bad < 0) {
        close(fd);
        return bad;
    }
    size_t cap = (size_t)st.st_size, len = 0;
    char *buf = util_malloc(cap + 1);
    int rc = 0;
    while (len < cap) {
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = n < 0 ? -errno : 0;
            break;
        }
        len += (size_t)n;
    }
    close(fd);
    if (rc == 0) {
        *out = secret_from(buf, len);
        rc = *out ? 0 : -EFBIG;
    }
    secret_wipe(buf, cap + 1);
    free(buf);
    return rc;
}

/* The mount file. An operator's `echo value > file` adds one newline that is not part of the
 * value; a generated password never ends with one, so it is dropped. */
static int sf_read_mount(sf_req_t *r, rotor_secret_t **out)
{
    int rc = sf_read_file(r->root, r->name, out);
    if (rc == -ENOENT)
        return sf_fail(r, ROTOR_ENOTFOUND, "secret %s has no current value", r->name);
    if (rc < 0)
        return sf_fail(r, ROTOR_ESTORE, "store.dir %s: %s %s", r->dir, r->name, sf_strerror(rc));
    rotor_secret_t *v = *out;
    if (v->len > 0 && v->buf[v->len - 1] == '\n') {
        v->buf[--v->len] = '\0';
        if (v->len > 0 && v->buf[v->len - 1] == '\r')
            v->buf[--v->len] = '\0';
    }
    return 0;
}

/* ---- version files ---- */

static void sf_version_clear(sf_version_t *v)
{
    secret_free(v->value);
    free(v->rotation);
    memset(v, 0, sizeof *v);
}

/* A growable buffer that wipes what it leaves behind, for JSON that carries a value. */
typedef struct {
    char *p;
    size_t len, cap;
} sf_buf_t;

static int sf_buf_append(const char *data, size_t n, void *ctx)
{
    sf_buf_t *b = ctx;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap : 256);
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = util_malloc(cap);
        if (b->p) {
            memcpy(p, b->p, b->len);
            secret_wipe(b->p, b->cap);
            free(b->p);
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static void sf_buf_free(sf_buf_t *b)
{
    secret_wipe(b->p, b->cap);
    free(b->p);
}

/* jansson frees its strings without wiping them; wipe the value's copy in place first. */
static void sf_json_wipe_value(json_t *o)
{
    json_t *v = json_object_get(o, "value");
    if (json_is_string(v))
        secret_wipe((char *)json_string_value(v), json_string_length(v));
}

static json_t *sf_tags_json(const sf_req_t *r)
{
    json_t *tags = json_object();
    if (r->rotation_id)
        json_object_set_new(tags, "rotation", json_string(r->rotation_id));
    if (r->slot)
        json_object_set_new(tags, "slot", json_string(r->slot));
    if (r->role)
        json_object_set_new(tags, "role", json_string(r->role));
    json_object_set_new(tags, "managed-by", json_string("rotor"));
    return tags;
}

/* Serialises a version into out (wiped and freed by the caller with sf_buf_free). */
static int sf_version_json(sf_req_t *r, const char *id, const rotor_secret_t *value,
                           int64_t created, int64_t exp, bool enabled, json_t *tags, sf_buf_t *out)
{
    json_t *v = json_stringn(value->buf, value->len);
    if (!v) {
        json_decref(tags);
        return sf_fail(r, ROTOR_EINVALID, "value of %s is not valid UTF-8", r->name);
    }
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "value", v);
    json_object_set_new(o, "created", json_integer(created));
    json_object_set_new(o, "exp", json_integer(exp));
    json_object_set_new(o, "enabled", json_boolean(enabled));
    json_object_set_new(o, "tags", tags);
    int rc = json_dump_callback(o, sf_buf_append, out, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    sf_json_wipe_value(o);
    json_decref(o);
    if (rc < 0)
        return sf_fail(r, ROTOR_ESTORE, "cannot serialise version of %s", r->name);
    sf_buf_append("\n", 1, out);
    return 0;
}

/* Loads .versions/<name>/<id>.json into *v, and its raw JSON into *doc (NULL to skip; caller
 * decrefs). Returns 0, -ENOENT, or ROTOR_ESTORE with a reason. */
static int sf_version_load(sf_req_t *r, const char *id, sf_version_t *v, json_t **doc)
{
    char file[SF_ID_LEN + 6];
    snprintf(file, sizeof file, "%s.json", id);
    int rc = sf_vdir(r, false);
    if (rc == ROTOR_ESTORE)
        return rc;
    rotor_secret_t *raw = NULL;
    if (rc == 0)
        rc = sf_read_file(r->vdir, file, &raw);
    if (rc == -ENOENT)
        return rc;
    if (rc < 0)
        return sf_fail(r, ROTOR_ESTORE, "store.dir %s: version %s of %s %s", r->dir, id, r->name,
                       sf_strerror(rc));
    json_error_t err;
    json_t *o = json_loadb(raw->buf, raw->len, 0, &err);
    secret_free(raw);
    json_t *value = json_object_get(o, "value");
    json_t *rot = json_object_get(json_object_get(o, "tags"), "rotation");
    if (!json_is_string(value) || !json_is_boolean(json_object_get(o, "enabled"))) {
        sf_json_wipe_value(o);
        json_decref(o);
        return sf_fail(r, ROTOR_ESTORE, "version %s of %s: malformed file", id, r->name);
    }
    memset(v, 0, sizeof *v);
    util_strlcpy(v->id, id, sizeof v->id);
    v->value = secret_from(json_string_value(value), json_string_length(value));
    v->created = json_integer_value(json_object_get(o, "created"));
    v->enabled = json_is_true(json_object_get(o, "enabled"));
    v->rotation = util_strdup(json_string_value(rot));
    if (doc) {
        *doc = o;
        return 0;
    }
    sf_json_wipe_value(o);
    json_decref(o);
    return 0;
}

static bool sf_secret_equal(const rotor_secret_t *a, const rotor_secret_t *b)
{
    if (!a || !b || a->len != b->len)
        return false;
    /* Constant time: the mount file's content is a secret too. */
    unsigned char diff = 0;
    for (size_t i = 0; i < a->len; i++)
        diff |= (unsigned char)(a->buf[i] ^ b->buf[i]);
    return diff == 0;
}

typedef bool (*sf_match_fn)(const sf_req_t *r, const sf_version_t *v, const void *ctx);

/* Sets r->out_version to the newest enabled version that `match` accepts ("" if none). */
static int sf_scan(sf_req_t *r, sf_match_fn match, const void *ctx)
{
    r->out_version[0] = '\0';
    int rc = sf_vdir(r, false);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0)
        return rc;
    /* A descriptor of its own: a second scan must start from the beginning again. */
    int fd = openat(r->vdir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd < 0 ? NULL : fdopendir(fd);
    if (!d) {
        if (fd >= 0)
            close(fd);
        return sf_fail(r, ROTOR_ESTORE, "store.dir %s: open .versions/%s: %s", r->dir, r->name,
                       strerror(errno));
    }
    int64_t best = INT64_MIN;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d))) {
        char id[SF_ID_LEN + 1];
        if (strlen(e->d_name) != SF_ID_LEN + 5 || strcmp(e->d_name + SF_ID_LEN, ".json") != 0)
            continue;
        util_strlcpy(id, e->d_name, sizeof id);
        sf_version_t v;
        if (!sf_id_valid(id) || sf_version_load(r, id, &v, NULL) == -ENOENT)
            continue;
        if (r->status < 0) {
            rc = r->status;
            break;
        }
        bool newer = v.created > best || (v.created == best && strcmp(id, r->out_version) > 0);
        if (v.enabled && match(r, &v, ctx) && newer) {
            best = v.created;
            util_strlcpy(r->out_version, id, sizeof r->out_version);
        }
        sf_version_clear(&v);
    }
    closedir(d);
    return rc;
}

static bool sf_match_rotation(const sf_req_t *r, const sf_version_t *v, const void *ctx)
{
    (void)ctx;
    return v->rotation && strcmp(v->rotation, r->rotation_id) == 0;
}

static bool sf_match_value(const sf_req_t *r, const sf_version_t *v, const void *ctx)
{
    (void)r;
    return sf_secret_equal(v->value, ctx);
}

/* ---- operations (threadpool) ---- */

static bool sf_match_any(const sf_req_t *r, const sf_version_t *v, const void *ctx)
{
    (void)r;
    (void)v;
    (void)ctx;
    return true;
}

/* put writes the version, then the mount file: a crash in between leaves the newest version
 * without its mount file. find finishes such a put, so that a version reused by a resumed
 * rotation is current exactly as a new one would be. */
static void sf_finish_put(sf_req_t *r, const char *id)
{
    sf_version_t v;
    rotor_secret_t *mount = NULL;
    if (sf_version_load(r, id, &v, NULL) < 0)
        return;
    int rc = sf_read_mount(r, &mount);
    if (rc == ROTOR_ENOTFOUND) {
        r->status = 0;
        r->reason[0] = '\0';
    }
    if ((rc == 0 || rc == ROTOR_ENOTFOUND) && (!mount || !sf_secret_equal(mount, v.value)))
        sf_atomic_write(r, r->root, "", r->name, v.value->buf, v.value->len);
    secret_free(mount);
    sf_version_clear(&v);
}

static void sf_do_find(sf_req_t *r)
{
    if (sf_scan(r, sf_match_rotation, NULL) < 0 || !r->out_version[0])
        return;
    char found[SF_ID_LEN + 1];
    util_strlcpy(found, r->out_version, sizeof found);
    if (sf_scan(r, sf_match_any, NULL) == 0 && strcmp(r->out_version, found) == 0)
        sf_finish_put(r, found);
    util_strlcpy(r->out_version, found, sizeof r->out_version);
}

static void sf_do_current(sf_req_t *r)
{
    rotor_secret_t *mount = NULL;
    int rc = sf_read_mount(r, &mount);
    if (rc == ROTOR_ENOTFOUND) {
        r->status = 0; /* no current value: no current version, not an error */
        r->reason[0] = '\0';
        return;
    }
    if (rc == 0)
        sf_scan(r, sf_match_value, mount);
    secret_free(mount);
}

static void sf_do_put(sf_req_t *r)
{
    char id[SF_ID_LEN + 1], file[SF_ID_LEN + 6], label[SF_MAX_NAME + 16];
    /* A mount file that cannot be replaced is refused before a version is written for it. */
    if (sf_check_entry(r, r->root, "", r->name) < 0 || sf_vdir(r, true) < 0)
        return;
    int rc = sf_random_hex(id, SF_ID_LEN / 2);
    if (rc < 0) {
        sf_fail(r, ROTOR_ESTORE, "store.dir %s: no random id: %s", r->dir, strerror(-rc));
        return;
    }
    snprintf(label, sizeof label, ".versions/%s/", r->name);
    sf_buf_t json = {0};
    rc = sf_version_json(r, id, r->value, util_now_ms(), r->exp_ms, true, sf_tags_json(r), &json);
    snprintf(file, sizeof file, "%s.json", id);
    if (rc == 0)
        rc = sf_atomic_write(r, r->vdir, label, file, json.p, json.len);
    sf_buf_free(&json);
    /* The version first, then the mount: a crash in between leaves a findable version and the
     * old current value, never a current value without its record. */
    if (rc == 0)
        rc = sf_atomic_write(r, r->root, "", r->name, r->value->buf, r->value->len);
    if (rc == 0)
        util_strlcpy(r->out_version, id, sizeof r->out_version);
}

static void sf_do_get(sf_req_t *r)
{
    if (!r->version[0]) {
        rotor_secret_t *mount = NULL;
        if (sf_read_mount(r, &mount) < 0)
            return;
        if (sf_scan(r, sf_match_value, mount) < 0) {
            secret_free(mount);
            return;
        }
        r->value = mount;
        return;
    }
    sf_version_t v;
    int rc = sf_version_load(r, r->version, &v, NULL);
    if (rc == -ENOENT || (rc == 0 && !v.enabled))
        sf_fail(r, ROTOR_ENOTFOUND, "version %s of %s %s", r->version, r->name,
                rc == 0 ? "is disabled" : "does not exist");
    if (rc == 0 && v.enabled) {
        r->value = v.value;
        v.value = NULL;
        util_strlcpy(r->out_version, v.id, sizeof r->out_version);
    }
    if (rc == 0)
        sf_version_clear(&v);
}

/* Rewrites a version file with enabled = false, keeping every other field as it was. */
static int sf_mark_disabled(sf_req_t *r, json_t *doc)
{
    char file[SF_ID_LEN + 6], label[SF_MAX_NAME + 16];
    snprintf(label, sizeof label, ".versions/%s/", r->name);
    snprintf(file, sizeof file, "%s.json", r->version);
    json_object_set_new(doc, "enabled", json_false());
    sf_buf_t json = {0};
    int rc = json_dump_callback(doc, sf_buf_append, &json, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (rc < 0)
        rc = sf_fail(r, ROTOR_ESTORE, "cannot serialise version %s of %s", r->version, r->name);
    if (rc == 0) {
        sf_buf_append("\n", 1, &json);
        rc = sf_atomic_write(r, r->vdir, label, file, json.p, json.len);
    }
    sf_buf_free(&json);
    return rc;
}

static void sf_do_disable(sf_req_t *r)
{
    sf_version_t v;
    json_t *doc = NULL;
    int rc = sf_version_load(r, r->version, &v, &doc);
    if (rc == -ENOENT || rc < 0)
        return; /* unknown: nothing to disable (an error has set r->status) */
    if (v.enabled)
        rc = sf_mark_disabled(r, doc);
    sf_json_wipe_value(doc);
    json_decref(doc);

    rotor_secret_t *mount = NULL;
    if (rc == 0 && sf_read_mount(r, &mount) == 0 && sf_secret_equal(mount, v.value)) {
        if (unlinkat(r->root, r->name, 0) < 0 && errno != ENOENT)
            sf_fail(r, ROTOR_ESTORE, "store.dir %s: remove %s: %s", r->dir, r->name,
                    strerror(errno));
        else
            fsync(r->root);
    } else if (r->status == ROTOR_ENOTFOUND) {
        r->status = 0; /* no mount file: nothing to remove */
        r->reason[0] = '\0';
    }
    secret_free(mount);
    sf_version_clear(&v);
}

static void sf_do_write_current(sf_req_t *r)
{
    sf_atomic_write(r, r->root, "", r->name, r->value->buf, r->value->len);
}

static void sf_work(uv_work_t *w)
{
    sf_req_t *r = w->data;
    r->vdir = -1;
    r->root = -1;
    if (r->deadline_ms && util_now_ms() >= r->deadline_ms) {
        sf_fail(r, ROTOR_ETIMEOUT, "gave up: the attempt's deadline passed before the work began");
        return;
    }
    int rc = sf_open_root(r->dir, &r->root, r->reason, sizeof r->reason);
    if (rc < 0) {
        r->status = rc;
        return;
    }
    switch (r->op) {
    case SF_FIND:
        sf_do_find(r);
        break;
    case SF_PUT:
        sf_do_put(r);
        break;
    case SF_GET:
        sf_do_get(r);
        break;
    case SF_CURRENT:
        sf_do_current(r);
        break;
    case SF_DISABLE:
        sf_do_disable(r);
        break;
    case SF_WRITE_CURRENT:
        sf_do_write_current(r);
        break;
    }
    if (r->vdir >= 0)
        close(r->vdir);
    if (r->root >= 0)
        close(r->root);
    r->vdir = r->root = -1;
}

/* ---- loop side ---- */

static void sf_req_free(sf_req_t *r)
{
    secret_free(r->value);
    free(r->rotation_id);
    free(r->slot);
    free(r->role);
    free(r);
}

static void sf_after(uv_work_t *w, int uvstatus)
{
    sf_req_t *r = w->data;
    if (uvstatus == UV_ECANCELED || r->canceled) {
        /* A canceled request's result is dropped even if its work ran (it takes milliseconds
         * and cannot be stopped midway): the caller has stopped waiting for it. */
        secret_free(r->value);
        r->value = NULL;
        r->out_version[0] = '\0';
        sf_fail(r, ROTOR_ECANCELED, "canceled");
    }
    const char *reason = r->status < 0 ? r->reason : NULL;
    const char *version = r->status == 0 && r->out_version[0] ? r->out_version : NULL;
    switch (r->op) {
    case SF_FIND:
    case SF_PUT:
    case SF_CURRENT:
        r->cb.version(r->arg, r->status, version, reason);
        break;
    case SF_GET: {
        rotor_secret_t *value = r->status == 0 ? r->value : NULL;
        if (value)
            r->value = NULL; /* ownership moves to the callback */
        r->cb.value(r->arg, r->status, value, version, reason);
        break;
    }
    case SF_DISABLE:
    case SF_WRITE_CURRENT:
        r->cb.done(r->arg, r->status, reason);
        break;
    }
    sf_req_free(r);
}

static sf_req_t *sf_req_new(store_t *s, sf_op_t op, const char *name, void *arg,
                            int64_t deadline_ms)
{
    sf_req_t *r = util_calloc(1, sizeof *r);
    r->work.data = r;
    r->op = op;
    r->dir = s->cfg->store.dir;
    util_strlcpy(r->name, name, sizeof r->name);
    r->arg = arg;
    r->deadline_ms = deadline_ms;
    return r;
}

static int sf_submit(store_t *s, sf_req_t *r, store_req_t **out)
{
    int rc = uv_queue_work(s->loop, &r->work, sf_work, sf_after);
    if (rc < 0) {
        sf_req_free(r);
        return rc;
    }
    if (out)
        *out = (store_req_t *)r;
    return 0;
}

/* Off the queue if the work has not started (sf_after then runs with UV_ECANCELED); else the
 * work finishes and sf_after drops its result. */
static void sf_cancel(store_t *s, store_req_t *req)
{
    (void)s;
    sf_req_t *r = (sf_req_t *)req;
    r->canceled = true;
    (void)uv_cancel((uv_req_t *)&r->work);
}

static int sf_find(store_t *s, const char *name, const char *rotation_id, store_version_cb cb,
                   void *arg, int64_t deadline_ms, store_req_t **out)
{
    if (!sf_name_valid(name) || !rotation_id || !cb)
        return ROTOR_EINVALID;
    sf_req_t *r = sf_req_new(s, SF_FIND, name, arg, deadline_ms);
    r->rotation_id = util_strdup(rotation_id);
    r->cb.version = cb;
    return sf_submit(s, r, out);
}

static int sf_put(store_t *s, const char *name, const rotor_secret_t *value,
                  const store_tags_t *tags, int64_t exp_ms, store_version_cb cb, void *arg,
                  int64_t deadline_ms, store_req_t **out)
{
    if (!sf_name_valid(name) || !value || !cb)
        return ROTOR_EINVALID;
    sf_req_t *r = sf_req_new(s, SF_PUT, name, arg, deadline_ms);
    r->value = secret_from(value->buf, value->len);
    if (!r->value) {
        sf_req_free(r);
        return ROTOR_EINVALID;
    }
    if (tags) {
        r->rotation_id = util_strdup(tags->rotation_id);
        r->slot = util_strdup(tags->slot);
        r->role = util_strdup(tags->role);
    }
    r->exp_ms = exp_ms;
    r->cb.version = cb;
    return sf_submit(s, r, out);
}

static int sf_get(store_t *s, const char *name, const char *version, store_value_cb cb, void *arg,
                  int64_t deadline_ms, store_req_t **out)
{
    if (!sf_name_valid(name) || (version && !sf_id_valid(version)) || !cb)
        return ROTOR_EINVALID;
    sf_req_t *r = sf_req_new(s, SF_GET, name, arg, deadline_ms);
    if (version)
        util_strlcpy(r->version, version, sizeof r->version);
    r->cb.value = cb;
    return sf_submit(s, r, out);
}

static int sf_current(store_t *s, const char *name, store_version_cb cb, void *arg,
                      int64_t deadline_ms, store_req_t **out)
{
    if (!sf_name_valid(name) || !cb)
        return ROTOR_EINVALID;
    sf_req_t *r = sf_req_new(s, SF_CURRENT, name, arg, deadline_ms);
    r->cb.version = cb;
    return sf_submit(s, r, out);
}

static int sf_disable(store_t *s, const char *name, const char *version, store_done_cb cb,
                      void *arg, int64_t deadline_ms, store_req_t **out)
{
    if (!sf_name_valid(name) || !sf_id_valid(version) || !cb)
        return ROTOR_EINVALID;
    sf_req_t *r = sf_req_new(s, SF_DISABLE, name, arg, deadline_ms);
    util_strlcpy(r->version, version, sizeof r->version);
    r->cb.done = cb;
    return sf_submit(s, r, out);
}

static int sf_write_current(store_t *s, const char *name, const rotor_secret_t *value,
                            store_done_cb cb, void *arg, int64_t deadline_ms, store_req_t **out)
{
    if (!sf_name_valid(name) || !value || !cb)
        return ROTOR_EINVALID;
    sf_req_t *r = sf_req_new(s, SF_WRITE_CURRENT, name, arg, deadline_ms);
    r->value = secret_from(value->buf, value->len);
    if (!r->value) {
        sf_req_free(r);
        return ROTOR_EINVALID;
    }
    r->cb.done = cb;
    return sf_submit(s, r, out);
}

static void sf_close(store_t *s)
{
    free(s);
}

static const store_ops_t store_file_ops = {
    .find = sf_find,
    .put = sf_put,
    .get = sf_get,
    .current = sf_current,
    .disable = sf_disable,
    .write_current = sf_write_current,
    .cancel = sf_cancel,
    .close = sf_close,
};

int store_file_check(const char *dir, char *err, size_t errlen)
{
    int fd = -1;
    int rc = sf_open_root(dir, &fd, err, errlen);
    if (rc < 0)
        return rc;
    /* rotor's own, and rotor must be able to write in it: a rotation writes a version there. */
    struct stat st;
    if (fstat(fd, &st) == 0 && (st.st_mode & (S_IWUSR | S_IXUSR)) != (S_IWUSR | S_IXUSR)) {
        snprintf(err, errlen,
                 "store.dir %s: the directory has mode %04o: rotor cannot write to it "
                 "(want 0700)",
                 dir, (unsigned)(st.st_mode & 07777));
        rc = ROTOR_ESTORE;
    }
    /* Mode bits do not tell a read-only mount (EROFS), nor, for a process that is not the only
     * one the bits speak of, an ACL: both would pass here and fail the first rotation. */
    struct statvfs vfs;
    if (rc == 0 && fstatvfs(fd, &vfs) == 0 && (vfs.f_flag & ST_RDONLY)) {
        snprintf(err, errlen,
                 "store.dir %s: the file system is read-only: rotor cannot write to it", dir);
        rc = ROTOR_ESTORE;
    }
    if (rc == 0 && faccessat(fd, ".", W_OK | X_OK, AT_EACCESS) != 0) {
        int e = errno;
        snprintf(err, errlen, "store.dir %s: rotor cannot write to it (%s)", dir,
                 e == EROFS ? "the file system is read-only" : strerror(e));
        rc = ROTOR_ESTORE;
    }
    close(fd);
    return rc;
}

int store_file_open(uv_loop_t *loop, const cfg_secret_t *sec, const store_deps_t *deps,
                    store_t **out, char *err, size_t errlen)
{
    (void)deps; /* files need neither HTTP nor credentials */
    const char *dir = sec->store.dir;
    if (!dir || !*dir) {
        snprintf(err, errlen, "secret %s: store.dir is required for the file store",
                 sec->name ? sec->name : "?");
        return ROTOR_ECONFIG;
    }
    if (strlen(dir) > PATH_MAX - SF_MAX_NAME - SF_ID_LEN - 32) {
        snprintf(err, errlen, "secret %s: store.dir is too long", sec->name ? sec->name : "?");
        return ROTOR_ECONFIG;
    }
    /* Checked once here, so that a directory rotor would refuse (or that is not there) stops the
     * start rather than the first rotation; every request checks it again on the threadpool. */
    int rc = store_file_check(dir, err, errlen);
    if (rc < 0)
        return rc;
    store_t *s = util_calloc(1, sizeof *s);
    s->ops = &store_file_ops;
    s->loop = loop;
    s->cfg = sec;
    *out = s;
    return 0;
}
