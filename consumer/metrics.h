/* metrics.h: Prometheus counters and gauges, rendered as text exposition format 0.0.4.
 * Loop-thread only: no locking. Names are static strings; label sets are small. */
#ifndef ROTOR_METRICS_H
#define ROTOR_METRICS_H

#include <stddef.h>

/* Adds v to a counter (created on first use). labels: "stage=\"set-db\",outcome=\"ok\"" or NULL.
 * name and help are borrowed static strings; labels is copied. */
void metrics_count(const char *name, const char *help, const char *labels, double v);

/* Sets a gauge. */
void metrics_gauge(const char *name, const char *help, const char *labels, double v);

/* Returns the exposition text (malloc'ed; the caller frees). */
char *metrics_render(size_t *len);

/* Frees every metric (at exit; tests). */
void metrics_reset(void);

#endif
