/*
 * primary_only_tables: statements that mention any of the listed tables always go to the
 * primary, even plain SELECTs the router would send to a replica. For tables whose readers
 * cannot tolerate replication lag (balances, queues, sessions, ...).
 *
 * [[plugins]]
 * name = "plugins/primary_only_tables/libprimary_only_tables.so"
 * config = "primary_only_tables.txt"    # required
 *
 * The config file lists one table per line; blank lines and lines starting with '#' are
 * ignored, and so is anything after a '#'. A plain name (`accounts`) matches that table in
 * any schema; a qualified one (`billing.accounts`) matches only when the statement names the
 * schema. Write names as PostgreSQL stores them: lower case, unless created with quotes.
 *
 * The plugin asks for the parse tree (pgdog_wants_ast) and looks for `"relname":"<table>"`
 * in it, so a table only counts where the statement really names a relation (not in a
 * string literal or a comment). A statement that does not parse gets no decision (the
 * router already sends those to the primary).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgdog_plugin.h"

PGDOG_PLUGIN_DECLARE()

PGDOG_EXPORT int pgdog_wants_ast = 1;

#define MAX_TABLES 1024
#define MAX_NEEDLE 512

/* For each table, the exact JSON text to look for in the parse tree. */
static char *needles[MAX_TABLES];
static size_t num_needles;

static void forget_tables(void) {
    for (size_t i = 0; i < num_needles; i++) free(needles[i]);
    num_needles = 0;
}

/* Append `s` to `out` as the inside of a JSON string; 0 if it does not fit. */
static int json_escape(char *out, size_t size, size_t *at, const char *s, size_t len) {
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (*at + 3 > size) return 0;
        if (c == '"' || c == '\\') out[(*at)++] = '\\';
        out[(*at)++] = c;
    }
    out[*at] = 0;
    return 1;
}

/* `"relname":"t"` for `t`; `"schemaname":"s","relname":"t"` for `s.t`. */
static int add_table(const char *name, size_t len) {
    char buf[MAX_NEEDLE];
    size_t at = 0;
    const char *dot = memchr(name, '.', len);
    if (num_needles == MAX_TABLES) {
        fprintf(stderr, "primary_only_tables: more than %d tables\n", MAX_TABLES);
        return 0;
    }
    buf[0] = 0;
    if (dot) {
        at = (size_t)snprintf(buf, sizeof buf, "\"schemaname\":\"");
        if (!json_escape(buf, sizeof buf, &at, name, (size_t)(dot - name))) return 0;
        if (at + 3 > sizeof buf) return 0;
        strcpy(buf + at, "\",");
        at += 2;
        len -= (size_t)(dot - name) + 1;
        name = dot + 1;
    }
    if (at + 12 > sizeof buf) return 0;
    strcpy(buf + at, "\"relname\":\"");
    at += 11;
    if (!json_escape(buf, sizeof buf, &at, name, len) || at + 2 > sizeof buf) return 0;
    buf[at++] = '"';
    buf[at] = 0;
    needles[num_needles] = malloc(at + 1);
    if (!needles[num_needles]) return 0;
    memcpy(needles[num_needles++], buf, at + 1);
    return 1;
}

/* Read the table list; 0 on success (the value pgdog_configure returns). */
int32_t pgdog_configure(PgdogStr config) {
    char path[4096], line[1024];
    FILE *f;
    int lineno = 0;

    forget_tables();
    if (config.data == NULL || config.len == 0) {
        fprintf(stderr, "primary_only_tables: `config` must name the file listing the tables\n");
        return 1;
    }
    if (config.len >= sizeof path) return 1;
    memcpy(path, config.data, config.len);
    path[config.len] = 0;
    f = fopen(path, "r");
    if (!f) {
        perror(path);
        return 2;
    }
    while (fgets(line, sizeof line, f)) {
        char *start = line, *end;
        lineno++;
        if ((end = strchr(start, '#')) != NULL) *end = 0;
        end = start + strlen(start);
        while (start < end && (*start == ' ' || *start == '\t')) start++;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\n' || end[-1] == '\r'))
            end--;
        if (start == end) continue;
        if (!add_table(start, (size_t)(end - start))) {
            fprintf(stderr, "%s:%d: cannot use this table name\n", path, lineno);
            fclose(f);
            forget_tables();
            return 3;
        }
    }
    fclose(f);
    return 0;
}

void pgdog_fini(void) { forget_tables(); }

/* Does `needle` occur in the first `len` bytes of `hay`? */
static int contains(const char *hay, size_t len, const char *needle) {
    size_t n = strlen(needle);
    for (size_t i = 0; n > 0 && i + n <= len; i++)
        if (hay[i] == needle[0] && memcmp(hay + i, needle, n) == 0) return 1;
    return 0;
}

PgdogOutput pgdog_route_query(PgdogInput in) {
    PgdogOutput out = PGDOG_OUTPUT_INIT;
    if (in.ast_json.len == 0 || !in.has_primary) return out;
    for (size_t i = 0; i < num_needles; i++) {
        if (contains(in.ast_json.data, in.ast_json.len, needles[i])) {
            out.decision = PGDOG_FORWARD;
            out.role = PGDOG_ROLE_PRIMARY;
            return out;
        }
    }
    return out;
}
