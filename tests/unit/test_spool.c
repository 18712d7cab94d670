// links:
/*
 * Unit tests for the spool primitives: queue IDs, claims, moves, fan-out moves, trash,
 * envelope and manifest round trips, escaping.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "envelope.h"
#include "slot.h"
#include "manifest.h"
#include "spool.h"
#include "util.h"
#include "check.h"

static int exists(struct spool *sp, enum spool_dir d, const char *name)
{
	struct stat st;
	return fstatat(sp->fd[d], name, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

int main(void)
{
	char root[] = "/tmp/spool-unit-XXXXXX";
	if (!mkdtemp(root)) {
		perror("mkdtemp");
		return 1;
	}
	struct spool sp;
	spool_open(&sp, root, 1);

	/* queue IDs */
	char a[SPOOL_QID_LEN + 1], b[SPOOL_QID_LEN + 1];
	spool_qid_new(a);
	spool_qid_new(b);
	CHECK("qid_valid", spool_qid_valid(a) && spool_qid_valid(b));
	CHECK("qid_unique_sorted", strcmp(a, b) < 0);
	CHECK("qid_rejects_traversal", !spool_qid_valid("../../etc/passwd") &&
	                                   !spool_qid_valid("") &&
	                                   !spool_qid_valid("0661495476ff78-002456-000G") &&
	                                   !spool_qid_valid("0661495476ff78/002456-0004"));
	int ok = 1;
	char prev[SPOOL_QID_LEN + 1] = "";
	for (int i = 0; i < 100000; i++) {
		char q[SPOOL_QID_LEN + 1];
		spool_qid_new(q);
		if (strcmp(prev, q) >= 0)
			ok = 0;
		memcpy(prev, q, sizeof q);
	}
	CHECK("qid_strictly_increasing_100k", ok);

	/* inbound claim */
	int fd = openat(sp.fd[SD_INBOUND], "drop1", O_WRONLY | O_CREAT, 0640);
	CHECK("write_drop", fd >= 0 && write(fd, "x", 1) == 1);
	close(fd);
	struct spool_entry e;
	CHECK("inbound_claim", spool_inbound_claim(&sp, "drop1", &e) == 1);
	CHECK("claim_moved_name",
	      !exists(&sp, SD_INBOUND, "drop1") && exists(&sp, SD_INCOMING, e.qid));
	struct spool_entry e2;
	CHECK("claim_lost_race_is_zero", spool_inbound_claim(&sp, "drop1", &e2) == 0);

	/* a locked entry cannot be claimed by another process */
	pid_t pid = fork();
	if (pid == 0) {
		struct spool sp2;
		struct spool_entry e3;
		spool_open(&sp2, root, 0);
		int r = spool_entry_claim(&sp2, SD_INCOMING, e.qid, &e3);
		_exit(r == 0 && errno == EWOULDBLOCK ? 0 : 1);
	}
	int status;
	waitpid(pid, &status, 0);
	CHECK("claim_busy_in_other_process", WIFEXITED(status) && WEXITSTATUS(status) == 0);

	/* move and claim in the next state */
	char qid[SPOOL_QID_LEN + 1];
	memcpy(qid, e.qid, sizeof qid);
	CHECK("entry_write", spool_entry_write(&e, "manifest", "end 0\n", 6) == 0);
	CHECK("entry_move", spool_entry_move(&e, SD_SCAN) == 0);
	CHECK("moved", exists(&sp, SD_SCAN, qid) && !exists(&sp, SD_INCOMING, qid));
	CHECK("move_released_lock", spool_entry_claim(&sp, SD_SCAN, qid, &e) == 1);
	CHECK("claim_gone_is_zero_enoent",
	      spool_entry_claim(&sp, SD_ROUTE, qid, &e2) == 0 && errno == ENOENT);

	/* fan-out sub-move is idempotent */
	CHECK("mk_out", mkdirat(e.fd, "out.smtp", 0750) == 0);
	CHECK("sub_move_1", spool_entry_move_sub_to_outbox(&e, "out.smtp", "smtp") == 1);
	CHECK("sub_move_again_0", spool_entry_move_sub_to_outbox(&e, "out.smtp", "smtp") == 0);
	int ofd = spool_outbox_open(&sp, "smtp");
	struct stat st;
	CHECK("in_outbox", ofd >= 0 && fstatat(ofd, qid, &st, 0) == 0);
	CHECK("outbox_rejects_bad_name", spool_outbox_open(&sp, "../x") < 0 && errno == EINVAL);
	enum spool_dir where;
	char conn[64];
	CHECK("locate_two_places", spool_qid_locate(&sp, qid, &where, conn, sizeof conn) == 2);

	/* trash */
	CHECK("trash", spool_entry_trash(&e) == 0 && !exists(&sp, SD_SCAN, qid));
	spool_entry_release(&e);
	CHECK("trash_empty_after", spool_trash_empty(&sp) == 0);

	/* slots: at most max holders; a waiter takes whichever slot frees, not only the
	 * one it sleeps on */
	int s0 = slot_acquire(&sp, "unit", 2), s1 = slot_acquire(&sp, "unit", 2);
	CHECK("slot_two_free", s0 >= 0 && s1 >= 0 && slot_count_busy(&sp, "unit", 2) == 2);
	int pfd[2];
	CHECK("slot_pipe", pipe(pfd) == 0);
	pid = fork();
	if (pid == 0) {
		struct spool sp2;
		/* fork copied the parent's slot descriptors: drop them, or they keep the locks */
		close(s0);
		close(s1);
		spool_open(&sp2, root, 0);
		int64_t t0 = now_ms_monotonic();
		int s = slot_acquire(&sp2, "unit", 2);
		long waited = (long)(now_ms_monotonic() - t0);
		(void)!write(pfd[1], &waited, sizeof waited);
		_exit(s >= 0 ? 0 : 1);
	}
	usleep(300000);
	long early = -1;
	fcntl(pfd[0], F_SETFL, O_NONBLOCK);
	CHECK("slot_waiter_blocks_while_full", read(pfd[0], &early, sizeof early) < 0);
	/* free the slot the waiter is NOT sleeping on first, then the other: either way it
	 * must get one */
	slot_release(s1);
	waitpid(pid, &status, 0);
	long waited = 0;
	fcntl(pfd[0], F_SETFL, 0);
	CHECK("slot_waiter_gets_a_freed_slot", WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
	                                           read(pfd[0], &waited, sizeof waited) > 0 &&
	                                           waited >= 250);
	slot_release(s0);
	close(pfd[0]);
	close(pfd[1]);

	/* envelope round trip and limits */
	struct envelope env, env2;
	envelope_init(&env);
	env.sender = xstrdup("");
	CHECK("env_rcpt", envelope_add_rcpt(&env, "a@b.example") == 0);
	CHECK("env_dup_ignored", envelope_add_rcpt(&env, "A@B.example") == 0 && env.n_rcpts == 1);
	CHECK("env_ctrl_rejected", envelope_add_rcpt(&env, "a\nRevil@x") < 0);
	struct buf eb;
	buf_init(&eb);
	envelope_format(&env, &eb);
	size_t used;
	char reason[256];
	CHECK("env_parse",
	      envelope_parse(eb.data, eb.len, &env2, &used, reason, sizeof reason) == 0 &&
	          used == eb.len && env2.n_rcpts == 1 && env2.sender[0] == '\0');
	envelope_free(&env2);
	CHECK("env_incomplete",
	      envelope_parse("Sa\nRb\n", 6, &env2, &used, reason, sizeof reason) < 0);

	/* manifest round trip with hostile filename */
	struct manifest m, m2;
	manifest_init(&m);
	const char evil[] = "../../etc/passwd\n end 0 x=y\xff";
	struct manifest_part *p = manifest_add(&m, "1.2", FOUND_LEAF, "text/plain", "utf-8",
	                                       "base64", evil, sizeof evil - 1);
	p->size = 42;
	memcpy(p->sha256, "ab", 3);
	manifest_add_unscannable(&m, "over limit (max_parts)");
	struct buf mb;
	buf_init(&mb);
	manifest_format(&m, &mb);
	mkdirat(sp.root_fd, "mdir", 0750);
	int mfd = openat(sp.root_fd, "mdir", O_RDONLY | O_DIRECTORY);
	CHECK("manifest_write", write_file_atomic(mfd, "manifest", mb.data, mb.len, 0640) == 0);
	CHECK("manifest_one_line_per_part",
	      strchr(mb.data, '\n') != NULL && strstr(mb.data, "etc/passwd\\x0a") != NULL);
	CHECK("manifest_read", manifest_read_at(mfd, &m2, reason, sizeof reason) == 0 &&
	                           m2.n_parts == 1 && strcmp(m2.parts[0].filename, evil) == 0 &&
	                           m2.parts[0].size == 42 && m2.n_unscannable == 1);
	manifest_free(&m2);
	CHECK("manifest_truncated_is_incomplete",
	      write_file_atomic(mfd, "manifest", mb.data, mb.len - 3, 0640) == 0 &&
	          manifest_read_at(mfd, &m2, reason, sizeof reason) < 0);

	close(mfd);
	close(ofd);
	buf_free(&mb);
	buf_free(&eb);
	manifest_free(&m);
	manifest_free(&m2);
	envelope_free(&env);
	envelope_free(&env2);
	spool_close(&sp);
	remove_tree_at(AT_FDCWD, root);
	return failures ? 1 : 0;
}
