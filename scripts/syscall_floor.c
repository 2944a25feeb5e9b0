// The CPU floor of a bridged call on this machine: what the three system calls a call needs per
// 20 ms cost when nothing else is done (BENCHMARKS.md, "The floor of the three system calls"),
// and, with the knobs below, what a call's own work adds to it ("What a tick's memory costs").
//
// Per call and per 20 ms tick the "relay" (the parent process) does exactly what voxgate's media
// thread must do at least, back to back for all calls, on one thread:
//   recvmmsg  the caller's RTP packet (172 bytes, queued by the peer)
//   send      a 280-byte message on the call's TCP connection (the size of a WebSocket append)
//   sendto    a 172-byte RTP packet to the caller
// The peer (a child process, one thread, epoll) plays every caller from one UDP socket (as
// SIPp's rtp_stream does), reads every TCP connection and drops the RTP it receives. Loopback
// only. The relay's CPU (getrusage: user + system, which includes the peers' loopback receive
// run inside its sends, as it does for voxgate) is divided by calls and by the measured time.
//
//   gcc -O2 -o /tmp/syscall_floor scripts/syscall_floor.c && /tmp/syscall_floor 200 10
//
// Arguments: CALLS SECONDS [GAP_US] [LINES] [PEER_US]
//   GAP_US   spin this long before each call's system calls (not counted): the peer falls
//            asleep between messages, as it does with voxgate
//   LINES    follow this many links of the call's own 16 KiB state, linked in a random order:
//            dependent loads of lines last touched 20 ms ago, as code walking a call's
//            structures through pointers does
//   PEER_US  the peer spins this long per TCP message read (a busy stand-in)
// Environment:
//   FLOOR_LAYOUT=contiguous  LINES reads the first LINES lines of the call's state in order,
//                            each load independent of the others (a compact layout)
//   FLOOR_DOWN=1             the peer also sends each call three 3,600-byte messages every 2 s
//                            (a reply's deltas); the relay reads them once per 2 s
//   FLOOR_TIMESTAMPS=1       SO_TIMESTAMPNS on the relay's RTP sockets (as voxgate's)
// Compiled with -DFLOOR_URING (and -luring, Debian's liburing-dev), FLOOR_URING=1 makes the same
// three operations per call, but all calls' operations of a tick go to the kernel in one
// io_uring_enter, instead of three system calls per call.
// Compiled with -DFLOOR_CODE and scripts/floor_code.py's output, FLOOR_CODE_FNS=N also runs N
// distinct small functions per call (a code footprint: N·~120 bytes of 500 KB of text).
#define _GNU_SOURCE
#include <arpa/inet.h>
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
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef FLOOR_URING
#include <liburing.h>
#endif

#define MAX_CALLS 1000
#define STATE_LINES 256 // 16 KiB of state per call (LINES argument)
#ifdef FLOOR_CODE
extern unsigned run_code(int first, int count);
#define HAS_CODE 1
#else
static unsigned run_code(int first, int count) { return (unsigned)(first + count); }
#define HAS_CODE 0
#endif
#define BASE_PORT 41000 // relay RTP: BASE+i; peer RTP: BASE+2000+i; TCP listener: BASE-1

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in address = {0};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return address;
}

static int udp_bound(int port) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in address = loopback(port);
    if (fd < 0 || bind(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        perror("bind UDP");
        exit(1);
    }
    return fd;
}

static double cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec +
           usage.ru_stime.tv_usec / 1e6;
}

static double system_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_stime.tv_sec + usage.ru_stime.tv_usec / 1e6;
}

static double now_seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec + now.tv_nsec / 1e9;
}

static int periodic_timer(void) {
    int fd = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec every = {{0, 20000000}, {0, 20000000}};
    timerfd_settime(fd, 0, &every, NULL);
    return fd;
}

static void peer(int calls, int listener, double work) {
    int epoll = epoll_create1(0);
    int rtp = udp_bound(BASE_PORT + 2000);
    int tcp[MAX_CALLS];
    for (int i = 0; i < calls; i++) {
        tcp[i] = accept(listener, NULL, NULL);
        fcntl(tcp[i], F_SETFL, O_NONBLOCK);
        struct epoll_event event = {EPOLLIN, {.u64 = (uint64_t)i}};
        epoll_ctl(epoll, EPOLL_CTL_ADD, tcp[i], &event);
    }
    int timer = periodic_timer();
    struct epoll_event timer_event = {EPOLLIN, {.u64 = 1000000}};
    epoll_ctl(epoll, EPOLL_CTL_ADD, timer, &timer_event);
    struct epoll_event rtp_event = {EPOLLIN, {.u64 = 1000001}};
    epoll_ctl(epoll, EPOLL_CTL_ADD, rtp, &rtp_event);
    char buffer[8192];
    memset(buffer, 0xff, sizeof buffer);
    int down = getenv("FLOOR_DOWN") != NULL;
    long peer_tick = 0;
    for (;;) {
        struct epoll_event events[256];
        int ready = epoll_wait(epoll, events, 256, -1);
        for (int k = 0; k < ready; k++) {
            uint64_t id = events[k].data.u64;
            if (id == 1000000) {
                uint64_t expiries;
                if (read(timer, &expiries, sizeof expiries) < 0) continue;
                peer_tick++;
                for (int i = 0; down && i < calls; i++) // a reply every 2 s per call
                    if ((peer_tick + i) % 100 == 0)
                        for (int delta = 0; delta < 3; delta++) send(tcp[i], buffer, 3600, 0);
                for (int i = 0; i < calls; i++) {
                    struct sockaddr_in to = loopback(BASE_PORT + i);
                    sendto(rtp, buffer, 172, 0, (struct sockaddr *)&to, sizeof to);
                }
            } else if (id == 1000001) {
                while (recv(rtp, buffer, sizeof buffer, 0) > 0) {
                }
            } else {
                while (read(tcp[id], buffer, sizeof buffer) > 0) {
                    double until = now_seconds() + work; // the peer's work per message
                    while (work > 0 && now_seconds() < until) {
                    }
                }
            }
        }
    }
}

#ifdef FLOOR_URING
// One tick of every call through io_uring: per call a recvmsg (MSG_DONTWAIT: an empty socket
// completes at once with -EAGAIN), the append's send and the RTP sendmsg, all submitted by one
// io_uring_enter that also waits for their completions. Returns the RTP packets read.
static long uring_tick(struct io_uring *ring, int calls, const int *rtp, const int *tcp,
                       char *append, char *packet) {
    static char in[MAX_CALLS][256], control[MAX_CALLS][64];
    static struct sockaddr_in from[MAX_CALLS], to;
    static struct iovec in_vectors[MAX_CALLS], out_vector;
    static struct msghdr in_messages[MAX_CALLS], out_message;
    to = loopback(BASE_PORT + 2000);
    out_vector.iov_base = packet;
    out_vector.iov_len = 172;
    out_message.msg_name = &to;
    out_message.msg_namelen = sizeof to;
    out_message.msg_iov = &out_vector;
    out_message.msg_iovlen = 1;
    for (int i = 0; i < calls; i++) {
        in_vectors[i].iov_base = in[i];
        in_vectors[i].iov_len = sizeof in[i];
        memset(&in_messages[i], 0, sizeof in_messages[i]);
        in_messages[i].msg_name = &from[i];
        in_messages[i].msg_namelen = sizeof from[i];
        in_messages[i].msg_iov = &in_vectors[i];
        in_messages[i].msg_iovlen = 1;
        in_messages[i].msg_control = control[i];
        in_messages[i].msg_controllen = sizeof control[i];
        struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
        io_uring_prep_recvmsg(sqe, rtp[i], &in_messages[i], MSG_DONTWAIT);
        io_uring_sqe_set_data64(sqe, 1);
        sqe = io_uring_get_sqe(ring);
        io_uring_prep_send(sqe, tcp[i], append, 280, 0);
        io_uring_sqe_set_data64(sqe, 2);
        sqe = io_uring_get_sqe(ring);
        io_uring_prep_sendmsg(sqe, rtp[i], &out_message, 0);
        io_uring_sqe_set_data64(sqe, 3);
    }
    io_uring_submit_and_wait(ring, 3 * calls);
    long received = 0;
    unsigned head, seen = 0;
    struct io_uring_cqe *cqe;
    io_uring_for_each_cqe(ring, head, cqe) {
        if (io_uring_cqe_get_data64(cqe) == 1 && cqe->res > 0) received++;
        seen++;
    }
    io_uring_cq_advance(ring, seen);
    return received;
}
#endif

int main(int argc, char **argv) {
    int calls = argc > 1 ? atoi(argv[1]) : 200;
    int seconds = argc > 2 ? atoi(argv[2]) : 10;
    double gap = argc > 3 ? atof(argv[3]) / 1e6 : 0;
    int lines = argc > 4 ? atoi(argv[4]) : 0;
    double peer_work = argc > 5 ? atof(argv[5]) / 1e6 : 0;
    int code_fns = getenv("FLOOR_CODE_FNS") ? atoi(getenv("FLOOR_CODE_FNS")) : 0;
    if (code_fns > 0 && !HAS_CODE) { // else the knob would measure nothing, silently
        fprintf(stderr, "FLOOR_CODE_FNS needs a build with -DFLOOR_CODE and floor_code.py's "
                        "output (see the top of this file)\n");
        return 2;
    }
    if (calls < 1 || calls > MAX_CALLS || seconds < 1 || gap < 0 || lines < 0 ||
        lines > STATE_LINES) {
        fprintf(stderr, "usage: syscall_floor [CALLS 1-%d] [SECONDS] [GAP_US] [LINES 0-%d] [PEER_US]\n",
                MAX_CALLS, STATE_LINES);
        return 2;
    }
    // Per call, a private state of STATE_LINES cache lines, linked in a random order: a tick
    // follows LINES links of it (dependent loads, as code walking a call's structures does).
    void **state = aligned_alloc(64, (size_t)calls * STATE_LINES * 64);
    void **cursor = malloc(calls * sizeof *cursor);
    if (state == NULL || cursor == NULL) return 1;
    for (int i = 0; i < calls; i++) {
        int order[STATE_LINES];
        for (int j = 0; j < STATE_LINES; j++) order[j] = j;
        for (int j = STATE_LINES - 1; j > 0; j--) {
            int k = rand() % (j + 1), t = order[j];
            order[j] = order[k];
            order[k] = t;
        }
        void **base = state + (size_t)i * STATE_LINES * 8;
        for (int j = 0; j < STATE_LINES; j++)
            base[order[j] * 8] = &base[order[(j + 1) % STATE_LINES] * 8];
        cursor[i] = &base[order[0] * 8];
    }
    int one = 1;
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in listen_at = loopback(BASE_PORT - 1);
    if (bind(listener, (struct sockaddr *)&listen_at, sizeof listen_at) != 0 ||
        listen(listener, MAX_CALLS) != 0) {
        perror("listen");
        return 1;
    }
    pid_t child = fork();
    if (child == 0) {
        peer(calls, listener, peer_work);
        return 0;
    }
    int rtp[MAX_CALLS], tcp[MAX_CALLS];
    for (int i = 0; i < calls; i++) {
        rtp[i] = udp_bound(BASE_PORT + i);
        if (getenv("FLOOR_TIMESTAMPS"))
            setsockopt(rtp[i], SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
        tcp[i] = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(tcp[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(tcp[i], (struct sockaddr *)&listen_at, sizeof listen_at) != 0) {
            perror("connect");
            kill(child, SIGKILL);
            return 1;
        }
    }
    int down = getenv("FLOOR_DOWN") != NULL;
    const char *layout = getenv("FLOOR_LAYOUT");
    int contiguous = layout != NULL && strcmp(layout, "contiguous") == 0;
    int timer = periodic_timer();
#ifdef FLOOR_URING
    int uring = getenv("FLOOR_URING") != NULL;
    struct io_uring ring;
    if (uring && io_uring_queue_init(4096, &ring, 0) != 0) {
        perror("io_uring_queue_init");
        kill(child, SIGKILL);
        return 1;
    }
#endif
    char append[280], packet[172];
    memset(append, 'A', sizeof append);
    memset(packet, 0xff, sizeof packet);
    uint64_t expiries;
    double cpu_start = 0, system_start = 0, wall_start = 0, spun = 0;
    long ticks = 0, received = 0;
    for (long tick = -50; tick < 50L * seconds; tick++) { // the first second settles
        if (read(timer, &expiries, sizeof expiries) < 0) return 1;
        if (tick == 0) {
            cpu_start = cpu_seconds();
            system_start = system_seconds();
            wall_start = now_seconds();
            received = 0;
            spun = 0;
        }
        ticks += tick >= 0;
#ifdef FLOOR_URING
        if (uring) {
            received += uring_tick(&ring, calls, rtp, tcp, append, packet);
            if (down && tick % 100 == 1)
                for (int i = 0; i < calls; i++) {
                    static char down[16384];
                    while (recv(tcp[i], down, sizeof down, MSG_DONTWAIT) > 0) {
                    }
                }
            continue;
        }
#endif
        for (int i = 0; i < calls; i++) {
            if (gap > 0) { // stands for a call's own work between its system calls
                double from = now_seconds(), until = from + gap, at;
                while ((at = now_seconds()) < until) {
                }
                spun += at - from;
            }
            static int code_at = 0;
            if (code_fns > 0) {
                volatile unsigned sink = run_code(code_at, code_fns);
                (void)sink;
                code_at = (code_at + code_fns) % 4096;
            }
            if (contiguous) { // independent loads, in address order
                void **base = state + (size_t)i * STATE_LINES * 8;
                uintptr_t sum = 0;
                for (int j = 0; j < lines; j++) sum += (uintptr_t)base[j * 8];
                volatile uintptr_t sink = sum;
                (void)sink;
            } else { // each load's address comes from the previous one
                void **at = cursor[i];
                for (int j = 0; j < lines; j++) at = *at;
                cursor[i] = at;
            }
            char in[4][256];
            struct iovec vectors[4];
            struct mmsghdr messages[4];
            memset(messages, 0, sizeof messages);
            for (int j = 0; j < 4; j++) {
                vectors[j].iov_base = in[j];
                vectors[j].iov_len = sizeof in[j];
                messages[j].msg_hdr.msg_iov = &vectors[j];
                messages[j].msg_hdr.msg_iovlen = 1;
                static char control[4][64];
                static struct sockaddr_in from[4];
                messages[j].msg_hdr.msg_control = control[j];
                messages[j].msg_hdr.msg_controllen = sizeof control[j];
                messages[j].msg_hdr.msg_name = &from[j];
                messages[j].msg_hdr.msg_namelen = sizeof from[j];
            }
            int got = recvmmsg(rtp[i], messages, 4, MSG_DONTWAIT, NULL);
            if (got > 0) received += got;
            send(tcp[i], append, sizeof append, 0);
            if (down && (tick + i) % 100 == 1) { // the peer's replies, once per 2 s
                static char down[16384];
                while (recv(tcp[i], down, sizeof down, MSG_DONTWAIT) > 0) {
                }
            }
            struct sockaddr_in to = loopback(BASE_PORT + 2000);
            sendto(rtp[i], packet, sizeof packet, 0, (struct sockaddr *)&to, sizeof to);
        }
    }
    double cpu = cpu_seconds() - cpu_start - spun, wall = now_seconds() - wall_start;
    double system = system_seconds() - system_start;
    printf("calls %d, %.1f s: relay CPU %.1f %% of one core, %.4f %% per call, %.2f us per call "
           "and tick (system %.2f us, user %.2f us); RTP packets read %ld of %ld\n",
           calls, wall, 100 * cpu / wall, 100 * cpu / wall / calls, 1e6 * cpu / ticks / calls,
           1e6 * system / ticks / calls, 1e6 * (cpu - system) / ticks / calls, received,
           ticks * calls);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return 0;
}
