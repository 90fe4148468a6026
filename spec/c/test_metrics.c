/* test_metrics: the counts' slots and the exposition, without a server. Two
 * workers' blocks are summed per app by name (whatever slot each worker
 * gave it), label values are escaped as the text format wants, apps past
 * the 64th share "(none)", close codes and statuses fall in the right
 * buckets, the lag histogram is cumulative, and every sample line has a
 * TYPE line before it. */
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "unit.h"

static struct metrics blocks[2];

/* The value of one sample in text, or -1. */
static long long sample(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, name, n) == 0 && p[n] == ' ')
            return atoll(p + n + 1);
    return -1;
}

static char *render(int draining)
{
    struct buf out = {0};
    struct metrics_process proc = {123456, 7};
    CHECK_EQ(metrics_render(&out, blocks, 2, &proc, draining), 0);
    CHECK(buf_append(&out, "", 1) == 0);
    char *text = strdup((const char *)buf_head(&out));
    buf_reset(&out);
    return text;
}

int main(void)
{
    metrics_init(&blocks[0], 100);
    metrics_init(&blocks[1], 200);

    /* The same app in both workers, found in different slots. */
    struct metrics_app *other = metrics_app(&blocks[1], "other");
    struct metrics_app *a0 = metrics_app(&blocks[0], "chat");
    struct metrics_app *a1 = metrics_app(&blocks[1], "chat");
    CHECK(metrics_app(&blocks[0], "chat") == a0);
    CHECK(a0 == &blocks[0].apps[0] && a1 == &blocks[1].apps[1]);
    char *patterns[] = {"/chat", "/rooms/:room"};
    metrics_app_routes(a0, patterns, 2);
    CHECK(strcmp(a0->route, "/chat,/rooms/:room") == 0);
    metrics_app_routes(other, patterns, 1);
    METRIC_ADD(a0->open, 3);
    METRIC_ADD(a1->open, 4);
    METRIC_SUB(a1->open, 1);
    METRIC_ADD(a0->msgs_in, 10);
    METRIC_ADD(a1->msgs_in, 5);
    METRIC_ADD(a0->handshakes[metrics_status_of(101)], 2);
    METRIC_ADD(a1->handshakes[metrics_status_of(403)], 1);
    METRIC_ADD(metrics_no_app(&blocks[0])->handshakes[metrics_status_of(404)], 6);
    METRIC_ADD(metrics_no_app(&blocks[1])->handshakes[metrics_status_of(999)], 1);
    CHECK_EQ(metrics_status_of(999), MS_OTHER);

    /* Close codes and who began them. */
    CHECK_EQ(metrics_close_of(1000), 0);
    CHECK_EQ(metrics_close_of(1015), 15);
    CHECK_EQ(metrics_close_of(1016), MC_OTHER);
    CHECK_EQ(metrics_close_of(3000), MC_3XXX);
    CHECK_EQ(metrics_close_of(4999), MC_4XXX);
    CHECK_EQ(metrics_close_of(5000), MC_OTHER);
    metrics_close(&blocks[0], 1000, MB_CLIENT);
    metrics_close(&blocks[1], 1000, MB_CLIENT);
    metrics_close(&blocks[1], 4001, MB_SERVER);
    metrics_close(&blocks[0], 1006, MB_NONE);

    /* Lag: 0.5 ms, 3 ms, 2 s. */
    metrics_lag(&blocks[0], 0.0005);
    metrics_lag(&blocks[1], 0.003);
    metrics_lag(&blocks[1], 2.0);

    char *text = render(0);
    CHECK_EQ(sample(text, "moonport_connections{app=\"chat\",route=\"/chat,/rooms/:room\"}"), 6);
    CHECK_EQ(sample(text, "moonport_messages_received_total{app=\"chat\",route=\"/chat,/rooms/:room\"}"), 15);
    CHECK_EQ(sample(text, "moonport_handshakes_total{app=\"chat\",route=\"/chat,/rooms/:room\",status=\"101\"}"), 2);
    CHECK_EQ(sample(text, "moonport_handshakes_total{app=\"chat\",route=\"/chat,/rooms/:room\",status=\"403\"}"), 1);
    CHECK_EQ(sample(text, "moonport_handshakes_total{app=\"(none)\",route=\"\",status=\"404\"}"), 6);
    CHECK_EQ(sample(text, "moonport_handshakes_total{app=\"(none)\",route=\"\",status=\"other\"}"), 1);
    CHECK_EQ(sample(text, "moonport_connections{app=\"other\",route=\"/chat\"}"), 0);
    CHECK_EQ(sample(text, "moonport_closes_total{code=\"1000\",by=\"client\"}"), 2);
    CHECK_EQ(sample(text, "moonport_closes_total{code=\"4000-4999\",by=\"server\"}"), 1);
    CHECK_EQ(sample(text, "moonport_closes_total{code=\"1006\",by=\"none\"}"), 1);
    CHECK_EQ(sample(text, "moonport_event_loop_lag_seconds_bucket{le=\"0.001\"}"), 1);
    CHECK_EQ(sample(text, "moonport_event_loop_lag_seconds_bucket{le=\"0.005\"}"), 2);
    CHECK_EQ(sample(text, "moonport_event_loop_lag_seconds_bucket{le=\"1\"}"), 2);
    CHECK_EQ(sample(text, "moonport_event_loop_lag_seconds_bucket{le=\"+Inf\"}"), 3);
    CHECK_EQ(sample(text, "moonport_event_loop_lag_seconds_count"), 3);
    CHECK_EQ(sample(text, "moonport_workers"), 2);
    CHECK_EQ(sample(text, "moonport_draining"), 0);
    CHECK_EQ(sample(text, "process_resident_memory_bytes"), 123456);
    CHECK_EQ(sample(text, "process_open_fds"), 7);
    CHECK(strstr(text, "moonport_backplane") == NULL); /* no backplane configured */
    /* Every sample's metric has its TYPE line earlier in the text. */
    for (const char *p = text; *p; p = strchr(p, '\n') + 1) {
        if (*p != '#') {
            char name[128], type[160];
            size_t n = strcspn(p, "{ ");
            snprintf(name, sizeof name, "%.*s", (int)n, p);
            snprintf(type, sizeof type, "# TYPE %s ", name);
            int found = strstr(text, type) && strstr(text, type) < p;
            if (!found) { /* a histogram's _bucket, _sum and _count belong to it */
                char *under = strrchr(name, '_');
                if (under)
                    *under = 0;
                snprintf(type, sizeof type, "# TYPE %s histogram", name);
                found = strstr(text, type) && strstr(text, type) < p;
            }
            CHECK(found);
        }
        if (!strchr(p, '\n'))
            break;
    }
    free(text);

    /* A worker that is not running does not count; draining shows. */
    blocks[1].live = 0;
    text = render(1);
    CHECK_EQ(sample(text, "moonport_connections{app=\"chat\",route=\"/chat,/rooms/:room\"}"), 3);
    CHECK_EQ(sample(text, "moonport_workers"), 1);
    CHECK_EQ(sample(text, "moonport_draining"), 1);
    free(text);
    blocks[1].live = 1;

    /* Label values with quotes, backslashes and newlines are escaped. */
    struct metrics_app *odd = metrics_app(&blocks[0], "we\"ird\\na\nme");
    METRIC_ADD(odd->open, 1);
    text = render(0);
    CHECK_EQ(sample(text, "moonport_connections{app=\"we\\\"ird\\\\na\\nme\",route=\"\"}"), 1);
    free(text);

    /* Past 64 apps, the rest share "(none)". */
    for (int i = 0; i < 70; i++) {
        char name[32];
        snprintf(name, sizeof name, "app%d", i);
        struct metrics_app *s = metrics_app(&blocks[0], name);
        CHECK(s != NULL);
        if (i >= METRICS_APPS - 2) /* chat and the odd one took two slots */
            CHECK(s == metrics_no_app(&blocks[0]));
    }
    CHECK_EQ(blocks[0].napps, METRICS_APPS);
    return unit_done("test_metrics");
}
