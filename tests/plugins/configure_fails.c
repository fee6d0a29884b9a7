/* Test plugin: pgdog_configure refuses (returns 3); pgdog_fini then creates "<config>.fini"
 * so the test can see it ran. */
#include <stdio.h>

#include "pgdog_plugin.h"

PGDOG_PLUGIN_DECLARE()

static char path[4096];

int32_t pgdog_configure(PgdogStr config) {
    snprintf(path, sizeof path, "%.*s.fini", (int)config.len, config.data ? config.data : "");
    return 3;
}

void pgdog_fini(void) {
    FILE *f = fopen(path, "w");
    if (f) fclose(f);
}

void pgdog_post_query(PgdogQueryDone d) { (void)d; }
