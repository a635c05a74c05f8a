/* deploy_kubernetes_parse.h: the pure part of deploy_kubernetes.c, judging the API server's
 * answers (Status errors, Deployments, Endpoints with their pods, Services) without a request or
 * a loop, so that tests/fuzz/fuzz_kubernetes_response.c can feed them arbitrary bytes. Internal
 * to the kubernetes deploy driver. Every json_t is borrowed; none is kept. */
#ifndef ROTOR_DEPLOY_KUBERNETES_PARSE_H
#define ROTOR_DEPLOY_KUBERNETES_PARSE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "http.h"

/* The API server's Status (kind, code, reason, message) as "kubernetes: <status> <reason>:
 * <message>", else "kubernetes: <method> <path>: HTTP <status>", into out (caller-owned, len
 * bytes). res->body is NUL-terminated, as http.c delivers it. */
void k8s_status_reason(const char *method, const char *path, const http_response_t *res, char *out,
                       size_t len);

/* A Deployment as kubectl's DeploymentStatusViewer sees it: 1 rolled out, 0 not yet, -1 past its
 * progress deadline. */
int k8s_rollout_state(const json_t *dep);

/* A Deployment whose controller has seen its latest spec and that has no pods left. */
bool k8s_scaled_down(const json_t *dep);

/* Every ready address of the Endpoints ep is a pod of the list pods (by targetRef name, else by
 * IP), and there is at least one. */
bool k8s_endpoints_serve_slot(const json_t *ep, const json_t *pods);

/* The slot (rotor_slot_t) a Service's spec.selector[label] names, or -1. */
int k8s_observed_slot(const json_t *svc, const char *label);

#endif
