/*
 * budget: a protobuf-c allocator with a byte budget, for unpacking
 * untrusted input. protobuf-c has no limit of its own: a small message can
 * declare large repeated fields and make it allocate far more than its size.
 * Once the budget is spent every allocation fails and the unpack returns
 * NULL, which the caller reports as 400/413.
 */
#ifndef MBOX_BUDGET_H
#define MBOX_BUDGET_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

struct budget {
    ProtobufCAllocator alloc; /* pass &b.alloc to protobuf-c */
    size_t limit;
    size_t used; /* bytes now allocated, with a small header per block; 0 once all freed */
};

/* Prepares b with a limit in bytes. */
void budget_init(struct budget *b, size_t limit);

#endif
