/* unit.h: the smallest test harness that can fail. CHECK records a failure
 * with file:line and keeps going; unit_done() prints the tally in the
 * "N passed, N failed" form spec/run sums, and returns the exit status. */
#ifndef MOONPORT_UNIT_H
#define MOONPORT_UNIT_H

#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

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

/* For parsers of untrusted bytes: the end of a readable page followed by
 * one that faults on any access. An input copied to end - len is read up
 * to its last byte and no further, or the test crashes. NULL if it cannot
 * be made (a CHECK has failed then); unit_guard_free(end) gives it back. */
static inline char *unit_guard_page(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char *map = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(map != MAP_FAILED);
    if (map == MAP_FAILED)
        return NULL;
    CHECK(mprotect(map + page, page, PROT_NONE) == 0);
    return map + page;
}

static inline void unit_guard_free(char *end)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    munmap(end - page, 2 * page);
}

static inline int unit_done(const char *name)
{
    printf("%s: %d passed, %d failed\n", name, unit_passed, unit_failed);
    return unit_failed ? 1 : 0;
}

#endif
