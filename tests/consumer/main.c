/* Uses an installed znet: a loop, a posted task, a timer. */
#include <stdio.h>
#include <znet/znet.h>


static void
on_task(void *ud)
{
    zn_loop_stop(ud);
}


int
main(void)
{
    zn_loop_t *loop;

    if (zn_loop_new(&loop) != 0 || zn_loop_post(loop, on_task, loop) != 0)
        return 1;
    if (zn_loop_run(loop) != 0)
        return 1;
    zn_loop_free(loop);
    printf("consumer: %s\n", zn_err_name(ZN_EAGAIN));
    return 0;
}
