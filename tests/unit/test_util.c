/* test_util.c: durations, RFC 3339 time stamps, UUIDs, SHA-256 and instance names from util.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rotor.h"
#include "util.h"

static void expect_duration(const char *text, uint64_t want)
{
    uint64_t ms = 12345;
    if (util_parse_duration(text, &ms) != 0)
        fail_msg("util_parse_duration(\"%s\") failed", text);
    assert_int_equal(ms, want);
}

static void test_parse_duration(void **state)
{
    (void)state;
    expect_duration("0", 0);
    expect_duration("250ms", 250);
    expect_duration("30s", 30000);
    expect_duration("5m", 300000);
    expect_duration("2h", 7200000);
    expect_duration("90d", 90ULL * 86400000);
    expect_duration("1h30m", 5400000);
    expect_duration("1m30s", 90000);
    expect_duration("1s500ms", 1500);
    expect_duration("2m5ms", 120005);
    expect_duration("0s", 0);
}

static void test_parse_duration_invalid(void **state)
{
    (void)state;
    const char *bad[] = {"",
                         "s",
                         "5",
                         "5x",
                         "-5s",
                         "5 s",
                         " 5s",
                         "5s ",
                         "1.5h",
                         "m5",
                         "5sm",
                         "h",
                         "5mss",
                         "30S",
                         "99999999999999999999999d",
                         "300000000000000000d"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t ms = 777;
        if (util_parse_duration(bad[i], &ms) != ROTOR_EINVALID)
            fail_msg("util_parse_duration(\"%s\") accepted: %llu", bad[i], (unsigned long long)ms);
        assert_int_equal(ms, 777);
    }
    uint64_t ms;
    assert_int_equal(util_parse_duration(NULL, &ms), ROTOR_EINVALID);
}

static void expect_format(uint64_t ms, const char *want)
{
    char buf[32];
    util_format_duration(ms, buf, sizeof buf);
    assert_string_equal(buf, want);
}

static void test_format_duration(void **state)
{
    (void)state;
    expect_format(0, "0s");
    expect_format(250, "250ms");
    expect_format(30000, "30s");
    expect_format(5400000, "1h30m");
    expect_format(90ULL * 86400000, "90d");
    expect_format(86400000ULL + 1, "1d1ms");
    /* Round trip: formatting then parsing gives the same number of milliseconds. */
    const uint64_t values[] = {1, 999, 1000, 61000, 3599999, 86400000, 93784005, 31536000000ULL};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        char buf[32];
        uint64_t back = 0;
        util_format_duration(values[i], buf, sizeof buf);
        assert_int_equal(util_parse_duration(buf, &back), 0);
        assert_int_equal(back, values[i]);
    }
}

static void expect_time(const char *text, int64_t want)
{
    int64_t ms = 0;
    if (util_parse_time(text, &ms) != 0)
        fail_msg("util_parse_time(\"%s\") failed", text);
    assert_int_equal(ms, want);
}

static void test_parse_time(void **state)
{
    (void)state;
    expect_time("1970-01-01T00:00:00Z", 0);
    expect_time("2026-11-28T20:07:51Z", 1795896471000);
    expect_time("2026-11-28T20:07:51.123Z", 1795896471123);
    expect_time("2026-11-28T20:07:51.1z", 1795896471100);
    /* Digits past milliseconds are truncated, not rounded. */
    expect_time("2026-11-28T20:07:51.123999Z", 1795896471123);
    /* Offsets: the same instant written in three zones. */
    expect_time("2026-11-28T21:07:51+01:00", 1795896471000);
    expect_time("2026-11-28T14:37:51.5-05:30", 1795896471500);
    expect_time("2026-11-29T00:07:51+04:00", 1795896471000);
    expect_time("2026-11-28T20:07:51+00:00", 1795896471000);
    expect_time("2028-02-29T00:00:00Z", 1835395200000);
}

static void test_parse_time_invalid(void **state)
{
    (void)state;
    const char *bad[] = {
        "",
        "2026-11-28",
        "2026-11-28T20:07:51",      /* no offset */
        "2026-11-28 20:07:51Z",     /* space instead of T */
        "2026-11-28T20:07:51.Z",    /* empty fraction */
        "2026-13-01T00:00:00Z",     /* month 13 */
        "2026-00-01T00:00:00Z",     /* month 0 */
        "2026-01-32T00:00:00Z",     /* day 32 */
        "2026-01-01T24:00:00Z",     /* hour 24 */
        "2026-01-01T00:60:00Z",     /* minute 60 */
        "2026-01-01T00:00:00Zjunk", /* trailing text */
        "2026-01-01T00:00:00+0100", /* offset without colon */
        "2026-01-01T00:00:00+01",   /* offset without minutes */
        "2026-01-01T00:00:00+01:00x",
        "2026-02-30T00:00:00Z",  /* no 30 February: not silently 2 March */
        "2027-02-29T00:00:00Z",  /* not a leap year */
        "2026-1-1T0:0:0Z",       /* RFC 3339 fields have fixed widths */
        " 2026-01-01T00:00:00Z", /* leading space */
        "+2026-01-01T00:00:00Z",
        /* Short offsets must not make the parser read past the end of the text. */
        "2026-01-01T00:00:00+1:00",
        "2026-01-01T00:00:00+01:0",
        "2026-01-01T00:00:00+-1:00",
        "2026-01-01T00:00:00+",
        "not a time",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        /* Heap copies, so that ASan sees any read past the end of the text. */
        char *copy = util_strdup(bad[i]);
        int64_t ms = 42;
        int rc = util_parse_time(copy, &ms);
        free(copy);
        if (rc != ROTOR_EINVALID)
            fail_msg("util_parse_time(\"%s\") accepted", bad[i]);
    }
    int64_t ms;
    assert_int_equal(util_parse_time(NULL, &ms), ROTOR_EINVALID);
}

static void test_format_time(void **state)
{
    (void)state;
    char buf[32];
    util_format_time(1795896471123, buf, sizeof buf);
    assert_string_equal(buf, "2026-11-28T20:07:51.123Z");
    util_format_time(0, buf, sizeof buf);
    assert_string_equal(buf, "1970-01-01T00:00:00.000Z");
    int64_t back;
    int64_t now = util_now_ms();
    util_format_time(now, buf, sizeof buf);
    assert_int_equal(util_parse_time(buf, &back), 0);
    assert_int_equal(back, now);
}

static void test_uuid4(void **state)
{
    (void)state;
    char a[37], b[37];
    assert_int_equal(util_uuid4(a), 0);
    assert_int_equal(util_uuid4(b), 0);
    assert_string_not_equal(a, b);
    for (int n = 0; n < 1000; n++) {
        assert_int_equal(util_uuid4(a), 0);
        assert_int_equal(strlen(a), 36);
        assert_true(util_is_uuid(a));
        for (int i = 0; i < 36; i++) {
            if (i == 8 || i == 13 || i == 18 || i == 23)
                assert_int_equal(a[i], '-');
            else
                assert_true(isxdigit((unsigned char)a[i]) && !isupper((unsigned char)a[i]));
        }
        /* Version 4, RFC 4122 variant (10xx). */
        assert_int_equal(a[14], '4');
        assert_non_null(strchr("89ab", a[19]));
    }
}

static void test_is_uuid(void **state)
{
    (void)state;
    assert_true(util_is_uuid("123e4567-e89b-42d3-a456-426614174000"));
    assert_true(util_is_uuid("123E4567-E89B-42D3-A456-426614174000"));
    assert_false(util_is_uuid(NULL));
    assert_false(util_is_uuid(""));
    assert_false(util_is_uuid("123e4567e89b42d3a456426614174000"));
    assert_false(util_is_uuid("123e4567-e89b-42d3-a456-42661417400"));
    assert_false(util_is_uuid("123e4567-e89b-42d3-a456-4266141740000"));
    assert_false(util_is_uuid("123e4567-e89b-42d3-a456_426614174000"));
    assert_false(util_is_uuid("g23e4567-e89b-42d3-a456-426614174000"));
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_read_token_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/rotor-util.XXXXXX", path[64], buf[9];
    size_t len = 99;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/token", dir);
    assert_int_equal(util_read_token_file(path, buf, sizeof buf - 1, &len), -ENOENT);
    assert_int_equal(len, 0);
    /* trailing whitespace (a kubelet-written file ends in a newline) is not the token */
    write_file(path, "ab c\n \t");
    assert_int_equal(util_read_token_file(path, buf, sizeof buf - 1, &len), 0);
    assert_string_equal(buf, "ab c");
    assert_int_equal(len, 4);
    /* at most max bytes, terminated */
    write_file(path, "0123456789abcdef");
    assert_int_equal(util_read_token_file(path, buf, sizeof buf - 1, &len), 0);
    assert_string_equal(buf, "01234567");
    /* nothing but whitespace is no token */
    write_file(path, " \n");
    assert_int_equal(util_read_token_file(path, buf, sizeof buf - 1, &len), -ENODATA);
    assert_string_equal(buf, "");
    unlink(path);
    rmdir(dir);
}

static void test_sha256(void **state)
{
    (void)state;
    char hex[65];
    util_sha256_hex("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    util_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    /* 56 bytes: the length goes into a second padding block */
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    util_sha256_hex(two, strlen(two), hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

static void expect_plain_instance(const char *got)
{
    assert_true(strlen(got) <= UTIL_INSTANCE_MAX);
    for (const char *p = got; *p; p++)
        assert_true(*p > 32 && *p < 127);
}

static void test_instance_name(void **state)
{
    (void)state;
    char a[UTIL_INSTANCE_MAX + 1], b[UTIL_INSTANCE_MAX + 1];
    util_instance_name("rotor-7d9f8b6c5d-x2x9z", a, sizeof a);
    assert_string_equal(a, "rotor-7d9f8b6c5d-x2x9z");
    char fits[UTIL_INSTANCE_MAX + 2];
    memset(fits, 'p', UTIL_INSTANCE_MAX);
    fits[UTIL_INSTANCE_MAX] = '\0';
    util_instance_name(fits, a, sizeof a);
    assert_string_equal(a, fits); /* "rotor/" and it: exactly PostgreSQL's 63 bytes */
    /* A Deployment's pods: 70 bytes, the same but for the last ones. PostgreSQL would cut both
     * to one application_name. */
    const char *pod1 = "rotor-credential-rotation-controller-prod-westeurope-7d9f8b6c5d-x2x9z";
    const char *pod2 = "rotor-credential-rotation-controller-prod-westeurope-7d9f8b6c5d-q8k4m";
    util_instance_name(pod1, a, sizeof a);
    util_instance_name(pod2, b, sizeof b);
    expect_plain_instance(a);
    expect_plain_instance(b);
    assert_string_not_equal(a, b);
    assert_int_equal(strncmp(a, pod1, 40), 0); /* readable */
    char again[UTIL_INSTANCE_MAX + 1];
    util_instance_name(pod1, again, sizeof again);
    assert_string_equal(a, again); /* the same after a restart: the journal's rows stay its own */
    /* PostgreSQL would turn each non-ASCII byte into '?' */
    util_instance_name("r\xc3\xb6tor-a", a, sizeof a);
    util_instance_name("r\xc3\xa4tor-a", b, sizeof b);
    expect_plain_instance(a);
    expect_plain_instance(b);
    assert_string_not_equal(a, b);
    util_instance_name("two words", a, sizeof a);
    expect_plain_instance(a);
}

static void expect_sanitized(const char *in, const char *want)
{
    char out[256];
    size_t n = util_utf8_sanitize(out, sizeof out, in);
    if (strcmp(out, want) != 0)
        fail_msg("util_utf8_sanitize(\"%s\") = \"%s\", want \"%s\"", in ? in : "(null)", out, want);
    assert_int_equal(n, strlen(want));
}

/* Valid UTF-8 by Unicode's table 3-7, and no control character: what PostgreSQL and jansson
 * accept, and what a terminal shows as text. */
static bool text_line(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        if (*p < 0x20 || *p == 0x7F)
            return false;
        if (*p < 0x80) {
            p++;
            continue;
        }
        uint32_t cp;
        size_t n;
        if (*p >= 0xC2 && *p <= 0xDF)
            cp = *p & 0x1F, n = 2;
        else if (*p >= 0xE0 && *p <= 0xEF)
            cp = *p & 0x0F, n = 3;
        else if (*p >= 0xF0 && *p <= 0xF4)
            cp = *p & 0x07, n = 4;
        else
            return false;
        for (size_t k = 1; k < n; k++) {
            if ((p[k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (p[k] & 0x3F);
        }
        static const uint32_t least[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < least[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF) ||
            (cp >= 0x80 && cp <= 0x9F))
            return false;
        p += n;
    }
    return true;
}

static void test_utf8_sanitize(void **state)
{
    (void)state;
    expect_sanitized("plain ascii", "plain ascii");
    expect_sanitized(NULL, "");
    expect_sanitized("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x91",
                     "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x91");
    /* Latin-1 (an exec hook's stderr, a server message in LATIN1) */
    expect_sanitized("caf\xe9 \xe0 la cr\xe8me",
                     "caf\xef\xbf\xbd \xef\xbf\xbd la cr\xef\xbf\xbdme");
    /* overlong forms, surrogates, past U+10FFFF, stray continuations, cut sequences */
    expect_sanitized("a\xc0\xafz", "a\xef\xbf\xbd\xef\xbf\xbdz");
    expect_sanitized("\xe0\x80\xaf", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    expect_sanitized("\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    expect_sanitized("\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    expect_sanitized("\x80x", "\xef\xbf\xbdx");
    expect_sanitized("x\xe2\x82", "x\xef\xbf\xbd\xef\xbf\xbd");
    expect_sanitized("x\xf0\x9f\x94", "x\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    /* one line: breaks and tabs are spaces, other controls (an ANSI colour, C1's CSI) go */
    expect_sanitized("ERROR:  boom\nDETAIL:\tx\r\n", "ERROR:  boom DETAIL: x");
    expect_sanitized("\x1b[31mred\x1b[0m\x7f\xc2\x9b", "[31mred[0m");
    expect_sanitized("\xc2\xa0nbsp", "\xc2\xa0nbsp");

    /* bounded: never past len, never half a character */
    char small[6];
    assert_int_equal(util_utf8_sanitize(small, sizeof small, "ab\xe2\x82\xac\xe2\x82\xac"), 5);
    assert_string_equal(small, "ab\xe2\x82\xac");
    assert_int_equal(util_utf8_sanitize(small, sizeof small, "abcd\xe9"), 4);
    assert_string_equal(small, "abcd");
    assert_int_equal(util_utf8_sanitize(small, 1, "abc"), 0);
    assert_string_equal(small, "");

    /* Every output of a deterministic stream of random inputs is a valid line of text, and
     * valid text without controls passes unchanged. */
    uint64_t seed = 0x9E3779B97F4A7C15ULL;
    for (int i = 0; i < 20000; i++) {
        unsigned char in[24];
        size_t n = 1 + (size_t)(i % 23);
        for (size_t k = 0; k < n; k++) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            unsigned char b = (unsigned char)(seed >> 56);
            in[k] = b ? b : 'x';
        }
        in[n] = '\0';
        char out[24 * 3 + 1];
        util_utf8_sanitize(out, sizeof out, (const char *)in);
        if (!text_line(out))
            fail_msg("input %d: output is not a line of valid UTF-8 text", i);
        if (text_line((const char *)in) && in[n - 1] != ' ')
            assert_string_equal(out, (const char *)in);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_parse_duration_invalid),
        cmocka_unit_test(test_format_duration),
        cmocka_unit_test(test_parse_time),
        cmocka_unit_test(test_parse_time_invalid),
        cmocka_unit_test(test_format_time),
        cmocka_unit_test(test_uuid4),
        cmocka_unit_test(test_is_uuid),
        cmocka_unit_test(test_read_token_file),
        cmocka_unit_test(test_sha256),
        cmocka_unit_test(test_instance_name),
        cmocka_unit_test(test_utf8_sanitize),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
