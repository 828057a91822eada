/* rules_new.h -- `nerve rules new NAME --on CHANNEL`: write a first rule.
 *
 * An analyst's first rule should start from a file that already loads,
 * passes its fixtures and decides something on the shipped sample events,
 * so that every later error is one they made. The file written is shaped
 * by its channel (sale_request may reject; the inventory channel reads
 * stock_remaining; the sales channel qty and unit_price; any other, such as
 * financial_events, a type and an amount), commented line by line, declares
 * one parameter (params_section/params, SPEC §12) and keeps ctx.state.
 *
 * A command, not a library: rules_new_main prints to stdout and stderr and
 * returns an exit status (0 written, 1 error or refusal, 2 usage).
 * rules_new_render is pure and used by the tests. Single-threaded.
 */
#ifndef NERVE_RULES_NEW_H
#define NERVE_RULES_NEW_H

#include <stddef.h>

#include "nerve/config.h"

#define RULES_NEW_NAME_MAX 64 /* bytes of a rule name written by `rules new` */

/* 0 when NAME can name a new rule: 1 to RULES_NEW_NAME_MAX bytes of
 * [A-Za-z0-9_], not starting with a digit, not a Lua keyword (it becomes
 * the file name, the rule name and a Lua field name: ctx.params.NAME).
 * Otherwise -1 with the reason in ERR. */
int rules_new_name_ok(const char *name, char *err, size_t errlen);

/* 0 when rules can listen on CHANNEL under C (rules_channel_known: the
 * loader's own check) and CHANNEL is plain enough to become a Lua string
 * literal. Otherwise -1 with the reason (and the known channels) in ERR. */
int rules_new_channel_ok(const cfg *c, const char *channel, char *err, size_t errlen);

/* The text of rule NAME on CHANNEL (both already checked), shaped by C's
 * channel roles; malloc'd, the caller frees it. NULL when out of memory. */
char *rules_new_render(const cfg *c, const char *name, const char *channel);

/* Run `nerve rules new ARGS...`: ARGV[0] is "new". Returns the exit status. */
int rules_new_main(int argc, char **argv);

#endif
