/*
 * table.c: the command table (the seed's RequestMfcMap): command id ->
 * request type, handler, user pointer. A sorted array: filled once at
 * start, then searched with a binary search on every request.
 */
#include <stdlib.h>
#include <string.h>

#include "msg_int.h"


int
zn_msg_table_new(zn_msg_table_t **out)
{
    zn_msg_table_t *t = zn__calloc(1, sizeof(*t));

    if (t == NULL)
        return ZN_ENOMEM;
    *out = t;
    return 0;
}


void
zn_msg_table_free(zn_msg_table_t *t)
{
    if (t == NULL)
        return;
    zn__msg_table_free_owned(t);
    zn__free(t->v);
    zn__free(t);
}


/* The index of the first entry whose cmd is >= cmd. */
static size_t
zn__table_lower(const zn_msg_table_t *t, uint32_t cmd)
{
    size_t lo = 0, hi = t->n, mid;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;
        if (t->v[mid].cmd < cmd)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}


int
zn_msg_table_register(zn_msg_table_t *t, uint32_t cmd,
                      const ProtobufCMessageDescriptor *req,
                      zn_msg_handler_cb cb, void *ud)
{
    zn__msg_entry_t *v;
    size_t i, cap;

    if (t == NULL || req == NULL || cb == NULL || t->frozen)
        return ZN_EINVAL;
    i = zn__table_lower(t, cmd);
    if (i < t->n && t->v[i].cmd == cmd)
        return ZN_EEXIST;
    if (t->n == t->cap) {
        cap = t->cap ? t->cap * 2 : 16;
        if ((v = zn__realloc(t->v, cap * sizeof(*v))) == NULL)
            return ZN_ENOMEM;
        t->v = v;
        t->cap = cap;
    }
    memmove(&t->v[i + 1], &t->v[i], (t->n - i) * sizeof(*t->v));
    t->v[i] = (zn__msg_entry_t){cmd, req, cb, ud, 0};
    t->n++;
    return 0;
}


int
zn_msg_table_set_budget(zn_msg_table_t *t, uint32_t cmd, size_t bytes)
{
    size_t i;

    if (t == NULL || t->frozen)
        return ZN_EINVAL;
    i = zn__table_lower(t, cmd);
    if (i == t->n || t->v[i].cmd != cmd)
        return ZN_ENOENT;
    t->v[i].budget = bytes;
    return 0;
}


void
zn__msg_table_unregister(zn_msg_table_t *t, uint32_t cmd)
{
    size_t i = zn__table_lower(t, cmd);

    if (i == t->n || t->v[i].cmd != cmd)
        return;
    memmove(&t->v[i], &t->v[i + 1], (t->n - i - 1) * sizeof(*t->v));
    t->n--;
}


const zn__msg_entry_t *
zn__msg_table_find(const zn_msg_table_t *t, uint32_t cmd)
{
    size_t i = zn__table_lower(t, cmd);

    return i < t->n && t->v[i].cmd == cmd ? &t->v[i] : NULL;
}
