/* The kernel's share of a ping-pong round trip, without Python, TLS or WebSocket: a TCP echo server in C that waits
 * one of three ways, and a client that sends 100 bytes, waits for them back, and spins for a while (standing in for
 * the load client's own work, so that the server goes to sleep between messages as it does in `uringws bench`).
 *
 *   wake_floor server epoll PORT    epoll_wait, then recv() and send(): the way uvloop (and picows on it) waits
 *   wake_floor server uring PORT    io_uring: multishot RECV into a provided buffer ring, the wait in
 *                                   io_uring_enter(GETEVENTS), send() direct: the way uringws's loop waits
 *   wake_floor server uring-defer PORT   the same ring with SINGLE_ISSUER | DEFER_TASKRUN instead of COOP_TASKRUN
 *   wake_floor client PORT SECONDS SPIN_US   prints the round trips it made
 *
 * benchmarks/wake_floor.py compiles this, runs the modes against the same client and reports the server's CPU time
 * per round trip. Only x86-64/arm64 Linux with the io_uring UAPI header is supported (it is a benchmark). */
#define _GNU_SOURCE
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

enum { SIZE = 100, NBUF = 16, BUFSZ = 16384 };

static void die(const char *what) {
    perror(what);
    exit(1);
}

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* After the peer closes, the server waits to be killed: its CPU time is read while it still exists. */
static void idle_forever(void) {
    for (;;)
        pause();
}

static void serve_epoll(int c) {
    char buf[65536];
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = c};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) < 0)
        die("epoll");
    for (;;) {
        struct epoll_event out[8];
        if (epoll_wait(ep, out, 8, -1) <= 0)
            continue;
        ssize_t r = recv(c, buf, sizeof buf, MSG_DONTWAIT);
        if (r == 0)
            idle_forever();
        if (r > 0 && send(c, buf, (size_t)r, MSG_NOSIGNAL) != r)
            die("send");
    }
}

struct ring {
    int fd;
    unsigned *sq_tail, *sq_array, sq_mask, *cq_head, *cq_tail, cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
};

static void queue_recv(struct ring *r, int c) {
    unsigned t = *r->sq_tail;
    struct io_uring_sqe *s = &r->sqes[t & r->sq_mask];
    memset(s, 0, sizeof *s);
    s->opcode = IORING_OP_RECV;
    s->fd = c;
    s->ioprio = IORING_RECV_MULTISHOT;
    s->flags = IOSQE_BUFFER_SELECT;
    s->buf_group = 1;
    r->sq_array[t & r->sq_mask] = t & r->sq_mask;
    atomic_store_explicit((_Atomic unsigned *)r->sq_tail, t + 1, memory_order_release);
}

static void serve_uring(int c, unsigned flags) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = flags;
    struct ring r;
    r.fd = (int)syscall(__NR_io_uring_setup, 64, &p);
    if (r.fd < 0)
        die("io_uring_setup");
    size_t sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    char *rings = mmap(NULL, sq_size > cq_size ? sq_size : cq_size, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_POPULATE, r.fd, IORING_OFF_SQ_RING);
    r.sqes = mmap(NULL, p.sq_entries * sizeof *r.sqes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r.fd,
                  IORING_OFF_SQES);
    if (rings == MAP_FAILED || r.sqes == MAP_FAILED)
        die("mmap");
    r.sq_tail = (unsigned *)(rings + p.sq_off.tail);
    r.sq_array = (unsigned *)(rings + p.sq_off.array);
    r.sq_mask = *(unsigned *)(rings + p.sq_off.ring_mask);
    r.cq_head = (unsigned *)(rings + p.cq_off.head);
    r.cq_tail = (unsigned *)(rings + p.cq_off.tail);
    r.cq_mask = *(unsigned *)(rings + p.cq_off.ring_mask);
    r.cqes = (struct io_uring_cqe *)(rings + p.cq_off.cqes);

    struct io_uring_buf_ring *br = mmap(NULL, NBUF * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
                                        MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    char *bufs = aligned_alloc(4096, NBUF * BUFSZ);
    if (br == MAP_FAILED || bufs == NULL)
        die("buffers");
    struct io_uring_buf_reg reg = {.ring_addr = (unsigned long)br, .ring_entries = NBUF, .bgid = 1};
    if (syscall(__NR_io_uring_register, r.fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0)
        die("IORING_REGISTER_PBUF_RING");
    unsigned short br_tail = 0;
    for (int i = 0; i < NBUF; i++, br_tail++) {
        struct io_uring_buf *b = &br->bufs[br_tail & (NBUF - 1)];
        b->addr = (unsigned long)(bufs + i * BUFSZ);
        b->len = BUFSZ;
        b->bid = (unsigned short)i;
    }
    atomic_store_explicit((_Atomic unsigned short *)&br->tail, br_tail, memory_order_release);

    queue_recv(&r, c);
    unsigned to_submit = 1;
    for (;;) {
        if (syscall(__NR_io_uring_enter, r.fd, to_submit, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
            continue;
        to_submit = 0;
        unsigned head = *r.cq_head;
        unsigned tail = atomic_load_explicit((_Atomic unsigned *)r.cq_tail, memory_order_acquire);
        for (; head != tail; head++) {
            struct io_uring_cqe *e = &r.cqes[head & r.cq_mask];
            if (e->res == 0)
                idle_forever();
            if (e->res < 0) {
                fprintf(stderr, "recv: %s\n", strerror(-e->res));
                exit(1);
            }
            unsigned bid = e->flags >> IORING_CQE_BUFFER_SHIFT;
            if (send(c, bufs + bid * BUFSZ, (size_t)e->res, MSG_NOSIGNAL) != e->res)
                die("send");
            struct io_uring_buf *b = &br->bufs[br_tail & (NBUF - 1)];
            b->addr = (unsigned long)(bufs + bid * BUFSZ);
            b->len = BUFSZ;
            b->bid = (unsigned short)bid;
            br_tail++;
            atomic_store_explicit((_Atomic unsigned short *)&br->tail, br_tail, memory_order_release);
            if (!(e->flags & IORING_CQE_F_MORE)) { /* the multishot RECV ended: arm it again */
                queue_recv(&r, c);
                to_submit++;
            }
        }
        atomic_store_explicit((_Atomic unsigned *)r.cq_head, head, memory_order_release);
    }
}

static int server(const char *mode, int port) {
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = loopback(port);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 8) < 0)
        die("listen");
    printf("READY\n");
    fflush(stdout);
    int c = accept(l, NULL, NULL);
    if (c < 0)
        die("accept");
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (strcmp(mode, "epoll") == 0)
        serve_epoll(c);
    else if (strcmp(mode, "uring") == 0)
        serve_uring(c, IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG);
    else if (strcmp(mode, "uring-defer") == 0)
        serve_uring(c, IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}

static int client(int port, double seconds, double spin_us) {
    int c = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = loopback(port);
    if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a) < 0)
        die("connect");
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char buf[4096] = {0};
    long n = 0;
    double end = now() + seconds;
    for (;;) {
        if (send(c, buf, SIZE, MSG_NOSIGNAL) != SIZE)
            die("send");
        for (int got = 0; got < SIZE;) {
            ssize_t r = recv(c, buf, sizeof buf, 0);
            if (r <= 0)
                die("recv");
            got += (int)r;
        }
        n++;
        double t = now();
        while (now() - t < spin_us / 1e6) {
        }
        if (t > end)
            break;
    }
    printf("%ld\n", n);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "server") == 0)
        return server(argv[2], atoi(argv[3]));
    if (argc == 5 && strcmp(argv[1], "client") == 0)
        return client(atoi(argv[2]), atof(argv[3]), atof(argv[4]));
    fprintf(stderr, "usage: %s server epoll|uring|uring-defer PORT | client PORT SECONDS SPIN_US\n", argv[0]);
    return 2;
}
