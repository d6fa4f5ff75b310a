/*
 * api: logicd's HTTP handlers and the two route tables. Each handler gets
 * its struct logic_worker as ctx and finishes the request exactly once
 * (lib/http.h), possibly later from a database or Redis callback.
 */
#ifndef LOGIC_API_H
#define LOGIC_API_H

#include <stddef.h>
#include <stdint.h>

#include "http.h"

extern const struct http_route logic_sdk_routes[];
extern const size_t logic_sdk_nroutes;
/* The health routes that end logic_sdk_routes, served only with sdk_health. */
#define LOGIC_SDK_HEALTH_ROUTES 4
extern const struct http_route logic_internal_routes[];
extern const size_t logic_internal_nroutes;

/* api_send.c (internal listener, server key) */
void api_tokens(struct http_req *r, void *ctx);
void api_send(struct http_req *r, void *ctx);
void api_recall(struct http_req *r, void *ctx);

/* api_sync.c (SDK listener, user token) */
void api_sync(struct http_req *r, void *ctx);
void api_history(struct http_req *r, void *ctx);
void api_read(struct http_req *r, void *ctx);

/* api_sync.c: SDK side of the public mailbox */
void api_notice_hide(struct http_req *r, void *ctx);

struct logic_worker;
/*
 * api_sync.c: frees the worker's spare pull states (kept for reuse by the
 * next sync). Call after the worker's clients are freed: their pending
 * callbacks may still finish pulls.
 */
void api_pull_spares_free(struct logic_worker *w);

/* api_notices.c (internal listener, ops token) */
void api_notice_create(struct http_req *r, void *ctx);
void api_notice_list(struct http_req *r, void *ctx);
void api_notice_get(struct http_req *r, void *ctx);
void api_notice_patch(struct http_req *r, void *ctx);
void api_notice_prepublish(struct http_req *r, void *ctx);
void api_notice_publish(struct http_req *r, void *ctx);
void api_notice_stop(struct http_req *r, void *ctx);
void api_notice_retract(struct http_req *r, void *ctx);
void api_notice_delete(struct http_req *r, void *ctx);
void api_notice_stats(struct http_req *r, void *ctx);
void api_whitelist(struct http_req *r, void *ctx);
void api_audit(struct http_req *r, void *ctx);

/* Counts one delivery of a notice to a user (Redis HyperLogLog, fire and forget). */
void api_notice_count_reach(struct logic_worker *w, uint64_t notice_id, uint64_t app_id,
                            uint64_t uid);

/* api_health.c */
void api_healthz(struct http_req *r, void *ctx);
void api_livez(struct http_req *r, void *ctx);
void api_readyz(struct http_req *r, void *ctx);
void api_metrics(struct http_req *r, void *ctx);

#endif
