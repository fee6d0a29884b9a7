/* trio_pgdog._reactor: plain transactions relayed in C (docs/benchmarks.md, "two paths").
 *
 * A session whose next transaction needs nothing of the Python path (session/parking.py says
 * when) parks its client socket here. The Reactor owns a private epoll, which Trio runs each
 * time its loop is about to wait for I/O (reactor.py, Serving: run() with Trio's timeout waits
 * on the Reactor's sockets and on Trio's own epoll, joined to the set). For each ready socket
 * run() does what the session's relay loop would:
 * read the client's chunk, check that it is plain (classify_client below), take an idle server
 * from the session's pool (a call back into the session: the pool stays the owner of its
 * connections), rename its prepared statements to their shared names (rename_binds), forward,
 * relay the server's answer up to ReadyForQuery, and give the server
 * back at 'I' (again through the session). Anything else -- a chunk that is not plain, a server
 * message the session must read, a short send, a socket that closed -- hands the session back
 * to its Trio task at a message boundary with everything it needs to go on ("an outcome").
 *
 * Server sockets are registered edge-triggered and left registered when they go back to the
 * pool (saving two epoll_ctl per transaction); an event for a socket no slot owns removes it.
 * Client sockets are registered (edge-triggered) from park to hand-back.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SCRATCH_SIZE (256 * 1024)
#define MAX_EVENTS 256
#define MAX_MESSAGE_LENGTH 0x3FFFFFFF
#define SMALL_LIMIT 10000

/* Outcome flags (session/parking.py reads them). */
#define SERVER_LOST 1 /* the server's socket closed or failed: nothing of it consumed */
#define CLIENT_GONE 2 /* sending to the client failed */
#define BROKEN 4      /* taken out mid-message (unpark): the server cannot be reused */
#define CLIENT_CLOSED 8 /* the client's socket reached its end or failed */
#define SERVER_STIRRED 16 /* the server spoke (or closed) while idle in a transaction */
#define TIMED_OUT 32 /* waited in its lane's queue for checkout_timeout: no server */

enum { WAIT_CLIENT, WAIT_SERVER, WAIT_POOL };

static uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* --- the client side: is this chunk plain? ---------------------------------------------- */

static int upper(unsigned char c) { return (c >= 'a' && c <= 'z') ? c - 32 : c; }

/* Does `sql` (len bytes) start with `word` followed by a space, tab or newline? */
static int starts_word(const unsigned char *sql, Py_ssize_t len, const char *word) {
    Py_ssize_t n = (Py_ssize_t)strlen(word);
    if (len < n + 1)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (upper(sql[i]) != (unsigned char)word[i])
            return 0;
    return sql[n] == ' ' || sql[n] == '\t' || sql[n] == '\n';
}

static int starts_set(const unsigned char *sql, Py_ssize_t len) {
    return starts_word(sql, len, "SET") || starts_word(sql, len, "RESET");
}

static int leading_noise(unsigned char c) { return c && strchr("-/ \t\r\n", c) != NULL; }

/* COPY in an extended batch reads the batch's own Sync as copy input: it earns no
 * ReadyForQuery, which only the Python path's count knows (session/owed.py). */
static int starts_copy(const unsigned char *sql, Py_ssize_t len) {
    return len >= 4 && upper(sql[0]) == 'C' && upper(sql[1]) == 'O' && upper(sql[2]) == 'P' &&
           upper(sql[3]) == 'Y';
}

static int has_unique_id(const unsigned char *p, Py_ssize_t len) {
    return memmem(p, len, "unique_id", 9) != NULL || memmem(p, len, "UNIQUE_ID", 9) != NULL;
}

/* How many ReadyForQuery the server owes for `buf` if the chunk is plain, else 0.
 *
 * Plain: whole messages only, ending at a Query or Sync; each Query neither PREPARE,
 * DEALLOCATE, DISCARD, LISTEN, SET nor RESET (nor behind a comment or space), without
 * pgdog.unique_id(); extended messages only for the unnamed portal, and for the unnamed
 * statement parsed in this chunk (a server taken for this transaction knows no other), its
 * SQL not SET, RESET, DISCARD or COPY. With `named` (not NULL), a Bind may also name a
 * statement: *named is set, and the chunk is plain only if rename_binds() (below) finds every
 * such statement known to the session and prepared on the server. The same rules in Python:
 * session/plain.py. */
static int classify_client(const unsigned char *buf, Py_ssize_t n, int *named) {
    Py_ssize_t pos = 0;
    int owed = 0, parsed = 0, bound = 0, in_batch = 0;
    while (pos < n) {
        if (n - pos < 5)
            return 0;
        unsigned char kind = buf[pos];
        uint32_t length = be32(buf + pos + 1);
        if (length < 4 || length > MAX_MESSAGE_LENGTH || (Py_ssize_t)length > n - pos - 1)
            return 0;
        if (length > SMALL_LIMIT && kind && strchr("CDEHSXcf", kind) != NULL)
            return 0;
        const unsigned char *body = buf + pos + 5;
        Py_ssize_t blen = (Py_ssize_t)length - 4;
        switch (kind) {
        case 'Q':
            if (in_batch || blen < 1 || (body[0] && strchr("pPdDlL-/ \t\r\n", body[0]) != NULL) ||
                starts_set(body, blen) || has_unique_id(body, blen))
                return 0;
            owed++;
            break;
        case 'P':
            if (blen < 2 || body[0] != 0 || leading_noise(body[1]) || starts_set(body + 1, blen - 1) ||
                starts_word(body + 1, blen - 1, "DISCARD") || starts_copy(body + 1, blen - 1))
                return 0;
            parsed = in_batch = 1;
            break;
        case 'B':
            if (blen < 2 || body[0] != 0)
                return 0;
            if (body[1] == 0 ? !parsed : named == NULL || memchr(body + 1, 0, blen - 1) == NULL)
                return 0;
            if (body[1] != 0)
                *named = 1;
            bound = in_batch = 1;
            break;
        case 'D':
            if (blen != 2 || body[1] != 0 || !(body[0] == 'S' ? parsed : body[0] == 'P' && (parsed || bound)))
                return 0;
            in_batch = 1;
            break;
        case 'E':
            if (!(parsed || bound) || blen < 5 || body[0] != 0)
                return 0;
            in_batch = 1;
            break;
        case 'S':
            owed++;
            in_batch = 0;
            break;
        default:
            return 0;
        }
        pos += 1 + (Py_ssize_t)length;
    }
    return in_batch ? 0 : owed;
}

/* --- the server side: how far may the answer go on in C? --------------------------------- */

/* The scan of a server's answer: messages relayed, ReadyForQuery counted. */
typedef struct {
    Py_ssize_t skip;   /* bytes of a relayed message's body still to come */
    int owed;          /* ReadyForQuery still owed */
    unsigned char status;
    int64_t queries, xacts;
} Answer;

/* Relayed message types: the answer's ordinary messages (RowDescription, DataRow, NoData,
 * CommandComplete, ParseComplete, BindComplete, CloseComplete, PortalSuspended,
 * ParameterDescription, EmptyQueryResponse, NoticeResponse, CopyOutResponse and its data). */
static int relayed(unsigned char kind) { return kind && strchr("123CDInNTtsHdc", kind) != NULL; }

/* Scan `buf` from its start; returns the offset of the first message C does not relay (the
 * hand-back point: an ErrorResponse, ParameterStatus, COPY-in, a CommandComplete of DEALLOCATE
 * or DISCARD, a cut header, anything after the last ReadyForQuery owed), or n if all of it
 * may go to the client. The same rules in Python: session/plain.py. */
static Py_ssize_t scan_server(Answer *a, const unsigned char *buf, Py_ssize_t n) {
    Py_ssize_t pos = 0;
    if (a->skip) {
        if (a->skip >= n) {
            a->skip -= n;
            return n;
        }
        pos = a->skip;
        a->skip = 0;
    }
    while (pos < n) {
        if (a->owed == 0 || n - pos < 5)
            return pos;
        unsigned char kind = buf[pos];
        uint32_t length = be32(buf + pos + 1);
        if (length < 4 || length > MAX_MESSAGE_LENGTH)
            return pos;
        Py_ssize_t next = pos + 1 + (Py_ssize_t)length;
        if (kind == 'Z') {
            if (length != 5 || next > n)
                return pos;
            unsigned char status = buf[pos + 5];
            if (status != 'I' && status != 'T' && status != 'E')
                return pos;
            a->status = status;
            a->owed--;
            a->queries++;
            if (status == 'I')
                a->xacts++;
        } else if (kind == 'C') {
            if (n - pos < 6)
                return pos;
            if (buf[pos + 5] == 'D') {  /* DEALLOCATE and DISCARD drop statements: Python notes it */
                Py_ssize_t tag = (next > n ? n : next) - pos - 5;
                if (next > n || (tag >= 10 && memcmp(buf + pos + 5, "DEALLOCATE", 10) == 0) ||
                    (tag >= 7 && memcmp(buf + pos + 5, "DISCARD", 7) == 0))
                    return pos;
            }
        } else if (!relayed(kind)) {
            return pos;
        }
        if (next > n) {
            a->skip = next - n;
            return n;
        }
        pos = next;
    }
    return pos;
}

/* --- slots: one parked session ------------------------------------------------------------ */

typedef struct Slot {
    PyObject_HEAD
    PyObject *session;   /* the ClientSession (strong while parked) */
    PyObject *server;    /* the ServerConnection lent to it, or NULL */
    int cfd, sfd;
    int state;           /* WAIT_CLIENT or WAIT_SERVER */
    int parked;
    int release;         /* hand back once the server owes nothing */
    int client_ready;    /* the client sent more (or hung up) while the server answered */
    Answer answer;
    int64_t bytes_in, bytes_out, asked_at, xact_at, query_us, xact_us;
    int64_t answered;    /* answers relayed whole since it parked */
    struct Lane *lane;   /* its pool's idle servers kept in C (strong), or NULL */
    PyObject *key;       /* its settings (ClientParams.key): servers synced to them serve it */
    long epoch;          /* the Reactor's epoch when it parked */
    /* WAIT_POOL: its request waits in its lane's queue for a server (first come, first served) */
    PyObject *pending;   /* the request (bytes) */
    int pending_owed, pending_named;
    int64_t since, deadline;  /* when it began waiting; when it gives up (checkout_timeout) */
    struct Slot *next;   /* the next in the queue */
} Slot;

/* An idle server kept in C between plain transactions, with the settings it has. */
typedef struct {
    PyObject *server, *key;
    int fd;              /* its socket, still registered (see lend_again) */
} Held;

/* A pool's idle servers kept in C (a stack: the warmest first), and what they served since
 * Python last took the counts. Python gets them back (reclaim) every second, before a client
 * on the Python path would wait, before the admin console or /metrics look, on reload and at
 * shutdown: the pool stays their owner, its janitor sees them at most a second late. */
typedef struct Lane {
    PyObject_HEAD
    PyObject *pool;
    Held *held;
    int nheld, room;
    int64_t queries, xacts, bytes_in, bytes_out, query_us, xact_us;
    int64_t wait_us, waits, max_wait_us;  /* requests that waited in the queue, and how long */
    Slot *head, *tail;   /* the queue of slots waiting for a server (WAIT_POOL) */
} Lane;

static PyTypeObject LaneType;

static PyTypeObject SlotType;

/* What a file descriptor in the epoll set is: a parked client, or a server whose socket object
 * is `key` (a closed server's number may come back as another socket). */
typedef struct {
    Slot *slot;          /* borrowed: valid while the slot is parked */
    PyObject *key;       /* servers: the socket object registered (strong) */
    char is_server;
    char registered;
} FdEntry;

typedef struct {
    PyObject_HEAD
    int epfd;
    FdEntry *fds;
    int nfds;
    PyObject *out;       /* run()'s list of (session, outcome) while it runs */
    unsigned char *scratch;
    int64_t handbacks, relayed;
    Py_ssize_t nparked;  /* slots parked now */
    Py_ssize_t nwaiting; /* of them, waiting in a lane's queue */
    int64_t next_deadline;  /* the earliest deadline among them (a lower bound) */
    unsigned char *renamed;  /* a chunk with its statements renamed (rename_binds) */
    Py_ssize_t renamed_room;
    int trio_joined;     /* Trio's epoll is in the set (join_trio) */
    PyObject *lanes;     /* pool -> Lane */
    long epoch;          /* bumped by new_epoch(): slots parked before take servers from Python */
} Reactor;

static PyObject *s_take, *s_give, *s_conn, *s_fd, *s_sock, *s_closed, *s_paused, *s_waiters;
static PyObject *s_created_at, *s_reconnect_before, *s_tracker, *s_statements, *s_set_statements;

static FdEntry *entry(Reactor *r, int fd) {
    if (fd < 0)
        return NULL;
    if (fd >= r->nfds) {
        int n = r->nfds ? r->nfds : 1024;
        while (n <= fd)
            n *= 2;
        FdEntry *grown = PyMem_Realloc(r->fds, sizeof(FdEntry) * (size_t)n);
        if (grown == NULL)
            return NULL;
        memset(grown + r->nfds, 0, sizeof(FdEntry) * (size_t)(n - r->nfds));
        r->fds = grown;
        r->nfds = n;
    }
    return &r->fds[fd];
}

static int watch(Reactor *r, int fd, int op) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.u64 = (uint64_t)fd};
    if (epoll_ctl(r->epfd, op, fd, &ev) == 0)
        return 0;
    if (op == EPOLL_CTL_ADD && errno == EEXIST)
        return epoll_ctl(r->epfd, EPOLL_CTL_MOD, fd, &ev);
    if (op == EPOLL_CTL_MOD && errno == ENOENT)
        return epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev);
    return -1;
}

static void unwatch(Reactor *r, int fd) {
    FdEntry *e = entry(r, fd);
    if (e == NULL)
        return;
    if (e->registered)
        epoll_ctl(r->epfd, EPOLL_CTL_DEL, fd, NULL);
    e->registered = 0;
    e->slot = NULL;
    Py_CLEAR(e->key);
}

/* The lent server's socket joins the epoll set (unless it is there already) and its slot owns it. */
static int lend(Reactor *r, Slot *s, PyObject *server) {
    PyObject *conn = PyObject_GetAttr(server, s_conn);
    if (conn == NULL)
        return -1;
    PyObject *fd_obj = PyObject_GetAttr(conn, s_fd), *sock = PyObject_GetAttr(conn, s_sock);
    Py_DECREF(conn);
    long fd = fd_obj ? PyLong_AsLong(fd_obj) : -1;
    Py_XDECREF(fd_obj);
    FdEntry *e = (fd >= 0 && sock != NULL) ? entry(r, (int)fd) : NULL;
    if (e == NULL || (!(e->registered && e->key == sock) && watch(r, (int)fd, EPOLL_CTL_ADD) < 0)) {
        Py_XDECREF(sock);
        if (!PyErr_Occurred())
            PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    Py_XSETREF(e->key, sock);
    e->registered = 1;
    e->is_server = 1;
    e->slot = s;
    Py_INCREF(server);
    Py_XSETREF(s->server, server);
    s->sfd = (int)fd;
    return 0;
}

/* Lend a server kept in a lane again: its socket is still registered unless an event came for
 * it meanwhile (then the full lend registers it again). */
static int lend_again(Reactor *r, Slot *s, PyObject *server, int fd) {
    FdEntry *e = entry(r, fd);
    if (e == NULL || !e->registered || !e->is_server || e->slot != NULL)
        return lend(r, s, server);
    e->slot = s;
    Py_INCREF(server);
    Py_XSETREF(s->server, server);
    s->sfd = fd;
    return 0;
}

/* The slot lets go of its server (which stays registered; see the top comment). */
static PyObject *unlend(Reactor *r, Slot *s) {
    PyObject *server = s->server;
    FdEntry *e = entry(r, s->sfd);
    if (e != NULL && e->slot == s)
        e->slot = NULL;
    s->server = NULL;
    s->sfd = -1;
    return server;
}

static PyObject *status_bytes(unsigned char status) {
    return PyBytes_FromStringAndSize((const char *)&status, 1);
}

/* Counters since the last flush, for the server's pool: (queries, xacts, bytes from the client,
 * bytes to the client, query time µs, transaction time µs, asked_at, xact_at). */
static PyObject *take_counts(Slot *s) {
    PyObject *counts = Py_BuildValue("(LLLLLLLL)", (long long)s->answer.queries,
                                     (long long)s->answer.xacts, (long long)s->bytes_in,
                                     (long long)s->bytes_out, (long long)s->query_us,
                                     (long long)s->xact_us, (long long)s->asked_at,
                                     (long long)s->xact_at);
    s->answer.queries = s->answer.xacts = 0;
    s->bytes_in = s->bytes_out = s->query_us = s->xact_us = 0;
    return counts;
}

/* Take the slot out of the reactor and describe where its session stands:
 * (client chunk or None, server or None, owed, status, server bytes or None, bytes still for
 *  the client or None, bytes still for the server or None, flags, counts, answers relayed
 *  whole since it parked). */
/* Out of its lane's queue (WAIT_POOL), its request still unsent: returned (a reference). */
static PyObject *dequeue(Reactor *r, Slot *s) {
    Lane *lane = s->lane;
    Slot *prev = NULL;
    for (Slot *w = lane->head; w != NULL; prev = w, w = w->next) {
        if (w != s)
            continue;
        if (prev == NULL)
            lane->head = s->next;
        else
            prev->next = s->next;
        if (lane->tail == s)
            lane->tail = prev;
        break;
    }
    s->next = NULL;
    s->state = WAIT_CLIENT;
    r->nwaiting--;
    int64_t waited = (now_ns() - s->since) / 1000;
    lane->wait_us += waited;
    lane->waits++;
    if (waited > lane->max_wait_us)
        lane->max_wait_us = waited;
    PyObject *pending = s->pending;
    s->pending = NULL;
    return pending;
}

static PyObject *hand_back(Reactor *r, Slot *s, PyObject *chunk, PyObject *server_rest,
                           PyObject *to_client, PyObject *to_server, int flags) {
    /* Waiting in the queue: its request goes back with it (the Python path sends it). */
    PyObject *unsent = s->state == WAIT_POOL ? dequeue(r, s) : NULL;
    if (chunk == NULL)
        chunk = unsent;
    if (s->answer.skip)
        flags |= BROKEN;  /* mid-message: nobody can tell where the next one starts */
    unwatch(r, s->cfd);
    PyObject *server = unlend(r, s);
    PyObject *status = status_bytes(s->answer.status);
    PyObject *counts = take_counts(s);
    PyObject *outcome = NULL;
    if (status != NULL && counts != NULL)
        outcome = Py_BuildValue("(OOiOOOOiOL)", chunk ? chunk : Py_None,
                                server ? server : Py_None, s->answer.owed, status,
                                server_rest ? server_rest : Py_None,
                                to_client ? to_client : Py_None, to_server ? to_server : Py_None,
                                flags, counts, (long long)s->answered);
    Py_XDECREF(status);
    Py_XDECREF(counts);
    Py_XDECREF(server);
    Py_XDECREF(unsent);
    if (s->parked)
        r->nparked--;
    s->parked = 0;
    s->answer.skip = 0;
    r->handbacks++;
    return outcome;
}

/* hand_back during run(): the outcome joins run()'s list, the reactor's reference goes. */
static void queue_back(Reactor *r, Slot *s, PyObject *chunk, PyObject *server_rest,
                       PyObject *to_client, PyObject *to_server, int flags) {
    PyObject *session = s->session;
    Py_INCREF(session);
    PyObject *outcome = hand_back(r, s, chunk, server_rest, to_client, to_server, flags);
    Py_XDECREF(chunk);
    Py_XDECREF(server_rest);
    Py_XDECREF(to_client);
    Py_XDECREF(to_server);
    PyObject *pair = outcome ? PyTuple_Pack(2, session, outcome) : NULL;
    if (pair == NULL || PyList_Append(r->out, pair) < 0)
        PyErr_WriteUnraisable((PyObject *)r);  /* out of memory: the session stays stuck */
    Py_XDECREF(pair);
    Py_XDECREF(outcome);
    Py_DECREF(session);
    Py_DECREF(s);  /* the reference park() took */
}

static PyObject *bytes_of(const unsigned char *p, Py_ssize_t n) {
    return PyBytes_FromStringAndSize((const char *)p, n);
}

/* Send all of `p` now if the kernel takes it: bytes sent, or -1 with errno on failure. */
static Py_ssize_t send_now(int fd, const unsigned char *p, Py_ssize_t n) {
    Py_ssize_t sent = 0;
    while (sent < n) {
        ssize_t k = send(fd, p + sent, (size_t)(n - sent), MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return sent;
            return -1;
        }
        sent += k;
    }
    return sent;
}

/* ReadyForQuery 'I' and nothing owed: the server goes back to its pool through the session. */
static int give_server(Reactor *r, Slot *s) {
    PyObject *server = unlend(r, s);
    PyObject *counts = take_counts(s);
    PyObject *res = counts ? PyObject_CallMethodObjArgs(s->session, s_give, server, counts, NULL) : NULL;
    Py_XDECREF(counts);
    Py_DECREF(server);
    if (res == NULL) {
        PyErr_WriteUnraisable(s->session);
        return -1;
    }
    Py_DECREF(res);
    return 0;
}

/* --- idle servers kept in C ------------------------------------------------------------------ */

static int truthy_attr(PyObject *obj, PyObject *name) {
    PyObject *v = PyObject_GetAttr(obj, name);
    int yes = v ? PyObject_IsTrue(v) : -1;
    Py_XDECREF(v);
    return yes;
}

/* May a server of `pool` stay in C? Not while the pool is closed or paused, nor while a
 * client on the Python path waits for one of its connections. */
static int pool_open(PyObject *pool) {
    PyObject *waiters = PyObject_GetAttr(pool, s_waiters);
    Py_ssize_t waiting = waiters ? PyObject_Length(waiters) : -1;
    Py_XDECREF(waiters);
    int open = waiting == 0 && truthy_attr(pool, s_closed) == 0 && truthy_attr(pool, s_paused) == 0;
    if (PyErr_Occurred())
        PyErr_Clear();
    return open;
}

/* Was the server opened before the admin console's RECONNECT? (Then its pool closes it.) */
static int outdated(PyObject *server, PyObject *pool) {
    PyObject *made = PyObject_GetAttr(server, s_created_at);
    PyObject *before = PyObject_GetAttr(pool, s_reconnect_before);
    int old = made && before ? PyObject_RichCompareBool(made, before, Py_LE) : -1;
    Py_XDECREF(made);
    Py_XDECREF(before);
    if (old < 0)
        PyErr_Clear();
    return old != 0;
}

static void serve_waiter(Reactor *r, Slot *w, PyObject *server, int fd, int ready);

/* The slot's counters, into its lane's (which Python takes with reclaim). */
static void add_counts(Lane *lane, Slot *s) {
    lane->queries += s->answer.queries;
    lane->xacts += s->answer.xacts;
    lane->bytes_in += s->bytes_in;
    lane->bytes_out += s->bytes_out;
    lane->query_us += s->query_us;
    lane->xact_us += s->xact_us;
    s->answer.queries = s->answer.xacts = 0;
    s->bytes_in = s->bytes_out = s->query_us = s->xact_us = 0;
}

/* The transaction ended ('I'): the slot's server goes to the first request waiting in its
 * pool's lane, or is kept there. -1: not possible (Python gives it back to the pool). */
static int keep_server(Reactor *r, Slot *s) {
    Lane *lane = s->lane;
    if (lane == NULL || s->key == NULL || s->epoch != r->epoch || !pool_open(lane->pool) ||
        outdated(s->server, lane->pool))
        return -1;
    if (lane->head != NULL) {
        Slot *w = lane->head;
        int ready = w->key == s->key;  /* the server has the settings of s: of w too? */
        if (!ready && w->key != NULL && (ready = PyObject_RichCompareBool(w->key, s->key, Py_EQ)) < 0) {
            PyErr_Clear();
            ready = 0;
        }
        int fd = s->sfd;
        add_counts(lane, s);
        serve_waiter(r, w, unlend(r, s), fd, ready);
        return 0;
    }
    if (lane->nheld == lane->room) {
        int room = lane->room ? lane->room * 2 : 16;
        Held *grown = PyMem_Realloc(lane->held, sizeof(Held) * (size_t)room);
        if (grown == NULL)
            return -1;
        lane->held = grown;
        lane->room = room;
    }
    Held *h = &lane->held[lane->nheld++];
    h->fd = s->sfd;
    h->server = unlend(r, s);
    Py_INCREF(s->key);
    h->key = s->key;
    add_counts(lane, s);
    return 0;
}

/* The warmest server kept in the slot's lane with the slot's settings, lent to it; 0 if none. */
static int take_held(Reactor *r, Slot *s) {
    Lane *lane = s->lane;
    if (lane == NULL || s->key == NULL || s->epoch != r->epoch)
        return 0;
    for (int i = lane->nheld - 1; i >= 0; i--) {
        Held h = lane->held[i];
        int same = h.key == s->key;
        if (!same && (same = PyObject_RichCompareBool(h.key, s->key, Py_EQ)) < 0) {
            PyErr_Clear();
            same = 0;
        }
        if (!same)
            continue;
        if (lend_again(r, s, h.server, h.fd) < 0) {
            PyErr_Clear();
            return 0;  /* it stays kept; Python lends one */
        }
        memmove(&lane->held[i], &lane->held[i + 1], sizeof(Held) * (size_t)(lane->nheld - i - 1));
        lane->nheld--;
        Py_DECREF(h.server);
        Py_DECREF(h.key);
        return 1;
    }
    return 0;
}

static void client_chunk(Reactor *r, Slot *s, int hung_up);

/* The server's answer arrived (part of it): relay what C may, count, and go on or hand back. */
#define HUNG_UP (EPOLLRDHUP | EPOLLHUP | EPOLLERR)

/* `hung_up`: the event said the peer closed. Edge-triggered, no later event will say it
 * again: read on until the end of the stream. */
static void server_data(Reactor *r, Slot *s, int hung_up) {
    unsigned char *buf = r->scratch;
    for (;;) {
        ssize_t n = recv(s->sfd, buf, SCRATCH_SIZE, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            queue_back(r, s, NULL, NULL, NULL, NULL, SERVER_LOST);
            return;
        }
        int owed_before = s->answer.owed;
        Py_ssize_t upto = scan_server(&s->answer, buf, n);
        if (s->answer.owed == 0 && owed_before) {
            int64_t now = now_ns();
            s->query_us += (now - s->asked_at) / 1000;
            if (s->answer.status == 'I')
                s->xact_us += (now - s->xact_at) / 1000;
        }
        Py_ssize_t sent = send_now(s->cfd, buf, upto);
        s->bytes_out += sent < 0 ? 0 : sent;
        if (sent < 0) {
            queue_back(r, s, NULL, upto < n ? bytes_of(buf + upto, n - upto) : NULL, NULL, NULL,
                       CLIENT_GONE);
            return;
        }
        if (sent < upto || upto < n) {
            queue_back(r, s, NULL, upto < n ? bytes_of(buf + upto, n - upto) : NULL,
                       sent < upto ? bytes_of(buf + sent, upto - sent) : NULL, NULL, 0);
            return;
        }
        if (s->answer.owed == 0)
            break;
        if (n < SCRATCH_SIZE && !hung_up)
            return;  /* drained: the next part comes with the next edge */
    }
    /* The answer is complete. */
    r->relayed++;
    s->answered++;
    if (s->answer.status == 'I' && !s->release && keep_server(r, s) < 0) {
        if (give_server(r, s) < 0) {
            queue_back(r, s, NULL, NULL, NULL, NULL, 0);
            return;
        }
    }
    s->state = WAIT_CLIENT;
    if (s->release) {
        queue_back(r, s, NULL, NULL, NULL, NULL, 0);
        return;
    }
    if (s->client_ready) {
        s->client_ready = 0;
        client_chunk(r, s, 1);
    }
}

/* --- named statements: the session's names, the server's shared ones ------------------------ */

/* May a Bind of the statement the session knows as `key` run on the slot's server? Its
 * shared name (borrowed from the session's Tracker, session/tracker.py) if the session
 * prepared it, it changes no settings, its SQL is nothing the Python path looks at closer,
 * and the server has it prepared (pool/statements.py: the record never claims one the
 * server lacks); else NULL, without an error set. */
static PyObject *shared_name(Slot *s, PyObject *statements, PyObject *sets, PyObject *on_server,
                             PyObject *key) {
    PyObject *known = PyDict_GetItemWithError(statements, key);
    if (known == NULL || !PyTuple_Check(known) || PyTuple_GET_SIZE(known) != 2)
        return NULL;
    PyObject *shared = PyTuple_GET_ITEM(known, 0), *rest = PyTuple_GET_ITEM(known, 1);
    if (!PyBytes_Check(shared) || !PyBytes_Check(rest) || PySet_Contains(sets, key) != 0)
        return NULL;
    const unsigned char *sql = (const unsigned char *)PyBytes_AS_STRING(rest);
    Py_ssize_t len = (Py_ssize_t)strnlen((const char *)sql, (size_t)PyBytes_GET_SIZE(rest));
    if (len == 0 || leading_noise(sql[0]) || starts_set(sql, len) ||
        starts_word(sql, len, "DISCARD") || starts_copy(sql, len) || has_unique_id(sql, len))
        return NULL;
    return PySequence_Contains(on_server, shared) == 1 ? shared : NULL;
}

static unsigned char *renamed_room(Reactor *r, Py_ssize_t need) {
    if (need > r->renamed_room) {
        unsigned char *grown = PyMem_Realloc(r->renamed, (size_t)need);
        if (grown == NULL)
            return NULL;
        r->renamed = grown;
        r->renamed_room = need;
    }
    return r->renamed;
}

/* The chunk (plain to classify_client, with Binds of named statements) as the server must
 * see it: each statement name replaced by its shared name, as the Python path's Tracker
 * does. Its length in r->renamed, or -1 if any statement needs the Python path (unknown,
 * not prepared on this server...). */
static Py_ssize_t rename_binds(Reactor *r, Slot *s, const unsigned char *buf, Py_ssize_t n) {
    PyObject *tracker = PyObject_GetAttr(s->session, s_tracker);
    PyObject *statements = tracker && tracker != Py_None ? PyObject_GetAttr(tracker, s_statements) : NULL;
    PyObject *sets = statements ? PyObject_GetAttr(tracker, s_set_statements) : NULL;
    PyObject *on_server = sets ? PyObject_GetAttr(s->server, s_statements) : NULL;
    Py_ssize_t out = -1, pos = 0, done = 0;
    if (on_server == NULL || !PyDict_Check(statements) || !PyAnySet_Check(sets))
        goto end;
    while (pos < n) {
        uint32_t length = be32(buf + pos + 1);
        const unsigned char *body = buf + pos + 5;
        Py_ssize_t next = pos + 1 + (Py_ssize_t)length;
        PyObject *shared = NULL;
        Py_ssize_t name_len = 0;
        if (buf[pos] == 'B' && body[1] != 0) {
            name_len = (Py_ssize_t)strlen((const char *)body + 1);  /* classify_client saw its NUL */
            PyObject *key = PyBytes_FromStringAndSize((const char *)body + 1, name_len);
            shared = key ? shared_name(s, statements, sets, on_server, key) : NULL;
            Py_XDECREF(key);
            if (shared == NULL)
                goto end;
        }
        Py_ssize_t grow = shared ? PyBytes_GET_SIZE(shared) - name_len : 0;
        unsigned char *to = renamed_room(r, done + next - pos + grow);
        if (to == NULL)
            goto end;
        to += done;
        if (shared == NULL) {
            memcpy(to, buf + pos, (size_t)(next - pos));
        } else {  /* 'B', length, portal "", the shared name, the rest of the Bind */
            uint32_t new_length = length + (uint32_t)grow;
            to[0] = 'B';
            to[1] = (unsigned char)(new_length >> 24);
            to[2] = (unsigned char)(new_length >> 16);
            to[3] = (unsigned char)(new_length >> 8);
            to[4] = (unsigned char)new_length;
            to[5] = 0;
            memcpy(to + 6, PyBytes_AS_STRING(shared), (size_t)PyBytes_GET_SIZE(shared));
            Py_ssize_t after = 1 + name_len;  /* the name's NUL onwards */
            memcpy(to + 6 + PyBytes_GET_SIZE(shared), body + after, (size_t)(next - pos - 5 - after));
        }
        done += next - pos + grow;
        pos = next;
    }
    out = done;
end:
    if (PyErr_Occurred())
        PyErr_Clear();
    Py_XDECREF(tracker);
    Py_XDECREF(statements);
    Py_XDECREF(sets);
    Py_XDECREF(on_server);
    return out;
}

static void client_request(Reactor *r, Slot *s, const unsigned char *buf, Py_ssize_t n, int hung_up);

/* The client sent something (or hung up, `hung_up`) while the session waits for it. */
static void client_chunk(Reactor *r, Slot *s, int hung_up) {
    unsigned char *buf = r->scratch;
    ssize_t n;
    do
        n = recv(s->cfd, buf, SCRATCH_SIZE, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (n <= 0) {  /* end of stream or an error: the session ends */
        queue_back(r, s, NULL, NULL, NULL, NULL, CLIENT_CLOSED);
        return;
    }
    client_request(r, s, buf, n, hung_up);
}

/* The plain request `buf` goes to the slot's server (renamed if it binds named statements). */
static void send_request(Reactor *r, Slot *s, const unsigned char *buf, Py_ssize_t n, int owed,
                         int named, int hung_up) {
    const unsigned char *out = buf;
    Py_ssize_t out_n = n;
    if (named && (out_n = rename_binds(r, s, buf, n)) < 0) {
        queue_back(r, s, bytes_of(buf, n), NULL, NULL, NULL, 0);  /* with the server taken */
        return;
    }
    if (named)
        out = r->renamed;
    s->asked_at = now_ns();
    if (s->answer.status == 'I')
        s->xact_at = s->asked_at;
    Py_ssize_t sent = send_now(s->sfd, out, out_n);
    if (sent < 0) {  /* the server is gone: Python sends the chunk again and finds out */
        queue_back(r, s, bytes_of(buf, n), NULL, NULL, NULL, 0);
        return;
    }
    s->bytes_in += n;
    s->answer.owed = owed;
    s->state = WAIT_SERVER;
    s->client_ready = hung_up;  /* read again once answered: its end of stream is there */
    if (sent < out_n)
        queue_back(r, s, NULL, NULL, NULL, bytes_of(out + sent, out_n - sent), 0);
}

/* No server free and the pool at its size: the request waits in the lane's queue, at most
 * `timeout` seconds (checkout_timeout). -1 if it cannot (then Python waits for one). */
static int enqueue(Reactor *r, Slot *s, const unsigned char *buf, Py_ssize_t n, int owed,
                   int named, double timeout) {
    Lane *lane = s->lane;
    if (lane == NULL || !r->trio_joined)  /* (a task serving the Reactor has no deadlines) */
        return -1;
    if ((s->pending = bytes_of(buf, n)) == NULL) {
        PyErr_Clear();
        return -1;
    }
    s->pending_owed = owed;
    s->pending_named = named;
    s->since = now_ns();
    s->deadline = s->since + (int64_t)(timeout * 1e9);
    s->state = WAIT_POOL;
    s->next = NULL;
    if (lane->tail == NULL)
        lane->head = s;
    else
        lane->tail->next = s;
    lane->tail = s;
    if (r->nwaiting++ == 0 || s->deadline < r->next_deadline)
        r->next_deadline = s->deadline;
    return 0;
}

/* The first slot in `w`'s lane's queue, `w`, gets `server` (a reference, given; `fd`: its
 * registered socket, or -1 to register it): its request goes now -- or back to Python with
 * the server when the server's settings are not the client's (`ready` false). */
static void serve_waiter(Reactor *r, Slot *w, PyObject *server, int fd, int ready) {
    PyObject *request = dequeue(r, w);
    int lent = fd >= 0 ? lend_again(r, w, server, fd) : lend(r, w, server);
    if (lent < 0) {
        PyErr_WriteUnraisable(w->session);
        w->server = server;  /* the session holds it: back with the request */
        Py_INCREF(server);
    }
    Py_DECREF(server);
    w->answer.status = 'I';
    if (lent < 0 || !ready || request == NULL) {
        queue_back(r, w, request, NULL, NULL, NULL, 0);
        return;
    }
    send_request(r, w, (const unsigned char *)PyBytes_AS_STRING(request),
                 PyBytes_GET_SIZE(request), w->pending_owed, w->pending_named, w->client_ready);
    Py_DECREF(request);
}

/* The client's chunk `buf`: relayed to a server if plain (waiting in line for one if the
 * pool has none free), else back to Python. */
static void client_request(Reactor *r, Slot *s, const unsigned char *buf, Py_ssize_t n,
                           int hung_up) {
    int named = 0;
    int owed = n < SCRATCH_SIZE ? classify_client(buf, n, &named) : 0;
    if (owed && s->server == NULL && take_held(r, s)) {
        s->answer.status = 'I';
    } else if (owed && s->server == NULL) {
        PyObject *server = PyObject_CallMethodNoArgs(s->session, s_take);
        if (server == NULL) {
            PyErr_WriteUnraisable(s->session);
            owed = 0;
        } else if (PyFloat_Check(server)) {  /* none free, the pool full: wait in line */
            double timeout = PyFloat_AS_DOUBLE(server);
            Py_DECREF(server);
            if (enqueue(r, s, buf, n, owed, named, timeout) == 0) {
                s->client_ready = hung_up;
                return;
            }
            server = NULL;
            owed = 0;
        } else if (server == Py_None) {
            owed = 0;
        } else if (lend(r, s, server) < 0) {
            PyErr_WriteUnraisable(s->session);
            s->server = server;  /* the session holds it: hand it back with the chunk */
            Py_INCREF(server);
            owed = 0;
        } else {
            s->answer.status = 'I';
        }
        Py_XDECREF(server);
    }
    if (!owed) {
        queue_back(r, s, bytes_of(buf, n), NULL, NULL, NULL, 0);
        return;
    }
    send_request(r, s, buf, n, owed, named, hung_up);
}

/* Requests that waited checkout_timeout go back to Python (TIMED_OUT), which tells their
 * clients as a pool checkout would; the next deadline is found again. */
static void expire_waiters(Reactor *r) {
    int64_t now = now_ns(), next = 0;
    PyObject *pool, *value;
    Py_ssize_t pos = 0;
    while (r->nwaiting && PyDict_Next(r->lanes, &pos, &pool, &value)) {
        for (Slot *w = ((Lane *)value)->head, *after; w != NULL; w = after) {
            after = w->next;
            if (w->deadline <= now)
                queue_back(r, w, NULL, NULL, NULL, NULL, TIMED_OUT);
            else if (next == 0 || w->deadline < next)
                next = w->deadline;
        }
    }
    r->next_deadline = next;
}

static void dispatch(Reactor *r, int fd, uint32_t events) {
    FdEntry *e = entry(r, fd);
    if (e == NULL)
        return;
    Slot *s = e->slot;
    if (s == NULL) {  /* a server back in its pool (or a slot gone): stop watching it */
        unwatch(r, fd);
        return;
    }
    if (e->is_server) {
        if (s->state == WAIT_SERVER)
            server_data(r, s, (events & HUNG_UP) != 0);
        else  /* idle in a transaction: Python waits for the client and then finds out */
            queue_back(r, s, NULL, NULL, NULL, NULL, SERVER_STIRRED);
    } else if (s->state == WAIT_CLIENT) {
        client_chunk(r, s, (events & HUNG_UP) != 0);
    } else if (s->state == WAIT_POOL && (events & HUNG_UP)) {
        queue_back(r, s, NULL, NULL, NULL, NULL, CLIENT_CLOSED);  /* gone while in line */
    } else {
        s->client_ready = 1;  /* read once the answer is complete */
        if ((events & HUNG_UP) && !s->answer.skip)
            s->release = 1;  /* the departure watch takes over (session/departures.py) */
    }
}

/* --- the Python face ------------------------------------------------------------------------ */

/* Sweeps of the ready sockets per run() without a timeout: while sockets keep becoming ready
 * (answers arriving while the last ones were relayed) the next sweep costs less than another
 * turn of Trio's loop, but run() must return for the rest of Trio's tasks now and then. */
#define MAX_SWEEPS 8

/* The epoll_event tag of Trio's own epoll descriptor (join_trio). */
#define TRIO_TAG UINT64_MAX

/* epoll_wait; with a timeout, without the GIL (Trio's threads may need it meanwhile). */
static int wait_events(Reactor *r, struct epoll_event *events, int timeout_ms) {
    int n;
    if (timeout_ms == 0)
        return epoll_wait(r->epfd, events, MAX_EVENTS, 0);
    Py_BEGIN_ALLOW_THREADS
    n = epoll_wait(r->epfd, events, MAX_EVENTS, timeout_ms);
    Py_END_ALLOW_THREADS
    return n;
}

/* run(timeout=0.0): serve the ready sockets; (the sessions handed back as (session, outcome)
 * pairs, settled). With a timeout (seconds), wait for sockets up to that long and go on serving
 * them until a session is handed back, Trio's descriptor (if joined) is ready, a signal arrives,
 * or the time is up. `settled`: Trio's own wait, planned before this, may go ahead (its
 * descriptor is ready, or nothing was waited for nor handed back); if not, Trio must be woken.
 * With no session parked there is nothing to serve: Trio waits by itself (when it joined: a
 * task waiting for the Reactor's descriptor must have the ready ones taken). */
static PyObject *reactor_run(Reactor *r, PyObject *const *args, Py_ssize_t nargs) {
    double timeout = 0;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "run() takes at most one argument (timeout)");
        return NULL;
    }
    if (nargs == 1 && (timeout = PyFloat_AsDouble(args[0])) == -1 && PyErr_Occurred())
        return NULL;
    struct epoll_event events[MAX_EVENTS];
    PyObject *out = PyList_New(0);
    if (out == NULL || (r->nparked == 0 && r->trio_joined))
        return out ? Py_BuildValue("(NO)", out, Py_True) : NULL;
    r->out = out;
    int64_t deadline = timeout > 0 ? now_ns() + (int64_t)(timeout * 1e9) : 0;
    int trio_ready = 0, waited = 0, wait_ms = timeout > 0 ? (int)(timeout * 1000) + 1 : 0;
    for (int sweep = 0;; sweep++) {
        int n;
        if (r->nwaiting && now_ns() >= r->next_deadline)
            expire_waiters(r);
        if (PyList_GET_SIZE(out))
            break;
        if (wait_ms && r->nwaiting) {  /* wake for the first request to give up waiting */
            int64_t left = (r->next_deadline - now_ns() + 999999) / 1000000;
            if (left < wait_ms)
                wait_ms = left < 1 ? 1 : (int)left;
        }
        waited |= wait_ms != 0;
        do
            n = wait_events(r, events, wait_ms);
        while (n < 0 && errno == EINTR && !wait_ms);
        if (n < 0 && errno == EINTR)
            break;  /* a signal: Python's handlers run once this returns */
        if (n < 0) {
            r->out = NULL;
            Py_DECREF(out);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        for (int i = 0; i < n; i++) {
            if (events[i].data.u64 == TRIO_TAG)
                trio_ready = 1;
            else
                dispatch(r, (int)events[i].data.u64, events[i].events);
        }
        if (trio_ready || PyList_GET_SIZE(out))
            break;  /* Trio has work, or sessions to wake */
        if (deadline == 0) {
            if (n == 0 || sweep + 1 >= MAX_SWEEPS)
                break;
            continue;
        }
        int64_t left = deadline - now_ns();
        if (left <= 0)
            break;
        wait_ms = (int)((left + 999999) / 1000000);  /* rounded up: never wake before it */
    }
    r->out = NULL;
    int settled = trio_ready || (!waited && PyList_GET_SIZE(out) == 0);
    return Py_BuildValue("(NO)", out, settled ? Py_True : Py_False);
}

/* join_trio(fd): Trio's own epoll descriptor joins the set, so that run() with a timeout
 * returns as soon as Trio has something to do. (Level-triggered: it stays ready until Trio
 * has looked.) */
static PyObject *reactor_join_trio(Reactor *r, PyObject *arg) {
    int fd = (int)PyLong_AsLong(arg);
    if (fd < 0 && PyErr_Occurred())
        return NULL;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TRIO_TAG};
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    r->trio_joined = 1;
    Py_RETURN_NONE;
}

static PyObject *reactor_park(Reactor *r, PyObject *const *args, Py_ssize_t nargs) {
    int cfd;
    if (nargs != 6 || (cfd = (int)PyLong_AsLong(args[1])) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "park(session, client_fd, server, status, pool, key)");
        return NULL;
    }
    Lane *lane = NULL;
    if (args[4] != Py_None) {
        lane = (Lane *)PyDict_GetItemWithError(r->lanes, args[4]);
        if (lane == NULL) {
            if (PyErr_Occurred())
                return NULL;
            lane = PyObject_New(Lane, &LaneType);
            if (lane == NULL)
                return NULL;
            Py_INCREF(args[4]);
            lane->pool = args[4];
            lane->held = NULL;
            lane->nheld = lane->room = 0;
            lane->queries = lane->xacts = lane->bytes_in = lane->bytes_out = 0;
            lane->query_us = lane->xact_us = 0;
            lane->wait_us = lane->waits = lane->max_wait_us = 0;
            lane->head = lane->tail = NULL;
            int failed = PyDict_SetItem(r->lanes, args[4], (PyObject *)lane);
            Py_DECREF(lane);  /* the dict keeps it */
            if (failed < 0)
                return NULL;
        }
    }
    Slot *s = PyObject_New(Slot, &SlotType);
    if (s == NULL)
        return NULL;
    Py_INCREF(args[0]);
    s->session = args[0];
    s->server = NULL;
    s->cfd = cfd;
    s->sfd = -1;
    s->state = WAIT_CLIENT;
    s->release = s->client_ready = 0;
    memset(&s->answer, 0, sizeof(Answer));
    s->answer.status = 'I';
    s->bytes_in = s->bytes_out = s->asked_at = s->xact_at = s->query_us = s->xact_us = 0;
    s->answered = 0;
    s->parked = 0;
    s->pending = NULL;
    s->pending_owed = s->pending_named = 0;
    s->since = s->deadline = 0;
    s->next = NULL;
    s->lane = lane;
    Py_XINCREF(lane);
    s->key = args[5] == Py_None ? NULL : args[5];
    Py_XINCREF(s->key);
    s->epoch = r->epoch;
    if (args[2] != Py_None) {
        if (!PyBytes_Check(args[3]) || PyBytes_GET_SIZE(args[3]) != 1 || lend(r, s, args[2]) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "status must be one byte");
            Py_DECREF(s);
            return NULL;
        }
        s->answer.status = (unsigned char)PyBytes_AS_STRING(args[3])[0];
    }
    FdEntry *e = entry(r, cfd);
    if (e == NULL || watch(r, cfd, EPOLL_CTL_ADD) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetFromErrno(PyExc_OSError);
        Py_XDECREF(unlend(r, s));
        Py_DECREF(s);
        return NULL;
    }
    Py_CLEAR(e->key);
    e->registered = 1;
    e->is_server = 0;
    e->slot = s;
    s->parked = 1;
    r->nparked++;
    Py_INCREF(s);  /* the reactor's reference, until hand-back */
    return (PyObject *)s;
}

static int parked_slot(PyObject *obj) {
    if (!PyObject_TypeCheck(obj, &SlotType)) {
        PyErr_SetString(PyExc_TypeError, "expected a slot from park()");
        return 0;
    }
    return ((Slot *)obj)->parked;
}

/* unpark(slot): out now, wherever it stands (a cancelled session); None if not parked. */
static PyObject *reactor_unpark(Reactor *r, PyObject *obj) {
    int parked = parked_slot(obj);
    if (PyErr_Occurred())
        return NULL;
    if (!parked)
        Py_RETURN_NONE;
    Slot *s = (Slot *)obj;
    PyObject *outcome = hand_back(r, s, NULL, NULL, NULL, NULL, 0);
    Py_DECREF(s);
    return outcome;
}

/* release(slot): out now if the server owes nothing (the outcome), else once it answered (None). */
static PyObject *reactor_release(Reactor *r, PyObject *obj) {
    int parked = parked_slot(obj);
    if (PyErr_Occurred())
        return NULL;
    Slot *s = (Slot *)obj;
    if (parked && s->state == WAIT_SERVER) {
        s->release = 1;
        Py_RETURN_NONE;
    }
    return reactor_unpark(r, obj);
}

/* busy(slot): the server running the slot's request, or None. */
static PyObject *reactor_busy(Reactor *r, PyObject *obj) {
    int parked = parked_slot(obj);
    if (PyErr_Occurred())
        return NULL;
    Slot *s = (Slot *)obj;
    if (parked && s->state == WAIT_SERVER && s->server != NULL) {
        Py_INCREF(s->server);
        return s->server;
    }
    Py_RETURN_NONE;
}

/* server(slot): the server a parked slot holds (running its request or idle in its
 * transaction), or None. */
static PyObject *reactor_server(Reactor *r, PyObject *obj) {
    int parked = parked_slot(obj);
    if (PyErr_Occurred())
        return NULL;
    Slot *s = (Slot *)obj;
    if (parked && s->server != NULL) {
        Py_INCREF(s->server);
        return s->server;
    }
    Py_RETURN_NONE;
}

static PyObject *reactor_fileno(Reactor *r, PyObject *unused) { return PyLong_FromLong(r->epfd); }

static PyObject *reactor_counts(Reactor *r, PyObject *unused) {
    return Py_BuildValue("(LL)", (long long)r->relayed, (long long)r->handbacks);
}

static PyObject *reactor_close(Reactor *r, PyObject *unused) {
    if (r->epfd >= 0)
        close(r->epfd);
    r->epfd = -1;
    for (int fd = 0; fd < r->nfds; fd++)
        Py_CLEAR(r->fds[fd].key);
    Py_RETURN_NONE;
}

static PyObject *reactor_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if ((kwds != NULL && PyDict_GET_SIZE(kwds)) || PyTuple_GET_SIZE(args)) {
        PyErr_SetString(PyExc_TypeError, "Reactor() takes no arguments");
        return NULL;
    }
    Reactor *r = (Reactor *)type->tp_alloc(type, 0);
    if (r == NULL)
        return NULL;
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    r->scratch = PyMem_Malloc(SCRATCH_SIZE);
    r->lanes = PyDict_New();
    if (r->epfd < 0 || r->scratch == NULL || r->lanes == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(r);
        return NULL;
    }
    return (PyObject *)r;
}

static void reactor_dealloc(Reactor *r) {
    reactor_close(r, NULL);
    PyMem_Free(r->fds);
    PyMem_Free(r->scratch);
    PyMem_Free(r->renamed);
    Py_XDECREF(r->lanes);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static void slot_dealloc(Slot *s) {
    Py_XDECREF(s->pending);
    Py_XDECREF(s->session);
    Py_XDECREF(s->server);
    Py_XDECREF(s->lane);
    Py_XDECREF(s->key);
    PyObject_Free(s);
}

static void lane_dealloc(Lane *lane) {
    for (int i = 0; i < lane->nheld; i++) {
        Py_DECREF(lane->held[i].server);
        Py_DECREF(lane->held[i].key);
    }
    PyMem_Free(lane->held);
    Py_XDECREF(lane->pool);
    PyObject_Free(lane);
}

/* reclaim(): every kept server back to Python, with the counts since the last reclaim:
 * [(pool, [servers], (queries, xacts, bytes from clients, bytes to clients, query µs,
 *   transaction µs, µs waited in line, requests that waited, longest wait µs))] for the lanes
 *   that have any. */
static PyObject *reactor_reclaim(Reactor *r, PyObject *unused) {
    PyObject *out = PyList_New(0), *pool, *value;
    Py_ssize_t pos = 0;
    while (out != NULL && PyDict_Next(r->lanes, &pos, &pool, &value)) {
        Lane *lane = (Lane *)value;
        if (lane->nheld == 0 && lane->queries == 0 && lane->bytes_in == 0 && lane->waits == 0)
            continue;
        PyObject *servers = PyList_New(lane->nheld);
        if (servers == NULL) {
            Py_CLEAR(out);
            break;
        }
        for (int i = 0; i < lane->nheld; i++) {
            PyList_SET_ITEM(servers, i, lane->held[i].server);  /* the reference moves */
            Py_DECREF(lane->held[i].key);
        }
        lane->nheld = 0;
        PyObject *item = Py_BuildValue("(ON(LLLLLLLLL))", pool, servers, (long long)lane->queries,
                                       (long long)lane->xacts, (long long)lane->bytes_in,
                                       (long long)lane->bytes_out, (long long)lane->query_us,
                                       (long long)lane->xact_us, (long long)lane->wait_us,
                                       (long long)lane->waits, (long long)lane->max_wait_us);
        lane->queries = lane->xacts = lane->bytes_in = lane->bytes_out = 0;
        lane->query_us = lane->xact_us = 0;
        lane->wait_us = lane->waits = lane->max_wait_us = 0;
        if (item == NULL || PyList_Append(out, item) < 0)
            Py_CLEAR(out);
        Py_XDECREF(item);
    }
    return out;
}

/* The lane of `pool`, or NULL (borrowed; no error set when there is none). */
static Lane *lane_of(Reactor *r, PyObject *pool) {
    PyObject *lane = PyDict_GetItemWithError(r->lanes, pool);
    if (lane == NULL && PyErr_Occurred())
        PyErr_Clear();
    return (Lane *)lane;
}

/* first_waiter(pool): (the session whose request is first in line for a server of `pool`,
 * seconds it has waited), or None. */
static PyObject *reactor_first_waiter(Reactor *r, PyObject *pool) {
    Lane *lane = lane_of(r, pool);
    if (lane == NULL || lane->head == NULL)
        Py_RETURN_NONE;
    return Py_BuildValue("(Od)", lane->head->session, (double)(now_ns() - lane->head->since) / 1e9);
}

/* serve_first(pool, server, ready): the request first in line gets `server`, a connection
 * the pool had back from the Python path (`ready`: it has that client's settings); with
 * server None (a slot of the pool freed: a connection may be opened, which only Python does)
 * it goes back to Python instead. The sessions handed back meanwhile: [(session, outcome)]. */
static PyObject *reactor_serve_first(Reactor *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "serve_first(pool, server, ready)");
        return NULL;
    }
    Lane *lane = lane_of(r, args[0]);
    if (lane == NULL || lane->head == NULL) {
        PyErr_SetString(PyExc_LookupError, "no request waits for this pool");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    int running = r->out != NULL;  /* inside run(): its list takes them, `out` stays empty */
    if (!running)
        r->out = out;
    if (args[1] == Py_None) {
        queue_back(r, lane->head, NULL, NULL, NULL, NULL, 0);
    } else {
        Py_INCREF(args[1]);
        serve_waiter(r, lane->head, args[1], -1, PyObject_IsTrue(args[2]) == 1);
    }
    if (!running)
        r->out = NULL;
    return out;
}

/* unqueue(): every request waiting in line back to Python, with its session: [(session,
 * outcome)] (before a reload, PAUSE or shutdown: the Python path then waits as it decides). */
static PyObject *reactor_unqueue(Reactor *r, PyObject *unused) {
    PyObject *out = PyList_New(0);
    if (out == NULL || r->out != NULL)
        return out;  /* (never called inside run()) */
    r->out = out;
    PyObject *pool, *value;
    Py_ssize_t pos = 0;
    while (r->nwaiting && PyDict_Next(r->lanes, &pos, &pool, &value)) {
        while (((Lane *)value)->head != NULL)
            queue_back(r, ((Lane *)value)->head, NULL, NULL, NULL, NULL, 0);
    }
    r->out = NULL;
    return out;
}

/* new_epoch(): slots parked until now take servers only through Python again (whose checks
 * a reload or shutdown changed). */
static PyObject *reactor_new_epoch(Reactor *r, PyObject *unused) {
    r->epoch++;
    Py_RETURN_NONE;
}

static PyMethodDef reactor_methods[] = {
    {"run", (PyCFunction)(void (*)(void))reactor_run, METH_FASTCALL,
     "run(timeout=0.0): serve the ready sockets, waiting up to timeout seconds; "
     "([(session, outcome) of the sessions handed back], whether Trio's descriptor is ready)."},
    {"join_trio", (PyCFunction)reactor_join_trio, METH_O,
     "join_trio(fd): run() with a timeout returns when this (Trio's epoll) is ready."},
    {"park", (PyCFunction)(void (*)(void))reactor_park, METH_FASTCALL,
     "park(session, client_fd, server or None, status): a slot."},
    {"unpark", (PyCFunction)reactor_unpark, METH_O, "Take a slot out now: its outcome, or None."},
    {"release", (PyCFunction)reactor_release, METH_O,
     "Take a slot out now if its server owes nothing (its outcome), else once answered (None)."},
    {"busy", (PyCFunction)reactor_busy, METH_O, "The server running a slot's request, or None."},
    {"server", (PyCFunction)reactor_server, METH_O, "The server a slot holds, or None."},
    {"reclaim", (PyCFunction)reactor_reclaim, METH_NOARGS,
     "Every idle server kept in C, back to Python, with the counts: [(pool, servers, counts)]."},
    {"first_waiter", (PyCFunction)reactor_first_waiter, METH_O,
     "first_waiter(pool): (the session first in line for a server of pool, seconds waited), "
     "or None."},
    {"serve_first", (PyCFunction)(void (*)(void))reactor_serve_first, METH_FASTCALL,
     "serve_first(pool, server, ready): the request first in line gets server; "
     "[(session, outcome)] to wake."},
    {"unqueue", (PyCFunction)reactor_unqueue, METH_NOARGS,
     "Every request waiting in line back to Python: [(session, outcome)] to wake."},
    {"new_epoch", (PyCFunction)reactor_new_epoch, METH_NOARGS,
     "Slots parked until now take servers through Python again."},
    {"fileno", (PyCFunction)reactor_fileno, METH_NOARGS, "The epoll file descriptor."},
    {"counts", (PyCFunction)reactor_counts, METH_NOARGS,
     "(answers relayed whole, hand-backs to Python) since the reactor started."},
    {"close", (PyCFunction)reactor_close, METH_NOARGS, "Close the epoll descriptor."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReactorType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "trio_pgdog._reactor.Reactor",
    .tp_basicsize = sizeof(Reactor),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Plain transactions relayed in C over a private epoll.",
    .tp_new = reactor_new,
    .tp_dealloc = (destructor)reactor_dealloc,
    .tp_methods = reactor_methods,
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "trio_pgdog._reactor.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A pool's idle servers kept in C.",
    .tp_dealloc = (destructor)lane_dealloc,
};

static PyTypeObject SlotType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "trio_pgdog._reactor.Slot",
    .tp_basicsize = sizeof(Slot),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A session parked in a Reactor.",
    .tp_dealloc = (destructor)slot_dealloc,
};

/* --- the classifiers alone, for the differential tests (tests/test_plain_scan.py) ------- */

/* classify_client(data, named=False): the owed count (0: not plain), and with `named`
 * whether a Bind names a statement: (owed, named). */
static PyObject *py_classify_client(PyObject *self, PyObject *args) {
    Py_buffer view;
    int named = 0, found = 0;
    if (!PyArg_ParseTuple(args, "y*|p", &view, &named))
        return NULL;
    int owed = classify_client(view.buf, view.len, named ? &found : NULL);
    if (named) {
        PyBuffer_Release(&view);
        return Py_BuildValue("(iO)", owed, found && owed ? Py_True : Py_False);
    }
    PyBuffer_Release(&view);
    return PyLong_FromLong(owed);
}

/* scan_server(chunks, owed): (bytes relayed before the hand-back point or the end, owed left,
 * last ReadyForQuery status, ReadyForQuery relayed, idle ones among them), feeding the chunks in
 * order as run() would, up to the hand-back point. */
static PyObject *py_scan_server(PyObject *self, PyObject *args) {
    PyObject *chunks;
    int owed;
    if (!PyArg_ParseTuple(args, "Oi", &chunks, &owed))
        return NULL;
    Answer a = {.owed = owed, .status = 'I'};
    Py_ssize_t relayed_bytes = 0;
    PyObject *seq = PySequence_Fast(chunks, "chunks must be a sequence of bytes");
    if (seq == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        Py_buffer view;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &view, PyBUF_SIMPLE) < 0) {
            Py_DECREF(seq);
            return NULL;
        }
        Py_ssize_t upto = scan_server(&a, view.buf, view.len);
        Py_ssize_t len = view.len;
        PyBuffer_Release(&view);
        relayed_bytes += upto;
        if (upto < len || a.owed == 0)
            break;
    }
    Py_DECREF(seq);
    return Py_BuildValue("(niNLL)", relayed_bytes, a.owed, status_bytes(a.status),
                         (long long)a.queries, (long long)a.xacts);
}

static PyMethodDef module_methods[] = {
    {"classify_client", py_classify_client, METH_VARARGS,
     "classify_client(data, named=False): ReadyForQuery owed for a plain client chunk, else 0; "
     "with named, (owed, whether a Bind names a statement) (session/plain.py's twin)."},
    {"scan_server", py_scan_server, METH_VARARGS,
     "scan_server(chunks, owed): (bytes relayed, owed left, statuses)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef reactor_module = {
    PyModuleDef_HEAD_INIT, "_reactor", "Plain transactions relayed in C.", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__reactor(void) {
    if (PyType_Ready(&ReactorType) < 0 || PyType_Ready(&SlotType) < 0 ||
        PyType_Ready(&LaneType) < 0)
        return NULL;
    s_take = PyUnicode_InternFromString("_c_take");
    s_give = PyUnicode_InternFromString("_c_give");
    s_conn = PyUnicode_InternFromString("conn");
    s_fd = PyUnicode_InternFromString("fd");
    s_sock = PyUnicode_InternFromString("sock");
    s_closed = PyUnicode_InternFromString("closed");
    s_paused = PyUnicode_InternFromString("paused");
    s_waiters = PyUnicode_InternFromString("waiters");
    s_created_at = PyUnicode_InternFromString("created_at");
    s_reconnect_before = PyUnicode_InternFromString("reconnect_before");
    s_tracker = PyUnicode_InternFromString("tracker");
    s_statements = PyUnicode_InternFromString("statements");
    s_set_statements = PyUnicode_InternFromString("set_statements");
    if (!s_take || !s_give || !s_conn || !s_fd || !s_sock || !s_closed || !s_paused || !s_waiters ||
        !s_created_at || !s_reconnect_before)
        return NULL;
    PyObject *m = PyModule_Create(&reactor_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ReactorType);
    if (PyModule_AddObject(m, "Reactor", (PyObject *)&ReactorType) < 0 ||
        PyModule_AddIntConstant(m, "SERVER_LOST", SERVER_LOST) < 0 ||
        PyModule_AddIntConstant(m, "CLIENT_GONE", CLIENT_GONE) < 0 ||
        PyModule_AddIntConstant(m, "BROKEN", BROKEN) < 0 ||
        PyModule_AddIntConstant(m, "CLIENT_CLOSED", CLIENT_CLOSED) < 0 ||
        PyModule_AddIntConstant(m, "SERVER_STIRRED", SERVER_STIRRED) < 0 ||
        PyModule_AddIntConstant(m, "TIMED_OUT", TIMED_OUT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
