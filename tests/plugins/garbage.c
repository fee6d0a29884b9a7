/* Test plugin: every answer is garbage (an unknown decision; after_connect returns NULL with
 * a length; pre_connect an unknown decision). check-plugin must fail on it. */
#include "pgdog_plugin.h"

PGDOG_PLUGIN_DECLARE()

PgdogOutput pgdog_route_query(PgdogInput in) {
    PgdogOutput out = PGDOG_OUTPUT_INIT;
    (void)in;
    out.decision = 99;
    return out;
}

PgdogOutput pgdog_pre_connect(PgdogConnect c) {
    PgdogOutput out = PGDOG_OUTPUT_INIT;
    (void)c;
    out.decision = -1;
    return out;
}

PgdogStr pgdog_after_connect(PgdogServer s) {
    PgdogStr bad = {NULL, 3};
    (void)s;
    return bad;
}
