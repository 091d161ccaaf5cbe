/*
 * echo_server: a raw byte echo server on znet's core alone.
 *
 *   echo_server [--host H] [--port P] [--io-threads N] [--workers N]
 *               [--reuseport] [--max-conns N] [--log-level L]
 *               [--log-conf FILE]
 *
 * Runs until SIGINT or SIGTERM, then stops accepting, flushes what is
 * queued (at most 5 s) and exits 0. --workers is accepted for symmetry with
 * rpc_server: a raw echo has no handler work to hand to workers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "znet/znet.h"


/* Echo: everything that arrived goes back. */
static void
on_data(zn_conn_t *c, zn_buf_t *in, void *ud)
{
    (void)ud;
    if (zn_conn_send(c, zn_buf_peek(in), zn_buf_len(in)) == 0)
        zn_buf_consume(in, zn_buf_len(in));
}


static void
on_signal(zn_loop_t *loop, int signum, void *ud)
{
    (void)ud;
    ZN_LOG(ZN_LOG_INFO, "echo_server: signal %d, stopping", signum);
    zn_loop_stop(loop);
}


static void
usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--host H] [--port P] [--io-threads N] "
            "[--workers N]\n"
            "          [--reuseport] [--max-conns N] [--log-level L] "
            "[--log-conf FILE]\n",
            prog);
    exit(2);
}


static int
parse_args(int argc, char **argv, zn_server_opts_t *o)
{
    const char *conf = NULL, *level = NULL;
    zn_log_level_t lv;
    int i, rc;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--reuseport") == 0) {
            o->reuseport = true;
            continue;
        }
        if (v == NULL)
            usage(argv[0]);
        i++;
        if (strcmp(a, "--host") == 0)
            o->host = v;
        else if (strcmp(a, "--port") == 0)
            o->port = (uint16_t)atoi(v);
        else if (strcmp(a, "--io-threads") == 0)
            o->io_threads = (unsigned)atoi(v);
        else if (strcmp(a, "--workers") == 0)
            (void)atoi(v);
        else if (strcmp(a, "--max-conns") == 0)
            o->max_conns = (unsigned)atoi(v);
        else if (strcmp(a, "--log-level") == 0)
            level = v;
        else if (strcmp(a, "--log-conf") == 0)
            conf = v;
        else
            usage(argv[0]);
    }
    if (conf != NULL && (rc = zn_log_init(conf, "server")) != 0) {
        fprintf(stderr, "%s: %s\n", conf, zn_strerror(rc));
        return rc;
    }
    if (level != NULL) {
        if (zn_log_level_parse(level, &lv) != 0)
            usage(argv[0]);
        zn_log_set_level(lv);
    }
    return 0;
}


int
main(int argc, char **argv)
{
    zn_server_opts_t o;
    zn_server_t *srv;
    zn_loop_t *loop;
    int rc;

    zn_server_opts_default(&o);
    o.host = "0.0.0.0";
    o.port = 11111;
    o.handler.on_data = on_data;
    if (parse_args(argc, argv, &o) != 0)
        return 1;
    if ((rc = zn_loop_new(&loop)) != 0 ||
        (rc = zn_loop_handle_signals(loop, NULL, on_signal, NULL)) != 0 ||
        (rc = zn_server_new(loop, &o, &srv)) != 0) {
        fprintf(stderr, "echo_server: %s\n", zn_strerror(rc));
        return 1;
    }
    if ((rc = zn_server_start(srv)) != 0) {
        fprintf(stderr, "echo_server: listen %s:%u: %s\n", o.host, o.port,
                zn_strerror(rc));
        return 1;
    }
    ZN_LOG(ZN_LOG_INFO, "echo_server: listening on %s:%u, %u io threads",
           o.host, zn_server_port(srv), o.io_threads);
    rc = zn_loop_run(loop);
    zn_server_stop(srv, 5000);
    zn_server_free(srv);
    zn_loop_free(loop);
    zn_log_fini();
    return rc == 0 ? 0 : 1;
}
