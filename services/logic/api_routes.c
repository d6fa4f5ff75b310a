/*
 * api_routes: which handler serves which method and path on each listener
 * (SPEC section 5).
 */
#include "api.h"
#include "fanout.h"

const struct http_route logic_sdk_routes[] = {
    {HTTP_POST, "/v1/sync", api_sync},   {HTTP_GET, "/v1/history", api_history},
    {HTTP_POST, "/v1/read", api_read},   {HTTP_GET | HTTP_HEAD, "/healthz", api_healthz},
    {HTTP_GET, "/metrics", api_metrics},
};
const size_t logic_sdk_nroutes = sizeof(logic_sdk_routes) / sizeof(logic_sdk_routes[0]);

const struct http_route logic_internal_routes[] = {
    {HTTP_POST, "/v1/tokens", api_tokens},
    {HTTP_POST, "/v1/messages", api_send},
    {HTTP_POST, "/v1/messages/recall", api_recall},
    {HTTP_POST, "/v1/fanout", api_fanout},
    {HTTP_GET | HTTP_HEAD, "/healthz", api_healthz},
    {HTTP_GET, "/metrics", api_metrics},
};
const size_t logic_internal_nroutes =
    sizeof(logic_internal_routes) / sizeof(logic_internal_routes[0]);
