/*
 * console_name: which file names the console serves (console.h), apart
 * from console.c so that the fuzz target links it alone.
 */
#include <string.h>

#include "console.h"

const char *
console_file_type(const char *name)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        {".html", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".svg", "image/svg+xml"},
        {".png", "image/png"},
        {".ico", "image/x-icon"},
        {".json", "application/json"},
    };
    size_t len = strnlen(name, CONSOLE_MAX_NAME + 1);
    if (len == 0 || len > CONSOLE_MAX_NAME ||
        strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != len ||
        name[0] == '.' || name[0] == '-' || name[0] == '_')
        return NULL;
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot != NULL && i < sizeof(types) / sizeof(types[0]); i++) {
        if (strcmp(dot, types[i].ext) == 0)
            return types[i].type;
    }
    return NULL;
}
