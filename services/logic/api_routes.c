/*
 * api_routes: which handler serves which method and path on each listener
 * (docs/design.md section 5; every route in docs/api.md).
 */
#include "api.h"
#include "console.h"
#include "fanout.h"

const struct http_route logic_sdk_routes[] = {
    {HTTP_POST, "/v1/sync", api_sync},
    {HTTP_GET, "/v1/history", api_history},
    {HTTP_POST, "/v1/read", api_read},
    {HTTP_POST, "/v1/notices/{id}/hide", api_notice_hide},
    /* Last (LOGIC_SDK_HEALTH_ROUTES of them), and served only with
     * sdk_health (worker.c): the SDK listener faces users, and the
     * dependency report is for operators. */
    {HTTP_GET | HTTP_HEAD, "/healthz", api_healthz},
    {HTTP_GET | HTTP_HEAD, "/livez", api_livez},
    {HTTP_GET | HTTP_HEAD, "/readyz", api_readyz},
    {HTTP_GET, "/metrics", api_metrics},
};
const size_t logic_sdk_nroutes = sizeof(logic_sdk_routes) / sizeof(logic_sdk_routes[0]);

const struct http_route logic_internal_routes[] = {
    {HTTP_POST, "/v1/tokens", api_tokens},
    {HTTP_POST, "/v1/messages", api_send},
    {HTTP_POST, "/v1/messages/recall", api_recall},
    {HTTP_POST, "/v1/fanout", api_fanout},
    {HTTP_POST, "/v1/notices", api_notice_create},
    {HTTP_GET, "/v1/notices", api_notice_list},
    {HTTP_GET, "/v1/notices/{id}", api_notice_get},
    {HTTP_PATCH, "/v1/notices/{id}", api_notice_patch},
    {HTTP_DELETE, "/v1/notices/{id}", api_notice_delete},
    {HTTP_POST, "/v1/notices/{id}/prepublish", api_notice_prepublish},
    {HTTP_POST, "/v1/notices/{id}/publish", api_notice_publish},
    {HTTP_POST, "/v1/notices/{id}/stop", api_notice_stop},
    {HTTP_POST, "/v1/notices/{id}/retract", api_notice_retract},
    {HTTP_GET, "/v1/notices/{id}/stats", api_notice_stats},
    {HTTP_GET | HTTP_POST | HTTP_PUT | HTTP_DELETE, "/v1/whitelist", api_whitelist},
    {HTTP_GET, "/v1/audit", api_audit},
    {HTTP_GET, "/v1/whoami", api_whoami},
    {HTTP_GET | HTTP_HEAD, "/console", api_console},
    {HTTP_GET | HTTP_HEAD, "/console/", api_console},
    {HTTP_GET | HTTP_HEAD, "/console/{file}", api_console},
    {HTTP_GET | HTTP_HEAD, "/healthz", api_healthz},
    {HTTP_GET | HTTP_HEAD, "/livez", api_livez},
    {HTTP_GET | HTTP_HEAD, "/readyz", api_readyz},
    {HTTP_GET, "/metrics", api_metrics},
};
const size_t logic_internal_nroutes =
    sizeof(logic_internal_routes) / sizeof(logic_internal_routes[0]);
