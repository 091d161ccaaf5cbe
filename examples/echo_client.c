/*
 * echo_client: connects to an echo server with znet's client, sends
 * --count messages of --size bytes one after another, checks that each
 * comes back intact, and prints the round-trip rate.
 *
 *   echo_client [--host H] [--port P] [--count N] [--size S]
 *
 * Exits 0 if every byte came back, 1 otherwise (or after a 10 s time-out).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "znet/znet.h"

typedef struct {
    zn_loop_t *loop;
    char *msg;
    size_t size;
    size_t got;              /* bytes of the current reply */
    unsigned count, done;
    int status;
    uint64_t t0;
} echo_state_t;


static void
fill(echo_state_t *st)
{
    size_t i;

    for (i = 0; i < st->size; i++)
        st->msg[i] = (char)('a' + (st->done + i) % 26);
}


static void
on_connect(zn_conn_t *c, void *ud)
{
    echo_state_t *st = ud;

    st->t0 = zn_now_ns();
    fill(st);
    zn_conn_send(c, st->msg, st->size);
}


/* Checks the reply against the message sent, byte by byte as it comes. */
static void
on_data(zn_conn_t *c, zn_buf_t *in, void *ud)
{
    echo_state_t *st = ud;
    size_t n;

    while (zn_buf_len(in) > 0) {
        n = zn_buf_len(in);
        if (n > st->size - st->got)
            n = st->size - st->got;
        if (memcmp(zn_buf_peek(in), st->msg + st->got, n) != 0) {
            fprintf(stderr, "echo_client: reply %u differs\n", st->done);
            zn_loop_stop(st->loop);
            return;
        }
        zn_buf_consume(in, n);
        st->got += n;
        if (st->got < st->size)
            continue;
        st->got = 0;
        if (++st->done == st->count) {
            st->status = 0;
            zn_conn_close(c);
            return;
        }
        fill(st);
        zn_conn_send(c, st->msg, st->size);
    }
}


static void
on_close(zn_conn_t *c, zn_close_reason_t reason, void *ud)
{
    (void)c;
    (void)reason;
    zn_loop_stop(((echo_state_t *)ud)->loop);
}


static void
on_give_up(zn_client_t *cl, int status, void *ud)
{
    (void)cl;
    fprintf(stderr, "echo_client: connect: %s\n", zn_strerror(status));
    zn_loop_stop(((echo_state_t *)ud)->loop);
}


static void
on_timeout(zn_timer_t *t, void *ud)
{
    (void)t;
    fprintf(stderr, "echo_client: time-out\n");
    zn_loop_stop(ud);
}


int
main(int argc, char **argv)
{
    echo_state_t st = {.count = 1000, .size = 64, .status = 1};
    zn_client_opts_t o;
    zn_client_t *cl;
    zn_timer_t timer;
    double secs;
    int i;

    zn_client_opts_default(&o);
    o.host = "127.0.0.1";
    o.port = 11111;
    for (i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--host") == 0)
            o.host = argv[i + 1];
        else if (strcmp(argv[i], "--port") == 0)
            o.port = (uint16_t)atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--count") == 0)
            st.count = (unsigned)atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--size") == 0)
            st.size = (size_t)atol(argv[i + 1]);
    }
    if (st.size == 0 || st.count == 0 || (st.msg = malloc(st.size)) == NULL)
        return 2;
    o.handler = (zn_handler_t){.on_connect = on_connect, .on_data = on_data,
                               .on_close = on_close, .ud = &st};
    o.on_give_up = on_give_up;
    if (zn_loop_new(&st.loop) != 0 || zn_client_new(st.loop, &o, &cl) != 0)
        return 1;
    zn_timer_init(st.loop, &timer, on_timeout, st.loop);
    zn_timer_start(&timer, 10000, 0);
    zn_client_start(cl);
    zn_loop_run(st.loop);
    secs = (double)(zn_now_ns() - st.t0) / 1e9;
    if (st.status == 0)
        printf("echo_client: %u round trips of %zu bytes in %.3f s "
               "(%.0f/s), all intact\n",
               st.done, st.size, secs, st.done / secs);
    zn_timer_stop(&timer);
    zn_client_free(cl);
    zn_loop_run_once(st.loop, 0); /* let the close finish */
    zn_loop_free(st.loop);
    free(st.msg);
    return st.status;
}
