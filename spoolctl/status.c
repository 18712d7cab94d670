/*
 * spoolctl status [--json] - queue depths, bytes and oldest ages, and the stages.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "ctl.h"
#include "envelope.h"
#include "log.h"
#include "spool.h"
#include "util.h"

struct dirstat {
	const char *label;
	size_t count;
	unsigned long long bytes;
	long long oldest; /* age in seconds, -1 if empty */
};

static unsigned long long ctl_tree_bytes(int parent, const char *name)
{
	struct stat st;
	if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return 0;
	if (!S_ISDIR(st.st_mode))
		return (unsigned long long)st.st_size;
	unsigned long long sum = 0;
	int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return 0;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return 0;
	}
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			sum += ctl_tree_bytes(dirfd(d), de->d_name);
	}
	closedir(d);
	return sum;
}

static void ctl_dirstat(int dirfd, int qids, struct dirstat *ds)
{
	char **names;
	size_t n;
	time_t now = time(NULL);
	ds->count = 0;
	ds->bytes = 0;
	ds->oldest = -1;
	if (spool_list(dirfd, qids, &names, &n) < 0)
		return;
	for (size_t i = 0; i < n; i++) {
		struct stat st;
		if (fstatat(dirfd, names[i], &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		ds->count++;
		ds->bytes += ctl_tree_bytes(dirfd, names[i]);
		long long age = (long long)(now - st.st_mtime);
		if (qids) {
			/* The queue ID holds the intake time: the age of the message, not of the
			 * last move. */
			unsigned long long us = strtoull(names[i], NULL, 16);
			age = (long long)now - (long long)(us / 1000000);
		}
		if (age < 0)
			age = 0;
		if (age > ds->oldest)
			ds->oldest = age;
	}
	spool_names_free(names, n);
}

int ctl_cmd_status(struct conf *c, int argc, char **argv)
{
	int json = argc > 0 && strcmp(argv[0], "--json") == 0;
	struct spool sp;
	ctl_spool_open(c, &sp);
	struct dirstat ds[64];
	size_t nd = 0;
	static const enum spool_dir dirs[] = {SD_INBOUND, SD_INCOMING, SD_SCAN, SD_ROUTE,
	                                      SD_QUARANTINE, SD_HOLD, SD_BADMAIL};
	char labels[64][80];
	for (size_t i = 0; i < ARRAY_LEN(dirs); i++) {
		ds[nd].label = spool_dir_name(dirs[i]);
		ctl_dirstat(sp.fd[dirs[i]], dirs[i] != SD_INBOUND, &ds[nd]);
		nd++;
	}
	for (size_t i = 0; i < c->n_connectors && nd < ARRAY_LEN(ds); i++) {
		int ofd = spool_outbox_open(&sp, c->connectors[i].name);
		snprintf(labels[nd], sizeof labels[nd], "outbox/%s", c->connectors[i].name);
		ds[nd].label = labels[nd];
		if (ofd >= 0) {
			ctl_dirstat(ofd, 1, &ds[nd]);
			close(ofd);
		} else {
			ds[nd].count = 0;
			ds[nd].bytes = 0;
			ds[nd].oldest = -1;
		}
		nd++;
	}
	/* Stages, from the supervisor's status file; a pid is shown running only if alive. */
	struct buf st, v;
	buf_init(&st);
	buf_init(&v);
	int have = read_file_at(sp.fd[SD_RUN], "status", &st, 1 << 20) == 0;
	long spid = 0;
	if (have && kv_find(buf_cstr(&st), "pid", &v) == 0)
		spid = strtol(buf_cstr(&v), NULL, 10);
	int sup_alive = have && spid > 0 && kill((pid_t)spid, 0) == 0;

	if (json) {
		printf("{\"spool\":\"");
		struct buf e;
		buf_init(&e);
		json_escape(&e, sp.root, strlen(sp.root));
		printf("%s\",\"queues\":{", buf_cstr(&e));
		buf_free(&e);
		for (size_t i = 0; i < nd; i++)
			printf("%s\"%s\":{\"count\":%zu,\"bytes\":%llu,\"oldest_age\":%lld}",
			       i ? "," : "", ds[i].label, ds[i].count, ds[i].bytes, ds[i].oldest);
		printf("},\"spoold\":{\"running\":%s,\"pid\":%ld},\"stages\":[",
		       sup_alive ? "true" : "false", sup_alive ? spid : 0L);
	} else {
		printf("spool %s\n\n%-22s %8s %12s %10s\n", sp.root, "queue", "count", "bytes",
		       "oldest");
		for (size_t i = 0; i < nd; i++) {
			char age[32] = "-";
			if (ds[i].oldest >= 0)
				snprintf(age, sizeof age, "%llds", ds[i].oldest);
			printf("%-22s %8zu %12llu %10s\n", ds[i].label, ds[i].count, ds[i].bytes, age);
		}
		printf("\nspoold: %s", sup_alive ? "running" : "not running");
		if (sup_alive)
			printf(" (pid %ld)", spid);
		printf("\n");
	}
	int first = 1;
	if (sup_alive) {
		char *line = st.data;
		while (line && *line) {
			char *nl = strchr(line, '\n');
			if (!nl)
				break;
			*nl = '\0';
			if (strncmp(line, "stage ", 6) == 0) {
				char name[64] = "?", state[32] = "?";
				long pid = 0, restarts = 0, started = 0, idx = 0;
				if (kv_find(line, "name", &v) == 0)
					snprintf(name, sizeof name, "%s", buf_cstr(&v));
				if (kv_find(line, "state", &v) == 0)
					snprintf(state, sizeof state, "%s", buf_cstr(&v));
				if (kv_find(line, "pid", &v) == 0)
					pid = strtol(buf_cstr(&v), NULL, 10);
				if (kv_find(line, "idx", &v) == 0)
					idx = strtol(buf_cstr(&v), NULL, 10);
				if (kv_find(line, "restarts", &v) == 0)
					restarts = strtol(buf_cstr(&v), NULL, 10);
				if (kv_find(line, "started", &v) == 0)
					started = strtol(buf_cstr(&v), NULL, 10);
				long up = started ? (long)(time(NULL) - started) : 0;
				if (json)
					printf("%s{\"name\":\"%s\",\"instance\":%ld,\"pid\":%ld,"
					       "\"state\":\"%s\",\"uptime\":%ld,\"restarts\":%ld}",
					       first ? "" : ",", name, idx, pid, state, up, restarts);
				else
					printf("  %-16s #%ld %-8s pid %-8ld up %lds restarts %ld\n", name,
					       idx, state, pid, up, restarts);
				first = 0;
			}
			line = nl + 1;
		}
	}
	if (json)
		printf("]}\n");
	buf_free(&st);
	buf_free(&v);
	spool_close(&sp);
	return 0;
}

