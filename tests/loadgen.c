/* loadgen.c: the NATS load generator and delivery checker of tests/bench.py.
 *
 * The realistic bench scenarios (real_*, same_line, varied_line) publish
 * many subjects and a payload size that changes from message to message.
 * A Python subscriber parsing such MSG frames one by one would be slower
 * than the Go server and cap its numbers, so this C99 program (POSIX
 * sockets, libc only) makes that traffic and checks it. bench.py compiles
 * it on demand (cc -O2 -o bench-results/loadgen tests/loadgen.c) and runs
 * one process per publisher and a few subscriber processes per measurement.
 *
 * Traffic. Publisher ID (1..255) numbers its messages 0, 1, 2, ...; message
 * SEQ has the hash h = mix(seed, ID, SEQ), which picks its subject
 * PREFIX.<h % SUBJECTS> and its payload size (MIN + (h >> 32) % (MAX-MIN+1)).
 * The payload opens with a 16-character stamp: ID in 4 hex digits and SEQ
 * in 12, then filler. With --reply every message carries its own reply
 * subject _INBOX.<ID 4 hex>.<SEQ 12 hex> (as requests do). With --headers
 * every message is an HPUB whose header block carries the stamp again
 * ("NATS/1.0\r\nMsg-Id: <stamp>\r\n\r\n", HDR_LEN bytes; sizes and MB/s
 * count the payload after it). A subscriber
 * given the same traffic options recomputes h from the stamp, so it checks
 * every message's subject, size, reply and framing, not just a count.
 *
 * Modes (common options: --host H --port P, and the traffic options
 * --prefix S --subjects N --size MIN[-MAX] --seed X [--reply] [--headers]; pub, sub and
 * req also take --ws, below):
 *
 *   pub --id ID (--duration S | --count N) [--batch B] [--unacked B]
 *       [--shm FILE] [--window MSGS] [--sync]
 *     Publishes batches of about B bytes (default 32 KiB: they stay in the
 *     cache; 64 KiB ones cost the generator a third more), each ended by a
 *     PING; at most --unacked bytes (default 2 MiB) go out before their PONG
 *     is back. With --shm, also waits while the messages all publishers have
 *     sent run more than --window ahead of the slowest subscriber group.
 *     With --sync, prints "ready" once connected and waits for a line on
 *     stdin before starting the clock. At the end (every batch PONGed):
 *       pub id=ID msgs=N bytes=PAYLOAD hash=SUM start=T end=T cpu=S
 *     SUM is the sum of every message's h (mod 2^64), T CLOCK_MONOTONIC.
 *
 *   sub --sub SUBJ [--queue Q] [--conns N] [--group G] [--shm FILE]
 *       [--respond] [--coalesce-us U]
 *     N connections, each SUB SUBJ [Q] 1; prints "ready" once all are
 *     subscribed (PONG). Checks every MSG: framing, subject, size, reply,
 *     and per publisher SEQ exactly previous+1 from 0 (without --queue: it
 *     must see every message) or increasing (queue members). Connection c
 *     belongs to group G+c (G for all with --queue); with --shm each group's
 *     count is kept in the file for publishers and bench.py. With --respond,
 *     answers each MSG on its reply subject with the same payload. A line
 *     or EOF on stdin stops it: each connection PINGs, reads to the PONG,
 *     and prints
 *       sub conn=C group=G msgs=N bytes=B first=T last=T reads=R cpu=S
 *           pubs=ID:COUNT:SUM,...
 *     (cpu, the whole process's, on the first line only).
 *
 *   req --id ID --duration S [--sync]
 *     Sequential requests (a reply inbox per request, one SUB
 *     _INBOX.<ID>.*): each reply must be the request's payload on its own
 *     reply subject. After 200 warm-up requests, prints
 *       req id=ID count=N p50=US p99=US rps=R cpu=S
 *
 *   sink -a HOST -p PORT
 *     A server that discards input and answers PINGs (the publishers'
 *     ceiling: bench.py --sink); PORT -1 picks a free one. Logs like
 *     nats-server: "Listening for client connections on HOST:PORT".
 *
 *   frames --id ID --count N
 *     Writes the MSG frames (sid 1) a subscriber gets for the first N
 *     messages of publisher ID to stdout, "frames msgs=N hash=SUM" to
 *     stderr: bench.py --self-test feeds them, with faults, to a subscriber.
 *
 *   speed
 *     Times building PUBs and checking MSGs in memory (no sockets):
 *       speed gen=MSGS_PER_S check=MSGS_PER_S
 *
 * WebSocket (--ws: P is the server's websocket port, e.g. of a
 * `websocket { no_tls: true }` block). After the TCP connect each
 * connection sends an HTTP/1.1 upgrade (GET / with a fixed key) and needs
 * "HTTP/1.1 101" with the key's Sec-WebSocket-Accept. From then on every
 * write is one masked binary frame (FIN, opcode 2) with the all-zero
 * masking key, and every read is unframed before the NATS parser sees it:
 * server frames (unmasked, no extension) may split anywhere across reads;
 * data-frame payloads (binary, text, continuations) are joined into the
 * stream, control frames are dropped, a close frame fails the run with
 * its status and reason. The checking is the same as over TCP.
 *
 * Any protocol error, lost, doubled or reordered message, wrong subject,
 * size or reply, or timeout (20 s without progress) prints "loadgen: ..."
 * on stderr and exits 1 (a subscriber also raises the abort flag in the
 * --shm file, which stops its publishers).
 *
 * The --shm file holds native 64-bit words: [0] publishers, [1] groups,
 * [2] abort flag, then one published count per publisher (ID 1 first),
 * then one delivered count per group. bench.py creates it zeroed and
 * fills in [0] and [1].
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_PUBS 256          /* publisher ids 1..255 */
#define MAX_CONNS 64
#define MAX_PAYLOAD (1 << 20)
#define STAMP 16              /* 4 hex digits of id, 12 of sequence */
#define HDR_LEN 38            /* --headers: "NATS/1.0\r\nMsg-Id: " STAMP "\r\n\r\n" */
#define RECV_CAP (2 << 20)    /* bytes a connection reads at once */
#define BUF_CAP (RECV_CAP + MAX_PAYLOAD + 4096)
#define TIMEOUT 20.0          /* seconds without progress that fail a run */
#define WARMUP 200            /* requests before req mode's clock starts */
#define MAX_LATENCIES 2000000
#define MAX_LINE 65536        /* longest protocol line (INFO) */

/* ---- options, errors, time ------------------------------------------- */

typedef struct {
    const char *mode, *host, *prefix, *sub, *queue, *shm;
    int port, id, subjects, min, max, reply, conns, group, respond, sync, ws, headers;
    double duration;
    uint64_t count, seed, window;
    long batch, unacked, coalesce_us;
} Opts;

static Opts o = {NULL, "127.0.0.1", "real", NULL, NULL, NULL, 4222, 1, 64, 16, 256, 0, 1, 0,
                 0, 0, 0, 0, 2.0, 0, 1, 0, 32 * 1024, 2 * 1024 * 1024, 1000};
static volatile uint64_t *shm;   /* see the header comment */

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen %s: ", o.mode ? o.mode : "");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (shm) shm[2] = 1;
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec
           + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* ---- traffic: what message SEQ of publisher ID looks like ------------- */

static char **subj;     /* PREFIX.<k> */
static int *subj_len;
static char fill[MAX_PAYLOAD];
static const char hexdig[] = "0123456789abcdef";
static unsigned char unhex[256];  /* value + 1; 0: not a hex digit */

static uint64_t mix(unsigned id, uint64_t seq)
{   /* splitmix64 finalizer */
    uint64_t z = (o.seed * 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)id << 48) ^ seq;
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int size_of(uint64_t h) { return o.min + (int)((h >> 32) % (uint64_t)(o.max - o.min + 1)); }
static int subject_of(uint64_t h) { return (int)((uint32_t)h % (uint32_t)o.subjects); }

static void setup_traffic(void)
{
    char *block;
    if (o.subjects < 1 || o.min < STAMP || o.max < o.min || o.max > MAX_PAYLOAD)
        die("need --subjects >= 1 and %d <= --size MIN <= MAX <= %d", STAMP, MAX_PAYLOAD);
    if (strlen(o.prefix) > 200) die("--prefix too long");
    subj = malloc(sizeof(char *) * (size_t)o.subjects);
    subj_len = malloc(sizeof(int) * (size_t)o.subjects);
    block = malloc((strlen(o.prefix) + 13) * (size_t)o.subjects);  /* all in one block */
    if (!subj || !subj_len || !block) die("out of memory");
    for (int k = 0; k < o.subjects; k++) {
        subj[k] = block;
        subj_len[k] = sprintf(block, "%s.%d", o.prefix, k);
        block += subj_len[k] + 1;
    }
    for (int i = 0; i < MAX_PAYLOAD; i++) fill[i] = "abcdefghijklmnopqrstuvwxyz"[i % 26];
    for (int i = 0; i < 16; i++) {
        unhex[(unsigned char)hexdig[i]] = (unsigned char)(i + 1);
    }
}

static char *put_hex(char *p, uint64_t v, int digits)
{
    for (int i = digits - 1; i >= 0; i--, v >>= 4) p[i] = hexdig[v & 15];
    return p + digits;
}

static char *put_uint(char *p, unsigned long v)
{
    char tmp[24];
    int n = 0;
    do tmp[n++] = (char)('0' + v % 10); while (v /= 10);
    while (n) *p++ = tmp[--n];
    return p;
}

/* Parse n hex digits; -1 if any is not one. */
static int64_t get_hex(const char *p, int n)
{
    uint64_t v = 0;
    unsigned bad = 0;
    for (int i = 0; i < n; i++) {
        unsigned d = unhex[(unsigned char)p[i]];
        bad |= (d == 0);
        v = (v << 4) | (d - 1);
    }
    return bad ? -1 : (int64_t)v;
}

/* "PUB <subject> [<reply>] <size>\r\n<payload>\r\n" for message seq, or with
 * msg set, the delivery "MSG <subject> 1 [<reply>] <size>\r\n..." a
 * subscriber gets (with --headers HPUB and HMSG, "<HDR_LEN> <total>" for the
 * size and the header block before the payload); adds its payload size to
 * *bytes and its hash to *sum. */
static char *put_frame(char *p, int msg, unsigned id, uint64_t seq, uint64_t *bytes,
                       uint64_t *sum)
{
    uint64_t h = mix(id, seq);
    int k = subject_of(h), n = size_of(h);
    if (o.headers) *p++ = 'H';
    memcpy(p, msg ? "MSG " : "PUB ", 4);
    p += 4;
    memcpy(p, subj[k], (size_t)subj_len[k]);
    p += subj_len[k];
    *p++ = ' ';
    if (msg) {
        memcpy(p, "1 ", 2);
        p += 2;
    }
    if (o.reply) {
        memcpy(p, "_INBOX.", 7);
        p = put_hex(p + 7, id, 4);
        *p++ = '.';
        p = put_hex(p, seq, 12);
        *p++ = ' ';
    }
    if (o.headers) {
        p = put_uint(p, HDR_LEN);
        *p++ = ' ';
        p = put_uint(p, (unsigned long)(HDR_LEN + n));
        memcpy(p, "\r\nNATS/1.0\r\nMsg-Id: ", 20);
        p = put_hex(p + 20, id, 4);
        p = put_hex(p, seq, 12);
        memcpy(p, "\r\n\r\n", 4);
        p += 4;
    } else {
        p = put_uint(p, (unsigned long)n);
        *p++ = '\r';
        *p++ = '\n';
    }
    p = put_hex(p, id, 4);
    p = put_hex(p, seq, 12);
    memcpy(p, fill, (size_t)(n - STAMP));
    p += n - STAMP;
    *p++ = '\r';
    *p++ = '\n';
    *bytes += (uint64_t)n;
    *sum += h;
    return p;
}

/* ---- sockets ----------------------------------------------------------- */

/* --ws: RFC 6455's sample key (base64 of 16 bytes) and the accept value a
 * server must answer it with (base64 of SHA-1 of the key and the GUID). */
#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
#define WS_MAX_HEAD 8192      /* longest upgrade response head */

static void ws_upgrade(int fd);

static int dial(void)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct timeval tv = {(long)TIMEOUT, 0};
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)o.port);
    if (fd < 0 || inet_pton(AF_INET, o.host, &a.sin_addr) != 1)
        die("bad host %s", o.host);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
        die("connect %s:%d: %s", o.host, o.port, strerror(errno));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (o.ws) ws_upgrade(fd);
    return fd;
}

/* Send the bytes as they are. */
static void send_raw(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) die("send: %s", w < 0 ? strerror(errno) : "closed");
        p += w;
        n -= (size_t)w;
    }
}

/* Send protocol bytes to the server: as they are, or with --ws as one
 * masked binary frame (header and payload in one sendmsg). Clients must
 * mask (RFC 6455 5.3), but the key may be any 32 bits and the server
 * cannot tell how it was chosen: the all-zero key makes a valid frame whose
 * masked payload equals the plain one, so the generator spends nothing on
 * XOR (the servers still unmask every byte with the key they read). The
 * RFC wants unpredictable keys so that a browser script cannot choose the
 * bytes a proxy sees; nothing of that applies to a loopback benchmark. */
static void send_all(int fd, const char *p, size_t n)
{
    unsigned char h[14];
    size_t hn = 2;
    struct iovec iov[2];
    struct msghdr mh;
    if (!o.ws) {
        send_raw(fd, p, n);
        return;
    }
    h[0] = 0x80 | 2;                       /* FIN, binary */
    if (n < 126) {
        h[1] = (unsigned char)(0x80 | n);  /* mask bit, 7-bit length */
    } else if (n < 65536) {
        h[1] = 0x80 | 126;                 /* 16-bit length */
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        hn = 4;
    } else {
        h[1] = 0x80 | 127;                 /* 64-bit length */
        for (int i = 0; i < 8; i++) h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
        hn = 10;
    }
    memset(h + hn, 0, 4);                  /* the masking key: 0, see above */
    hn += 4;
    iov[0].iov_base = h;
    iov[0].iov_len = hn;
    iov[1].iov_base = (void *)p;
    iov[1].iov_len = n;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = iov;
    mh.msg_iovlen = 2;
    while (mh.msg_iovlen) {
        ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) die("send: %s", w < 0 ? strerror(errno) : "closed");
        while (mh.msg_iovlen && (size_t)w >= mh.msg_iov[0].iov_len) {  /* drop what went */
            w -= (ssize_t)mh.msg_iov[0].iov_len;
            mh.msg_iov++;
            mh.msg_iovlen--;
        }
        if (mh.msg_iovlen) {
            mh.msg_iov[0].iov_base = (char *)mh.msg_iov[0].iov_base + w;
            mh.msg_iov[0].iov_len -= (size_t)w;
        }
    }
}

/* --ws: ask for the upgrade and read the answer's head up to its blank
 * line, a byte at a time so that the first frame after it (INFO) stays
 * in the socket for the unframing reader; it must be a 101 with our key's
 * accept value. */
static void ws_upgrade(int fd)
{
    char req[600], head[WS_MAX_HEAD + 1];
    size_t n = 0;
    int len = snprintf(req, sizeof req,
                       "GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: " WS_KEY "\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n", o.host, o.port);
    send_raw(fd, req, (size_t)len);
    while (n < 4 || memcmp(head + n - 4, "\r\n\r\n", 4)) {
        ssize_t r;
        if (n == WS_MAX_HEAD) die("websocket upgrade: no end of the response head in %d bytes",
                                  WS_MAX_HEAD);
        r = recv(fd, head + n, 1, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) die("websocket upgrade: recv: %s", errno == EAGAIN
                       ? "no answer within the timeout" : strerror(errno));
        if (r == 0) die("websocket upgrade: closed after %.*s", (int)n, head);
        n++;
    }
    head[n] = 0;
    if (strncmp(head, "HTTP/1.1 101", 12))
        die("websocket upgrade refused: %.*s", (int)strcspn(head, "\r"), head);
    if (!strstr(head, "\r\nSec-WebSocket-Accept: " WS_ACCEPT "\r\n")
        && !strstr(head, "\r\nsec-websocket-accept: " WS_ACCEPT "\r\n"))
        die("websocket upgrade: no Sec-WebSocket-Accept " WS_ACCEPT " in %s", head);
}

/* One connection's input: what arrived and is not yet parsed; with --ws,
 * where the server's current frame is. */
typedef struct {
    int fd;
    char *buf;
    size_t pos, len;
    uint64_t ws_left;             /* payload bytes of the current frame to come */
    int ws_opcode;                /* the current frame's */
    int ws_fragmented;            /* a data message's last frame is still to come */
    unsigned char ws_head[10];    /* a frame header so far (it may straddle reads) */
    int ws_head_len;
    unsigned char ws_control[125];  /* a control frame's payload so far */
    int ws_control_len;
} Input;

static void input_init(Input *in, int fd)
{
    memset(in, 0, sizeof *in);
    in->fd = fd;
    in->buf = malloc(BUF_CAP);
    if (!in->buf) die("out of memory");
}

/* A whole control frame from the server: a close ends the run; ping and
 * pong are dropped (the NATS servers keep clients alive with the
 * protocol's PING, never with websocket pings). */
static void ws_control_frame(Input *in)
{
    const unsigned char *p = in->ws_control;
    if (in->ws_opcode == 8)
        die("server sent a websocket close: status %d %.*s",
            in->ws_control_len >= 2 ? p[0] << 8 | p[1] : 0,
            in->ws_control_len > 2 ? in->ws_control_len - 2 : 0, (const char *)p + 2);
    in->ws_control_len = 0;
}

/* A whole frame header from the server: check it, start the frame. */
static void ws_frame_header(Input *in)
{
    const unsigned char *h = in->ws_head;
    int opcode = h[0] & 15, control = opcode >= 8;
    uint64_t len = h[1] & 127;
    if (h[0] & 0x70) die("websocket frame with RSV bits %#x (no extension agreed)", h[0] & 0x70);
    if (h[1] & 0x80) die("masked websocket frame from the server");
    if (len == 126) {
        len = (uint64_t)h[2] << 8 | h[3];
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++) len = len << 8 | h[2 + i];
        if (len >> 63) die("websocket frame length over 2^63");
    }
    if (control) {
        if (opcode > 10) die("websocket frame with unknown opcode %d", opcode);
        if (!(h[0] & 0x80) || len > 125) die("websocket control frame not final or over 125 bytes");
    } else {
        if (opcode > 2) die("websocket frame with unknown opcode %d", opcode);
        if ((opcode == 0) != in->ws_fragmented)
            die(opcode ? "websocket message started inside a fragmented one"
                       : "websocket continuation frame outside a fragmented message");
        in->ws_fragmented = !(h[0] & 0x80);
    }
    in->ws_opcode = opcode;
    in->ws_left = len;
    in->ws_head_len = 0;
    if (control && !len) ws_control_frame(in);
}

/* --ws: unframe the n bytes just read at p, in place: the data frames'
 * payloads move down over the headers and control frames. Returns how many
 * stream bytes are left at p. */
static size_t ws_unframe(Input *in, char *p, size_t n)
{
    char *src = p, *end = p + n, *dst = p;
    while (src < end) {
        if (in->ws_left) {  /* the current frame's payload */
            size_t k = (size_t)(end - src) < in->ws_left ? (size_t)(end - src)
                                                         : (size_t)in->ws_left;
            if (in->ws_opcode >= 8) {
                memcpy(in->ws_control + in->ws_control_len, src, k);
                in->ws_control_len += (int)k;
            } else {
                if (dst != src) memmove(dst, src, k);
                dst += k;
            }
            src += k;
            in->ws_left -= k;
            if (!in->ws_left && in->ws_opcode >= 8) ws_control_frame(in);
        } else {            /* the next header, a byte at a time */
            int need;
            in->ws_head[in->ws_head_len++] = (unsigned char)*src++;
            need = in->ws_head_len < 2 ? 2 : 2 + ((in->ws_head[1] & 127) == 126 ? 2
                                                : (in->ws_head[1] & 127) == 127 ? 8 : 0);
            if (in->ws_head_len == need) ws_frame_header(in);
        }
    }
    return (size_t)(dst - p);
}

/* One recv (blocking up to TIMEOUT; flags e.g. MSG_DONTWAIT); returns bytes
 * read (with --ws, before unframing: maybe none of them is stream), 0 if it
 * would block. The unparsed tail moves to the front first. */
static size_t input_read(Input *in, int flags)
{
    ssize_t r;
    if (in->pos) {
        memmove(in->buf, in->buf + in->pos, in->len - in->pos);
        in->len -= in->pos;
        in->pos = 0;
    }
    do r = recv(in->fd, in->buf + in->len, BUF_CAP - in->len < RECV_CAP ? BUF_CAP - in->len
                                                                          : RECV_CAP, flags);
    while (r < 0 && errno == EINTR);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && (flags & MSG_DONTWAIT)) return 0;
    if (r < 0) die("recv: %s", errno == EAGAIN ? "no data within the timeout" : strerror(errno));
    if (r == 0) die("server closed the connection");
    in->len += o.ws ? ws_unframe(in, in->buf + in->len, (size_t)r) : (size_t)r;
    return (size_t)r;
}

/* One frame from the server. */
enum { F_NONE, F_MSG, F_PING, F_PONG, F_OTHER };
typedef struct {
    const char *subj, *sid, *reply, *payload;
    int subj_len, sid_len, reply_len, size;
} Msg;

/* Parse the next whole frame at in->pos: F_NONE if it is not all here yet. */
static int next_frame(Input *in, Msg *m)
{
    char *p = in->buf + in->pos, *end = in->buf + in->len, *eol, *tok[5];
    int ntok = 0;
    size_t avail = (size_t)(end - p);
    if (avail < 5) return F_NONE;
    eol = memchr(p, '\n', avail > MAX_LINE ? MAX_LINE : avail);
    if (!eol) {
        if (avail >= MAX_LINE) die("no end of line in %.60s", p);
        return F_NONE;
    }
    if (eol == p || eol[-1] != '\r') die("line not ended by CRLF: %.60s", p);
    if (o.headers ? !memcmp(p, "HMSG ", 5) : !memcmp(p, "MSG ", 4)) {
        /* MSG <subject> <sid> [<reply>] <size>, or HMSG ... <hdr> <total>:
         * tokens up to the CR */
        char *q = p + 4 + o.headers, *stop = eol - 1;
        int len[5], most = 4 + o.headers;
        long size = 0, hdr = 0;
        while (q < stop) {
            if (ntok == most) die("bad MSG line: %.*s", (int)(stop - p), p);
            tok[ntok] = q;
            while (q < stop && *q != ' ') q++;
            len[ntok] = (int)(q - tok[ntok]);
            ntok++;
            while (q < stop && *q == ' ') q++;
        }
        if (ntok < 3 + o.headers) die("bad MSG line: %.*s", (int)(stop - p), p);
        for (q = tok[ntok - 1]; q < tok[ntok - 1] + len[ntok - 1]; q++) {
            if (*q < '0' || *q > '9' || size > MAX_PAYLOAD)
                die("bad MSG size: %.*s", (int)(stop - p), p);
            size = size * 10 + (*q - '0');
        }
        if (o.headers) {
            for (q = tok[ntok - 2]; q < tok[ntok - 2] + len[ntok - 2]; q++) {
                if (*q < '0' || *q > '9' || hdr > MAX_PAYLOAD)
                    die("bad HMSG header size: %.*s", (int)(stop - p), p);
                hdr = hdr * 10 + (*q - '0');
            }
            if (hdr != HDR_LEN || size < hdr)
                die("HMSG header of %ld bytes (sent %d): %.*s", hdr, HDR_LEN,
                    (int)(stop - p), p);
        }
        if ((size_t)(end - (eol + 1)) < (size_t)size + 2) return F_NONE;
        m->subj = tok[0];
        m->subj_len = len[0];
        m->sid = tok[1];
        m->sid_len = len[1];
        m->reply = ntok == most ? tok[2] : NULL;
        m->reply_len = ntok == most ? len[2] : 0;
        m->payload = eol + 1 + hdr;
        m->size = (int)(size - hdr);
        if (eol[1 + size] != '\r' || eol[2 + size] != '\n')
            die("MSG payload of %ld bytes not followed by CRLF: %.*s", size,
                (int)(stop - p), p);
        if (hdr && (memcmp(eol + 1, "NATS/1.0\r\nMsg-Id: ", 18)
                    || memcmp(eol + 19, eol + 1 + hdr, STAMP)
                    || memcmp(eol + 19 + STAMP, "\r\n\r\n", 4)))
            die("HMSG header block %.*s does not carry the payload's stamp", (int)hdr,
                eol + 1);
        in->pos = (size_t)(eol + 3 + size - in->buf);
        return F_MSG;
    }
    in->pos = (size_t)(eol + 1 - in->buf);
    if (eol - p == 5 && !memcmp(p, "PING", 4)) return F_PING;
    if (eol - p == 5 && !memcmp(p, "PONG", 4)) return F_PONG;
    if (!memcmp(p, "-ERR", 4)) die("server said %.*s", (int)(eol - p - 1), p);
    if (!memcmp(p, "+OK", 3) || !memcmp(p, "INFO ", 5)) return F_OTHER;
    die("unexpected line: %.*s", (int)(eol - p - 1), p);
    return F_NONE;
}

/* Read INFO, send CONNECT (+ ops), PING, and wait for the PONG. */
static void handshake(int fd, Input *in, const char *ops)
{
    const char *connect_line = o.headers
        ? "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\n"
        : "CONNECT {\"verbose\":false,\"pedantic\":false}\r\n";
    Msg m;
    int f;
    char *out = malloc(strlen(connect_line) + strlen(ops) + 8);
    sprintf(out, "%s%sPING\r\n", connect_line, ops);
    send_all(fd, out, strlen(out));
    free(out);
    for (;;) {
        while ((f = next_frame(in, &m)) != F_NONE) {
            if (f == F_PONG) return;
            if (f == F_PING) send_all(fd, "PONG\r\n", 6);
            if (f == F_MSG) die("MSG before the handshake ended");
        }
        input_read(in, 0);
    }
}

static void wait_go(void)
{
    char line[64];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) die("stdin closed before the start");
}

static void map_shm(void)
{
    int fd;
    struct stat st;
    if (!o.shm) return;
    fd = open(o.shm, O_RDWR);
    if (fd < 0 || fstat(fd, &st) < 0 || st.st_size < 24) die("cannot open --shm %s", o.shm);
    shm = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (shm == MAP_FAILED) die("mmap %s: %s", o.shm, strerror(errno));
    close(fd);
    if ((size_t)st.st_size < 8 * (3 + shm[0] + shm[1])) die("--shm file too small");
}

/* ---- pub ---------------------------------------------------------------- */

/* Wait until `next` more messages keep all publishers within o.window of the
 * slowest subscriber group. */
static void wait_window(uint64_t next)
{
    uint64_t pubs = shm[0], groups = shm[1], last = (uint64_t)-1;
    double since = now();
    if (!groups || !o.window) return;
    for (;;) {
        uint64_t sent = next, slowest = (uint64_t)-1;
        for (uint64_t i = 0; i < pubs; i++) sent += shm[3 + i];
        for (uint64_t g = 0; g < groups; g++)
            if (shm[3 + pubs + g] < slowest) slowest = shm[3 + pubs + g];
        if (shm[2]) die("a subscriber failed");
        if (sent <= slowest + o.window) return;
        if (slowest != last) last = slowest, since = now();
        else if (now() - since > TIMEOUT) die("subscribers stopped at %llu", (unsigned long long)slowest);
        sleep_us(50);
    }
}

/* Handle what the server sent a publisher: PONGs free their batches. */
static void pub_input(Input *in, size_t *ring, size_t ring_cap, size_t *head, size_t tail,
                      size_t *unacked)
{
    Msg m;
    int f;
    while ((f = next_frame(in, &m)) != F_NONE) {
        if (f == F_PONG) {
            if (*head == tail) die("PONG without a PING");
            *unacked -= ring[*head];
            *head = (*head + 1) % ring_cap;
        } else if (f == F_PING) {
            send_all(in->fd, "PONG\r\n", 6);
        } else if (f == F_MSG) {
            die("publisher got a MSG");
        }
    }
}

static void run_pub(void)
{
    int fd = dial();
    Input in;
    unsigned id = (unsigned)o.id;
    uint64_t seq = 0, bytes = 0, sum = 0;
    /* about how many messages one batch holds, for the window */
    uint64_t per_batch = (uint64_t)o.batch / (uint64_t)((o.min + o.max) / 2 + 30) + 1;
    /* sizes of the batches not yet PONGed, oldest first (a ring) */
    size_t ring_cap = (size_t)(o.unacked / o.batch) + 8, head = 0, tail = 0, unacked = 0;
    size_t *ring = malloc(sizeof(size_t) * ring_cap);
    char *batch = malloc((size_t)o.batch + (size_t)o.max + 600);
    double start, deadline, end;
    if (!ring || !batch) die("out of memory");
    if (id < 1 || id >= MAX_PUBS || (shm && id > shm[0])) die("--id out of range");
    input_init(&in, fd);
    handshake(fd, &in, "");
    if (o.sync) wait_go();
    start = now();
    deadline = start + o.duration;
    while (o.count ? seq < o.count : now() < deadline) {
        char *p = batch;
        if (shm) wait_window(per_batch);
        while (p - batch < o.batch && (!o.count || seq < o.count))
            p = put_frame(p, 0, id, seq++, &bytes, &sum);
        memcpy(p, "PING\r\n", 6);
        p += 6;
        send_all(fd, batch, (size_t)(p - batch));
        if (shm) shm[3 + id - 1] = seq;
        ring[tail] = (size_t)(p - batch);
        tail = (tail + 1) % ring_cap;
        unacked += (size_t)(p - batch);
        /* Take the PONGs already here; block while too much is unacked. */
        for (;;) {
            int full = unacked > (size_t)o.unacked || (tail + 1) % ring_cap == head;
            if (!input_read(&in, full ? 0 : MSG_DONTWAIT)) break;
            pub_input(&in, ring, ring_cap, &head, tail, &unacked);
            if (!full) break;
        }
    }
    while (head != tail) {
        input_read(&in, 0);
        pub_input(&in, ring, ring_cap, &head, tail, &unacked);
    }
    end = now();
    printf("pub id=%u msgs=%llu bytes=%llu hash=%016llx start=%.6f end=%.6f cpu=%.3f\n", id,
           (unsigned long long)seq, (unsigned long long)bytes, (unsigned long long)sum, start,
           end, cpu_seconds());
    close(fd);
}

/* ---- sub ---------------------------------------------------------------- */

typedef struct {
    Input in;
    int group, pongs;
    uint64_t msgs, bytes, reads;
    int64_t last_seq[MAX_PUBS];
    uint64_t count[MAX_PUBS], sum[MAX_PUBS];
    double first, last;
    char *out;          /* --respond: replies to send after this read */
    size_t out_len;
} Conn;

/* Check one delivery against the traffic spec and the publisher's order. */
static void check_msg(Conn *c, int index, const Msg *m)
{
    int64_t id, seq;
    uint64_t h;
    int k;
    if (m->size < STAMP) die("conn %d: payload of %d bytes has no stamp", index, m->size);
    id = get_hex(m->payload, 4);
    seq = get_hex(m->payload + 4, 12);
    if (id <= 0 || id >= MAX_PUBS || seq < 0)
        die("conn %d: bad stamp %.16s after %llu messages", index, m->payload,
            (unsigned long long)c->msgs);
    h = mix((unsigned)id, (uint64_t)seq);
    k = subject_of(h);
    if (m->size != size_of(h))
        die("conn %d: pub %d seq %lld has %d bytes, sent %d", index, (int)id, (long long)seq,
            m->size, size_of(h));
    if (m->subj_len != subj_len[k] || memcmp(m->subj, subj[k], (size_t)subj_len[k]))
        die("conn %d: pub %d seq %lld on %.*s, sent to %s", index, (int)id, (long long)seq,
            m->subj_len, m->subj, subj[k]);
    if (m->sid_len != 1 || m->sid[0] != '1') die("conn %d: sid %.*s", index, m->sid_len, m->sid);
    if (o.reply) {
        if (!m->reply || m->reply_len != 24 || memcmp(m->reply, "_INBOX.", 7)
            || memcmp(m->reply + 7, m->payload, 4) || m->reply[11] != '.'
            || memcmp(m->reply + 12, m->payload + 4, 12))
            die("conn %d: pub %d seq %lld: reply subject '%.*s', sent _INBOX.%.4s.%.12s",
                index, (int)id, (long long)seq, m->reply_len, m->reply ? m->reply : "",
                m->payload, m->payload + 4);
    } else if (m->reply) {
        die("conn %d: unexpected reply subject %.*s", index, m->reply_len, m->reply);
    }
    if (o.queue ? seq <= c->last_seq[id] : seq != c->last_seq[id] + 1)
        die("conn %d: pub %d seq %lld after %lld: %s", index, (int)id, (long long)seq,
            (long long)c->last_seq[id],
            seq <= c->last_seq[id] ? "duplicate or reordered" : "lost messages");
    c->last_seq[id] = seq;
    c->count[id]++;
    c->sum[id] += h;
    c->msgs++;
    c->bytes += (uint64_t)m->size;
    if (o.respond) {
        char *p = c->out + c->out_len;
        if (!m->reply) die("conn %d: a request without a reply subject", index);
        memcpy(p, "PUB ", 4);
        memcpy(p + 4, m->reply, (size_t)m->reply_len);
        p += 4 + m->reply_len;
        *p++ = ' ';
        p = put_uint(p, (unsigned long)m->size);
        memcpy(p, "\r\n", 2);
        memcpy(p + 2, m->payload, (size_t)m->size);
        memcpy(p + 2 + m->size, "\r\n", 2);
        c->out_len = (size_t)(p + 4 + m->size - c->out);
    }
}

/* Parse and check everything whole in the connection's input. */
static void consume(Conn *c, int index)
{
    Msg m;
    int f;
    uint64_t before = c->msgs;
    while ((f = next_frame(&c->in, &m)) != F_NONE) {
        if (f == F_MSG) check_msg(c, index, &m);
        else if (f == F_PING) send_all(c->in.fd, "PONG\r\n", 6);
        else if (f == F_PONG) c->pongs++;
    }
    if (c->msgs != before) {
        c->last = now();
        if (!c->first) c->first = c->last;
    }
    if (c->out_len) {
        send_all(c->in.fd, c->out, c->out_len);
        c->out_len = 0;
    }
}

static void publish_groups(Conn *conns, int n)
{
    uint64_t base;
    if (!shm) return;
    base = 3 + shm[0];
    if (o.queue) {
        uint64_t total = 0;
        for (int i = 0; i < n; i++) total += conns[i].msgs;
        shm[base + (uint64_t)o.group] = total;
    } else {
        for (int i = 0; i < n; i++) shm[base + (uint64_t)(o.group + i)] = conns[i].msgs;
    }
}

static void run_sub(void)
{
    static Conn conns[MAX_CONNS];
    struct pollfd pfd[MAX_CONNS + 1];
    char ops[600];
    int n = o.conns, stop = 0;
    if (!o.sub) die("sub needs --sub SUBJECT");
    if (n < 1 || n > MAX_CONNS) die("--conns must be 1..%d", MAX_CONNS);
    if (shm && (uint64_t)o.group + (o.queue ? 1 : (uint64_t)n) > shm[1]) die("--group out of range");
    snprintf(ops, sizeof ops, "SUB %s %s%s1\r\n", o.sub, o.queue ? o.queue : "", o.queue ? " " : "");
    for (int i = 0; i < n; i++) {
        Conn *c = &conns[i];
        input_init(&c->in, dial());
        handshake(c->in.fd, &c->in, ops);
        c->group = o.queue ? o.group : o.group + i;
        for (int j = 0; j < MAX_PUBS; j++) c->last_seq[j] = -1;
        if (o.respond && !(c->out = malloc(BUF_CAP + BUF_CAP / 2))) die("out of memory");
        pfd[i].fd = c->in.fd;
        pfd[i].events = POLLIN;
    }
    pfd[n].fd = 0;
    pfd[n].events = POLLIN;
    printf("ready\n");
    fflush(stdout);
    while (!stop) {
        size_t got = 0;
        if (poll(pfd, (nfds_t)n + 1, 1000) < 0 && errno != EINTR) die("poll: %s", strerror(errno));
        for (int i = 0; i < n; i++) {
            if (!pfd[i].revents) continue;
            got += input_read(&conns[i].in, MSG_DONTWAIT);
            conns[i].reads++;
            consume(&conns[i], i);
        }
        publish_groups(conns, n);
        if (pfd[n].revents) stop = 1;
        else if (o.coalesce_us && got < 64 * 1024) sleep_us(o.coalesce_us);
    }
    /* Drain: a PING each; its PONG comes after every earlier delivery. */
    for (int i = 0; i < n; i++) {
        int pongs = conns[i].pongs;
        send_all(conns[i].in.fd, "PING\r\n", 6);
        while (conns[i].pongs == pongs) {
            input_read(&conns[i].in, 0);
            consume(&conns[i], i);
        }
    }
    publish_groups(conns, n);
    for (int i = 0; i < n; i++) {
        Conn *c = &conns[i];
        int comma = 0;
        printf("sub conn=%d group=%d msgs=%llu bytes=%llu first=%.6f last=%.6f reads=%llu", i,
               c->group, (unsigned long long)c->msgs, (unsigned long long)c->bytes, c->first,
               c->last, (unsigned long long)c->reads);
        if (i == 0) printf(" cpu=%.3f", cpu_seconds());
        printf(" pubs=");
        for (int j = 0; j < MAX_PUBS; j++)
            if (c->count[j]) {
                printf("%s%d:%llu:%016llx", comma++ ? "," : "", j, (unsigned long long)c->count[j],
                       (unsigned long long)c->sum[j]);
            }
        printf("\n");
    }
    fflush(stdout);
}

/* ---- req ---------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void run_req(void)
{
    int fd = dial(), f, got;
    unsigned id = (unsigned)o.id;
    char ops[64], inbox[32], *buf = malloc(MAX_PAYLOAD + 600), *payload, *end;
    double *lat = malloc(sizeof(double) * MAX_LATENCIES), deadline = 0, total = 0, t0;
    uint64_t seq, bytes = 0, sum = 0, n = 0;
    Input in;
    Msg m;
    if (!buf || !lat) die("out of memory");
    if (id < 1 || id >= MAX_PUBS) die("--id out of range");
    o.reply = 1;
    input_init(&in, fd);
    snprintf(ops, sizeof ops, "SUB _INBOX.%04x.* 1\r\n", id);
    handshake(fd, &in, ops);
    if (o.sync) wait_go();
    for (seq = 0; n < MAX_LATENCIES; seq++) {
        if (seq == WARMUP) deadline = now() + o.duration;
        else if (seq > WARMUP && now() >= deadline) break;
        end = put_frame(buf, 0, id, seq, &bytes, &sum);
        payload = (char *)memchr(buf, '\n', (size_t)(end - buf)) + 1;
        snprintf(inbox, sizeof inbox, "_INBOX.%04x.%012llx", id, (unsigned long long)seq);
        t0 = now();
        send_all(fd, buf, (size_t)(end - buf));
        for (got = 0; !got;) {
            while (!got && (f = next_frame(&in, &m)) != F_NONE) {
                if (f == F_PING) send_all(fd, "PONG\r\n", 6);
                if (f != F_MSG) continue;
                if (m.subj_len != 24 || memcmp(m.subj, inbox, 24) || m.reply
                    || m.size != (int)(end - 2 - payload)
                    || memcmp(m.payload, payload, (size_t)m.size))
                    die("request %llu: wrong reply on %.*s", (unsigned long long)seq,
                        m.subj_len, m.subj);
                got = 1;
            }
            if (!got) input_read(&in, 0);
        }
        if (seq >= WARMUP) {
            lat[n] = now() - t0;
            total += lat[n++];
        }
    }
    if (!n) die("no requests completed");
    qsort(lat, (size_t)n, sizeof(double), cmp_double);
    printf("req id=%u count=%llu p50=%.1f p99=%.1f rps=%.1f cpu=%.3f\n", id,
           (unsigned long long)n, lat[n / 2] * 1e6, lat[n * 99 / 100] * 1e6,
           (double)n / total, cpu_seconds());
    close(fd);
}

/* ---- speed -------------------------------------------------------------- */

/* The generator's and the checker's own rates, with no sockets: build PUBs
 * into a 64 MiB buffer; then build the matching MSG stream (untimed) and
 * check it as one subscriber would. */
static void run_speed(void)
{
    size_t cap = 64u << 20, room = cap - (size_t)o.max - 600;
    char *buf = malloc(cap), *p;
    uint64_t bytes = 0, sum = 0, n = 0, msgs;
    static Conn c;
    double t0, t1;
    if (!buf) die("out of memory");
    memset(buf, 0, cap);
    /* as run_pub does it: batches of --batch bytes in one reused buffer */
    for (t0 = now(), t1 = t0; t1 - t0 < 1.0; t1 = now())
        for (int b = 0; b < 64; b++)
            for (p = buf; p - buf < o.batch;) p = put_frame(p, 0, 1, n++, &bytes, &sum);
    printf("speed gen=%.0f", (double)n / (t1 - t0));
    for (p = buf, msgs = 0; (size_t)(p - buf) < room;) p = put_frame(p, 1, 1, msgs++, &bytes, &sum);
    c.in.fd = -1;
    c.in.buf = buf;
    c.in.pos = 0;
    c.in.len = (size_t)(p - buf);
    for (int j = 0; j < MAX_PUBS; j++) c.last_seq[j] = -1;
    t0 = now();
    consume(&c, 0);
    t1 = now();
    if (c.msgs != msgs) die("checked %llu of %llu", (unsigned long long)c.msgs,
                            (unsigned long long)msgs);
    printf(" check=%.0f\n", (double)msgs / (t1 - t0));
}

/* The MSG frames (sid 1) a subscriber would get for publisher --id's first
 * --count messages, on stdout; "frames msgs=N hash=SUM" on stderr. For
 * bench.py --self-test, which feeds them, with faults, to a subscriber. */
static void run_frames(void)
{
    char *buf = malloc((size_t)o.max + 600);
    uint64_t bytes = 0, sum = 0;
    unsigned id = (unsigned)o.id;
    if (!buf) die("out of memory");
    if (id < 1 || id >= MAX_PUBS) die("--id out of range");
    for (uint64_t seq = 0; seq < o.count; seq++) {
        char *end = put_frame(buf, 1, id, seq, &bytes, &sum);
        fwrite(buf, 1, (size_t)(end - buf), stdout);
    }
    fflush(stdout);
    fprintf(stderr, "frames msgs=%llu hash=%016llx\n", (unsigned long long)o.count,
            (unsigned long long)sum);
}

/* ---- sink --------------------------------------------------------------- */

/* A server that only answers PINGs and drops everything else, for the
 * publishers' ceiling (bench.py --sink). It logs the two lines bench.py
 * waits for, like nats-server. Every "\n" that ends "PING\r\n" (which may
 * straddle two reads) gets a PONG. */
static void run_sink(void)
{
    static char buf[RECV_CAP], tail[MAX_CONNS + 1][6];
    static const char info[] = "INFO {\"server_id\":\"loadgen-sink\",\"version\":\"0.0.0\","
                               "\"max_payload\":1048576}\r\n";
    struct pollfd pfd[MAX_CONNS + 1];
    struct sockaddr_in a;
    socklen_t alen = sizeof a;
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1, n = 1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)(o.port < 0 ? 0 : o.port));
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (inet_pton(AF_INET, o.host, &a.sin_addr) != 1 || bind(lfd, (struct sockaddr *)&a, sizeof a)
        || listen(lfd, 128) || getsockname(lfd, (struct sockaddr *)&a, &alen))
        die("cannot listen on %s:%d: %s", o.host, o.port, strerror(errno));
    fprintf(stderr, "[%d] [INF] Listening for client connections on %s:%d\n"
                    "[%d] [INF] Server is ready\n", (int)getpid(), o.host, ntohs(a.sin_port),
            (int)getpid());
    pfd[0].fd = lfd;
    pfd[0].events = POLLIN;
    for (;;) {
        if (poll(pfd, (nfds_t)n, -1) < 0 && errno != EINTR) die("poll: %s", strerror(errno));
        if (pfd[0].revents && n <= MAX_CONNS) {
            int fd = accept(lfd, NULL, NULL);
            if (fd >= 0) {
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                send_all(fd, info, sizeof info - 1);
                memset(tail[n], 0, 6);
                pfd[n].fd = fd;
                pfd[n++].events = POLLIN;
            }
        }
        for (int i = 1; i < n; i++) {
            ssize_t r;
            int pongs = 0;
            char *p, *end;
            if (!pfd[i].revents) continue;
            r = recv(pfd[i].fd, buf, sizeof buf, MSG_DONTWAIT);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r <= 0) {  /* closed: drop it */
                close(pfd[i].fd);
                pfd[i] = pfd[--n];
                memcpy(tail[i], tail[n], 6);
                i--;
                continue;
            }
            end = buf + r;
            for (p = buf; (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++) {
                char six[6];
                long have = p + 1 - buf;
                if (have >= 6) {
                    pongs += !memcmp(p - 5, "PING\r\n", 6);
                } else {
                    memcpy(six, tail[i] + have, (size_t)(6 - have));
                    memcpy(six + 6 - have, buf, (size_t)have);
                    pongs += !memcmp(six, "PING\r\n", 6);
                }
            }
            if (r >= 6) {
                memcpy(tail[i], end - 6, 6);
            } else {
                memmove(tail[i], tail[i] + r, (size_t)(6 - r));
                memcpy(tail[i] + 6 - r, buf, (size_t)r);
            }
            while (pongs > 0) {  /* a failed send: the next recv sees the close */
                char pong[6 * 64];
                int k = pongs < 64 ? pongs : 64;
                for (int j = 0; j < k; j++) memcpy(pong + 6 * j, "PONG\r\n", 6);
                if (send(pfd[i].fd, pong, (size_t)(6 * k), MSG_NOSIGNAL) < 0) break;
                pongs -= k;
            }
        }
    }
}

/* ---- command line ------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: loadgen pub|sub|req|speed [options]: see the comment at the top "
                    "of tests/loadgen.c\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2) usage();
    o.mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int flag = 1;
        if (!strcmp(k, "--reply")) o.reply = 1;
        else if (!strcmp(k, "--headers")) o.headers = 1;
        else if (!strcmp(k, "--respond")) o.respond = 1;
        else if (!strcmp(k, "--sync")) o.sync = 1;
        else if (!strcmp(k, "--ws")) o.ws = 1;
        else flag = 0;
        if (flag) continue;
        if (!v) usage();
        i++;
        if (!strcmp(k, "--host") || !strcmp(k, "-a")) o.host = v;
        else if (!strcmp(k, "--port") || !strcmp(k, "-p")) o.port = atoi(v);
        else if (!strcmp(k, "--id")) o.id = atoi(v);
        else if (!strcmp(k, "--prefix")) o.prefix = v;
        else if (!strcmp(k, "--subjects")) o.subjects = atoi(v);
        else if (!strcmp(k, "--size")) {
            o.min = o.max = atoi(v);
            if (strchr(v, '-')) o.max = atoi(strchr(v, '-') + 1);
        }
        else if (!strcmp(k, "--seed")) o.seed = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--duration")) o.duration = atof(v);
        else if (!strcmp(k, "--count")) o.count = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--batch")) o.batch = atol(v);
        else if (!strcmp(k, "--unacked")) o.unacked = atol(v);
        else if (!strcmp(k, "--shm")) o.shm = v;
        else if (!strcmp(k, "--window")) o.window = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--sub")) o.sub = v;
        else if (!strcmp(k, "--queue")) o.queue = v;
        else if (!strcmp(k, "--conns")) o.conns = atoi(v);
        else if (!strcmp(k, "--group")) o.group = atoi(v);
        else if (!strcmp(k, "--coalesce-us")) o.coalesce_us = atol(v);
        else usage();
    }
    if (o.batch < 1 || o.unacked < o.batch) die("need 1 <= --batch <= --unacked");
    if (o.ws && strcmp(o.mode, "pub") && strcmp(o.mode, "sub") && strcmp(o.mode, "req"))
        die("--ws is for pub, sub and req");
    setup_traffic();
    map_shm();
    if (!strcmp(o.mode, "pub")) run_pub();
    else if (!strcmp(o.mode, "sub")) run_sub();
    else if (!strcmp(o.mode, "req")) run_req();
    else if (!strcmp(o.mode, "speed")) run_speed();
    else if (!strcmp(o.mode, "sink")) run_sink();
    else if (!strcmp(o.mode, "frames")) run_frames();
    else usage();
    return 0;
}
