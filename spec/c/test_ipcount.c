/* test_ipcount: the per-address counts against a plain array model, over
 * random takes and puts on a few hundred addresses (IPv4, IPv6, and the
 * v4-mapped forms, which must count as their IPv4 address), with limits;
 * the table is empty at the end and shrinks back. */
#include "ipcount.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "proxy.h"
#include "unit.h"

#define N 300

static struct proxy_addr addrs[N];
static unsigned model[N];

int main(void)
{
    for (int i = 0; i < N; i++) {
        char text[64];
        if (i % 3 == 0)
            snprintf(text, sizeof text, "10.%d.%d.1", i / 256, i % 256);
        else if (i % 3 == 1)
            snprintf(text, sizeof text, "2001:db8::%x", i);
        else
            snprintf(text, sizeof text, "192.0.%d.%d", i / 256, i % 256);
        CHECK_EQ(proxy_addr_parse(text, strlen(text), &addrs[i]), 0);
    }
    struct ipcount *t = ipcount_new(12345);
    CHECK(t != NULL);
    srand(7);
    const unsigned limit = 5;
    int mismatches = 0;
    for (int step = 0; step < 200000; step++) {
        int i = rand() % (step < 100000 ? N : 20); /* then a few hot addresses */
        if (rand() % 2) {
            int r = ipcount_take(t, &addrs[i], limit);
            if (r != (model[i] < limit))
                mismatches++;
            if (r == 1)
                model[i]++;
        } else if (model[i]) {
            ipcount_put(t, &addrs[i]);
            model[i]--;
        }
        if (step % 1000 == 0) {
            size_t distinct = 0;
            for (int k = 0; k < N; k++) {
                distinct += model[k] > 0;
                if (ipcount_get(t, &addrs[k]) != model[k])
                    mismatches++;
            }
            if (ipcount_size(t) != distinct)
                mismatches++;
        }
    }
    CHECK_EQ(mismatches, 0);
    /* a v4-mapped IPv6 address is the same client as its IPv4 address */
    struct proxy_addr v4, mapped;
    proxy_addr_parse("203.0.113.1", 11, &v4);
    memset(&mapped, 0, sizeof mapped);
    mapped.family = AF_INET6;
    inet_pton(AF_INET6, "::ffff:203.0.113.1", mapped.bytes);
    CHECK_EQ(ipcount_take(t, &v4, 2), 1);
    CHECK_EQ(ipcount_take(t, &mapped, 2), 1);
    CHECK_EQ(ipcount_take(t, &v4, 2), 0);
    ipcount_put(t, &mapped);
    ipcount_put(t, &v4);
    CHECK_EQ(ipcount_get(t, &v4), 0);
    /* a Unix socket has no address: never limited, never counted */
    struct proxy_addr none;
    memset(&none, 0, sizeof none);
    CHECK_EQ(ipcount_take(t, &none, 1), 1);
    CHECK_EQ(ipcount_take(t, &none, 1), 1);
    ipcount_put(t, &none);
    /* everyone leaves: empty */
    for (int i = 0; i < N; i++)
        while (model[i]) {
            ipcount_put(t, &addrs[i]);
            model[i]--;
        }
    CHECK_EQ(ipcount_size(t), 0);
    for (int i = 0; i < N; i++)
        CHECK_EQ(ipcount_get(t, &addrs[i]), 0);
    ipcount_free(t);
    ipcount_free(NULL);
    return unit_done("ipcount");
}
