/*
 * budget: a byte-budgeted protobuf-c allocator (see budget.h).
 *
 * Every block carries a small header recording its size, so free can give
 * the bytes back: `used` is the number of bytes currently allocated
 * through the budget, headers included. protobuf-c's unpack only allocates
 * while it parses (it frees only on failure or in free_unpacked), so for an
 * unpack the live total is also the peak, and a message whose unpacked form
 * would exceed the limit fails with NULL however small its wire form is.
 */
#include "budget.h"

#include <stdalign.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* Header before each block: big enough for any alignment malloc gives. */
#define BUDGET_HDR ((size_t)alignof(max_align_t))

_Static_assert(alignof(max_align_t) >= sizeof(size_t), "header must hold a size_t");

/* Allocates size bytes if the budget allows, else returns NULL. */
static void *
budget_alloc(void *data, size_t size)
{
    struct budget *b = data;
    if (size > SIZE_MAX - BUDGET_HDR)
        return NULL;
    size_t total = size + BUDGET_HDR;
    if (b->used > b->limit || total > b->limit - b->used)
        return NULL;
    unsigned char *p = malloc(total);
    if (p == NULL)
        return NULL;
    *(size_t *)(void *)p = total;
    b->used += total;
    return p + BUDGET_HDR;
}

/* Frees a block from budget_alloc and returns its bytes to the budget. */
static void
budget_free(void *data, void *ptr)
{
    struct budget *b = data;
    if (ptr == NULL)
        return;
    unsigned char *p = (unsigned char *)ptr - BUDGET_HDR;
    size_t total = *(size_t *)(void *)p;
    b->used = total <= b->used ? b->used - total : 0;
    free(p);
}

void
budget_init(struct budget *b, size_t limit)
{
    b->alloc.alloc = budget_alloc;
    b->alloc.free = budget_free;
    b->alloc.allocator_data = b;
    b->limit = limit;
    b->used = 0;
}
