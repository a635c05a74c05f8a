/* azure_auth.h: Microsoft Entra ID access tokens as DefaultAzureCredential finds them (prefix
 * azure_): environment (client secret), AKS workload identity (federated token file, re-read on
 * every exchange as the kubelet rotates it), managed identity (IMDS). Tokens are cached per scope
 * until shortly before they expire, with one refresh in flight per scope however many requests
 * wait for it. */
#ifndef ROTOR_AZURE_AUTH_H
#define ROTOR_AZURE_AUTH_H

#include <stdint.h>
#include <uv.h>

#include "http.h"

typedef struct azure_cred_s azure_cred_t;

typedef enum { AZURE_CRED_ENV = 0, AZURE_CRED_WORKLOAD, AZURE_CRED_IMDS } azure_cred_kind_t;

/* Where credentials come from. Any NULL field is read from the environment variable of the same
 * meaning (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, AZURE_FEDERATED_TOKEN_FILE,
 * AZURE_AUTHORITY_HOST; the IMDS endpoint defaults to http://169.254.169.254 and can be set by
 * AZURE_IMDS_ENDPOINT for tests). All strings are copied. */
typedef struct {
    const char *tenant_id;
    const char *client_id;
    const char *client_secret;
    const char *federated_token_file;
    const char *authority_host; /* default https://login.microsoftonline.com */
    const char *imds_endpoint;
    const char *ca_file;      /* CA bundle for the token endpoints; NULL = system */
    uint64_t imds_backoff_ms; /* first IMDS retry delay (doubling, more after a 410); 0 = 1 s */
} azure_cred_opts_t;

/* Picks the first usable credential in DefaultAzureCredential's order: environment (tenant,
 * client id and secret all set), workload identity (token file, client id and tenant set), else
 * managed identity. h is borrowed. Returns 0 and *out, or ROTOR_ECONFIG with err. */
int azure_cred_new(uv_loop_t *loop, http_t *h, const azure_cred_opts_t *opts, azure_cred_t **out,
                   char *err, size_t errlen);

azure_cred_kind_t azure_cred_kind(const azure_cred_t *c);

/* token: borrowed during the callback. status 0, or negative with reason. */
typedef void (*azure_token_cb)(void *arg, int status, const char *token, int64_t expires_on_ms,
                               const char *reason);

/* Gets a token for scope (e.g. "https://vault.azure.net/.default"); tenant overrides the
 * configured tenant when a Key Vault challenge names one (NULL = configured). Calls cb exactly
 * once, later (from the cache too), or returns a negative error without calling it. */
int azure_token(azure_cred_t *c, const char *scope, const char *tenant, azure_token_cb cb,
                void *arg);

/* Drops the cached token of scope (a 401 said it is no longer good). */
void azure_token_invalidate(azure_cred_t *c, const char *scope);

/* Pending requests complete with ROTOR_ECANCELED; memory is freed. */
void azure_cred_free(azure_cred_t *c);

#endif
