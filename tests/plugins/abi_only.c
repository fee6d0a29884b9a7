/* Test plugin: the ABI version and nothing else (no event function). */
#include "pgdog_plugin.h"

PGDOG_PLUGIN_DECLARE()

void pgdog_init(void) {}
