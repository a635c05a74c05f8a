/* fuzz_entra_response.c: azure_auth.c's readers of Entra ID's and IMDS's answers (access tokens
 * with expires_on / expires_in, error bodies) on arbitrary bytes, checking each one's contract:
 * a token is never empty, an expiry never negative, a reason never carries the client secret. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "azure_auth_parse.h"
#include "fuzz_common.h"
#include "http.h"
#include "rotor.h"
#include "util.h"

#define FUZZ_SECRET "fuzz-client-secret"
/* 9999-12-31T23:59:59Z twice over: an expires_on, or now plus an expires_in of that many s. */
#define FUZZ_MAX_EXP_MS (2 * 253402300799000LL)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *body = fuzz_strndup(data, size);
    http_response_t res = {.status = 200, .body = body, .body_len = size};

    char reason[AZURE_REASON_LEN] = "";
    char *token = NULL;
    int64_t exp_ms = -1;
    int rc = azure_parse_token(&res, &token, &exp_ms, reason);
    if (rc == 0) {
        /* An expiry past 9999 (plus a lifetime from now) is garbage read as a date. */
        if (!token || !token[0] || exp_ms < 0 || exp_ms > FUZZ_MAX_EXP_MS)
            fuzz_fail("token accepted with an absurd expiry", token);
        free(token);
    } else if (rc != ROTOR_EFAIL || token || !fuzz_reason_ok(reason, sizeof reason)) {
        fuzz_fail("token refused without a UTF-8 reason", reason);
    }

    /* The status and who only show in the reason: one of each per input (from its size). */
    static const long statuses[] = {400, 401, 404, 410, 500};
    res.status = statuses[size % 5];
    memset(reason, 0, sizeof reason);
    azure_parse_error(FUZZ_SECRET, size % 2 ? "managed identity" : "entra id", &res, reason);
    if (!fuzz_reason_ok(reason, sizeof reason) || strstr(reason, FUZZ_SECRET))
        fuzz_fail("error reason not UTF-8 or carrying the secret", reason);
    free(body);
    return 0;
}
