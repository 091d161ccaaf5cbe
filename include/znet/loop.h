/*
 * znet/loop.h: the event loop, io watchers, timers, posted tasks, signals.
 *
 * One loop is one backend instance (epoll) run by one thread. Loop-thread only unless
 * marked: every function here must be called on the thread that runs the
 * loop (or, before zn_loop_run(), on the thread that created it), except
 * those marked "Any thread.".
 *
 * Watchers (zn_io_t, zn_timer_t) are embedded by the caller: _init binds
 * one to a loop, _start/_stop switch it on and off. A watcher has nothing to
 * close; the caller frees its memory once it is stopped.
 */
#ifndef ZNET_LOOP_H
#define ZNET_LOOP_H

#include <stdbool.h>
#include <stdint.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zn_loop_s zn_loop_t;
typedef struct zn_io_s zn_io_t;
typedef struct zn_timer_s zn_timer_t;
typedef struct zn_task_s zn_task_t;

/* Events for zn_io_start(); the same bits arrive in the callback. */
enum {
    ZN_EV_READABLE = 1,
    ZN_EV_WRITABLE = 2,
    ZN_EV_HANGUP = 4, /* reported only: EPOLLHUP/EPOLLRDHUP */
    ZN_EV_ERROR = 8 /* reported only: EPOLLERR */
};

typedef void (*zn_io_cb)(zn_io_t *io, unsigned events, void *ud);
typedef void (*zn_timer_cb)(zn_timer_t *t, void *ud);
typedef void (*zn_task_cb)(void *ud);

/* Internal layout; read the fields through the functions below. */
struct zn_io_s {
    zn_loop_t *loop;
    zn_io_cb cb;
    void *ud;
    int fd;
    unsigned events;  /* what the caller asked for */
    unsigned armed;   /* what epoll has now */
    int slot;         /* the backend's index, -1 if not started */
};

struct zn_timer_s {
    zn_loop_t *loop;
    zn_timer_cb cb;
    void *ud;
    uint64_t due;     /* absolute, in loop milliseconds */
    uint64_t repeat;  /* 0: one-shot */
    uint64_t order;   /* start order, breaks ties between equal due times */
    struct {
        zn_timer_t *left, *right, *parent;
    } node;           /* heap links; parent == NULL and not the root: idle */
    int active;
};

/* The link of the loop's task queue (internal; 16 bytes, so that znet's
 * own objects can carry one cheaply). next is not NULL while queued. */
typedef struct zn_task_node_s {
    struct zn_task_node_s *next;
    void (*fn)(struct zn_task_node_s *n);
} zn_task_node_t;

/*
 * A task that its owner embeds (in the object that crosses to the loop),
 * so that posting it allocates nothing and cannot fail. A task is queued
 * at most once at a time; it is unqueued just before its callback runs,
 * which may post it again or free it.
 */
struct zn_task_s {
    zn_task_node_t node;
    zn_task_cb cb;
    void *ud;
};

/* ---- loop ---------------------------------------------------------- */

typedef struct {
    /* Tasks posted with zn_loop_post() and not run yet: past it,
     * zn_loop_post() refuses with ZN_ENOBUFS. Embedded tasks
     * (zn_loop_post_task) do not count. 0: 65,536. */
    size_t max_posted;
} zn_loop_opts_t;

/* Fills opts with the defaults. */
ZN_EXTERN void zn_loop_opts_default(zn_loop_opts_t *opts);

/*
 * Creates a loop: an epoll instance and an eventfd for wake-ups. Stores it
 * in *out. Returns 0, ZN_ENOMEM, or the error of epoll_create1/eventfd.
 * Any thread; the loop then belongs to the thread that runs it.
 */
ZN_EXTERN int zn_loop_new(zn_loop_t **out);

/* zn_loop_new() with options (NULL: the defaults). Any thread. */
ZN_EXTERN int zn_loop_new_opts(zn_loop_t **out, const zn_loop_opts_t *opts);

/*
 * Frees a loop that is not running. Tasks still queued are run first (so
 * that what they own is released); io watchers and timers that are still
 * started are forgotten (their owners must stop them first to be clean).
 */
ZN_EXTERN void zn_loop_free(zn_loop_t *loop);

/*
 * Runs the loop on the calling thread until zn_loop_stop(). Each iteration:
 * update the clock, run due timers, wait for events (no longer than the
 * next timer), run io callbacks, run posted tasks (among them what the
 * io callbacks posted for the end of the iteration, such as the message
 * layer's hand-off of requests to its workers). Returns 0 after a stop,
 * ZN_EBUSY if the loop is already running, or the error of the wait.
 * A stop requested before zn_loop_run() makes it return at once (after
 * running the tasks already posted).
 */
ZN_EXTERN int zn_loop_run(zn_loop_t *loop);

/*
 * Runs one iteration: waits at most `timeout_ms` (-1: until an event or a
 * timer, 0: not at all). Returns the number of callbacks run, or a negative
 * error. For tests, for a shutdown that drives the loop after
 * zn_loop_run() returned, and for embedding the loop in another one.
 * Outside zn_loop_run() the calling thread becomes the loop's thread.
 */
ZN_EXTERN int zn_loop_run_once(zn_loop_t *loop, int timeout_ms);

/* Asks the loop to return from zn_loop_run(). Any thread; also before the
 * loop runs. Idempotent. */
ZN_EXTERN void zn_loop_stop(zn_loop_t *loop);

/*
 * Runs cb(ud) on the loop's thread, soon. Any thread. Tasks run in the
 * order they were posted, in batches; wake-ups coalesce (many posts may
 * cause one eventfd read), but every posted task runs exactly once, even if
 * the loop is stopped (then on the next run, or in zn_loop_free()).
 * Allocates the task: returns 0, ZN_ENOMEM, or ZN_ENOBUFS when
 * max_posted tasks of this kind wait already (then cb never runs). Code
 * that must not fail embeds a zn_task_t instead.
 */
ZN_EXTERN int zn_loop_post(zn_loop_t *loop, zn_task_cb cb, void *ud);

/* Binds an embedded task to its callback. Does not post it. */
ZN_EXTERN void zn_task_init(zn_task_t *t, zn_task_cb cb, void *ud);

/*
 * Queues an embedded task to run cb(ud) once on the loop's thread, in
 * posting order with every other task. Any thread. Allocates nothing:
 * returns 0, or ZN_EBUSY if the task is queued already (it will run
 * once). The task must stay valid until its callback has started.
 */
ZN_EXTERN int zn_loop_post_task(zn_loop_t *loop, zn_task_t *t);

/*
 * True on the thread that is running the loop, and, until it first runs,
 * on the thread that created it (so that set-up calls there take the
 * loop-thread path). Any thread. A program that starts another thread to
 * run the loop must wait until it runs there (post a task and wait for
 * it) before it calls, from the creating thread, a function that picks
 * its path by this (zn_rpc_call, zn_conn_send, a typed stub...):
 * meanwhile both threads would count as the loop's.
 */
ZN_EXTERN bool zn_loop_in_thread(const zn_loop_t *loop);

/* The loop's cached clock (milliseconds, monotonic), updated once per
 * iteration; zn_loop_update_time() refreshes it. */
ZN_EXTERN uint64_t zn_loop_now(const zn_loop_t *loop);
ZN_EXTERN void zn_loop_update_time(zn_loop_t *loop);

/* A name for logs ("loop-0"). Any thread. */
ZN_EXTERN const char *zn_loop_name(const zn_loop_t *loop);
ZN_EXTERN void zn_loop_set_name(zn_loop_t *loop, const char *name);

typedef struct {
    uint64_t iterations;     /* waits for io (epoll_wait calls) */
    uint64_t io_events;      /* io callbacks run */
    uint64_t timers_fired;   /* timer callbacks run */
    uint64_t tasks_posted;   /* tasks queued (zn_loop_post, _post_task) */
    uint64_t tasks_run;      /* posted tasks run */
    uint64_t wakeups;        /* eventfd writes (posts that had to wake) */
    uint64_t timers_active;  /* timers started now */
    uint64_t io_active;      /* io watchers started now */
} zn_loop_stats_t;

/* Copies the loop's counters. Any thread (values are read atomically one
 * by one, not as a snapshot). */
ZN_EXTERN void zn_loop_stats(const zn_loop_t *loop, zn_loop_stats_t *st);

/* ---- io watchers --------------------------------------------------- */

/* Binds a watcher to a loop and a non-blocking fd. Does not start it. */
ZN_EXTERN void zn_io_init(zn_loop_t *loop, zn_io_t *io, int fd, zn_io_cb cb,
                          void *ud);

/*
 * Watches `events` (ZN_EV_READABLE | ZN_EV_WRITABLE); a started watcher changes
 * its set. Level-triggered. events == 0 is the same as zn_io_stop().
 * Returns 0, ZN_ENOMEM, or the error of the backend (epoll_ctl).
 */
ZN_EXTERN int zn_io_start(zn_io_t *io, unsigned events);

/*
 * Stops watching. After this the callback is not called again, not even
 * for an event already fetched in the current batch; the caller may
 * then close the fd and free the watcher.
 */
ZN_EXTERN void zn_io_stop(zn_io_t *io);

static inline bool
zn_io_active(const zn_io_t *io)
{
    return io->slot >= 0;
}

/* ---- timers -------------------------------------------------------- */

/* Binds a timer to a loop. Does not start it. */
ZN_EXTERN void zn_timer_init(zn_loop_t *loop, zn_timer_t *t, zn_timer_cb cb,
                             void *ud);

/*
 * Starts (or restarts) a timer: it fires `timeout_ms` from the loop's
 * cached time (inside a callback: the time of the iteration's start;
 * outside the loop's iterations, such as before zn_loop_run(): now), then
 * every `repeat_ms` if that is not 0. Timers due at the
 * same time fire in the order they were started. Safe inside any callback,
 * including the timer's own.
 */
ZN_EXTERN void zn_timer_start(zn_timer_t *t, uint64_t timeout_ms,
                              uint64_t repeat_ms);

/* Stops a timer; idempotent. Safe inside any callback, including the
 * timer's own: a repeating timer stopped in its callback does not fire
 * again. */
ZN_EXTERN void zn_timer_stop(zn_timer_t *t);

static inline bool
zn_timer_active(const zn_timer_t *t)
{
    return t->active != 0;
}

/* ---- signals ------------------------------------------------------- */

typedef void (*zn_signal_cb)(zn_loop_t *loop, int signum, void *ud);

/*
 * Handles SIGINT and SIGTERM (or the signals in `sigs`, terminated by 0)
 * on this loop through a signalfd: resets their disposition to the default
 * (an ignored signal would never reach the signalfd; a non-interactive
 * shell starts background jobs with SIGINT ignored), blocks them in the
 * calling thread (call it before starting threads of your own, so they
 * inherit the mask; znet's own threads block every signal) and runs
 * cb(loop, signum, ud) on the loop. One handler per loop; a second call
 * replaces the first. Returns 0 or the error of signalfd.
 */
ZN_EXTERN int zn_loop_handle_signals(zn_loop_t *loop, const int *sigs,
                                     zn_signal_cb cb, void *ud);

#ifdef __cplusplus
}
#endif
#endif /* ZNET_LOOP_H */
