/* observe.c: stage and rotation duration histograms, per-secret expiry gauges and build info. */
#include "observe.h"

#include <curl/curl.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <microhttpd.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "log.h"
#include "metrics.h"
#include "util.h"

/* Stages take from milliseconds (prepare) to minutes (a rollout, a drain) and an approval can
 * wait for a person for a day; the bounds follow that range, a few per decade, so that
 * histogram_quantile() stays within a factor of about two or three anywhere in it. */
static const double stage_buckets[] = {0.01, 0.025, 0.05, 0.1,  0.25,  0.5,  1,
                                       2.5,  5,     10,   30,   60,    120,  300,
                                       600,  1800,  3600, 7200, 21600, 86400};
/* A whole rotation: seconds with auto approval and no drain, up to days with a manual gate. */
static const double rotation_buckets[] = {1,   5,    10,   30,   60,    120,   300,
                                          600, 1800, 3600, 7200, 21600, 86400, 259200};

#define N(a) (sizeof(a) / sizeof((a)[0]))

#define STAGE_HELP                                                                                 \
    "Seconds a stage attempt took, from its start to its end, by stage and outcome (ok, retry, "   \
    "failed); an approval's from the wait's start to the decision"
#define ROTATION_HELP "Seconds from a rotation's creation to its end, by final status"
#define LAST_HELP                                                                                  \
    "Unix time at which the secret's latest completed rotation finished (from the journal)"
#define VALID_HELP                                                                                 \
    "Unix time until which the database accepts the password of the secret's latest completed "    \
    "rotation (its VALID UNTIL)"

void observe_secret(const char *secret, int64_t rotated_ms, int64_t valid_until_ms)
{
    char labels[160];
    snprintf(labels, sizeof labels, "secret=\"%s\"", secret);
    double seen;
    if (metrics_value("rotor_secret_last_rotation_timestamp_seconds", labels, &seen) == 0 &&
        seen > (double)rotated_ms / 1000.0)
        return;
    metrics_gauge("rotor_secret_last_rotation_timestamp_seconds", LAST_HELP, labels,
                  (double)rotated_ms / 1000.0);
    if (valid_until_ms > 0)
        metrics_gauge("rotor_secret_valid_until_timestamp_seconds", VALID_HELP, labels,
                      (double)valid_until_ms / 1000.0);
}

void observe_attempt(rotor_stage_t stage, const char *outcome, int64_t took_ms)
{
    if (took_ms < 0)
        return;
    char labels[96];
    snprintf(labels, sizeof labels, "stage=\"%s\",outcome=\"%s\"", rotor_stage_name(stage),
             outcome);
    metrics_observe("rotor_stage_duration_seconds", STAGE_HELP, labels, stage_buckets,
                    N(stage_buckets), (double)took_ms / 1000.0);
}

void observe_rotation_ended(const journal_rot_t *row)
{
    char labels[64];
    snprintf(labels, sizeof labels, "status=\"%s\"", journal_status_name(row->status));
    metrics_count("rotor_rotations_total", "Rotations that ended, by final status", labels, 1);
    int64_t now = util_now_ms();
    if (row->created_at_ms > 0) {
        double took = now > row->created_at_ms ? (double)(now - row->created_at_ms) / 1000.0 : 0;
        metrics_observe("rotor_rotation_duration_seconds", ROTATION_HELP, labels, rotation_buckets,
                        N(rotation_buckets), took);
    }
    /* Only a rotation that got past the swap and was not swapped back changed the password
     * production uses: a completed one, or one aborted after the swap (its standby slot is the
     * active one now). A rollback, or an abort before the swap, leaves the previous figures true.
     * journal_secret_figures() picks the same rows after a restart. */
    if (row->status == RS_COMPLETED || (row->status == RS_ABORTED && row->swapped))
        observe_secret(row->secret, now, row->expires_at_ms);
}

static void figures_failed(int status)
{
    if (status != ROTOR_ECANCELED)
        log_warn("metrics.secret_figures_failed", "error", rotor_strerror(status), "note",
                 "the per-secret gauges appear after the next completed rotation");
}

static void on_figures(void *arg, int status, const journal_figures_t *rows, int n)
{
    const rotor_config_t *cfg = arg;
    if (status != 0) {
        figures_failed(status);
        return;
    }
    /* Secrets rotor no longer manages keep their rows in the journal; a gauge for them would
     * page someone about a password nobody rotates any more. */
    for (int i = 0; i < n; i++)
        if (config_secret(cfg, rows[i].secret))
            observe_secret(rows[i].secret, rows[i].rotated_ms, rows[i].valid_until_ms);
}

void observe_load_secrets(journal_t *j, const rotor_config_t *cfg)
{
    int rc = journal_secret_figures(j, on_figures, (void *)cfg);
    if (rc < 0)
        figures_failed(rc);
}

/* The libraries' versions ride along because they decide behaviour an operator may chase
 * (librdkafka's rebalance protocol, libcurl's resolver); this is the only place outside their
 * binding files that names them, and it reads version strings only. */
void observe_build_info(void)
{
    char labels[512];
    int pq = PQlibVersion();
    const char *mhd = MHD_get_version();
    snprintf(labels, sizeof labels,
             "version=\"%s\",libuv=\"%s\",librdkafka=\"%s\",libpq=\"%d.%d\",libcurl=\"%s\","
             "libmicrohttpd=\"%s\"",
             ROTOR_VERSION, uv_version_string(), rd_kafka_version_str(), pq / 10000, pq % 10000,
             curl_version_info(CURLVERSION_NOW)->version, mhd ? mhd : "");
    metrics_gauge("rotor_build_info",
                  "1, labelled with rotor's version and those of the libraries it runs on", labels,
                  1);
}
