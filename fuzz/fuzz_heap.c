/*
 * fuzz_heap.c: the timer heap (src/heap.h) under a program of inserts,
 * removals of any node and pops of the minimum. After each operation the
 * tree must be a complete binary tree of the right size, every child
 * must be ordered after its parent (due time, then start order), every
 * parent link must match, and the minimum must be the smallest active
 * timer.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "heap.h"

#define NTIMERS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


/* Walks the tree; returns the node count, aborts on a broken link or
 * order. */
static size_t
walk(const zn_timer_t *t, const zn_timer_t *parent)
{
    if (t == NULL)
        return 0;
    if (t->node.parent != parent || !t->active)
        abort();
    if (parent != NULL && zn__heap_less(t, parent))
        abort();
    return 1 + walk(t->node.left, t) + walk(t->node.right, t);
}


static void
check(const zn__heap_t *h, const zn_timer_t *ts)
{
    const zn_timer_t *min = NULL;
    size_t i, active = 0;

    if (walk(h->min, NULL) != h->n)
        abort();
    for (i = 0; i < NTIMERS; i++) {
        if (!ts[i].active)
            continue;
        active++;
        if (min == NULL || zn__heap_less(&ts[i], min))
            min = &ts[i];
    }
    if (active != h->n || h->min != min)
        abort();
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    zn_timer_t ts[NTIMERS];
    zn__heap_t h = {NULL, 0};
    uint64_t order = 0;
    size_t i;
    zn_timer_t *t;

    memset(ts, 0, sizeof(ts));
    for (i = 0; i + 1 < size; i += 2) {
        t = &ts[data[i] % NTIMERS];
        switch (data[i] >> 6) {
        case 0: /* pop the minimum */
            if (h.min != NULL) {
                t = h.min;
                zn__heap_remove(&h, t);
                t->active = 0;
            }
            break;
        case 1: /* remove any node */
            if (t->active) {
                zn__heap_remove(&h, t);
                t->active = 0;
            }
            break;
        default: /* insert (few distinct due times: many ties) */
            if (!t->active) {
                t->due = data[i + 1] % 16;
                t->order = order++;
                zn__heap_insert(&h, t);
                t->active = 1;
            }
            break;
        }
        check(&h, ts);
    }
    return 0;
}
