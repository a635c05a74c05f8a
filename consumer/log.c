/* log.c: JSON-lines logger. */
#include "log.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "rotor.h"
#include "util.h"

static log_level_t log_min = LOG_INFO;
static FILE *log_out;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_init(log_level_t min, FILE *out)
{
    log_min = min;
    log_out = out;
}

int log_level_parse(const char *name, log_level_t *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (log_level_t)i;
            return 0;
        }
    }
    return ROTOR_EINVALID;
}

void log_write(log_level_t level, const char *msg, ...)
{
    if (level < log_min)
        return;
    char ts[32];
    util_format_time(util_now_ms(), ts, sizeof ts);
    json_t *o = json_object();
    json_object_set_new(o, "ts", json_string(ts));
    json_object_set_new(o, "level", json_string(level_names[level]));
    json_object_set_new(o, "msg", json_string(msg));

    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *key = va_arg(ap, const char *);
        if (!key)
            break;
        const char *val = va_arg(ap, const char *);
        /* json_string rejects invalid UTF-8 (a hook's Latin-1 output): logged with U+FFFD in
         * place of each bad byte, rather than lost. */
        json_t *v = val ? json_string(val) : json_null();
        if (!v) {
            size_t cap = strlen(val) * 3 + 1;
            char *text = util_malloc(cap);
            util_utf8_sanitize(text, cap, val);
            v = json_string(text);
            free(text);
        }
        json_object_set_new(o, key, v);
    }
    va_end(ap);

    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    FILE *out = log_out ? log_out : stdout;
    if (line) {
        fputs(line, out);
        fputc('\n', out);
        fflush(out);
        free(line);
    }
    json_decref(o);
}
