/* azure_auth_parse.h: the pure part of azure_auth.c, reading the answers of Entra ID's token
 * endpoint and of IMDS (workload identity and managed identity share their shape) without a
 * credential or a loop, so that tests/fuzz/fuzz_entra_response.c can feed them arbitrary bytes.
 * Internal to azure_auth.c. res->body is NUL-terminated, as http.c delivers it. */
#ifndef ROTOR_AZURE_AUTH_PARSE_H
#define ROTOR_AZURE_AUTH_PARSE_H

#include <stdint.h>

#include "http.h"

#define AZURE_REASON_LEN 512

/* A 2xx token answer {access_token, expires_on | expires_in}: on 0, *token is a new string the
 * caller wipes and frees and *exp_ms the expiry in epoch ms; else ROTOR_EFAIL with reason
 * (caller-owned, AZURE_REASON_LEN bytes) and *token untouched. jansson's copy of the token is
 * wiped before it is freed. */
int azure_parse_token(const http_response_t *res, char **token, int64_t *exp_ms, char *reason);

/* An error answer, {error, error_description} or {error: {code, message}}, as
 * "<who>: HTTP <status>: <code>: <description>" into reason (caller-owned, AZURE_REASON_LEN
 * bytes), with every occurrence of secret (borrowed, may be NULL) masked. */
void azure_parse_error(const char *secret, const char *who, const http_response_t *res,
                       char *reason);

#endif
