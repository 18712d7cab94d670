/*
 * spoold internals shared by its files: the control-socket server (control.c), the
 * metrics writer, privileges, sd_notify.
 */
#ifndef SPOOLD_SPOOLD_H
#define SPOOLD_SPOOLD_H

#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "conf.h"
#include "control.h"
#include "spool.h"
#include "util.h"

/* The supervised stages, in the order of children.c's sup_stages: splitter, scanner-runner,
 * router, connectors, lmtpd, exporter. */
#define N_STAGES 6

/* ---- spoold.c, for control.c ---- */

/* Act on one control request ("start", "stop", "restart", "pause", "resume" for a stage)
 * and put the reply text ("ok ..." or "error ...", no newline) into reply. */
void sup_control_do(const char *cmd, const char *stage, struct buf *reply);
/* Rewrite run/status atomically (best effort: a failure is logged). */
void sup_status_write(void);

/* ---- control.c: the control-socket server ---- */

/* Control clients being read. Each has one deadline from accept to reply, and none is
 * ever waited for: the socket is non-blocking and read when poll says so, so a client that
 * connects and says nothing, or one byte a second, costs a slot and nothing else. */
#define CTL_MAX 8
struct ctl_client {
	int fd; /* -1: free */
	int64_t deadline;
	struct ucred cred;
	size_t n;
	char line[CONTROL_LINE_MAX];
};
/* The client slots; fd -1 is a free slot. spoold's poll loop watches every fd >= 0. */
extern struct ctl_client sup_ctl[CTL_MAX];

/* Mark every slot free, once at start. */
void sup_ctl_init(void);
/* Close a client and free its slot. */
void sup_ctl_close(struct ctl_client *cl);
/* Accept one client on the listening socket lfd into a free slot; with none free it is
 * told "error busy" and closed at once. */
void sup_control_accept(int lfd);
/* Read what a client sent; once its line is complete, act on it, rewrite run/status,
 * reply and close. */
void sup_ctl_read(struct ctl_client *cl);
/* Reply "error timeout" to the clients past their deadline and close them. Returns the ms
 * until the next deadline, or -1 when no client is pending. */
int64_t sup_ctl_expire(void);

/* One stage as the metrics writer sees it. */
struct sup_stage_info {
	const char *name;
	int instances; /* configured */
	int up;        /* running now */
	int restarts;  /* since spoold started */
};

/* Write conf's metrics file atomically: the sum of the run/stats/ files of live processes
 * (files of dead ones are folded into a carry and removed), plus queue, slot and stage
 * gauges. Best effort: failures are logged. */
void prom_write(const struct conf *c, struct spool *sp, const struct sup_stage_info *st, size_t n,
                int config_ok);

/* When root and c->user is set: give the spool's directories (and single-named regular
 * files outside inbound/) to the user, by descriptor and without following anything, then
 * drop to it (setgroups, setgid, setuid) for good. Dies on failure: running as root by
 * accident is worse than not running. */
void privs_drop(const struct conf *c, struct spool *sp, gid_t control_gid);
/* 1 when spoold will drop to c->user (it runs as root, the user is set and is not root),
 * with its uid and primary gid; else 0. Dies when the user is unknown. */
int privs_target(const struct conf *c, uid_t *uid, gid_t *gid);
/* As root: die 78 unless fs.protected_hardlinks is 1 (read from /proc/sys). */
void privs_check_kernel(void);
/* The gid of c->control_group, or (gid_t)-1 when unset. Dies when the group is unknown. */
gid_t privs_control_gid(const struct conf *c);
/* The gid of c->metrics.group, or (gid_t)-1 when unset. Dies when the group is unknown. */
gid_t privs_metrics_gid(const struct conf *c);

/* keeper.c: a process per stage user that starts, signals and reaps that user's stages
 * for spoold, which is no longer root when it restarts one. */
struct keeper {
	char user[64];
	int fd; /* spoold's end of the SOCK_SEQPACKET pair; -1 when gone */
	pid_t pid;
};
/* As root: fork the keeper, which becomes user for good (with lease, keeping CAP_LEASE
 * for the stages it starts: the splitter's keeper, see user_become_with_lease). Dies on
 * failure. */
int keeper_start(struct keeper *k, const char *user, int lease);
/* Start argv as a stage: exe is the binary spoold opened (execveat), ready the readiness * pipe's
 * write end (-1: none), broker the scanner broker's socket for a scanner-runner
 * (-1: none; BROKER_ENV names it), paused sets SPOOLD_PAUSED. Returns the pid, or -1 with
 * errno. Exits of other children read meanwhile go to on_exit(pid, status). */
pid_t keeper_spawn(struct keeper *k, int slot, int exe, char *const argv[], int ready, int broker,
                   int paused, void (*on_exit)(pid_t, int));
/* Signal pid, a stage this keeper started. */
void keeper_kill(struct keeper *k, pid_t pid, int sig);
/* Hand every exit the keeper reported to on_exit; -1 when the keeper is gone. */
int keeper_drain(struct keeper *k, void (*on_exit)(pid_t, int));

/* sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET. No-op without it. */
void notify_send(const char *state);

#endif
