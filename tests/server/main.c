/*
 * znet-test-server: the server that the test suites start and attack
 * (tests/hostile, tests/soak, tests/interop, bench/compare). Without test
 * flags it is examples/rpc_server: the seed's demo, same commands, same
 * threading flags; the flags below expose every limit and add the hooks
 * the suites need.
 *
 *   znet-test-server [--host H] [--port P] [--io-threads N] [--workers N]
 *                    [--ordered] [--max-conns N] [--log-level L]
 *                    [--log-conf F]
 *
 * Limits (defaults: DESIGN.md's):
 *
 *   --max-body BYTES  --frame-deadline-ms MS  --idle-ms MS  --queue-max N
 *   --out-high BYTES  --out-low BYTES  --out-hard BYTES  --in-budget BYTES
 *   --decode-budget BYTES  --max-held BYTES
 *
 * Test hooks (see docs/hostile.md):
 *
 *   --port-file PATH  writes the bound port there once listening (with
 *                     --port 0 the kernel picks a free one)
 *   --stats-fd FD     on SIGUSR1, and once at exit, writes one line of JSON
 *                     to FD (an inherited pipe or file): every counter of
 *                     zn_server_stats and zn_msg_service_stats, and the
 *                     process's VmRSS, VmHWM (KiB) and open descriptors
 *                     (stats.c)
 *   --max-fds N       lowers RLIMIT_NOFILE to N once listening (EMFILE)
 *   --test-commands   registers the test commands 3 (push), 4 (slow) and
 *                     5 (tree) next to the demo's 1 and 2 (commands.c)
 *
 * On SIGINT or SIGTERM: stops accepting, answers new requests with
 * SHUTTING_DOWN, finishes the requests in flight, flushes the replies (at
 * most 5 s in all), exits 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "app.h"

#define PROG "znet-test-server"
#define DRAIN_MS 5000

/* The kinds of option: a flag without value, a string, or a number of
 * the destination's type. */
typedef enum { OPT_FLAG, OPT_STR, OPT_PORT, OPT_UINT, OPT_U32, OPT_U64,
               OPT_SIZE, OPT_FD } opt_kind_t;

typedef struct {
    const char *name;
    opt_kind_t kind;
    void *dst;
} opt_t;


static void
usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--host H] [--port P] [--io-threads N] [--workers N]\n"
            "          [--ordered] [--max-conns N] [--log-level L] "
            "[--log-conf FILE]\n"
            "          [--max-body B] [--frame-deadline-ms MS] "
            "[--idle-ms MS]\n"
            "          [--queue-max N] [--out-high B] [--out-low B] "
            "[--out-hard B]\n"
            "          [--in-budget B] [--decode-budget B] [--max-held B]\n"
            "          [--port-file F] [--stats-fd FD] [--max-fds N] "
            "[--test-commands]\n",
            prog);
    exit(2);
}


/* The table of options, pointing into app. Returns the count. */
static size_t
options(app_t *app, opt_t *t)
{
    const opt_t all[] = {
        {"--host", OPT_STR, &app->so.host},
        {"--port", OPT_PORT, &app->so.port},
        {"--io-threads", OPT_UINT, &app->so.io_threads},
        {"--workers", OPT_UINT, &app->mo.workers},
        {"--ordered", OPT_FLAG, &app->mo.ordered},
        {"--max-conns", OPT_UINT, &app->so.max_conns},
        {"--log-level", OPT_STR, &app->log_level},
        {"--log-conf", OPT_STR, &app->log_conf},
        {"--max-body", OPT_U32, &app->mo.max_body},
        {"--frame-deadline-ms", OPT_U64, &app->mo.frame_deadline_ms},
        {"--idle-ms", OPT_U64, &app->mo.idle_ms},
        {"--queue-max", OPT_UINT, &app->mo.queue_max},
        {"--out-high", OPT_SIZE, &app->so.limits.out_high},
        {"--out-low", OPT_SIZE, &app->so.limits.out_low},
        {"--out-hard", OPT_SIZE, &app->so.limits.out_hard},
        {"--in-budget", OPT_SIZE, &app->so.in_budget},
        {"--decode-budget", OPT_SIZE, &app->mo.decode_budget},
        {"--max-held", OPT_SIZE, &app->mo.max_held},
        {"--port-file", OPT_STR, &app->port_file},
        {"--stats-fd", OPT_FD, &app->stats_fd},
        {"--max-fds", OPT_UINT, &app->max_fds},
        {"--test-commands", OPT_FLAG, &app->test_commands},
    };

    memcpy(t, all, sizeof(all));
    return sizeof(all) / sizeof(all[0]);
}


/* Stores the value v of option o; false if v is not a valid number for
 * it. */
static bool
set_option(const opt_t *o, const char *v)
{
    unsigned long long n;
    char *end;

    if (o->kind == OPT_STR) {
        *(const char **)o->dst = v;
        return true;
    }
    errno = 0;
    n = strtoull(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || v[0] == '-')
        return false;
    switch (o->kind) {
    case OPT_PORT:
        *(uint16_t *)o->dst = (uint16_t)n;
        return n <= UINT16_MAX;
    case OPT_UINT:
        *(unsigned *)o->dst = (unsigned)n;
        return n <= UINT_MAX;
    case OPT_U32:
        *(uint32_t *)o->dst = (uint32_t)n;
        return n <= UINT32_MAX;
    case OPT_FD:
        *(int *)o->dst = (int)n;
        return n <= INT_MAX;
    case OPT_U64:
        *(uint64_t *)o->dst = n;
        return true;
    default:
        *(size_t *)o->dst = (size_t)n;
        return true;
    }
}


/* Every flag, then the logging they ask for: --log-conf first, so that
 * --log-level wins over the file's level. Exits 2 with the usage on an
 * unknown flag or a bad value. */
static int
parse_args(int argc, char **argv, app_t *app)
{
    opt_t opts[32];
    size_t i, n = options(app, opts);
    zn_log_level_t lv;
    int a, rc;

    for (a = 1; a < argc; a++) {
        for (i = 0; i < n && strcmp(argv[a], opts[i].name) != 0; i++)
            ;
        if (i == n)
            usage(argv[0]);
        if (opts[i].kind == OPT_FLAG) {
            *(bool *)opts[i].dst = true;
            continue;
        }
        if (a + 1 >= argc || !set_option(&opts[i], argv[++a]))
            usage(argv[0]);
    }
    if (app->log_conf != NULL &&
        (rc = zn_log_init(app->log_conf, "server")) != 0) {
        fprintf(stderr, "%s: %s\n", app->log_conf, zn_strerror(rc));
        return rc;
    }
    if (app->log_level != NULL) {
        if (zn_log_level_parse(app->log_level, &lv) != 0)
            usage(argv[0]);
        zn_log_set_level(lv);
    }
    return 0;
}


/* SIGINT and SIGTERM stop the loop (main then drains); SIGUSR1 asks for
 * a line of counters. */
static void
on_signal(zn_loop_t *loop, int signum, void *ud)
{
    if (signum == SIGUSR1) {
        app_write_stats(ud);
        return;
    }
    ZN_LOG(ZN_LOG_INFO, PROG ": signal %d, shutting down", signum);
    zn_loop_stop(loop);
}


/* What the test hooks need once the server listens: the port file, the
 * lowered descriptor limit. */
static int
after_start(app_t *app)
{
    struct rlimit rl;
    char tmp[4096];
    FILE *f;

    if (app->port_file != NULL) {
        snprintf(tmp, sizeof(tmp), "%s.tmp", app->port_file);
        if ((f = fopen(tmp, "w")) == NULL)
            return -errno;
        fprintf(f, "%u\n", zn_server_port(app->srv));
        /* Renamed only when complete: a reader never sees half a port. */
        if (fclose(f) != 0 || rename(tmp, app->port_file) != 0)
            return -errno;
    }
    if (app->stats_fd >= 0 &&
        fcntl(app->stats_fd, F_SETFL, O_NONBLOCK | O_APPEND) != 0)
        return -errno;
    if (app->max_fds > 0) {
        if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
            return -errno;
        rl.rlim_cur = app->max_fds;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            return -errno;
        ZN_LOG(ZN_LOG_INFO, PROG ": descriptor limit %u", app->max_fds);
    }
    return 0;
}


/*
 * Registers the commands, listens, runs until a signal stops the loop,
 * then drains: the whole life of the server. The final stats line comes
 * after the drain, so that it holds the counts of the shutdown too.
 */
static int
serve(app_t *app, zn_msg_table_t *table, zn_loop_t *loop)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGUSR1, 0};
    int rc;

    if ((rc = app_register_commands(table, app->test_commands)) != 0 ||
        (rc = zn_msg_service_new(table, &app->mo, &app->svc)) != 0 ||
        (rc = zn_loop_handle_signals(loop, sigs, on_signal, app)) != 0)
        return rc;
    zn_msg_service_bind(app->svc, &app->so);
    if ((rc = zn_server_new(loop, &app->so, &app->srv)) != 0 ||
        (rc = zn_server_start(app->srv)) != 0 || (rc = after_start(app)) != 0)
        return rc;
    ZN_LOG(ZN_LOG_INFO, PROG ": listening on %s:%u, %u io threads, %u workers",
           app->so.host, zn_server_port(app->srv), app->so.io_threads,
           app->mo.workers);
    if ((rc = zn_loop_run(loop)) != 0)
        ZN_LOG(ZN_LOG_ERROR, PROG ": loop: %s", zn_strerror(rc));
    /* Stop accepting, refuse new requests, finish those in flight, flush,
     * close: at most DRAIN_MS in all. */
    if (zn_msg_service_drain(app->svc, app->srv, DRAIN_MS) != 0)
        ZN_LOG(ZN_LOG_WARN, PROG ": drain cut short after %d ms", DRAIN_MS);
    app_write_stats(app);
    return rc == 0 ? 0 : 1;
}


int
main(int argc, char **argv)
{
    zn_msg_table_t *table = NULL;
    zn_loop_t *loop = NULL;
    app_t app;
    int rc;

    memset(&app, 0, sizeof(app));
    zn_server_opts_default(&app.so);
    zn_msg_opts_default(&app.mo);
    app.so.host = "0.0.0.0";
    app.so.port = 11111;
    app.stats_fd = -1;
    if (parse_args(argc, argv, &app) != 0)
        return 1;
    if ((rc = zn_msg_table_new(&table)) == 0 &&
        (rc = zn_loop_new(&loop)) == 0)
        rc = serve(&app, table, loop);
    if (rc < 0)
        fprintf(stderr, PROG ": %s:%u: %s\n", app.so.host, app.so.port,
                zn_strerror(rc));
    zn_server_free(app.srv);
    zn_msg_service_free(app.svc);
    zn_msg_table_free(table);
    zn_loop_free(loop);
    zn_log_fini();
    return rc == 0 ? 0 : 1;
}
