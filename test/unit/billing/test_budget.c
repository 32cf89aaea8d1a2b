/* test_budget.c - one instance's share of a budget (billing/budget.c):
 * admission from the lease, settling, the renewal bookkeeping, when to
 * renew, how much to ask for, and the spend rate. Pure bookkeeping: every
 * time is passed in (ns, monotonic), so the tests drive the clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <string.h>

#include "billing/budget.h"

#define MS 1000000ull
#define S 1000000000ull
#define TTL (30 * S)
#define IDLE (10 * S)
#define T0 (1000 * S) /* an arbitrary start of the monotonic clock */

/* A share granted `lease` of a budget of `max` with `spent` spent, at
 * time now, by a renewal after the first (the slice sized). */
static budget_share granted(int64_t lease, int64_t max, int64_t spent, uint64_t now)
{
    budget_share b;
    memset(&b, 0, sizeof b);
    b.known = true;
    b.exists = true;
    budget_renew_sent(&b, lease);
    budget_renewed(&b, true, "11111111-2222-3333-4444-555555555555", lease, max, spent,
                   spent + lease, 0, now, TTL);
    return b;
}

/* A renewal round trip: sent with want, answered with granted at now. */
static void renew_round(budget_share *b, int64_t want, int64_t granted_amount, uint64_t now)
{
    budget_renew_sent(b, want);
    budget_renewed(b, true, "11111111-2222-3333-4444-555555555555", granted_amount, b->max,
                   b->spent + b->reporting, b->leased, 0, now, TTL);
}

/* ------------------------------------------------------------ admission */

static void test_admit_within_lease_refuse_past(void **state)
{
    (void)state;
    budget_share b = granted(1000, 100000, 0, T0);
    assert_true(b.known);
    assert_true(b.exists);
    assert_int_equal(budget_available(&b), 1000);
    assert_true(budget_admit(&b, 400, T0 + 1));
    assert_true(budget_admit(&b, 400, T0 + 2));
    assert_int_equal(b.reserved, 800);
    assert_int_equal(budget_available(&b), 200);
    /* 300 does not fit in what is left: refused, nothing reserved */
    assert_false(budget_admit(&b, 300, T0 + 3));
    assert_int_equal(b.reserved, 800);
    /* exactly what is left fits */
    assert_true(budget_admit(&b, 200, T0 + 4));
    assert_int_equal(budget_available(&b), 0);
    assert_false(budget_admit(&b, 1, T0 + 5));
}

static void test_settle_replaces_reservation_by_price(void **state)
{
    (void)state;
    budget_share b = granted(1000, 100000, 0, T0);
    assert_true(budget_admit(&b, 400, T0));
    assert_true(budget_admit(&b, 300, T0));
    budget_settle(&b, 400, 250, T0 + 10 * MS);
    assert_int_equal(b.reserved, 300);
    assert_int_equal(b.settled, 250);
    assert_int_equal(budget_available(&b), 1000 - 300 - 250);
    /* a call that ended without cost (failed before the upstream) */
    budget_settle(&b, 300, 0, T0 + 20 * MS);
    assert_int_equal(b.reserved, 0);
    assert_int_equal(b.settled, 250);
    assert_int_equal(budget_available(&b), 750);
}

static void test_unknown_refuses_and_asks(void **state)
{
    (void)state;
    budget_share b;
    memset(&b, 0, sizeof b);
    assert_false(b.known);
    assert_false(budget_admit(&b, 10, T0));
    assert_int_equal(b.reserved, 0);
    assert_true(budget_should_renew(&b, T0, TTL));
    budget_renew_sent(&b, 40);
    assert_false(budget_should_renew(&b, T0, TTL)); /* one in flight */
}

static void test_no_budget_admits_everything(void **state)
{
    (void)state;
    budget_share b;
    memset(&b, 0, sizeof b);
    budget_renew_sent(&b, 100);
    budget_renewed(&b, false, NULL, 0, 0, 0, 0, 0, T0, TTL);
    assert_true(b.known);
    assert_false(b.exists);
    assert_int_equal(b.lease, 0);
    for (int i = 0; i < 1000; i++)
        assert_true(budget_admit(&b, INT64_C(1000000000000), T0 + (uint64_t)i));
    assert_int_equal(b.reserved, 0);
    budget_settle(&b, INT64_C(1000000000000), INT64_C(999999999999), T0 + S);
    assert_int_equal(b.settled, 0);
    assert_int_equal(b.reserved, 0);
    /* the caller rechecks "no budget" on its own schedule */
    assert_false(budget_should_renew(&b, T0 + 100 * S, TTL));
}

static void test_lapsed_lease_refuses(void **state)
{
    (void)state;
    budget_share b = granted(1000, 100000, 0, T0);
    assert_int_equal(b.expires_ns, T0 + TTL);
    assert_true(budget_admit(&b, 10, T0 + TTL - 1));
    budget_settle(&b, 10, 10, T0 + TTL - 1);
    /* from expires_ns on the database may have reclaimed it */
    assert_false(budget_admit(&b, 10, T0 + TTL));
    assert_false(budget_admit(&b, 10, T0 + TTL + S));
    assert_int_equal(b.reserved, 0);
    /* a renewal brings it back */
    renew_round(&b, 1000, 1000, T0 + TTL + 2 * S);
    assert_true(budget_admit(&b, 10, T0 + TTL + 2 * S));
}

/* A call with nothing to charge (BYOK, an unpriced model) never needs the
 * lease: admitted when the lease is spent, lapsed or not asked for yet. */
static void test_zero_worst_always_admitted(void **state)
{
    (void)state;
    budget_share b;
    memset(&b, 0, sizeof b);
    assert_true(budget_admit(&b, 0, T0)); /* unknown */
    b = granted(100, 100000, 0, T0);
    assert_true(budget_admit(&b, 100, T0));
    assert_true(budget_admit(&b, 0, T0)); /* spent */
    assert_true(budget_admit(&b, 0, T0 + TTL + S)); /* lapsed */
    assert_int_equal(b.reserved, 100);
    budget_settle(&b, 0, 0, T0 + TTL + S);
    assert_int_equal(b.reserved, 100);
}

/* ------------------------------------------------------------ renewals */

static void test_renew_bookkeeping(void **state)
{
    (void)state;
    budget_share b = granted(1000, 100000, 0, T0);
    assert_true(budget_admit(&b, 100, T0));
    assert_true(budget_admit(&b, 100, T0));
    budget_settle(&b, 100, 60, T0 + MS);
    assert_int_equal(budget_available(&b), 1000 - 100 - 60);

    /* sent: the settled amount travels with it; available unchanged */
    budget_renew_sent(&b, 2000);
    assert_true(b.renewing);
    assert_int_equal(b.reporting, 60);
    assert_int_equal(b.settled, 0);
    assert_int_equal(budget_available(&b), 840);

    /* a call settles while it is in flight: settled again */
    budget_settle(&b, 100, 70, T0 + 2 * MS);
    assert_int_equal(b.settled, 70);
    assert_int_equal(budget_available(&b), 1000 - 0 - 70 - 60);

    /* it failed: the report moves back to settled, to be sent again */
    budget_renew_failed(&b);
    assert_false(b.renewing);
    assert_int_equal(b.reporting, 0);
    assert_int_equal(b.settled, 130);
    assert_int_equal(budget_available(&b), 870);
    assert_int_equal(b.lease, 1000); /* the lease held is kept */

    /* again, and this time answered: the report is in the database's
     * spent, the new lease replaces the old */
    budget_renew_sent(&b, 2000);
    assert_int_equal(b.reporting, 130);
    assert_true(budget_admit(&b, 100, T0 + 3 * MS));
    budget_renewed(&b, true, "aaaaaaaa-2222-3333-4444-555555555555", 2000, 100000, 130, 2000,
                   1700000000000000, T0 + 4 * MS, TTL);
    assert_false(b.renewing);
    assert_int_equal(b.reporting, 0);
    assert_int_equal(b.settled, 0);
    assert_int_equal(b.lease, 2000);
    assert_int_equal(b.spent, 130);
    assert_int_equal(b.leased, 2000);
    assert_int_equal(b.reset_at_us, 1700000000000000);
    assert_string_equal(b.lease_id, "aaaaaaaa-2222-3333-4444-555555555555");
    assert_int_equal(b.expires_ns, T0 + 4 * MS + TTL);
    assert_int_equal(b.renewed_ns, T0 + 4 * MS);
    assert_int_equal(budget_available(&b), 2000 - 100);

    /* granted nothing (budget spent): no lease id, no expiry */
    budget_settle(&b, 100, 100, T0 + 5 * MS);
    budget_renew_sent(&b, 2000);
    budget_renewed(&b, true, NULL, 0, 100000, 100000, 0, 0, T0 + 6 * MS, TTL);
    assert_string_equal(b.lease_id, "");
    assert_int_equal(b.lease, 0);
    assert_int_equal(b.expires_ns, 0);
    assert_false(budget_admit(&b, 1, T0 + 7 * MS));
}

/* The database sets the lease to what was asked (or less); calls admitted
 * while the renewal is in flight come out of that new lease, so they may
 * not take more than it will hold: otherwise the instance holds calls the
 * database no longer counts as leased, and another instance may be
 * granted the same money. */
static void test_inflight_admissions_fit_the_asked_lease(void **state)
{
    (void)state;
    budget_share b = granted(10000, 1000000, 0, T0);
    assert_true(budget_admit(&b, 1000, T0));
    budget_settle(&b, 1000, 1000, T0 + MS);
    assert_true(budget_admit(&b, 1000, T0 + MS)); /* in flight: reserved 1000 */
    /* the lease shrinks: ask for the reservation + 2000 */
    budget_renew_sent(&b, 3000);
    int64_t admitted = 0;
    while (budget_admit(&b, 500, T0 + 2 * MS))
        admitted += 500;
    assert_true(admitted <= 2000);
    /* the database granted what was asked: everything held fits in it */
    budget_renewed(&b, true, "11111111-2222-3333-4444-555555555555", 3000, 1000000, 1000,
                   3000, 0, T0 + 3 * MS, TTL);
    assert_true(b.reserved + b.settled <= b.lease);
    assert_true(budget_available(&b) >= 0);

    /* an idle lease goes back (want 0): nothing is admitted meanwhile */
    budget_share c = granted(10000, 1000000, 0, T0);
    budget_renew_sent(&c, 0);
    assert_false(budget_admit(&c, 1, T0 + MS));
    budget_renewed(&c, true, NULL, 0, 1000000, 0, 0, 0, T0 + 2 * MS, TTL);
    assert_int_equal(c.reserved, 0);

    /* a failed renewal keeps the (smaller) lease: safe either way */
    budget_share d = granted(10000, 1000000, 0, T0);
    budget_renew_sent(&d, 4000);
    budget_renew_failed(&d);
    assert_true(budget_available(&d) <= 10000);
    assert_true(budget_admit(&d, 4000, T0 + MS));
}

/* ------------------------------------------------------------ when to renew */

static void test_should_renew_low_water(void **state)
{
    (void)state;
    budget_share b = granted(1000, 1000000, 0, T0);
    assert_false(budget_should_renew(&b, T0 + MS, TTL));
    for (int i = 0; i < 8; i++)
        assert_true(budget_admit(&b, 100, T0 + MS));
    /* 200 left: under a quarter of the lease (250), but not 50 ms yet */
    assert_int_equal(budget_available(&b), 200);
    assert_false(budget_should_renew(&b, T0 + 49 * MS, TTL));
    assert_true(budget_should_renew(&b, T0 + 51 * MS, TTL));

    /* low water is also one worst case when that is more than a quarter */
    budget_share c = granted(1000, 1000000, 0, T0);
    assert_true(budget_admit(&c, 400, T0));
    assert_true(budget_admit(&c, 400, T0)); /* 200 left < last worst 400 */
    assert_true(budget_should_renew(&c, T0 + 60 * MS, TTL));
    budget_share d = granted(1000, 1000000, 0, T0);
    assert_true(budget_admit(&d, 300, T0)); /* 700 left: plenty */
    assert_false(budget_should_renew(&d, T0 + 60 * MS, TTL));

    /* the budget had nothing left unleased (max - spent - leased = 0):
     * looked at again once a second, not every 50 ms */
    budget_share e;
    memset(&e, 0, sizeof e);
    e.known = e.exists = true;
    budget_renew_sent(&e, 1000);
    budget_renewed(&e, true, "11111111-2222-3333-4444-555555555555", 300, 10000, 9700, 300, 0,
                   T0, TTL);
    assert_false(budget_admit(&e, 400, T0));
    assert_false(budget_should_renew(&e, T0 + 60 * MS, TTL));
    assert_false(budget_should_renew(&e, T0 + 900 * MS, TTL));
    assert_true(budget_should_renew(&e, T0 + 1001 * MS, TTL));
}

static void test_should_renew_expiring(void **state)
{
    (void)state;
    budget_share b = granted(1000, 1000000, 0, T0);
    /* expires at T0 + 30 s: renewed once it is within 15 s */
    assert_false(budget_should_renew(&b, T0 + 14 * S, TTL));
    assert_true(budget_should_renew(&b, T0 + 16 * S, TTL));
    /* no lease: nothing to expire */
    budget_share c = granted(0, 1000000, 1000000, T0);
    assert_false(budget_should_renew(&c, T0 + 29 * S, TTL));
}

static void test_should_renew_settled_report(void **state)
{
    (void)state;
    budget_share b = granted(100000, 10000000, 0, T0);
    assert_true(budget_admit(&b, 100, T0));
    budget_settle(&b, 100, 80, T0 + MS);
    /* reported every ttl/8 (3.75 s) */
    assert_false(budget_should_renew(&b, T0 + 3 * S, TTL));
    assert_true(budget_should_renew(&b, T0 + 4 * S, TTL));
}

static void test_should_renew_never_while_renewing(void **state)
{
    (void)state;
    budget_share b = granted(1000, 1000000, 0, T0);
    for (int i = 0; i < 10; i++)
        assert_true(budget_admit(&b, 100, T0));
    budget_settle(&b, 100, 100, T0);
    budget_renew_sent(&b, 1000);
    /* low, expiring, settled to report: all true, yet one is in flight */
    budget_settle(&b, 100, 100, T0 + S);
    assert_false(budget_should_renew(&b, T0 + 29 * S, TTL));
    budget_renew_failed(&b);
    assert_true(budget_should_renew(&b, T0 + 29 * S, TTL));
}

/* ------------------------------------------------------------ how much */

static void test_want_idle_is_zero(void **state)
{
    (void)state;
    budget_share b = granted(1000, 1000000, 0, T0);
    assert_true(budget_admit(&b, 100, T0));
    /* a call in flight: never idle */
    assert_true(budget_want(&b, T0 + 20 * S, IDLE) >= 100);
    budget_settle(&b, 100, 100, T0 + S);
    assert_true(budget_want(&b, T0 + 5 * S, IDLE) > 0);
    assert_int_equal(budget_want(&b, T0 + IDLE + 1, IDLE), 0);
}

static void test_want_slice(void **state)
{
    (void)state;
    /* no spend rate yet: four worst cases */
    budget_share b = granted(100000, 100000000, 0, T0);
    assert_true(budget_admit(&b, 1000, T0));
    budget_settle(&b, 1000, 0, T0);
    assert_int_equal(budget_want(&b, T0 + MS, IDLE), 4000);
    /* includes what is reserved in flight */
    assert_true(budget_admit(&b, 1000, T0 + MS));
    assert_true(budget_admit(&b, 1000, T0 + MS));
    assert_int_equal(budget_want(&b, T0 + 2 * MS, IDLE), 2000 + 4000);

    /* capped at a quarter of what is left of the budget: 10000 - 4000 */
    budget_share c = granted(1000, 10000, 4000, T0);
    assert_true(budget_admit(&c, 1000, T0));
    assert_int_equal(budget_want(&c, T0 + MS, IDLE), 1000 + 1500);
    /* but always at least one worst case (here more than what is left) */
    budget_share d = granted(1000, 10000, 9800, T0);
    assert_true(budget_admit(&d, 1000, T0));
    assert_int_equal(budget_want(&d, T0 + MS, IDLE), 1000 + 1000);
    /* even when the budget is overspent */
    budget_share e = granted(0, 10000, 12000, T0);
    e.last_worst = 700;
    e.used_ns = T0;
    assert_int_equal(budget_want(&e, T0 + MS, IDLE), 700);
    /* the first ask (the budget's size unknown): one worst case, not four
     * (the caller adds the call it is asking for) */
    budget_share f;
    memset(&f, 0, sizeof f);
    f.last_worst = 900;
    assert_int_equal(budget_want(&f, T0, IDLE), 900);
    /* ... and once it is answered, a renewal sizes the slice at once */
    budget_renew_sent(&f, 1800);
    assert_false(budget_should_renew(&f, T0, 10 * S));
    budget_renewed(&f, true, "l", 1800, 1000000, 0, 1800, 0, T0 + MS, 10 * S);
    assert_true(budget_should_renew(&f, T0 + MS, 10 * S));
    assert_int_equal(budget_want(&f, T0 + MS, IDLE), 4 * 900);
    budget_renew_sent(&f, 4 * 900);
    budget_renewed(&f, true, "l", 4 * 900, 1000000, 0, 3600, 0, T0 + 2 * MS, 10 * S);
    assert_false(budget_should_renew(&f, T0 + 2 * MS, 10 * S));
}

/* Streams: calls reserve for seconds before any settles; the slice follows
 * the rate of reservations, not only of spend. */
static void test_want_grows_with_admissions(void **state)
{
    (void)state;
    budget_share b = granted(1000000000, 100000000000, 0, T0);
    for (int i = 0; i < 100; i++)
        assert_true(budget_admit(&b, 1000, T0 + (uint64_t)i * 10 * MS));
    int64_t want = budget_want(&b, T0 + S, IDLE);
    /* 100 worst cases reserved, plus a slice of two seconds at the rate they
     * came (about 18,000/s after one second of 100,000/s), not four */
    assert_true(want > 100 * 1000 + 30000);
    assert_true(want < 100 * 1000 + 2 * 100000);
}

static void test_rate_grows_with_spend(void **state)
{
    (void)state;
    budget_share b = granted(INT64_C(1000000000000), INT64_C(1000000000000000), 0, T0);
    double last = 0;
    uint64_t now = T0;
    /* 1000 nano every 10 ms: 100000 nano/s */
    for (int i = 0; i < 2000; i++) {
        now += 10 * MS;
        assert_true(budget_admit(&b, 1000, now));
        budget_settle(&b, 1000, 1000, now);
        if (i < 200) /* rising while the average fills */
            assert_true(b.rate > last);
        last = b.rate;
    }
    assert_true(b.rate > 90000.0 && b.rate < 110000.0);
    /* the slice is about two seconds at that rate, over four worst cases */
    int64_t want = budget_want(&b, now, IDLE);
    assert_true(want > 180000 && want < 220000);
    /* twice the spend: twice the rate (the lease renewed meanwhile) */
    renew_round(&b, INT64_C(1000000000000), INT64_C(1000000000000), now);
    for (int i = 0; i < 2000; i++) {
        now += 10 * MS;
        assert_true(budget_admit(&b, 2000, now));
        budget_settle(&b, 2000, 2000, now);
    }
    assert_true(b.rate > 180000.0 && b.rate < 220000.0);
    /* quiet for a while: it decays (the next spend sees a low rate) */
    now += 20 * S;
    budget_settle(&b, 0, 1, now);
    assert_true(b.rate < 1000.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_admit_within_lease_refuse_past),
        cmocka_unit_test(test_settle_replaces_reservation_by_price),
        cmocka_unit_test(test_unknown_refuses_and_asks),
        cmocka_unit_test(test_no_budget_admits_everything),
        cmocka_unit_test(test_lapsed_lease_refuses),
        cmocka_unit_test(test_zero_worst_always_admitted),
        cmocka_unit_test(test_renew_bookkeeping),
        cmocka_unit_test(test_inflight_admissions_fit_the_asked_lease),
        cmocka_unit_test(test_should_renew_low_water),
        cmocka_unit_test(test_should_renew_expiring),
        cmocka_unit_test(test_should_renew_settled_report),
        cmocka_unit_test(test_should_renew_never_while_renewing),
        cmocka_unit_test(test_want_idle_is_zero),
        cmocka_unit_test(test_want_slice),
        cmocka_unit_test(test_want_grows_with_admissions),
        cmocka_unit_test(test_rate_grows_with_spend),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
