/* test_topic: the topic table against a plain model (a matrix of who is
 * subscribed to what), and fan-outs whose deliver function unsubscribes,
 * makes subscribers leave and subscribes new ones while they run: every
 * subscriber present when the fan-out starts and still there at its turn
 * is called exactly once, nobody else is, and the table is empty (nothing
 * leaked, under ASan) once everyone has left. The watch function hears of
 * every topic that comes and goes, once each, and topic_each visits exactly
 * the topics that exist. */
#include "topic.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unit.h"

#define OWNERS 64
#define NAMES 40

static char owners[OWNERS]; /* their addresses are the owners */
static char names[NAMES][16];
static int model[OWNERS][NAMES];

static size_t name_len(int k)
{
    return strlen(names[k]);
}

static int name_index(const char *name, size_t len)
{
    for (int k = 0; k < NAMES; k++)
        if (len == name_len(k) && memcmp(name, names[k], len) == 0)
            return k;
    return -1;
}

/* What the watch function has been told: 1 while a topic exists. */
static int watched[NAMES];
static int watch_on;

static void watch(void *ctx, const char *name, size_t len, int exists)
{
    CHECK(ctx == watched);
    int k = name_index(name, len);
    CHECK(k >= 0);
    if (k < 0)
        return;
    if (watched[k] == exists) /* told twice of the same change */
        CHECK_EQ(watched[k], !exists);
    watched[k] = exists;
}

static void visit(void *ctx, const char *name, size_t len)
{
    int k = name_index(name, len);
    CHECK(k >= 0);
    if (k >= 0)
        ((int *)ctx)[k]++;
}

static void watch_table(struct topic_table *tt)
{
    memset(watched, 0, sizeof watched);
    watch_on = 1;
    topic_table_watch(tt, watch, watched);
}

static void check_model(struct topic_table *tt)
{
    size_t subs = 0, nowners = 0, ntopics = 0;
    for (int k = 0; k < NAMES; k++) {
        size_t n = 0;
        for (int o = 0; o < OWNERS; o++)
            n += model[o][k];
        if (topic_subscribers(tt, names[k], name_len(k)) != n)
            CHECK_EQ(topic_subscribers(tt, names[k], name_len(k)), n);
        ntopics += n > 0;
        CHECK_EQ(topic_find(tt, names[k], name_len(k)) != NULL, n > 0);
    }
    for (int o = 0; o < OWNERS; o++) {
        size_t n = 0;
        for (int k = 0; k < NAMES; k++) {
            n += model[o][k];
            if (topic_is_subscribed(tt, &owners[o], names[k], name_len(k)) != model[o][k])
                CHECK_EQ(topic_is_subscribed(tt, &owners[o], names[k], name_len(k)), model[o][k]);
        }
        subs += n;
        nowners += n > 0;
        CHECK_EQ(topic_owner_count(tt, &owners[o]), n);
        for (size_t i = 0; i < n; i++) {
            size_t len;
            const char *nm = topic_owner_topic(tt, &owners[o], i, &len);
            int found = -1;
            for (int k = 0; k < NAMES; k++)
                if (len == name_len(k) && memcmp(nm, names[k], len) == 0)
                    found = k;
            CHECK(found >= 0 && model[o][found]);
        }
    }
    int seen[NAMES] = {0};
    topic_each(tt, visit, seen);
    for (int k = 0; k < NAMES; k++) {
        int exists = topic_find(tt, names[k], name_len(k)) != NULL;
        if (seen[k] != exists)
            CHECK_EQ(seen[k], exists);
        if (watch_on && watched[k] != exists)
            CHECK_EQ(watched[k], exists);
    }
    size_t t, m, s;
    topic_table_stats(tt, &t, &m, &s);
    CHECK_EQ(t, ntopics);
    CHECK_EQ(m, nowners);
    CHECK_EQ(s, subs);
}

/* A fan-out's script: what deliver does when it reaches an owner. */
struct script {
    struct topic_table *tt;
    int topic;
    int calls[OWNERS];
    int act_at;     /* at this owner's turn... */
    int unsub[4];   /* ...unsubscribe these from the topic (-1: none) */
    int leave[4];   /* ...make these leave everything */
    int join[4];    /* ...subscribe these to the topic */
};

static int deliver(void *ctx, void *owner, unsigned cls)
{
    struct script *sc = ctx;
    int o = (int)((char *)owner - owners);
    CHECK_EQ(cls, (unsigned)o % TOPIC_CLASSES);
    sc->calls[o]++;
    int ok = o % 5 == 4 ? 0 : 1; /* some deliveries fail: not counted */
    if (o != sc->act_at)
        return ok;
    const char *nm = names[sc->topic];
    for (int i = 0; i < 4; i++) {
        if (sc->unsub[i] >= 0) {
            CHECK_EQ(topic_unsubscribe(sc->tt, &owners[sc->unsub[i]], nm, strlen(nm)),
                     model[sc->unsub[i]][sc->topic]);
            model[sc->unsub[i]][sc->topic] = 0;
        }
        if (sc->leave[i] >= 0) {
            topic_leave_all(sc->tt, &owners[sc->leave[i]]);
            memset(model[sc->leave[i]], 0, sizeof model[0]);
        }
        if (sc->join[i] >= 0) {
            int j = sc->join[i];
            CHECK_EQ(topic_subscribe(sc->tt, &owners[j], (unsigned)j % TOPIC_CLASSES, nm,
                                     strlen(nm)),
                     !model[j][sc->topic]);
            model[j][sc->topic] = 1;
        }
    }
    return ok;
}

static void fanout_during_changes(void)
{
    struct topic_table *tt = topic_table_new(12345);
    watch_table(tt);
    memset(model, 0, sizeof model);
    for (int o = 0; o < 40; o++) {
        CHECK_EQ(topic_subscribe(tt, &owners[o], (unsigned)o % TOPIC_CLASSES, names[0], name_len(0)), 1);
        CHECK_EQ(topic_subscribe(tt, &owners[o], (unsigned)o % TOPIC_CLASSES, names[1], name_len(1)), 1);
        model[o][0] = model[o][1] = 1;
    }
    int before[OWNERS];
    memcpy(before, (int[OWNERS]){0}, sizeof before);
    for (int o = 0; o < OWNERS; o++)
        before[o] = model[o][0];
    /* At owner 10's turn: owners 3 (done) and 30 (to come) unsubscribe,
     * 5 (done) and 33 (to come) leave, 10 itself leaves, 50 and 51 join. */
    struct script sc = {tt, 0, {0}, 10, {3, 30, -1, -1}, {5, 33, 10, -1}, {50, 51, -1, -1}};
    size_t n = topic_publish(tt, topic_find(tt, names[0], name_len(0)), &owners[7], deliver, &sc);
    size_t expect = 0;
    for (int o = 0; o < OWNERS; o++) {
        int want = before[o] && o != 7 && o != 30 && o != 33;
        CHECK_EQ(sc.calls[o], want);
        expect += want && o % 5 != 4;
    }
    CHECK_EQ(n, expect);
    check_model(tt);
    /* A second fan-out reaches the new set, in full. */
    struct script sc2 = {tt, 0, {0}, -1, {-1, -1, -1, -1}, {-1, -1, -1, -1}, {-1, -1, -1, -1}};
    topic_publish(tt, topic_find(tt, names[0], name_len(0)), NULL, deliver, &sc2);
    for (int o = 0; o < OWNERS; o++)
        CHECK_EQ(sc2.calls[o], model[o][0]);
    /* Everyone leaves during a fan-out: the topic goes with the last. */
    struct script sc3 = {tt, 1, {0}, 0, {-1, -1, -1, -1}, {-1, -1, -1, -1}, {-1, -1, -1, -1}};
    for (int o = 0; o < OWNERS; o++)
        if (model[o][1] && o != 0)
            topic_unsubscribe(tt, &owners[o], names[1], name_len(1)), model[o][1] = 0;
    sc3.unsub[0] = 0;
    topic_publish(tt, topic_find(tt, names[1], name_len(1)), NULL, deliver, &sc3);
    CHECK(topic_find(tt, names[1], name_len(1)) == NULL);
    check_model(tt);
    for (int o = 0; o < OWNERS; o++) {
        topic_leave_all(tt, &owners[o]);
        memset(model[o], 0, sizeof model[o]);
    }
    check_model(tt);
    for (int k = 0; k < NAMES; k++)
        CHECK_EQ(watched[k], 0);
    topic_table_free(tt);
    watch_on = 0;
}

static void random_ops(void)
{
    struct topic_table *tt = topic_table_new(99);
    watch_table(tt);
    memset(model, 0, sizeof model);
    srand(7);
    for (int step = 0; step < 200000; step++) {
        int o = rand() % OWNERS, k = rand() % NAMES, op = rand() % 100;
        if (op < 55) {
            int r = topic_subscribe(tt, &owners[o], (unsigned)o % TOPIC_CLASSES, names[k], name_len(k));
            if (r != !model[o][k])
                CHECK_EQ(r, !model[o][k]);
            model[o][k] = 1;
        } else if (op < 98) {
            int r = topic_unsubscribe(tt, &owners[o], names[k], name_len(k));
            if (r != model[o][k])
                CHECK_EQ(r, model[o][k]);
            model[o][k] = 0;
        } else {
            topic_leave_all(tt, &owners[o]);
            memset(model[o], 0, sizeof model[o]);
        }
        if (step % 20000 == 0)
            check_model(tt);
    }
    check_model(tt);
    /* The class mask follows the subscribers' classes. */
    for (int k = 0; k < NAMES; k++) {
        unsigned want = 0;
        for (int o = 0; o < OWNERS; o++)
            if (model[o][k])
                want |= 1u << (o % TOPIC_CLASSES);
        struct topic *t = topic_find(tt, names[k], name_len(k));
        CHECK_EQ(t ? topic_classes(t) : 0, want);
    }
    topic_table_free(tt); /* with subscriptions left: ASan sees any leak */
    watch_on = 0;
}

static void names_are_bytes(void)
{
    struct topic_table *tt = topic_table_new(1);
    char a[TOPIC_NAME_MAX], b[TOPIC_NAME_MAX];
    memset(a, 'x', sizeof a);
    memcpy(b, a, sizeof b);
    b[TOPIC_NAME_MAX - 1] = 'y';
    CHECK_EQ(topic_subscribe(tt, &owners[0], 0, a, sizeof a), 1);
    CHECK_EQ(topic_subscribe(tt, &owners[0], 0, b, sizeof b), 1);
    CHECK_EQ(topic_subscribe(tt, &owners[0], 0, "a\0b", 3), 1);
    CHECK_EQ(topic_subscribe(tt, &owners[0], 0, "a\0c", 3), 1);
    CHECK_EQ(topic_subscribe(tt, &owners[0], 0, "a", 1), 1);
    CHECK_EQ(topic_owner_count(tt, &owners[0]), 5);
    CHECK_EQ(topic_subscribers(tt, "a\0b", 3), 1);
    CHECK_EQ(topic_subscribers(tt, "a\0d", 3), 0);
    CHECK_EQ(topic_unsubscribe(tt, &owners[0], b, sizeof b), 1);
    CHECK_EQ(topic_is_subscribed(tt, &owners[0], a, sizeof a), 1);
    CHECK_EQ(topic_is_subscribed(tt, &owners[0], b, sizeof b), 0);
    topic_leave_all(tt, &owners[0]);
    topic_leave_all(tt, &owners[1]); /* never subscribed: nothing happens */
    size_t t, m, s;
    topic_table_stats(tt, &t, &m, &s);
    CHECK_EQ(t + m + s, 0);
    topic_table_free(tt);
    topic_table_free(NULL);
}

int main(void)
{
    for (int k = 0; k < NAMES; k++)
        snprintf(names[k], sizeof names[k], "room/%d", k * 7);
    names_are_bytes();
    fanout_during_changes();
    random_ops();
    return unit_done("test_topic");
}
