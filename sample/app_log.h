/* app_log.h: JSON lines on stdout, one object per event, safe to call from any thread.
 *
 * Every line carries the time, level, event name and the slot this instance serves. No function
 * here takes a password: the application never hands one to its log. */
#ifndef SAMPLE_APP_LOG_H
#define SAMPLE_APP_LOG_H

/* slot is borrowed and must outlive every later call. */
void app_log_init(const char *slot);

/* level is "debug", "info", "warn" or "error"; msg a dotted event name; then key, value, ...,
 * NULL (string pairs, all borrowed; a NULL value is written as null). */
void app_log_write(const char *level, const char *msg, ...);

/* The access log line of one request (all strings borrowed). */
void app_log_request(const char *method, const char *path, unsigned status, double ms, int aborted);

#define app_log_info(...) app_log_write("info", __VA_ARGS__, NULL)
#define app_log_warn(...) app_log_write("warn", __VA_ARGS__, NULL)
#define app_log_error(...) app_log_write("error", __VA_ARGS__, NULL)

#endif
