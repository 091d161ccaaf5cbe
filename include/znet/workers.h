/*
 * znet/workers.h: a pool of worker threads that run plain work items
 * (libuv's threadpool, nginx's thread pools). Items wait in a bounded
 * FIFO; a full queue refuses at once instead of growing. In ordered mode
 * every thread has its own queue and items submitted with the same key
 * always go to the same one, so they run in order. The message layer runs
 * its handlers here; a raw-byte handler may do the same with items of its
 * own, answering through zn_conn_send() (safe from any thread).
 *
 * All functions are safe from any thread, except zn_workers_stop() and
 * zn_workers_free(), which must not be called from a worker.
 */
#ifndef ZNET_WORKERS_H
#define ZNET_WORKERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zn_workers_s zn_workers_t;
typedef struct zn_work_s zn_work_t;

/*
 * Runs an item on a worker thread. status is 0, or ZN_ECANCELED for an
 * item still queued when the pool stopped: it must then only be released
 * (or refused to whoever waits for it), not run. The item belongs to the
 * callback from then on.
 */
typedef void (*zn_work_cb)(zn_work_t *w, int status);

/* An item, embedded by its owner in what it carries. */
struct zn_work_s {
    zn_work_t *next;  /* links a chain given to zn_workers_submit() */
    zn_work_cb cb;
};

typedef struct {
    unsigned threads;      /* 1 .. 1024 */
    bool ordered;          /* a queue per thread, chosen by the key */
    unsigned queue_max;    /* items waiting in all; 0: 1024 per thread */
    /* Called on the worker thread around each batch of items it takes
     * (at most 16 at a time, or a fair share of what waits), and where a
     * slow batch is cut (past 0.2 ms): the message layer sends the
     * batch's answers to their loops together there. Optional. */
    void (*batch_begin)(void *ud);
    void (*batch_end)(void *ud);
    void *ud;
} zn_workers_opts_t;

/* Fills opts with the defaults (threads 1). */
ZN_EXTERN void zn_workers_opts_default(zn_workers_opts_t *opts);

/* Creates the pool and starts its threads (every signal blocked). Returns
 * 0, ZN_EINVAL, ZN_ENOMEM, or the error of pthread_create. */
ZN_EXTERN int zn_workers_new(const zn_workers_opts_t *opts,
                             zn_workers_t **out);

/*
 * Queues a chain of items (linked by `next`, NULL-terminated) under one
 * lock, with one wake-up: all to the queue of `key` (ordered mode), or to
 * the one queue. Returns what did not fit, as a chain (NULL: all queued),
 * with *why set to ZN_ENOBUFS (the queue is full) or ZN_ESHUTDOWN (the pool
 * is stopping); those items stay the caller's. *n_queued, if not NULL,
 * gets the number queued.
 */
ZN_EXTERN zn_work_t *zn_workers_submit(zn_workers_t *p, uint64_t key,
                                       zn_work_t *chain, int *why,
                                       unsigned *n_queued);

/* Items waiting now, over all queues. */
ZN_EXTERN size_t zn_workers_queued(const zn_workers_t *p);

/* The number of threads. */
ZN_EXTERN unsigned zn_workers_threads(const zn_workers_t *p);

/*
 * Stops the pool: nothing more is queued (ZN_ESHUTDOWN), the threads give
 * the items still queued to their callbacks with ZN_ECANCELED, then exit,
 * and are joined. Idempotent.
 */
ZN_EXTERN void zn_workers_stop(zn_workers_t *p);

/* Stops the pool if needed and frees it. */
ZN_EXTERN void zn_workers_free(zn_workers_t *p);

#ifdef __cplusplus
}
#endif
#endif /* ZNET_WORKERS_H */
