/* Test plugin: pgdog_route_query with no decision, for measuring the adapter's overhead. */
#include "pgdog_plugin.h"

PGDOG_PLUGIN_DECLARE()

PgdogOutput pgdog_route_query(PgdogInput in) {
    PgdogOutput out = PGDOG_OUTPUT_INIT;
    (void)in;
    return out;
}
