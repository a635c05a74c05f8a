/* util.c: durations, time stamps, UUIDs and allocation helpers. */
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "rotor.h"

static const struct {
    const char *suffix;
    uint64_t ms;
} duration_units[] = {
    {"ms", 1}, {"d", 86400000ULL}, {"h", 3600000ULL}, {"m", 60000ULL}, {"s", 1000ULL},
};

int util_parse_duration(const char *text, uint64_t *ms)
{
    if (!text || !*text)
        return ROTOR_EINVALID;
    if (strcmp(text, "0") == 0) {
        *ms = 0;
        return 0;
    }
    uint64_t total = 0;
    const char *p = text;
    while (*p) {
        if (!isdigit((unsigned char)*p))
            return ROTOR_EINVALID;
        uint64_t n = 0;
        while (isdigit((unsigned char)*p)) {
            if (n > UINT64_MAX / 10 - 10)
                return ROTOR_EINVALID;
            n = n * 10 + (uint64_t)(*p++ - '0');
        }
        size_t i;
        for (i = 0; i < sizeof duration_units / sizeof duration_units[0]; i++) {
            size_t l = strlen(duration_units[i].suffix);
            if (strncmp(p, duration_units[i].suffix, l) == 0) {
                /* "m" must not swallow the "m" of "ms". */
                if (l == 1 && p[0] == 'm' && p[1] == 's')
                    continue;
                if (n > UINT64_MAX / duration_units[i].ms)
                    return ROTOR_EINVALID;
                total += n * duration_units[i].ms;
                p += l;
                break;
            }
        }
        if (i == sizeof duration_units / sizeof duration_units[0])
            return ROTOR_EINVALID;
    }
    *ms = total;
    return 0;
}

void util_format_duration(uint64_t ms, char *buf, size_t len)
{
    static const struct {
        const char *suffix;
        uint64_t ms;
    } order[] = {{"d", 86400000ULL}, {"h", 3600000ULL}, {"m", 60000ULL}, {"s", 1000ULL}, {"ms", 1}};
    if (ms == 0) {
        snprintf(buf, len, "0s");
        return;
    }
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < 5 && used < len; i++) {
        if (ms >= order[i].ms) {
            int n = snprintf(buf + used, len - used, "%llu%s",
                             (unsigned long long)(ms / order[i].ms), order[i].suffix);
            if (n < 0)
                return;
            used += (size_t)n;
            ms %= order[i].ms;
        }
    }
}

int64_t util_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void util_format_time(int64_t epoch_ms, char *buf, size_t len)
{
    /* Floor division: before 1970 the fraction must still count forward from the second. */
    int64_t secs_ms = epoch_ms / 1000 - (epoch_ms % 1000 < 0 ? 1 : 0);
    time_t secs = (time_t)secs_ms;
    int frac = (int)(epoch_ms - secs_ms * 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
}

/* Exactly n digits at p, or -1: RFC 3339 fields have fixed widths, and sscanf("%2d") would also
 * take signs, spaces and short fields. */
static int fixed_digits(const char *p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)p[i]))
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

static int days_in_month(int year, int month)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return month == 2 && leap ? 29 : days[month - 1];
}

int util_parse_time(const char *text, int64_t *epoch_ms)
{
    /* "YYYY-MM-DDTHH:MM:SS": checked position by position, so nothing reads past the end. */
    static const char layout[] = "dddd-dd-ddTdd:dd:dd";
    if (!text)
        return ROTOR_EINVALID;
    for (size_t i = 0; i < sizeof layout - 1; i++) {
        bool ok = layout[i] == 'd'   ? isdigit((unsigned char)text[i]) != 0
                  : layout[i] == 'T' ? (text[i] == 'T' || text[i] == 't')
                                     : text[i] == layout[i];
        if (!ok)
            return ROTOR_EINVALID;
    }
    struct tm tm = {
        .tm_year = fixed_digits(text, 4),
        .tm_mon = fixed_digits(text + 5, 2),
        .tm_mday = fixed_digits(text + 8, 2),
        .tm_hour = fixed_digits(text + 11, 2),
        .tm_min = fixed_digits(text + 14, 2),
        .tm_sec = fixed_digits(text + 17, 2),
    };
    const char *p = text + sizeof layout - 1;
    int64_t frac_ms = 0;
    if (*p == '.') {
        int digits = 0;
        for (p++; isdigit((unsigned char)*p); p++, digits++) {
            if (digits < 3)
                frac_ms = frac_ms * 10 + (*p - '0');
        }
        if (digits == 0)
            return ROTOR_EINVALID;
        for (; digits < 3; digits++)
            frac_ms *= 10;
    }
    int64_t offset_s = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh = fixed_digits(p + 1, 2);
        int om = oh < 0 || p[3] != ':' ? -1 : fixed_digits(p + 4, 2);
        if (om < 0 || oh > 23 || om > 59)
            return ROTOR_EINVALID;
        offset_s = (oh * 3600 + om * 60) * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return ROTOR_EINVALID;
    }
    if (*p)
        return ROTOR_EINVALID;
    if (tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 ||
        tm.tm_mday > days_in_month(tm.tm_year, tm.tm_mon) || tm.tm_hour > 23 || tm.tm_min > 59 ||
        tm.tm_sec > 60)
        return ROTOR_EINVALID;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    *epoch_ms = ((int64_t)t - offset_s) * 1000 + frac_ms;
    /* An offset can push year 0000 back into year -1, and an offset or a leap second
     * (9999-12-31T23:59:60Z) push 9999 on into year 10000: RFC 3339 can write neither. */
    if (*epoch_ms < -62135596800000LL || *epoch_ms > 253402300799999LL)
        return ROTOR_EINVALID;
    return 0;
}

int util_uuid4(char *out)
{
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b)
        return -errno;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
    return 0;
}

bool util_is_uuid(const char *text)
{
    if (!text || strlen(text) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (text[i] != '-')
                return false;
        } else if (!isxdigit((unsigned char)text[i])) {
            return false;
        }
    }
    return true;
}

void *util_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        abort();
    return p;
}

void *util_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        abort();
    return p;
}

void util_release_free_memory(void)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

char *util_strdup(const char *s)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        abort();
    return d;
}

void util_strlcpy(char *dst, const char *src, size_t len)
{
    if (!len)
        return;
    size_t n = strnlen(src, len - 1);
    /* Never cut a UTF-8 character in half: PostgreSQL and jansson refuse the remains. */
    if (src[n] != '\0')
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

void util_utf8_trim(char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned char c = *p;
        size_t len = c < 0x80                 ? 1
                     : c >= 0xC2 && c <= 0xDF ? 2
                     : c >= 0xE0 && c <= 0xEF ? 3
                     : c >= 0xF0 && c <= 0xF4 ? 4
                                              : 0;
        /* Well-formed as Unicode's table 3-7 says, which jansson checks: no overlong forms, no
         * surrogates, nothing past U+10FFFF (F5..F7 and ED A0.. once passed here). */
        unsigned char lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
        unsigned char hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
        if (len > 1 && (p[1] < lo || p[1] > hi))
            len = 0;
        for (size_t k = 2; len && k < len; k++)
            if ((p[k] & 0xC0) != 0x80)
                len = 0;
        if (!len)
            break;
        p += len;
    }
    *(char *)p = '\0';
}

/* Length of the well-formed UTF-8 sequence at p (Unicode's table 3-7), 0 if there is none. */
static size_t utf8_seq_len(const unsigned char *p)
{
    unsigned char c = p[0];
    if (c < 0x80)
        return 1;
    unsigned char lo = 0x80, hi = 0xBF;
    size_t n;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        lo = c == 0xE0 ? 0xA0 : 0x80; /* no overlong forms */
        hi = c == 0xED ? 0x9F : 0xBF; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        lo = c == 0xF0 ? 0x90 : 0x80;
        hi = c == 0xF4 ? 0x8F : 0xBF; /* nothing past U+10FFFF */
    } else {
        return 0;
    }
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (size_t k = 2; k < n; k++)
        if ((p[k] & 0xC0) != 0x80)
            return 0;
    return n;
}

size_t util_utf8_sanitize(char *dst, size_t len, const char *src)
{
    static const char replacement[] = "\xEF\xBF\xBD"; /* U+FFFD */
    const unsigned char *p = (const unsigned char *)(src ? src : "");
    size_t o = 0;
    while (*p) {
        size_t n = utf8_seq_len(p);
        const char *out = (const char *)p;
        size_t outlen = n;
        if (n == 0) {
            out = replacement;
            outlen = 3;
            n = 1;
        } else if (*p == '\t' || *p == '\n' || *p == '\r') {
            out = " ";
        } else if (*p < 0x20 || *p == 0x7F || (*p == 0xC2 && p[1] < 0xA0)) {
            outlen = 0; /* C0, DEL, C1 (U+0080..U+009F): terminal controls, not text */
        }
        if (o + outlen + 1 > len)
            break;
        memcpy(dst + o, out, outlen);
        o += outlen;
        p += n;
    }
    while (o > 0 && dst[o - 1] == ' ')
        o--;
    if (len)
        dst[o] = '\0';
    return o;
}

int util_read_token_file(const char *path, char *buf, size_t max, size_t *len)
{
    int err = 0;
    *len = 0;
    buf[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t got;
    while (*len < max && (got = read(fd, buf + *len, max - *len)) != 0) {
        if (got < 0) {
            if (errno == EINTR)
                continue;
            err = -errno;
            break;
        }
        *len += (size_t)got;
    }
    close(fd);
    while (*len && isspace((unsigned char)buf[*len - 1]))
        (*len)--;
    buf[*len] = '\0';
    return err ? err : *len ? 0 : -ENODATA;
}

/* OpenSSL's libcrypto is there already (libpq links it; libpq-dev pulls in libssl-dev): the
 * hashes of a dead letter's oversized key and of a long instance name need no copy of SHA-256
 * of rotor's own. */
void util_sha256(const void *data, size_t len, unsigned char out[32])
{
    SHA256(data, len, out);
}

void util_sha256_hex(const void *data, size_t len, char out[65])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char d[32];
    util_sha256(data, len, d);
    for (int i = 0; i < 32; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[64] = '\0';
}

void util_instance_name(const char *name, char *out, size_t len)
{
    /* PostgreSQL keeps 63 bytes of application_name and turns every byte outside printable
     * ASCII into '?': two long pod names of one Deployment (same prefix, a suffix that differs at
     * the end) would become one identity, and the outbox, adoption and fencing all key on it. */
    size_t n = strlen(name);
    bool plain = n > 0 && n <= UTIL_INSTANCE_MAX;
    for (size_t i = 0; plain && i < n; i++)
        plain = name[i] > 32 && name[i] < 127;
    if (plain) {
        util_strlcpy(out, name, len);
        return;
    }
    /* A readable prefix, then 16 hex digits of the whole name's SHA-256. */
    char prefix[UTIL_INSTANCE_MAX - 16];
    size_t keep = n < sizeof prefix - 1 ? n : sizeof prefix - 1;
    for (size_t i = 0; i < keep; i++)
        prefix[i] = name[i] > 32 && name[i] < 127 ? name[i] : '_';
    prefix[keep] = '\0';
    char hex[65];
    util_sha256_hex(name, n, hex);
    snprintf(out, len, "%s-%.16s", prefix, hex);
}
