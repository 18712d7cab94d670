/*
 * entry_names - the names of the files in a spool entry directory (<state>/<qid>/, an
 * outbox entry outbox/<conn>/<qid>/, a badmail/ entry), each spelled once.
 *
 * They are the on-disk contract between the stages, spoolctl and the administrator
 * (docs/INTERNALS.md, "Files in a work directory"): a name spelled twice can drift apart
 * between its writer and its reader, and the reader then sees the file as absent (a
 * hold never retried, a pass count never read). tests/t_names.py fails when one of these
 * names is a string literal in a production source other than this header. The tests
 * keep their own literal spellings on purpose: they read the contract from outside, so
 * a change of a name here fails them instead of passing unnoticed.
 *
 * Each line says who writes the file, then who reads it.
 */
#ifndef SPOOLD_ENTRY_NAMES_H
#define SPOOLD_ENTRY_NAMES_H

/* The message: splitter (the claim rename, or a copy), router (derivatives, notices);
 * read by the splitter, scanner-runner, router, connectors, export and spoolctl. */
#define ENTRY_MESSAGE "message"
/* A queue file's bare message until the split commits: splitter; read by the splitter
 * (renamed over message) and export (headers). */
#define ENTRY_MESSAGE_BODY "message.body"
/* A copy of a dropped message another user owns: splitter; renamed over message. */
#define ENTRY_MESSAGE_OWN "message.own"
/* The message as delivered (our headers): router; linked into out.<conn>/ as message. */
#define ENTRY_MESSAGE_OUT "message.out"
/* message.out while the router writes it; renamed to message.out. */
#define ENTRY_MESSAGE_OUT_TMP "message.out.tmp"
/* Sender and recipients: splitter, router (per outbox entry, derivatives, notices); read
 * by the router, connectors, export and spoolctl. */
#define ENTRY_ENVELOPE "envelope"
/* The inbound name, escaped (or spoold-strip/<qid>): splitter, router (derivatives);
 * read by the splitter (collisions) and the router (a derivative's marker). */
#define ENTRY_ORIGIN "origin"
/* The poison counter: splitter, router (a derivative's 0); read by the splitter; removed
 * by spoolctl requeue. */
#define ENTRY_ATTEMPTS "attempts"
/* The fleet's pass: spoolctl (requeue, flush hold), router (copied into out.<conn>/);
 * read by export (every stage's records); kept by the splitter's re-split. */
#define ENTRY_REQUEUES "requeues"
/* The parts list: splitter; read by the scanner-runner and the router. */
#define ENTRY_MANIFEST "manifest"
/* The verdict lines: scanner-runner; read by the router, export and spoolctl. */
#define ENTRY_VERDICTS "verdicts"
/* The event log: appended by every stage and spoolctl; read by spoolctl and people. */
#define ENTRY_TRACE "trace"
/* The fan-out plan (commit record): router; read by the router when it resumes. */
#define ENTRY_FANOUT "fanout"
/* The hold state: router, spoolctl hold; read by the router (retry), export (round) and
 * spoolctl (status, flush); removed by spoolctl requeue. */
#define ENTRY_HOLD "hold"
/* The marker of a hold made by hand: spoolctl hold; read by spoolctl (ls, flush). */
#define ENTRY_MANUAL_HOLD "manual-hold"
/* The marker "deliver without the verdicts": spoolctl quarantine release; read by the
 * router. */
#define ENTRY_RELEASE "release"
/* The commit record of a strip (the derivative's qid): router; read by the router. */
#define ENTRY_STRIP "strip"
/* A strip's derivative, a complete work directory: router; renamed into incoming/. */
#define ENTRY_DERIVED "derived"
/* derived/ while the router builds it; renamed to derived. */
#define ENTRY_DERIVED_TMP "derived.tmp"
/* Why the entry is in quarantine, for people: router; read by spoolctl quarantine. */
#define ENTRY_REPORT "report"
/* The same as one JSON object: router; read by spoolctl quarantine and programs. */
#define ENTRY_REPORT_JSON "report.json"
/* Why the entry is in badmail/ or hold/: splitter, router, connectors, lib/spool.c;
 * read by spoolctl (status, requeue filters). */
#define ENTRY_REASON "reason"
/* An outbox entry's retry state: the connector; read by the connector and spoolctl. */
#define ENTRY_DELIVER "deliver"
/* The prefix of a prepared outbox entry, out.<conn>/: router; moved into outbox/<conn>/. */
#define ENTRY_OUT_PREFIX "out."
/* The suffix of a part, NNNN.ATT: splitter (manifest_part_name); read by the
 * scanner-runner; removed by the router before quarantine. */
#define ENTRY_PART_SUFFIX ".ATT"

#endif
