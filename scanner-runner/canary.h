/*
 * canary - the scanner self-test (canary.c): each scanner is checked at start, every
 * canary_interval seconds and when its version changes; a scanner that fails is
 * degraded (struct scanner), and its mail is held. Health goes to run/scanners.
 */
#ifndef SPOOLD_CANARY_H
#define SPOOLD_CANARY_H

#include <stddef.h>

#include "scanner.h"
#include "stage.h"

/* The start-up check of every scanner (call once the scanners are set up). */
void canary_start(struct stage *st, struct scanner *sc, size_t n);
/* The periodic part; call from the stage tick. */
void canary_tick(struct stage *st, struct scanner *sc, size_t n);

#endif
