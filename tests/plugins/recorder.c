/*
 * Test plugin for tests/test_native_proxy.py: writes what it is told to the file named by its
 * `config` (one line per call, flushed at once), so that a test outside the proxy's process
 * can see it. No pgdog_route_query.
 *
 *   configure   "init <number of pgdog_init calls so far>"
 *   fini        "fini <number of pgdog_fini calls so far>"
 *   pre_connect "pre_connect\t<user>\t<database>\t<application_name>"; refuses user "refused"
 *               with 53300 and a message, and application_name "refuse_me" with neither
 *               (the proxy's defaults)
 *   after_connect "after_connect\t<database>\t<host>\t<port>\t<role>\t<shard>"; the SQL it
 *               returns sets the custom setting recorder.server to "<port> <role>"
 *   post_query  "post_query\t<query>\t<database>\t<user>\t<rows>\t<sqlstate>\t<role>\t<us>"
 *               (newlines and tabs in the query written as spaces)
 */
#include <stdio.h>
#include <string.h>

#include "pgdog_plugin.h"

PGDOG_PLUGIN_DECLARE()

static FILE *out;
static int init_calls, fini_calls;

void pgdog_init(void) { init_calls++; }

int32_t pgdog_configure(PgdogStr config) {
    char path[4096];
    if (config.data == NULL || config.len == 0 || config.len >= sizeof path) return 1;
    memcpy(path, config.data, config.len);
    path[config.len] = 0;
    out = fopen(path, "a");
    if (out == NULL) return 2;
    setvbuf(out, NULL, _IOLBF, 0);
    fprintf(out, "init %d\n", init_calls);
    return 0;
}

void pgdog_fini(void) {
    fini_calls++;
    if (out != NULL) {
        fprintf(out, "fini %d\n", fini_calls);
        fclose(out);
        out = NULL;
    }
}

static int is(PgdogStr s, const char *text) {
    return s.len == strlen(text) && memcmp(s.data, text, s.len) == 0;
}

static void put(PgdogStr s) {
    for (size_t i = 0; i < s.len; i++) {
        char c = s.data[i];
        fputc(c == '\n' || c == '\t' || c == '\r' ? ' ' : c, out);
    }
}

PgdogOutput pgdog_pre_connect(PgdogConnect c) {
    static const char message[] = "recorder: no more connections for user refused";
    PgdogOutput o = PGDOG_OUTPUT_INIT;
    if (out != NULL) {
        fputs("pre_connect\t", out);
        put(c.user);
        fputc('\t', out);
        put(c.database);
        fputc('\t', out);
        put(c.application_name);
        fputc('\n', out);
    }
    if (is(c.user, "refused")) {
        o.decision = PGDOG_BLOCK;
        memcpy(o.error.sqlstate, "53300", 6);
        o.error.message.data = message;
        o.error.message.len = sizeof message - 1;
    } else if (is(c.application_name, "refuse_me")) {
        o.decision = PGDOG_BLOCK;
    }
    return o;
}

PgdogStr pgdog_after_connect(PgdogServer s) {
    static char sql[256];
    const char *role = s.role == PGDOG_ROLE_PRIMARY ? "primary"
                       : s.role == PGDOG_ROLE_REPLICA ? "replica" : "unknown";
    PgdogStr r;
    if (out != NULL) {
        fputs("after_connect\t", out);
        put(s.database);
        fputc('\t', out);
        put(s.host);
        fprintf(out, "\t%u\t%s\t%d\n", (unsigned)s.port, role, (int)s.shard);
    }
    snprintf(sql, sizeof sql, "SELECT set_config('recorder.server', '%u %s', false)",
             (unsigned)s.port, role);
    r.data = sql;
    r.len = strlen(sql);
    return r;
}

void pgdog_post_query(PgdogQueryDone d) {
    if (out == NULL) return;
    fputs("post_query\t", out);
    put(d.query);
    fputc('\t', out);
    put(d.database);
    fputc('\t', out);
    put(d.user);
    fprintf(out, "\t%llu\t%.5s\t%d\t%llu\n", (unsigned long long)d.rows, d.sqlstate, (int)d.role,
            (unsigned long long)d.duration_us);
}
