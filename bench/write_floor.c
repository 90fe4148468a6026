/* write_floor: what one write to a loopback TCP socket costs the process
 * that writes, with nothing of moonport in the way: the floor under any
 * fan-out measured on this machine. It opens N connections to itself, forks
 * a reader pinned to one CPU (epoll, reads everything), and on another CPU
 * writes B bytes to every connection R rounds a second for S seconds, then
 * prints its own CPU time (user + system) per write.
 *
 *   build/bench/write_floor [N [B [R [S [spin]]]]]   defaults: 1000 700 100 4
 *
 * "spin" makes the reader poll without sleeping, so that no write has to
 * wake it: what is left is the TCP path itself (on this VM, nearly all of
 * it: 6.7-7.4 us against 7.2-7.7 us with a sleeping reader).
 * A fan-out of 1,000 msgs/s to 1,000 subscribers that lets 10 messages
 * share a write (timeouts.publish_delay = 0.01) is N=1000, B=700 (10 frames
 * of 64 B plus headers), R=100: 100,000 writes a second. Whatever this
 * prints per write, times the writes, is CPU no server can save without
 * writing less often. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set))
        perror("write_floor: sched_setaffinity (running unpinned)");
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu_seconds(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
           (double)(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

/* The reader: drain every connection until the writer goes. */
static void reader(const int *fds, int n, int spin)
{
    pin(1);
    int ep = epoll_create1(0);
    if (ep < 0)
        die("write_floor: epoll_create1");
    for (int i = 0; i < n; i++) {
        struct epoll_event e = {.events = EPOLLIN, .data.fd = fds[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &e))
            die("write_floor: epoll_ctl");
    }
    static char buf[65536];
    struct epoll_event ev[256];
    for (;;) {
        int k = epoll_wait(ep, ev, 256, spin ? 0 : -1);
        if (k < 0 && errno != EINTR)
            die("write_floor: epoll_wait");
        for (int j = 0; j < k; j++)
            if (read(ev[j].data.fd, buf, sizeof buf) <= 0)
                _exit(0);
    }
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1000, bytes = argc > 2 ? atoi(argv[2]) : 700;
    double rounds = argc > 3 ? atof(argv[3]) : 100, secs = argc > 4 ? atof(argv[4]) : 4;
    int spin = argc > 5 && strcmp(argv[5], "spin") == 0;
    if (n < 1 || bytes < 1 || rounds <= 0 || secs <= 0) {
        fprintf(stderr, "usage: write_floor [CONNS [BYTES [ROUNDS_PER_S [SECONDS]]]]\n");
        return 2;
    }
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) || listen(lfd, 4096) ||
        getsockname(lfd, (struct sockaddr *)&a, &alen))
        die("write_floor: listen");
    int *cl = calloc((size_t)n, sizeof *cl), *sv = calloc((size_t)n, sizeof *sv), one = 1;
    if (!cl || !sv)
        die("write_floor: calloc");
    for (int i = 0; i < n; i++) {
        if ((cl[i] = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
            connect(cl[i], (struct sockaddr *)&a, sizeof a) ||
            (sv[i] = accept(lfd, NULL, NULL)) < 0)
            die("write_floor: connecting (ulimit -n?)");
        setsockopt(sv[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    pid_t pid = fork();
    if (pid < 0)
        die("write_floor: fork");
    if (pid == 0)
        reader(cl, n, spin);
    pin(0);
    char *msg = calloc(1, (size_t)bytes);
    if (!msg)
        die("write_floor: calloc");
    long writes = 0, short_writes = 0;
    double cpu0 = cpu_seconds(), t0 = now(), next = t0;
    while (now() - t0 < secs) {
        for (int i = 0; i < n; i++) {
            ssize_t w = send(sv[i], msg, (size_t)bytes, MSG_DONTWAIT);
            writes += w > 0;
            short_writes += w < bytes;
        }
        next += 1.0 / rounds;
        double d = next - now();
        if (d > 0) {
            struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
            nanosleep(&ts, NULL);
        }
    }
    double cpu = cpu_seconds() - cpu0, wall = now() - t0;
    printf("write_floor: %d conns, %d B a write, %.0f rounds/s: %ld writes in %.2f s "
           "(%ld short), writer CPU %.1f%%, %.2f us per write\n",
           n, bytes, rounds, writes, wall, short_writes, 100 * cpu / wall,
           writes ? 1e6 * cpu / (double)writes : 0.0);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return 0;
}
