/* test_docs.c: docs/architecture.md shows exactly the engine's transition table and every stage. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rotation.h"
#include "rotor.h"
#include "util.h"

#define DIAGRAM_BEGIN "<!-- state-diagram:begin -->"
#define DIAGRAM_END "<!-- state-diagram:end -->"

/* Reads $ROTOR_SOURCE_DIR/rel whole; the caller frees the result. Fails the test when absent. */
static char *docs_read(const char *rel)
{
    const char *top = getenv("ROTOR_SOURCE_DIR");
    if (!top || !*top)
        fail_msg("ROTOR_SOURCE_DIR is not set (ctest sets it to the source tree)");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", top, rel);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    size_t cap = 1 << 16, len = 0;
    char *buf = util_malloc(cap);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len == 1) {
            cap *= 2;
            char *bigger = realloc(buf, cap);
            if (!bigger)
                abort();
            buf = bigger;
        }
    }
    fclose(f);
    buf[len] = '\0';
    return buf;
}

/* The lines between the markers, minus the ``` fence lines; NULL when a marker is missing. The
 * caller frees the result. */
static char *docs_diagram_block(const char *doc)
{
    const char *begin = strstr(doc, DIAGRAM_BEGIN);
    if (!begin)
        return NULL;
    const char *end = strstr(begin, DIAGRAM_END);
    if (!end)
        return NULL;
    const char *p = strchr(begin, '\n');
    if (!p || p > end)
        return NULL;
    p++;
    char *out = util_malloc((size_t)(end - p) + 1);
    size_t used = 0;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        size_t linelen = eol ? (size_t)(eol - p) + 1 : (size_t)(end - p);
        if (strncmp(p, "```", 3) != 0) {
            memcpy(out + used, p, linelen);
            used += linelen;
        }
        p += linelen;
    }
    out[used] = '\0';
    return out;
}

static void test_state_diagram_matches_the_table(void **state)
{
    (void)state;
    char *doc = docs_read("docs/architecture.md");
    char *block = docs_diagram_block(doc);
    if (!block)
        fail_msg("docs/architecture.md lacks the " DIAGRAM_BEGIN " / " DIAGRAM_END " markers");
    char *want = engine_diagram();
    if (strcmp(block, want) != 0) {
        print_error("docs/architecture.md's state diagram differs from engine_diagram().\n"
                    "Replace the block between the markers with:\n```mermaid\n%s```\n",
                    want);
    }
    assert_string_equal(block, want);
    free(want);
    free(block);
    free(doc);
}

static void test_diagram_block_is_a_mermaid_fence(void **state)
{
    (void)state;
    char *doc = docs_read("docs/architecture.md");
    const char *begin = strstr(doc, DIAGRAM_BEGIN);
    assert_non_null(begin);
    /* GitHub renders the picture only inside a ```mermaid fence right after the marker. */
    const char *line = strchr(begin, '\n');
    assert_non_null(line);
    assert_int_equal(strncmp(line + 1, "```mermaid\n", 11), 0);
    free(doc);
}

static void test_every_stage_is_named(void **state)
{
    (void)state;
    char *doc = docs_read("docs/architecture.md");
    for (int s = 0; s < STAGE__COUNT; s++) {
        char quoted[40];
        snprintf(quoted, sizeof quoted, "`%s`", rotor_stage_name((rotor_stage_t)s));
        if (!strstr(doc, quoted))
            fail_msg("docs/architecture.md never names stage %s", quoted);
    }
    free(doc);
}

/* The extractor itself: a stale picture must be caught, not read as empty and equal. */
static void test_extractor_sees_a_changed_block(void **state)
{
    (void)state;
    const char *doc =
        "x\n" DIAGRAM_BEGIN "\n```mermaid\nstateDiagram-v2\n    a --> b\n```\n" DIAGRAM_END "\n";
    char *block = docs_diagram_block(doc);
    assert_non_null(block);
    assert_string_equal(block, "stateDiagram-v2\n    a --> b\n");
    char *want = engine_diagram();
    assert_string_not_equal(block, want);
    free(want);
    free(block);
    assert_null(docs_diagram_block("no markers here\n"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_state_diagram_matches_the_table),
        cmocka_unit_test(test_diagram_block_is_a_mermaid_fence),
        cmocka_unit_test(test_every_stage_is_named),
        cmocka_unit_test(test_extractor_sees_a_changed_block),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
