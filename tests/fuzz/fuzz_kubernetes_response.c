/* fuzz_kubernetes_response.c: the kubernetes deploy driver's judges of the API server's answers
 * (Status errors, Deployment rollout and scale-down, Endpoints against the slot's pods, the
 * Service's selector) on arbitrary bytes. Input: one JSON document, or two separated by
 * "\n\n" (an Endpoints object, then the pod list it is judged against). */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deploy_kubernetes_parse.h"
#include "fuzz_common.h"
#include "http.h"
#include "rotor.h"
#include "util.h"

/* As k8s_on_http reads a 2xx answer: a JSON object, or nothing. */
static json_t *load_object(const char *s, size_t n)
{
    json_t *o = json_loadb(s, n, 0, NULL);
    if (!json_is_object(o)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *body = fuzz_strndup(data, size);
    /* The status only shows in the reason: one per input (from its size). */
    static const long statuses[] = {403, 404, 409, 422, 500};
    http_response_t res = {.status = statuses[size % 5], .body = body, .body_len = size};
    char out[512];
    k8s_status_reason("PATCH", "/apis/apps/v1/namespaces/ns/deployments/app-blue", &res, out,
                      sizeof out);
    if (strncmp(out, "kubernetes: ", 12) != 0 || !fuzz_reason_ok(out, sizeof out))
        fuzz_fail("status reason not UTF-8", out);

    json_t *o = load_object(body, size);
    if (o) {
        int state = k8s_rollout_state(o);
        if (state < -1 || state > 1)
            abort();
        (void)k8s_scaled_down(o);
        int slot = k8s_observed_slot(o, "slot");
        if (slot != -1 && slot != SLOT_BLUE && slot != SLOT_GREEN)
            abort();
        (void)k8s_endpoints_serve_slot(o, o);
        json_decref(o);
    }

    char *head;
    size_t off = fuzz_split(data, size, &head);
    if (head) {
        json_t *ep = load_object(head, off - 2), *pods = load_object(body + off, size - off);
        if (ep && pods)
            (void)k8s_endpoints_serve_slot(ep, pods);
        json_decref(ep);
        json_decref(pods);
        free(head);
    }
    free(body);
    return 0;
}
