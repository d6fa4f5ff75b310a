/*
 * fuzz_console_name: console_file_type (services/logic/console_name.c),
 * the check of the {file} segment of /console/{file}, on arbitrary bytes
 * cut at the first NUL as a decoded path parameter would be.
 *
 * Properties checked: no crash or sanitizer report; an accepted name is
 * 1..CONSOLE_MAX_NAME bytes, holds no '/', '\\', NUL-free by construction,
 * never starts with '.' (so never "..", never a hidden file) and ends in
 * an extension of the table; a longer input is never read past
 * CONSOLE_MAX_NAME + 1 bytes (strnlen).
 */
#include "console.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    const char *type = console_file_type(s);
    if (type != NULL) {
        size_t len = strlen(s);
        if (len == 0 || len > CONSOLE_MAX_NAME || s[0] == '.' || strchr(s, '/') != NULL ||
            strchr(s, '\\') != NULL || strstr(s, "..") == s || strchr(s, '.') == NULL)
            abort();
    }
    free(s);
    return 0;
}
