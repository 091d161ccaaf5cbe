/*
 * heap.h: an intrusive binary min-heap of timers.
 *
 * Nodes live inside the timers (no allocation, so starting a timer cannot
 * fail). The tree is complete: the path from the root to position n (1-based)
 * is given by the bits of n after the leading one, 0 = left, 1 = right.
 * Insert and remove are O(log n). Ordered by due time, then start order, so
 * timers due together fire in the order they were started.
 */
#ifndef ZNET_HEAP_H
#define ZNET_HEAP_H

#include <stdbool.h>
#include <stddef.h>

#include "znet/loop.h"

typedef struct {
    zn_timer_t *min;
    size_t n;
} zn__heap_t;


static inline bool
zn__heap_less(const zn_timer_t *a, const zn_timer_t *b)
{
    if (a->due != b->due)
        return a->due < b->due;
    return a->order < b->order;
}


/* Swaps a node with its parent `p`, fixing every link that pointed at them. */
static inline void
zn__heap_swap(zn__heap_t *h, zn_timer_t *p, zn_timer_t *c)
{
    zn_timer_t *sibling;
    zn_timer_t tmp_links;

    tmp_links.node = p->node;
    p->node = c->node;
    c->node = tmp_links.node;
    /* c now has p's old links (one of its children is c itself), and p has
     * c's old links (its parent is p itself). */
    p->node.parent = c;
    if (c->node.left == c) {
        c->node.left = p;
        sibling = c->node.right;
    } else {
        c->node.right = p;
        sibling = c->node.left;
    }
    if (sibling != NULL)
        sibling->node.parent = c;
    if (p->node.left != NULL)
        p->node.left->node.parent = p;
    if (p->node.right != NULL)
        p->node.right->node.parent = p;
    if (c->node.parent == NULL)
        h->min = c;
    else if (c->node.parent->node.left == p)
        c->node.parent->node.left = c;
    else
        c->node.parent->node.right = c;
}


/* The link that holds position `pos` (1-based), and its parent. */
static inline zn_timer_t **
zn__heap_slot(zn__heap_t *h, size_t pos, zn_timer_t **parent)
{
    zn_timer_t **link = &h->min;
    size_t path = 0;
    unsigned k = 0;

    *parent = NULL;
    for (; pos >= 2; pos /= 2, k++)
        path = (path << 1) | (pos & 1);
    while (k-- > 0) {
        *parent = *link;
        link = (path & 1) ? &(*link)->node.right : &(*link)->node.left;
        path >>= 1;
    }
    return link;
}


static inline void
zn__heap_sift_up(zn__heap_t *h, zn_timer_t *t)
{
    while (t->node.parent != NULL && zn__heap_less(t, t->node.parent))
        zn__heap_swap(h, t->node.parent, t);
}


static inline void
zn__heap_insert(zn__heap_t *h, zn_timer_t *t)
{
    zn_timer_t *parent;
    zn_timer_t **link;

    t->node.left = t->node.right = t->node.parent = NULL;
    link = zn__heap_slot(h, h->n + 1, &parent);
    t->node.parent = parent;
    *link = t;
    h->n++;
    zn__heap_sift_up(h, t);
}


/*
 * Removes any node: the last node takes its place and sifts down (or up,
 * when it replaces a node in another subtree).
 */
static inline void
zn__heap_remove(zn__heap_t *h, zn_timer_t *t)
{
    zn_timer_t *parent, *last, *child;
    zn_timer_t **link;

    if (h->n == 0)
        return;
    link = zn__heap_slot(h, h->n, &parent);
    last = *link;
    *link = NULL;
    h->n--;
    if (last == t) {
        if (t == h->min)
            h->min = NULL;
        return;
    }
    last->node = t->node;
    if (last->node.left != NULL)
        last->node.left->node.parent = last;
    if (last->node.right != NULL)
        last->node.right->node.parent = last;
    if (t->node.parent == NULL)
        h->min = last;
    else if (t->node.parent->node.left == t)
        t->node.parent->node.left = last;
    else
        t->node.parent->node.right = last;
    for (;;) {
        child = last->node.left;
        if (last->node.right != NULL &&
            zn__heap_less(last->node.right, last->node.left))
            child = last->node.right;
        if (child == NULL || !zn__heap_less(child, last))
            break;
        zn__heap_swap(h, last, child);
    }
    zn__heap_sift_up(h, last);
}

#endif /* ZNET_HEAP_H */
