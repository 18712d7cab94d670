# libFuzzer targets (clang, -fsanitize=fuzzer,address,undefined): fuzz_mime for the MIME
# extractor, fuzz_strip for the strip path (split, flag, cut, re-split).
#
#   make fuzz                       build and run fuzz_mime for FUZZ_SECONDS (default 60)
#   make fuzz FUZZ_SECONDS=1800     a long run; crashes land in $(O)/fuzz/crash-*
#   make -f tests/fuzz/fuzz.mk run-strip FUZZ_SECONDS=1800
#                                   fuzz_strip; corpus $(O)/fuzz/corpus-strip
#
# Seeds: the messages the tests generate are not files, so the run is seeded from
# ../shared/corpus when present (read only; new inputs go to $(O)/fuzz/corpus).
O            ?= build
FUZZ_SECONDS ?= 60
# lib/util.h includes these; each target links them all
UTIL_SRC      = lib/alloc.c lib/buf.c lib/clock.c lib/escape.c lib/fileio.c lib/strconv.c
CLANG        ?= clang
FUZZ_DIR      = $(O)/fuzz
FUZZ_BIN      = $(FUZZ_DIR)/fuzz_mime
MIME_SRC      = $(wildcard splitter/mime*.c)
SRC           = tests/fuzz/fuzz_mime.c $(MIME_SRC) $(UTIL_SRC) lib/log.c lib/manifest.c lib/envelope.c
STRIP_BIN     = $(FUZZ_DIR)/fuzz_strip
STRIP_SRC     = tests/fuzz/fuzz_strip.c router/strip.c $(MIME_SRC) $(UTIL_SRC) lib/log.c \
                lib/manifest.c lib/envelope.c
SEEDS         = $(wildcard ../shared/corpus/msgs ../shared/corpus/extras)

.PHONY: run build run-strip
build: $(FUZZ_BIN) $(STRIP_BIN)

$(FUZZ_BIN): $(SRC) $(wildcard lib/*.h splitter/*.h tests/fuzz/*.h)
	@mkdir -p $(FUZZ_DIR)
	$(CLANG) -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
	    -fno-sanitize-recover=undefined -Ilib -Isplitter $$(pkg-config --cflags gmime-3.0 nettle) \
	    $(SRC) $$(pkg-config --libs gmime-3.0 nettle) -o $@

run: $(FUZZ_BIN)
	@mkdir -p $(FUZZ_DIR)/corpus
	cd $(FUZZ_DIR) && ./fuzz_mime corpus $(abspath $(SEEDS)) -max_total_time=$(FUZZ_SECONDS) \
	    -timeout=10 -rss_limit_mb=2048 -max_len=131072 -print_final_stats=1

$(STRIP_BIN): $(STRIP_SRC) $(wildcard lib/*.h splitter/*.h router/*.h tests/fuzz/*.h)
	@mkdir -p $(FUZZ_DIR)
	$(CLANG) -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
	    -fno-sanitize-recover=undefined -Ilib -Isplitter -Irouter \
	    $$(pkg-config --cflags gmime-3.0 nettle) \
	    $(STRIP_SRC) $$(pkg-config --libs gmime-3.0 nettle) -o $@

run-strip: $(STRIP_BIN)
	@mkdir -p $(FUZZ_DIR)/corpus-strip
	cd $(FUZZ_DIR) && ./fuzz_strip corpus-strip $(abspath $(SEEDS)) \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -max_len=131072 \
	    -print_final_stats=1
# The SMTP/LMTP state machine of lmtpd (tests/fuzz/fuzz_smtp.c): client bytes in, whole
# and in chunks. `make -f tests/fuzz/fuzz.mk run-smtp`; `run` and `build` include it.
SMTP_BIN      = $(FUZZ_DIR)/fuzz_smtp
SMTP_SRC      = tests/fuzz/fuzz_smtp.c lib/smtpproto.c lib/envelope.c $(UTIL_SRC) lib/log.c
.PHONY: build-smtp run-smtp
build: $(SMTP_BIN)
build-smtp: $(SMTP_BIN)
$(SMTP_BIN): $(SMTP_SRC) $(wildcard lib/*.h)
	@mkdir -p $(FUZZ_DIR)
	$(CLANG) -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
	    -fno-sanitize-recover=undefined -Ilib $$(pkg-config --cflags nettle) $(SMTP_SRC) \
	    $$(pkg-config --libs nettle) -o $@
run: run-smtp
run-smtp: $(SMTP_BIN)
	@mkdir -p $(FUZZ_DIR)/corpus-smtp
	cd $(FUZZ_DIR) && ./fuzz_smtp corpus-smtp -max_total_time=$(FUZZ_SECONDS) \
	    -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
