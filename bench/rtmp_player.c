/* rtmp_player: N light RTMP players of one live stream, for bench/rtmp_fanout.py.
 *
 * Build: gcc -O2 -Wall -o rtmp_player bench/rtmp_player.c   (libc only; the
 * benchmark compiles it into a temporary directory itself).
 *
 * Run:   rtmp_player [options] rtmp://127.0.0.1:PORT/APP/STREAM
 *   -n, --connections N   players to open (1..5000, default 1)
 *   --rate R              new connections per second (default 200)
 *   --seconds S           stop after S seconds (default: run until SIGTERM/SIGINT)
 *   --conn-arg STRING     an extra connect argument, sent as an AMF0 string
 *                         after the command object; repeatable (at most 16)
 *   --gap-factor F        an audio message whose timestamp is more than F x the
 *                         connection's median frame interval after the previous
 *                         one counts as a gap (default 1.5: one lost 23 ms AAC
 *                         frame is a 46 ms step); one before it, as "backwards"
 *   --lowat BYTES         once a player is playing, set SO_RCVLOWAT so that it
 *                         wakes up only when BYTES are waiting (default 0: off).
 *                         Fewer wake-ups and ACKs make the players cheaper, but
 *                         the server then sees fewer ACKs and the arrival gaps
 *                         measured grow by up to BYTES' worth of stream
 *   -v                    progress on stderr every second
 *
 * Each player: plain handshake (C0 = 3, C1 with a zero version field; any S1/S2
 * accepted, C2 = S1 echoed), connect('connect', 1, {app, flashVer 'LNX 9,0,124,2',
 * tcUrl}, conn-args...), Window Acknowledgement Size after connect's _result,
 * createStream, play(STREAM, -2000) on the stream id createStream returned and a
 * SetBufferLength, as ffmpeg's player does. Then it reads forever: chunk headers
 * of all 4 types, extended timestamps, Set Chunk Size, Abort; Ping Requests are
 * answered; an Acknowledgement is sent every half window the server asked for
 * (2,500,000 bytes until it asks).
 *
 * stdout gets JSON lines, flushed at once:
 *   {"event":"ready",...}  once, when every requested connection is playing
 *                          (onStatus NetStream.Play.Start or a first media
 *                          message) or has ended;
 *   {"event":"mark",...}   on SIGUSR1: the counts so far; a new measured window
 *                          starts there;
 *   {"event":"final",...}  on SIGTERM/SIGINT or after --seconds, then it exits.
 * "final" gives the window's per-connection audio messages (min/median/max over
 * the connections that were playing when it began), gaps, closes and bytes, and
 * totals since start. Every address must be on 127.0.0.0/8.
 *
 * Bounded: at most 5000 connections; one shared 64 KiB read buffer; per
 * connection a 4 KiB output buffer, a 2 KiB buffer for one control or command
 * message at a time (longer ones are skipped) and 8 chunk streams.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 5000
#define MAX_CONN_ARGS 16
#define MAX_CONN_ARGS_BYTES 1024
#define HS_SIZE 1536
#define OUT_MAX 4096
#define CMD_MAX 2048
#define MAX_CS 8
#define READ_BUF (64 * 1024)
#define READS_PER_WAKE 4
#define OUT_CHUNK 128
#define DELTAS 16
#define DEFAULT_WINDOW 2500000u
#define CLIENT_WINDOW 2500000u
#define MAX_IN_CHUNK (1u << 24)

enum { S_TCP, S_HANDSHAKE, S_CONNECT, S_CREATE, S_PLAY, S_PLAYING, S_CLOSED };
enum { P_BASIC, P_BASIC_EXT, P_HEADER, P_EXT_TS, P_PAYLOAD };

struct cstream {
    uint32_t csid;
    uint32_t ts;        /* the message's timestamp */
    uint32_t ts_field;  /* the last header's timestamp or delta (after extension) */
    uint32_t len;
    uint32_t got;       /* bytes of the current message read so far */
    uint32_t sid;
    uint8_t type;
    uint8_t ext;        /* the last type 0-2 header had an extended timestamp */
    uint8_t used;
};

struct conn {
    int fd;
    uint8_t state;
    uint8_t playing;        /* Play.Start or a first media message */
    uint8_t in_window;      /* was playing when the window (last mark) began */
    uint8_t want_out;       /* EPOLLOUT registered */
    uint32_t hs_got;        /* S0 + S1 + S2 bytes received */
    /* chunk parser */
    uint8_t pstate, fmt, hdr_need, hdr_got;
    uint8_t hdr[16];
    uint32_t csid;
    int cur;                /* index into cs of the current chunk's stream */
    uint32_t chunk_left;
    uint32_t in_chunk;
    struct cstream cs[MAX_CS];
    int cmd_owner;          /* the chunk stream whose message is buffered, -1: none */
    uint32_t cmd_len;
    uint8_t cmd[CMD_MAX];
    /* acknowledgements */
    uint32_t window;
    uint64_t rx, rx_acked;
    /* output */
    uint32_t out_len, out_off;
    uint8_t out[OUT_MAX];
    uint32_t stream_id;
    /* counts */
    uint64_t audio, video, data, bytes;
    uint64_t audio_mark, video_mark, data_mark, bytes_mark;
    uint32_t gaps, gaps_mark, backwards, backwards_mark, skipped;
    uint32_t last_ats;
    uint8_t have_ats, ndeltas, delta_pos;
    uint16_t deltas[DELTAS];
    uint32_t median;        /* ms; 0 until DELTAS/2 deltas were seen */
    uint32_t since_median;
    double last_audio_at;
    double max_arrival_gap; /* seconds, in the window */
    double closed_at;
};

static struct conn *conns;
static int n_requested = 1, n_opened;
static double rate = 200;
static double run_seconds = -1;
static double gap_factor = 1.5;
static int verbose;
static int lowat;
static struct sockaddr_in target;
static char host_text[64], app[256], stream_name[512], tcurl[400];
static const char *conn_args[MAX_CONN_ARGS];
static int n_conn_args;
static int epfd;
static uint8_t rbuf[READ_BUF];
static volatile sig_atomic_t stop_flag, mark_flag;
static double t_start, t_mark, now_s;
static int marked, ready_printed;
static uint64_t n_connected, n_handshaken, n_ever_played, n_closed, n_failed;
static uint64_t n_closed_in_window, n_status_errors, n_out_overflow;
static char first_error[160];
static uint32_t rng_state = 2463534242u;

static double mono(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu_self(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
}

static uint32_t xorshift(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

static void note_error(const char *what, int index) {
    if (!first_error[0])
        snprintf(first_error, sizeof first_error, "conn %d: %s", index, what);
}

static void on_signal(int signum) {
    if (signum == SIGUSR1)
        mark_flag = 1;
    else
        stop_flag = 1;
}

/* -- output ------------------------------------------------------------------ */

static void close_conn(struct conn *c, const char *why);

static void set_want_out(struct conn *c, int want) {
    if (c->want_out == want || c->fd < 0)
        return;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0),
                             .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = (uint8_t)want;
}

static void flush_out(struct conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (uint32_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_want_out(c, 1);
            return;
        }
        if (n < 0 && errno == EINTR)
            continue;
        close_conn(c, "send failed");
        return;
    }
    c->out_off = c->out_len = 0;
    set_want_out(c, 0);
}

static int out_room(struct conn *c, uint32_t need) {
    if (c->out_off && c->out_len + need > OUT_MAX) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    if (c->out_len + need > OUT_MAX) {
        n_out_overflow++;
        close_conn(c, "output buffer full");
        return 0;
    }
    return 1;
}

static void put_be(uint8_t *p, uint32_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint32_t get_be(const uint8_t *p, int bytes) {
    uint32_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = v << 8 | p[i];
    return v;
}

/* One message as chunks of OUT_CHUNK bytes: a type 0 header, then type 3 ones. */
static void send_msg(struct conn *c, uint32_t csid, uint8_t type, uint32_t sid, const uint8_t *body,
                     uint32_t len) {
    uint32_t chunks = len ? (len + OUT_CHUNK - 1) / OUT_CHUNK : 1;
    if (!out_room(c, 12 + len + (chunks - 1)))
        return;
    uint8_t *p = c->out + c->out_len;
    *p++ = (uint8_t)(csid & 0x3F);
    put_be(p, 0, 3), p += 3;
    put_be(p, len, 3), p += 3;
    *p++ = type;
    p[0] = (uint8_t)sid, p[1] = (uint8_t)(sid >> 8), p[2] = (uint8_t)(sid >> 16), p[3] = (uint8_t)(sid >> 24);
    p += 4;
    for (uint32_t off = 0; off < len; off += OUT_CHUNK) {
        if (off)
            *p++ = (uint8_t)(0xC0 | (csid & 0x3F));
        uint32_t n = len - off < OUT_CHUNK ? len - off : OUT_CHUNK;
        memcpy(p, body + off, n);
        p += n;
    }
    c->out_len = (uint32_t)(p - c->out);
}

static void send_control(struct conn *c, uint8_t type, uint32_t value) {
    uint8_t body[4];
    put_be(body, value, 4);
    send_msg(c, 2, type, 0, body, 4);
}

/* -- AMF0 ---------------------------------------------------------------------- */

struct amfw { uint8_t buf[CMD_MAX]; uint32_t len; int overflow; };

static void aw_bytes(struct amfw *w, const void *p, uint32_t n) {
    if (w->len + n > sizeof w->buf) {
        w->overflow = 1;
        return;
    }
    memcpy(w->buf + w->len, p, n);
    w->len += n;
}
static void aw_u8(struct amfw *w, uint8_t v) { aw_bytes(w, &v, 1); }
static void aw_key(struct amfw *w, const char *s) {
    uint8_t h[2];
    size_t n = strlen(s);
    put_be(h, (uint32_t)n, 2);
    aw_bytes(w, h, 2);
    aw_bytes(w, s, (uint32_t)n);
}
static void aw_string(struct amfw *w, const char *s) { aw_u8(w, 0x02); aw_key(w, s); }
static void aw_number(struct amfw *w, double d) {
    uint64_t bits;
    uint8_t b[8];
    memcpy(&bits, &d, 8);
    for (int i = 7; i >= 0; i--)
        b[i] = (uint8_t)bits, bits >>= 8;
    aw_u8(w, 0x00);
    aw_bytes(w, b, 8);
}
static void aw_null(struct amfw *w) { aw_u8(w, 0x05); }
static void aw_object_end(struct amfw *w) { aw_bytes(w, "\x00\x00\x09", 3); }

/* Skips one AMF0 value; NULL when it does not fit or nests deeper than 8. */
static const uint8_t *amf_skip(const uint8_t *p, const uint8_t *end, int depth) {
    if (p >= end || depth > 8)
        return NULL;
    uint8_t marker = *p++;
    switch (marker) {
    case 0x00: return end - p >= 8 ? p + 8 : NULL;
    case 0x01: return end - p >= 1 ? p + 1 : NULL;
    case 0x02:
        if (end - p < 2) return NULL;
        { uint32_t n = get_be(p, 2); p += 2; return (uint32_t)(end - p) >= n ? p + n : NULL; }
    case 0x0C:
        if (end - p < 4) return NULL;
        { uint32_t n = get_be(p, 4); p += 4; return (uint32_t)(end - p) >= n ? p + n : NULL; }
    case 0x05: case 0x06: case 0x0D: return p;
    case 0x07: return end - p >= 2 ? p + 2 : NULL;
    case 0x0B: return end - p >= 10 ? p + 10 : NULL;
    case 0x10:
        if (end - p < 2) return NULL;
        { uint32_t n = get_be(p, 2); p += 2; if ((uint32_t)(end - p) < n) return NULL; p += n; }
        /* fall through: the properties of a typed object */
    case 0x08:
        if (marker == 0x08) { if (end - p < 4) return NULL; p += 4; }
        /* fall through */
    case 0x03:
        for (int i = 0; i < 1024; i++) {
            if (end - p < 3) return NULL;
            uint32_t n = get_be(p, 2);
            if (n == 0 && p[2] == 0x09) return p + 3;
            p += 2;
            if ((uint32_t)(end - p) < n) return NULL;
            p += n;
            p = amf_skip(p, end, depth + 1);
            if (!p) return NULL;
        }
        return NULL;
    case 0x0A:
        if (end - p < 4) return NULL;
        {
            uint32_t n = get_be(p, 4);
            p += 4;
            if (n > 1024) return NULL;
            for (uint32_t i = 0; i < n && p; i++) p = amf_skip(p, end, depth + 1);
            return p;
        }
    default: return NULL;
    }
}

/* An AMF0 short string at p into out (NUL-terminated, cut to size); the next value, or NULL. */
static const uint8_t *amf_string(const uint8_t *p, const uint8_t *end, char *out, size_t size) {
    if (end - p < 3 || p[0] != 0x02)
        return NULL;
    uint32_t n = get_be(p + 1, 2);
    p += 3;
    if ((uint32_t)(end - p) < n)
        return NULL;
    size_t k = n < size - 1 ? n : size - 1;
    memcpy(out, p, k);
    out[k] = 0;
    return p + n;
}

static const uint8_t *amf_number(const uint8_t *p, const uint8_t *end, double *out) {
    if (end - p < 9 || p[0] != 0x00)
        return NULL;
    uint64_t bits = 0;
    for (int i = 1; i <= 8; i++)
        bits = bits << 8 | p[i];
    memcpy(out, &bits, 8);
    return p + 9;
}

/* The string property `key` of the AMF0 object at p into out; 1 if found. */
static int amf_object_string(const uint8_t *p, const uint8_t *end, const char *key, char *out, size_t size) {
    if (p >= end || (*p != 0x03 && *p != 0x08))
        return 0;
    p += *p == 0x08 ? 5 : 1;
    size_t klen = strlen(key);
    for (int i = 0; i < 256; i++) {
        if (end - p < 3) return 0;
        uint32_t n = get_be(p, 2);
        if (n == 0 && p[2] == 0x09) return 0;
        p += 2;
        if ((uint32_t)(end - p) < n) return 0;
        int match = n == klen && memcmp(p, key, n) == 0;
        p += n;
        if (match && p < end && *p == 0x02)
            return amf_string(p, end, out, size) != NULL;
        p = amf_skip(p, end, 1);
        if (!p) return 0;
    }
    return 0;
}

/* -- the player's commands ------------------------------------------------------ */

static void send_connect(struct conn *c) {
    struct amfw w = {.len = 0};
    aw_string(&w, "connect");
    aw_number(&w, 1);
    aw_u8(&w, 0x03);
    aw_key(&w, "app"), aw_string(&w, app);
    aw_key(&w, "flashVer"), aw_string(&w, "LNX 9,0,124,2");
    aw_key(&w, "tcUrl"), aw_string(&w, tcurl);
    aw_object_end(&w);
    for (int i = 0; i < n_conn_args; i++)
        aw_string(&w, conn_args[i]);
    if (w.overflow) {
        close_conn(c, "connect command too long");
        return;
    }
    send_msg(c, 3, 20, 0, w.buf, w.len);
    c->state = S_CONNECT;
}

static void send_create_stream(struct conn *c) {
    struct amfw w = {.len = 0};
    send_control(c, 5, CLIENT_WINDOW);  /* Window Acknowledgement Size, as ffmpeg answers */
    aw_string(&w, "createStream");
    aw_number(&w, 2);
    aw_null(&w);
    send_msg(c, 3, 20, 0, w.buf, w.len);
    c->state = S_CREATE;
}

static void send_play(struct conn *c) {
    struct amfw w = {.len = 0};
    aw_string(&w, "play");
    aw_number(&w, 3);
    aw_null(&w);
    aw_string(&w, stream_name);
    aw_number(&w, -2000);
    send_msg(c, 8, 20, c->stream_id, w.buf, w.len);
    uint8_t body[10];
    put_be(body, 3, 2);               /* User Control SetBufferLength */
    put_be(body + 2, c->stream_id, 4);
    put_be(body + 6, 3000, 4);
    send_msg(c, 2, 4, 0, body, 10);
    c->state = S_PLAY;
}

static void became_playing(struct conn *c) {
    if (c->playing)
        return;
    c->playing = 1;
    c->state = S_PLAYING;
    n_ever_played++;
    if (lowat > 0)
        setsockopt(c->fd, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof lowat);
}

/* -- messages ---------------------------------------------------------------------- */

static void on_audio(struct conn *c, uint32_t ts) {
    c->audio++;
    if (c->have_ats) {
        int32_t d = (int32_t)(ts - c->last_ats);
        if (d < 0) {
            c->backwards++;
        } else {
            if (c->median && (double)d > gap_factor * c->median)
                c->gaps++;
            c->deltas[c->delta_pos] = d > 0xFFFF ? 0xFFFF : (uint16_t)d;
            c->delta_pos = (uint8_t)((c->delta_pos + 1) % DELTAS);
            if (c->ndeltas < DELTAS)
                c->ndeltas++;
            if (c->ndeltas >= DELTAS / 2 && (c->median == 0 || ++c->since_median >= 64)) {
                uint16_t s[DELTAS];
                int n = c->ndeltas;
                memcpy(s, c->deltas, sizeof s);
                for (int i = 1; i < n; i++) /* insertion sort of at most 16 */
                    for (int j = i; j > 0 && s[j - 1] > s[j]; j--) {
                        uint16_t t = s[j]; s[j] = s[j - 1]; s[j - 1] = t;
                    }
                c->median = s[n / 2];
                c->since_median = 0;
            }
        }
        double gap = now_s - c->last_audio_at;
        if (gap > c->max_arrival_gap)
            c->max_arrival_gap = gap;
    }
    c->have_ats = 1;
    c->last_ats = ts;
    c->last_audio_at = now_s;
}

static void on_command(struct conn *c, const uint8_t *p, uint32_t len) {
    const uint8_t *end = p + len;
    char name[32];
    double trans = 0;
    const uint8_t *q = amf_string(p, end, name, sizeof name);
    if (!q)
        return;
    if (q < end && *q == 0x00)
        q = amf_number(q, end, &trans);
    if (!strcmp(name, "_result")) {
        if (!q) return;
        if (c->state == S_CONNECT && trans == 1) {
            send_create_stream(c);
        } else if (c->state == S_CREATE && trans == 2) {
            const uint8_t *r = amf_skip(q, end, 0);  /* the command object (null) */
            double sid = 0;
            if (!r || !amf_number(r, end, &sid) || sid < 0 || sid > 0xFFFFFF) {
                close_conn(c, "createStream _result without a stream id");
                return;
            }
            c->stream_id = (uint32_t)sid;
            send_play(c);
        }
    } else if (!strcmp(name, "_error")) {
        char code[96] = "";
        const uint8_t *r = q ? amf_skip(q, end, 0) : NULL;
        if (r) amf_object_string(r, end, "code", code, sizeof code);
        char why[128];
        snprintf(why, sizeof why, "_error %s", code);
        n_status_errors++;
        close_conn(c, why);
    } else if (!strcmp(name, "onStatus")) {
        char code[96] = "", level[32] = "";
        const uint8_t *r = q ? amf_skip(q, end, 0) : NULL;
        if (!r) return;
        amf_object_string(r, end, "code", code, sizeof code);
        amf_object_string(r, end, "level", level, sizeof level);
        if (!strcmp(code, "NetStream.Play.Start")) {
            became_playing(c);
        } else if (!strcmp(level, "error")) {
            char why[128];
            snprintf(why, sizeof why, "onStatus %s", code);
            n_status_errors++;
            close_conn(c, why);
        }
    } else if (!strcmp(name, "close")) {
        close_conn(c, "server sent close");
    }
}

static void dispatch(struct conn *c, struct cstream *s, const uint8_t *body, uint32_t len) {
    switch (s->type) {
    case 1:
        if (body && len >= 4) {
            uint32_t v = get_be(body, 4) & 0x7FFFFFFF;
            if (v < 1 || v > MAX_IN_CHUNK) {
                close_conn(c, "bad Set Chunk Size");
                return;
            }
            c->in_chunk = v;
        }
        break;
    case 2:
        if (body && len >= 4) {
            uint32_t id = get_be(body, 4);
            for (int i = 0; i < MAX_CS; i++)
                if (c->cs[i].used && c->cs[i].csid == id) {
                    c->cs[i].got = 0;
                    if (c->cmd_owner == i) c->cmd_owner = -1;
                }
        }
        break;
    case 4:
        if (body && len >= 6 && get_be(body, 2) == 6) {  /* Ping Request -> Ping Response */
            uint8_t r[6];
            put_be(r, 7, 2);
            memcpy(r + 2, body + 2, 4);
            send_msg(c, 2, 4, 0, r, 6);
        }
        break;
    case 5:
        if (body && len >= 4) c->window = get_be(body, 4);
        break;
    case 8:
        on_audio(c, s->ts);
        became_playing(c);
        break;
    case 9:
        c->video++;
        became_playing(c);
        break;
    case 15: case 18:
        c->data++;
        break;
    case 17:
        if (body && len > 1) on_command(c, body + 1, len - 1);
        break;
    case 20:
        if (body) on_command(c, body, len);
        break;
    }
}

static int wants_body(uint8_t type) {
    return (type >= 1 && type <= 6) || type == 17 || type == 20;
}

static int find_cs(struct conn *c, uint32_t csid) {
    int free_slot = -1;
    for (int i = 0; i < MAX_CS; i++) {
        if (c->cs[i].used && c->cs[i].csid == csid)
            return i;
        if (!c->cs[i].used && free_slot < 0)
            free_slot = i;
    }
    if (free_slot >= 0) {
        memset(&c->cs[free_slot], 0, sizeof c->cs[free_slot]);
        c->cs[free_slot].used = 1;
        c->cs[free_slot].csid = csid;
    }
    return free_slot;
}

/* The chunk header is complete: apply it and start (or continue) its message. */
static int header_done(struct conn *c) {
    struct cstream *s = &c->cs[c->cur];
    const uint8_t *h = c->hdr;
    int starts = 1;
    uint32_t field = 0;
    if (c->fmt <= 2) {
        field = get_be(h, 3);
        if (c->fmt <= 1) {
            s->len = get_be(h + 3, 3);
            s->type = h[6];
        }
        if (c->fmt == 0)
            s->sid = h[7] | h[8] << 8 | h[9] << 16 | (uint32_t)h[10] << 24;
        s->ext = field == 0xFFFFFF;
        if (s->ext)
            field = get_be(h + c->hdr_need - 4, 4);
        s->ts_field = field;
        s->ts = c->fmt == 0 ? field : s->ts + field;
    } else {
        starts = s->got == 0 || s->got >= s->len;
        if (starts)
            s->ts += s->ts_field;
    }
    if (starts) {
        if (c->cmd_owner == c->cur)
            c->cmd_owner = -1;  /* a message cut short by a new header: it is dropped */
        s->got = 0;
        if (wants_body(s->type)) {
            if (c->cmd_owner < 0 && s->len <= CMD_MAX) {
                c->cmd_owner = c->cur;
                c->cmd_len = 0;
            } else {
                c->skipped++;
            }
        }
        if (s->len == 0) {
            dispatch(c, s, c->cmd_owner == c->cur ? c->cmd : NULL, 0);
            if (c->cmd_owner == c->cur) c->cmd_owner = -1;
            return 0;
        }
    }
    uint32_t left = s->len - s->got;
    c->chunk_left = left < c->in_chunk ? left : c->in_chunk;
    return 1;
}

static void parse(struct conn *c, const uint8_t *p, size_t n) {
    static const uint8_t header_size[4] = {11, 7, 3, 0};
    while (n > 0 && c->state != S_CLOSED) {
        switch (c->pstate) {
        case P_BASIC: {
            uint8_t b = *p++;
            n--;
            c->fmt = b >> 6;
            c->csid = b & 0x3F;
            c->hdr_got = 0;
            if (c->csid < 2) {
                c->hdr_need = c->csid == 0 ? 1 : 2;
                c->pstate = P_BASIC_EXT;
                break;
            }
            goto basic_done;
        }
        case P_BASIC_EXT:
            c->hdr[c->hdr_got++] = *p++;
            n--;
            if (c->hdr_got < c->hdr_need)
                break;
            c->csid = 64 + c->hdr[0] + (c->hdr_need == 2 ? c->hdr[1] * 256u : 0);
        basic_done:
            c->cur = find_cs(c, c->csid);
            if (c->cur < 0) {
                close_conn(c, "more than 8 chunk streams");
                return;
            }
            c->hdr_got = 0;
            c->hdr_need = header_size[c->fmt];
            if (c->fmt == 3 && c->cs[c->cur].ext)
                c->hdr_need = 4;
            c->pstate = P_HEADER;
            if (c->hdr_need == 0 && !header_done(c)) {
                c->pstate = P_BASIC;
                break;
            }
            if (c->hdr_need == 0)
                c->pstate = P_PAYLOAD;
            break;
        case P_HEADER: {
            size_t k = c->hdr_need - c->hdr_got;
            if (k > n) k = n;
            memcpy(c->hdr + c->hdr_got, p, k);
            c->hdr_got += (uint8_t)k, p += k, n -= k;
            if (c->hdr_got < c->hdr_need)
                break;
            if (c->fmt <= 2 && c->hdr_need == header_size[c->fmt] && get_be(c->hdr, 3) == 0xFFFFFF) {
                c->hdr_need += 4;  /* the extended timestamp follows */
                break;
            }
            c->pstate = header_done(c) ? P_PAYLOAD : P_BASIC;
            break;
        }
        case P_PAYLOAD: {
            struct cstream *s = &c->cs[c->cur];
            size_t k = c->chunk_left < n ? c->chunk_left : n;
            if (c->cmd_owner == c->cur)
                memcpy(c->cmd + s->got, p, k);
            s->got += (uint32_t)k, c->chunk_left -= (uint32_t)k, p += k, n -= k;
            if (c->chunk_left)
                break;
            c->pstate = P_BASIC;
            if (s->got >= s->len) {
                int owned = c->cmd_owner == c->cur;
                if (owned) c->cmd_owner = -1;
                dispatch(c, s, owned ? c->cmd : NULL, s->len);
            }
            break;
        }
        }
    }
}

/* -- connections ----------------------------------------------------------------------- */

static void close_conn(struct conn *c, const char *why) {
    if (c->state == S_CLOSED)
        return;
    int index = (int)(c - conns);
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (c->playing) {
        n_closed++;
        if (c->in_window || !marked)
            n_closed_in_window++;
    } else {
        n_failed++;
    }
    note_error(why, index);
    if (verbose)
        fprintf(stderr, "rtmp_player: conn %d closed: %s\n", index, why);
    c->state = S_CLOSED;
    c->closed_at = now_s;
}

static void open_conn(int index) {
    struct conn *c = &conns[index];
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->cmd_owner = -1;
    c->in_chunk = 128;
    c->window = DEFAULT_WINDOW;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        c->state = S_TCP;
        close_conn(c, strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->state = S_TCP;
    if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS) {
        close_conn(c, strerror(errno));
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.u32 = (uint32_t)index};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    c->want_out = 1;
}

static void on_connected(struct conn *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        close_conn(c, strerror(err));
        return;
    }
    n_connected++;
    c->state = S_HANDSHAKE;
    uint8_t *p = c->out;
    p[0] = 3;                     /* C0 */
    memset(p + 1, 0, 8);          /* C1: time 0, version 0 (plain handshake) */
    for (int i = 9; i < 1 + HS_SIZE; i += 4) {
        uint32_t r = xorshift();
        memcpy(p + i, &r, 4);
    }
    c->out_len = 1 + HS_SIZE;
    c->out_off = 0;
    flush_out(c);
}

static void on_handshake_bytes(struct conn *c, const uint8_t **pp, size_t *np) {
    const uint8_t *p = *pp;
    size_t n = *np;
    if (c->hs_got == 0 && n) {    /* S0: any version */
        c->hs_got = 1, p++, n--;
    }
    if (c->hs_got < 1 + HS_SIZE && n) {  /* S1, echoed as C2 */
        size_t k = 1 + HS_SIZE - c->hs_got;
        if (k > n) k = n;
        if (!out_room(c, (uint32_t)k))
            return;
        memcpy(c->out + c->out_len, p, k);
        c->out_len += (uint32_t)k;
        c->hs_got += (uint32_t)k, p += k, n -= k;
        if (c->hs_got == 1 + HS_SIZE)
            flush_out(c);
    }
    if (c->hs_got >= 1 + HS_SIZE && c->hs_got < 1 + 2 * HS_SIZE && n) {  /* S2: not checked */
        size_t k = 1 + 2 * HS_SIZE - c->hs_got;
        if (k > n) k = n;
        c->hs_got += (uint32_t)k, p += k, n -= k;
        if (c->hs_got == 1 + 2 * HS_SIZE) {
            n_handshaken++;
            send_connect(c);
        }
    }
    *pp = p;
    *np = n;
}

static void on_readable(struct conn *c) {
    for (int r = 0; r < READS_PER_WAKE && c->state != S_CLOSED; r++) {
        ssize_t got = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (got == 0) {
            close_conn(c, "closed by the server");
            return;
        }
        if (got < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno == EINTR)
                continue;
            close_conn(c, strerror(errno));
            return;
        }
        c->bytes += (uint64_t)got;
        c->rx += (uint64_t)got;
        const uint8_t *p = rbuf;
        size_t n = (size_t)got;
        if (c->state == S_HANDSHAKE)
            on_handshake_bytes(c, &p, &n);
        if (n && c->state != S_CLOSED && c->state != S_HANDSHAKE)
            parse(c, p, n);
        if (c->state == S_CLOSED)
            return;
        if (c->window && c->rx - c->rx_acked >= c->window / 2) {
            send_control(c, 3, (uint32_t)c->rx);  /* Acknowledgement: bytes received so far */
            c->rx_acked = c->rx;
        }
        if (c->out_len > c->out_off)
            flush_out(c);
        if ((size_t)got < sizeof rbuf)
            break;
    }
}

/* -- reports ------------------------------------------------------------------------------ */

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *event) {
    static uint64_t audio_w[MAX_CONNS], data_w[MAX_CONNS];
    static uint32_t medians[MAX_CONNS];
    uint64_t total_audio = 0, total_video = 0, total_data = 0, total_bytes = 0;
    uint64_t w_audio = 0, w_bytes = 0, w_gaps = 0, w_back = 0, w_video = 0, w_data = 0;
    uint64_t playing_now = 0, skipped = 0, stalls = 0;
    double max_gap = 0;
    int nw = 0, nm = 0;
    for (int i = 0; i < n_opened; i++) {
        struct conn *c = &conns[i];
        total_audio += c->audio, total_video += c->video, total_data += c->data;
        total_bytes += c->bytes, skipped += c->skipped;
        if (c->playing && c->state != S_CLOSED)
            playing_now++;
        if (c->median)
            medians[nm++] = c->median;
        int counted = marked ? c->in_window : c->playing;
        if (!counted)
            continue;
        audio_w[nw] = c->audio - c->audio_mark;
        data_w[nw] = c->data - c->data_mark;
        nw++;
        w_audio += c->audio - c->audio_mark;
        w_video += c->video - c->video_mark;
        w_data += c->data - c->data_mark;
        w_bytes += c->bytes - c->bytes_mark;
        w_gaps += c->gaps - c->gaps_mark;
        w_back += c->backwards - c->backwards_mark;
        double g = c->max_arrival_gap;
        if (c->state != S_CLOSED && now_s - c->last_audio_at > g && c->have_ats)
            g = now_s - c->last_audio_at;
        if (g > max_gap) max_gap = g;
        if (g > 0.5) stalls++;
    }
    qsort(audio_w, (size_t)nw, sizeof audio_w[0], cmp_u64);
    qsort(data_w, (size_t)nw, sizeof data_w[0], cmp_u64);
    qsort(medians, (size_t)nm, sizeof medians[0], cmp_u32);
    double window = now_s - (marked ? t_mark : t_start);
    printf("{\"event\":\"%s\",\"requested\":%d,\"opened\":%d,\"connected\":%llu,\"handshaken\":%llu,"
           "\"ever_playing\":%llu,\"playing\":%llu,\"closed\":%llu,\"failed\":%llu,\"status_errors\":%llu,"
           "\"closed_in_window\":%llu,\"elapsed_s\":%.3f,\"window_s\":%.3f,\"window_players\":%d,"
           "\"audio\":%llu,\"video\":%llu,\"data\":%llu,\"bytes\":%llu,"
           "\"window_audio\":%llu,\"window_video\":%llu,\"window_data\":%llu,\"window_bytes\":%llu,"
           "\"audio_min\":%llu,\"audio_median\":%llu,\"audio_max\":%llu,"
           "\"data_min\":%llu,\"data_median\":%llu,\"data_max\":%llu,"
           "\"gaps\":%llu,\"backwards\":%llu,\"frame_interval_ms\":%u,\"max_arrival_gap_ms\":%.1f,"
           "\"stalled_players\":%llu,\"skipped_messages\":%llu,\"output_overflows\":%llu,"
           "\"cpu_s\":%.3f,\"first_error\":\"",
           event, n_requested, n_opened, (unsigned long long)n_connected,
           (unsigned long long)n_handshaken, (unsigned long long)n_ever_played,
           (unsigned long long)playing_now, (unsigned long long)n_closed,
           (unsigned long long)n_failed, (unsigned long long)n_status_errors,
           (unsigned long long)n_closed_in_window, now_s - t_start, window, nw,
           (unsigned long long)total_audio, (unsigned long long)total_video,
           (unsigned long long)total_data, (unsigned long long)total_bytes,
           (unsigned long long)w_audio, (unsigned long long)w_video, (unsigned long long)w_data,
           (unsigned long long)w_bytes,
           (unsigned long long)(nw ? audio_w[0] : 0), (unsigned long long)(nw ? audio_w[nw / 2] : 0),
           (unsigned long long)(nw ? audio_w[nw - 1] : 0), (unsigned long long)(nw ? data_w[0] : 0),
           (unsigned long long)(nw ? data_w[nw / 2] : 0), (unsigned long long)(nw ? data_w[nw - 1] : 0),
           (unsigned long long)w_gaps, (unsigned long long)w_back, nm ? medians[nm / 2] : 0,
           max_gap * 1e3, (unsigned long long)stalls, (unsigned long long)skipped,
           (unsigned long long)n_out_overflow, cpu_self());
    for (const char *s = first_error; *s; s++)  /* JSON-safe: printable ASCII only */
        putchar(*s == '"' || *s == '\\' || *s < 0x20 || *s > 0x7E ? '?' : *s);
    printf("\"}\n");
    fflush(stdout);
}

static void mark_window(void) {
    for (int i = 0; i < n_opened; i++) {
        struct conn *c = &conns[i];
        c->in_window = c->playing && c->state != S_CLOSED;
        c->audio_mark = c->audio, c->video_mark = c->video, c->data_mark = c->data;
        c->bytes_mark = c->bytes, c->gaps_mark = c->gaps, c->backwards_mark = c->backwards;
        c->max_arrival_gap = 0;
        if (c->have_ats)
            c->last_audio_at = now_s;  /* gaps in arrival are measured from the mark */
    }
    n_closed_in_window = 0;
    marked = 1;
    t_mark = now_s;
}

static int settled(void) {
    if (n_opened < n_requested)
        return 0;
    for (int i = 0; i < n_opened; i++)
        if (!conns[i].playing && conns[i].state != S_CLOSED)
            return 0;
    return 1;
}

/* -- main ---------------------------------------------------------------------------------- */

static void usage(void) {
    fprintf(stderr, "usage: rtmp_player [-n N] [--rate R] [--seconds S] [--conn-arg STRING]..."
                    " [--gap-factor F] [--lowat BYTES] [-v] rtmp://127.x.x.x[:port]/app/stream\n");
    exit(2);
}

static void parse_url(const char *url) {
    if (strncmp(url, "rtmp://", 7) != 0) usage();
    const char *h = url + 7, *slash = strchr(h, '/');
    if (!slash) usage();
    const char *colon = memchr(h, ':', (size_t)(slash - h));
    size_t hl = (size_t)((colon ? colon : slash) - h);
    if (hl == 0 || hl >= sizeof host_text) usage();
    memcpy(host_text, h, hl);
    host_text[hl] = 0;
    long port = 1935;
    if (colon) {
        char *e;
        port = strtol(colon + 1, &e, 10);
        if (e != slash || port < 1 || port > 65535) usage();
    }
    const char *a = slash + 1, *s = strchr(a, '/');
    if (!s || s == a || !s[1]) usage();
    if ((size_t)(s - a) >= sizeof app || strlen(s + 1) >= sizeof stream_name) usage();
    memcpy(app, a, (size_t)(s - a));
    app[s - a] = 0;
    strcpy(stream_name, s + 1);
    snprintf(tcurl, sizeof tcurl, "rtmp://%s:%ld/%s", host_text, port, app);
    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)port);
    const char *numeric = strcmp(host_text, "localhost") ? host_text : "127.0.0.1";
    if (inet_pton(AF_INET, numeric, &target.sin_addr) != 1 || (ntohl(target.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "rtmp_player: only 127.0.0.0/8 addresses are allowed, not %s\n", host_text);
        exit(2);
    }
}

int main(int argc, char **argv) {
    const char *url = NULL;
    size_t arg_bytes = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if ((!strcmp(a, "-n") || !strcmp(a, "--connections")) && more) n_requested = atoi(argv[++i]);
        else if (!strcmp(a, "--rate") && more) rate = atof(argv[++i]);
        else if (!strcmp(a, "--seconds") && more) run_seconds = atof(argv[++i]);
        else if (!strcmp(a, "--gap-factor") && more) gap_factor = atof(argv[++i]);
        else if (!strcmp(a, "--lowat") && more) lowat = atoi(argv[++i]);
        else if (!strcmp(a, "--conn-arg") && more) {
            if (n_conn_args >= MAX_CONN_ARGS || (arg_bytes += strlen(argv[i + 1]) + 3) > MAX_CONN_ARGS_BYTES) {
                fprintf(stderr, "rtmp_player: at most %d connect arguments, %d bytes\n", MAX_CONN_ARGS,
                        MAX_CONN_ARGS_BYTES);
                return 2;
            }
            conn_args[n_conn_args++] = argv[++i];
        } else if (!strcmp(a, "-v")) verbose = 1;
        else if (a[0] == '-' || url) usage();
        else url = a;
    }
    if (!url || n_requested < 1 || n_requested > MAX_CONNS || !(rate > 0) || rate > 100000 || !(gap_factor > 1) ||
        lowat < 0 || lowat > 1 << 20)
        usage();
    parse_url(url);

    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < (rlim_t)n_requested + 64) {
        lim.rlim_cur = lim.rlim_max < (rlim_t)n_requested + 64 ? lim.rlim_max : (rlim_t)n_requested + 64;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
    conns = calloc((size_t)n_requested, sizeof *conns);
    if (!conns) {
        fprintf(stderr, "rtmp_player: out of memory\n");
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;  /* no SA_RESTART: epoll_wait returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) {
        perror("epoll_create1");
        return 1;
    }
    rng_state ^= (uint32_t)getpid() * 2654435761u;
    t_start = now_s = mono();
    double last_progress = t_start;
    struct epoll_event events[256];
    while (!stop_flag) {
        now_s = mono();
        if (run_seconds >= 0 && now_s - t_start >= run_seconds)
            break;
        int due = (int)((now_s - t_start) * rate) + 1;
        if (due > n_requested) due = n_requested;
        while (n_opened < due)
            open_conn(n_opened++);
        if (mark_flag) {
            mark_flag = 0;
            report("mark");
            mark_window();
        }
        if (!ready_printed && settled()) {
            ready_printed = 1;
            report("ready");
        }
        if (verbose && now_s - last_progress >= 1.0) {
            last_progress = now_s;
            fprintf(stderr, "rtmp_player: %.1fs opened %d connected %llu playing %llu closed %llu failed %llu\n",
                    now_s - t_start, n_opened, (unsigned long long)n_connected,
                    (unsigned long long)n_ever_played, (unsigned long long)n_closed,
                    (unsigned long long)n_failed);
        }
        int timeout = n_opened < n_requested ? 2 : 100;
        int k = epoll_wait(epfd, events, 256, timeout);
        if (k < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            break;
        }
        now_s = mono();
        for (int e = 0; e < k; e++) {
            struct conn *c = &conns[events[e].data.u32];
            uint32_t ev = events[e].events;
            if (c->state == S_CLOSED)
                continue;
            if (c->state == S_TCP) {
                if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
                    on_connected(c);
                if (c->state == S_CLOSED)
                    continue;
            } else if (ev & EPOLLOUT) {
                flush_out(c);
            }
            if (c->state != S_CLOSED && (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
                on_readable(c);
        }
    }
    now_s = mono();
    report("final");
    return 0;
}
