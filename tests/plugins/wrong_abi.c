/* Test plugin: claims plugin ABI version 2 (this proxy speaks 1). */
#include "pgdog_plugin.h"

uint32_t pgdog_plugin_abi_version(void) { return 2; }

PgdogOutput pgdog_route_query(PgdogInput in) {
    PgdogOutput out = PGDOG_OUTPUT_INIT;
    (void)in;
    return out;
}
