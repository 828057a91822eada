/* rules_capture.h -- what a rules_vm delivers, captured for assertions:
 * decisions (copied, at most MAXC) and rule errors. Shared by the unit tests
 * of the rules engine; static, so each test binary has its own copy. */
#ifndef NERVE_TEST_RULES_CAPTURE_H
#define NERVE_TEST_RULES_CAPTURE_H

#include <stdbool.h>
#include <stdio.h>

#include "nerve/rules.h"

#define MAXC 32

typedef struct capture {
    int n_dec, n_err;
    char dec_rule[MAXC][72];
    rules_action dec_action[MAXC];
    rules_level dec_level[MAXC];
    char dec_reason[MAXC][512];
    char dec_scope[MAXC][256];
    bool dec_halt[MAXC];
    char err_rule[MAXC][72];
    char err_msg[MAXC][1400];
} capture;

static void on_dec(void *ud, const rules_decision *d)
{
    capture *c = ud;

    assert_non_null(d->rule);
    assert_non_null(d->file);
    assert_non_null(d->reason);
    if (c->n_dec >= MAXC)
        return;
    snprintf(c->dec_rule[c->n_dec], sizeof(c->dec_rule[0]), "%s", d->rule);
    c->dec_action[c->n_dec] = d->action;
    c->dec_level[c->n_dec] = d->level;
    snprintf(c->dec_reason[c->n_dec], sizeof(c->dec_reason[0]), "%s", d->reason);
    snprintf(c->dec_scope[c->n_dec], sizeof(c->dec_scope[0]), "%s", d->scope ? d->scope : "");
    c->dec_halt[c->n_dec] = d->halt_sales;
    c->n_dec++;
}

static void on_err(void *ud, const char *rule, const char *msg)
{
    capture *c = ud;

    if (c->n_err >= MAXC)
        return;
    snprintf(c->err_rule[c->n_err], sizeof(c->err_rule[0]), "%s", rule);
    snprintf(c->err_msg[c->n_err], sizeof(c->err_msg[0]), "%s", msg);
    c->n_err++;
}

#endif
