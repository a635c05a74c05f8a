/* store_keyvault_parse.h: the pure part of store_keyvault.c, reading Key Vault's answers (error
 * bodies, secret bundles, version lists, the 401 challenge) without a request or a loop, so that
 * tests/fuzz/fuzz_keyvault_response.c can feed them arbitrary bytes. Internal to the azure-keyvault
 * store: nothing else should call these. res->body is NUL-terminated, as http.c delivers it. */
#ifndef ROTOR_STORE_KEYVAULT_PARSE_H
#define ROTOR_STORE_KEYVAULT_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http.h"
#include "secret.h"

/* "Key Vault: CODE: message" from Key Vault's error body, else "Key Vault: HTTP <status>", into
 * buf (caller-owned, len bytes, always terminated). Never quotes a request body. */
void kv_answer_error(const http_response_t *res, char *buf, size_t len);

/* True when the error body's innererror code is SecretDisabled (a 403 on a disabled version). */
bool kv_answer_disabled(const http_response_t *res);

/* A secret bundle {id, value, ...}: the version id (the last segment of id, 1-64 letters or
 * digits) into version (caller-owned, versionlen bytes); with value non-NULL, the value too, as a
 * new secret the caller frees with secret_free. Returns 0, or ROTOR_ESTORE (malformed bundle:
 * nothing written to *value). jansson's copy of the value is wiped before it is freed. */
int kv_answer_bundle(const http_response_t *res, char *version, size_t versionlen,
                     rotor_secret_t **value);

/* One page of a version list {value: [{id, attributes: {enabled, created}, tags}], nextLink}:
 * the newest enabled version tagged rotation=rotation_id so far replaces version (caller-owned,
 * versionlen bytes, "" before the first page) and *best_created. *next_link is the next page's
 * URL (caller frees) or NULL at the end. vault_url (no trailing slash) is borrowed. Returns 0, or
 * ROTOR_ESTORE when nextLink points outside vault_url (*next_link NULL: our token would follow). */
int kv_answer_list(const http_response_t *res, const char *rotation_id, const char *vault_url,
                   char *version, size_t versionlen, int64_t *best_created, char **next_link);

/* A 401's WWW-Authenticate (www, may be NULL) read against the vault's lower-case host: on 0,
 * *tenant_out and *scope_out are new strings the caller frees; on ROTOR_ESTORE both are NULL and
 * reason (caller-owned, reasonlen bytes) says why, naming method and name (borrowed). */
int kv_answer_challenge(const char *www, const char *vault_host, const char *method,
                        const char *name, char **tenant_out, char **scope_out, char *reason,
                        size_t reasonlen);

#endif
