/*
 * spool - the spool protocol shared by every program (see docs/INTERNALS.md).
 *
 * A message is a directory named by its queue ID, in exactly one state directory at a
 * time. Stages claim an entry with flock(2) on the directory's descriptor and move it
 * on with one rename(2) of the whole directory, after its contents were fsync'd.
 *
 * DIAGNOSTICS
 *   spool_open() dies temporary when the spool cannot be created or opened, and
 *   permanent when its directories are not on one filesystem. Every other function
 *   returns -1 with errno set and logs nothing; ENOENT from a claim or a move means
 *   another process won the race and is reported as 0, not as an error.
 */
#ifndef SPOOLD_SPOOL_H
#define SPOOLD_SPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#define SPOOL_QID_LEN 26 /* TTTTTTTTTTTTTT-PPPPPP-CCCC */

enum spool_dir {
	SD_INBOUND,
	SD_INCOMING,
	SD_SCAN,
	SD_ROUTE,
	SD_OUTBOX, /* the parent of outbox/<conn>/ */
	SD_QUARANTINE,
	SD_HOLD,
	SD_BADMAIL,
	SD_TMP,
	SD_TRASH,
	SD_SLOTS,
	SD_RUN,
	SD__COUNT
};

/* How spool_entry_sync makes a step durable (docs/INTERNALS.md, "Durability"): one
 * syncfs(2) of the filesystem; an fdatasync of each file of the entries being committed and
 * an fsync of their directories; or, "auto", files while the machine has more than 64 MB of
 * dirty page cache (another writer's, which a syncfs would have to write first), else
 * syncfs. Each is complete on its own, so stages may differ. */
enum spool_sync_mode { SPOOL_SYNC_SYNCFS, SPOOL_SYNC_FILES, SPOOL_SYNC_AUTO };

struct spool {
	char *root;
	int root_fd;
	int fd[SD__COUNT];
	/* The filesystem commits a rename of both directories in one journal transaction
	 * (ext3/4 with a journal, XFS, btrfs; tmpfs has nothing to lose): one directory
	 * fsync then makes a move durable on both sides. Elsewhere, ext4 without a journal
	 * included, both parents are fsync'd. */
	int rename_journaled;
	enum spool_sync_mode sync_mode; /* spool_sync_mode_get() at spool_open */
};

/* The strategy of every spool opened afterwards in this process (conf_load sets it from
 * spool_sync; SPOOL_SYNC_AUTO until then). */
void spool_sync_mode_set(enum spool_sync_mode m);
enum spool_sync_mode spool_sync_mode_get(void);
/* 1 when the next sync of sp should be per file (always for "files"; for "auto" when the
 * machine has much dirty page cache), 0 for a syncfs. */
int spool_sync_uses_files(const struct spool *sp);

struct stat;
/* 1 if the filesystem of fd (st its fstat) journals renames as above, else 0. */
int spool_fs_journaled(int fd, const struct stat *st);

/* The name of a state directory relative to the root ("inbound", "outbox", ...). */
const char *spool_dir_name(enum spool_dir d);

/* Open (and with create, make) the spool and all its directories. Dies on failure. */
void spool_open(struct spool *sp, const char *root, int create);
void spool_close(struct spool *sp);
/* Descriptor of outbox/<conn>/, created on demand (mkdir + fsync of outbox/). -1 on error. */
int spool_outbox_open(struct spool *sp, const char *conn);

/* Queue IDs. */
void spool_qid_new(char out[SPOOL_QID_LEN + 1]);
int spool_qid_valid(const char *s);

/* Names in a state directory, sorted (so queue IDs come oldest first). Skips names that
 * start with '.'; for every directory but inbound, also skips names that are not valid
 * queue IDs. Caller frees with spool_names_free. 0 or -1. */
int spool_list(int dirfd, int want_qids, char ***names, size_t *n);
void spool_names_free(char **names, size_t n);

/* Open dirfd/name as a directory and take flock(LOCK_EX|LOCK_NB) on it, checking that the
 * name still refers to the locked inode. Returns the descriptor; -1 with errno ENOENT
 * (gone, or moved on by its holder), EWOULDBLOCK (held by another process), or another
 * errno for a real error. The claim primitive of every spool directory, outboxes too. */
int spool_lock_at(int dirfd, const char *name);

/* A claimed entry: the directory's descriptor, flock'd exclusively. */
struct spool_entry {
	struct spool *sp;
	enum spool_dir where;
	char qid[SPOOL_QID_LEN + 1];
	int fd;
	/* spool_entry_sync ran since the claim: every rename that brought the entry here is
	 * durable (see spool_entry_handoff). */
	int synced;
};

/* Claim where/qid. 1: claimed; 0: not claimed, errno EWOULDBLOCK (locked by another
 * process, perhaps the previous stage still finishing its move) or ENOENT (gone);
 * -1: error. */
int spool_entry_claim(struct spool *sp, enum spool_dir where, const char *qid,
                      struct spool_entry *e);
/* A name in a state directory that this stage's user can never work on: a directory it
 * may not write (a separated spool, where another user made it or changed its mode), since
 * moving a directory to another parent needs write permission on it. It gets a place all
 * the same: the name is set aside as where/.unclaimable.<fresh qid> (a rename within one
 * parent needs no such permission, and no stage lists dot-names), and a badmail/ entry
 * with the same queue ID says what and where; the administrator removes it by hand.
 * Logs the outcome (an error). 1 when set aside, 0 when even the rename failed. */
int spool_set_aside(struct spool *sp, enum spool_dir where, const char *name,
                    const struct stat *sb);
/* spool_entry_claim, for a stage that must write into the entry to move it on: an entry
 * it may not open or write is set aside as above and reported as 0 with errno EACCES, so
 * that one entry never stops a stage (exiting would only bring it back to the same entry). */
int spool_entry_claim_rw(struct spool *sp, enum spool_dir where, const char *qid,
                         struct spool_entry *e);
/* Unlock and close. */
void spool_entry_release(struct spool_entry *e);
/* Make everything written into the entry durable - file data and names, and the rename
 * that brought it here - with one syncfs(2) of the spool's filesystem, or (sync_mode) with
 * per file (spool_sync_group). This is the group commit: one call covers every file the caller
 * wrote for this step, and every other entry this process wrote into since its last sync. 0, or -1
 * with errno (a writeback error: the step is not durable). */
int spool_entry_sync(struct spool_entry *e);
/* spool_entry_sync's work (lib/spool_sync.c): a syncfs, or per file: fdatasync of every
 * regular file in e's directory and its subdirectories, fsync of those directories and of
 * e's state directory (and, where renames are not journaled, of the directory its claim or
 * hand-off came from); the same for every entry noted since the last sync. 0 or -1. */
int spool_sync_group(struct spool_entry *e);
/* Note that this process wrote into e (spool_entry_write): the next spool_sync_files, of
 * any entry, covers e too, as a syncfs would. spool_sync_forget: e->fd is being closed. */
void spool_sync_note(const struct spool_entry *e);
void spool_sync_forget(int fd);
/* rename(2) that never replaces: -1 with EEXIST if tofd/to exists (RENAME_NOREPLACE, or
 * a look first where the filesystem lacks it). */
int spool_rename_noreplace(int fromfd, const char *from, int tofd, const char *to);
/* Commit: rename(where/qid, to/qid), release the claim (the next stage may take the
 * entry at once), then fsync both parents. The caller has written the files and called
 * spool_entry_sync (if it has not since the claim, this does it first), and must not use
 * e->fd afterwards. If to/qid exists (a queue ID collision), the entry is renamed to
 * to/<fresh qid> instead and e->qid is updated. 0, or -1 with errno (the claim is kept
 * when the rename failed). */
int spool_entry_move(struct spool_entry *e, enum spool_dir to);
/* The rename half of spool_entry_move: rename(where/qid, to/qid) - to a fresh qid on a
 * collision, as above - and release the claim, with no fsync. For a stage that commits several
 * entries at once (it then calls spool_dirs_sync once), and for spool_entry_handoff. 0 or -1. */
int spool_entry_rename(struct spool_entry *e, enum spool_dir to);
/*
 * Hand an entry on to the next stage (incoming/ -> scan/, scan/ -> route/): the caller
 * has synced its contents (spool_entry_sync), and the rename is not fsync'd here. The
 * next stage makes it durable: everything it does that cannot be undone (a commit of its
 * own, a deletion) comes after a spool_entry_sync made after its claim - the syncfs that
 * makes its own files durable makes this rename durable too - and spool_entry_move,
 * spool_entry_trash and spool_entry_move_sub_to_outbox sync first when the entry was not
 * synced since its claim. A power cut before that only undoes the rename: the entry is
 * back where this stage redoes it. So consecutive hand-offs share one sync per stage
 * instead of adding two directory fsyncs each. 0 or -1.
 */
int spool_entry_handoff(struct spool_entry *e, enum spool_dir to);
/* Make renames from `from` into `to` durable: fsync of to/, and of from/ too where the
 * filesystem does not journal renames (see rename_journaled). 0 or -1. */
int spool_dirs_sync(struct spool *sp, enum spool_dir from, enum spool_dir to);

/* Remove the entry: rename into trash/ then delete the tree. 0 or -1. */
int spool_entry_trash(struct spool_entry *e);
/* Retire an entry whose work is done (a delivered route/ entry): one rename into trash/,
 * neither synced nor deleted now. The stages empty trash/ when idle, off the path of the
 * next message; if a power cut undoes the rename, the stage finds its work already done
 * and retires the entry again. 0 or -1. */
int spool_entry_retire(struct spool_entry *e);

/* Intake. Creates incoming/<qid>/, locks it, and claims inbound/<name> by renaming it to
 * incoming/<qid>/message. 1: claimed (e is the locked work directory); 0: the name was
 * gone (another splitter won); -1: error. The claimed object may be anything (FIFO,
 * directory, symlink): the caller checks it through spool_message_open. */
int spool_inbound_claim(struct spool *sp, const char *name, struct spool_entry *e);
/* Open the entry's "message" safely: O_NOFOLLOW|O_NONBLOCK, must be a regular file.
 * Returns the fd, or -1 with reason filled (the errno is kept). */
int spool_message_open(struct spool_entry *e, char *reason, size_t rlen);

/* Fan-out: rename(where/qid/<sub>, outbox/<conn>/<qid>) (to a fresh qid if that name
 * exists), then fsync outbox/<conn>/ and the entry. 1: moved; 0: <sub> was already gone (moved
 * earlier); -1: error. */
int spool_entry_move_sub_to_outbox(struct spool_entry *e, const char *sub, const char *conn);

/* A new message made from an entry (the router's strip): rename(where/qid/<sub>,
 * incoming/<qid>) of a complete work directory (message, envelope, origin, attempts,
 * trace), after a sync of its contents, then fsync incoming/ (and the entry where renames
 * are not journaled). The splitter splits it as it splits any unlocked incoming/ entry.
 * 1: moved; 0: <sub> was already gone (moved earlier); -1: error. */
int spool_entry_move_sub_to_incoming(struct spool_entry *e, const char *sub, const char *qid);

/* Empty trash/. Best effort; returns the number of trees removed. */
int spool_trash_empty(struct spool *sp);

/* Find qid in any state directory (and outbox/<conn>/). Fills the state and, for outboxes,
 * the connector. Returns the number of places it was found (0 if none). */
int spool_qid_locate(struct spool *sp, const char *qid, enum spool_dir *where, char *conn,
                     size_t connlen);

/* Remove quarantine entries whose report is older than days (entries that are claimed are
 * skipped). Logs each removal. Returns how many were removed; -1 if quarantine/ cannot
 * be listed. */
int spool_quarantine_expire(struct spool *sp, int days);
/* Remove what a crashed writer left in tmp/ (inject files, notices being built) once it
 * is older than max_age seconds. Returns how many were removed. */
int spool_tmp_sweep(struct spool *sp, int max_age);

/* Bytes available to us on the spool's filesystem (statvfs f_bavail), or UINT64_MAX if
 * it cannot be told. */
uint64_t spool_space_free(struct spool *sp);
/* Space kept free for the stages after the splitter: intake stops below this. */
#define SPOOL_RESERVE_BYTES (4u << 20)

/* Write a small file into the entry (name.tmp, rename): readers see it whole or not at
 * all; it is durable after the next spool_entry_sync. 0 or -1. */
int spool_entry_write(struct spool_entry *e, const char *name, const void *data, size_t n);

#endif
