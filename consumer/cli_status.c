/* cli_status.c: `rotor status [SECRET|ID] [--json]`: what the journal says about the managed
 * secrets or one rotation. The journal holds no passwords, so neither does this output. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "util.h"

#define OPEN_STATUSES "('pending', 'running', 'waiting', 'failed')"

/* RFC 3339 text of ms, or NULL for 0 (never). buf >= 32 bytes. */
static const char *cli_time_or_null(int64_t ms, char *buf, size_t len)
{
    if (!ms)
        return NULL;
    util_format_time(ms, buf, len);
    return buf;
}

static json_t *cli_json_str_or_null(const char *s)
{
    return s && *s ? json_string(s) : json_null();
}

/* One configured secret's line: journal's view if rotor has met it, else the configuration's. */
static json_t *cli_secret_json(PGconn *c, const cfg_secret_t *s)
{
    const char *params[] = {s->name};
    PGresult *res = PQexecParams(
        c,
        "SELECT s.active_slot, coalesce((extract(epoch FROM s.last_rotated) * 1000)::bigint, 0),"
        " r.id, r.stage, r.status FROM rotor.secrets s LEFT JOIN rotor.rotations r"
        " ON r.secret = s.name AND r.status IN " OPEN_STATUSES " WHERE s.name = $1",
        1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        fprintf(stderr, "rotor: reading the journal: %s", PQresultErrorMessage(res));
        PQclear(res);
        return NULL;
    }
    bool known = PQntuples(res) > 0;
    rotor_slot_t active = s->active;
    if (known)
        rotor_slot_parse(PQgetvalue(res, 0, 0), &active);
    char ts[32];
    int64_t last = known ? strtoll(PQgetvalue(res, 0, 1), NULL, 10) : 0;
    json_t *rot = json_null();
    if (known && !PQgetisnull(res, 0, 2))
        rot = json_pack("{s:s, s:s, s:s}", "id", PQgetvalue(res, 0, 2), "stage",
                        PQgetvalue(res, 0, 3), "status", PQgetvalue(res, 0, 4));
    json_t *o =
        json_pack("{s:s, s:b, s:s, s:s, s:o, s:o}", "name", s->name, "known", known, "active_slot",
                  rotor_slot_name(active), "active_role", s->database.roles[active], "rotation",
                  rot, "last_rotated", cli_json_str_or_null(cli_time_or_null(last, ts, sizeof ts)));
    PQclear(res);
    return o;
}

static const char *cli_jstr(const json_t *o, const char *key, const char *dflt)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : dflt;
}

static void cli_secrets_print(const json_t *list)
{
    size_t i;
    const json_t *o;
    printf("%-24s %-6s %-16s %-36s %-9s %-11s %s\n", "SECRET", "ACTIVE", "ROLE", "ROTATION",
           "STAGE", "STATUS", "LAST ROTATED");
    json_array_foreach(list, i, o)
    {
        const json_t *r = json_object_get(o, "rotation");
        printf("%-24s %-6s %-16s %-36s %-9s %-11s %s\n", cli_jstr(o, "name", "-"),
               cli_jstr(o, "active_slot", "-"), cli_jstr(o, "active_role", "-"),
               cli_jstr(r, "id", "-"), cli_jstr(r, "stage", "-"), cli_jstr(r, "status", "-"),
               cli_jstr(o, "last_rotated", "never"));
    }
}

static int cli_status_all(PGconn *c, const rotor_config_t *cfg, bool as_json)
{
    json_t *list = json_array();
    for (size_t i = 0; i < cfg->nsecrets; i++) {
        json_t *o = cli_secret_json(c, &cfg->secrets[i]);
        if (!o) {
            json_decref(list);
            return CLI_EXIT_ERROR;
        }
        json_array_append_new(list, o);
    }
    if (as_json) {
        json_t *root = json_pack("{s:o}", "secrets", list);
        json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        putchar('\n');
        json_decref(root);
    } else {
        cli_secrets_print(list);
        json_decref(list);
    }
    return CLI_EXIT_OK;
}

static json_t *cli_rot_json(const cli_rot_t *x)
{
    const journal_rot_t *r = &x->r;
    char created[32], updated[32], finished[32], next[32], expires[32];
    json_t *o = json_pack(
        "{s:s, s:s, s:s, s:s, s:i, s:i, s:s, s:s, s:b, s:s}", "id", r->id, "secret", r->secret,
        "stage", rotor_stage_name(r->stage), "status", journal_status_name(r->status), "seq",
        r->seq, "attempt", r->attempt, "from_slot", rotor_slot_name(r->from_slot), "to_slot",
        rotor_slot_name(r->to_slot), "swapped", r->swapped, "trigger", r->trigger);
    json_object_set_new(o, "request_id", cli_json_str_or_null(r->request_id));
    json_object_set_new(o, "reason", cli_json_str_or_null(r->reason));
    json_object_set_new(o, "error", cli_json_str_or_null(r->error));
    json_object_set_new(o, "actor", cli_json_str_or_null(r->actor));
    json_object_set_new(o, "version", cli_json_str_or_null(r->version));
    json_object_set_new(
        o, "created_at",
        cli_json_str_or_null(cli_time_or_null(r->created_at_ms, created, sizeof created)));
    json_object_set_new(
        o, "updated_at",
        cli_json_str_or_null(cli_time_or_null(x->updated_at_ms, updated, sizeof updated)));
    json_object_set_new(o, "next_at",
                        cli_json_str_or_null(cli_time_or_null(r->next_at_ms, next, sizeof next)));
    json_object_set_new(
        o, "expires_at",
        cli_json_str_or_null(cli_time_or_null(r->expires_at_ms, expires, sizeof expires)));
    json_object_set_new(
        o, "finished_at",
        cli_json_str_or_null(cli_time_or_null(x->finished_at_ms, finished, sizeof finished)));
    return o;
}

static json_t *cli_hist_json(const cli_hist_t *h)
{
    char at[32];
    util_format_time(h->at_ms, at, sizeof at);
    json_t *o = json_pack("{s:s, s:o, s:s}", "at", at, "stage", cli_json_str_or_null(h->stage),
                          "outcome", h->outcome);
    json_object_set_new(o, "attempt", h->attempt > 0 ? json_integer(h->attempt) : json_null());
    json_object_set_new(o, "duration_ms",
                        h->duration_ms >= 0 ? json_integer(h->duration_ms) : json_null());
    json_object_set_new(o, "error", cli_json_str_or_null(h->error));
    json_object_set_new(o, "actor", cli_json_str_or_null(h->actor));
    json_object_set_new(o, "request_id", cli_json_str_or_null(h->request_id));
    return o;
}

static void cli_rot_print(const json_t *rot)
{
    static const char *const keys[] = {
        "id",      "secret",  "status",     "stage",      "attempt", "from_slot",
        "to_slot", "swapped", "trigger",    "request_id", "reason",  "actor",
        "error",   "version", "created_at", "updated_at", "next_at", "finished_at"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const json_t *v = json_object_get(rot, keys[i]);
        if (!v || json_is_null(v))
            continue;
        if (json_is_string(v))
            printf("%-12s %s\n", keys[i], json_string_value(v));
        else if (json_is_integer(v))
            printf("%-12s %" JSON_INTEGER_FORMAT "\n", keys[i], json_integer_value(v));
        else
            printf("%-12s %s\n", keys[i], json_is_true(v) ? "yes" : "no");
    }
}

/* Prints rotation x and its history. */
static int cli_status_rotation(PGconn *c, const cli_rot_t *x, bool as_json)
{
    cli_hist_t *h = NULL;
    int n = cli_hist_read(c, x->r.id, 0, &h);
    if (n < 0)
        return CLI_EXIT_ERROR;
    json_t *rot = cli_rot_json(x);
    if (as_json) {
        json_t *hist = json_array();
        for (int i = 0; i < n; i++)
            json_array_append_new(hist, cli_hist_json(&h[i]));
        json_t *root = json_pack("{s:O, s:o}", "rotation", rot, "history", hist);
        json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        putchar('\n');
        json_decref(root);
    } else {
        cli_rot_print(rot);
        printf("history:\n");
        for (int i = 0; i < n; i++)
            cli_hist_print(stdout, &h[i]);
    }
    json_decref(rot);
    free(h);
    return CLI_EXIT_OK;
}

static int cli_status_one(PGconn *c, const rotor_config_t *cfg, const char *arg, bool as_json)
{
    cli_rot_t x;
    int rc;
    if (util_is_uuid(arg)) {
        rc = cli_rot_lookup(c, arg, &x);
        return rc ? rc : cli_status_rotation(c, &x, as_json);
    }
    rc = cli_rot_latest(c, arg, &x);
    if (rc < 0)
        return CLI_EXIT_ERROR;
    if (rc == 0 && !config_secret(cfg, arg)) {
        fprintf(stderr, "rotor: \"%s\" is neither a configured secret nor a rotation id\n", arg);
        return CLI_EXIT_ERROR;
    }
    if (rc == 1)
        return cli_status_rotation(c, &x, as_json);
    if (as_json)
        printf("{\n  \"rotation\": null,\n  \"history\": []\n}\n");
    else
        printf("%s has no rotation yet\n", arg);
    return CLI_EXIT_OK;
}

int cli_status(cli_ctx_t *ctx, int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    bool as_json = false;
    int ch;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
        if (ch == 'h')
            return CLI_HELP;
        if (ch != 'j')
            return CLI_USAGE;
        as_json = true;
    }
    if (argc - optind > 1) {
        fprintf(stderr, "%s: expected at most one SECRET or ID\n", argv[0]);
        return CLI_USAGE;
    }
    const rotor_config_t *cfg = cli_config(ctx);
    PGconn *c = NULL;
    if (!cfg || cli_journal_open(cfg, false, &c, NULL) != 0)
        return CLI_EXIT_ERROR;
    int rc = optind < argc ? cli_status_one(c, cfg, argv[optind], as_json)
                           : cli_status_all(c, cfg, as_json);
    PQfinish(c);
    return rc;
}
