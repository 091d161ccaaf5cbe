/*
 * workers.c: the worker pool. Items wait in a bounded FIFO (one, or one per
 * thread in ordered mode); threads take them in batches and run their
 * callbacks. It knows nothing of what the items are: the message layer's
 * requests are one kind, a raw-byte handler's jobs another.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "internal.h"
#include "znet/workers.h"

#define ZN__WORK_BATCH 16
#define ZN__BATCH_HOLD_NS 200000 /* 0.2 ms */
#define ZN__WORKERS_MAX 1024

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    zn_work_t *head, *tail;
    unsigned n, max;
} zn__work_queue_t;

typedef struct {
    zn_workers_t *pool;
    zn__work_queue_t *q;
    pthread_t th;
    bool started;
} zn__worker_t;

struct zn_workers_s {
    zn_workers_opts_t o;
    zn__worker_t *w;
    zn__work_queue_t *queues; /* one, or one per thread (ordered) */
    unsigned nqueues;
    _Atomic int stopping;
    _Atomic size_t queued;
};


void
zn_workers_opts_default(zn_workers_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->threads = 1;
}


/*
 * Takes a batch: up to a fair share of what waits (so that other threads
 * get work too), at most ZN__WORK_BATCH. Returns a chain, or NULL when the
 * pool stops and the queue is empty.
 */
static zn_work_t *
zn__queue_pop(zn_workers_t *p, zn__work_queue_t *q, unsigned sharers)
{
    zn_work_t *head, **tail;
    unsigned take, i;

    pthread_mutex_lock(&q->mu);
    while (q->head == NULL && !atomic_load(&p->stopping))
        pthread_cond_wait(&q->cv, &q->mu);
    take = q->n / sharers;
    take = take < 1 ? 1 : take > ZN__WORK_BATCH ? ZN__WORK_BATCH : take;
    head = q->head;
    tail = &head;
    for (i = 0; i < take && *tail != NULL; i++)
        tail = &(*tail)->next;
    q->head = *tail;
    *tail = NULL;
    if (q->head == NULL)
        q->tail = NULL;
    q->n -= i;
    pthread_mutex_unlock(&q->mu);
    return head;
}


static void
zn__batch_mark(const zn_workers_t *p, bool begin)
{
    void (*fn)(void *) = begin ? p->o.batch_begin : p->o.batch_end;

    if (fn != NULL)
        fn(p->o.ud);
}


/* Runs batches until the pool stops; items still queued then are given
 * to their callbacks as cancelled rather than run. A slow batch is cut,
 * so that what its first items produced does not wait for the last. */
static void *
zn__worker_main(void *arg)
{
    zn__worker_t *w = arg;
    zn_workers_t *p = w->pool;
    unsigned sharers = p->o.ordered ? 1 : p->o.threads;
    zn_work_t *it, *next;
    uint64_t t0;

    while ((it = zn__queue_pop(p, w->q, sharers)) != NULL) {
        zn__batch_mark(p, true);
        t0 = zn_now_ns();
        for (; it != NULL; it = next) {
            next = it->next;
            it->next = NULL;
            atomic_fetch_sub(&p->queued, 1);
            it->cb(it, atomic_load(&p->stopping) ? ZN_ECANCELED : 0);
            if (next != NULL && zn_now_ns() - t0 > ZN__BATCH_HOLD_NS) {
                zn__batch_mark(p, false);
                zn__batch_mark(p, true);
                t0 = zn_now_ns();
            }
        }
        zn__batch_mark(p, false);
    }
    return NULL;
}


static zn__work_queue_t *
zn__queue_for(zn_workers_t *p, uint64_t key)
{
    return &p->queues[p->o.ordered ? key % p->nqueues : 0];
}


/*
 * Checked under the lock that threads exit under: once they have seen the
 * stop with an empty queue, nothing more gets in.
 */
zn_work_t *
zn_workers_submit(zn_workers_t *p, uint64_t key, zn_work_t *chain, int *why,
                  unsigned *n_queued)
{
    zn__work_queue_t *q = zn__queue_for(p, key);
    unsigned n = 0;
    zn_work_t *it;

    pthread_mutex_lock(&q->mu);
    *why = atomic_load(&p->stopping) ? ZN_ESHUTDOWN : ZN_ENOBUFS;
    while (chain != NULL && *why != ZN_ESHUTDOWN && q->n < q->max) {
        it = chain;
        chain = it->next;
        it->next = NULL;
        if (q->tail != NULL)
            q->tail->next = it;
        else
            q->head = it;
        q->tail = it;
        q->n++;
        n++;
    }
    if (n > 0) {
        atomic_fetch_add(&p->queued, n);
        if (n > 1)
            pthread_cond_broadcast(&q->cv);
        else
            pthread_cond_signal(&q->cv);
    }
    pthread_mutex_unlock(&q->mu);
    if (n_queued != NULL)
        *n_queued = n;
    return chain;
}


size_t
zn_workers_queued(const zn_workers_t *p)
{
    return atomic_load(&((zn_workers_t *)p)->queued);
}


unsigned
zn_workers_threads(const zn_workers_t *p)
{
    return p->o.threads;
}


static int
zn__workers_alloc(zn_workers_t *p)
{
    unsigned i, total = p->o.queue_max ? p->o.queue_max : 1024 * p->o.threads;
    unsigned nq = p->o.ordered ? p->o.threads : 1;

    p->queues = zn__calloc(nq, sizeof(*p->queues));
    p->w = zn__calloc(p->o.threads, sizeof(*p->w));
    if (p->queues == NULL || p->w == NULL)
        return ZN_ENOMEM;
    for (i = 0; i < nq; i++) {
        pthread_mutex_init(&p->queues[i].mu, NULL);
        pthread_cond_init(&p->queues[i].cv, NULL);
        p->queues[i].max = total / nq ? total / nq : 1;
    }
    p->nqueues = nq; /* only now: zn_workers_free() destroys what is here */
    return 0;
}


int
zn_workers_new(const zn_workers_opts_t *o, zn_workers_t **out)
{
    zn_workers_t *p;
    unsigned i;
    int rc;

    if (o == NULL || o->threads == 0 || o->threads > ZN__WORKERS_MAX)
        return ZN_EINVAL;
    if ((p = zn__calloc(1, sizeof(*p))) == NULL)
        return ZN_ENOMEM;
    p->o = *o;
    if ((rc = zn__workers_alloc(p)) != 0)
        goto fail;
    for (i = 0; i < p->o.threads; i++) {
        p->w[i].pool = p;
        p->w[i].q = &p->queues[p->o.ordered ? i : 0];
        if ((rc = zn__thread_start(&p->w[i].th, zn__worker_main,
                                   &p->w[i])) != 0)
            goto fail;
        p->w[i].started = true;
    }
    *out = p;
    return 0;

fail:
    zn_workers_free(p);
    return rc;
}


void
zn_workers_stop(zn_workers_t *p)
{
    unsigned i;

    atomic_store(&p->stopping, 1);
    for (i = 0; i < p->nqueues && p->queues != NULL; i++) {
        pthread_mutex_lock(&p->queues[i].mu);
        pthread_cond_broadcast(&p->queues[i].cv);
        pthread_mutex_unlock(&p->queues[i].mu);
    }
    for (i = 0; i < p->o.threads && p->w != NULL; i++)
        if (p->w[i].started) {
            pthread_join(p->w[i].th, NULL);
            p->w[i].started = false;
        }
}


/* The queues stay until here, since a loop may still submit (and be
 * refused, under the queue's lock) after the threads are gone. */
void
zn_workers_free(zn_workers_t *p)
{
    unsigned i;

    if (p == NULL)
        return;
    zn_workers_stop(p);
    for (i = 0; i < p->nqueues && p->queues != NULL; i++) {
        pthread_mutex_destroy(&p->queues[i].mu);
        pthread_cond_destroy(&p->queues[i].cv);
    }
    zn__free(p->queues);
    zn__free(p->w);
    zn__free(p);
}
