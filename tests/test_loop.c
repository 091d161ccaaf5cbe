/*
 * test_loop.c: posted tasks, stop, timers, io watchers, signals.
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "testutil.h"

#define POSTERS 8
#define POSTS_PER_THREAD 20000

typedef struct {
    zn_loop_t *loop;
    int runs[POSTERS];          /* loop thread only */
    int last_seq[POSTERS];
    int out_of_order;
    int done_threads;
} post_state_t;

typedef struct {
    post_state_t *ps;
    int thread;
    int seq;
} post_item_t;


static void
post_task(void *ud)
{
    post_item_t *it = ud;
    post_state_t *ps = it->ps;

    if (it->seq != ps->last_seq[it->thread] + 1)
        ps->out_of_order++;
    ps->last_seq[it->thread] = it->seq;
    ps->runs[it->thread]++;
    free(it);
}


typedef struct {
    post_state_t *ps;
    int thread;
} poster_arg_t;


static void *
poster(void *arg)
{
    poster_arg_t *pa = arg;
    post_item_t *it;
    int i;

    for (i = 0; i < POSTS_PER_THREAD; i++) {
        it = malloc(sizeof(*it));
        it->ps = pa->ps;
        it->thread = pa->thread;
        it->seq = i;
        assert_int_equal(zn_loop_post(pa->ps->loop, post_task, it), 0);
    }
    return NULL;
}


static void
stop_task(void *ud)
{
    zn_loop_stop(ud);
}


static void
test_tasks_from_8_threads_run_exactly_once_in_order(void **state)
{
    post_state_t ps;
    poster_arg_t pa[POSTERS];
    pthread_t th[POSTERS];
    tu_loop_thread_t lt;
    zn_loop_stats_t st;
    zn_loop_opts_t lo;
    int i;

    (void)state;
    memset(&ps, 0, sizeof(ps));
    for (i = 0; i < POSTERS; i++)
        ps.last_seq[i] = -1;
    zn_loop_opts_default(&lo);
    lo.max_posted = POSTERS * POSTS_PER_THREAD + 1;
    assert_int_equal(zn_loop_new_opts(&ps.loop, &lo), 0);
    tu_loop_thread_start(&lt, ps.loop);
    for (i = 0; i < POSTERS; i++) {
        pa[i].ps = &ps;
        pa[i].thread = i;
        pthread_create(&th[i], NULL, poster, &pa[i]);
    }
    for (i = 0; i < POSTERS; i++)
        pthread_join(th[i], NULL);
    /* Posted after every other task: when it runs, they all have. */
    assert_int_equal(zn_loop_post(ps.loop, stop_task, ps.loop), 0);
    pthread_join(lt.thread, NULL);
    for (i = 0; i < POSTERS; i++)
        assert_int_equal(ps.runs[i], POSTS_PER_THREAD);
    assert_int_equal(ps.out_of_order, 0);
    zn_loop_stats(ps.loop, &st);
    assert_int_equal(st.tasks_run, POSTERS * POSTS_PER_THREAD + 1);
    /* Wake-ups coalesce: far fewer eventfd writes than posts. */
    assert_true(st.wakeups <= st.tasks_posted);
    zn_loop_free(ps.loop);
}


static void
count_task(void *ud)
{
    (*(int *)ud)++;
}


static void
test_stop_before_run_returns_at_once(void **state)
{
    zn_loop_t *loop;
    zn_timer_t t;
    int ran = 0;

    (void)state;
    assert_int_equal(zn_loop_new(&loop), 0);
    zn_timer_init(loop, &t, NULL, NULL);
    zn_timer_start(&t, 60000, 0); /* would keep the loop asleep */
    assert_int_equal(zn_loop_post(loop, count_task, &ran), 0);
    zn_loop_stop(loop);
    assert_int_equal(zn_loop_run(loop), 0);
    assert_int_equal(ran, 1); /* tasks posted before the stop still ran */
    zn_timer_stop(&t);
    zn_loop_free(loop);
}


static void
test_stop_from_another_thread(void **state)
{
    zn_loop_t *loop;
    tu_loop_thread_t lt;

    (void)state;
    assert_int_equal(zn_loop_new(&loop), 0);
    tu_loop_thread_start(&lt, loop);
    usleep(20000);
    tu_loop_thread_join(&lt); /* zn_loop_stop from this thread */
    zn_loop_free(loop);
}


static void
test_free_runs_tasks_still_queued(void **state)
{
    zn_loop_t *loop;
    int ran = 0;

    (void)state;
    assert_int_equal(zn_loop_new(&loop), 0);
    assert_int_equal(zn_loop_post(loop, count_task, &ran), 0);
    assert_int_equal(zn_loop_post(loop, count_task, &ran), 0);
    zn_loop_free(loop);
    assert_int_equal(ran, 2);
}

/* ---- timers ---------------------------------------------------------- */

typedef struct {
    zn_loop_t *loop;
    int order[16];
    int n;
    zn_timer_t *victim;
    int fires;
} timer_log_t;

typedef struct {
    zn_timer_t t;
    timer_log_t *log;
    int tag;
} tagged_timer_t;


static void
log_timer_cb(zn_timer_t *t, void *ud)
{
    tagged_timer_t *tt = ud;

    (void)t;
    tt->log->order[tt->log->n++] = tt->tag;
    if (tt->log->n == 5)
        zn_loop_stop(tt->log->loop);
}


static void
count_fire(zn_timer_t *t, void *ud)
{
    (void)t;
    (*(int *)ud)++;
}


/*
 * A timer started outside the loop's iterations counts from the moment it
 * is started, not from the loop's last cached time: here the loop was
 * made 300 ms before a 200 ms timer, which must not fire at once.
 */
static void
test_timer_started_before_run_counts_from_now(void **state)
{
    zn_loop_t *loop;
    zn_timer_t t;
    uint64_t t0;
    int fired = 0;

    (void)state;
    assert_int_equal(zn_loop_new(&loop), 0);
    usleep(300000);
    zn_timer_init(loop, &t, count_fire, &fired);
    t0 = zn_now_ms();
    zn_timer_start(&t, 200, 0);
    while (fired == 0)
        zn_loop_run_once(loop, 1000);
    assert_true(zn_now_ms() - t0 >= 200);
    zn_loop_free(loop);
}


static void
test_timers_fire_in_due_then_start_order(void **state)
{
    static const uint64_t due[5] = {40, 10, 25, 10, 0};
    static const int expect[5] = {4, 1, 3, 2, 0};
    tagged_timer_t tt[5];
    timer_log_t log;
    uint64_t t0;
    int i;

    (void)state;
    memset(&log, 0, sizeof(log));
    assert_int_equal(zn_loop_new(&log.loop), 0);
    zn_loop_update_time(log.loop); /* timers start from the loop's clock */
    t0 = zn_loop_now(log.loop);
    for (i = 0; i < 5; i++) {
        tt[i].log = &log;
        tt[i].tag = i;
        zn_timer_init(log.loop, &tt[i].t, log_timer_cb, &tt[i]);
        zn_timer_start(&tt[i].t, due[i], 0);
    }
    assert_int_equal(zn_loop_run(log.loop), 0);
    assert_true(zn_now_ms() - t0 >= 40); /* never early */
    for (i = 0; i < 5; i++) {
        assert_int_equal(log.order[i], expect[i]);
        assert_false(zn_timer_active(&tt[i].t));
    }
    zn_loop_free(log.loop);
}


static void
self_cancel_cb(zn_timer_t *t, void *ud)
{
    timer_log_t *log = ud;

    if (++log->fires == 3) {
        zn_timer_stop(t);
        zn_timer_stop(t); /* idempotent */
    }
}


static void
end_cb(zn_timer_t *t, void *ud)
{
    (void)t;
    zn_loop_stop(ud);
}


static void
test_repeating_timer_cancels_itself(void **state)
{
    timer_log_t log;
    zn_timer_t t, end;

    (void)state;
    memset(&log, 0, sizeof(log));
    assert_int_equal(zn_loop_new(&log.loop), 0);
    zn_timer_init(log.loop, &t, self_cancel_cb, &log);
    zn_timer_start(&t, 1, 1);
    zn_timer_init(log.loop, &end, end_cb, log.loop);
    zn_timer_start(&end, 60, 0);
    assert_int_equal(zn_loop_run(log.loop), 0);
    assert_int_equal(log.fires, 3);
    assert_false(zn_timer_active(&t));
    zn_loop_free(log.loop);
}


static void
cancel_other_cb(zn_timer_t *t, void *ud)
{
    timer_log_t *log = ud;

    (void)t;
    log->fires++;
    zn_timer_stop(log->victim);
}


static void
victim_cb(zn_timer_t *t, void *ud)
{
    (void)t;
    ((timer_log_t *)ud)->fires += 100;
}


static void
test_timer_cancels_another_due_at_same_time(void **state)
{
    timer_log_t log;
    zn_timer_t a, b, end;

    (void)state;
    memset(&log, 0, sizeof(log));
    assert_int_equal(zn_loop_new(&log.loop), 0);
    zn_timer_init(log.loop, &a, cancel_other_cb, &log);
    zn_timer_init(log.loop, &b, victim_cb, &log);
    log.victim = &b;
    zn_timer_start(&a, 5, 0);
    zn_timer_start(&b, 5, 0); /* same due time, started later */
    zn_timer_init(log.loop, &end, end_cb, log.loop);
    zn_timer_start(&end, 30, 0);
    assert_int_equal(zn_loop_run(log.loop), 0);
    assert_int_equal(log.fires, 1); /* the victim never ran */
    zn_loop_free(log.loop);
}


static void
restart_zero_cb(zn_timer_t *t, void *ud)
{
    timer_log_t *log = ud;

    if (++log->fires < 1000)
        zn_timer_start(t, 0, 0); /* must not trap the loop in one phase */
    else
        zn_loop_stop(log->loop);
}


static void
test_timer_restarted_with_zero_timeout_yields(void **state)
{
    timer_log_t log;
    zn_timer_t t;
    zn_loop_stats_t st;

    (void)state;
    memset(&log, 0, sizeof(log));
    assert_int_equal(zn_loop_new(&log.loop), 0);
    zn_timer_init(log.loop, &t, restart_zero_cb, &log);
    zn_timer_start(&t, 0, 0);
    assert_int_equal(zn_loop_run(log.loop), 0);
    zn_loop_stats(log.loop, &st);
    assert_int_equal(log.fires, 1000);
    /* one fire per iteration: io gets its turn in between */
    assert_true(st.iterations >= 999);
    zn_loop_free(log.loop);
}


typedef struct {
    zn_timer_t t;
    _Atomic int fires;
    _Atomic int stopped;
} repeat_state_t;


static void
repeat_cb(zn_timer_t *t, void *ud)
{
    repeat_state_t *rs = ud;

    (void)t;
    assert_int_equal(atomic_load(&rs->stopped), 0);
    atomic_fetch_add(&rs->fires, 1);
}


static void
stop_repeat_task(void *ud)
{
    repeat_state_t *rs = ud;

    zn_timer_stop(&rs->t);
    atomic_store(&rs->stopped, 1);
}


static void
start_repeat_task(void *ud)
{
    repeat_state_t *rs = ud;

    zn_timer_start(&rs->t, 1, 1);
}


static int
fired_3(void *ud)
{
    return atomic_load(&((repeat_state_t *)ud)->fires) >= 3;
}


static void
test_repeating_timer_cancelled_from_other_thread_task(void **state)
{
    repeat_state_t rs;
    tu_loop_thread_t lt;
    zn_loop_t *loop;
    int fires;

    (void)state;
    memset(&rs, 0, sizeof(rs));
    assert_int_equal(zn_loop_new(&loop), 0);
    zn_timer_init(loop, &rs.t, repeat_cb, &rs);
    tu_loop_thread_start(&lt, loop);
    tu_run_on(loop, start_repeat_task, &rs);
    assert_true(tu_wait_until(fired_3, &rs, 5000));
    tu_run_on(loop, stop_repeat_task, &rs);
    fires = atomic_load(&rs.fires);
    usleep(30000);
    assert_int_equal(atomic_load(&rs.fires), fires);
    tu_loop_thread_join(&lt);
    zn_loop_free(loop);
}


static void
test_idle_wait_for_timer_does_not_spin(void **state)
{
    zn_loop_t *loop;
    zn_timer_t end;
    zn_loop_stats_t st;

    (void)state;
    assert_int_equal(zn_loop_new(&loop), 0);
    zn_timer_init(loop, &end, end_cb, loop);
    zn_timer_start(&end, 100, 0);
    assert_int_equal(zn_loop_run(loop), 0);
    zn_loop_stats(loop, &st);
    assert_true(st.iterations <= 5);
    assert_int_equal(st.timers_fired, 1);
    zn_loop_free(loop);
}


static void
thousands_cb(zn_timer_t *t, void *ud)
{
    int *n = ud;

    (void)t;
    (*n)++;
}


static void
test_ten_thousand_timers_cancel_and_fire(void **state)
{
    enum { N = 10000 };
    zn_timer_t *ts = calloc(N, sizeof(*ts));
    zn_timer_t end;
    zn_loop_t *loop;
    int fired = 0, i;

    (void)state;
    assert_int_equal(zn_loop_new(&loop), 0);
    for (i = 0; i < N; i++) {
        zn_timer_init(loop, &ts[i], thousands_cb, &fired);
        zn_timer_start(&ts[i], (uint64_t)(i * 7919 % 50), 0);
    }
    for (i = 0; i < N; i += 2)
        zn_timer_stop(&ts[i]);
    zn_timer_init(loop, &end, end_cb, loop);
    zn_timer_start(&end, 80, 0);
    assert_int_equal(zn_loop_run(loop), 0);
    assert_int_equal(fired, N / 2);
    zn_loop_free(loop);
    free(ts);
}

/* ---- io watchers ----------------------------------------------------- */

typedef struct {
    zn_io_t io[2];
    int fds[2][2];
    int calls[2];
} io_pair_t;


/* Whichever runs first stops and closes the other, whose event is in the
 * same batch: it must never be delivered. */
static void
stopper_cb(zn_io_t *io, unsigned events, void *ud)
{
    io_pair_t *p = ud;
    int me = io == &p->io[0] ? 0 : 1, other = 1 - me;

    (void)events;
    p->calls[me]++;
    zn_io_stop(&p->io[other]);
    close(p->fds[other][0]);
    p->fds[other][0] = -1;
    zn_io_stop(io);
}


static void
test_stopped_watcher_gets_no_stale_event_in_batch(void **state)
{
    io_pair_t p;
    zn_loop_t *loop;
    int i;

    (void)state;
    memset(&p, 0, sizeof(p));
    assert_int_equal(zn_loop_new(&loop), 0);
    for (i = 0; i < 2; i++) {
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, p.fds[i]), 0);
        assert_int_equal(write(p.fds[i][1], "x", 1), 1);
        zn_io_init(loop, &p.io[i], p.fds[i][0], stopper_cb, &p);
        assert_int_equal(zn_io_start(&p.io[i], ZN_EV_READABLE), 0);
    }
    assert_int_equal(zn_loop_run_once(loop, 1000), 1);
    assert_int_equal(p.calls[0] + p.calls[1], 1);
    for (i = 0; i < 2; i++) {
        if (p.fds[i][0] >= 0)
            close(p.fds[i][0]);
        close(p.fds[i][1]);
    }
    zn_loop_free(loop);
}


static void
echo_watch_cb(zn_io_t *io, unsigned events, void *ud)
{
    char c;

    if (events & ZN_EV_READABLE) {
        assert_int_equal(read(io->fd, &c, 1), 1);
        *(int *)ud += 1;
        zn_io_start(io, ZN_EV_WRITABLE); /* change the set */
    } else if (events & ZN_EV_WRITABLE) {
        *(int *)ud += 10;
        zn_io_stop(io);
    }
}


static void
test_watcher_changes_events(void **state)
{
    zn_loop_t *loop;
    zn_io_t io;
    int fds[2], seen = 0;

    (void)state;
    assert_int_equal(zn_loop_new(&loop), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    zn_io_init(loop, &io, fds[0], echo_watch_cb, &seen);
    assert_int_equal(zn_io_start(&io, ZN_EV_READABLE), 0);
    assert_true(zn_io_active(&io));
    assert_int_equal(write(fds[1], "y", 1), 1);
    zn_loop_run_once(loop, 1000);
    zn_loop_run_once(loop, 1000);
    assert_int_equal(seen, 11);
    assert_false(zn_io_active(&io));
    close(fds[0]);
    close(fds[1]);
    zn_loop_free(loop);
}


static void
on_signal(zn_loop_t *loop, int signum, void *ud)
{
    *(int *)ud = signum;
    zn_loop_stop(loop);
}


/* Also when the signal was ignored before (a shell's background job). */
static void
test_signals_arrive_through_signalfd(void **state)
{
    static const int sigs[] = {SIGUSR1, 0};
    zn_loop_t *loop;
    int got = 0;

    (void)state;
    assert_int_equal(zn_loop_new(&loop), 0);
    signal(SIGUSR1, SIG_IGN); /* as a shell leaves SIGINT for a bg job */
    assert_int_equal(zn_loop_handle_signals(loop, sigs, on_signal, &got), 0);
    kill(getpid(), SIGUSR1);
    assert_int_equal(zn_loop_run(loop), 0);
    assert_int_equal(got, SIGUSR1);
    zn_loop_free(loop);
}


static void
test_run_while_running_is_refused(void **state)
{
    zn_loop_t *loop;
    tu_loop_thread_t lt;

    (void)state;
    assert_int_equal(zn_loop_new(&loop), 0);
    tu_loop_thread_start(&lt, loop);
    usleep(10000);
    assert_int_equal(zn_loop_run(loop), ZN_EBUSY);
    tu_loop_thread_join(&lt);
    zn_loop_free(loop);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tasks_from_8_threads_run_exactly_once_in_order),
        cmocka_unit_test(test_stop_before_run_returns_at_once),
        cmocka_unit_test(test_stop_from_another_thread),
        cmocka_unit_test(test_free_runs_tasks_still_queued),
        cmocka_unit_test(test_timers_fire_in_due_then_start_order),
        cmocka_unit_test(test_timer_started_before_run_counts_from_now),
        cmocka_unit_test(test_repeating_timer_cancels_itself),
        cmocka_unit_test(test_timer_cancels_another_due_at_same_time),
        cmocka_unit_test(test_timer_restarted_with_zero_timeout_yields),
        cmocka_unit_test(test_repeating_timer_cancelled_from_other_thread_task),
        cmocka_unit_test(test_idle_wait_for_timer_does_not_spin),
        cmocka_unit_test(test_ten_thousand_timers_cancel_and_fire),
        cmocka_unit_test(test_stopped_watcher_gets_no_stale_event_in_batch),
        cmocka_unit_test(test_watcher_changes_events),
        cmocka_unit_test(test_signals_arrive_through_signalfd),
        cmocka_unit_test(test_run_while_running_is_refused),
    };

    tu_alarm(60);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
