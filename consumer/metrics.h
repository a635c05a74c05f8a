/* metrics.h: Prometheus counters, gauges and histograms, rendered as text exposition format 0.0.4.
 * Loop-thread only: no locking. Names are static strings; label sets are small. */
#ifndef ROTOR_METRICS_H
#define ROTOR_METRICS_H

#include <stddef.h>

/* Adds v to a counter (created on first use). labels: "stage=\"set-db\",outcome=\"ok\"" or NULL.
 * name and help are borrowed static strings; labels is copied. */
void metrics_count(const char *name, const char *help, const char *labels, double v);

/* Sets a gauge. */
void metrics_gauge(const char *name, const char *help, const char *labels, double v);

/* Observes v in a histogram (created on first use) with fixed upper bounds: buckets[nbuckets],
 * finite and strictly ascending; +Inf is added. buckets is a borrowed static array, and the
 * family keeps its first caller's (a bucket layout is part of the metric's meaning: series with
 * different bounds could not be aggregated). labels as for a counter, without `le`. NaN is
 * refused. Rendered as name_bucket{...,le="..."} (cumulative), name_sum and name_count. */
void metrics_observe(const char *name, const char *help, const char *labels, const double *buckets,
                     size_t nbuckets, double v);

/* The current value of a counter or gauge series (a histogram's: its count). Returns 0 and *out,
 * or ROTOR_ENOTFOUND when the series was never set. */
int metrics_value(const char *name, const char *labels, double *out);

/* Returns the exposition text (malloc'ed; the caller frees). */
char *metrics_render(size_t *len);

/* Frees every metric (at exit; tests). */
void metrics_reset(void);

#endif
