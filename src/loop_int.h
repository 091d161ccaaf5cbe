/*
 * loop_int.h: the loop's layout, for the other modules of znet.
 */
#ifndef ZNET_LOOP_INT_H
#define ZNET_LOOP_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "heap.h"
#include "internal.h"
#include "znet/buf.h"
#include "znet/loop.h"

#define ZN__SCRATCH_SIZE (64 * 1024)
#define ZN__MAX_POSTED_DEFAULT 65536

struct zn__backend_s;

struct zn_loop_s {
    const struct zn__backend_s *be;
    void *be_data;              /* the backend's state */
    int wakefd;                 /* eventfd */
    zn_io_t wake_io;
    zn__heap_t timers;
    uint64_t timer_order;
    uint64_t now;
    bool in_iteration;          /* inside zn_loop_run_once(): `now` holds */

    pthread_mutex_t task_mu;
    zn_task_node_t *head, *tail; /* posted, under task_mu */
    bool wake_pending;          /* under task_mu: an eventfd write is due */
    _Atomic size_t npending;    /* tasks posted and not yet run */
    _Atomic size_t nalloc;      /* of them, zn_loop_post()'s own */
    size_t max_posted;          /* bound of nalloc */

    _Atomic int stop;
    _Atomic int running_flag;
    _Atomic unsigned long owner; /* pthread_t of the loop's thread */

    int sigfd;
    zn_io_t sig_io;
    zn_signal_cb sig_cb;
    void *sig_ud;

    /* What the loop's connections share, one thread at a time. */
    char *scratch;              /* ZN__SCRATCH_SIZE bytes for reads */
    zn_buf_t *spare_out;        /* an empty output buffer kept for the
                                   next connection that needs one */
    char name[32];

    struct {
        _Atomic uint64_t iterations, io_events, timers_fired;
        _Atomic uint64_t tasks_posted, tasks_run, wakeups;
        _Atomic uint64_t timers_active, io_active;
    } st;
};

/*
 * Queues a bare task node: fn(n) runs once on the loop's thread, in
 * posting order with every other task. Any thread; allocates nothing.
 * Returns 0, or ZN_EBUSY if n is queued already. The node's owner finds
 * itself with zn__container_of().
 */
int zn__loop_post_node(zn_loop_t *loop, zn_task_node_t *n);

/* The loop's 64 KiB read scratch area (allocated on first use), or NULL
 * if the allocation failed. Loop thread only. */
char *zn__loop_scratch(zn_loop_t *loop);

#endif /* ZNET_LOOP_INT_H */
