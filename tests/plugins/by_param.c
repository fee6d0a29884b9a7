/*
 * Test plugin for tests/test_native_proxy.py: decides each execution of a statement by the
 * text of its first parameter, so that one prepared statement gets a different decision on
 * each Bind.
 *
 *   "rewrite"    PGDOG_REWRITE to  SELECT 'rewritten', $1::text
 *   "intercept"  PGDOG_INTERCEPT: columns (which text, value text), one row ("intercepted", "intercept")
 *   "block"      PGDOG_BLOCK 42501 "blocked by parameter"
 *   anything else, a NULL or binary parameter, or none: no decision
 */
#include <string.h>

#include "pgdog_plugin.h"

PGDOG_PLUGIN_DECLARE()

static int first_is(PgdogInput in, const char *text) {
    if (in.num_parameters == 0) return 0;
    const PgdogParameter *p = &in.parameters[0];
    return p->data != NULL && p->format == 0 && p->len == (int32_t)strlen(text) &&
           memcmp(p->data, text, (size_t)p->len) == 0;
}

static PgdogStr str(const char *s) {
    PgdogStr r = {s, strlen(s)};
    return r;
}

PgdogOutput pgdog_route_query(PgdogInput in) {
    static PgdogColumn columns[2];
    static PgdogStr cells[2];
    PgdogOutput out = PGDOG_OUTPUT_INIT;
    if (first_is(in, "rewrite")) {
        out.decision = PGDOG_REWRITE;
        out.rewrite = str("SELECT 'rewritten', $1::text");
    } else if (first_is(in, "intercept")) {
        columns[0].name = str("which");
        columns[0].type_oid = 25;
        columns[1].name = str("value");
        columns[1].type_oid = 25;
        cells[0] = str("intercepted");
        cells[1] = str("intercept");
        out.decision = PGDOG_INTERCEPT;
        out.intercept.num_columns = 2;
        out.intercept.columns = columns;
        out.intercept.num_rows = 1;
        out.intercept.cells = cells;
    } else if (first_is(in, "block")) {
        out.decision = PGDOG_BLOCK;
        memcpy(out.error.sqlstate, "42501", 6);
        out.error.message = str("blocked by parameter");
    }
    return out;
}
