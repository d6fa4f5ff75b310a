/*
 * items: message rows to Items (items.h).
 */
#include "items.h"

#include "pg.h"

/* Column numbers of MSG_COLS in a result, looked up once per result. */
struct msg_cols {
    int msg_id, kind, from_uid, to_uid, contacter, create_time, expire_at, is_read, category, type,
        priority, business_type, msgkey, content, recalled_msg_id;
};

static void
find_cols(const PGresult *res, struct msg_cols *c)
{
    c->msg_id = pg_col(res, "msg_id");
    c->kind = pg_col(res, "kind");
    c->from_uid = pg_col(res, "from_uid");
    c->to_uid = pg_col(res, "to_uid");
    c->contacter = pg_col(res, "contacter");
    c->create_time = pg_col(res, "create_time");
    c->expire_at = pg_col(res, "expire_at");
    c->is_read = pg_col(res, "is_read");
    c->category = pg_col(res, "category");
    c->type = pg_col(res, "type");
    c->priority = pg_col(res, "priority");
    c->business_type = pg_col(res, "business_type");
    c->msgkey = pg_col(res, "msgkey");
    c->content = pg_col(res, "content");
    c->recalled_msg_id = pg_col(res, "recalled_msg_id");
}

#define SET_U64(it, f, row, col)                                                                   \
    do {                                                                                           \
        (it)->has_##f = 1;                                                                         \
        (it)->f = (uint64_t)pg_get_i64(res, row, col);                                             \
    } while (0)
#define SET_I32(it, f, row, col)                                                                   \
    do {                                                                                           \
        (it)->has_##f = 1;                                                                         \
        (it)->f = (int32_t)pg_get_i64(res, row, col);                                              \
    } while (0)

void
items_from_rows(const PGresult *res, int first, int n, Mbox__Item *items, Mbox__Item **ptrs)
{
    struct msg_cols c;
    find_cols(res, &c);
    for (int i = 0; i < n; i++) {
        int row = first + i;
        Mbox__Item *it = &items[i];
        mbox__item__init(it);
        ptrs[i] = it;
        SET_U64(it, msg_id, row, c.msg_id);
        if (pg_get_i64(res, row, c.kind) == 1) {
            it->kind = "recall";
            SET_U64(it, recalled_msg_id, row, c.recalled_msg_id);
            continue;
        }
        it->kind = "message";
        SET_U64(it, from_uid, row, c.from_uid);
        SET_U64(it, to_uid, row, c.to_uid);
        SET_U64(it, contacter, row, c.contacter);
        SET_U64(it, create_time, row, c.create_time);
        SET_U64(it, expire_at, row, c.expire_at);
        it->has_is_read = 1;
        it->is_read = pg_get_bool(res, row, c.is_read);
        SET_I32(it, category, row, c.category);
        SET_I32(it, type, row, c.type);
        SET_I32(it, priority, row, c.priority);
        SET_I32(it, business_type, row, c.business_type);
        if (!pg_is_null(res, row, c.msgkey)) {
            size_t len;
            /* libpq NUL-terminates every value, binary ones included. */
            it->msgkey = (char *)pg_get_bytes(res, row, c.msgkey, &len);
        }
        size_t clen;
        it->has_content = 1;
        it->content.data = (uint8_t *)pg_get_bytes(res, row, c.content, &clen);
        it->content.len = clen;
    }
}
