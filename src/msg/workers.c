/*
 * workers.c: the worker pool (the seed's AsyncRequestMfcMap). Decoded
 * requests wait in a bounded FIFO; worker threads run their handlers; the
 * answers go back to each connection's loop through its task queue and
 * eventfd (service.c). A full queue refuses at once (OVERLOADED): the
 * queue never grows without bound. In ordered mode every worker has its
 * own queue and a connection's requests always go to the same one, so its
 * answers keep their order.
 */
#include <string.h>

#include "msg_int.h"
#include "znet/log.h"


#define ZN__WORKER_BATCH 16
#define ZN__BATCH_HOLD_NS 200000 /* 0.2 ms */


/*
 * Takes a batch: up to a fair share of what waits (so that other workers
 * get work too), at most ZN__WORKER_BATCH. Returns a chain, or NULL when
 * the service stops and the queue is empty.
 */
static zn_msg_req_t *
zn__queue_pop(zn_msg_service_t *svc, zn__msg_queue_t *q, unsigned sharers)
{
    zn_msg_req_t *head, **tail;
    unsigned take, i;

    pthread_mutex_lock(&q->mu);
    while (q->head == NULL && !atomic_load(&svc->stopping))
        pthread_cond_wait(&q->cv, &q->mu);
    take = q->n / sharers;
    take = take < 1 ? 1 : take > ZN__WORKER_BATCH ? ZN__WORKER_BATCH : take;
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
zn__worker_one(zn_msg_service_t *svc, zn_msg_req_t *req)
{
    atomic_fetch_sub(&svc->st.queued, 1);
    if (!atomic_load(&svc->stopping)) {
        zn__msg_run(req);
        return;
    }
    zn__msg_answer_or_abandon(req, ZN_ERR_SHUTTING_DOWN, "shutting down");
    zn__msg_req_unref(req); /* the handler phase, never run */
}


/* Runs batches of requests until the service stops; requests still queued
 * then are answered SHUTTING_DOWN rather than run. */
static void *
zn__worker_main(void *arg)
{
    zn__msg_worker_t *w = arg;
    zn_msg_service_t *svc = w->svc;
    unsigned sharers = svc->o.ordered ? 1 : svc->o.workers;
    zn_msg_req_t *req, *next;

    uint64_t t0;

    while ((req = zn__queue_pop(svc, w->q, sharers)) != NULL) {
        zn__msg_collect_begin();
        t0 = zn_now_ns();
        for (; req != NULL; req = next) {
            next = req->next;
            zn__worker_one(svc, req);
            /* Slow handlers: do not hold finished answers back. */
            if (next != NULL && zn_now_ns() - t0 > ZN__BATCH_HOLD_NS) {
                zn__msg_collect_end();
                zn__msg_collect_begin();
                t0 = zn_now_ns();
            }
        }
        zn__msg_collect_end();
    }
    return NULL;
}


unsigned
zn__msg_queue_index(const zn_msg_service_t *svc, const zn_conn_t *c)
{
    return svc->o.ordered ? (unsigned)(zn_conn_id(c) % svc->nqueues) : 0;
}


/*
 * Queues a chain of requests that all go to one queue (see
 * zn__msg_queue_index) under one lock with one wake-up. Returns what did
 * not fit, as a chain, with *why set to ZN_ENOBUFS (full) or ZN_ESHUTDOWN
 * (stopping); NULL if everything was queued.
 */
zn_msg_req_t *
zn__msg_enqueue(zn_msg_service_t *svc, zn_msg_req_t *head, int *why)
{
    unsigned n = 0;
    zn__msg_queue_t *q = &svc->queues[zn__msg_queue_index(svc, head->conn)];
    zn_msg_req_t *req;

    /* Checked under the lock that workers exit under: once they have
     * seen the stop with an empty queue, nothing more gets in. */
    pthread_mutex_lock(&q->mu);
    *why = atomic_load(&svc->stopping) ? ZN_ESHUTDOWN : ZN_ENOBUFS;
    while (head != NULL && *why != ZN_ESHUTDOWN && q->n < q->max) {
        req = head;
        head = req->next;
        req->next = NULL;
        if (q->tail != NULL)
            q->tail->next = req;
        else
            q->head = req;
        q->tail = req;
        q->n++;
        n++;
    }
    if (n > 0) {
        atomic_fetch_add(&svc->st.queued, n);
        atomic_fetch_add(&svc->st.handoffs, 1);
        if (n > 1)
            pthread_cond_broadcast(&q->cv);
        else
            pthread_cond_signal(&q->cv);
    }
    pthread_mutex_unlock(&q->mu);
    return head;
}


int
zn__msg_workers_start(zn_msg_service_t *svc)
{
    unsigned n = svc->o.workers, i, total;
    int rc;

    if (n == 0)
        return 0;
    svc->nqueues = svc->o.ordered ? n : 1;
    total = svc->o.queue_max ? svc->o.queue_max : 1024 * n;
    svc->queues = zn__calloc(svc->nqueues, sizeof(*svc->queues));
    svc->workers = zn__calloc(n, sizeof(*svc->workers));
    if (svc->queues == NULL || svc->workers == NULL)
        return ZN_ENOMEM;
    for (i = 0; i < svc->nqueues; i++) {
        pthread_mutex_init(&svc->queues[i].mu, NULL);
        pthread_cond_init(&svc->queues[i].cv, NULL);
        svc->queues[i].max = total / svc->nqueues ? total / svc->nqueues : 1;
    }
    for (i = 0; i < n; i++) {
        svc->workers[i].svc = svc;
        svc->workers[i].q = &svc->queues[svc->o.ordered ? i : 0];
        rc = zn__thread_start(&svc->workers[i].th, zn__worker_main,
                              &svc->workers[i]);
        if (rc != 0)
            return rc;
        svc->workers[i].started = true;
    }
    return 0;
}


void
zn__msg_workers_stop(zn_msg_service_t *svc)
{
    unsigned i;

    atomic_store(&svc->shutting_down, 1);
    atomic_store(&svc->stopping, 1);
    for (i = 0; i < svc->nqueues && svc->queues != NULL; i++) {
        pthread_mutex_lock(&svc->queues[i].mu);
        pthread_cond_broadcast(&svc->queues[i].cv);
        pthread_mutex_unlock(&svc->queues[i].mu);
    }
    for (i = 0; i < svc->o.workers && svc->workers != NULL; i++)
        if (svc->workers[i].started) {
            pthread_join(svc->workers[i].th, NULL);
            svc->workers[i].started = false;
        }
}


/* After the stop, when no loop can dispatch to the service any more: the
 * queues stay until then, since a loop may still try (and be refused,
 * under the queue's lock) after the workers are gone. */
void
zn__msg_workers_free(zn_msg_service_t *svc)
{
    unsigned i;

    for (i = 0; i < svc->nqueues && svc->queues != NULL; i++) {
        pthread_mutex_destroy(&svc->queues[i].mu);
        pthread_cond_destroy(&svc->queues[i].cv);
    }
    zn__free(svc->queues);
    zn__free(svc->workers);
    svc->queues = NULL;
    svc->workers = NULL;
}
