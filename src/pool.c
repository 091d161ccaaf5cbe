/*
 * pool.c: a pool of loops, one thread each.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>

#include "internal.h"
#include "pool_int.h"

#define ZN__POOL_MAX 256

typedef struct {
    zn_loop_t *loop;
    pthread_t thread;
    bool started;
} zn__pool_slot_t;

struct zn_loop_pool_s {
    zn__pool_slot_t *v;
    unsigned n;
    _Atomic unsigned rr;
};


static void *
zn__pool_main(void *arg)
{
    (void)zn_loop_run(arg);
    return NULL;
}


int
zn__loop_pool_create(unsigned n, const char *name, zn_loop_pool_t **out)
{
    zn_loop_pool_t *p;
    char buf[32];
    unsigned i;
    int rc = 0;

    if (n == 0 || n > ZN__POOL_MAX)
        return ZN_EINVAL;
    if ((p = zn__calloc(1, sizeof(*p))) == NULL ||
        (p->v = zn__calloc(n, sizeof(*p->v))) == NULL) {
        zn__free(p);
        return ZN_ENOMEM;
    }
    p->n = n;
    for (i = 0; i < n; i++) {
        if ((rc = zn_loop_new(&p->v[i].loop)) != 0) {
            zn_loop_pool_free(p);
            return rc;
        }
        snprintf(buf, sizeof(buf), "%s-%u", name != NULL ? name : "io", i);
        zn_loop_set_name(p->v[i].loop, buf);
    }
    *out = p;
    return 0;
}


/* A failure half-way stops the threads already started. */
int
zn__loop_pool_run(zn_loop_pool_t *p)
{
    unsigned i;
    int rc = 0;

    for (i = 0; i < p->n && rc == 0; i++) {
        rc = zn__thread_start(&p->v[i].thread, zn__pool_main, p->v[i].loop);
        p->v[i].started = rc == 0;
    }
    if (rc != 0)
        zn_loop_pool_stop(p);
    return rc;
}


void
zn__loop_pool_join(zn_loop_pool_t *p)
{
    unsigned i;

    for (i = 0; i < p->n; i++)
        if (p->v[i].started) {
            pthread_join(p->v[i].thread, NULL);
            p->v[i].started = false;
        }
}


bool
zn__loop_pool_running(const zn_loop_pool_t *p, unsigned i)
{
    return i < p->n && p->v[i].started;
}


/* Creates the loops first, then starts the threads. */
int
zn_loop_pool_new(unsigned n, const char *name, zn_loop_pool_t **out)
{
    int rc;

    if ((rc = zn__loop_pool_create(n, name, out)) != 0)
        return rc;
    if ((rc = zn__loop_pool_run(*out)) != 0) {
        zn_loop_pool_free(*out);
        *out = NULL;
    }
    return rc;
}


void
zn_loop_pool_stop(zn_loop_pool_t *p)
{
    unsigned i;

    for (i = 0; i < p->n; i++)
        if (p->v[i].started)
            zn_loop_stop(p->v[i].loop);
    zn__loop_pool_join(p);
}


void
zn_loop_pool_free(zn_loop_pool_t *p)
{
    unsigned i;

    if (p == NULL)
        return;
    zn_loop_pool_stop(p);
    for (i = 0; i < p->n; i++)
        if (p->v[i].loop != NULL)
            zn_loop_free(p->v[i].loop);
    zn__free(p->v);
    zn__free(p);
}


unsigned
zn_loop_pool_size(const zn_loop_pool_t *p)
{
    return p->n;
}


zn_loop_t *
zn_loop_pool_get(const zn_loop_pool_t *p, unsigned i)
{
    return i < p->n ? p->v[i].loop : NULL;
}


zn_loop_t *
zn_loop_pool_next(zn_loop_pool_t *p)
{
    return p->v[atomic_fetch_add_explicit(&p->rr, 1, memory_order_relaxed) %
                p->n]
        .loop;
}


/* Fibonacci hashing spreads keys that differ in their low bits (ids
 * handed out in sequence) over every loop. */
zn_loop_t *
zn_loop_pool_for_key(const zn_loop_pool_t *p, uint64_t key)
{
    return p->v[((key * 0x9E3779B97F4A7C15ull) >> 32) % p->n].loop;
}
