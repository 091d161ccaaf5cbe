/*
 * drain.c: the graceful shutdown of a server that a message service
 * serves, as one call: stop accepting, refuse new requests with
 * SHUTTING_DOWN, let the requests in flight finish, flush their replies,
 * close, all within one time limit.
 */
#include "msg_int.h"
#include "znet/log.h"

#define ZN__DRAIN_STEP_MS 10


/*
 * The main loop is driven from here (zn_loop_run() has returned), since in
 * the single-loop model it carries every connection; IO loops run on their
 * threads meanwhile. The workers stop only once nothing is in flight (or
 * the time is up: what is still queued is then answered SHUTTING_DOWN), and
 * the server last, so that every answer reaches a live loop and is
 * flushed by the server's graceful close.
 */
int
zn_msg_service_drain(zn_msg_service_t *svc, zn_server_t *srv,
                     uint64_t timeout_ms)
{
    zn_loop_t *loop = zn_server_main_loop(srv);
    uint64_t now, deadline = zn_now_ms() + timeout_ms;
    bool in_time;

    zn_msg_service_shutdown(svc);
    zn_server_stop_accepting(srv);
    while (zn_msg_service_pending(svc) > 0 && zn_now_ms() < deadline)
        (void)zn_loop_run_once(loop, ZN__DRAIN_STEP_MS);
    in_time = zn_msg_service_pending(svc) == 0;
    if (!in_time)
        ZN_LOG(ZN_LOG_WARN, "msg: drain: %llu requests still in flight "
               "after %llu ms", (unsigned long long)
               zn_msg_service_pending(svc), (unsigned long long)timeout_ms);
    zn_msg_service_stop(svc);
    now = zn_now_ms();
    zn_server_stop(srv, deadline > now ? deadline - now : 0);
    return in_time && zn_now_ms() <= deadline ? 0 : ZN_ETIMEDOUT;
}
