/*
 * fuzz_cursor: cursor_decode on arbitrary bytes.
 *
 * Properties checked: no crash or sanitizer report; the empty cursor is
 * {current_epoch, 0, 0} without attributes; any other cursor that decodes
 * re-encodes to exactly the input (one spelling per value, in both
 * versions), and carries attributes exactly when it is a version-2 cursor
 * (51 characters; version 1 has 34).
 */
#include "cursor.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_EPOCH 0x01020304u

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';

    struct cursor c;
    if (cursor_decode(s, FUZZ_EPOCH, &c) == CURSOR_OK) {
        if (s[0] == '\0') {
            if (c.epoch != FUZZ_EPOCH || c.p != 0 || c.g != 0 || c.has_attrs)
                abort();
        } else {
            size_t len = strlen(s);
            if (len != (c.has_attrs ? 51u : 34u))
                abort();
            char again[CURSOR_STR_LEN];
            cursor_encode(&c, again);
            if (strcmp(again, s) != 0)
                abort();
        }
    } else if (s[0] == '\0') {
        abort();
    }
    free(s);
    return 0;
}
