/* fuzz_duration.c: util_parse_duration and util_parse_time on arbitrary text; whatever parses
 * must survive a round trip through the matching formatter. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rotor.h"
#include "util.h"

static void check_duration(const char *text)
{
    uint64_t ms = 0;
    int rc = util_parse_duration(text, &ms);
    if (rc != 0) {
        if (rc != ROTOR_EINVALID)
            abort();
        return;
    }
    char buf[32];
    uint64_t again = 0;
    util_format_duration(ms, buf, sizeof buf);
    if (util_parse_duration(buf, &again) != 0 || again != ms)
        abort();
}

static void check_time(const char *text)
{
    int64_t ms = 0;
    int rc = util_parse_time(text, &ms);
    if (rc != 0) {
        if (rc != ROTOR_EINVALID)
            abort();
        return;
    }
    char buf[64];
    int64_t again = 0;
    util_format_time(ms, buf, sizeof buf);
    if (util_parse_time(buf, &again) != 0 || again != ms)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy: a parser that reads past the terminator is caught by ASan. */
    char *text = util_malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    check_duration(text);
    check_time(text);
    free(text);
    return 0;
}
