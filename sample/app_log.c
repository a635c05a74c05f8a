/* app_log.c: JSON lines on stdout for the sample application, serialised by one mutex. */
#include "app_log.h"

#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static pthread_mutex_t app_log_mu = PTHREAD_MUTEX_INITIALIZER;
static const char *app_log_slot = "";

void app_log_init(const char *slot)
{
    app_log_slot = slot;
}

/* Server messages may arrive in a non-UTF-8 encoding, which jansson refuses; a line with a field
 * turned to '?' beats a line without it. */
static json_t *app_log_string(const char *s)
{
    json_t *j = json_string(s);
    if (j)
        return j;
    char *copy = strdup(s);
    if (!copy)
        return json_null();
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    j = json_string(copy);
    free(copy);
    return j ? j : json_null();
}

static json_t *app_log_start(const char *level, const char *msg)
{
    struct timespec ts;
    struct tm tm;
    char when[40], stamp[64];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(stamp, sizeof stamp, "%s.%03dZ", when, (int)(ts.tv_nsec / 1000000) % 1000);
    json_t *o = json_object();
    json_object_set_new(o, "time", json_string(stamp));
    json_object_set_new(o, "level", json_string(level));
    json_object_set_new(o, "msg", app_log_string(msg));
    json_object_set_new(o, "slot", app_log_string(app_log_slot));
    return o;
}

/* Takes ownership of o. */
static void app_log_emit(json_t *o)
{
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!line)
        return;
    pthread_mutex_lock(&app_log_mu);
    fputs(line, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    pthread_mutex_unlock(&app_log_mu);
    free(line);
}

void app_log_write(const char *level, const char *msg, ...)
{
    json_t *o = app_log_start(level, msg);
    va_list ap;
    va_start(ap, msg);
    for (const char *key = va_arg(ap, const char *); key; key = va_arg(ap, const char *)) {
        const char *value = va_arg(ap, const char *);
        json_object_set_new(o, key, value ? app_log_string(value) : json_null());
    }
    va_end(ap);
    app_log_emit(o);
}

void app_log_request(const char *method, const char *path, unsigned status, double ms, int aborted)
{
    json_t *o = app_log_start(aborted ? "warn" : "info", "http.request");
    json_object_set_new(o, "method", app_log_string(method));
    json_object_set_new(o, "path", app_log_string(path));
    json_object_set_new(o, "status", json_integer(status));
    json_object_set_new(o, "ms", json_real(ms));
    if (aborted)
        json_object_set_new(o, "aborted", json_true());
    app_log_emit(o);
}
