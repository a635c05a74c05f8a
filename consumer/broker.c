/* broker.c: the embedded Kafka broker (librdkafka's mock cluster) for local runs and tests. */
#include "broker.h"

#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "rotor.h"
#include "util.h"

struct broker_s {
    rd_kafka_t *rk; /* only hosts the mock cluster; never produces */
    rd_kafka_mock_cluster_t *mcluster;
    char *bootstrap;
    char *bootstrap_file; /* NULL when not written */
};

/* mkdir -p for the directory part of path. Returns 0 or a negative errno. */
static int broker_mkdirs(const char *path)
{
    char *dir = util_strdup(path);
    char *slash = strrchr(dir, '/');
    int rc = 0;
    if (slash && slash != dir) {
        *slash = '\0';
        for (char *p = dir + 1; *p && rc == 0; p++) {
            if (*p != '/')
                continue;
            *p = '\0';
            if (mkdir(dir, 0755) != 0 && errno != EEXIST)
                rc = -errno;
            *p = '/';
        }
        if (rc == 0 && mkdir(dir, 0755) != 0 && errno != EEXIST)
            rc = -errno;
    }
    free(dir);
    return rc;
}

/* Writes text to path through a temporary file and rename(), so that a reader (the CLI) never
 * sees a half-written address. Returns 0 or a negative errno. */
static int broker_write_atomic(const char *path, const char *text)
{
    int rc = broker_mkdirs(path);
    if (rc)
        return rc;
    size_t n = strlen(path) + 32;
    char *tmp = util_malloc(n);
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) {
        rc = -errno;
        free(tmp);
        return rc;
    }
    if (fprintf(f, "%s\n", text) < 0)
        rc = -EIO;
    if (fclose(f) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc)
        unlink(tmp);
    free(tmp);
    return rc;
}

static int broker_create_topics(broker_t *b, const rotor_config_t *cfg, char *err, size_t errlen)
{
    const char *topics[] = {cfg->kafka.topic_commands, cfg->kafka.topic_events,
                            cfg->kafka.topic_deadletter, cfg->kafka.topic_keyvault};
    int parts = cfg->kafka.partitions > 0 ? cfg->kafka.partitions : 1;
    for (size_t i = 0; i < sizeof topics / sizeof topics[0]; i++) {
        if (!topics[i] || !*topics[i])
            continue;
        rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(b->mcluster, topics[i], parts, 1);
        if (e) {
            snprintf(err, errlen, "embedded broker: cannot create topic %s: %s", topics[i],
                     rd_kafka_err2str(e));
            return ROTOR_EKAFKA;
        }
    }
    return 0;
}

int broker_start(const rotor_config_t *cfg, broker_t **out, char *err, size_t errlen)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* The hosting handle never connects anywhere: it only owns the mock cluster's thread. */
    /* log_level 4: its "no bootstrap.servers" notice is expected here, not worth a line. */
    if (rd_kafka_conf_set(conf, "client.id", "rotor-embedded-broker", errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "log_level", "4", errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
        snprintf(err, errlen, "embedded broker: %s", errstr);
        rd_kafka_conf_destroy(conf);
        return ROTOR_EKAFKA;
    }
    broker_t *b = util_calloc(1, sizeof *b);
    b->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!b->rk) {
        snprintf(err, errlen, "embedded broker: %s", errstr);
        rd_kafka_conf_destroy(conf);
        free(b);
        return ROTOR_EKAFKA;
    }
    b->mcluster = rd_kafka_mock_cluster_new(b->rk, 1);
    if (!b->mcluster) {
        snprintf(err, errlen, "embedded broker: cannot create the mock cluster");
        broker_stop(b);
        return ROTOR_EKAFKA;
    }
    b->bootstrap = util_strdup(rd_kafka_mock_cluster_bootstraps(b->mcluster));
    int rc = broker_create_topics(b, cfg, err, errlen);
    if (rc == 0 && cfg->kafka.bootstrap_file && *cfg->kafka.bootstrap_file) {
        rc = broker_write_atomic(cfg->kafka.bootstrap_file, b->bootstrap);
        if (rc)
            snprintf(err, errlen, "embedded broker: cannot write %s: %s", cfg->kafka.bootstrap_file,
                     strerror(-rc));
        else
            b->bootstrap_file = util_strdup(cfg->kafka.bootstrap_file);
    }
    if (rc) {
        broker_stop(b);
        return rc;
    }
    log_info("kafka.broker.started", "bootstrap", b->bootstrap);
    *out = b;
    return 0;
}

const char *broker_bootstrap(const broker_t *b)
{
    return b->bootstrap;
}

int broker_set_up(broker_t *b, bool up)
{
    /* -1: every broker of the cluster (there is one) */
    rd_kafka_resp_err_t e = up ? rd_kafka_mock_broker_set_up(b->mcluster, -1)
                               : rd_kafka_mock_broker_set_down(b->mcluster, -1);
    if (e) {
        log_error("kafka.broker.updown", "up", up ? "true" : "false", "error", rd_kafka_err2str(e));
        return ROTOR_EKAFKA;
    }
    log_info(up ? "kafka.broker.up" : "kafka.broker.down", "bootstrap", b->bootstrap);
    return 0;
}

void broker_stop(broker_t *b)
{
    if (!b)
        return;
    if (b->bootstrap_file) {
        unlink(b->bootstrap_file);
        free(b->bootstrap_file);
    }
    if (b->mcluster)
        rd_kafka_mock_cluster_destroy(b->mcluster);
    if (b->rk)
        rd_kafka_destroy(b->rk);
    free(b->bootstrap);
    free(b);
}
