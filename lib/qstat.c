/*
 * qstat - see qstat.h.
 */
#include "qstat.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spool.h"
#include "util.h"

/* One measurement: names seen so far (bounded like remove_tree_at, see qstat.h). */
static unsigned long long qstat_tree_walk(int parent, const char *name, unsigned depth,
                                          unsigned long *entries)
{
	struct stat st;
	if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return 0;
	if (!S_ISDIR(st.st_mode))
		return S_ISREG(st.st_mode) ? (unsigned long long)st.st_size : 0;
	/* A tree anyone could have dropped into inbound/: past the bounds it is not
	 * measured further (the figure is a lower bound), never walked without end. */
	if (depth >= UTIL_TREE_DEPTH_MAX || *entries > UTIL_TREE_ENTRIES_MAX)
		return 0;
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
	while ((de = readdir(d)) != NULL && ++*entries <= UTIL_TREE_ENTRIES_MAX)
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			sum += qstat_tree_walk(dirfd(d), de->d_name, depth + 1, entries);
	closedir(d);
	return sum;
}

unsigned long long qstat_tree_bytes(int parent, const char *name)
{
	unsigned long entries = 0;
	return qstat_tree_walk(parent, name, 0, &entries);
}

long long qstat_age(const char *name, time_t mtime, time_t now)
{
	long long age = (long long)(now - mtime);
	if (spool_qid_valid(name)) {
		/* The queue ID holds the intake time: the age of the message, not of its last
		 * move. */
		unsigned long long us = strtoull(name, NULL, 16);
		age = (long long)now - (long long)(us / 1000000);
	}
	return age < 0 ? 0 : age;
}

void qstat_dir(int dirfd, int qids, struct qstat *qs)
{
	char **names;
	size_t n;
	time_t now = time(NULL);
	qs->count = 0;
	qs->bytes = 0;
	qs->oldest = -1;
	if (dirfd < 0 || spool_list(dirfd, qids, &names, &n) < 0)
		return;
	for (size_t i = 0; i < n; i++) {
		struct stat st;
		if (fstatat(dirfd, names[i], &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		qs->count++;
		qs->bytes += qstat_tree_bytes(dirfd, names[i]);
		long long age = qstat_age(names[i], st.st_mtime, now);
		if (age > qs->oldest)
			qs->oldest = age;
	}
	spool_names_free(names, n);
}
