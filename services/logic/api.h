/*
 * api: logicd's HTTP handlers and the two route tables. Each handler gets
 * its struct logic_worker as ctx and finishes the request exactly once
 * (lib/http.h), possibly later from a database or Redis callback.
 */
#ifndef LOGIC_API_H
#define LOGIC_API_H

#include <stddef.h>

#include "http.h"

extern const struct http_route logic_sdk_routes[];
extern const size_t logic_sdk_nroutes;
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

/* api_health.c */
void api_healthz(struct http_req *r, void *ctx);
void api_metrics(struct http_req *r, void *ctx);

#endif
