/*
 * Example trio_pgdog plugin in C: shard by comment, refuse DROP TABLE.
 *
 *   - A statement containing DROP TABLE (any case, any spacing) is blocked with
 *     SQLSTATE 42501 (insufficient_privilege).
 *   - A statement carrying a comment  slash-star shard: N star-slash  goes to shard N
 *     (PGDOG_FORWARD); a shard the database does not have is blocked with 22023.
 *   - Anything else: no decision (the proxy's router decides).
 *
 * Build: make            (libshard_comment.so here; `make OUT=/some/dir` to put it elsewhere)
 * Load:  [[plugins]]
 *        name = "examples/plugins/c/libshard_comment.so"
 *
 * Everything returned lives in static storage: the proxy copies an output before calling
 * the plugin again, and it calls from a single thread, so no allocation (and no
 * pgdog_output_free) is needed.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "pgdog_plugin.h"

PGDOG_PLUGIN_DECLARE()

static int is_word_char(char c) {
    return isalnum((unsigned char)c) || c == '_' || c == '$';
}

/* Does `word` (lower case) occur at q[i] ignoring case? */
static int word_at(const char *q, size_t len, size_t i, const char *word) {
    size_t n = strlen(word);
    if (i + n > len) return 0;
    for (size_t k = 0; k < n; k++)
        if (tolower((unsigned char)q[i + k]) != word[k]) return 0;
    return 1;
}

/* DROP, whitespace, TABLE, as whole words, anywhere in the text (a comment between the two
 * words is not recognised: this is an example, not a security boundary). */
static int has_drop_table(const char *q, size_t len) {
    for (size_t i = 0; i < len; i++) {
        if (!word_at(q, len, i, "drop") || (i > 0 && is_word_char(q[i - 1]))) continue;
        size_t j = i + 4;
        if (j >= len || !isspace((unsigned char)q[j])) continue;
        while (j < len && isspace((unsigned char)q[j])) j++;
        if (word_at(q, len, j, "table") && (j + 5 == len || !is_word_char(q[j + 5]))) return 1;
    }
    return 0;
}

/* The N of the first comment of the form slash-star shard: N star-slash; -1 if there is none. */
static long shard_comment(const char *q, size_t len) {
    for (size_t i = 0; i + 1 < len; i++) {
        if (q[i] != '/' || q[i + 1] != '*') continue;
        size_t j = i + 2;
        while (j < len && isspace((unsigned char)q[j])) j++;
        if (!word_at(q, len, j, "shard")) continue;
        j += 5;
        while (j < len && isspace((unsigned char)q[j])) j++;
        if (j >= len || q[j] != ':') continue;
        j++;
        while (j < len && isspace((unsigned char)q[j])) j++;
        if (j >= len || !isdigit((unsigned char)q[j])) continue;
        long n = 0;
        while (j < len && isdigit((unsigned char)q[j]) && n < 1000000) n = n * 10 + (q[j++] - '0');
        while (j < len && isspace((unsigned char)q[j])) j++;
        if (j + 1 < len && q[j] == '*' && q[j + 1] == '/') return n;
    }
    return -1;
}

static PgdogStr str(const char *s) {
    PgdogStr r = {s, strlen(s)};
    return r;
}

PgdogOutput pgdog_route_query(PgdogInput in) {
    static char message[128];
    PgdogOutput out = PGDOG_OUTPUT_INIT;

    if (has_drop_table(in.query.data, in.query.len)) {
        out.decision = PGDOG_BLOCK;
        memcpy(out.error.sqlstate, "42501", 6);
        out.error.message = str("DROP TABLE is not allowed through this proxy");
        return out;
    }
    long shard = shard_comment(in.query.data, in.query.len);
    if (shard < 0) return out; /* no decision */
    if (shard >= (long)in.shards) {
        snprintf(message, sizeof message, "shard %ld does not exist (the database has %u)", shard,
                 in.shards);
        out.decision = PGDOG_BLOCK;
        memcpy(out.error.sqlstate, "22023", 6);
        out.error.message = str(message);
        return out;
    }
    out.decision = PGDOG_FORWARD;
    out.shard = (int32_t)shard;
    return out;
}
