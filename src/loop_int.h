/*
 * loop_int.h: the loop's layout, for the other modules of znet.
 */
#ifndef ZNET_LOOP_INT_H
#define ZNET_LOOP_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/epoll.h>

#include "conn_int.h"
#include "heap.h"
#include "internal.h"
#include "znet/loop.h"

#define ZN__SCRATCH_SIZE (64 * 1024)
#define ZN__MAX_EVENTS 1024
#define ZN__TASKS_INITIAL 64

typedef struct {
    zn_task_cb cb;
    void *ud;
} zn__task_t;

typedef struct {
    zn__task_t *v;
    size_t n;
    size_t cap;
} zn__taskvec_t;

/*
 * Requests that the message layer gathers during an iteration for its
 * worker pool, handed on in one go (one lock, one wake-up) once the
 * iteration's io and tasks have run. Opaque to the loop, which only calls
 * `flush` while `head` is set. Loop thread only.
 */
typedef struct {
    void *head, *tail;
    void (*flush)(zn_loop_t *loop);
} zn__loop_handoff_t;

struct zn_loop_s {
    int epfd;
    int wakefd;                 /* eventfd */
    zn_io_t wake_io;
    zn_io_t **ios;              /* started watchers, by fd */
    size_t nios;
    struct epoll_event *batch;  /* the events being dispatched */
    int batch_len;
    int batch_pos;
    zn__heap_t timers;
    uint64_t timer_order;
    uint64_t now;
    bool in_iteration;          /* inside zn_loop_run_once(): `now` holds */
    bool in_timers;
    uint64_t timers_phase_order;

    pthread_mutex_t task_mu;
    zn__taskvec_t pending;      /* posted, under task_mu */
    zn__taskvec_t running;      /* being run, loop thread only */
    bool wake_pending;          /* under task_mu: an eventfd write is due */
    _Atomic size_t npending;

    _Atomic int stop;
    _Atomic int running_flag;
    _Atomic unsigned long owner; /* pthread_t of the loop's thread */

    int sigfd;
    zn_io_t sig_io;
    zn_signal_cb sig_cb;
    void *sig_ud;

    zn__loop_handoff_t handoff;
    zn__conn_stats_t conn_stats; /* for adopted connections */
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

/* The loop's 64 KiB read scratch area (allocated on first use), or NULL
 * if the allocation failed. Loop thread only. */
char *zn__loop_scratch(zn_loop_t *loop);

#endif /* ZNET_LOOP_INT_H */
