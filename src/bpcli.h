/* bpcli: `moonport publish`, a publish to a topic on every node from a
 * script or a cron job, through the backplane of a config file or of
 * --backplane, with the same sharding and payload format as the server
 * (bpwire.h). A one-shot command: it connects, publishes, and exits;
 * synchronous hiredis with timeouts, never part of a running server. */
#ifndef MOONPORT_BPCLI_H
#define MOONPORT_BPCLI_H

/* argv[0] is "publish". Returns the exit status: 0 published, 1 failed
 * (Redis unreachable, refused), 2 a bad command line. */
int bpcli_publish(int argc, char **argv);

#endif
