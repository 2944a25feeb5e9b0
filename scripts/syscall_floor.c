// The CPU floor of a bridged call on this machine: what the three system calls a call needs per
// 20 ms cost when nothing else is done (BENCHMARKS.md, "The floor of the three system calls").
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

#define MAX_CALLS 1000
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

static void peer(int calls, int listener) {
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
    for (;;) {
        struct epoll_event events[256];
        int ready = epoll_wait(epoll, events, 256, -1);
        for (int k = 0; k < ready; k++) {
            uint64_t id = events[k].data.u64;
            if (id == 1000000) {
                uint64_t expiries;
                if (read(timer, &expiries, sizeof expiries) < 0) continue;
                for (int i = 0; i < calls; i++) {
                    struct sockaddr_in to = loopback(BASE_PORT + i);
                    sendto(rtp, buffer, 172, 0, (struct sockaddr *)&to, sizeof to);
                }
            } else if (id == 1000001) {
                while (recv(rtp, buffer, sizeof buffer, 0) > 0) {
                }
            } else {
                while (read(tcp[id], buffer, sizeof buffer) > 0) {
                }
            }
        }
    }
}

int main(int argc, char **argv) {
    int calls = argc > 1 ? atoi(argv[1]) : 200;
    int seconds = argc > 2 ? atoi(argv[2]) : 10;
    double gap = argc > 3 ? atof(argv[3]) / 1e6 : 0;
    if (calls < 1 || calls > MAX_CALLS || seconds < 1 || gap < 0) {
        fprintf(stderr, "usage: syscall_floor [CALLS 1-%d] [SECONDS] [GAP_US]\n", MAX_CALLS);
        return 2;
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
        peer(calls, listener);
        return 0;
    }
    int rtp[MAX_CALLS], tcp[MAX_CALLS];
    for (int i = 0; i < calls; i++) {
        rtp[i] = udp_bound(BASE_PORT + i);
        tcp[i] = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(tcp[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(tcp[i], (struct sockaddr *)&listen_at, sizeof listen_at) != 0) {
            perror("connect");
            kill(child, SIGKILL);
            return 1;
        }
    }
    int timer = periodic_timer();
    char append[280], packet[172];
    memset(append, 'A', sizeof append);
    memset(packet, 0xff, sizeof packet);
    uint64_t expiries;
    double cpu_start = 0, wall_start = 0, spun = 0;
    long ticks = 0, received = 0;
    for (long tick = -50; tick < 50L * seconds; tick++) { // the first second settles
        if (read(timer, &expiries, sizeof expiries) < 0) return 1;
        if (tick == 0) {
            cpu_start = cpu_seconds();
            wall_start = now_seconds();
            received = 0;
            spun = 0;
        }
        ticks += tick >= 0;
        for (int i = 0; i < calls; i++) {
            if (gap > 0) { // stands for a call's own work between its system calls
                double from = now_seconds(), until = from + gap, at;
                while ((at = now_seconds()) < until) {
                }
                spun += at - from;
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
            }
            int got = recvmmsg(rtp[i], messages, 4, MSG_DONTWAIT, NULL);
            if (got > 0) received += got;
            send(tcp[i], append, sizeof append, 0);
            struct sockaddr_in to = loopback(BASE_PORT + 2000);
            sendto(rtp[i], packet, sizeof packet, 0, (struct sockaddr *)&to, sizeof to);
        }
    }
    double cpu = cpu_seconds() - cpu_start - spun, wall = now_seconds() - wall_start;
    printf("calls %d, %.1f s: relay CPU %.1f %% of one core, %.4f %% per call, %.2f us per call "
           "and tick; RTP packets read %ld of %ld\n",
           calls, wall, 100 * cpu / wall, 100 * cpu / wall / calls, 1e6 * cpu / ticks / calls,
           received, ticks * calls);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return 0;
}
