/*
 * idmap.h: a hash map from connection id to connection, for a server's
 * lookup by id. Open addressing with linear probing; deletion shifts the
 * following entries back, so there are no tombstones and lookups stay
 * short. Ids are never 0 (0 marks a free slot). Not thread-safe: the
 * server guards it with a mutex.
 */
#ifndef ZNET_IDMAP_H
#define ZNET_IDMAP_H

#include <stddef.h>
#include <stdint.h>

#include "internal.h"

typedef struct {
    uint64_t id;
    void *val;
} zn__idmap_slot_t;

typedef struct {
    zn__idmap_slot_t *slots;
    size_t cap;   /* a power of two, or 0 */
    size_t n;
} zn__idmap_t;


static inline size_t
zn__idmap_hash(uint64_t id, size_t cap)
{
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdULL;
    id ^= id >> 33;
    return (size_t)id & (cap - 1);
}


static inline void *
zn__idmap_get(const zn__idmap_t *m, uint64_t id)
{
    size_t i;

    if (m->cap == 0)
        return NULL;
    for (i = zn__idmap_hash(id, m->cap); m->slots[i].id != 0;
         i = (i + 1) & (m->cap - 1))
        if (m->slots[i].id == id)
            return m->slots[i].val;
    return NULL;
}


static inline void
zn__idmap_place(zn__idmap_slot_t *slots, size_t cap, uint64_t id, void *val)
{
    size_t i = zn__idmap_hash(id, cap);

    while (slots[i].id != 0)
        i = (i + 1) & (cap - 1);
    slots[i].id = id;
    slots[i].val = val;
}


/* Inserts a new id (not present). Grows at 3/4 load: linear probing stays
 * short there, and every idle connection pays for its slot. Returns 0 or
 * ZN_ENOMEM. */
static inline int
zn__idmap_put(zn__idmap_t *m, uint64_t id, void *val)
{
    zn__idmap_slot_t *slots;
    size_t cap, i;

    if ((m->n + 1) * 4 > m->cap * 3) {
        cap = m->cap ? m->cap * 2 : 64;
        slots = zn__calloc(cap, sizeof(*slots));
        if (slots == NULL)
            return ZN_ENOMEM;
        for (i = 0; i < m->cap; i++)
            if (m->slots[i].id != 0)
                zn__idmap_place(slots, cap, m->slots[i].id, m->slots[i].val);
        zn__free(m->slots);
        m->slots = slots;
        m->cap = cap;
    }
    zn__idmap_place(m->slots, m->cap, id, val);
    m->n++;
    return 0;
}


/* Removes an id if present; moves back the entries of its probe run. */
static inline void
zn__idmap_del(zn__idmap_t *m, uint64_t id)
{
    size_t i, j, k, mask = m->cap - 1;

    if (m->cap == 0)
        return;
    for (i = zn__idmap_hash(id, m->cap); m->slots[i].id != id;
         i = (i + 1) & mask)
        if (m->slots[i].id == 0)
            return;
    m->n--;
    for (j = (i + 1) & mask; m->slots[j].id != 0; j = (j + 1) & mask) {
        k = zn__idmap_hash(m->slots[j].id, m->cap);
        /* Move j back to i unless its home k lies cyclically in (i, j]. */
        if ((i < j) ? (k <= i || k > j) : (k <= i && k > j)) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    m->slots[i].id = 0;
    m->slots[i].val = NULL;
}

#endif /* ZNET_IDMAP_H */
