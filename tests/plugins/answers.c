/*
 * Test plugin for tests/test_native.py: answers pgdog_route_query according to the query
 * text (including answers that make no sense), records what the other events receive,
 * and counts its lifecycle calls. Not an example of a good plugin.
 *
 * Query texts (exact prefixes):
 *   "forward <shard> <role>"    PGDOG_FORWARD with those numbers
 *   "decision <n>"              decision n, shard unknown, role unknown
 *   "block <sqlstate> <msg>"    PGDOG_BLOCK; "-" for an empty sqlstate, "" msg for empty
 *   "block_null_message"        PGDOG_BLOCK, message NULL with length 10
 *   "intercept"                 2 columns, 2 rows, one NULL cell
 *   "intercept_null_columns"    num_columns 2, columns NULL
 *   "intercept_null_cells"      1 column, 1 row, cells NULL
 *   "intercept_bad_utf8"        a cell that is not UTF-8
 *   "intercept_no_rows"         1 column, 0 rows, cells NULL (valid)
 *   "rewrite_empty"             PGDOG_REWRITE with an empty text
 *   "rewrite <sql>"             PGDOG_REWRITE to <sql>, shard and role unknown
 *   "echo", or SQL starting     PGDOG_INTERCEPT of one row describing the input
 *   with an "echo" comment
 *   anything else               PGDOG_NO_DECISION
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgdog_plugin.h"

PGDOG_PLUGIN_DECLARE()

int answers_init_calls = 0;
int answers_fini_calls = 0;
int answers_route_calls = 0;
int answers_free_calls = 0;
int answers_last_freed_decision = -100;
int pgdog_wants_ast = 1;

static char config_seen[512] = "";
static char post_query_seen[4096] = "";
static char pre_connect_seen[1024] = "";
static char after_connect_seen[1024] = "";

const char *answers_config(void) { return config_seen; }
const char *answers_post_query(void) { return post_query_seen; }
const char *answers_pre_connect(void) { return pre_connect_seen; }
const char *answers_after_connect(void) { return after_connect_seen; }

void pgdog_init(void) { answers_init_calls++; }
void pgdog_fini(void) { answers_fini_calls++; }

int32_t pgdog_configure(PgdogStr config) {
    if (config.data == NULL)
        snprintf(config_seen, sizeof config_seen, "(null) %zu", config.len);
    else
        snprintf(config_seen, sizeof config_seen, "%.*s", (int)config.len, config.data);
    return 0;
}

static PgdogStr str(const char *s) {
    PgdogStr r = {s, s ? strlen(s) : 0};
    return r;
}

static int starts(PgdogStr q, const char *prefix) {
    size_t n = strlen(prefix);
    return q.len >= n && memcmp(q.data, prefix, n) == 0;
}

static int is(PgdogStr q, const char *text) {
    return q.len == strlen(text) && memcmp(q.data, text, q.len) == 0;
}

static char text_buf[8192];
static PgdogColumn columns[8];
static PgdogStr cells[16];

static PgdogOutput echo(PgdogInput in) {
    PgdogOutput out = PGDOG_OUTPUT_INIT;
    static char fields[7][2048];
    static const char *names[7] = {"query", "database", "user", "shards", "flags", "params", "ast"};
    snprintf(fields[0], sizeof fields[0], "%.*s", (int)in.query.len, in.query.data);
    snprintf(fields[1], sizeof fields[1], "%.*s", (int)in.database.len, in.database.data);
    snprintf(fields[2], sizeof fields[2], "%.*s", (int)in.user.len, in.user.data);
    snprintf(fields[3], sizeof fields[3], "%u", in.shards);
    snprintf(fields[4], sizeof fields[4], "primary=%u replicas=%u tx=%u", in.has_primary,
             in.has_replicas, in.in_transaction);
    char *p = fields[5];
    size_t left = sizeof fields[5];
    p[0] = 0;
    for (uint32_t i = 0; i < in.num_parameters; i++) {
        const PgdogParameter *par = &in.parameters[i];
        int w;
        if (par->len < 0 || par->data == NULL) {
            w = snprintf(p, left, "%sNULL", i ? "," : "");
        } else {
            w = snprintf(p, left, "%s%d:", i ? "," : "", par->format);
            p += w; left -= w;
            for (int32_t j = 0; j < par->len && left > 3; j++) {
                w = snprintf(p, left, "%02x", (unsigned char)par->data[j]);
                p += w; left -= w;
            }
            w = 0;
        }
        p += w; left -= w;
    }
    snprintf(fields[6], sizeof fields[6], "%.*s", (int)(in.ast_json.len > 60 ? 60 : in.ast_json.len),
             in.ast_json.data ? in.ast_json.data : "");
    for (int i = 0; i < 7; i++) {
        columns[i].name = str(names[i]);
        columns[i].type_oid = 25;
        cells[i] = str(fields[i]);
    }
    out.decision = PGDOG_INTERCEPT;
    out.intercept.num_columns = 7;
    out.intercept.columns = columns;
    out.intercept.num_rows = 1;
    out.intercept.cells = cells;
    return out;
}

PgdogOutput pgdog_route_query(PgdogInput in) {
    PgdogOutput out = PGDOG_OUTPUT_INIT;
    PgdogStr q = in.query;
    answers_route_calls++;
    if (starts(q, "forward ")) {
        snprintf(text_buf, sizeof text_buf, "%.*s", (int)q.len, q.data);
        int shard = 0, role = 0;
        sscanf(text_buf + 8, "%d %d", &shard, &role);
        out.decision = PGDOG_FORWARD;
        out.shard = shard;
        out.role = role;
    } else if (starts(q, "decision ")) {
        snprintf(text_buf, sizeof text_buf, "%.*s", (int)q.len, q.data);
        out.decision = atoi(text_buf + 9);
    } else if (is(q, "block_null_message")) {
        out.decision = PGDOG_BLOCK;
        memcpy(out.error.sqlstate, "42501", 6);
        out.error.message.data = NULL;
        out.error.message.len = 10;
    } else if (starts(q, "block ")) {
        snprintf(text_buf, sizeof text_buf, "%.*s", (int)q.len, q.data);
        char *state = text_buf + 6;
        char *msg = strchr(state, ' ');
        if (msg) *msg++ = 0; else msg = "";
        out.decision = PGDOG_BLOCK;
        if (strcmp(state, "-") != 0) memcpy(out.error.sqlstate, state, strlen(state) < 6 ? strlen(state) : 6);
        out.error.message = str(msg);
    } else if (is(q, "intercept")) {
        columns[0].name = str("id");
        columns[0].type_oid = 23;
        columns[1].name = str("name");
        columns[1].type_oid = 0;
        cells[0] = str("1");
        cells[1] = str("one");
        cells[2] = str("2");
        cells[3].data = NULL;
        cells[3].len = 7;
        out.decision = PGDOG_INTERCEPT;
        out.intercept.num_columns = 2;
        out.intercept.columns = columns;
        out.intercept.num_rows = 2;
        out.intercept.cells = cells;
    } else if (is(q, "intercept_null_columns")) {
        out.decision = PGDOG_INTERCEPT;
        out.intercept.num_columns = 2;
        out.intercept.num_rows = 0;
    } else if (is(q, "intercept_null_cells")) {
        columns[0].name = str("x");
        columns[0].type_oid = 25;
        out.decision = PGDOG_INTERCEPT;
        out.intercept.num_columns = 1;
        out.intercept.columns = columns;
        out.intercept.num_rows = 1;
    } else if (is(q, "intercept_no_rows")) {
        columns[0].name = str("x");
        columns[0].type_oid = 25;
        out.decision = PGDOG_INTERCEPT;
        out.intercept.num_columns = 1;
        out.intercept.columns = columns;
    } else if (is(q, "intercept_bad_utf8")) {
        columns[0].name = str("x");
        columns[0].type_oid = 25;
        cells[0] = str("\xff\xfe");
        out.decision = PGDOG_INTERCEPT;
        out.intercept.num_columns = 1;
        out.intercept.columns = columns;
        out.intercept.num_rows = 1;
        out.intercept.cells = cells;
    } else if (is(q, "rewrite_empty")) {
        out.decision = PGDOG_REWRITE;
    } else if (starts(q, "rewrite ")) {
        out.decision = PGDOG_REWRITE;
        out.rewrite.data = q.data + 8; /* the proxy's memory: valid until we return, copied */
        out.rewrite.len = q.len - 8;
    } else if (is(q, "echo") || starts(q, "/* echo */")) {
        out = echo(in);
    }
    return out;
}

void pgdog_output_free(PgdogOutput *out) {
    answers_free_calls++;
    answers_last_freed_decision = out->decision;
}

PgdogOutput pgdog_pre_connect(PgdogConnect c) {
    PgdogOutput out = PGDOG_OUTPUT_INIT;
    snprintf(pre_connect_seen, sizeof pre_connect_seen, "%.*s|%.*s|%.*s|%.*s", (int)c.user.len,
             c.user.data, (int)c.database.len, c.database.data, (int)c.application_name.len,
             c.application_name.data, (int)c.client_addr.len, c.client_addr.data);
    if (is(c.user, "blocked")) {
        out.decision = PGDOG_BLOCK;
    } else if (is(c.user, "blocked_msg")) {
        out.decision = PGDOG_BLOCK;
        memcpy(out.error.sqlstate, "28P01", 6);
        out.error.message = str("go away");
    } else if (is(c.user, "bad_sqlstate")) {
        out.decision = PGDOG_BLOCK;
        memcpy(out.error.sqlstate, "28p01", 6);
    } else if (is(c.user, "garbage")) {
        out.decision = 42;
    } else {
        out.decision = PGDOG_FORWARD;
    }
    return out;
}

PgdogStr pgdog_after_connect(PgdogServer s) {
    snprintf(after_connect_seen, sizeof after_connect_seen, "%.*s|%.*s|%u|%d|%d", (int)s.database.len,
             s.database.data, (int)s.host.len, s.host.data, s.port, s.role, s.shard);
    if (is(s.database, "none")) return str(NULL);
    if (is(s.database, "null")) {
        PgdogStr bad = {NULL, 5};
        return bad;
    }
    return str("SET application_name = 'from_plugin'");
}

void pgdog_post_query(PgdogQueryDone d) {
    snprintf(post_query_seen, sizeof post_query_seen, "%.*s|%.*s|%.*s|%llu|%llu|%s|%d|%d",
             (int)d.query.len, d.query.data, (int)d.database.len, d.database.data, (int)d.user.len,
             d.user.data, (unsigned long long)d.duration_us, (unsigned long long)d.rows, d.sqlstate,
             d.shard, d.role);
}
