# spoold - build, test, run. See README.md.
#
#   make            build bin/ (production) and the test signature database
#   make asan       build build/asan/bin/ (ASan + UBSan + crash points) for the tests
#   make O=DIR ...  put build outputs under DIR instead of build/ (parallel work trees)
#   make test       make test-deps (adds Postfix, swaks, clang...), both builds, every test
#   make run        make deps, build, start the pipeline on ./spool with conf/spoold.conf
#   make bench-farm  clamd pool and verdict cache load tests (docs/PERFORMANCE.md, last section)
#   make bench-mta   spoold behind a throwaway Postfix: LMTP, pipe, amavisd-new (docs/PERFORMANCE.md)
#   make bench-peer  spoold against amavisd-new, same clamd, same corpora (docs/PERFORMANCE.md)
#   make fuzz       libFuzzer target for the MIME extractor (FUZZ_SECONDS, default 60)
#   make install    PREFIX=/usr/local DESTDIR=  (make uninstall removes it again)

CC       ?= cc
PKGS      = gmime-3.0 libconfig nettle libinotifytools
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
# libinotifytools ships no .pc file on Debian 12; link it by name.
ifeq ($(findstring inotifytools,$(PKG_LIBS)),)
PKG_CFLAGS := $(shell pkg-config --cflags gmime-3.0 libconfig nettle 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs gmime-3.0 libconfig nettle 2>/dev/null) -linotifytools
endif

WARN      = -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wno-format-nonliteral
BASEFLAGS = -std=c11 -D_GNU_SOURCE $(WARN) -Ilib $(PKG_CFLAGS) $(PQ_CFLAGS) -DLIBEXECDIR='"$(PREFIX)/libexec/spoold"'
CFLAGS   ?= -O2 -g
ASANFLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined -DSPOOLD_CRASH_POINTS
# Hardening, always on (the Debian build flags, dpkg-buildflags, plus full RELRO and PIE
# spelled out, so a compiler without those defaults still gets them): canaries on every
# function with a buffer, fortified libc calls, a position-independent executable, and
# the GOT read-only after start (-z now resolves every symbol at load). tests/t_hardening.py
# checks the built binaries. The ASan build keeps all but _FORTIFY_SOURCE: its __*_chk
# calls bypass ASan's interceptors, and ASan checks those accesses more precisely.
HARDEN_CFLAGS   = -fstack-protector-strong -fstack-clash-protection -fPIE -Wformat -Werror=format-security
HARDEN_CPPFLAGS = -U_FORTIFY_SOURCE -D_FORTIFY_SOURCE=2
HARDEN_LDFLAGS  = -pie -Wl,-z,relro -Wl,-z,now
PROD_CFLAGS     = $(HARDEN_CFLAGS) $(HARDEN_CPPFLAGS) $(CFLAGS)
ASAN_CFLAGS     = $(HARDEN_CFLAGS) $(ASANFLAGS)

O       ?= build
PREFIX  ?= /usr/local
# The release (VERSION file) plus the commit when built from a git checkout: --version of
# every program, so that an administrator can tell which build runs after an upgrade.
VERSION := $(shell cat VERSION)$(shell git describe --always --dirty --abbrev=12 2>/dev/null | sed 's/^/+g/')
DESTDIR ?=

PROGS     = splitter scanner-runner router spoold spoolctl connector-smtp connector-maildir lmtpd exporter
LIB_SRC   = $(wildcard lib/*.c)
splitter_SRC       = $(wildcard splitter/*.c)
scanner-runner_SRC = $(wildcard scanner-runner/*.c)
router_SRC         = $(wildcard router/*.c)
spoold_SRC         = $(wildcard spoold/*.c)
spoolctl_SRC       = $(wildcard spoolctl/*.c)
connector-smtp_SRC = $(wildcard connector-smtp/*.c)
connector-maildir_SRC = $(wildcard connector-maildir/*.c)
lmtpd_SRC          = $(wildcard lmtpd/*.c)
exporter_SRC       = $(wildcard exporter/*.c)
# libpq: only the exporter and spoolctl (fleet) speak to the fleet's database.
PQ_CFLAGS := $(shell pkg-config --cflags libpq 2>/dev/null)
PQ_LIBS   := $(shell pkg-config --libs libpq 2>/dev/null || echo -lpq)
exporter_LIBS      = $(PQ_LIBS)
spoolctl_LIBS      = $(PQ_LIBS)
scanner-runner_LIBS = -llmdb
connector-smtp_LIBS = $(shell pkg-config --libs libcurl 2>/dev/null || echo -lcurl)
UNIT_SRC  = $(wildcard tests/unit/test_*.c)
HDRS      = $(wildcard lib/*.h) $(wildcard */*.h)

SIGDIR    = build/sigs

.PHONY: all prod asan test run deps test-deps fuzz install uninstall clean bench bench-farm bench-mta bench-peer bench-foreign bench-profile bench-all bench-deps chaos check-format format
all: bin-all $(SIGDIR)/spoold-test.hdb
prod: $(addprefix $(O)/prod/bin/,$(PROGS)) unit-prod $(SIGDIR)/spoold-test.hdb

# ---- production build: bin/ -------------------------------------------------
define prog_rule
$(O)/prod/bin/$(1): $$(patsubst %.c,$(O)/prod/%.o,$$(LIB_SRC) $$($(1)_SRC) $$($(1)_EXTRA))
	@mkdir -p $$(dir $$@)
	$$(CC) $$(PROD_CFLAGS) $$(HARDEN_LDFLAGS) -o $$@ $$^ $$(PKG_LIBS) $$($(1)_LIBS)
bin/$(1): $(O)/prod/bin/$(1) | bin
	cp -f $$< $$@
$(O)/asan/bin/$(1): $$(patsubst %.c,$(O)/asan/%.o,$$(LIB_SRC) $$($(1)_SRC) $$($(1)_EXTRA))
	@mkdir -p $$(dir $$@)
	$$(CC) $$(ASAN_CFLAGS) $$(HARDEN_LDFLAGS) -o $$@ $$^ $$(PKG_LIBS) $$($(1)_LIBS)
endef
$(foreach p,$(PROGS),$(eval $(call prog_rule,$(p))))

bin-all: $(addprefix bin/,$(PROGS)) unit-prod
asan: $(addprefix $(O)/asan/bin/,$(PROGS)) unit-asan $(SIGDIR)/spoold-test.hdb

bin:
	mkdir -p bin

# spoold looks for the stages in LIBEXECDIR, compiled in from PREFIX: rebuild it when
# PREFIX changes (make install PREFIX=/usr after a plain make).
PREFIX_STAMP = $(O)/prefix.stamp
$(PREFIX_STAMP): FORCE
	@mkdir -p $(O)
	@echo '$(PREFIX)' | cmp -s - $@ || echo '$(PREFIX)' > $@
$(O)/prod/spoold/spoold.o $(O)/asan/spoold/spoold.o: $(PREFIX_STAMP)
VERSION_STAMP = $(O)/version.stamp
$(VERSION_STAMP): FORCE
	@mkdir -p $(O)
	@echo '$(VERSION)' | cmp -s - $@ || echo '$(VERSION)' > $@
$(O)/prod/lib/version.o $(O)/asan/lib/version.o: $(VERSION_STAMP)
$(O)/prod/lib/version.o $(O)/asan/lib/version.o: BASEFLAGS += -DSPOOLD_VERSION='"$(VERSION)"'
FORCE:

$(O)/prod/%.o: %.c $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) $(PROD_CFLAGS) -c -o $@ $<
$(O)/asan/%.o: %.c $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) $(ASAN_CFLAGS) -c -o $@ $<

# Unit tests: each tests/unit/test_X.c links with lib/ and the module under test, named in
# a "// links: a.c b.c" comment on its first line. A test may include the header of any
# program folder, and is rebuilt when any source changes: adding one needs no edit here.
unit_links = $(shell sed -n '1s|^// links: ||p' $(1))
UNIT_INCS  = $(addprefix -I,$(PROGS))
UNIT_DEPS  = $(HDRS) $(wildcard tests/unit/*.h) $(foreach p,$(PROGS),$($(p)_SRC))
$(O)/prod/tests/unit_%: tests/unit/test_%.c $(patsubst %.c,$(O)/prod/%.o,$(LIB_SRC)) $(UNIT_DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) $(UNIT_INCS) $(PROD_CFLAGS) $(HARDEN_LDFLAGS) -o $@ $< $(call unit_links,$<) $(patsubst %.c,$(O)/prod/%.o,$(LIB_SRC)) $(PKG_LIBS)
$(O)/asan/tests/unit_%: tests/unit/test_%.c $(patsubst %.c,$(O)/asan/%.o,$(LIB_SRC)) $(UNIT_DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) $(UNIT_INCS) $(ASAN_CFLAGS) $(HARDEN_LDFLAGS) -o $@ $< $(call unit_links,$<) $(patsubst %.c,$(O)/asan/%.o,$(LIB_SRC)) $(PKG_LIBS)
unit-prod: $(patsubst tests/unit/test_%.c,$(O)/prod/tests/unit_%,$(UNIT_SRC))
unit-asan: $(patsubst tests/unit/test_%.c,$(O)/asan/tests/unit_%,$(UNIT_SRC))

# ---- test signature database (sigtool) -------------------------------------
$(SIGDIR)/spoold-test.hdb: conf/mksigs.sh
	bash conf/mksigs.sh $(SIGDIR)

# ---- packages ----------------------------------------------------------------
deps:
	@sh conf/deps.sh

test-deps:
	@sh conf/deps.sh --test

# The test set plus amavisd-new, which only the benches compare against (make test never
# installs it; its package starts a daemon of its own, which the benches stop).
bench-deps:
	@sh conf/deps.sh --bench

# ---- tests -------------------------------------------------------------------
# The separated pass (issue 15): every suite that runs a pipeline, a second time with each
# stage as a user of its own (tests/lib/privsep.py). Not in it: t_privsep_* (they choose
# the users themselves), t_crash and t_crashpoints (ASan build only, and the pass uses the
# production build), the speed and bench suites, and the suites that run no pipeline.
SEPARATED_SUITES = t_cache t_canary_limits t_clamd_cut t_clamd_trust t_collide t_connectors t_deploy \
    t_differential t_diskfull t_envelope t_escape t_exec t_failclosed t_faults t_fleet \
    t_hostile t_inject_idem t_limits t_lmtp t_lmtp_postfix t_logs t_pipeline t_pool \
    t_postfix t_rawscan t_reinject t_router t_router_policy t_scanner t_split t_spoolctl t_spoold t_strip \
    t_sync
# The suites that run again against the ASan build (it has the crash points) with
# spool_sync = "files" forced: the default, auto, takes that path only under a foreign
# writer, so the crash tests would seldom see it otherwise.
SYNC_FILES_SUITES = t_crash t_crashpoints t_diskfull t_sync
comma := ,
empty :=
space := $(empty) $(empty)

# Test programs run side by side (tests/run.py --jobs): most of their time is spent waiting
# on daemons, so three on two cores take well under half the time of one after another.
TEST_JOBS ?= 3

test: test-deps
	$(MAKE) all prod asan
	python3 tests/run.py --jobs $(TEST_JOBS) --bin $(O)/prod/bin --bin $(O)/asan/bin \
	    --separated $(subst $(space),$(comma),$(strip $(SEPARATED_SUITES))) \
	    --sync-files $(subst $(space),$(comma),$(strip $(SYNC_FILES_SUITES)))

run: deps all
	exec sh conf/run.sh

fuzz: test-deps
	$(MAKE) -f tests/fuzz/fuzz.mk O=$(O) run

bench: bench-deps all
	python3 bench/run.py
# Scan farm (issue 17): clamd pools and the verdict cache, loopback only, 5,000 messages
# a scenario, about ten minutes on 2 cores, at most an hour (--limit); prints each goal
# met or missed, exits 1 if one is missed, and writes the "Scan farm" section at the end
# of docs/PERFORMANCE.md. BENCH_FARM_ARGS: e.g. --quick, --note "what else ran".
bench-farm: test-deps all
	python3 bench/farm.py $(BENCH_FARM_ARGS)

# spoold behind a throwaway Postfix (smtp-source in, smtp-sink out; LMTP and pipe filters;
# amavisd-new, installed by bench-deps): needs root; writes its section into docs/PERFORMANCE.md
bench-mta: bench-deps all
	python3 bench/mta.py --out docs/PERFORMANCE.md

# spoold against a private amavisd-new (issue 19): one clamd, RELOADed before each timed run,
# one SMTP sink, corpora a, b, c; needs root; writes its section into docs/PERFORMANCE.md.
# BENCH_PEER_ARGS: e.g. --quick, --corpora a,b.
bench-peer: bench-deps all
	python3 bench/peer.py --out docs/PERFORMANCE.md $(BENCH_PEER_ARGS)

# drop-to-outbox latency and backlog throughput per spool_sync strategy, idle and under a
# foreign writer on the spool's filesystem (issue 19); writes its section.
bench-foreign: bench-deps all
	python3 bench/foreign.py --out docs/PERFORMANCE.md $(BENCH_FOREIGN_ARGS)

# one corpus-a clamd run under perf record -a -g: where the CPU goes; needs root; writes
# its section.
bench-profile: bench-deps all
	python3 bench/profile.py --out docs/PERFORMANCE.md

# every table of docs/PERFORMANCE.md from one run, in an order in which each keeps the
# others' sections (bench/run.py rewrites what is above the analysis mark; the others put
# theirs right below it): about 70 minutes on 2 cores; run it on a quiet machine.
bench-all: bench-deps all
	python3 bench/run.py
	python3 bench/peer.py --out docs/PERFORMANCE.md $(BENCH_PEER_ARGS)
	python3 bench/mta.py --out docs/PERFORMANCE.md $(BENCH_MTA_ARGS)
	python3 bench/foreign.py --out docs/PERFORMANCE.md $(BENCH_FOREIGN_ARGS)
	python3 bench/profile.py --out docs/PERFORMANCE.md

chaos: test-deps all
	python3 tests/chaos.py --bin bin --messages $${CHAOS_MESSAGES:-10000} --long

# make install: the programs, man pages, systemd units, sysusers.d and tmpfiles.d files,
# and the production config (conf/production/spoold.conf) as /etc/spoold/spoold.conf
# when there is none yet; an existing config is never overwritten (the new one goes
# beside it as spoold.conf.dist). Installing into the running system (no DESTDIR, as
# root, with systemd) also creates the spoold user and /var/spool/spoold, reloads
# systemd, and restarts a running spoold, so that no old stage keeps running beside the
# new binaries. docs/INSTALL.md has the steps around it.
SYSTEMD_RUNNING = $(shell test -d /run/systemd/system && echo yes)
install: all
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/libexec/spoold
	install -m 0755 bin/spoold $(DESTDIR)$(PREFIX)/sbin/spoold
	install -m 0755 bin/spoolctl $(DESTDIR)$(PREFIX)/bin/spoolctl
	install -m 0755 bin/splitter bin/scanner-runner bin/router bin/connector-smtp \
	    bin/connector-maildir bin/lmtpd bin/exporter $(DESTDIR)$(PREFIX)/libexec/spoold/
	install -d -m 0755 $(DESTDIR)/etc/spoold
	install -m 0644 conf/production/spoold.conf $(DESTDIR)/etc/spoold/spoold.conf.dist
	test -e $(DESTDIR)/etc/spoold/spoold.conf || \
	    install -m 0644 conf/production/spoold.conf $(DESTDIR)/etc/spoold/spoold.conf
	install -d $(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)$(PREFIX)/share/man/man8
	install -m 0644 docs/man/spoold.8 docs/man/spoolctl.8 $(DESTDIR)$(PREFIX)/share/man/man8/
	install -m 0644 docs/man/spoold.conf.5 $(DESTDIR)$(PREFIX)/share/man/man5/
	install -d $(DESTDIR)$(PREFIX)/lib/systemd/system $(DESTDIR)$(PREFIX)/lib/tmpfiles.d \
		$(DESTDIR)$(PREFIX)/lib/sysusers.d
	# The units name the installed paths: rewrite them for PREFIX.
	for u in spoold.service spoold-stage@.service spoold-smtp@.service spoold-maildir@.service; do \
		sed -e 's|/usr/sbin/spoold|$(PREFIX)/sbin/spoold|' \
		    -e 's|/usr/libexec/spoold|$(PREFIX)/libexec/spoold|' dist/$$u \
		    > $(DESTDIR)$(PREFIX)/lib/systemd/system/$$u && \
		chmod 0644 $(DESTDIR)$(PREFIX)/lib/systemd/system/$$u || exit 1; \
	done
	install -d $(DESTDIR)$(PREFIX)/share/spoold/postfix
	install -m 0644 dist/postfix/master.cf dist/postfix/main.cf \
	    $(DESTDIR)$(PREFIX)/share/spoold/postfix/
	install -m 0644 dist/spoold.tmpfiles $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/spoold.conf
	install -m 0644 dist/spoold.sysusers $(DESTDIR)$(PREFIX)/lib/sysusers.d/spoold.conf
ifeq ($(DESTDIR),)
	@if [ "$$(id -u)" = 0 ]; then \
		if command -v systemd-sysusers >/dev/null; then \
			systemd-sysusers $(PREFIX)/lib/sysusers.d/spoold.conf; \
		else \
			getent passwd spoold >/dev/null || useradd --system --user-group \
			    --home-dir /var/spool/spoold --shell /usr/sbin/nologin spoold; \
		fi; \
		if command -v systemd-tmpfiles >/dev/null; then \
			systemd-tmpfiles --create $(PREFIX)/lib/tmpfiles.d/spoold.conf; \
		else \
			install -d -m 0750 -o spoold -g spoold /var/spool/spoold; \
		fi; \
		if [ "$(SYSTEMD_RUNNING)" = yes ]; then \
			systemctl daemon-reload; \
			systemctl try-restart spoold.service; \
		fi; \
	else \
		echo "make install: not root; create the user and the spool as docs/INSTALL.md says"; \
	fi
endif

# make uninstall removes what make install put in place, and leaves the config
# (/etc/spoold/spoold.conf) and the spool (/var/spool/spoold: it holds mail) alone.
uninstall:
	-[ -n "$(DESTDIR)" ] || [ "$(SYSTEMD_RUNNING)" != yes ] || \
	    systemctl disable --now spoold.service 2>/dev/null
	rm -f $(DESTDIR)$(PREFIX)/sbin/spoold $(DESTDIR)$(PREFIX)/bin/spoolctl
	rm -rf $(DESTDIR)$(PREFIX)/libexec/spoold
	rm -f $(DESTDIR)$(PREFIX)/share/man/man8/spoold.8 $(DESTDIR)$(PREFIX)/share/man/man8/spoolctl.8 \
	    $(DESTDIR)$(PREFIX)/share/man/man5/spoold.conf.5
	rm -f $(DESTDIR)$(PREFIX)/lib/systemd/system/spoold.service \
	    $(DESTDIR)$(PREFIX)/lib/systemd/system/spoold-stage@.service \
	    $(DESTDIR)$(PREFIX)/lib/systemd/system/spoold-smtp@.service \
	    $(DESTDIR)$(PREFIX)/lib/systemd/system/spoold-maildir@.service \
	    $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/spoold.conf $(DESTDIR)$(PREFIX)/lib/sysusers.d/spoold.conf
	rm -f $(DESTDIR)/etc/spoold/spoold.conf.dist
	rm -rf $(DESTDIR)$(PREFIX)/share/spoold
	@echo "make uninstall: kept /etc/spoold/spoold.conf and /var/spool/spoold (mail); remove them by hand"

FORMAT_SRC = $(wildcard lib/*.[ch] splitter/*.[ch] scanner-runner/*.[ch] router/*.[ch] \
               spoold/*.[ch] spoolctl/*.[ch] connector-*/*.[ch] lmtpd/*.[ch] exporter/*.[ch] tests/unit/*.[ch] tests/fuzz/*.[ch])
check-format:
	clang-format --dry-run --Werror $(FORMAT_SRC)

format:
	clang-format -i $(FORMAT_SRC)

clean:
	rm -rf bin build $(O)
