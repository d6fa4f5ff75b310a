/*
 * items: turning private-mailbox rows into proto Items (sync and history).
 *
 * The Items point into the PGresult (strings, content bytes), so they are
 * valid only while the result is: build, serialize, reply, all inside the
 * query callback.
 */
#ifndef LOGIC_ITEMS_H
#define LOGIC_ITEMS_H

#include <libpq-fe.h>

#include "mbox.pb-c.h"

/*
 * Fills items[0..n) from rows [first, first + n) of res (MSG_COLS columns
 * found by name) and points ptrs[i] at items[i].
 */
void items_from_rows(const PGresult *res, int first, int n, Mbox__Item *items, Mbox__Item **ptrs);

#endif
