/* Test plugin: an event function but no pgdog_plugin_abi_version. */
#include "pgdog_plugin.h"

PgdogOutput pgdog_route_query(PgdogInput in) {
    PgdogOutput out = PGDOG_OUTPUT_INIT;
    (void)in;
    return out;
}
