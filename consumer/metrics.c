/* metrics.c: an in-process registry of Prometheus counters, gauges and histograms, rendered as
 * text 0.0.4. */
#include "metrics.h"

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "rotor.h"
#include "util.h"

typedef enum { METRICS_COUNTER, METRICS_GAUGE, METRICS_HISTOGRAM } metrics_type_t;

typedef struct {
    char *labels; /* canonical: sorted by label name, values escaped, no braces */
    double value; /* a histogram's sum */
    /* Histograms only: observations per bucket, not cumulative (the last one is +Inf), and
     * their number. Counting per bucket keeps an observation O(log buckets); the cumulative
     * counts the format wants are summed at render time, which is rare. */
    uint64_t *counts;
    uint64_t count;
} metrics_series_t;

typedef struct {
    const char *name; /* borrowed static string */
    const char *help; /* borrowed static string; the first caller's wins */
    metrics_type_t type;
    const double *buckets; /* histograms: borrowed static upper bounds, ascending, finite */
    size_t nbuckets;
    metrics_series_t *series; /* sorted by labels */
    size_t nseries, cap;
} metrics_family_t;

/* Families are kept sorted by name and series by labels, so rendering is one stable pass. */
static metrics_family_t *families;
static size_t nfamilies, families_cap;

#define METRICS_MAX_LABELS 16

typedef struct {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} metrics_label_t;

/* Grows an array to hold need elements; OOM is fatal in rotor, as in util_malloc. */
static void *metrics_grow(void *p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return p;
    size_t n = *cap ? *cap * 2 : 8;
    while (n < need)
        n *= 2;
    void *q = realloc(p, n * size);
    if (!q)
        abort();
    *cap = n;
    return q;
}

typedef struct {
    char *buf;
    size_t len, cap;
} metrics_buf_t;

static void buf_put(metrics_buf_t *b, const char *s, size_t n)
{
    b->buf = metrics_grow(b->buf, &b->cap, b->len + n + 1, 1);
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = '\0';
}

static void buf_puts(metrics_buf_t *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

/* Label values escape backslash, double quote and newline; HELP text only backslash and
 * newline (exposition format 0.0.4). */
static void buf_escaped(metrics_buf_t *b, const char *s, size_t n, bool quote)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\')
            buf_puts(b, "\\\\");
        else if (s[i] == '\n')
            buf_puts(b, "\\n");
        else if (s[i] == '"' && quote)
            buf_puts(b, "\\\"");
        else
            buf_put(b, &s[i], 1);
    }
}

static bool is_name_start(char c, bool colon)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
}

static bool is_name_char(char c, bool colon)
{
    return is_name_start(c, colon) || (c >= '0' && c <= '9');
}

static bool metrics_name_valid(const char *name)
{
    if (!name || !is_name_start(name[0], true))
        return false;
    for (const char *p = name + 1; *p; p++)
        if (!is_name_char(*p, true))
            return false;
    return true;
}

/* Length of a label name at p followed by '="', or 0. */
static size_t label_head(const char *p)
{
    if (!is_name_start(*p, false))
        return 0;
    size_t n = 1;
    while (is_name_char(p[n], false))
        n++;
    return p[n] == '=' && p[n + 1] == '"' ? n : 0;
}

/* Callers format labels with raw values (snprintf "secret=\"%s\""), so a value may itself hold a
 * quote. The value therefore ends only at a quote followed by the end of the string or by a comma
 * and the next `name="`, and escaping happens here, once, on the way in. */
static const char *label_value_end(const char *v)
{
    for (const char *q = strchr(v, '"'); q; q = strchr(q + 1, '"')) {
        if (q[1] == '\0' || (q[1] == ',' && q[2] == '\0'))
            return q;
        if (q[1] == ',' && label_head(q + 2 + strspn(q + 2, " ")))
            return q;
    }
    return NULL;
}

static int label_cmp(const void *a, const void *b)
{
    const metrics_label_t *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

static int labels_parse(const char *s, metrics_label_t *out, size_t *count)
{
    size_t n = 0;
    const char *p = s ? s + strspn(s, " ") : "";
    while (*p) {
        size_t name_len = label_head(p);
        if (!name_len || n == METRICS_MAX_LABELS)
            return -1;
        const char *v = p + name_len + 2;
        const char *end = label_value_end(v);
        if (!end)
            return -1;
        out[n++] = (metrics_label_t){p, name_len, v, (size_t)(end - v)};
        p = end + 1;
        if (*p == ',')
            p++;
        p += strspn(p, " ");
    }
    qsort(out, n, sizeof *out, label_cmp);
    for (size_t i = 1; i < n; i++)
        if (label_cmp(&out[i - 1], &out[i]) == 0)
            return -1;
    *count = n;
    return 0;
}

/* Returns the canonical, escaped label set (caller owns it), or NULL if labels is malformed.
 * Canonical form makes `a="1",b="2"` and `b="2", a="1"` the same series. */
static char *labels_canonical(const char *labels)
{
    metrics_label_t l[METRICS_MAX_LABELS];
    size_t n;
    if (labels_parse(labels, l, &n) < 0)
        return NULL;
    metrics_buf_t b = {0};
    buf_puts(&b, "");
    for (size_t i = 0; i < n; i++) {
        if (i)
            buf_puts(&b, ",");
        buf_put(&b, l[i].name, l[i].name_len);
        buf_puts(&b, "=\"");
        buf_escaped(&b, l[i].value, l[i].value_len, true);
        buf_puts(&b, "\"");
    }
    return b.buf;
}

/* Binary search over n sorted elements of size bytes whose first member is their string key
 * (families by name, series by labels); returns the index where key is or belongs. */
_Static_assert(offsetof(metrics_family_t, name) == 0 && offsetof(metrics_series_t, labels) == 0,
               "find_sorted reads the key as the first member");
static size_t find_sorted(const void *base, size_t n, size_t size, const char *key, bool *found)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(*(const char *const *)((const char *)base + mid * size), key);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

static metrics_family_t *family_find(const char *name)
{
    bool found;
    size_t i = find_sorted(families, nfamilies, sizeof *families, name, &found);
    return found ? &families[i] : NULL;
}

/* buckets/nbuckets: histograms only (else NULL, 0); a family keeps its first caller's. */
static metrics_family_t *family_get(const char *name, const char *help, metrics_type_t type,
                                    const double *buckets, size_t nbuckets)
{
    bool found;
    size_t i = find_sorted(families, nfamilies, sizeof *families, name, &found);
    if (found)
        return families[i].type == type ? &families[i] : NULL;
    families = metrics_grow(families, &families_cap, nfamilies + 1, sizeof *families);
    memmove(&families[i + 1], &families[i], (nfamilies - i) * sizeof *families);
    families[i] = (metrics_family_t){.name = name,
                                     .help = help ? help : "",
                                     .type = type,
                                     .buckets = buckets,
                                     .nbuckets = nbuckets};
    nfamilies++;
    return &families[i];
}

/* Takes ownership of labels. */
static metrics_series_t *series_get(metrics_family_t *f, char *labels)
{
    bool found;
    size_t i = find_sorted(f->series, f->nseries, sizeof *f->series, labels, &found);
    if (found) {
        free(labels);
        return &f->series[i];
    }
    f->series = metrics_grow(f->series, &f->cap, f->nseries + 1, sizeof *f->series);
    memmove(&f->series[i + 1], &f->series[i], (f->nseries - i) * sizeof *f->series);
    f->series[i] = (metrics_series_t){.labels = labels, .value = 0};
    if (f->type == METRICS_HISTOGRAM)
        f->series[i].counts = util_calloc(f->nbuckets + 1, sizeof *f->series[i].counts);
    f->nseries++;
    return &f->series[i];
}

/* A bad name, label set or type clash is a programming error; it is logged and the sample
 * dropped rather than crashing the daemon over a metric. */
static metrics_series_t *metrics_lookup(const char *name, const char *help, const char *labels,
                                        metrics_type_t type, const double *buckets, size_t nbuckets)
{
    if (!metrics_name_valid(name)) {
        log_warn("metrics.invalid", "name", name, "reason", "bad metric name");
        return NULL;
    }
    char *canon = labels_canonical(labels);
    if (!canon) {
        log_warn("metrics.invalid", "name", name, "reason", "bad label set");
        return NULL;
    }
    metrics_family_t *f = family_get(name, help, type, buckets, nbuckets);
    if (!f) {
        log_warn("metrics.invalid", "name", name, "reason", "type differs from first use");
        free(canon);
        return NULL;
    }
    return series_get(f, canon);
}

void metrics_count(const char *name, const char *help, const char *labels, double v)
{
    /* Counters only go up; a negative or NaN step would corrupt every rate() over it. */
    if (!(v >= 0)) {
        log_warn("metrics.invalid", "name", name, "reason", "negative counter increment");
        return;
    }
    metrics_series_t *s = metrics_lookup(name, help, labels, METRICS_COUNTER, NULL, 0);
    if (s)
        s->value += v;
}

void metrics_gauge(const char *name, const char *help, const char *labels, double v)
{
    metrics_series_t *s = metrics_lookup(name, help, labels, METRICS_GAUGE, NULL, 0);
    if (s)
        s->value = v;
}

/* The bounds must be what histogram_quantile() can use: finite and strictly ascending (+Inf is
 * the registry's own last bucket). */
static bool buckets_valid(const double *b, size_t n)
{
    if (!b || n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(b[i]) || (i && !(b[i] > b[i - 1])))
            return false;
    return true;
}

/* `le` is the label the exposition adds to every bucket; a caller's own `le` would make two. */
static bool labels_have_le(const char *labels)
{
    metrics_label_t l[METRICS_MAX_LABELS];
    size_t n;
    if (labels_parse(labels, l, &n) < 0)
        return false; /* metrics_lookup reports it */
    for (size_t i = 0; i < n; i++)
        if (l[i].name_len == 2 && memcmp(l[i].name, "le", 2) == 0)
            return true;
    return false;
}

void metrics_observe(const char *name, const char *help, const char *labels, const double *buckets,
                     size_t nbuckets, double v)
{
    /* NaN belongs in no bucket and would turn _sum into NaN for good. */
    if (isnan(v)) {
        log_warn("metrics.invalid", "name", name, "reason", "NaN observation");
        return;
    }
    if (!buckets_valid(buckets, nbuckets)) {
        log_warn("metrics.invalid", "name", name, "reason", "bad buckets");
        return;
    }
    if (labels_have_le(labels)) {
        log_warn("metrics.invalid", "name", name, "reason", "label le is reserved");
        return;
    }
    metrics_series_t *s = metrics_lookup(name, help, labels, METRICS_HISTOGRAM, buckets, nbuckets);
    if (!s)
        return;
    const metrics_family_t *f = family_find(name);
    /* The first bucket whose upper bound holds v (le is "less than or equal"), else +Inf. */
    size_t lo = 0, hi = f->nbuckets;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v <= f->buckets[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    s->counts[lo]++;
    s->count++;
    s->value += v;
}

int metrics_value(const char *name, const char *labels, double *out)
{
    const metrics_family_t *f = family_find(name);
    char *canon = labels_canonical(labels);
    if (!f || !canon) {
        free(canon);
        return ROTOR_ENOTFOUND;
    }
    bool found;
    size_t i = find_sorted(f->series, f->nseries, sizeof *f->series, canon, &found);
    free(canon);
    if (!found)
        return ROTOR_ENOTFOUND;
    *out = f->type == METRICS_HISTOGRAM ? (double)f->series[i].count : f->series[i].value;
    return 0;
}

/* Shortest text that parses back to the same double; Prometheus spells infinities +Inf/-Inf. */
static void format_value(double v, char *buf, size_t len)
{
    if (isnan(v)) {
        snprintf(buf, len, "NaN");
    } else if (isinf(v)) {
        snprintf(buf, len, v > 0 ? "+Inf" : "-Inf");
    } else {
        snprintf(buf, len, "%.15g", v);
        if (strtod(buf, NULL) != v)
            snprintf(buf, len, "%.17g", v);
    }
}

/* One sample line: name+suffix{labels[,le="le"]} value. */
static void render_sample(metrics_buf_t *b, const char *name, const char *suffix,
                          const char *labels, const char *le, double v)
{
    char num[40];
    format_value(v, num, sizeof num);
    buf_puts(b, name);
    buf_puts(b, suffix);
    if (labels[0] || le) {
        buf_puts(b, "{");
        buf_puts(b, labels);
        if (le) {
            buf_puts(b, labels[0] ? ",le=\"" : "le=\"");
            buf_puts(b, le);
            buf_puts(b, "\"");
        }
        buf_puts(b, "}");
    }
    buf_puts(b, " ");
    buf_puts(b, num);
    buf_puts(b, "\n");
}

/* A histogram series as the format wants it: cumulative buckets in ascending order ending with
 * +Inf (which equals _count), then _sum and _count. */
static void render_histogram(metrics_buf_t *b, const metrics_family_t *f, const metrics_series_t *s)
{
    uint64_t cumulative = 0;
    for (size_t k = 0; k <= f->nbuckets; k++) {
        char le[40];
        if (k < f->nbuckets)
            format_value(f->buckets[k], le, sizeof le);
        else
            snprintf(le, sizeof le, "+Inf");
        cumulative += s->counts[k];
        render_sample(b, f->name, "_bucket", s->labels, le, (double)cumulative);
    }
    render_sample(b, f->name, "_sum", s->labels, NULL, s->value);
    render_sample(b, f->name, "_count", s->labels, NULL, (double)s->count);
}

static const char *const type_names[] = {" counter\n", " gauge\n", " histogram\n"};

static void render_family(metrics_buf_t *b, const metrics_family_t *f)
{
    buf_puts(b, "# HELP ");
    buf_puts(b, f->name);
    buf_puts(b, " ");
    buf_escaped(b, f->help, strlen(f->help), false);
    buf_puts(b, "\n# TYPE ");
    buf_puts(b, f->name);
    buf_puts(b, type_names[f->type]);
    for (size_t i = 0; i < f->nseries; i++) {
        if (f->type == METRICS_HISTOGRAM)
            render_histogram(b, f, &f->series[i]);
        else
            render_sample(b, f->name, "", f->series[i].labels, NULL, f->series[i].value);
    }
}

char *metrics_render(size_t *len)
{
    metrics_buf_t b = {0};
    buf_puts(&b, "");
    for (size_t i = 0; i < nfamilies; i++)
        render_family(&b, &families[i]);
    if (len)
        *len = b.len;
    return b.buf;
}

void metrics_reset(void)
{
    for (size_t i = 0; i < nfamilies; i++) {
        for (size_t j = 0; j < families[i].nseries; j++) {
            free(families[i].series[j].labels);
            free(families[i].series[j].counts);
        }
        free(families[i].series);
    }
    free(families);
    families = NULL;
    nfamilies = families_cap = 0;
}
