/* fuzz_topic: libFuzzer target for the topic table. The input is a script
 * of operations (subscribe, unsubscribe, leave, publish) on 16 owners and
 * 8 short names; a publish's deliver function runs more of the script in
 * the middle of the fan-out. After every step the table must agree with a
 * plain matrix of who is in what, each fan-out must call exactly the
 * subscribers that were there at its start and still are at their turn
 * (minus the skipped one), and nothing may leak (ASan). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "topic.h"

#define CHECK(c)                                                                               \
    do {                                                                                       \
        if (!(c))                                                                              \
            abort();                                                                           \
    } while (0)

#define OWNERS 16
#define NAMES 8

static char owners[OWNERS];
static const char *const names[NAMES] = {"a", "b", "room/1", "room/2", "x\0y", "x\0z",
                                         "long-topic-name-0", "long-topic-name-1"};
static const size_t lens[NAMES] = {1, 1, 6, 6, 3, 3, 17, 17};

struct run {
    struct topic_table *tt;
    const uint8_t *p, *end;
    int model[OWNERS][NAMES];
    int depth;
    /* the fan-out running now */
    int topic, skip;
    int before[OWNERS]; /* subscribed when it started */
    int called[OWNERS];
};

static void step(struct run *r);

static int deliver(void *ctx, void *owner, unsigned cls)
{
    struct run *r = ctx;
    int o = (int)((char *)owner - owners);
    CHECK(o >= 0 && o < OWNERS && (unsigned)o % TOPIC_CLASSES == cls);
    CHECK(o != r->skip && r->before[o] && r->model[o][r->topic] && !r->called[o]);
    r->called[o] = 1;
    if (r->p < r->end && (*r->p & 1)) { /* change the table mid-fan-out */
        r->p++;
        step(r);
    }
    return o & 1;
}

static void check_model(const struct run *r)
{
    size_t total = 0;
    for (int k = 0; k < NAMES; k++) {
        size_t n = 0;
        for (int o = 0; o < OWNERS; o++) {
            n += r->model[o][k];
            CHECK(topic_is_subscribed(r->tt, &owners[o], names[k], lens[k]) == r->model[o][k]);
        }
        CHECK(topic_subscribers(r->tt, names[k], lens[k]) == n);
        total += n;
    }
    size_t t, m, s;
    topic_table_stats(r->tt, &t, &m, &s);
    CHECK(s == total);
}

static void step(struct run *r)
{
    if (r->p + 2 > r->end)
        return;
    int op = r->p[0] % 4, o = (r->p[1] >> 3) % OWNERS, k = r->p[1] % NAMES;
    r->p += 2;
    switch (op) {
    case 0:
        CHECK(topic_subscribe(r->tt, &owners[o], (unsigned)o % TOPIC_CLASSES, names[k], lens[k]) ==
              !r->model[o][k]);
        /* one who joins during a fan-out is not called by it: before[] says so */
        r->model[o][k] = 1;
        break;
    case 1:
        CHECK(topic_unsubscribe(r->tt, &owners[o], names[k], lens[k]) == r->model[o][k]);
        r->model[o][k] = 0;
        if (r->depth && k == r->topic)
            r->before[o] = 0; /* should it join again, that is a new subscription */
        break;
    case 2:
        topic_leave_all(r->tt, &owners[o]);
        memset(r->model[o], 0, sizeof r->model[o]);
        if (r->depth)
            r->before[o] = 0;
        break;
    case 3: {
        if (r->depth) /* a fan-out runs no other fan-out */
            break;
        struct topic *t = topic_find(r->tt, names[k], lens[k]);
        int n = 0;
        for (int i = 0; i < OWNERS; i++)
            n += r->model[i][k];
        CHECK((t != NULL) == (n > 0));
        if (!t)
            break;
        r->depth++;
        r->topic = k;
        r->skip = o;
        for (int i = 0; i < OWNERS; i++) {
            r->before[i] = r->model[i][k];
            r->called[i] = 0;
        }
        size_t got = topic_publish(r->tt, t, &owners[o], deliver, r);
        size_t odd = 0;
        for (int i = 0; i < OWNERS; i++) {
            /* still there at the end: it must have been called */
            if (r->before[i] && r->model[i][k] && i != o)
                CHECK(r->called[i]);
            odd += r->called[i] && (i & 1);
        }
        CHECK(got == odd);
        r->depth--;
        break;
    }
    }
    check_model(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct run r;
    memset(&r, 0, sizeof r);
    r.tt = topic_table_new(size);
    CHECK(r.tt);
    r.p = data;
    r.end = data + size;
    while (r.p + 2 <= r.end)
        step(&r);
    if (size & 1) { /* sometimes everyone leaves; sometimes the table goes with them */
        for (int o = 0; o < OWNERS; o++)
            topic_leave_all(r.tt, &owners[o]);
        size_t t, m, s;
        topic_table_stats(r.tt, &t, &m, &s);
        CHECK(t == 0 && m == 0 && s == 0);
    }
    topic_table_free(r.tt);
    return 0;
}
