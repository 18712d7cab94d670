/*
 * scanner - what every scanner backend shares (see scanner.h).
 */
#include "scanner.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "broker.h"
#include "log.h"
#include "metrics.h"
#include "slot.h"
#include "spool.h"
#include "util.h"

int scanner_broker_fd = -1;

void scanner_setup(struct scanner *s, const struct conf_scanner *conf, const char *conf_path)
{
	memset(s, 0, sizeof *s);
	s->conf = conf;
	switch (conf->mode) {
	case MODE_PER_ATTACHMENT:
		s->ops = &scanner_ops_per_attachment;
		break;
	case MODE_PER_MESSAGE:
		s->ops = &scanner_ops_per_message;
		break;
	case MODE_CLAMD:
		s->ops = &scanner_ops_clamd;
		break;
	default:
		log_panic("scanner_setup: scanner %s has unknown mode %d", conf->name,
		          (int)conf->mode);
	}
	if (conf->virus_regex) {
		if (regcomp(&s->rx, conf->virus_regex, REG_EXTENDED | REG_NEWLINE) != 0)
			die_perm(EXIT_CONFIG, "%s:%d: virus_regex does not compile", conf_path,
			         conf->line);
		s->has_rx = 1;
	}
}

/* The scanner broker's socket, handed over by spoold on purpose (BROKER_ENV). Without it
 * the scanners run here, as this process's uid: spoold not root, or no scanner_user. */
void scanner_broker_init(void)
{
	const char *s = getenv(BROKER_ENV);
	uint64_t v;
	if (s == NULL)
		return;
	int type = 0;
	socklen_t tl = sizeof type;
	if (parse_u64(s, &v) < 0 || v < 3 || v > INT32_MAX ||
	    getsockopt((int)v, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_SEQPACKET)
		die_temp(NULL, "%s=%s is not the scanner broker's socket", BROKER_ENV, s);
	/* Ours alone: no scanner run here may inherit it. */
	if (fcntl((int)v, F_SETFD, FD_CLOEXEC) < 0)
		die_temp(NULL, "cannot make the broker socket close-on-exec: %s", strerror(errno));
	unsetenv(BROKER_ENV);
	scanner_broker_fd = (int)v;
	log_info(NULL, "scanners run through the scanner broker (as scanner_user)");
}

/* The one place a scanner's slot is taken: for an exec run, a clamd message and a clamd
 * canary check alike. Bounded by slot_wait: a slot nobody frees (a hung scanner, anyone
 * else who locked the file) is an error verdict and the message is held, never a stalled
 * runner. */
int scanner_slot_take(struct stage *st, const struct conf_scanner *sc, const char *qid, char *why,
                      size_t len)
{
	int wait_s = st->conf->runner.slot_wait;
	int slot = slot_acquire_timed(&st->spool, sc->name, sc->max_concurrent, wait_s * 1000);
	if (slot >= 0)
		return slot;
	if (errno != ETIMEDOUT)
		die_temp(qid, "cannot take a slot for scanner %s in %s/slots: %s", sc->name,
		         st->spool.root, strerror(errno));
	bsnprintf(why, len, "no slot of scanner %s came free within slot_wait = %d s", sc->name,
	          wait_s);
	log_warn(qid, "no slot of scanner %s came free in %s/slots within %d s: %s", sc->name,
	         st->spool.root, wait_s, strerror(ETIMEDOUT));
	return -1;
}

static int scanner_code_in(int code, const int *codes, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (codes[i] == code)
			return 1;
	return 0;
}

enum verdict scanner_exit_map(const struct conf_scanner *sc, const struct exec_result *res)
{
	if (res->timed_out || res->exec_failed || res->wait_failed || res->not_started ||
	    !res->exited)
		return V_ERROR;
	/* Output we did not read in full may hold the line that names a virus: whatever the
	 * exit code says, this answer is incomplete. */
	if (res->output_truncated)
		return V_ERROR;
	if (scanner_code_in(res->exit_code, sc->clean_codes, sc->n_clean))
		return V_CLEAN;
	if (scanner_code_in(res->exit_code, sc->infected_codes, sc->n_infected))
		return V_INFECTED;
	return V_ERROR;
}

/* Line by line, so that REG_NEWLINE anchors and a name never spans two lines. The name is
 * the scanner's text (attacker-influenced): bounded here, escaped by whoever writes it. */
void scanner_virus_name(const regex_t *rx, int has_rx, const char *out, char *name, size_t len)
{
	name[0] = '\0';
	if (!has_rx || out == NULL)
		return;
	const char *line = out;
	while (*line) {
		const char *nl = strchr(line, '\n');
		size_t ll = nl ? (size_t)(nl - line) : strlen(line);
		char *l = xstrndup(line, ll);
		regmatch_t mt[3];
		if (regexec(rx, l, 3, mt, 0) == 0) {
			int g = rx->re_nsub >= 2 ? 2 : 1;
			if (mt[g].rm_so >= 0) {
				size_t vl = (size_t)(mt[g].rm_eo - mt[g].rm_so);
				if (vl >= len)
					vl = len - 1;
				memcpy(name, l + mt[g].rm_so, vl);
				name[vl] = '\0';
				free(l);
				return;
			}
		}
		free(l);
		if (!nl)
			break;
		line = nl + 1;
	}
}

struct verdict_line *scan_pass_add(struct scan_pass *p, const struct scanner *s, int index,
                                   enum verdict v, const char *virus, const char *exit, long ms,
                                   const char *version, const char *argv, const char *output,
                                   int log_it)
{
	struct verdict_line *l =
	    verdicts_add(p->vs, index, s->conf->name, v, virus, exit, ms, version, argv, output);
	l->backup = p->backup;
	if (log_it && l->verdict != V_CLEAN)
		log_info(p->qid, "scanner=%s part=%d verdict=%s virus=%s exit=%s ms=%ld",
		         l->scanner, l->part, verdict_name(l->verdict), l->virus, l->exit, l->ms);
	return l;
}

void scanner_observe(const struct conf_scanner *sc, long ms)
{
	char esc[256], labels[300];
	metrics_label_escape(sc->name, esc, sizeof esc);
	bsnprintf(labels, sizeof labels, "scanner=\"%s\"", esc);
	metrics_observe("spoold_scan_seconds", labels, (double)ms / 1000.0);
}
