/* unit.h: the smallest test harness that can fail. CHECK records a failure
 * with file:line and keeps going; unit_done() prints the tally in the
 * "N passed, N failed" form spec/run sums, and returns the exit status. */
#ifndef MOONPORT_UNIT_H
#define MOONPORT_UNIT_H

#include <stdio.h>

static int unit_passed, unit_failed;

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (cond) {                                                                    \
            unit_passed++;                                                             \
        } else {                                                                       \
            unit_failed++;                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
        }                                                                              \
    } while (0)

#define CHECK_EQ(a, b)                                                                 \
    do {                                                                               \
        long long unit_a_ = (long long)(a), unit_b_ = (long long)(b);                  \
        if (unit_a_ == unit_b_) {                                                      \
            unit_passed++;                                                             \
        } else {                                                                       \
            unit_failed++;                                                             \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s (%lld != %lld)\n", __FILE__, \
                    __LINE__, #a, #b, unit_a_, unit_b_);                               \
        }                                                                              \
    } while (0)

static inline int unit_done(const char *name)
{
    printf("%s: %d passed, %d failed\n", name, unit_passed, unit_failed);
    return unit_failed ? 1 : 0;
}

#endif
