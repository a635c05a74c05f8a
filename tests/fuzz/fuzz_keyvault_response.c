/* fuzz_keyvault_response.c: the azure-keyvault store's readers of Key Vault's answers (error
 * bodies, secret bundles, version-list pages, the 401 challenge, Retry-After) on arbitrary
 * bytes, checking each one's contract. Input: "WWW-Authenticate value\n\nbody", or a body alone
 * (then also read as the header). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fuzz_common.h"
#include "http.h"
#include "rotor.h"
#include "secret.h"
#include "store_keyvault_parse.h"
#include "util.h"

#define FUZZ_VAULT "https://myvault.vault.azure.net"
#define FUZZ_HOST "myvault.vault.azure.net"

static bool version_ok(const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
            return false;
    }
    return true;
}

static void check_body(const http_response_t *res)
{
    char buf[400];
    kv_answer_error(res, buf, sizeof buf);
    if (strncmp(buf, "Key Vault: ", 11) != 0 || !fuzz_reason_ok(buf, sizeof buf))
        fuzz_fail("error reason not UTF-8", buf);
    (void)kv_answer_disabled(res);

    /* With a value: the path without one only skips the value check. */
    char version[65] = "";
    rotor_secret_t *value = NULL;
    int rc = kv_answer_bundle(res, version, sizeof version, &value);
    if (rc == 0 && !version_ok(version))
        abort();
    if (rc < 0 && (rc != ROTOR_ESTORE || value))
        abort();
    secret_free(value);

    char best[65] = "";
    int64_t created = 0;
    char *next = (char *)"unset";
    rc = kv_answer_list(res, "r-1", FUZZ_VAULT, best, sizeof best, &created, &next);
    if (rc < 0 && (rc != ROTOR_ESTORE || next))
        abort();
    if (best[0] && !version_ok(best))
        abort();
    /* The next page gets the token: only this vault's own URLs may come back. */
    if (next &&
        (strncasecmp(next, FUZZ_VAULT "/", strlen(FUZZ_VAULT "/")) != 0 || strpbrk(next, " \r\n")))
        abort();
    free(next);
}

static void check_challenge(const char *www)
{
    char reason[512] = "";
    char *tenant = (char *)"unset", *scope = (char *)"unset";
    int rc = kv_answer_challenge(www, FUZZ_HOST, "PUT", "db-password", &tenant, &scope, reason,
                                 sizeof reason);
    if (rc == 0) {
        if (!tenant || !tenant[0] || !scope)
            abort();
        free(tenant);
        free(scope);
        return;
    }
    if (rc != ROTOR_ESTORE || tenant || scope || !fuzz_reason_ok(reason, sizeof reason))
        fuzz_fail("challenge refused without a UTF-8 reason", reason);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *head;
    size_t off = fuzz_split(data, size, &head);
    char *body = fuzz_strndup(data + off, size - off);
    char *www = head ? head : fuzz_strndup(data, size);

    /* The status only shows in reasons: one per input (from its size) keeps the target fast. */
    static const long statuses[] = {200, 403, 404, 429, 500};
    http_response_t res = {.status = statuses[size % 5],
                           .body = body,
                           .body_len = size - off,
                           .www_authenticate = www};
    check_body(&res);
    check_challenge(www);
    check_challenge(NULL);

    /* Retry-After in each of its three headers: a server's wish, never a negative wait. */
    http_response_t ra = {.status = 429, .retry_after = www};
    (void)http_retry_after_ms(&ra, 1764720000000);
    ra = (http_response_t){.status = 429, .retry_after_ms = www};
    (void)http_retry_after_ms(&ra, 1764720000000);
    ra = (http_response_t){.status = 503, .x_ms_retry_after_ms = www};
    (void)http_retry_after_ms(&ra, 1764720000000);

    free(body);
    free(www);
    return 0;
}
