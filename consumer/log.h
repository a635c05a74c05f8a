/* log.h: JSON lines on stdout (or a file), one object per event.
 *
 * Fields are string key/value pairs; the list ends with NULL. There is no way to log a
 * rotor_secret_t: passwords never reach a log line by construction. Log an error once, where it is
 * handled, with the rotation id and stage as fields. */
#ifndef ROTOR_LOG_H
#define ROTOR_LOG_H

#include <stdio.h>

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level_t;

/* Sets the minimum level and the stream (borrowed; stdout when NULL). */
void log_init(log_level_t min, FILE *out);
/* Parses "debug", "info", "warn", "error". Returns 0 or ROTOR_EINVALID. */
int log_level_parse(const char *name, log_level_t *out);

/* msg is a short dotted event name ("rotation.stage.failed"); then key, value, ..., NULL.
 * A NULL value is written as JSON null. */
void log_write(log_level_t level, const char *msg, ...);

#define log_debug(...) log_write(LOG_DEBUG, __VA_ARGS__, NULL)
#define log_info(...) log_write(LOG_INFO, __VA_ARGS__, NULL)
#define log_warn(...) log_write(LOG_WARN, __VA_ARGS__, NULL)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__, NULL)

#endif
