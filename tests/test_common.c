/*
 * test_common.c: error names, the allocator hook, the clock.
 */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"


static void
test_error_codes_equal_negated_errno(void **state)
{
    (void)state;
    assert_int_equal(ZN_EAGAIN, -EAGAIN);
    assert_int_equal(ZN_ENOMEM, -ENOMEM);
    assert_int_equal(ZN_ECONNRESET, -ECONNRESET);
    assert_string_equal(zn_err_name(ZN_EAGAIN), "EAGAIN");
    assert_string_equal(zn_err_name(0), "OK");
    assert_string_equal(zn_err_name(-123456), "UNKNOWN");
    assert_string_equal(zn_strerror(ZN_ENOTCONN), "socket is not connected");
    assert_string_equal(zn_strerror(-123456), "unknown error");
}


static size_t counted_callocs;


static void *
counting_calloc(size_t n, size_t size)
{
    counted_callocs++;
    return calloc(n, size);
}


static void
test_allocator_hook_is_used(void **state)
{
    zn_loop_t *loop;

    (void)state;
    assert_int_equal(zn_set_allocator(NULL, realloc, calloc, free),
                     ZN_EINVAL);
    assert_int_equal(zn_set_allocator(malloc, realloc, counting_calloc, free),
                     0);
    assert_int_equal(zn_loop_new(&loop), 0);
    assert_true(counted_callocs > 0); /* the loop came from the hook */
    zn_loop_free(loop);
    zn_set_allocator(malloc, realloc, calloc, free);
}


static void
test_clock_is_monotonic(void **state)
{
    uint64_t a, b;

    (void)state;
    a = zn_now_ns();
    b = zn_now_ns();
    assert_true(b >= a);
    assert_true(zn_now_ms() >= a / 1000000u);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_codes_equal_negated_errno),
        cmocka_unit_test(test_allocator_hook_is_used),
        cmocka_unit_test(test_clock_is_monotonic),
    };

    tu_alarm(30);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
